"""tfp_ircpm.lattice.potentials: invariance, Hessian bounds and certification
of LatticeConvPotential, its bond and pair terms, and the spin-wave kernel
(its spectrum, and the covariance of the flow it starts)."""

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import lattice
from tfp_ircpm import matrix_free
from tfp_ircpm import potentials

from conftest import conv_psi, dense_hessian, random_rotation

M = ircpm.manifolds
SMF = lattice.SymmetricMeanField


def test_conv_potentials_are_invariant():
  rng = np.random.default_rng(1)
  l = 6
  psi = conv_psi(l, 'xy')
  theta = rng.uniform(0, 2 * np.pi, (5, l, l))
  base = psi(tf.constant(theta.reshape(5, -1))).numpy()
  shifted = psi(tf.constant((theta + 1.234).reshape(5, -1))).numpy()
  translated = psi(tf.constant(
      np.roll(theta, (2, -1), axis=(1, 2)).reshape(5, -1))).numpy()
  np.testing.assert_allclose(shifted, base, rtol=1e-12)
  np.testing.assert_allclose(translated, base, rtol=1e-12)

  psi3 = conv_psi(l, 'o3')
  s = rng.normal(size=(5, l, l, 3))
  s /= np.linalg.norm(s, axis=-1, keepdims=True)
  base = psi3(tf.constant(s.reshape(5, -1))).numpy()
  rotated = psi3(tf.constant((s @ random_rotation(rng).T).reshape(5, -1)))
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
  psi = conv_psi(l, 'xy', scale=1.)
  cert = conv_psi(l, 'xy', scale=50., certified=True)
  hess = tf.function(dense_hessian)
  eig = np.abs(np.linalg.eigvalsh(hess(psi, y).numpy())).max()
  assert 0.1 < eig <= float(psi.hessian_bound())
  eig = np.abs(np.linalg.eigvalsh(hess(cert, y).numpy())).max()
  assert eig <= 0.98
  with pytest.raises(ValueError, match='spin'):
    lattice.LatticeConvPotential(4, 'ising')
  with pytest.raises(ValueError, match='XY'):
    lattice.LatticeConvPotential(4, 'o3', certified=True)


def test_bond_term_contains_the_energy_and_keeps_invariance_and_bounds():
  rng = np.random.default_rng(3)
  l, beta, c = 4, 0.9, 0.37
  target = lattice.xy_model(l, beta)
  psi = conv_psi(l, 'xy', scale=1., bond_term=True)
  assert psi.num_parameters == conv_psi(l, 'xy').num_parameters + 4
  theta = tf.constant(rng.uniform(0, 2 * np.pi, (6, l * l)))
  # Started at w = 0: the bond term adds nothing.
  np.testing.assert_allclose(psi(theta), conv_psi(l, 'xy', scale=1.)(theta),
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
  full = conv_psi(l, 'xy', scale=1., seed=5, bond_term=True)
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
    make = lambda pair: lattice.LatticeConvPotential(
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
      moved = moved @ random_rotation(rng).T
    np.testing.assert_allclose(psi(tf.constant(moved.reshape(n, -1))),
                               psi(tf.constant(x)), rtol=1e-11)
  # XY: the Hessian bound (network + 4 Σ|W|) still dominates.
  psi = lattice.LatticeConvPotential(l, 'xy', (8, 8), output_scale=1.,
                                        seed=6, dtype=tf.float64,
                                        pair_term=True)
  psi.pair_weights.assign(w)
  hess = tf.function(dense_hessian)
  eig = np.abs(np.linalg.eigvalsh(hess(psi, tf.constant(theta)))).max()
  assert 1. < eig <= float(psi.hessian_bound())


# -- the spin-wave pair kernel --------------------------------------------------


def test_spin_wave_kernel_sets_the_spectrum_of_the_jacobian():
  """At the aligned state, I + Hess ψ has eigenvalue √(βλ_k/κ) on every
  Fourier mode k ≠ 0 and 1 on the zero mode (the docstring's claim)."""
  l, beta, kappa = 4, 0.9, 2.
  w = lattice.spin_wave_pair_weights(l, beta, kappa)
  assert w[0, 0] == 0.
  np.testing.assert_allclose(w, np.roll(w[::-1, ::-1], 1, (0, 1)), atol=1e-15)
  psi = lattice.LatticeConvPotential(l, 'xy', (4,), output_scale=0.,
                                        dtype=tf.float64, pair_term=True)
  psi.pair_weights.assign(w)
  y = tf.fill([1, l * l], tf.constant(0.4, tf.float64))
  jac = np.eye(l * l) + dense_hessian(psi, y)[0].numpy()
  k = 2. * np.pi * np.arange(l) / l
  lam = (4. * np.sin(k[:, None] / 2.) ** 2
         + 4. * np.sin(k[None, :] / 2.) ** 2).ravel()
  expected = np.sqrt(beta * lam / kappa)
  expected[0] = 1.
  np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(jac)),
                             np.sort(expected), atol=1e-12)
  # scale=0 is the identity map.
  np.testing.assert_allclose(
      lattice.spin_wave_pair_weights(l, beta, kappa, scale=0.), 0.)


