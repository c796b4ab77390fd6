"""density.fit, the KDE baseline, deduplicated splits and the CLI."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import data as data_lib
from tfp_ircpm import density
from tfp_ircpm import kde
from tfp_ircpm import potentials as P
from tfp_ircpm import training
from conftest import fibonacci_sphere


def _sphere_quadrature(n=200000):
  """Equal-area points [n, 3] with weights 4π/n."""
  return fibonacci_sphere(n), np.full(n, 4 * np.pi / n)


def _torus_quadrature(n=400):
  t = (np.arange(n) + 0.5) / n * 2 * np.pi
  a, b = np.meshgrid(t, t, indexing='ij')
  return np.stack([a, b], -1).reshape(-1, 2), np.full(n * n,
                                                      (2 * np.pi / n) ** 2)


def _integral(log_prob, pts, w, dtype=tf.float64):
  vals = np.concatenate([log_prob(tf.constant(pts[i:i + 20000], dtype))
                         .numpy() for i in range(0, len(pts), 20000)])
  return float(np.sum(np.exp(vals) * w))


def _clusters(manifold, n, seed, kappa=40.):
  """n points from a 3-cluster von Mises(–Fisher) mixture on S² or T²."""
  rng = np.random.default_rng(seed)
  if isinstance(manifold, ircpm.Sphere):
    mu = np.array([[1., 0, 0], [0, 1., 0], [0, 0, 1.]])
    vmf = ircpm.distributions.vmf_mixture(mu, kappa, dtype=tf.float64)
    return vmf.sample(n, seed=seed).numpy()
  mu = np.array([[1., 1.], [4., 2.], [2., 5.]])
  c = mu[rng.integers(0, 3, n)]
  return np.mod(c + rng.vonmises(0., kappa, size=c.shape), 2 * np.pi)


# --- Wells' closed-form derivatives -----------------------------------------

@pytest.mark.parametrize('manifold', [ircpm.Sphere(2), ircpm.Torus(2)],
                         ids=repr)
@pytest.mark.parametrize('dtype', [tf.float32, tf.float64])
def test_wells_ambient_derivatives_equal_the_tapes(manifold, dtype):
  y = manifold.uniform(dtype).sample(16, seed=1)
  centres = manifold.uniform(tf.float64).sample(9, seed=2).numpy()
  w = P.Wells(manifold, centres, concentration=np.geomspace(3., 300., 9),
              curvature=0.5, bound='well', dtype=dtype)
  with tf.GradientTape(persistent=True) as outer:
    outer.watch(y)
    with tf.GradientTape() as inner:
      inner.watch(y)
      psi = w(y)
    grad = inner.gradient(psi, y)
  hess = outer.batch_jacobian(grad, y)
  c_psi, c_grad, c_hess = w.ambient_derivatives(y)
  tol = 1e-5 if dtype == tf.float32 else 1e-12
  np.testing.assert_allclose(c_psi, psi, atol=tol)
  np.testing.assert_allclose(c_grad, grad, atol=tol * 10)
  np.testing.assert_allclose(c_hess, hess, atol=tol * 100)


def test_wells_log_det_and_its_parameter_gradient_match_the_tape_path():
  """The engine's closed-form path gives the tape path's log-det and the
  same gradient in the wells' variables (what training differentiates)."""
  m = ircpm.Sphere(2)
  centres = _clusters(m, 12, 0)
  w = P.Wells(m, centres, concentration=50., curvature=0.3, bound='well',
              dtype=tf.float64)
  hidden = lambda z: w(z)   # no ambient_derivatives: nested tapes
  y = tf.constant(_clusters(m, 64, 1))
  values, grads = [], []
  for psi in (w, hidden):
    bij = ircpm.IRCPM(m, psi)
    with tf.GradientTape() as tape:
      ildj = bij.inverse_log_det_jacobian(y, event_ndims=1)
      loss = tf.reduce_sum(ildj)
    values.append(ildj.numpy())
    grads.append([g.numpy() for g in tape.gradient(
        loss, [w.share_logits, w.log_excess_concentration])])
  np.testing.assert_allclose(values[0], values[1], rtol=1e-10, atol=1e-10)
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
  assert np.abs(values[0]).max() > 0.1   # the wells do move mass


# --- the KDE baseline ---------------------------------------------------------

