"""potentials.Wells: the curvature bound, the certified budget, densities."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import derivatives
from tfp_ircpm import manifolds as M
from tfp_ircpm import potentials as P
from conftest import fibonacci_sphere

tfd = tfp.distributions

MANIFOLDS = {
    'S2': lambda: M.Sphere(2),
    'T2': lambda: M.Torus(2),
    'T1xS2': lambda: M.Product([M.Torus(1), M.Sphere(2)]),
}


def _wells(m, n_wells, seed, bound='well', kappa_range=(1.5, 400.),
           curvature=0.5):
  rng = np.random.default_rng(seed)
  centres = m.random_uniform(n_wells, tf.float64, seed=seed).numpy()
  kappa = np.exp(rng.uniform(*np.log(kappa_range), n_wells))
  w = P.Wells(m, centres, concentration=kappa, curvature=curvature,
              bound=bound, dtype=tf.float64)
  w.share_logits.assign(rng.normal(0., 2., n_wells))
  return w


def _points_near(m, w, n, seed):
  """Uniform points plus points at distances ~ 1/√κ of the centres (where
  the concave skirts are) — uniform points alone rarely land there."""
  rng = np.random.default_rng(seed)
  c = w.centres().numpy()
  k = w.concentrations().numpy()
  i = rng.integers(0, len(c), n)
  frame = m.tangent_frame(tf.constant(c[i])).numpy()
  v = rng.normal(size=(n, m.dim))
  v *= (rng.uniform(0.2, 3., n) / np.sqrt(k[i]) / np.linalg.norm(
      v, axis=-1))[:, None]
  near = m.expmap(tf.constant(c[i]),
                  tf.constant(np.einsum('nad,nd->na', frame, v)))
  return tf.concat([near, m.random_uniform(n, tf.float64, seed=seed)], 0)


def test_well_concavity_is_the_minimum_of_its_bound():
  for k in [1., 3., 30., 1e4]:
    u = np.linspace(0., 10. / k, 200001)
    g = np.exp(-2. * k * u) * (1. - (2. + 4. * k) * u)
    assert P.well_concavity(k) == pytest.approx(-g.min(), rel=1e-6)
  assert P.well_concavity(1e8) == pytest.approx(2. * math.exp(-1.5), rel=1e-6)


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
def test_hessian_and_gradient_stay_within_the_derived_bounds(name):
  """λ_min(Hess ψ) >= −Σ a_i m(κ_i) and ‖grad ψ‖ <= Σ a_i/√(eκ_i), with the
  Riemannian derivatives by nested tapes, at skirt and uniform points."""
  m = MANIFOLDS[name]()
  for seed in range(3):
    w = _wells(m, 6, seed)
    y = _points_near(m, w, 400, seed)
    _, grad, hess, _ = derivatives.frame_derivatives(m, w, y)
    g_bound, h_bound = [float(b) for b in w.gradient_and_concavity_bounds()]
    lam_min = np.linalg.eigvalsh(hess.numpy())[:, 0]
    assert lam_min.min() >= -h_bound - 1e-10
    assert np.linalg.norm(grad.numpy(), axis=-1).max() <= g_bound + 1e-10
    # A non-vacuous check: the skirts were sampled, ψ is concave there.
    assert lam_min.min() < -0.2 * h_bound / 6.


def test_a_single_sharp_well_attains_its_bound_and_has_curvature_a_at_c():
  m = M.Sphere(2)
  c = np.array([[0., 0.6, 0.8]])
  w = P.Wells(m, c, concentration=1e4, curvature=0.5, bound='well',
              dtype=tf.float64)
  a = float(w.curvatures()[0])
  _, _, hess, _ = derivatives.frame_derivatives(m, w, tf.constant(c))
  np.testing.assert_allclose(hess.numpy()[0], a * np.eye(2), rtol=1e-6)
  # On the radial line the minimum of λ_min is a·m(κ) up to O(1/κ).
  frame = m.tangent_frame(tf.constant(c)).numpy()[0]
  r = np.linspace(0.001, 0.05, 2000)
  y = m.expmap(tf.constant(np.repeat(c, len(r), 0)),
               tf.constant(r[:, None] * frame[:, 0][None]))
  _, _, hess, _ = derivatives.frame_derivatives(m, w, y)
  lam = np.linalg.eigvalsh(hess.numpy())[:, 0].min()
  assert lam == pytest.approx(-a * P.well_concavity(1e4), rel=2e-3)


@pytest.mark.parametrize('name', ['S2', 'T2'])
def test_certified_wells_give_diffeomorphisms_for_any_shares(name):
  """bound='sum': with the whole budget on few, overlapping wells (the
  worst case for the sum), det J_{f⁻¹} > 0, the solve from y = x converges
  and round trips close, as Lemma 4 guarantees."""
  m = MANIFOLDS[name]()
  centres = m.random_uniform(1, tf.float64, seed=1).numpy()
  centres = np.repeat(centres, 4, 0)           # four wells on one point
  w = P.Wells(m, centres, concentration=[2., 5., 50., 500.],
              curvature=0.99, bound='sum', dtype=tf.float64)
  w.share_logits.assign([8., 8., 8., 8.])      # Σ s ≈ 1
  _, h_bound = w.gradient_and_concavity_bounds()
  assert float(h_bound) == pytest.approx(w.budget, rel=1e-3)
  bij = ircpm.IRCPM(m, w)
  report = ircpm.diagnostics.check_diffeomorphism(
      bij, num_points=2000, points=_points_near(m, w, 1000, 0))
  assert report.passed, report
  assert report.min_det_points > 0. and report.min_det_uniform > 0.


def test_certified_budget_matches_lemma4():
  """The budget A satisfies Lemma 4 at the radius its gradient bound needs,
  and no radius on a 50x finer grid certifies more than 0.5% above it."""
  s2 = M.Sphere(2)
  for kmin in [1., 10.]:
    a = P._wells_budget(s2, kmin)
    c0 = 1. / (P.well_concavity(kmin) * math.sqrt(math.e * kmin))
    lam = 2. * c0 * a / 0.98                 # the radius the gradient needs
    assert a <= 0.98 * lam / math.tan(lam) + 1e-9
    best = max(min(0.98 * r / 2. / c0, 0.98 * r / math.tan(r))
               for r in np.linspace(1e-4, math.pi / 2. - 1e-4, 20000))
    assert a <= best + 1e-9 and a >= 0.995 * best
  assert P._wells_budget(M.Torus(2), 1.) == pytest.approx(0.98)


def test_sharp_wells_density_integrates_to_one_and_concentrates():
  m = M.Sphere(2)
  c = np.array([[0., 0., 1.], [1., 0., 0.]])
  w = P.Wells(m, c, concentration=[40., 80.], curvature=0.9, bound='well',
              dtype=tf.float64)
  q = tfd.TransformedDistribution(m.uniform(tf.float64), ircpm.IRCPM(m, w))
  pts = tf.constant(fibonacci_sphere(200000))
  log_q = q.log_prob(pts).numpy()
  assert np.mean(np.exp(log_q)) * 4. * math.pi == pytest.approx(1., abs=2e-3)
  # At a centre the density gains (1 + a)² over the uniform one.
  a = w.curvatures().numpy()
  at_c = q.log_prob(tf.constant(c)).numpy() + math.log(4. * math.pi)
  np.testing.assert_allclose(at_c, 2. * np.log1p(a), rtol=1e-6)


def test_overlapping_uncertified_wells_fold_and_are_reported():
  m = M.Sphere(2)
  c = np.repeat(np.array([[0., 0., 1.]]), 8, 0)
  w = P.Wells(m, c, concentration=300., curvature=0.9, bound='well',
              dtype=tf.float64)
  bij = ircpm.IRCPM(m, w, fold='nan')
  y = _points_near(m, w, 500, 0)
  assert np.isnan(bij.inverse_log_det_jacobian(y).numpy()).any()
  report = ircpm.diagnostics.check_diffeomorphism(bij, num_points=1000,
                                                  points=y)
  assert not report.passed and report.min_det_points <= 0.


def test_variables_gradients_and_validation():
  m = M.Sphere(2)
  w = P.Wells(m, np.eye(3), concentration=10., dtype=tf.float64)
  assert len(w.trainable_variables) == 3
  q = tfd.TransformedDistribution(m.uniform(tf.float64), ircpm.IRCPM(m, w))
  x = m.random_uniform(16, tf.float64, seed=0)
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(q.log_prob(x))
  grads = tape.gradient(loss, w.trainable_variables)
  assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
  with pytest.raises(ValueError, match='unit spheres'):
    P.Wells(M.Power(_Flat(), 2), np.zeros([1, 4]))
  with pytest.raises(ValueError, match='shape'):
    P.Wells(m, np.zeros([2, 2]))
  with pytest.raises(ValueError, match='exceed'):
    P.Wells(m, np.eye(3), concentration=1.)
  with pytest.raises(ValueError, match="'sum', 'well' or 'crowd'"):
    P.Wells(m, np.eye(3), bound='both')


class _Flat(M.Torus):
  """A torus that does not declare its embedding."""

  def __init__(self):
    super().__init__(2)

  @property
  def unit_sphere_embedding(self):
    return False


def test_crowd_bound_gives_coincident_wells_the_budget_of_one():
  """bound='crowd': k wells at one point act exactly as one well there,
  and a lone well keeps its full share."""
  m = M.Sphere(2)
  pile = np.repeat([[0., 0., 1.]], 5, 0)
  lone = np.array([[1., 0., 0.]])
  # κ = 1000: the pile's kernel at the lone well, 5 e^{−125}, is 0.
  crowd = P.Wells(m, np.concatenate([pile, lone]), concentration=1000.,
                  curvature=0.9, bound='crowd', dtype=tf.float64)
  one = P.Wells(m, np.concatenate([pile[:1], lone]), concentration=1000.,
                curvature=0.9, bound='well', dtype=tf.float64)
  np.testing.assert_allclose(crowd.crowding(), [5.] * 5 + [1.], atol=1e-5)
  y = m.uniform(tf.float64).sample(2000, seed=3)
  np.testing.assert_allclose(crowd(y), one(y), atol=1e-6)
  # The concavity bound of the pile is that of one well, not five.
  np.testing.assert_allclose(crowd.gradient_and_concavity_bounds()[1],
                             one.gradient_and_concavity_bounds()[1],
                             rtol=1e-5)


@pytest.mark.parametrize('name', ['S2', 'T2'])
def test_leave_one_out_drops_exactly_each_rows_own_well(name):
  """Row n of a batch sees ψ without the well that row owns: the same
  value and closed-form derivatives as `Wells` built without that centre
  (and all wells where the row owns none, or in a call of another size)."""
  m = MANIFOLDS[name]()
  w = _wells(m, 7, seed=21, kappa_range=(5., 200.))
  c = w.centres().numpy()
  owners = np.array([3, -1, 0, 5, -1, 2, 6], np.int32)   # well j's row
  rows = np.array([0, 1, 3, 5, 2], np.int32)   # the batch's row indices
  loo = P.LeaveOneOut(w, owners, batch_size=len(rows))
  loo.rows.assign(rows)
  # Each row sits near (not at) its own well, where that well matters
  # (row 1 owns none: near well 1, which is shared).
  near = [int(np.where(owners == r)[0][0]) if r in owners else 1
          for r in rows]
  k = w.concentrations().numpy()[near]
  v = m.proju(tf.constant(c[near]), tf.constant(
      np.random.default_rng(4).normal(size=c[near].shape))).numpy()
  v *= (0.5 / np.sqrt(k) / np.linalg.norm(v, axis=-1))[:, None]
  x = m.expmap(tf.constant(c[near]), tf.constant(v))
  value = loo(x).numpy()
  psi, grad, hess = loo.ambient_derivatives(x)
  for n, row in enumerate(rows):
    own = np.where(owners == row)[0]
    keep = np.setdiff1d(np.arange(7), own)
    ref = P.Wells(m, c[keep], concentration=w.concentrations().numpy()[keep],
                  curvature=0.5, bound='well', dtype=tf.float64)
    ref.share_logits.assign(w.share_logits.numpy()[keep])
    xn = x[n:n + 1]
    r_psi, r_grad, r_hess = ref.ambient_derivatives(xn)
    np.testing.assert_allclose(value[n], r_psi[0], rtol=1e-12)
    np.testing.assert_allclose(psi[n], r_psi[0], rtol=1e-12)
    np.testing.assert_allclose(grad[n], r_grad[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(hess[n], r_hess[0], rtol=1e-10, atol=1e-14)
    if len(own):   # the own well was there to drop
      assert abs(value[n] - w(xn).numpy()[0]) > 1e-6
    else:
      assert value[n] == pytest.approx(w(xn).numpy()[0], rel=1e-14)
  # Another size (the log-det's global-minimum candidates): every well.
  np.testing.assert_allclose(loo(x[:3]), w(x[:3]), rtol=1e-14)
  # The variables are the wells' own, so its gradient trains them.
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(loo(x))
  assert tape.gradient(total, w.share_logits) is not None
