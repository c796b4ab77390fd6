r"""IRCPM flows for the XY model on T^{L²} and the O(3) sigma model on (S²)^{L²}.

The example lives in the package examples/lattice/ (config, models,
evaluate, run, summary, main; see its docstring); this file runs it:

  python examples/lattice.py --model=xy --L=8 --beta=0.9 --steps=500

(`python -m examples.lattice ...` from the repository root is the same.)
"""

import os
import sys

if __name__ == '__main__':
  # sys.path[0] is examples/ when run as a script, so `lattice` is the
  # package beside this file; make sure of it when run some other way.
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from absl import flags  # pylint: disable=g-import-not-at-top
  from lattice import main  # pylint: disable=g-import-not-at-top
  flags.adopt_module_key_flags(main)     # --help lists the example's flags
  main.run_app()