@pytest.mark.parametrize('manifold,quadrature', [
    (ircpm.Sphere(2), _sphere_quadrature),
    (ircpm.Torus(2), _torus_quadrature)], ids=['S2', 'T2'])
def test_kde_integrates_to_one(manifold, quadrature):
  pts, w = quadrature()
  centres = _clusters(manifold, 50, 3)
  for kappa in (0.5, 30.):
    q = kde.kde(manifold, centres, kappa)
    assert _integral(q.log_prob, pts, w) == pytest.approx(1., abs=2e-3)


def test_kde_on_the_torus_is_the_product_of_von_mises_average():
  m = ircpm.Torus(2)
  c = _clusters(m, 7, 4)
  x = _clusters(m, 5, 5)
  kappa = 3.
  i0 = np.i0(kappa)
  dens = np.exp(kappa * np.cos(x[:, None, :] - c[None]).sum(-1)) / (
      2 * np.pi * i0) ** 2
  np.testing.assert_allclose(kde.kde(m, c, kappa).log_prob(x),
                             np.log(dens.mean(1)), rtol=1e-10)


def test_tune_picks_the_validation_minimiser_and_reports_the_grid():
  m = ircpm.Sphere(2)
  train, val = _clusters(m, 300, 6), _clusters(m, 100, 7)
  grid = [1., 10., 40., 160., 2000.]
  tuned = kde.tune(m, train, val, grid)
  assert tuned.concentration == grid[int(np.argmin(tuned.grid_validation_nll))]
  assert tuned.validation_nll == min(tuned.grid_validation_nll)
  # The truth has κ = 40 per cluster, so neither end of the grid wins.
  assert tuned.concentration in (10., 40., 160.)


# --- data helpers -----------------------------------------------------------------

def test_deduplicated_drops_exactly_the_rows_seen_in_training():
  train = np.array([[0., 0., 1.], [1., 0., 0.]])
  test = np.array([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.],
                   [0., 1., 1e-6]])
  np.testing.assert_array_equal(data_lib.deduplicated(test, train),
                                test[[1, 3]])
  # The same rounding decides what is distinct: a float32 copy of a row is
  # no new point, a row 1e-6 away is.
  rows = np.concatenate([test, test.astype(np.float32)])
  np.testing.assert_array_equal(data_lib.distinct(rows),
                                np.unique(test, axis=0))


def test_well_owners_are_the_rows_of_unrepeated_centres():
  m = ircpm.Sphere(2)
  pts = m.uniform(tf.float64).sample(6, seed=3).numpy()
  train = np.concatenate([pts, pts[2:4]])   # rows 6, 7 repeat rows 2, 3
  w = P.Wells(m, data_lib.distinct(train), concentration=100., curvature=0.1,
              dtype=tf.float64)
  owners = density.well_owners(train, w)
  for j, c in enumerate(w.centre_variable.numpy()):
    rows = np.where(np.all(np.isclose(train, c, atol=1e-9), -1))[0]
    assert owners[j] == (rows[0] if len(rows) == 1 else -1)
  assert sorted(owners[owners >= 0]) == [0, 1, 4, 5]


def test_read_columns_by_name_and_index(tmp_path):
  path = tmp_path / 'a.csv'
  path.write_text('# source\nphi,psi,label\n0.5,1.5,3\n-1,2,4\n')
  np.testing.assert_array_equal(data_lib.read_columns(str(path), ['psi', '0']),
                                [[1.5, 0.5], [2., -1.]])
  with pytest.raises(ValueError, match="no column 'chi'"):
    data_lib.read_columns(str(path), ['chi'])
  path.write_text('0.5\nx\n')
  with pytest.raises(ValueError, match='row 2'):
    data_lib.read_columns(str(path))


# --- density.fit --------------------------------------------------------------------

SMALL = dict(concentrations=(10., 60.), num_centres=40, steps=150,
             learning_rate=5e-2, share=0.3,
             eval_every=25, check_points=2000, jit_compile=False,
             verbose=False, dtype=tf.float64)


@pytest.fixture(scope='module', params=[
    (ircpm.Sphere(2), 'uniform'), (ircpm.Torus(2), 'auto'),
    (ircpm.Sphere(2), 'vmf_mixture')], ids=['S2', 'T2', 'S2-mixture'])
def fitted(request):
  m, base = request.param
  train, val = _clusters(m, 400, 10), _clusters(m, 200, 11)
  q, report = density.fit(train, val, m, seed=0, base=base,
                          base_components=30, base_steps=100, **SMALL)
  return m, train, val, q, report


