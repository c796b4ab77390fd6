"""Names a module re-exports from a module that imports it (PEP 562)."""

import importlib
from typing import Callable, Iterable, List, Tuple


def reexport(module_globals: dict, source: str, names: Iterable[str]
             ) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
  """`(__getattr__, __dir__)` resolving `names` from module `source` on use.

  The lattice subpackage builds on `potentials`, `targets` and
  `distributions`, and those keep its names importable for older code; an
  import at module level would be circular, so each name is looked up on
  first use and then cached in the module's globals.
  """
  names = frozenset(names)

  def __getattr__(name):  # pylint: disable=invalid-name
    if name in names:
      value = module_globals[name] = getattr(
          importlib.import_module(source), name)
      return value
    raise AttributeError(
        f'module {module_globals["__name__"]!r} has no attribute {name!r}')

  def __dir__():  # pylint: disable=invalid-name
    return sorted(set(module_globals) | names)

  return __getattr__, __dir__
