"""tfp_ircpm.lattice.bases: SymmetricMeanField and its mixture: the
closed-form orbit average against quadrature, normalisation, the sampler
against the density, reparameterised gradients, invariance, a flow over it;
the deprecated spin_dim and the old module names."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import lattice
from conftest import fibonacci_sphere

M = ircpm.manifolds
tfd = tfp.distributions
SMF = lattice.SymmetricMeanField


def _mean_alignment(spin, kappa):
  """A(κ) = E[μ·s] under vM / vMF(μ, κ), and dA/dκ."""
  if spin == 'xy':
    i0, i1 = np.i0(kappa), _bessel_i1(kappa)
    a = i1 / i0
    return a, 1. - a / kappa - a * a
  a = 1. / np.tanh(kappa) - 1. / kappa
  return a, 1. / kappa ** 2 - 1. / np.sinh(kappa) ** 2


def _bessel_i1(z):
  # I₁(z) = (1/π) ∫₀^π e^{z cos t} cos t dt; the midpoint rule on a periodic
  # analytic integrand is spectrally accurate.
  t = (np.arange(4096) + 0.5) * np.pi / 4096
  return np.mean(np.exp(z * np.cos(t)) * np.cos(t))


def _random_points(spin, n, num_sites, rng):
  if spin == 'xy':
    return rng.uniform(0., 2. * np.pi, (n, num_sites))
  s = rng.normal(size=(n, num_sites, 3)) + np.array([0., 0., 1.5])
  s /= np.linalg.norm(s, axis=-1, keepdims=True)
  return s.reshape(n, -1)


@pytest.mark.parametrize('spin', ['xy', 'o3'])
def test_log_prob_is_the_orbit_average_of_the_mean_field(spin):
  """p(s) = ∫ Π vM(F)(sᵢ; μ, κ) dμ/|S^{n-1}|, the integral by quadrature
  over μ with TFP's own von Mises(-Fisher) densities."""
  rng = np.random.default_rng(0)
  kappa, num_sites = 1.3, 8
  x = _random_points(spin, 5, num_sites, rng)
  if spin == 'xy':
    mus = (np.arange(2048) + 0.5) * 2. * np.pi / 2048     # [Q]
    site = tfd.VonMises(mus[:, None, None], kappa).log_prob(x[None])
  else:
    mus = fibonacci_sphere(200000)                           # [Q, 3]
    site = tfd.VonMisesFisher(mus[:, None, None, :], kappa).log_prob(
        x.reshape(1, 5, num_sites, 3))
  joint = tf.reduce_sum(site, -1)                            # [Q, 5]
  expected = tf.reduce_logsumexp(joint, 0) - np.log(len(mus))
  got = SMF(num_sites, spin, tf.constant(kappa, tf.float64)).log_prob(x)
  np.testing.assert_allclose(got, expected, rtol=0., atol=1e-6)


def test_density_integrates_to_one():
  kappa = tf.constant(2.5, tf.float64)
  # XY, N = 2: midpoint rule on T² (periodic, analytic: spectral accuracy).
  g = (np.arange(128) + 0.5) * 2. * np.pi / 128
  grid = np.stack(np.meshgrid(g, g, indexing='ij'), -1).reshape(-1, 2)
  total = np.exp(SMF(2, 'xy', kappa).log_prob(grid)).sum() * (2. * np.pi /
                                                            128) ** 2
  np.testing.assert_allclose(total, 1., rtol=1e-10)
  # O(3), N = 2: rotation invariance fixes s₁ = e₃, so the integral over
  # (S²)² is 4π ∫ p(e₃, s₂) ds₂ (equal-area points).
  s2 = fibonacci_sphere(20000)
  pts = np.concatenate([np.tile([[0., 0., 1.]], (len(s2), 1)), s2], -1)
  total = 4. * np.pi * np.exp(SMF(2, 'o3', kappa).log_prob(pts)).mean() * (
      4. * np.pi)
  np.testing.assert_allclose(total, 1., rtol=1e-6)
  # One site: the orbit average of a single von Mises(-Fisher) is uniform.
  np.testing.assert_allclose(np.exp(SMF(1, 'xy', kappa).log_prob([[0.7]])),
                             1. / (2. * np.pi), rtol=1e-12)
  np.testing.assert_allclose(
      np.exp(SMF(1, 'o3', kappa).log_prob([[0.6, 0., 0.8]])), 1. / (4. * np.pi),
      rtol=1e-12)


