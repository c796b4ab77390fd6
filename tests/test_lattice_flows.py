"""Flows on the lattice manifolds: matrix-free solves against the dense
IRCPM, equivariance of XY and O(3) flows, the stochastic log-det and its
estimator choice, and the λ_min guard on (S²)^k."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import lattice
from tfp_ircpm import logdet
from tfp_ircpm import matrix_free
from tfp_ircpm import potentials
from tfp_ircpm import training

from conftest import conv_psi, dense_hessian, random_rotation

M = ircpm.manifolds
tfd = tfp.distributions
tfb = tfp.bijectors


# -- matrix-free solve -----------------------------------------------------------


def test_conjugate_gradient_solves_spd_and_flags_indefinite():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(4, 6, 6))
  spd = a @ np.transpose(a, (0, 2, 1)) + 0.5 * np.eye(6)
  b = rng.normal(size=(4, 6))
  matvec = lambda v: tf.linalg.matvec(tf.constant(spd), v)
  r = matrix_free.conjugate_gradient(matvec, tf.constant(b), rtol=1e-12)
  np.testing.assert_allclose(r.solution, np.linalg.solve(spd, b[..., None])[..., 0],
                             rtol=1e-8)
  assert bool(tf.reduce_all(r.positive))
  indefinite = np.diag([1., -1., 2., 3., 4., 5.])[None].repeat(4, 0)
  r = matrix_free.conjugate_gradient(
      lambda v: tf.linalg.matvec(tf.constant(indefinite), v),
      tf.constant(np.ones((4, 6))))
  assert not bool(tf.reduce_any(r.positive))


@pytest.mark.parametrize('model', [
    'xy', pytest.param('o3', marks=pytest.mark.slow)])
def test_matrix_free_forward_matches_dense_ircpm(model):
  l = 2
  if model == 'xy':
    m, psi = M.Torus(4), conv_psi(l, 'xy', scale=0.3)
  else:
    m, psi = M.Product([M.Sphere(2)] * 4), conv_psi(l, 'o3', scale=0.3)
  bij = ircpm.IRCPM(m, psi)
  x = m.projx(m.uniform(tf.float64).sample(6, seed=(1, 2)))
  variables = psi.trainable_variables

  @tf.function
  def run():
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(x)
      y_dense = bij.forward(x)
      y_free = matrix_free.forward(m, psi, x)
      loss_dense = tf.reduce_sum(tf.sin(3. * y_dense))
      loss_free = tf.reduce_sum(tf.sin(3. * y_free))
    return (y_dense, y_free, tape.gradient(loss_dense, [x] + list(variables)),
            tape.gradient(loss_free, [x] + list(variables)))

  y_dense, y_free, g_dense, g_free = run()
  np.testing.assert_allclose(y_free, y_dense, atol=1e-10)
  for a, b in zip(g_free, g_dense):
    np.testing.assert_allclose(a, b, atol=1e-8)
  # The solution satisfies the closed-form inverse.
  np.testing.assert_allclose(m.logmap(x, bij.inverse(y_free)), 0., atol=1e-10)


def test_xy_flow_is_equivariant_on_t64():
  l = 8
  m, psi = M.Torus(l * l), conv_psi(l, 'xy', scale=0.3)
  rng = np.random.default_rng(4)
  theta = rng.uniform(0, 2 * np.pi, (3, l, l))
  forward = tf.function(lambda x: matrix_free.forward(m, psi, x))

  def f(t):
    return forward(tf.constant(t.reshape(3, -1))).numpy().reshape(3, l, l)

  y = f(theta)
  assert np.abs(m.logmap(theta.reshape(3, -1), y.reshape(3, -1))).max() > 1e-2
  np.testing.assert_allclose(
      m.logmap(tf.constant((y + 2.5).reshape(3, -1)),
               tf.constant(f(theta + 2.5).reshape(3, -1))), 0., atol=1e-9)
  np.testing.assert_allclose(
      m.logmap(tf.constant(np.roll(y, (3, 5), (1, 2)).reshape(3, -1)),
               tf.constant(f(np.roll(theta, (3, 5), (1, 2))).reshape(3, -1))),
      0., atol=1e-9)


@pytest.mark.slow
def test_o3_flow_is_equivariant_on_s2_power_16():
  l = 4
  m = M.Product([M.Sphere(2)] * (l * l))
  psi = conv_psi(l, 'o3', scale=0.3)
  rng = np.random.default_rng(5)
  s = rng.normal(size=(3, l, l, 3))
  s /= np.linalg.norm(s, axis=-1, keepdims=True)
  forward = tf.function(lambda x: matrix_free.forward(m, psi, x))

  def f(t):
    return forward(tf.constant(t.reshape(3, -1))).numpy().reshape(3, l, l, 3)

  y = f(s)
  assert np.abs(y - s).max() > 1e-2
  rot = random_rotation(rng)
  np.testing.assert_allclose(f(s @ rot.T), y @ rot.T, atol=1e-9)
  np.testing.assert_allclose(f(np.roll(s, (1, 2), (1, 2))),
                             np.roll(y, (1, 2), (1, 2)), atol=1e-9)


# -- stochastic log-det --------------------------------------------------------


def _logdet_gradients(m, psi, x, probe_fn):
  """(exact gradients, fn(seed) → surrogate gradients) of Σ ildj(f(x)) with
  respect to x and ψ's variables (through the IFT solve too)."""
  variables = list(psi.trainable_variables)
  bij = ircpm.IRCPM(m, psi)

  @tf.function
  def exact():
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = matrix_free.forward(m, psi, x)
      value = tf.reduce_sum(bij.inverse_log_det_jacobian(y, event_ndims=1))
    return tape.gradient(value, [x] + variables)

  @tf.function
  def estimate(seed):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = matrix_free.forward(m, psi, x)
      value = tf.reduce_sum(
          logdet.logdet_surrogate(m, psi, y, probe_fn(y, seed)))
    return tape.gradient(value, [x] + variables)

  return exact(), estimate


