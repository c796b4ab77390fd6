"""Lattice models: targets, equivariant potentials and flows, matrix-free
solves, the stochastic log-det and the heat-bath reference sampler."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import logdet
from tfp_ircpm import matrix_free
from tfp_ircpm import mcmc
from tfp_ircpm import potentials
from tfp_ircpm import targets
from tfp_ircpm import training

from conftest import dense_hessian

M = ircpm.manifolds
tfd = tfp.distributions
tfb = tfp.bijectors


def _xy_psi(lattice_size, scale=0.2, seed=0, **kwargs):
  return potentials.LatticeConvPotential(
      lattice_size, 'xy', (8, 8), output_scale=scale, seed=seed,
      dtype=tf.float64, **kwargs)


def _o3_psi(lattice_size, scale=0.2, seed=0):
  return potentials.LatticeConvPotential(
      lattice_size, 'o3', (8, 8), output_scale=scale, seed=seed,
      dtype=tf.float64)


def _random_rotation(rng):
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q * np.linalg.det(q)


# -- targets ------------------------------------------------------------------


def test_lattice_energies_match_explicit_bond_sums():
  rng = np.random.default_rng(0)
  l = 3
  theta = rng.uniform(0, 2 * np.pi, (4, l * l))
  spins = rng.normal(size=(4, l * l, 3))
  spins /= np.linalg.norm(spins, axis=-1, keepdims=True)
  xy_expected = np.zeros(4)
  o3_expected = np.zeros(4)
  for a in range(l):
    for b in range(l):
      i = a * l + b
      for j in (((a + 1) % l) * l + b, a * l + (b + 1) % l):
        xy_expected += np.cos(theta[:, i] - theta[:, j])
        o3_expected += np.sum(spins[:, i] * spins[:, j], -1)
  xy, o3 = targets.xy_model(l, 0.7), targets.o3_model(l, 1.3)
  np.testing.assert_allclose(xy.energy(tf.constant(theta)), -0.7 * xy_expected,
                             rtol=1e-12)
  np.testing.assert_allclose(
      o3.energy(tf.constant(spins.reshape(4, -1))), -1.3 * o3_expected,
      rtol=1e-12)
  np.testing.assert_allclose(xy.energy_per_site(tf.constant(theta)),
                             -xy_expected / 9, rtol=1e-12)
  m = xy.magnetisation(tf.constant(theta)).numpy()
  np.testing.assert_allclose(m[:, 0], np.cos(theta).sum(-1), rtol=1e-12)


def _bessel_i(k, z):
  t = (np.arange(4000) + 0.5) * np.pi / 4000
  return np.mean(np.exp(z * np.cos(t)) * np.cos(k * t))


def test_xy_two_by_two_log_normalizer_matches_transfer_matrix():
  # L = 2: a 4-ring with every bond doubled, coupling K = 2β, so
  # Z = (2π)⁴ Σ_k I_k(K)⁴.
  beta = 0.6
  exact = 4 * math.log(2 * math.pi) + math.log(
      sum(_bessel_i(k, 2 * beta) ** 4 for k in range(-30, 31)))
  assert targets.xy_model(2, beta).log_normalizer == pytest.approx(exact,
                                                                   abs=1e-9)


def test_lattice_targets_reject_bad_input():
  with pytest.raises(ValueError, match='lattice_size'):
    targets.xy_model(2.5, 1.)
  with pytest.raises(ValueError, match='beta'):
    targets.o3_model(4, -1.)
  with pytest.raises(ValueError, match='quadrature'):
    _ = targets.xy_model(4, 1.).log_normalizer
  with pytest.raises(ValueError, match='event size'):
    targets.xy_model(4, 1.).energy(tf.zeros([3, 15]))


# -- potentials ----------------------------------------------------------------


def test_conv_potentials_are_invariant():
  rng = np.random.default_rng(1)
  l = 6
  psi = _xy_psi(l)
  theta = rng.uniform(0, 2 * np.pi, (5, l, l))
  base = psi(tf.constant(theta.reshape(5, -1))).numpy()
  shifted = psi(tf.constant((theta + 1.234).reshape(5, -1))).numpy()
  translated = psi(tf.constant(
      np.roll(theta, (2, -1), axis=(1, 2)).reshape(5, -1))).numpy()
  np.testing.assert_allclose(shifted, base, rtol=1e-12)
  np.testing.assert_allclose(translated, base, rtol=1e-12)

  psi3 = _o3_psi(l)
  s = rng.normal(size=(5, l, l, 3))
  s /= np.linalg.norm(s, axis=-1, keepdims=True)
  base = psi3(tf.constant(s.reshape(5, -1))).numpy()
  rotated = psi3(tf.constant((s @ _random_rotation(rng).T).reshape(5, -1)))
  translated = psi3(tf.constant(
      np.roll(s, (1, 3), axis=(1, 2)).reshape(5, -1)))
  np.testing.assert_allclose(rotated, base, rtol=1e-11)
  np.testing.assert_allclose(translated, base, rtol=1e-11)
  # Not invariant under arbitrary site permutations: the test can fail.
  perm = rng.permutation(l * l)
  assert np.abs(psi(tf.constant(theta.reshape(5, -1)[:, perm])).numpy()
                - psi(tf.constant(theta.reshape(5, -1))).numpy()).max() > 1e-6


def test_conv_potential_hessian_bound_and_certification():
  rng = np.random.default_rng(2)
  l = 4
  y = tf.constant(rng.uniform(0, 2 * np.pi, (32, l * l)))
  psi = _xy_psi(l, scale=1.)
  cert = _xy_psi(l, scale=50., certified=True)
  hess = tf.function(dense_hessian)
  eig = np.abs(np.linalg.eigvalsh(hess(psi, y).numpy())).max()
  assert 0.1 < eig <= float(psi.hessian_bound())
  eig = np.abs(np.linalg.eigvalsh(hess(cert, y).numpy())).max()
  assert eig <= 0.98
  with pytest.raises(ValueError, match='spin'):
    potentials.LatticeConvPotential(4, 'ising')
  with pytest.raises(ValueError, match='XY'):
    potentials.LatticeConvPotential(4, 'o3', certified=True)


def test_bond_term_contains_the_energy_and_keeps_invariance_and_bounds():
  rng = np.random.default_rng(3)
  l, beta, c = 4, 0.9, 0.37
  target = targets.xy_model(l, beta)
  psi = _xy_psi(l, scale=1., bond_term=True)
  assert psi.num_parameters == _xy_psi(l).num_parameters + 4
  theta = tf.constant(rng.uniform(0, 2 * np.pi, (6, l * l)))
  # Started at w = 0: the bond term adds nothing.
  np.testing.assert_allclose(psi(theta), _xy_psi(l, scale=1.)(theta),
                             rtol=1e-12)
  # Readout 0, w = (c, 0, c, 0): ψ = c Σ_⟨ij⟩ cos(θᵢ − θⱼ) = −c u/β.
  psi.readout.assign(tf.zeros_like(psi.readout))
  psi.bond_weights.assign([c, 0., c, 0.])
  np.testing.assert_allclose(psi(theta), -c * target.energy(theta) / beta,
                             rtol=1e-12)
  # All aligned, Hess = −c·(lattice Laplacian), top |eigenvalue| 8c: the
  # bound 4(‖w_x‖ + ‖w_y‖) = 8c is attained.
  hess = tf.function(dense_hessian)
  eig = np.abs(np.linalg.eigvalsh(hess(psi, tf.zeros([1, l * l],
                                                      tf.float64)))).max()
  np.testing.assert_allclose(eig, 8 * c, rtol=1e-10)
  np.testing.assert_allclose(float(psi.hessian_bound()), 8 * c, rtol=1e-10)
  # Network and bond term together: invariant, and bounded.
  full = _xy_psi(l, scale=1., seed=5, bond_term=True)
  full.bond_weights.assign([1.5, -0.7, 0.3, 1.1])
  t = theta.numpy().reshape(6, l, l)
  np.testing.assert_allclose(full(tf.constant((t + 0.7).reshape(6, -1))),
                             full(theta), rtol=1e-12)
  np.testing.assert_allclose(full(tf.constant(
      np.roll(t, (1, 2), axis=(1, 2)).reshape(6, -1))), full(theta),
                             rtol=1e-12)
  eig = np.abs(np.linalg.eigvalsh(hess(full, theta).numpy())).max()
  assert 1. < eig <= float(full.hessian_bound())


def test_pair_term_is_the_all_pairs_coupling_invariant_and_bounded():
  rng = np.random.default_rng(4)
  l, n = 4, 5
  w = rng.normal(size=(l, l))
  r = np.stack(np.meshgrid(np.arange(l), np.arange(l), indexing='ij'),
               -1).reshape(-1, 2)

  def explicit(s):        # Σ_{i≠j} W(rᵢ − rⱼ) sᵢ·sⱼ, s [n, L², a]
    out = np.zeros(len(s))
    for i in range(l * l):
      for j in range(l * l):
        if i != j:
          d = (r[i] - r[j]) % l
          out += w[d[0], d[1]] * (s[:, i] * s[:, j]).sum(-1)
    return out

  theta = rng.uniform(0, 2 * np.pi, (n, l * l))
  spins = rng.normal(size=(n, l * l, 3))
  spins /= np.linalg.norm(spins, axis=-1, keepdims=True)
  for spin, x, s in [('xy', theta, np.stack([np.cos(theta), np.sin(theta)],
                                            -1)),
                     ('o3', spins.reshape(n, -1), spins)]:
    make = lambda pair: potentials.LatticeConvPotential(
        l, spin, (8, 8), output_scale=1., seed=6, dtype=tf.float64,
        pair_term=pair)
    psi, plain = make(True), make(False)
    assert psi.num_parameters == plain.num_parameters + l * l
    psi.pair_weights.assign(w)
    np.testing.assert_allclose(psi(tf.constant(x)) - plain(tf.constant(x)),
                               explicit(s), rtol=1e-10)
    # Invariant under the global group and lattice translations.
    grid = s.reshape(n, l, l, -1)
    moved = np.roll(grid, (1, 3), axis=(1, 2))
    if spin == 'xy':
      moved = np.roll(theta.reshape(n, l, l), (1, 3), axis=(1, 2)) + 0.9
    else:
      moved = moved @ _random_rotation(rng).T
    np.testing.assert_allclose(psi(tf.constant(moved.reshape(n, -1))),
                               psi(tf.constant(x)), rtol=1e-11)
  # XY: the Hessian bound (network + 4 Σ|W|) still dominates.
  psi = potentials.LatticeConvPotential(l, 'xy', (8, 8), output_scale=1.,
                                        seed=6, dtype=tf.float64,
                                        pair_term=True)
  psi.pair_weights.assign(w)
  hess = tf.function(dense_hessian)
  eig = np.abs(np.linalg.eigvalsh(hess(psi, tf.constant(theta)))).max()
  assert 1. < eig <= float(psi.hessian_bound())


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
    m, psi = M.Torus(4), _xy_psi(l, scale=0.3)
  else:
    m, psi = M.Product([M.Sphere(2)] * 4), _o3_psi(l, scale=0.3)
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
  m, psi = M.Torus(l * l), _xy_psi(l, scale=0.3)
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
  psi = _o3_psi(l, scale=0.3)
  rng = np.random.default_rng(5)
  s = rng.normal(size=(3, l, l, 3))
  s /= np.linalg.norm(s, axis=-1, keepdims=True)
  forward = tf.function(lambda x: matrix_free.forward(m, psi, x))

  def f(t):
    return forward(tf.constant(t.reshape(3, -1))).numpy().reshape(3, l, l, 3)

  y = f(s)
  assert np.abs(y - s).max() > 1e-2
  rot = _random_rotation(rng)
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
  m, psi = M.Torus(d), _xy_psi(l, scale=0.3)
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
  m, psi = M.Torus(4), _xy_psi(l, scale=0.4, seed=3)
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
  psi = _xy_psi(2, scale=0.3)
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
  target = targets.xy_model(2, 0.5)
  value = training.reverse_kl_loss(q, target, 4, seed=(7, 8),
                                   logdet='stochastic')
  base = q.distribution.log_prob(y)
  np.testing.assert_allclose(
      value, tf.reduce_mean(base + target.energy(y)), atol=1e-8)


def test_matrix_free_sampling_honours_the_layer_iteration_cap():
  m = M.Torus(4)
  psi = _xy_psi(2, scale=0.6, seed=1)
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
  m, psi = M.Torus(l * l), _xy_psi(l, scale=1.)
  y = m.uniform(tf.float64).sample(5, seed=(1, 1))
  exact = np.linalg.eigvalsh(dense_hessian(psi, y).numpy())[:, 0]
  estimate = logdet.min_eigenvalue(m, psi, y, iterations=200).numpy()
  assert np.all(estimate >= exact - 1e-9)   # a Rayleigh quotient
  np.testing.assert_allclose(estimate, exact, atol=1e-2)


def _dense_riemannian_hessian(m, psi, y):
  """H of h(f⁻¹(y), ·) at y in m's tangent frame, [N, dim, dim]."""
  x = logdet._inverse(m, psi, y)  # pylint: disable=protected-access
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
  psi = _o3_psi(l, scale=0.5, seed=4)
  y = m.uniform(tf.float64).sample(3, seed=(2, 9))
  dense = lambda: tf.reduce_min(tf.linalg.eigvalsh(
      _dense_riemannian_hessian(m, psi, y)), axis=-1)
  exact = dense().numpy()
  # H is the right matrix: log det H + log det d exp = log|det J_{f⁻¹}|
  # (symmetric Eq. 4) against the IRCPM's own exact log-det.
  x = logdet._inverse(m, psi, y)  # pylint: disable=protected-access
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


