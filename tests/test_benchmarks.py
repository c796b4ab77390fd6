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



def _run_peers_code(code: str):
  """Runs code with `benchmarks.peers` imported as `peers`, in a fresh
  process: its absl flags clash with benchmarks.run's in this one."""
  script = ('from benchmarks import peers\n'
            'peers.FLAGS(["peers"])\n' + code)
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_peers_metrics_give_kl_with_log_z_and_free_energy_without():
  """q = p/Z exactly: ESS 1, KL 0, F = −log Z; no log Z: KL NaN, F kept;
  one failed sample: ESS NaN and counted."""
  _run_peers_code('''
import math
import numpy as np
log_p = np.random.default_rng(0).normal(size=1000)
log_z = 1.7
exact = peers._metrics(log_p - log_z, log_p, log_z)
assert abs(exact['ess'] - 1.) < 1e-12 and abs(exact['kl']) < 1e-12, exact
assert abs(exact['free_energy'] + log_z) < 1e-12, exact
unknown = peers._metrics(log_p - log_z, log_p, None)
assert math.isnan(unknown['kl']), unknown
assert abs(unknown['free_energy'] + log_z) < 1e-12, unknown
failed = peers._metrics(np.r_[log_p[:-1] - log_z, np.nan], log_p, log_z)
assert math.isnan(failed['ess']) and failed['nonfinite'] == 1, failed
''')


def test_peers_merge_joins_runs_and_refuses_other_budgets(tmp_path):
  row = dict(seconds=30., steps=10, ess=0.5, kl=float('nan'),
             free_energy=-3.25, nonfinite=0)
  side = dict(first_step_s=1., num_parameters=5, rows=[row],
              steady_step_ms=2.)
  runs = [dict(budgets=[30.], quality={'xy4': dict(ircpm=side, zuko=side)},
               throughput={}),
          dict(budgets=[30.], quality={'u2': dict(ircpm=side, zuko=side)},
               throughput={})]
  paths = [tmp_path / '0.json', tmp_path / '1.json']
  for path, r in zip(paths, runs):
    path.write_text(json.dumps(r))
  merged_path = tmp_path / 'merged.json'

  def merge():
    return subprocess.run(
        [sys.executable, '-m', 'benchmarks.peers',
         f'--merge={paths[0]},{paths[1]}', f'--output={merged_path}'],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)

  proc = merge()
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '| xy4 | 30 | 50.00 | F -3.250 | 10 (30 s) |' in proc.stdout
  merged = json.loads(merged_path.read_text())
  assert list(merged['quality']) == ['xy4', 'u2']
  runs[1]['budgets'] = [60.]
  paths[1].write_text(json.dumps(runs[1]))
  proc = merge()
  assert proc.returncode != 0 and 'different budgets' in proc.stderr


def test_peers_torch_energies_are_the_library_energies():
  """zuko trains on a torch copy of each target's u; it must be the same u."""
  pytest.importorskip('torch')
  _run_peers_code('''
import math
import numpy as np
import torch
for name in ('u1', 'u2', 'u3', 'pairs8', 'xy4'):
  target = peers._target(name)
  energy = peers._torch_energy(name)
  points = np.random.default_rng(1).uniform(-math.pi, math.pi,
                                            (32, target.manifold.dim))
  np.testing.assert_allclose(-energy(torch.tensor(points)).numpy(),
                             peers._log_p(target, points), rtol=1e-10,
                             atol=1e-10, err_msg=name)
''')
