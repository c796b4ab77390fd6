"""The README's example and the examples run end to end and learn."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ~90 s on two cores: the README example below covers the same flow in CI.
@pytest.mark.slow
def test_quickstart_trains_and_reports_ess_and_kl():
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run(
      [sys.executable, str(ROOT / 'examples' / 'quickstart.py'),
       '--steps=120', '--eval_samples=4000'],
      capture_output=True, text=True, env=env, timeout=900, check=True).stdout
  before = re.search(r'before training: ESS = ([\d.]+)%  KL = ([\d.-]+)', out)
  after = re.search(r'after 120 steps .*: ESS = ([\d.]+)%  KL = ([\d.-]+)', out)
  assert before and after, out
  assert float(after.group(2)) < 0.5 * float(before.group(2))
  assert float(after.group(1)) > float(before.group(1))


# ~140 s on two cores (it traces every optional part of the example); the
# parts' maths is tested in tests/test_lattice_*.py.
@pytest.mark.slow
def test_lattice_example_runs_on_spheres_with_guard_and_pair_term(tmp_path):
  """examples/lattice.py end to end on (S²)⁴ with the sphere guard, both
  extra ψ terms, the symmetric base with the spin-wave kernel, the
  forward-KL term on heat-bath data and exact evaluation; --summarize reads
  the result back."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  script = str(ROOT / 'examples' / 'lattice.py')
  subprocess.run(
      [sys.executable, script, '--model=o3', '--L=2', '--beta=0.5',
       '--layers=1', '--steps=3', '--bond_term', '--pair_term',
       '--base=symmetric', '--spin_wave', '--forward_kl_weight=1',
       '--data_sweeps=250', '--mcmc_chains=16',
       '--tolerance=1e-4', '--estimator=stochastic', '--eval_samples=64',
       '--eval_batch=64',
       '--mcmc_sweeps=0', f'--output_dir={tmp_path}'],
      capture_output=True, text=True, env=env, timeout=600, check=True)
  result = json.loads((tmp_path / 'o3_L2_b0.5_equivariant.json').read_text())
  assert result['nonfinite'] == 0 and result['tolerance'] == 1e-4
  assert result['pair_term'] and result['estimator'] == 'stochastic'
  assert result['base'] == 'symmetric' and result['spin_wave']
  assert result['data_points'] == 5 * 16       # (250 − 200) / 10 sweeps
  assert result['base_concentration'] > 0.
  # Three steps from the spin-wave start. This checks the example's
  # plumbing; the maths of each part is tested in tests/test_lattice_*.py.
  assert 0.1 < result['ess'] <= 1.
  assert math.isfinite(result['kl_is'])
  table = subprocess.run([sys.executable, script, '--summarize',
                          f'--output_dir={tmp_path}'], capture_output=True,
                         text=True, env=env, timeout=600, check=True).stdout
  assert ('| o3 | 2 | 0.5 | equivariant + bond + pair + spin wave, symmetric '
          'base, fwd KL ×1 | 1 |') in table


def test_lattice_example_refuses_spin_wave_without_a_pair_kernel(tmp_path):
  """--spin_wave starts the first conv ψ's pair kernel; an MLP ψ has none,
  and the run must say so instead of ignoring the flag."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run(
      [sys.executable, str(ROOT / 'examples' / 'lattice.py'), '--model=xy',
       '--L=2', '--steps=1', '--psi=mlp', '--pair_term', '--base=symmetric',
       '--spin_wave', f'--output_dir={tmp_path}'],
      capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode != 0 and '--spin_wave needs' in out.stderr
  assert not list(tmp_path.iterdir())


def test_markdown_table():
  sys.path.insert(0, str(ROOT / 'examples'))
  try:
    import _tables  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  table = _tables.markdown_table([dict(a=1, b=0.123456)], ['a', 'b'])
  assert table.splitlines() == ['| a | b |', '|---|---|', '| 1 | 0.1235 |']


def test_readme_example_trains():
  """The README's first Python block, run as written in a fresh process
  (fewer steps and samples), learns: KL(Uniform‖p) is log(sinh 8 / 8) = 5.23
  nats for this target, and the untrained flow is near the identity."""
  readme = (ROOT / 'README.md').read_text()
  code = re.search(r'```python\n(.*?)```', readme, re.S).group(1)
  assert 'range(300)' in code and 'num_samples=20000' in code, code
  code = code.replace('range(300)', 'range(80)').replace(
      'num_samples=20000', 'num_samples=4000')
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=env, timeout=900, check=True).stdout
  result = eval(out.strip().splitlines()[-1])  # pylint: disable=eval-used
  assert result['kl'] < 1.0 and result['ess'] > 0.5, result


# ~2 min on two cores: two workers each trace two 3-layer flows.
@pytest.mark.slow
def test_distributed_example_runs_two_local_workers_and_learns(tmp_path):
  """examples/distributed.py --local_workers=2: both workers print their
  role, the chief reports reverse-KL quality and both NLLs, both improve on
  the identity flow, and the reverse-KL backups are where the README says."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfp_ircpm import targets  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run(
      [sys.executable, str(ROOT / 'examples' / 'distributed.py'),
       '--local_workers=2', '--steps=60', '--epochs=2', '--num_points=1024',
       '--global_batch=128', '--eval_samples=8192',
       f'--backup_dir={tmp_path}'],
      capture_output=True, text=True, env=env, timeout=900, check=True).stdout
  assert 'role: worker 0 of 2 worker(s), 2 replica(s), chief' in out
  assert 'role: worker 1 of 2 worker(s), 2 replica(s)' in out
  kl = re.search(r'reverse KL, 60 steps: ESS = ([\d.]+)%  KL = ([\d.]+)', out)
  nll = re.search(r'train NLL ([\d.-]+), test NLL ([\d.-]+) \(truth '
                  r'([\d.-]+)\)', out)
  assert kl and nll, out
  # KL of the identity flow (uniform q) to the target, by quadrature:
  # E_unif[u] − log 4π + log Z.
  target = targets.sphere_four_modes()
  pts, w = targets.sphere_grid()
  u = target.energy(tf.constant(pts)).numpy()
  kl_identity = (np.sum(w * u) / np.sum(w) - math.log(4 * math.pi)
                 + target.log_normalizer)
  assert float(kl.group(2)) < kl_identity - 0.05, (kl_identity, out)
  # Maximum likelihood: below the uniform's log 4π, above the truth.
  assert float(nll.group(3)) < float(nll.group(2)) < math.log(4 * math.pi)
  assert os.path.exists(tmp_path / 'reverse_kl' / 'ckpt-60.index')
