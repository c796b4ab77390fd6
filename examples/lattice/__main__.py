"""`python -m examples.lattice ...`: the same as `python examples/lattice.py`."""

from absl import flags

from . import main  # pylint: disable=relative-beyond-top-level

flags.adopt_module_key_flags(main)       # --help lists the example's flags
main.run_app()