# -- MCMC -------------------------------------------------------------------------


def test_heat_bath_matches_exact_xy_two_by_two():
  target = targets.xy_model(2, 0.9)
  points, weights = targets.torus_grid(24, 4)
  x = tf.constant(points)
  log_w = -target.energy(x).numpy()
  p = weights * np.exp(log_w - log_w.max())
  p /= p.sum()
  energy = float((p * target.energy_per_site(x).numpy()).sum())
  m = target.magnetisation(x).numpy()
  chi = float((p * (m ** 2).sum(-1)).sum() / 4)
  run = mcmc.heat_bath(target, num_chains=64, num_sweeps=250, burn_in=50,
                       seed=3, samples_every=10)
  e, c = mcmc.summarize(run['energy_per_site']), mcmc.summarize(
      run['m2_per_site'])
  assert abs(e['mean'] - energy) < 5 * e['stderr']
  assert abs(c['mean'] - chi) < 5 * c['stderr']
  assert e['stderr'] < 0.02
  # The kept points are chain states: 20 sweeps × 64 chains, the last of
  # them the final state, with the exact mean energy.
  samples = run['samples']
  assert samples.shape == (20 * 64, 4)
  np.testing.assert_array_equal(samples[-64:], run['final'])
  e_samples = target.energy_per_site(tf.constant(samples)).numpy()
  assert abs(e_samples.mean() - energy) < 5 * e['stderr'] * np.sqrt(10)
  with pytest.raises(ValueError, match='samples_every'):
    mcmc.heat_bath(target, 2, 3, 1, samples_every=-1)


