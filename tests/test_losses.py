"""losses: the reverse KL (Eq. 9) and the negative log-likelihood.

Proven here (float64, S², small MLPs):

* `reverse_kl_loss(q, target, B, seed)` is mean(log q(y) − log p̃(y)) on
  y = f_L ∘ … ∘ f_1(x), x ~ base with that seed, recomputed by hand: the
  samples by composing the layers, log q by the flow's inverse route
  (`q.log_prob` on a fresh tensor: closed-form f⁻¹ and autodiff Jacobian,
  not the solve's Hessian); `return_log_weights` gives those log w
  pointwise, with −mean(log w) = loss;
* for q = vMF(μ, κ) and p̃ = exp(κ μ·x) every log-weight is log Z =
  log(4π sinh κ / κ), so the loss is −log Z exactly (the non-flow path);
* its gradient in ψ's variables matches central finite differences of the
  loss along a random direction (reparameterised samples, IFT gradients);
* the stochastic estimator's value leaves the log-det out (log base(x) −
  log p̃(y)), as documented;
* `nll_loss(q, x)` is −mean log q(x) with log q(x) = log base(f⁻¹(x)) +
  log|det J_{f⁻¹}(x)| from finite differences of the composed inverse;
* invalid estimators raise, and 'stochastic' needs a flow.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from conftest import fd_intrinsic_jacobian
from tfp_ircpm import losses
from tfp_ircpm import targets

tfd = tfp.distributions
M = ircpm.manifolds

S2 = M.Sphere(2)
# One batch size for every call on the shared flow: a new static batch size
# retraces its solve and log-det (seconds each).
BATCH = 32


@pytest.fixture(scope='module')
def flow():
  """f∘f over U(S²), one shared MLP ψ: one solve to trace for the file, and
  a gradient-descent one (a third of a Newton solve's tracing time; the
  losses do not depend on the solver)."""
  return ircpm.make_flow(S2, 2, share=True, hidden_units=(8, 8),
                         output_scale=0.2, dtype=tf.float64, seed=3,
                         method='gradient')


def _vmf_target(kappa, mu):
  mu_t = tf.constant(mu, tf.float64)
  return targets.Target(
      S2, lambda x: -kappa * tf.reduce_sum(tf.cast(mu_t, x.dtype) * x, -1),
      targets.sphere_grid, 'vmf')


def test_reverse_kl_loss_is_the_mean_log_weight_recomputed_by_hand(flow):
  q = flow
  target = targets.sphere_four_modes()
  seed = tf.constant([3, 4])
  batch = BATCH
  loss, log_w = losses.reverse_kl_loss(q, target, batch, seed,
                                       return_log_weights=True)
  # The samples: the base sample with the same seed, pushed layer by layer.
  base, layers = ircpm.flow_layers(q)
  y = base.sample(batch, seed=seed)
  for layer in layers:
    y = layer.forward(y)
  y_lib, log_q_lib = losses.sample_and_log_prob(q, batch, seed)
  np.testing.assert_allclose(y_lib.numpy(), y.numpy(), atol=1e-12)
  # log q on a fresh tensor, so no cache entry is used: the inverse route.
  y_fresh = tf.constant(y.numpy())
  log_q = q.log_prob(y_fresh).numpy()
  np.testing.assert_allclose(log_q_lib.numpy(), log_q, atol=1e-9)
  # The log-det is not negligible: q is not its base U(S²).
  assert np.max(np.abs(log_q + math.log(4. * math.pi))) > 1e-2
  log_w_ref = target.unnormalized_log_prob(y_fresh).numpy() - log_q
  np.testing.assert_allclose(log_w.numpy(), log_w_ref, atol=1e-9)
  np.testing.assert_allclose(float(loss), -np.mean(log_w_ref), atol=1e-9)
  np.testing.assert_allclose(float(loss), -np.mean(log_w.numpy()),
                             rtol=1e-14)
  # Without the weights, and with the explicit estimator: the same loss.
  np.testing.assert_allclose(
      float(losses.reverse_kl_loss(q, target, batch, seed, estimator='exact')),
      float(loss), rtol=1e-14)
  # seed=None is seed (0, 0), and another seed gives another loss.
  np.testing.assert_allclose(
      float(losses.reverse_kl_loss(q, target, batch)),
      float(losses.reverse_kl_loss(q, target, batch, (0, 0))), rtol=1e-14)
  assert abs(float(losses.reverse_kl_loss(q, target, batch, (0, 0)))
             - float(loss)) > 1e-3


def test_reverse_kl_loss_of_the_exact_model_is_minus_log_z():
  kappa, mu = 4., [0., 0.6, 0.8]
  q = tfd.VonMisesFisher(tf.constant(mu, tf.float64),
                         tf.constant(kappa, tf.float64))
  log_z = math.log(4. * math.pi * math.sinh(kappa) / kappa)
  loss, log_w = losses.reverse_kl_loss(q, _vmf_target(kappa, mu), 256,
                                       (1, 2), return_log_weights=True)
  assert log_w.shape == [256]
  np.testing.assert_allclose(log_w.numpy(), log_z, atol=1e-12)
  np.testing.assert_allclose(float(loss), -log_z, atol=1e-12)


def test_reverse_kl_gradient_matches_finite_differences(flow):
  q = flow
  target = targets.sphere_four_modes()
  seed = tf.constant([7, 8])
  variables = q.trainable_variables
  with tf.GradientTape() as tape:
    loss = losses.reverse_kl_loss(q, target, BATCH, seed)
  grads = tape.gradient(loss, variables)
  assert all(g is not None for g in grads)
  rng = np.random.default_rng(9)
  direction = [rng.normal(size=v.shape) for v in variables]
  slope = sum(float(tf.reduce_sum(g * d)) for g, d in zip(grads, direction))
  original = [v.numpy() for v in variables]

  def loss_at(t):
    for v, v0, d in zip(variables, original, direction):
      v.assign(v0 + t * d)
    return float(losses.reverse_kl_loss(q, target, BATCH, seed))

  eps = 1e-5
  try:
    fd = (loss_at(eps) - loss_at(-eps)) / (2. * eps)
  finally:
    loss_at(0.)                               # the fixture is shared
  assert abs(slope) > 1e-2                      # a direction that matters
  np.testing.assert_allclose(slope, fd, rtol=1e-5)


def test_stochastic_estimator_leaves_the_log_det_out_of_the_value(flow):
  q = flow
  target = targets.sphere_four_modes()
  seed = tf.constant([1, 5])
  loss = losses.reverse_kl_loss(q, target, BATCH, seed,
                                estimator='stochastic')
  # logdet.sample_and_log_prob draws the base sample with the first half of
  # the split seed (the second seeds the probes).
  base, layers = ircpm.flow_layers(q)
  x = base.sample(BATCH, seed=tfp.random.split_seed(seed)[0])
  y = x
  for layer in layers:
    y = layer.forward(y)
  value = np.mean(base.log_prob(x).numpy()
                  - target.unnormalized_log_prob(y).numpy())
  np.testing.assert_allclose(float(loss), value, atol=1e-10)
  exact = np.mean(q.log_prob(tf.constant(y.numpy())).numpy()
                  - target.unnormalized_log_prob(y).numpy())
  assert abs(exact - value) > 1e-3     # the log-det is really left out


def test_nll_loss_is_minus_mean_log_density_from_finite_differences(flow):
  q = flow
  data = tfd.VonMisesFisher(tf.constant([0., 0., 1.], tf.float64),
                            tf.constant(2., tf.float64)).sample(BATCH,
                                                                seed=(2, 3))
  base, layers = ircpm.flow_layers(q)

  def inverse(y):
    for layer in layers[::-1]:
      y = layer.inverse(tf.identity(y))
    return y

  jac = fd_intrinsic_jacobian(S2, inverse, data, 1e-6)
  log_q_ref = (base.log_prob(inverse(data)).numpy()
               + np.log(np.abs(np.linalg.det(jac))))
  assert np.std(np.log(np.abs(np.linalg.det(jac)))) > 1e-2
  nll, log_q = losses.nll_loss(q, data, return_log_prob=True)
  np.testing.assert_allclose(log_q.numpy(), log_q_ref, atol=1e-7)
  np.testing.assert_allclose(float(nll), -np.mean(log_q_ref), atol=1e-7)
  np.testing.assert_allclose(float(losses.nll_loss(q, data)), float(nll),
                             rtol=1e-14)


def test_invalid_estimators_raise(flow):
  q = flow
  target = targets.sphere_four_modes()
  data = S2.uniform(tf.float64).sample(4, seed=(1, 1))
  with pytest.raises(ValueError, match='estimator'):
    losses.reverse_kl_loss(q, target, 8, (0, 1), estimator='bogus')
  with pytest.raises(ValueError, match='estimator'):
    losses.reverse_kl_loss(q, target, 8, (0, 1), logdet='bogus')
  with pytest.raises(ValueError, match='estimator'):
    losses.nll_loss(q, data, estimator='bogus')
  vmf = tfd.VonMisesFisher(tf.constant([0., 0., 1.], tf.float64),
                           tf.constant(2., tf.float64))
  with pytest.raises(ircpm.flows.NotAFlowError):
    losses.reverse_kl_loss(vmf, target, 8, (0, 1), estimator='stochastic')