def test_surrogate_with_basis_probes_is_the_exact_gradient():
  l = 2
  d = l * l
  m, psi = M.Torus(d), conv_psi(l, 'xy', scale=0.3)
  x = m.uniform(tf.float64).sample(4, seed=(3, 4))
  basis = lambda y, seed: float(d) * tf.broadcast_to(
      tf.eye(d, dtype=y.dtype)[:, None], [d, 4, d])
  exact, estimate_fn = _logdet_gradients(m, psi, x, basis)
  estimate = estimate_fn(tf.constant([0, 0]))
  # d · mean over the d basis probes = Σₖ eₖᵀJ⁻¹∂J eₖ = tr J⁻¹∂J.
  for a, b in zip(estimate, exact):
    np.testing.assert_allclose(a / d, b, atol=1e-9)


def test_surrogate_on_spheres_with_frame_probes_is_the_exact_gradient():
  """S²: tr(H⁻¹∂H) + ∂ log det d exp is ∂ log det J_{f⁻¹} (symmetric Eq. 4)."""
  m = M.Sphere(2)
  d, n = m.dim, 4
  psi = potentials.MLP(m, (8, 8), output_scale=0.4, seed=2, dtype=tf.float64)
  x = m.uniform(tf.float64).sample(n, seed=(3, 4))
  # √d × an orthonormal tangent basis: E_v[P v vᵀ P] = P exactly.
  frame = lambda y, seed: math.sqrt(d) * tf.transpose(
      m.tangent_frame(y), [2, 0, 1])
  exact, estimate_fn = _logdet_gradients(m, psi, x, frame)
  estimate = estimate_fn(tf.constant([0, 0]))
  # x's gradient is ambient: compare tangent parts (f depends on projx(x)).
  np.testing.assert_allclose(m.proju(x, estimate[0]), m.proju(x, exact[0]),
                             atol=1e-9)
  for a, b in zip(estimate[1:], exact[1:]):
    np.testing.assert_allclose(a, b, atol=1e-9)
  assert np.abs(exact[1].numpy()).max() > 1e-2
  assert logdet.choose_estimator(M.Power(M.Sphere(2), 16)) == 'stochastic'


