"""tfp_ircpm.lattice.targets: the XY and O(3) lattice targets against explicit
bond sums and the 2×2 transfer matrix; argument checks; the old imports."""

import math
import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import lattice
from tfp_ircpm import targets

M = ircpm.manifolds


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
  xy, o3 = lattice.xy_model(l, 0.7), lattice.o3_model(l, 1.3)
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
  assert lattice.xy_model(2, beta).log_normalizer == pytest.approx(exact,
                                                                   abs=1e-9)


def test_lattice_targets_reject_bad_input():
  with pytest.raises(ValueError, match='lattice_size'):
    lattice.xy_model(2.5, 1.)
  with pytest.raises(ValueError, match='beta'):
    lattice.o3_model(4, -1.)
  with pytest.raises(ValueError, match='quadrature'):
    _ = lattice.xy_model(4, 1.).log_normalizer
  with pytest.raises(ValueError, match='event size'):
    lattice.xy_model(4, 1.).energy(tf.zeros([3, 15]))



def test_lattice_model_picks_the_spin_and_names_the_target():
  xy, o3 = lattice.lattice_model(4, 0.5, 'xy'), lattice.lattice_model(4, 0.5,
                                                                      'o3')
  assert (xy.name, xy.spin, xy.spin_dim) == ('xy_L4', 'xy', 2)
  assert (o3.name, o3.spin, o3.spin_dim) == ('o3_L4', 'o3', 3)
  assert xy.lattice == lattice.Lattice(4, 'xy') and xy.lattice_size == 4
  assert repr(o3.manifold) == 'Power(Sphere(2), 16)'
  with pytest.raises(ValueError, match='spin'):
    lattice.lattice_model(4, 0.5, 'ising')


def test_the_deprecated_constructor_builds_the_same_target():
  rng = np.random.default_rng(7)
  theta = tf.constant(rng.uniform(0, 2 * np.pi, (3, 9)))
  new = lattice.LatticeTarget(lattice.Lattice(3, 'xy'), 0.8)
  with pytest.warns(DeprecationWarning, match='LatticeTarget'):
    old = lattice.LatticeTarget(M.Torus(9), 3, 0.8, 2, None, 'old')
  assert old.lattice == new.lattice and old.name == 'old'
  np.testing.assert_allclose(old.energy(theta), new.energy(theta), rtol=1e-14)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    with pytest.raises(ValueError, match='does not hold'):
      lattice.LatticeTarget(M.Torus(8), 3, 0.8, 2, None, 'old')


def test_old_module_names_are_the_lattice_objects():
  assert targets.LatticeTarget is lattice.LatticeTarget
  assert targets.xy_model is lattice.xy_model
  assert targets.o3_model is lattice.o3_model
  assert {'LatticeTarget', 'xy_model', 'o3_model'} <= set(dir(targets))
  with pytest.raises(AttributeError):
    _ = targets.no_such_target