@pytest.mark.parametrize('spin', ['xy', 'o3'])
@pytest.mark.parametrize('dtype', [tf.float32, tf.float64])
def test_sampler_matches_density_and_its_pathwise_gradient(spin, dtype):
  """E|M|² = N + N(N−1)A(κ)² and its κ-derivative, from reparameterised
  samples; the score E[∂_κ log p] = 0 ties the sampler to `log_prob`."""
  num_sites, n, kappa0 = 16, 20000, 1.7
  kappa = tf.Variable(kappa0, dtype=dtype)
  dist = SMF(num_sites, spin, kappa, validate_args=True)
  target = lattice.lattice_model(4, 1., spin)
  with tf.GradientTape() as tape:
    x = dist.sample(n, seed=(3, 4))
    m2 = tf.reduce_sum(tf.square(target.magnetisation(x)), -1)
    mean_m2 = tf.reduce_mean(m2)
  grad = float(tape.gradient(mean_m2, kappa))
  for _ in dist.manifold.membership_assertions(x):
    pass      # eager: each assertion has run (and passed) on construction
  a, da = _mean_alignment(spin, kappa0)
  m2 = m2.numpy().astype(np.float64)
  expected = num_sites + num_sites * (num_sites - 1) * a * a
  assert abs(m2.mean() - expected) < 5. * m2.std() / np.sqrt(n)
  # The common direction is uniform: E[M] = 0 (each component, 5 s.e.).
  mag = target.magnetisation(x).numpy().astype(np.float64)
  assert np.all(np.abs(mag.mean(0)) < 5. * mag.std(0) / np.sqrt(n))
  # Pathwise gradient of E|M|² against dE/dκ = N(N−1) 2A A'(κ).
  np.testing.assert_allclose(grad, num_sites * (num_sites - 1) * 2. * a * da,
                             rtol=0.08)
  # The score: its autodiff mean equals central differences of log_prob,
  # and it has mean zero under the sampler (5 standard errors).
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(dist.log_prob(tf.stop_gradient(x)))
  mean_score = float(tape.gradient(total, kappa)) / n
  h = 1e-3 if dtype == tf.float64 else 1e-2
  up = SMF(num_sites, spin, tf.constant(kappa0 + h, dtype)).log_prob(x)
  down = SMF(num_sites, spin, tf.constant(kappa0 - h, dtype)).log_prob(x)
  scores = ((up - down) / (2. * h)).numpy().astype(np.float64)
  np.testing.assert_allclose(mean_score, scores.mean(), atol=0.02)
  assert abs(scores.mean()) < 5. * scores.std() / np.sqrt(n)


def test_invariant_under_the_global_group_and_site_permutations():
  rng = np.random.default_rng(1)
  kappa = tf.constant(2., tf.float64)
  theta = _random_points('xy', 4, 16, rng)
  xy = SMF(16, 'xy', kappa)
  perm = rng.permutation(16)
  np.testing.assert_allclose(xy.log_prob((theta + 1.1) % (2. * np.pi)),
                             xy.log_prob(theta), rtol=1e-12)
  np.testing.assert_allclose(xy.log_prob(theta[:, perm]), xy.log_prob(theta),
                             rtol=1e-12)
  s = _random_points('o3', 4, 16, rng).reshape(4, 16, 3)
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  rot = q * np.sign(np.diag(r))
  o3 = SMF(16, 'o3', kappa)
  np.testing.assert_allclose(o3.log_prob((s @ rot.T).reshape(4, -1)),
                             o3.log_prob(s.reshape(4, -1)), rtol=1e-12)
  np.testing.assert_allclose(o3.log_prob(s[:, perm].reshape(4, -1)),
                             o3.log_prob(s.reshape(4, -1)), rtol=1e-12)


def test_flow_over_it_keeps_the_symmetry(solve_calls):
  """An IRCPM with invariant ψ over the symmetric base has an invariant
  density (Lemma 1); log_prob needs only the closed-form inverse."""
  l = 4
  psi = lattice.LatticeConvPotential(l, 'xy', (8, 8), output_scale=0.2,
                                        seed=0, dtype=tf.float64,
                                        pair_term=True)
  psi.pair_weights.assign(lattice.spin_wave_pair_weights(l, 0.9, 2.))
  bij = ircpm.IRCPM(M.Torus(l * l), psi)
  q = tfd.TransformedDistribution(
      SMF(l * l, 'xy', tf.constant(2., tf.float64)), bij)
  rng = np.random.default_rng(2)
  y = rng.uniform(0., 2. * np.pi, (3, l, l))
  moved = (np.roll(y, (1, 2), (1, 2)) + 0.8) % (2. * np.pi)
  lp = q.log_prob(y.reshape(3, -1))
  # TFP adds the IRCPM's intrinsic log-det to the base density (Eq. 4).
  flat = tf.constant(y.reshape(3, -1))
  np.testing.assert_allclose(
      lp, q.distribution.log_prob(bij.inverse(flat))
      + bij.inverse_log_det_jacobian(flat, event_ndims=1), rtol=1e-12)
  assert not solve_calls
  np.testing.assert_allclose(q.log_prob(moved.reshape(3, -1)), lp, rtol=1e-10)
  # ...and differs from the base's: the flow did something.
  assert np.abs(lp - q.distribution.log_prob(y.reshape(3, -1))).min() > 1e-3