def test_fit_gains_over_its_uniform_base_and_is_a_checked_diffeomorphism(
    fitted):
  m, train, val, q, report = fitted
  if report.config['base'] == 'uniform':
    assert report.base_validation_nll == pytest.approx(math.log(m.volume))
    # Three κ = 40 clusters, whose own NLL is about 2.3 nats below
    # uniform: two small layers in 150 steps must gain a real part of it.
    assert report.validation_nll < report.base_validation_nll - 0.75
  else:
    # The fitted mixture is near the truth already; the layers, started
    # near the identity and selected on validation, must not lose.
    assert report.base_validation_nll == pytest.approx(
        training.batched_nll(q.distribution, val), abs=1e-6)
    assert report.base_validation_nll < math.log(m.volume) - 1.5
    assert report.validation_nll <= report.base_validation_nll + 0.02
  assert report.validation_nll == pytest.approx(
      training.batched_nll(q, val), abs=1e-8)
  assert report.diffeomorphism.passed
  assert report.best_step >= 0
  selected = [r for r in report.history if r['step'] == report.best_step][0]
  assert selected['min_det'] > 0.


def test_fitted_density_integrates_to_one(fitted):
  m, _, _, q, _ = fitted
  pts, w = (_sphere_quadrature() if isinstance(m, ircpm.Sphere)
            else _torus_quadrature(300))
  assert _integral(q.log_prob, pts, w) == pytest.approx(1., abs=5e-3)


def test_fit_respects_the_time_budget_and_rejects_bad_points():
  m = ircpm.Sphere(2)
  train, val = _clusters(m, 100, 12), _clusters(m, 50, 13)
  _, report = density.fit(train, val, m, time_budget_s=0., base='uniform',
                          **SMALL)
  assert report.stopped_by == 'time_budget' and report.steps_run == 1
  with pytest.raises(ValueError, match='off the sphere'):
    density.fit(train * 2., val, m, **SMALL)
  bad = val.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    density.fit(train, bad, m, **SMALL)
  with pytest.raises(TypeError, match='Sphere and Torus'):
    density.fit(train, val, ircpm.Power(m, 1), **SMALL)


def test_command_line_writes_a_report(tmp_path):
  rng = np.random.default_rng(0)
  lat = np.clip(rng.normal(35., 8., 300), -89, 89)
  lon = rng.normal(-100., 10., 300)
  csv = tmp_path / 'events.csv'
  csv.write_text('latitude,longitude\n' + '\n'.join(
      f'{a:.4f},{b:.4f}' for a, b in zip(lat, lon)) + '\n')
  out = tmp_path / 'out'
  result = density.main(['--csv', str(csv), '--steps', '60',
                         '--base', 'uniform',
                         '--concentrations', '10,60', '--num_centres', '30',
                         '--check_points', '1000', '--output_dir', str(out)])
  with open(out / 'events_seed0.json') as f:
    saved = json.load(f)
  assert saved['test_nll'] == pytest.approx(result['test_nll'])
  assert saved['num_test'] == 30
  # A broad cluster: the fit and the KDE both beat the uniform density.
  assert saved['test_nll'] < math.log(4 * math.pi) - 0.5
  assert saved['kde']['test_nll'] < math.log(4 * math.pi) - 0.5
  assert saved['diffeomorphism']['passed']
  assert os.path.exists(out / 'events_seed0.png') == (
      'figure' in saved)


@pytest.mark.slow   # fit on T² is tested above; this adds the CSV path
def test_command_line_on_angles_fits_a_torus(tmp_path):
  angles = _clusters(ircpm.Torus(2), 200, 14)
  csv = tmp_path / 'dihedrals.csv'
  csv.write_text('phi,psi\n' + '\n'.join(f'{a:.5f},{b:.5f}'
                                         for a, b in angles) + '\n')
  result = density.main(['--csv', str(csv), '--angles', '--steps', '40',
                         '--concentrations', '10', '--num_centres', '20',
                         '--check_points', '500', '--no_kde',
                         '--output_dir', str(tmp_path / 'out')])
  assert result['manifold'] == 'Torus(2)' and 'kde' not in result
  assert result['test_nll'] < 2 * math.log(2 * math.pi) - 0.3
  assert result['diffeomorphism']['passed']
