"""Losses, ESS/KL metrics against known answers, and short training runs."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import targets
from tfp_ircpm import training
from conftest import make_bijector

tfd = tfp.distributions
tfb = tfp.bijectors
M = ircpm.manifolds


def _vmf_target(kappa, mu):
  mu_t = tf.constant(mu, tf.float64)
  return targets.Target(
      M.Sphere(2),
      lambda x: -kappa * tf.reduce_sum(tf.cast(mu_t, x.dtype) * x, -1),
      targets.sphere_grid, 'vmf')


def test_metrics_of_the_exact_model_are_perfect():
  kappa, mu = 3., [0., 0.6, 0.8]
  target = _vmf_target(kappa, mu)
  np.testing.assert_allclose(
      target.log_normalizer, math.log(4 * math.pi * math.sinh(kappa) / kappa),
      rtol=1e-12)
  q = tfd.VonMisesFisher(tf.constant(mu, tf.float64),
                         tf.constant(kappa, tf.float64))
  m = training.evaluate(q, target, 20000, seed=(1, 2))
  np.testing.assert_allclose(m['ess'], 1., atol=1e-9)
  np.testing.assert_allclose(m['kl'], 0., atol=1e-9)


def test_metrics_of_uniform_against_vmf_match_closed_forms():
  """q = U(S²), p = vMF(κ): KL = log(sinh κ / κ), ESS → 1/(κ coth κ)."""
  kappa = 2.
  target = _vmf_target(kappa, [0., 0., 1.])
  q = M.Sphere(2).uniform(tf.float64)
  m = training.evaluate(q, target, 20000, seed=(3, 4))
  np.testing.assert_allclose(m['kl'], math.log(math.sinh(kappa) / kappa),
                             atol=0.01)
  np.testing.assert_allclose(m['ess'], math.tanh(kappa) / kappa, atol=0.02)


def test_ess_from_log_weights_is_shift_invariant_and_exact():
  w = np.array([1., 2., 3., 4.])
  expected = w.sum() ** 2 / (w ** 2).sum() / 4
  for shift in [0., -700., 700.]:
    np.testing.assert_allclose(
        training.ess_from_log_weights(tf.constant(np.log(w) + shift)),
        expected, rtol=1e-12)


def test_reverse_kl_training_lowers_kl():
  target = targets.torus_u3()
  psi = ircpm.potentials.EnergyPotential(target.manifold, target.energy,
                                         alpha=0.)     # starts as identity
  bij = ircpm.IRCPM(target.manifold, psi)
  q = tfd.TransformedDistribution(target.manifold.uniform(),
                                  tfb.Chain([bij, bij]))
  before = training.evaluate(q, target, 4000, seed=(0, 1))
  losses = training.fit_reverse_kl(q, target, 100, batch_size=256,
                                   learning_rate=0.05, log_every=0)
  after = training.evaluate(q, target, 4000, seed=(0, 1))
  assert np.mean(losses[-20:]) < losses[0] - 0.1
  assert after['kl'] < 0.6 * before['kl']
  assert after['ess'] > before['ess']
  # The loss is KL - log Z, the same quantity as evaluate()'s KL.
  np.testing.assert_allclose(np.mean(losses[-20:]) + target.log_normalizer,
                             after['kl'], atol=0.05)


def test_maximum_likelihood_never_solves(solve_calls):
  calls = solve_calls
  target = targets.sphere_four_modes()
  bij = make_bijector(target.manifold, dtype=tf.float32, scale=0.05, seed=1)
  q = tfd.TransformedDistribution(target.manifold.uniform(),
                                  tfb.Chain([bij, bij]))
  data = tfd.VonMisesFisher(tf.constant(targets.sphere_modes()[0], tf.float32),
                            10.).sample(512, seed=(1, 1))
  losses = training.train(lambda s: training.nll_loss(q, data),
                          q.trainable_variables, 60, learning_rate=1e-2,
                          log_every=0)
  assert not calls
  assert losses[-1] < losses[0] - 0.1
  training.reverse_kl_loss(q, target, 8, seed=(1, 2))   # the guard: it counts
  assert calls


def test_diffeomorphism_monitor_stops_training_on_a_folded_map():
  torus = M.Torus(1)
  amplitude = tf.Variable(0.2, dtype=tf.float64)
  bij = ircpm.IRCPM(torus, lambda y: amplitude * tf.cos(y[..., 0]),
                    nonconvergence='ignore')
  monitor = training.DiffeomorphismMonitor(bij, every=2, num_points=500,
                                           dtype=tf.float64)

  def loss_fn(seed):   # pushes the amplitude up until 1 - a cos y < 0
    del seed
    return -amplitude

  losses = training.train(loss_fn, [amplitude], 200, learning_rate=0.1,
                          log_every=0, callback=monitor)
  assert len(losses) < 200                  # stopped early
  steps_ok = [s for s, r in monitor.reports if r.passed]
  assert steps_ok and monitor.reports[-1][1].passed is False
  assert float(amplitude) > 1.              # where f⁻¹ = y - a sin y folds


def test_bridge_log_normalizer_recovers_log_z_where_importance_sampling_fails():
  """q = N(0, 1), p̃ = Z · N(0.5, 2²): q's weights have infinite variance, so
  log mean_q w is biased low; the bridge estimate with p's samples is not."""
  rng = np.random.default_rng(0)
  log_z, mu, sigma, n = np.log(3.7), 0.5, 2., 4000

  def log_w(x):
    log_p = (log_z - 0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma)
             - 0.5 * np.log(2 * np.pi))
    return log_p - (-0.5 * x ** 2 - 0.5 * np.log(2 * np.pi))

  a = log_w(rng.normal(size=n))
  b = log_w(mu + sigma * rng.normal(size=n // 3))   # unequal sizes
  bridge = training.bridge_log_normalizer(a, b)
  importance = np.logaddexp.reduce(a) - np.log(n)
  assert abs(bridge - log_z) < 0.03
  assert log_z - importance > 3. * abs(bridge - log_z)
  # Exact when p is q up to the constant: every weight is Z.
  np.testing.assert_allclose(training.bridge_log_normalizer(
      np.full(5, log_z), np.full(7, log_z)), log_z, atol=1e-9)
  with pytest.raises(ValueError, match='finite'):
    training.bridge_log_normalizer(np.array([0., np.nan]), np.zeros(3))


def test_bridge_log_normalizer_solves_bennetts_equation_without_overlap():
  """q = N(0, 1) against p = N(μ, 1): at μ = 4 (E_q w² = e¹⁶ Z²) the bridge
  is still close to log Z; at μ = 12 and 20 the samples do not overlap
  (Meng & Wong's iteration does not converge in 10⁵ steps at μ = 12), both
  sides of Bennett's equation Σ_q σ(log w + k − c) = Σ_p σ(c − k − log w),
  k = log N_p/N_q, are below 1e-12 at the root, and the returned c still
  balances them to a relative 1e-6."""
  rng = np.random.default_rng(1)
  log_z, n = np.log(3.7), 4000
  log_sigmoid = lambda z: -np.logaddexp(0., -z)
  for mu in (4., 12., 20.):
    log_w = lambda x: log_z - 0.5 * (x - mu) ** 2 + 0.5 * x ** 2
    a = log_w(rng.normal(size=n))
    b = log_w(mu + rng.normal(size=n // 3))
    c = training.bridge_log_normalizer(a, b)
    k = np.log(b.size / a.size)
    log_lhs = np.logaddexp.reduce(log_sigmoid(a + k - c))
    log_rhs = np.logaddexp.reduce(log_sigmoid(c - k - b))
    assert abs(log_lhs - log_rhs) < 1e-6, (mu, log_lhs, log_rhs)
    if mu == 4.:
      assert abs(c - log_z) < 0.5      # its spread over seeds: 0.11
    else:
      assert log_lhs < np.log(1e-12)


def _nan_at(bad_step, v):
  """A quadratic loss that is NaN at step `bad_step` (counted by a variable:
  an integer seed's splits are not the same from call to call)."""
  count = tf.Variable(-1)

  def loss_fn(s):
    del s
    bad = tf.equal(count.assign_add(1), bad_step)
    # NaN in the loss and in its gradient at the bad step only (the inner
    # where keeps the other steps' gradients finite).
    nan_factor = tf.where(bad, tf.constant(float('nan')), 1.)
    return tf.reduce_sum(tf.square(v - 3.)) + tf.where(
        bad, tf.reduce_sum(v) * nan_factor, 0.)
  return loss_fn


@pytest.mark.parametrize('jit_compile', [False, True])
def test_a_nonfinite_step_is_never_applied(jit_compile):
  """A NaN loss at step 2: 'raise' stops there with the variables and the
  optimizer of step 1; 'skip' drops only that step, so the run equals a run
  of the finite steps alone (Adam's moments included)."""
  v = tf.Variable([0., 1.])
  opt = tf_keras.optimizers.Adam(0.1)
  with pytest.raises(FloatingPointError, match='step 2'):
    training.train(_nan_at(2, v), [v], 6, optimizer=opt, log_every=0,
                   jit_compile=jit_compile)
  after_two = v.numpy()
  assert int(opt.iterations) == 2 and np.all(np.isfinite(after_two))

  v.assign([0., 1.])
  opt = tf_keras.optimizers.Adam(0.1)
  losses = training.train(_nan_at(2, v), [v], 6, optimizer=opt, log_every=0,
                          jit_compile=jit_compile, nonfinite='skip')
  assert np.isnan(losses[2]) and np.all(np.isfinite(np.delete(losses, 2)))
  assert int(opt.iterations) == 5
  np.testing.assert_allclose(after_two, _plain_adam_steps(2), rtol=1e-6)
  np.testing.assert_allclose(v.numpy(), _plain_adam_steps(5), rtol=1e-6)


def _plain_adam_steps(k):
  """The variable after k Adam(0.1) steps on the finite quadratic."""
  w = tf.Variable([0., 1.])
  opt = tf_keras.optimizers.Adam(0.1)
  for _ in range(k):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(w - 3.))
    opt.apply_gradients([(tape.gradient(loss, w), w)])
  return w.numpy()


def test_a_nonfinite_step_under_a_strategy_keeps_the_variables_finite():
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with strategy.scope():
    v = tf.Variable([0., 1.])
    opt = tf_keras.optimizers.Adam(0.1)
  losses = training.train(_nan_at(2, v), [v], 4, optimizer=opt,
                          log_every=0, strategy=strategy, nonfinite='skip')
  assert np.isnan(losses[2]) and np.all(np.isfinite(v.numpy()))
  with pytest.raises(ValueError, match='nonfinite'):
    training.train(_nan_at(2, v), [v], 1, nonfinite='ignore')


def test_a_nonfinite_step_with_sparse_gradients_is_not_applied():
  """Gradients of a gather are IndexedSlices; the check reads their values."""
  table = tf.Variable([[0., 1.], [2., 3.]])
  count = tf.Variable(-1)

  def loss_fn(s):
    del s
    bad = tf.equal(count.assign_add(1), 1)
    row = tf.gather(table, [0])
    nan_factor = tf.where(bad, tf.constant(float('nan')), 1.)
    return tf.reduce_sum(tf.square(row * nan_factor - 3.))

  opt = tf_keras.optimizers.Adam(0.1)
  with pytest.raises(FloatingPointError, match='step 1'):
    training.train(loss_fn, [table], 3, optimizer=opt, log_every=0)
  assert int(opt.iterations) == 1 and np.all(np.isfinite(table.numpy()))