def test_spin_wave_flow_samples_have_the_spin_wave_covariance():
  """In the linear regime (large κ and β, small fluctuations) the IRCPM over
  the symmetric base samples θ with Fourier variances 1/(βλ_k), the
  Gaussian spin-wave law, through the actual solve."""
  l, beta, kappa, n = 4, 400., 300., 4000
  psi = lattice.LatticeConvPotential(l, 'xy', (4,), output_scale=0.,
                                        dtype=tf.float64, pair_term=True)
  psi.pair_weights.assign(lattice.spin_wave_pair_weights(l, beta, kappa))
  m = M.Torus(l * l)
  x = SMF(l * l, 'xy', tf.constant(kappa, tf.float64)).sample(n, seed=(5, 6))
  y = tf.function(lambda x: matrix_free.forward(m, psi, x))(x).numpy()
  # Fluctuations about each sample's own mean direction.
  phase = np.angle(np.exp(1j * y).sum(-1, keepdims=True))
  eps = np.angle(np.exp(1j * (y - phase))).reshape(n, l, l)
  assert np.abs(eps).max() < 0.5               # the linear regime
  power = (np.abs(np.fft.fft2(eps)) ** 2).mean(0).ravel() / (l * l)
  k = 2. * np.pi * np.arange(l) / l
  lam = (4. * np.sin(k[:, None] / 2.) ** 2
         + 4. * np.sin(k[None, :] / 2.) ** 2).ravel()
  # 4000 samples: each mode's variance to ~3% (two real parts per mode).
  np.testing.assert_allclose(power[1:], 1. / (beta * lam[1:]), rtol=0.12)
  # Without the pair term the variances would all be ~1/κ, far off.
  assert np.abs(np.log(1. / (kappa * beta * lam[1:]))).max() > 0.5


def test_lattice_or_size_and_the_old_module_names():
  l = lattice.Lattice(4, 'o3')
  psi = lattice.LatticeConvPotential(l, hidden_units=(4,), seed=0)
  assert psi.lattice is l and psi.spin == 'o3' and psi.lattice_size == 4
  assert psi.ambient_dim == 48
  assert lattice.LatticeConvPotential(4, 'o3', (4,)).lattice == l
  with pytest.raises(ValueError, match='disagrees'):
    lattice.LatticeConvPotential(l, 'xy')
  np.testing.assert_array_equal(
      lattice.spin_wave_pair_weights(l, 0.9, 2.),
      lattice.spin_wave_pair_weights(4, 0.9, 2.))
  assert potentials.LatticeConvPotential is lattice.LatticeConvPotential
  assert potentials.spin_wave_pair_weights is lattice.spin_wave_pair_weights
