"""tfp_ircpm.lattice.lattice: the Lattice object. Neighbours against a
hand-written 3×3 case, grid operations against the neighbour tables,
spins ⇄ points round trips, the symmetry action, the spin vocabulary, and
that targets, potentials, bases and the heat bath share one lattice."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import lattice
from tfp_ircpm.lattice import mcmc

from conftest import dense_hessian, random_rotation

Lattice = lattice.Lattice


def _random_points(l, spin, n, rng):
  if spin == 'xy':
    return rng.uniform(0., 2. * np.pi, (n, l * l))
  s = rng.normal(size=(n, l * l, 3))
  return (s / np.linalg.norm(s, axis=-1, keepdims=True)).reshape(n, -1)


def test_neighbours_of_the_three_by_three_lattice():
  #  0 1 2
  #  3 4 5      right of 2 is 0, below 6 is 0 (periodic).
  #  6 7 8
  lat = Lattice(3)
  np.testing.assert_array_equal(lat.coordinates[5], [1, 2])
  np.testing.assert_array_equal(lat.right_neighbours,
                                [1, 2, 0, 4, 5, 3, 7, 8, 6])
  np.testing.assert_array_equal(lat.lower_neighbours,
                                [3, 4, 5, 6, 7, 8, 0, 1, 2])
  # (right, lower, left, upper)
  np.testing.assert_array_equal(lat.neighbours[0], [1, 3, 2, 6])
  np.testing.assert_array_equal(lat.neighbours[4], [5, 7, 3, 1])
  np.testing.assert_array_equal(lat.neighbours[8], [6, 2, 7, 5])
  assert lat.bonds.shape == (18, 2)
  np.testing.assert_array_equal(lat.bonds[:3], [[0, 1], [1, 2], [2, 0]])
  np.testing.assert_array_equal(lat.bonds[9:12], [[0, 3], [1, 4], [2, 5]])
  # Every site has degree 4 (each bond counted at both ends).
  np.testing.assert_array_equal(np.bincount(lat.bonds.ravel()), [4] * 9)
  assert lat.index(-1, 3) == 6
  np.testing.assert_array_equal(lat.checkerboard,
                                [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
  # D[i, j] indexes rᵢ − rⱼ mod 3: site 0 minus site 4 is (−1, −1) = (2, 2).
  assert lat.displacement_index[0, 4] == 8
  assert lat.displacement_index[4, 0] == 4
  np.testing.assert_array_equal(np.diag(lat.displacement_index), 0)
  # L = 2: the right and left neighbours coincide (every bond doubled).
  two = Lattice(2)
  np.testing.assert_array_equal(two.neighbours[:, 0], two.neighbours[:, 2])
  np.testing.assert_array_equal(two.neighbours[:, 1], two.neighbours[:, 3])
  np.testing.assert_allclose(two.laplacian_eigenvalues(),
                             [[0., 4.], [4., 8.]], atol=1e-15)


@pytest.mark.parametrize('spin', ['xy', 'o3'])
def test_grid_operations_follow_the_neighbour_tables(spin):
  rng = np.random.default_rng(0)
  l, n = 4, 3
  lat = Lattice(l, spin)
  s = lat.spins(tf.constant(_random_points(l, spin, n, rng)))
  flat = s.numpy().reshape(n, l * l, -1)
  np.testing.assert_allclose(
      lat.right(s, trailing=1).numpy().reshape(n, l * l, -1),
      flat[:, lat.right_neighbours], rtol=0.)
  np.testing.assert_allclose(
      lat.lower(s, trailing=1).numpy().reshape(n, l * l, -1),
      flat[:, lat.lower_neighbours], rtol=0.)
  np.testing.assert_allclose(
      lat.neighbour_sum(s, trailing=1).numpy().reshape(n, l * l, -1),
      flat[:, lat.neighbours].sum(2), atol=1e-14)


@pytest.mark.parametrize('spin', ['xy', 'o3'])
def test_bond_sum_is_the_sum_over_the_bond_list(spin):
  rng = np.random.default_rng(1)
  lat = Lattice(3, spin)
  x = _random_points(3, spin, 4, rng)
  s = lat.site_spins(tf.constant(x)).numpy()
  i, j = lat.bonds.T
  expected = (s[:, i] * s[:, j]).sum((-2, -1))
  np.testing.assert_allclose(lat.bond_sum(tf.constant(x)), expected,
                             rtol=1e-12)
  cosines = lat.bond_cosines(tf.constant(x)).numpy()
  assert cosines.shape == (4, 3, 3, 2)
  np.testing.assert_allclose(cosines[..., 0].reshape(4, -1),
                             (s * s[:, lat.right_neighbours]).sum(-1),
                             rtol=1e-12)
  if spin == 'xy':
    angles = lat.bond_angles(tf.constant(x)).numpy()
    np.testing.assert_allclose(angles[..., 1].reshape(4, -1),
                               x - x[:, lat.lower_neighbours], rtol=1e-12)
  else:
    with pytest.raises(ValueError, match='XY'):
      lat.bond_angles(tf.constant(x))


@pytest.mark.parametrize('spin', ['xy', 'o3'])
def test_bond_sum_hessian_is_symmetric_under_vectorised_jacobians(spin):
  """The grid rolls use non-negative axes: `tf.roll` with a negative axis
  differentiates wrongly under pfor (batch_jacobian), which made Hessians
  of bond sums asymmetric."""
  lat = Lattice(3, spin)
  x = tf.constant(_random_points(3, spin, 2, np.random.default_rng(5)))
  hess = dense_hessian(lat.bond_sum, x).numpy()
  np.testing.assert_allclose(hess, np.swapaxes(hess, 1, 2), atol=1e-12)
  single = dense_hessian(lat.bond_sum, x[:1]).numpy()
  np.testing.assert_allclose(hess[:1], single, atol=1e-12)
  if spin == 'xy':
    # At the aligned state Hess Σ cos(θᵢ − θⱼ) = −(graph Laplacian).
    adjacency = np.zeros((9, 9))
    for i, j in lat.bonds:
      adjacency[i, j] += 1.
      adjacency[j, i] += 1.
    laplacian = np.diag(adjacency.sum(1)) - adjacency
    np.testing.assert_allclose(
        dense_hessian(lat.bond_sum, tf.zeros([1, 9], tf.float64))[0],
        -laplacian, atol=1e-12)


def test_spins_and_points_round_trip():
  rng = np.random.default_rng(2)
  xy, o3 = Lattice(3, 'xy'), Lattice(3, 'o3')
  theta = rng.uniform(0., 2. * np.pi, (2, 5, 9))            # batch [2, 5]
  s = xy.spins(tf.constant(theta))
  assert s.shape == (2, 5, 3, 3, 2)
  np.testing.assert_allclose(np.linalg.norm(s, axis=-1), 1., rtol=1e-14)
  np.testing.assert_allclose(s[..., 1, 2, 0], np.cos(theta[..., 5]),
                             rtol=1e-14)
  np.testing.assert_allclose(xy.points(s), theta, atol=1e-12)
  # Angles outside [0, 2π) come back canonical.
  np.testing.assert_allclose(xy.points(xy.spins(tf.constant(theta - 7.))),
                             (theta - 7.) % (2. * np.pi), atol=1e-12)
  np.testing.assert_allclose(xy.site_points(xy.site_spins(theta)), theta,
                             atol=1e-12)
  v = _random_points(3, 'o3', 10, rng).reshape(2, 5, 27)
  grid = o3.spins(tf.constant(v))
  assert grid.shape == (2, 5, 3, 3, 3)
  np.testing.assert_array_equal(grid[..., 2, 1, :], v[..., 21:24])
  np.testing.assert_array_equal(o3.points(grid), v)
  assert o3.site_spins(v).shape == (2, 5, 9, 3)
  np.testing.assert_array_equal(o3.site_points(o3.site_spins(v)), v)
  # Spins → points → spins, from unit vectors.
  u = rng.normal(size=(4, 3, 3, 2))
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  np.testing.assert_allclose(xy.spins(xy.points(tf.constant(u))), u,
                             atol=1e-12)
  # The magnetisation is the sum of the site spins.
  np.testing.assert_allclose(o3.magnetisation(v), v.reshape(2, 5, 9, 3).sum(2),
                             rtol=1e-12)


@pytest.mark.parametrize('spin', ['xy', 'o3'])
def test_symmetry_and_translations_leave_the_bonds_alone(spin):
  rng = np.random.default_rng(3)
  l = 4
  lat = Lattice(l, spin)
  x = tf.constant(_random_points(l, spin, 5, rng))
  g = 1.3 if spin == 'xy' else random_rotation(rng)
  moved = lat.act(x, g)
  np.testing.assert_allclose(lat.bond_sum(moved), lat.bond_sum(x), rtol=1e-12)
  if spin == 'xy':
    np.testing.assert_allclose(moved, (x.numpy() + 1.3) % (2. * np.pi),
                               rtol=1e-14)
  else:
    np.testing.assert_allclose(
        lat.site_spins(moved), lat.site_spins(x).numpy() @ g.T, atol=1e-14)
  shifted = lat.translate(x, (1, 3))
  np.testing.assert_array_equal(
      lat.grid(shifted), np.roll(lat.grid(x).numpy(), (1, 3), axis=(1, 2)))
  np.testing.assert_allclose(lat.bond_sum(shifted), lat.bond_sum(x),
                             rtol=1e-12)


def test_spin_vocabulary_equality_and_manifolds():
  assert lattice.SPINS == ('xy', 'o3')
  assert lattice.canonical_spin('o3') == 'o3'
  with pytest.warns(DeprecationWarning, match='spin_dim'):
    assert lattice.canonical_spin(2) == 'xy'
  with pytest.warns(DeprecationWarning, match='spin_dim'):
    assert lattice.canonical_spin(spin_dim=3) == 'o3'
  with pytest.raises(ValueError, match='spin'):
    lattice.canonical_spin('ising')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    with pytest.raises(ValueError, match='spin_dim'):
      lattice.canonical_spin(4)
  assert Lattice(4, 'xy') == Lattice(4, 'xy')
  assert Lattice(4, 'xy') != Lattice(4, 'o3') != Lattice(2, 'o3')
  assert Lattice(2, 'xy') != lattice.Sites(4, 'xy')
  assert len({Lattice(4), Lattice(4, 'xy'), lattice.Sites(16, 'xy')}) == 2
  assert repr(Lattice(4, 'o3')) == "Lattice(4, 'o3')"
  xy, o3 = Lattice(4, 'xy'), Lattice(4, 'o3')
  assert (xy.num_sites, xy.spin_dim, xy.site_dim, xy.ambient_dim) == (
      16, 2, 1, 16)
  assert (o3.num_sites, o3.spin_dim, o3.site_dim, o3.ambient_dim) == (
      16, 3, 3, 48)
  assert isinstance(xy.manifold, ircpm.manifolds.Torus)
  assert repr(xy.manifold) == 'Torus(16)'
  assert repr(o3.manifold) == 'Power(Sphere(2), 16)'
  assert xy.manifold is xy.manifold          # built once
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match='integer'):
      Lattice(bad)
  with pytest.raises(ValueError, match='num_sites'):
    lattice.Sites(0, 'xy')


@pytest.mark.parametrize('spin', ['xy', 'o3'])
def test_targets_potentials_bases_and_heat_bath_share_the_lattice(spin):
  target = lattice.lattice_model(4, 0.7, spin)
  lat = target.lattice
  assert lat == Lattice(4, spin) and target.manifold is lat.manifold
  psi = lattice.LatticeConvPotential(lat, hidden_units=(4,), seed=0)
  built = lattice.LatticeConvPotential(4, spin, (4,), seed=0)
  base = lattice.SymmetricMeanField(lat, concentration=1.)
  by_size = lattice.SymmetricMeanField(16, spin, 1.)
  assert psi.lattice is lat and built.lattice == lat
  assert base.sites is lat and by_size.sites == lattice.Sites(16, spin)
  for m in (psi.ambient_dim, base.event_shape[0], by_size.event_shape[0]):
    assert m == target.manifold.ambient_dim
  assert repr(base.manifold) == repr(by_size.manifold) == repr(
      target.manifold)
  # The base's samples are points of the target's manifold, in its layout:
  # the heat bath's spins ⇄ points conversion is the lattice's.
  x = base.sample(3, seed=(1, 2))
  for _ in target.manifold.membership_assertions(x):
    pass
  spins = target.spins(x)
  np.testing.assert_allclose(target.spins(mcmc.to_points(target, spins)),
                             spins, atol=1e-6)
  np.testing.assert_allclose(target.magnetisation(x), lat.magnetisation(x),
                             atol=1e-5)
  # The bond features the potential sees are the target's bonds.
  features = psi.features(x).numpy()
  cosines = features[..., [0, 2]] if spin == 'xy' else features
  np.testing.assert_allclose(cosines.sum((1, 2, 3)),
                             -target.energy(x) / 0.7, rtol=1e-5)
  with pytest.raises(ValueError, match='even'):
    mcmc.sweep(lattice.lattice_model(3, 1., spin),
               tf.zeros([1, 3, 3, lat.spin_dim], tf.float64), (0, 0))


def test_lattice_of_accepts_lattices_and_older_descriptions():
  lat = Lattice(4, 'o3')
  assert lattice.lattice.lattice_of(lat) is lat
  assert lattice.lattice.lattice_of(lattice.o3_model(4, 1.)) == lat

  class Old:
    lattice_size, spin_dim, beta = 4, 3, 1.

  assert lattice.lattice.lattice_of(Old()) == lat
  with pytest.raises(TypeError, match='no Lattice'):
    lattice.lattice.lattice_of(object())
