"""BUILD lists every Python file of the package, the tests and the examples."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _build_calls():
  """(rule, kwargs) for every top-level rule call in BUILD (Starlark ⊂ Python)."""
  tree = ast.parse((ROOT / 'BUILD').read_text())
  calls = []
  for node in tree.body:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
      kwargs = {}
      for kw in node.value.keywords:
        try:
          kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
          kwargs[kw.arg] = None
      calls.append((node.value.func.id, kwargs))
  return calls


def _listed_files():
  files = set()
  for _, kwargs in _build_calls():
    for key in ('srcs', 'data'):
      files.update(kwargs.get(key) or [])
  return files


def test_every_python_file_is_in_build():
  listed = _listed_files()
  on_disk = {str(p.relative_to(ROOT)) for d in ('tfp_ircpm', 'tests', 'examples', 'benchmarks')
             for p in (ROOT / d).rglob('*.py')}
  missing = sorted(on_disk - listed)
  assert not missing, f'add these files to BUILD: {missing}'


def test_every_listed_file_exists():
  stale = sorted(f for f in _listed_files() if not (ROOT / f).exists())
  assert not stale, f'BUILD lists files that do not exist: {stale}'


def test_every_test_file_has_a_py_test():
  tests = {kw['name']: kw for rule, kw in _build_calls() if rule == 'py_test'}
  for path in (ROOT / 'tests').glob('test_*.py'):
    name = path.stem
    assert name in tests, f'BUILD has no py_test named {name}'
    assert f'tests/{path.name}' in tests[name]['srcs']


def test_target_names_are_unique():
  names = [kw['name'] for rule, kw in _build_calls() if rule != 'package']
  assert len(names) == len(set(names))
  assert all(re.fullmatch(r'[a-z_][a-z0-9_]*', n) for n in names)
