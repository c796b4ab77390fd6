"""Property-based edge cases: no NaN or Inf in values or gradients."""

import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from conftest import make_bijector

M = ircpm.manifolds
SPHERE = M.Sphere(2)
TORUS = M.Torus(2)
SETTINGS = settings(max_examples=12, deadline=None)
_BIJ = {}


def _bij(m, dtype, scale=0.2):
  key = (repr(m), dtype, scale)
  if key not in _BIJ:
    _BIJ[key] = make_bijector(m, dtype=dtype, scale=scale, seed=2)
  return _BIJ[key]


def _finite(*ts):
  return all(np.all(np.isfinite(t.numpy())) for t in ts)


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v)


def _equator(v):
  """A point on the equator x₃ = 0, where the sphere's frame switches."""
  a = math.atan2(v[1], v[0])
  return np.array([math.cos(a), math.sin(a), 0.])


vectors = st.lists(st.floats(-1, 1, allow_nan=False), min_size=3,
                   max_size=3).filter(lambda v: np.linalg.norm(v) > 0.1)


def _geometry_grads(m, x, y):
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, y])
    outs = [m.sq_dist(x, y), m.logmap(x, y), m.dist(x, y),
            m.expmap(x, m.proju(x, y))]
  grads = [tape.gradient(o, v, unconnected_gradients='zero')
           for o in outs for v in (x, y)]
  return outs, grads


@SETTINGS
@given(vectors, st.sampled_from(['same', 'antipodal', 'near', 'pole',
                                 'equator']),
       st.sampled_from([tf.float32, tf.float64]))
def test_sphere_geometry_is_finite_at_special_pairs(v, kind, dtype):
  x = _unit(v)
  if kind == 'pole':
    x = np.array([0., 0., 1.])
  if kind == 'equator':
    x = _equator(v)
  y = {'same': x, 'antipodal': -x, 'near': _unit(x + 1e-7),
       'pole': x, 'equator': x}[kind]
  xt, yt = tf.constant([x], dtype), tf.constant([y], dtype)
  outs, grads = _geometry_grads(SPHERE, xt, yt)
  assert _finite(*outs, *grads)
  if kind == 'antipodal':
    np.testing.assert_allclose(outs[0], math.pi ** 2, rtol=1e-5)


@SETTINGS
@given(st.floats(0, 2 * math.pi, allow_nan=False),
       st.floats(0, 2 * math.pi, allow_nan=False),
       st.sampled_from([0., math.pi, -math.pi, 1e-9]),
       st.sampled_from([tf.float32, tf.float64]))
def test_torus_geometry_is_finite_at_the_cut_locus(a, b, shift, dtype):
  x = tf.constant([[a, b]], dtype)
  y = tf.constant([[a + shift, b - shift]], dtype)
  outs, grads = _geometry_grads(TORUS, x, y)
  assert _finite(*outs, *grads)
  np.testing.assert_allclose(outs[0], 2 * min(abs(shift), math.pi) ** 2,
                             rtol=1e-5, atol=1e-12)


@SETTINGS
@given(vectors, st.sampled_from([tf.float32, tf.float64]))
def test_bijector_values_and_gradients_are_finite(v, dtype):
  bij = _bij(SPHERE, dtype)
  pts = np.stack([_unit(v), [0., 0., 1.], [0., 0., -1.],
                  _equator(v)])
  x = tf.constant(pts, dtype)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    y = bij.forward(x)
    ildj = bij.inverse_log_det_jacobian(y + 0., event_ndims=1)
    back = bij.inverse(y + 0.)
  grads = [tape.gradient(t, src, unconnected_gradients='zero')
           for t in (y, ildj, back)
           for src in [x] + list(bij.trainable_variables)]
  assert _finite(y, ildj, back, *grads)


def test_float32_near_identity_map():
  """ψ tiny: f ≈ id in float32, log-dets ≈ 0, round trips exact to eps."""
  bij = _bij(SPHERE, tf.float32, scale=1e-6)
  x = SPHERE.uniform(tf.float32).sample(1000, seed=1)
  y = bij.forward(x)
  ildj = bij.inverse_log_det_jacobian(tf.identity(y), event_ndims=1)
  assert _finite(y, ildj)
  assert np.max(np.abs(ildj.numpy())) < 1e-4
  assert np.max(SPHERE.dist(x, bij.inverse(tf.identity(y))).numpy()) < 1e-5


@pytest.mark.parametrize('m', [SPHERE, TORUS])
def test_large_batch(m):
  bij = _bij(m, tf.float32)
  x = m.uniform(tf.float32).sample(100000, seed=2)
  res = bij.solve(x)
  assert bool(tf.reduce_all(res.converged))
  y = bij.forward(x)
  assert _finite(y, bij.inverse_log_det_jacobian(tf.identity(y),
                                                 event_ndims=1))


def test_potential_with_wrong_shape_or_dtype_raises():
  with pytest.raises(ValueError, match='must map points'):
    ircpm.IRCPM(SPHERE, lambda y: tf.reduce_sum(y, -1)[..., None, None]
                ).forward(tf.constant([[0., 0., 1.]]))
  with pytest.raises(TypeError, match='float32 values for float64 points'):
    ircpm.IRCPM(SPHERE, lambda y: tf.cast(y[..., 2], tf.float32)).inverse(
        tf.constant([[0., 0., 1.]], tf.float64))


def test_nonconvergence_error_names_count_and_residual():
  bij = make_bijector(SPHERE, scale=0.3, seed=4, max_iterations=1,
                      tolerance=1e-14, validate_args=True)
  x = SPHERE.uniform(tf.float64).sample(7, seed=2)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'(?s)tolerance at.*7.*points.*Worst residual'):
    bij.forward(x)


def test_point_dtypes_are_checked():
  """Only float32/float64 points, and tensors of ψ's precision in both
  modes: a flow has one dtype (its base distribution's too), on every
  manifold. NumPy values are converted, as TF converts them."""
  psi = ircpm.potentials.MLP(SPHERE, (8,), seed=0, dtype=tf.float32)
  strict = ircpm.IRCPM(SPHERE, psi, validate_args=True)
  loose = ircpm.IRCPM(SPHERE, psi)
  for bad in [tf.constant([[0, 0, 1]]), np.array([[0., 0., 1.]], np.float16)]:
    for bij in [strict, loose]:
      for call in [bij.forward, bij.inverse,
                   lambda y, b=bij: b.inverse_log_det_jacobian(y, 1)]:
        with pytest.raises(TypeError, match='float32 or float64, got'):
          call(bad)
  x64 = tf.constant([[0.6, 0., 0.8]], tf.float64)
  for call in [strict.forward, strict.inverse,
               lambda y: strict.inverse_log_det_jacobian(y, 1)]:
    with pytest.raises(TypeError, match='float64 but the potential.*float32'):
      call(x64)
  for call in [loose.forward, loose.inverse,
               lambda y: loose.inverse_log_det_jacobian(y, 1)]:
    with pytest.raises(TypeError, match='float64 but the potential.*float32'):
      call(x64)
  np.testing.assert_allclose(loose.inverse(x64.numpy()).numpy(), strict.inverse(
      tf.cast(x64, tf.float32)).numpy(), atol=1e-6)