def test_log_prob_surrogate_gives_the_maximum_likelihood_gradient():
  """On T¹ a Rademacher probe is exact (v² = 1), so ∇ of the surrogate
  log-likelihood equals ∇ of the exact `q.log_prob`, through two layers'
  closed-form inverses, ψ's variables and the base's; its value is
  log base(f⁻¹(y))."""
  m = M.Torus(1)
  psis = [potentials.MLP(m, (8, 8), output_scale=0.5, seed=s,
                         dtype=tf.float64) for s in (1, 2)]
  kappa = tf.Variable(1.5, dtype=tf.float64)
  q = tfd.TransformedDistribution(
      tfd.Independent(tfd.VonMises(tf.constant([1.], tf.float64), kappa), 1),
      tfb.Chain([ircpm.IRCPM(m, p) for p in reversed(psis)]))
  y = tf.constant(np.random.default_rng(0).uniform(0, 2 * np.pi, (6, 1)))
  variables = [kappa] + [v for p in psis for v in p.trainable_variables]
  with tf.GradientTape(persistent=True) as tape:
    surrogate = logdet.log_prob_surrogate(q, y, seed=(1, 2))
    exact = q.log_prob(y)
    mean_surrogate, mean_exact = map(tf.reduce_mean, (surrogate, exact))
  zero = tf.UnconnectedGradients.ZERO
  got = tape.gradient(mean_surrogate, variables, None, zero)
  want = tape.gradient(mean_exact, variables, None, zero)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-8)
  n = len(psis[0].trainable_variables)
  assert abs(float(want[0])) > 1e-3        # the base's κ, and each layer's ψ
  assert max(np.abs(g).max() for g in want[1:1 + n]) > 1e-3
  assert max(np.abs(g).max() for g in want[1 + n:]) > 1e-3
  np.testing.assert_allclose(
      surrogate, q.distribution.log_prob(q.bijector.inverse(y)), atol=1e-12)
  assert np.abs(surrogate - exact).max() > 1e-2     # the log-dets are left out


@pytest.mark.slow
def test_surrogate_gradient_is_unbiased_with_rademacher_probes():
  l = 2
  m, psi = M.Torus(4), conv_psi(l, 'xy', scale=0.4, seed=3)
  x = m.uniform(tf.float64).sample(3, seed=(5, 6))
  probes = lambda y, seed: logdet.rademacher_probes(16, tf.shape(y), y.dtype,
                                                    seed)
  exact, estimate = _logdet_gradients(m, psi, x, probes)
  runs = [estimate(tf.constant([i, 1])) for i in range(30)]
  for k in (0, 1, 3):  # x, a kernel, the readout
    samples = np.stack([r[k].numpy() for r in runs])
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / np.sqrt(len(samples)) + 1e-12
    z = np.abs(mean - exact[k].numpy()) / stderr
    assert z.max() < 5., (k, z.max())
    # A single probe set is noisy (the test has power).
    assert np.abs(samples[0] - exact[k].numpy()).max() > 1e-4


class _NoDexpSphere(M.Sphere):
  """A manifold that does not know log det d exp."""

  def log_det_dexp(self, x, y):
    return None


def test_estimator_choice_and_loss_hook():
  assert logdet.choose_estimator(M.Torus(16)) == 'exact'
  assert logdet.choose_estimator(M.Torus(64)) == 'stochastic'
  assert logdet.choose_estimator(M.Sphere(2)) == 'exact'
  assert logdet.choose_estimator(M.Sphere(2), 'stochastic') == 'stochastic'
  assert logdet.choose_estimator(_NoDexpSphere(2), 'auto') == 'exact'
  with pytest.raises(ValueError, match='log_det_dexp'):
    logdet.choose_estimator(_NoDexpSphere(2), 'stochastic')
  with pytest.raises(ValueError, match='estimator'):
    logdet.choose_estimator(M.Torus(4), 'hutch')
  m = M.Torus(4)
  psi = conv_psi(2, 'xy', scale=0.3)
  q = tfd.TransformedDistribution(m.uniform(tf.float64),
                                  tfb.Chain([ircpm.IRCPM(m, psi)]))
  assert not logdet.uses_stochastic(q, 'auto')
  assert logdet.uses_stochastic(q, 'stochastic')
  assert not logdet.uses_stochastic(m.uniform(), 'auto')
  with pytest.raises(ValueError):
    logdet.uses_stochastic(m.uniform(), 'stochastic')
  # Exact matrix-free log q equals TFP's log_prob through the dense path.
  y, log_q = tf.function(lambda: logdet.sample_and_log_prob(
      q, 4, (7, 8), 'exact'))()
  np.testing.assert_allclose(log_q, q.log_prob(y), atol=1e-8)
  # The training hook: stochastic value leaves the log-dets out.
  target = lattice.xy_model(2, 0.5)
  value = training.reverse_kl_loss(q, target, 4, seed=(7, 8),
                                   logdet='stochastic')
  base = q.distribution.log_prob(y)
  np.testing.assert_allclose(
      value, tf.reduce_mean(base + target.energy(y)), atol=1e-8)


