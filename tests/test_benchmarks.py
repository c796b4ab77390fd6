"""`python -m benchmarks.run --quick` runs and writes complete, finite JSON.

No timing assertions: the machine's load is not ours to control. The ratios
it reports are checked only for being finite and positive, and the memory of
the IFT step for being reported.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import run as bench_run
from benchmarks import scaling

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _positive_finite(v):
  return isinstance(v, float) and math.isfinite(v) and v > 0


# A second TF process that traces the benchmark models (~40 s, and a few GB
# beside the test workers): benchmarks run outside CI, and so does this.
@pytest.mark.slow
def test_quick_subset_writes_expected_keys(tmp_path):
  out = tmp_path / 'bench.json'
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--quick', '--repeats=1',
       '--sections=floor,train', f'--output={out}'],
      cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
      check=True)
  results = json.loads(out.read_text())
  assert {'machine', 'quick', 'repeats', 'seconds', 'floor', 'train'} <= set(
      results)
  assert results['quick'] is True
  [floor] = results['floor']
  for key in ('hessian_ambient_s', 'hessian_tangent_s', 'log_prob_s', 'ratio'):
    assert _positive_finite(floor[key]), (key, floor)
  [train] = results['train']
  [row] = train['rows']
  for kind in ('ift', 'unrolled'):
    assert _positive_finite(row[kind]['step_s'])
    assert row[kind]['peak_mib'] is not None
    assert math.isfinite(row[kind]['peak_mib'])
  assert _positive_finite(row['speedup'])


def test_unknown_section_is_an_error():
  assert bench_run.parse_sections('floor, train') == ['floor', 'train']
  with pytest.raises(ValueError, match='unknown sections'):
    bench_run.parse_sections('floor,bogus')
  with pytest.raises(ValueError, match='unknown sections'):
    bench_run.parse_sections('')


def test_fit_exponent_recovers_a_power_law():
  dims = [2, 4, 8, 16, 32, 64]
  # d = 2, 4 lie off the law (fixed overheads) and must be ignored.
  seconds = [1., 1.] + [3e-4 * d ** 1.7 for d in dims[2:]]
  assert scaling.fit_exponent(dims, seconds) == pytest.approx(1.7)
  assert scaling.fit_exponent([2, 4, 8], [1., 1., 1.]) is None
  # Missing samples (None) are skipped.
  assert scaling.fit_exponent([8, 16, 32], [8., None, 32.]) == (
      pytest.approx(1.))


def test_peers_skips_cleanly_without_torch(tmp_path):
  """benchmarks.peers with torch unimportable: a message and exit 0."""
  (tmp_path / 'torch.py').write_text("raise ImportError('hidden')\n")
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}')
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.peers'], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'needs torch and zuko' in proc.stdout
