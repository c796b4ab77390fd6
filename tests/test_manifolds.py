"""Manifold geometry: exp/log inverses, distances, frames, smoothness."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from conftest import MANIFOLDS

M = ircpm.manifolds
DTYPES = [tf.float32, tf.float64]


def _points(manifold, n, dtype, seed=0):
  return manifold.uniform(dtype).sample(n, seed=seed)


def _tangents(manifold, x, scale, seed=1):
  rng = np.random.default_rng(seed)
  coeff = tf.constant(rng.normal(size=(x.shape[0], manifold.dim)), x.dtype)
  return scale * tf.linalg.matvec(manifold.tangent_frame(x), coeff)


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
@pytest.mark.parametrize('dtype', DTYPES)
def test_log_inverts_exp(name, dtype):
  m = MANIFOLDS[name]()
  x = _points(m, 64, dtype)
  v = _tangents(m, x, 0.7)
  y = m.expmap(x, v)
  tol = 1e-5 if dtype == tf.float32 else 1e-12
  np.testing.assert_allclose(m.logmap(x, y), v, atol=tol)
  # |log| is the geodesic distance, and d is symmetric.
  np.testing.assert_allclose(m.dist(x, y), tf.norm(v, axis=-1), atol=tol)
  np.testing.assert_allclose(m.dist(y, x), m.dist(x, y), atol=tol)


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
@pytest.mark.parametrize('dtype', DTYPES)
def test_frame_is_orthonormal_and_tangent(name, dtype):
  m = MANIFOLDS[name]()
  x = _points(m, 128, dtype)
  if isinstance(m, M.Sphere):   # the poles and the frame switch (equator)
    extra = np.zeros((4, m.ambient_dim))
    extra[0, -1], extra[1, -1], extra[2, 0] = 1., -1., 1.
    extra[3, 0], extra[3, -1] = math.sqrt(.5), math.sqrt(.5)
    x = tf.concat([x, tf.constant(extra, dtype)], 0)
  e = m.tangent_frame(x)
  assert e.shape == (x.shape[0], m.ambient_dim, m.dim)
  gram = tf.linalg.matmul(e, e, transpose_a=True)
  tol = 1e-5 if dtype == tf.float32 else 1e-12
  np.testing.assert_allclose(gram, np.broadcast_to(np.eye(m.dim), gram.shape),
                             atol=tol)
  # Columns are fixed by the tangent projection, i.e. orthogonal to normals.
  projected = tf.stack([m.proju(x, e[..., k]) for k in range(m.dim)], -1)
  np.testing.assert_allclose(projected, e, atol=tol)


@pytest.mark.parametrize('dtype', DTYPES)
def test_sphere_distance_matches_arccos(dtype):
  m = M.Sphere(2)
  x = _points(m, 256, dtype, seed=3)
  y = _points(m, 256, dtype, seed=4)
  ref = np.arccos(np.clip(np.sum(x.numpy().astype(np.float64)
                                 * y.numpy().astype(np.float64), -1), -1, 1))
  tol = 1e-4 if dtype == tf.float32 else 1e-10
  np.testing.assert_allclose(m.dist(x, y), ref, atol=tol)


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
@pytest.mark.parametrize('dtype', DTYPES)
def test_twice_differentiable_at_coincidence(name, dtype):
  """½d(x, exp_x(v))² = ½|v|²: gradient v and Hessian I at v = 0 and near it,
  with no NaN, also at the poles."""
  m = MANIFOLDS[name]()
  x = _points(m, 16, dtype)
  if isinstance(m, M.Sphere):
    poles = np.zeros((2, m.ambient_dim))
    poles[0, -1], poles[1, -1] = 1., -1.
    x = tf.concat([x, tf.constant(poles, dtype)], 0)
  frame = m.tangent_frame(x)

  @tf.function  # one trace for the four scales; eager pfor is slow
  def derivatives(v):
    with tf.GradientTape() as t2:
      t2.watch(v)
      with tf.GradientTape() as t1:
        t1.watch(v)
        y = m.expmap(x, tf.linalg.matvec(frame, v))
        half = 0.5 * m.sq_dist(x, y)
      g = t1.gradient(half, v)
    return g, t2.batch_jacobian(g, v)

  for scale in [0., 1e-9, 1e-4, 0.3]:
    v = tf.fill([x.shape[0], m.dim], tf.constant(scale, dtype))
    g, h = derivatives(v)
    tol = 2e-4 if dtype == tf.float32 else 1e-9
    np.testing.assert_allclose(g, v, atol=tol)
    np.testing.assert_allclose(
        h, np.broadcast_to(np.eye(m.dim), h.shape), atol=tol)


@pytest.mark.parametrize('dtype', DTYPES)
def test_sphere_log_and_dist_gradients_finite_at_x_equals_y(dtype):
  m = M.Sphere(2)
  x = tf.constant([[0., 0., 1.], [1., 0., 0.], [0., -1., 0.]], dtype)
  y = tf.identity(x)
  with tf.GradientTape(persistent=True) as t:
    t.watch([x, y])
    d = m.dist(x, y)
    lg = m.logmap(x, y)
    ex = m.expmap(x, tf.zeros_like(x))
  for out in [d, lg, ex]:
    for var in [x, y]:
      g = t.gradient(out, var,
                     unconnected_gradients=tf.UnconnectedGradients.ZERO)
      assert np.all(np.isfinite(g.numpy()))
  np.testing.assert_allclose(d, 0., atol=0)
  # d log_x(y)/dy at y = x is the tangent projection P_x.
  with tf.GradientTape() as t:
    t.watch(y)
    lg = m.logmap(x, y)
  jac = t.batch_jacobian(lg, y).numpy()
  proj = np.eye(3)[None] - x.numpy()[:, :, None] * x.numpy()[:, None, :]
  np.testing.assert_allclose(jac, proj, atol=1e-6)


def test_sphere_antipodal_is_finite():
  m = M.Sphere(2)
  x = tf.constant([[0., 0., 1.]], tf.float64)
  y = -x
  with tf.GradientTape() as t:
    t.watch(y)
    d2 = m.sq_dist(x, y)
    lg = m.logmap(x, y)
  np.testing.assert_allclose(d2, math.pi ** 2, rtol=1e-12)
  assert np.all(np.isfinite(lg.numpy()))
  assert np.all(np.isfinite(t.gradient(lg, y).numpy()))


def test_torus_wrap_and_logmap_are_shortest():
  m = M.Torus(2)
  x = tf.constant([[0.1, 6.2]], tf.float64)
  y = tf.constant([[6.2, 0.1]], tf.float64)
  v = m.logmap(x, y).numpy()
  np.testing.assert_allclose(v, [[6.1 - 2 * math.pi, 2 * math.pi - 6.1]],
                             atol=1e-12)
  out = m.expmap(x, tf.constant([[-0.2, 0.3]], tf.float64)).numpy()
  assert np.all((out >= 0) & (out < 2 * math.pi))


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
def test_uniform_is_normalised_volume_measure(name):
  m = MANIFOLDS[name]()
  u = m.uniform(tf.float64)
  x = u.sample(8, seed=5)
  assert x.shape == (8, m.ambient_dim)
  np.testing.assert_allclose(u.log_prob(x), -math.log(m.volume), rtol=1e-10)
  for a in m.membership_assertions(x):
    pass  # eager assertions ran without raising


def test_volumes():
  np.testing.assert_allclose(M.Sphere(2).volume, 4 * math.pi)
  np.testing.assert_allclose(M.Sphere(1).volume, 2 * math.pi)
  np.testing.assert_allclose(M.Sphere(3).volume, 2 * math.pi ** 2)
  np.testing.assert_allclose(M.Torus(3).volume, (2 * math.pi) ** 3)


def test_membership_errors():
  s = M.Sphere(2)
  with pytest.raises(tf.errors.InvalidArgumentError, match='off the sphere'):
    s.membership_assertions(tf.constant([[1., 1., 0.]]))
  with pytest.raises(ValueError, match='event size 3'):
    s.membership_assertions(tf.constant([[1., 0.]]))
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN'):
    s.membership_assertions(tf.constant([[np.nan, 0., 1.]]))
  t = M.Torus(2)
  with pytest.raises(tf.errors.InvalidArgumentError, match='radians'):
    t.membership_assertions(tf.constant([[30., 1.]]))


def test_traces_in_tf_function_with_batch_axes():
  m = M.Product([M.Torus(1), M.Sphere(2)])

  @tf.function
  def f(x, v):
    return m.logmap(x, m.expmap(x, v)), m.tangent_frame(x)

  x = m.uniform(tf.float64).sample([2, 3], seed=1)
  frame = m.tangent_frame(x)
  v = 0.3 * tf.reduce_sum(frame, -1)
  lg, fr = f(x, v)
  assert fr.shape == (2, 3, 4, 3)
  np.testing.assert_allclose(lg, v, atol=1e-12)


@pytest.mark.parametrize('factor', [M.Sphere(2), M.Torus(1)], ids=['S2', 'T1'])
def test_power_equals_the_product_of_copies(factor):
  """Power(M, k) is Product([M] * k) computed batched: same points, same
  geometry, same frames, and the same IRCPM flow for the same ψ."""
  k = 3
  power, product = M.Power(factor, k), M.Product([factor] * k)
  assert (power.dim, power.ambient_dim, power.embed_dim) == (
      product.dim, product.ambient_dim, product.embed_dim)
  np.testing.assert_allclose(power.volume, product.volume)
  x = _points(product, 16, tf.float64)
  y = _points(product, 16, tf.float64, seed=3)
  v = _tangents(product, x, 0.7)
  for op, args in (('expmap', (x, v)), ('logmap', (x, y)),
                   ('sq_dist', (x, y)), ('log_det_dexp', (x, y)),
                   ('proju', (x, 2. * y)), ('projx', (1.5 * x,)),
                   ('embed', (x,)), ('tangent_frame', (x,)),
                   ('frame_orientation', (x,))):
    np.testing.assert_allclose(getattr(power, op)(*args),
                               getattr(product, op)(*args), atol=1e-12,
                               err_msg=op)
  np.testing.assert_allclose(power.uniform(tf.float64).log_prob(x),
                             product.uniform(tf.float64).log_prob(x))
  assert power.uniform().sample(5, seed=1).shape == (5, power.ambient_dim)
  # The flow, on two copies.
  power, product = M.Power(factor, 2), M.Product([factor] * 2)
  x, y = x[:, :power.ambient_dim], y[:, :power.ambient_dim]
  psi = ircpm.potentials.MLP(product, (16,), output_scale=0.2, seed=0,
                             dtype=tf.float64)
  flows = [tfp.distributions.TransformedDistribution(
      m.uniform(tf.float64), ircpm.IRCPM(m, psi)) for m in (power, product)]
  np.testing.assert_allclose(flows[0].log_prob(y), flows[1].log_prob(y),
                             rtol=1e-10)
  np.testing.assert_allclose(flows[0].bijector.inverse(y),
                             flows[1].bijector.inverse(y), atol=1e-12)
  # forward is the solve; its round trip on Power runs in test_ircpm
  # (MANIFOLDS['S2pow2']), so it is not traced again here.
  with pytest.raises(ValueError, match=f'event size {power.ambient_dim}'):
    power.membership_assertions(tf.zeros([1, power.ambient_dim + 1]))
  with pytest.raises(ValueError, match='k >= 1'):
    M.Power(factor, 0)