def test_matrix_free_sampling_honours_the_layer_iteration_cap():
  m = M.Torus(4)
  psi = conv_psi(2, 'xy', scale=0.6, seed=1)
  flow = lambda **kw: tfd.TransformedDistribution(
      m.uniform(tf.float64), tfb.Chain([ircpm.IRCPM(m, psi, **kw)]))
  run = lambda q: logdet.sample_and_log_prob(q, 64, (1, 2), 'exact',
                                             return_converged=True)[-1]
  assert bool(tf.reduce_all(run(flow())))
  capped = run(flow(max_iterations=1)).numpy()
  # One Newton step from y = x is not enough here (0 of 64 measured); with
  # the cap ignored, matrix_free's 30 steps would converge them all.
  assert capped.sum() < len(capped)


def test_min_eigenvalue_estimate():
  l = 3
  m, psi = M.Torus(l * l), conv_psi(l, 'xy', scale=1.)
  y = m.uniform(tf.float64).sample(5, seed=(1, 1))
  exact = np.linalg.eigvalsh(dense_hessian(psi, y).numpy())[:, 0]
  estimate = logdet.min_eigenvalue(m, psi, y, iterations=200).numpy()
  assert np.all(estimate >= exact - 1e-9)   # a Rayleigh quotient
  np.testing.assert_allclose(estimate, exact, atol=1e-2)


def _dense_riemannian_hessian(m, psi, y):
  """H of h(f⁻¹(y), ·) at y in m's tangent frame, [N, dim, dim]."""
  x = ircpm.derivatives.inverse_map(m, psi, y)[0]
  frame = m.tangent_frame(y)
  columns = [logdet.hessian_vector_product(m, psi, x, y, frame[..., j])
             for j in range(m.dim)]
  return tf.einsum('nak,jna->nkj', frame, tf.stack(columns))


def test_min_hessian_eigenvalue_on_s2_power_and_its_gradient():
  """λ_min of the Riemannian Hessian on (S²)⁴: value and Hellmann-Feynman
  gradient against the dense Hessian in a tangent frame (finite differences
  in ψ's read-out, through x = f⁻¹(y) as well)."""
  l = 2
  m = M.Power(M.Sphere(2), l * l)
  psi = conv_psi(l, 'o3', scale=0.5, seed=4)
  y = m.uniform(tf.float64).sample(3, seed=(2, 9))
  dense = lambda: tf.reduce_min(tf.linalg.eigvalsh(
      _dense_riemannian_hessian(m, psi, y)), axis=-1)
  exact = dense().numpy()
  # H is the right matrix: log det H + log det d exp = log|det J_{f⁻¹}|
  # (symmetric Eq. 4) against the IRCPM's own exact log-det.
  x = ircpm.derivatives.inverse_map(m, psi, y)[0]
  np.testing.assert_allclose(
      tf.linalg.logdet(_dense_riemannian_hessian(m, psi, y))
      + m.log_det_dexp(x, y),
      ircpm.IRCPM(m, psi).inverse_log_det_jacobian(y, event_ndims=1),
      atol=1e-9)
  with tf.GradientTape() as tape:
    estimate = logdet.min_hessian_eigenvalue(m, psi, y, iterations=300,
                                             seed=(1, 2))
  grad = tape.gradient(estimate, psi.readout).numpy()   # of Σ_points
  assert np.all(estimate >= exact - 1e-9)   # a Rayleigh quotient
  np.testing.assert_allclose(estimate, exact, atol=1e-6)
  assert np.abs(exact - 1.).max() > 0.05    # H is not the identity here
  direction = np.random.default_rng(0).normal(size=psi.readout.shape)
  eps = 1e-5
  values = []
  for sign in (1., -1.):
    psi.readout.assign_add(sign * eps * direction)
    values.append(dense().numpy().sum())
    psi.readout.assign_sub(sign * eps * direction)
  fd = (values[0] - values[1]) / (2 * eps)
  np.testing.assert_allclose(grad @ direction, fd, rtol=1e-4)
  assert abs(fd) > 1e-3, fd
  # A manifold without the symmetric form is refused with a clear error.
  with pytest.raises(ValueError, match='log_det_dexp'):
    logdet.min_hessian_eigenvalue(_NoDexpSphere(2), psi, y)
