"""Shared fixtures and helpers for the test suite."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm

M = ircpm.manifolds


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long reproductions, not run in CI')
  tf.get_logger().setLevel('ERROR')


# The longest test files (seconds on 2 cores, most of it tracing) run
# first. `-n 2 --dist loadfile` hands files to the workers in collection
# order, so a long file collected last would leave one worker idle while
# the other finishes it. Order only; every test still runs.
LONGEST_FILES_FIRST = (
    'test_density.py', 'test_lattice_flows.py', 'test_ircpm.py',
    'test_earth.py',
    'test_xla.py', 'test_edge_cases.py', 'test_export.py',
    'test_examples.py', 'test_failure_policy.py', 'test_certified.py',
    'test_contract.py', 'test_derivatives.py', 'test_keras.py',
    'test_wells.py', 'test_training.py', 'test_lattice_bases.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)),
                                       len(rank)))


MANIFOLDS = {
    'T1': lambda: M.Torus(1),
    'T2': lambda: M.Torus(2),
    'T3': lambda: M.Torus(3),
    'S1': lambda: M.Sphere(1),
    'S2': lambda: M.Sphere(2),
    'S3': lambda: M.Sphere(3),
    'T1xS2': lambda: M.Product([M.Torus(1), M.Sphere(2)]),
    'S2pow2': lambda: M.Power(M.Sphere(2), 2),
}


def make_bijector(manifold, dtype=tf.float64, scale=0.1, hidden=(16, 16),
                  seed=0, **kwargs):
  """An IRCPM with a random MLP ψ small enough for Lemma 4."""
  psi = ircpm.potentials.MLP(manifold, hidden, output_scale=scale, seed=seed,
                             dtype=dtype)
  return ircpm.IRCPM(manifold, psi, **kwargs)


def fd_intrinsic_jacobian(manifold, fn, x, eps):
  """Central finite differences of fn in orthonormal frames: E_{fn(x)}ᵀ J E_x.

  Args:
    fn: maps [N, ambient] → [N, ambient].
    x: [N, ambient] float64.

  Returns:
    [N, dim, dim] numpy array.
  """
  frame = manifold.tangent_frame(x)
  y = fn(x)
  frame_y = manifold.tangent_frame(y)
  cols = []
  for k in range(manifold.dim):
    e = frame[..., k]
    yp = fn(manifold.expmap(x, eps * e))
    ym = fn(manifold.expmap(x, -eps * e))
    # Difference through log maps so the torus wrap cannot create jumps.
    d = (manifold.logmap(y, yp) - manifold.logmap(y, ym)) / (2. * eps)
    cols.append(tf.linalg.matvec(frame_y, d, transpose_a=True))
  return tf.stack(cols, axis=-1).numpy()


def dense_hessian(psi, y):
  """Euclidean Hessian of ψ in ambient coordinates by nested tapes,
  [batch, D, D] for y [batch, D]: the reference the lattice tests compare
  the matrix-free and closed-form routes against."""
  with tf.GradientTape() as outer:
    outer.watch(y)
    with tf.GradientTape() as inner:
      inner.watch(y)
      value = psi(y)
    g = inner.gradient(value, y)
  return outer.batch_jacobian(g, y)


def fibonacci_sphere(n):
  """Equal-area point set on S² (each point carries area 4π/n)."""
  i = np.arange(n) + 0.5
  z = 1. - 2. * i / n
  phi = np.pi * (1. + 5. ** 0.5) * i
  r = np.sqrt(1. - z * z)
  return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


@pytest.fixture(autouse=True)
def _seed():
  tf.random.set_seed(1234)
  np.random.seed(1234)


@pytest.fixture
def solve_calls(monkeypatch):
  """A list that grows by one on every call of `solvers.solve` in the test."""
  calls = []
  original = ircpm.solvers.solve

  def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(ircpm.solvers, 'solve', counting)
  return calls


def conv_psi(lattice_size, spin, scale=0.2, seed=0, **kwargs):
  """A float64 `LatticeConvPotential` with channels (8, 8)."""
  return ircpm.lattice.LatticeConvPotential(
      lattice_size, spin, (8, 8), output_scale=scale, seed=seed,
      dtype=tf.float64, **kwargs)


def random_rotation(rng):
  """A uniformly random element of SO(3) (QR with the sign fix)."""
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q * np.linalg.det(q)