def test_heat_bath_matches_exact_o3_ring():
  # L = 2 is a 4-ring with coupling K = 2β; with i_l(K) = ½∫e^{Kt}P_l(t)dt,
  # Z ∝ Σ_l (2l+1) i_l⁴ and ⟨Σ_ring s·s⟩ = ∂_K log Z.
  beta = 0.5
  k = 2 * beta
  t, w = np.polynomial.legendre.leggauss(100)
  legendre = [np.polynomial.legendre.Legendre.basis(l)(t) for l in range(25)]
  i_l = np.array([0.5 * np.sum(w * np.exp(k * t) * p) for p in legendre])
  di_l = np.array([0.5 * np.sum(w * t * np.exp(k * t) * p) for p in legendre])
  deg = 2 * np.arange(25) + 1
  ring = np.sum(deg * 4 * i_l ** 3 * di_l) / np.sum(deg * i_l ** 4)
  exact = -2. * ring / 4.          # every ring bond is two lattice bonds
  run = mcmc.heat_bath(targets.o3_model(2, beta), num_chains=64,
                       num_sweeps=250, burn_in=50, seed=4)
  e = mcmc.summarize(run['energy_per_site'])
  assert abs(e['mean'] - exact) < 5 * e['stderr']
  with pytest.raises(ValueError, match='even'):
    mcmc.heat_bath(targets.xy_model(3, 1.), 2, 3, 1)
