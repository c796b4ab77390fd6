"""metrics: ESS, KL(q‖p), bridge log-normalisers and held-out NLL.

Proven here:

* `ess_from_log_weights` is (Σw)²/Σw²/N: 1 for constant weights, 1/N for
  one-hot weights, k/N for k equal non-zero weights;
* `evaluate(q, p)` with a normalised `tfd.Distribution` p, for identity
  flows (`make_flow(..., zero_output=True)`, float64): over U(S²) against
  vMF(μ, κ) its KL is log(sinh κ / κ) and its ESS E_q[w]²/E_q[w²] (by
  quadrature), each within 5 Monte-Carlo standard errors computed by
  quadrature; over a vMF base against another vMF, the closed-form KL
  between two vMFs (checked against quadrature too) and the quadrature
  ESS, within the same error. Against its own base (w ≡ 1) ESS = 1 and
  KL = 0;
* `evaluate` with a `targets.Target` adds its log_normalizer: the same KL
  and ESS as with the normalised distribution, on the same samples; its
  batches draw exactly `num_samples` points (recomputed by hand); a
  non-finite weight gives ESS NaN;
* `bridge_log_normalizer` is shift-equivariant, antisymmetric under
  exchanging the roles of q and p (Bennett's equation), recovers a known
  log Z on S² (U(S²) against Z·vMF), and rejects bad input;
* `batched_nll` is −mean log q in uneven batches; `log_prob_fn` keeps one
  function per distribution.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from conftest import fibonacci_sphere
from tfp_ircpm import metrics
from tfp_ircpm import targets

tfd = tfp.distributions
M = ircpm.manifolds

S2 = M.Sphere(2)
AREA = 4. * math.pi


def _vmf(mu, kappa):
  mu = np.asarray(mu, np.float64)
  return tfd.VonMisesFisher(tf.constant(mu / np.linalg.norm(mu)),
                            tf.constant(kappa, tf.float64))


@pytest.fixture(scope='module')
def identity_flow():
  """make_flow(..., zero_output=True) over U(S²): ψ = 0, f = id (float64).

  Its gradient-descent solve traces faster than a Newton one; at ψ = 0 both
  stop at y = x before their first step.
  """
  return ircpm.make_flow(S2, 1, hidden_units=(8, 8), zero_output=True,
                         dtype=tf.float64, method='gradient')


# Every evaluate() of the identity flow draws batches of 5000 (the default
# batch_size): a new static batch size would retrace its solve (seconds).


def _over(base, flow):
  """The same IRCPM stack over another base (its solve is traced once)."""
  return tfd.TransformedDistribution(base, flow.bijector)


def _quadrature_moments(log_q, log_p, n=40000):
  """E_q[w^k], k = 1..4, w = p/q, by Fibonacci quadrature (area 4π/n each)."""
  pts = tf.constant(fibonacci_sphere(n))
  lq, lp = log_q(pts).numpy(), log_p(pts).numpy()
  return [AREA * np.mean(np.exp(k * lp + (1 - k) * lq)) for k in range(1, 5)]


def _ess_and_its_standard_error(moments, num_samples):
  """E[w]²/E[w²] and the delta-method error of its estimate (Σw)²/Σw²/N."""
  m1, m2, m3, m4 = moments
  ess = m1 ** 2 / m2
  cov = np.array([[m2 - m1 ** 2, m3 - m1 * m2], [m3 - m1 * m2, m4 - m2 ** 2]])
  grad = np.array([2. * m1 / m2, -m1 ** 2 / m2 ** 2])
  return ess, math.sqrt(grad @ cov @ grad / num_samples)


def test_ess_of_constant_one_hot_and_k_hot_weights():
  n = 50
  np.testing.assert_allclose(float(metrics.ess_from_log_weights(
      tf.fill([n], 3.))), 1., rtol=1e-12)
  one_hot = np.full(n, -np.inf)
  one_hot[7] = 2.
  np.testing.assert_allclose(float(metrics.ess_from_log_weights(
      tf.constant(one_hot))), 1. / n, rtol=1e-12)
  k_hot = np.full(n, -np.inf)
  k_hot[:10] = -5.
  np.testing.assert_allclose(float(metrics.ess_from_log_weights(
      tf.constant(k_hot, tf.float32))), 10. / n, rtol=1e-6)


def test_evaluate_identity_flow_over_uniform_against_a_vmf(identity_flow):
  kappa, n = 2., 20000
  q = identity_flow
  p = _vmf([0., 0.6, 0.8], kappa)
  m = metrics.evaluate(q, p, num_samples=n, seed=(1, 2))
  assert m['num_samples'] == n
  log_u = lambda y: 0. * y[:, 0] - math.log(AREA)          # U(S²)
  # KL(U‖p) = log(sinh κ / κ); its estimator's error: sd of log w / √N.
  kl = math.log(math.sinh(kappa) / kappa)
  kl_se = kappa * math.sqrt(1. / 3.) / math.sqrt(n)       # var(μ·x) = 1/3
  assert abs(m['kl'] - kl) < 5. * kl_se
  moments = _quadrature_moments(log_u, p.log_prob)
  np.testing.assert_allclose(moments[0], 1., atol=1e-6)   # E_q[w] = 1
  ess, ess_se = _ess_and_its_standard_error(moments, n)
  np.testing.assert_allclose(ess, math.tanh(kappa) / kappa, atol=1e-5)
  assert abs(m['ess'] - ess) < 5. * ess_se
  assert ess_se < 0.01                     # so the check is a sharp one


def test_evaluate_identity_flow_over_a_vmf_against_another_vmf(
    identity_flow):
  """KL(vMF(μ₁, κ₁)‖vMF(μ₂, κ₂)) = log C(κ₁) − log C(κ₂) + (κ₁ − κ₂ μ₁·μ₂)
  A(κ₁), C(κ) = κ / (4π sinh κ), A(κ) = coth κ − 1/κ."""
  n = 20000
  mu1, k1 = np.array([0., 0., 1.]), 3.
  mu2, k2 = np.array([0., math.sin(0.5), math.cos(0.5)]), 2.
  base, p = _vmf(mu1, k1), _vmf(mu2, k2)
  q = _over(base, identity_flow)
  m = metrics.evaluate(q, p, num_samples=n, seed=(3, 4))
  log_c = lambda k: math.log(k / (AREA * math.sinh(k)))
  a1 = 1. / math.tanh(k1) - 1. / k1
  kl = log_c(k1) - log_c(k2) + (k1 - k2 * mu1 @ mu2) * a1
  pts = tf.constant(fibonacci_sphere(40000))
  log_w = (p.log_prob(pts) - base.log_prob(pts)).numpy()
  q_pts = np.exp(base.log_prob(pts).numpy())
  # The closed form is E_q[log q − log p] (quadrature), ...
  np.testing.assert_allclose(AREA * np.mean(q_pts * -log_w), kl, atol=1e-5)
  # ... and evaluate's estimate of it is within 5 standard errors.
  var = AREA * np.mean(q_pts * log_w ** 2) - kl ** 2     # var_q(log w)
  assert abs(m['kl'] - kl) < 5. * math.sqrt(var / n)
  ess, ess_se = _ess_and_its_standard_error(
      _quadrature_moments(base.log_prob, p.log_prob), n)
  assert abs(m['ess'] - ess) < 5. * ess_se
  # Against its own base the weights are 1: the identity flow's log-det is 0.
  m_self = metrics.evaluate(q, base, num_samples=5000, seed=(5, 6))
  np.testing.assert_allclose(m_self['ess'], 1., atol=1e-12)
  np.testing.assert_allclose(m_self['kl'], 0., atol=1e-12)


def test_evaluate_with_a_target_adds_its_log_normalizer(identity_flow):
  kappa, mu = 3., [0., 0.6, 0.8]
  mu_t = tf.constant(mu, tf.float64)
  target = targets.Target(
      S2, lambda x: -kappa * tf.reduce_sum(tf.cast(mu_t, x.dtype) * x, -1),
      targets.sphere_grid, 'vmf')
  q = _over(_vmf([1., 0., 0.], 1.), identity_flow)
  by_target = metrics.evaluate(q, target, num_samples=5000, seed=(7, 8))
  by_dist = metrics.evaluate(q, _vmf(mu, kappa), num_samples=5000,
                             seed=(7, 8))
  np.testing.assert_allclose(by_target['kl'], by_dist['kl'], atol=1e-9)
  np.testing.assert_allclose(by_target['ess'], by_dist['ess'], rtol=1e-9)
  assert abs(target.log_normalizer) > 1.    # the shift is not negligible


def test_evaluate_draws_exactly_num_samples_in_batches():
  q, p = _vmf([0., 0., 1.], 2.), _vmf([1., 0., 0.], 1.)
  m = metrics.evaluate(q, p, num_samples=7, seed=(9, 10), batch_size=3)
  seeds = tfp.random.split_seed((9, 10), n=3)
  log_w = []
  for s, size in zip(tf.unstack(seeds), (3, 3, 1)):
    y, log_q = q.experimental_sample_and_log_prob(size, seed=s)
    log_w.append((p.log_prob(y) - log_q).numpy())
  log_w = np.concatenate(log_w)
  assert m['num_samples'] == 7
  np.testing.assert_allclose(m['kl'], -np.mean(log_w), rtol=1e-12)
  np.testing.assert_allclose(
      m['ess'], np.exp(2. * np.logaddexp.reduce(log_w)
                       - np.logaddexp.reduce(2. * log_w)) / 7, rtol=1e-12)


def test_evaluate_reports_nan_ess_for_infinite_weights():
  q = S2.uniform(tf.float64)
  target = targets.Target(
      S2, lambda x: tf.where(x[..., 2] > 0., tf.constant(np.inf, x.dtype),
                             0. * x[..., 2]), targets.sphere_grid, 'cap')
  m = metrics.evaluate(q, target, num_samples=100, seed=(1, 1))
  assert math.isnan(m['ess'])
  assert not math.isfinite(m['kl'])


def test_bridge_is_shift_equivariant_and_antisymmetric():
  rng = np.random.default_rng(3)
  a = rng.normal(0., 1., size=300)
  b = rng.normal(0.8, 1.5, size=170)
  c = metrics.bridge_log_normalizer(a, b)
  np.testing.assert_allclose(metrics.bridge_log_normalizer(a + 5., b + 5.),
                             c + 5., atol=1e-8)
  # Exchanging q and p: log w ↦ −log w, samples swapped, log Z ↦ −log Z.
  np.testing.assert_allclose(metrics.bridge_log_normalizer(-b, -a), -c,
                             atol=1e-8)


def test_bridge_recovers_log_z_on_the_sphere():
  """q = U(S²), p̃ = Z·vMF(μ, κ): log w = log Z + log vMF + log 4π."""
  log_z, kappa = math.log(0.37), 10.
  p = _vmf([0.3, -0.5, 0.8], kappa)
  xq = S2.uniform(tf.float64).sample(3000, seed=(1, 2))
  xp = p.sample(2000, seed=(3, 4))
  log_w = lambda x: log_z + p.log_prob(x).numpy() + math.log(AREA)
  estimate = metrics.bridge_log_normalizer(log_w(xq), log_w(xp))
  assert abs(estimate - log_z) < 0.05
  # Exact when every weight is Z.
  np.testing.assert_allclose(
      metrics.bridge_log_normalizer(np.full(4, log_z), np.full(9, log_z)),
      log_z, atol=1e-9)


def test_bridge_rejects_bad_input():
  with pytest.raises(ValueError, match='non-empty vectors'):
    metrics.bridge_log_normalizer(np.zeros((2, 2)), np.zeros(3))
  with pytest.raises(ValueError, match='non-empty vectors'):
    metrics.bridge_log_normalizer(np.zeros(0), np.zeros(3))
  with pytest.raises(ValueError, match='finite'):
    metrics.bridge_log_normalizer(np.zeros(3), np.array([0., np.inf]))
  with pytest.raises(ValueError, match='halvings'):
    metrics.bridge_log_normalizer(np.zeros(3), np.ones(3), max_iterations=3)


def test_batched_nll_and_log_prob_fn():
  q = _vmf([0., 1., 0.], 4.)
  x = q.sample(11, seed=(5, 5))
  expected = -np.mean(q.log_prob(x).numpy())
  np.testing.assert_allclose(metrics.batched_nll(q, x, batch_size=4),
                             expected, rtol=1e-12)
  fn = metrics.log_prob_fn(q)
  assert metrics.log_prob_fn(q) is fn
  assert metrics.log_prob_fn(_vmf([0., 1., 0.], 4.)) is not fn
  np.testing.assert_allclose(fn(x).numpy(), q.log_prob(x).numpy(), rtol=1e-12)