def test_mixture_is_the_mean_of_its_components_with_exact_kappa_gradients():
  kappas = [0.8, 1.6, 2.4]
  mix = lattice.symmetric_mean_field_mixture(16, 'xy', kappas, dtype=tf.float64)
  assert len(mix.trainable_variables) == 1
  rng = np.random.default_rng(3)
  x = _random_points('xy', 5, 16, rng)
  parts = [SMF(16, 'xy', tf.constant(k, tf.float64)).log_prob(x) for k in kappas]
  np.testing.assert_allclose(
      mix.log_prob(x), np.logaddexp.reduce(np.stack(parts), 0) - np.log(3),
      rtol=1e-12)
  moved = (x + 2.) % (2. * np.pi)
  np.testing.assert_allclose(mix.log_prob(moved), mix.log_prob(x), rtol=1e-12)
  # Pathwise: d E|M|² / dκ_k = (1/K) · N(N−1) 2A(κ_k)A'(κ_k).
  n = 30000
  with tf.GradientTape() as tape:
    y = mix.sample(n, seed=(7, 8))
    m2 = tf.reduce_mean(tf.square(tf.reduce_sum(tf.cos(y), -1))
                        + tf.square(tf.reduce_sum(tf.sin(y), -1)))
  (grad,) = tape.gradient(m2, mix.trainable_variables)
  # The variable is softplus⁻¹(κ): chain rule back to κ.
  raw = mix.trainable_variables[0].numpy()
  dk_draw = 1. / (1. + np.exp(-raw))
  for k, g, d in zip(kappas, grad.numpy(), dk_draw):
    a, da = _mean_alignment('xy', k)
    np.testing.assert_allclose(g / d, 16 * 15 * 2. * a * da / 3., rtol=0.12)
  with pytest.raises(ValueError, match='> 0'):
    lattice.symmetric_mean_field_mixture(4, 'xy', [1., 0.])
  with pytest.raises(ValueError, match='vector'):
    lattice.symmetric_mean_field_mixture(4, 'xy', 1.)


def test_bad_arguments_and_points():
  with pytest.raises(ValueError, match='spin_dim'):
    SMF(4, 4, 1.)
  with pytest.raises(ValueError, match='spin'):
    SMF(4, 'ising', 1.)
  with pytest.raises(TypeError, match='concentration'):
    SMF(4, 'xy')
  with pytest.raises(ValueError, match='num_sites'):
    SMF(0, 'xy', 1.)
  with pytest.raises(tf.errors.InvalidArgumentError, match='positive'):
    SMF(4, 'xy', -1., validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match='off the sphere'):
    SMF(2, 'o3', 1., validate_args=True).log_prob([[0., 0., 2., 0., 0., 1.]])
  with pytest.raises(tf.errors.InvalidArgumentError, match='radians'):
    SMF(2, 'xy', 1., validate_args=True).log_prob([[0., 90.]])


def test_deprecated_spin_dim_gives_the_same_distribution():
  rng = np.random.default_rng(4)
  kappa = tf.constant(1.5, tf.float64)
  for spin, spin_dim in (('xy', 2), ('o3', 3)):
    x = _random_points(spin, 3, 9, rng)
    want = SMF(9, spin, kappa).log_prob(x)
    with pytest.warns(DeprecationWarning, match='spin_dim'):
      positional = SMF(9, spin_dim, kappa)
    with pytest.warns(DeprecationWarning, match='spin_dim'):
      keyword = SMF(9, spin_dim=spin_dim, concentration=kappa)
    for dist in (positional, keyword):
      assert dist.spin == spin and dist.spin_dim == spin_dim
      np.testing.assert_allclose(dist.log_prob(x), want, rtol=1e-14)
    with pytest.warns(DeprecationWarning, match='spin_dim'):
      mix = lattice.symmetric_mean_field_mixture(9, spin_dim=spin_dim,
                                                 concentrations=[1.5],
                                                 dtype=tf.float64)
    np.testing.assert_allclose(mix.log_prob(x), want, rtol=1e-12)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    with pytest.raises(TypeError, match='not both'):
      SMF(9, 'xy', kappa, spin_dim=2)


def test_a_lattice_gives_its_sites_spin_and_manifold():
  target = lattice.o3_model(4, 1.)
  dist = SMF(target.lattice, concentration=tf.constant(2., tf.float64))
  assert dist.sites is target.lattice and dist.spin == 'o3'
  assert dist.num_sites == 16 and dist.event_shape == [48]
  assert repr(dist.manifold) == repr(target.manifold)
  mix = lattice.symmetric_mean_field_mixture(target.lattice,
                                             concentrations=[1., 2.])
  assert mix.components_distribution.sites is target.lattice
  with pytest.raises(ValueError, match='disagrees'):
    SMF(target.lattice, 'xy', 1.)
  # Copies (TFP rebuilds a distribution from its parameters) keep the sites.
  copy = dist.copy()
  assert copy.sites is target.lattice and copy.spin == 'o3'


def test_old_module_names_are_the_lattice_objects():
  d = ircpm.distributions
  assert d.SymmetricMeanField is SMF
  assert d.symmetric_mean_field_mixture is lattice.symmetric_mean_field_mixture
  for name in ('log_bessel_i0', 'log_sinh', 'log_sinhc'):
    assert getattr(d, name) is getattr(lattice.bases, name)
  assert 'SymmetricMeanField' in dir(d)
