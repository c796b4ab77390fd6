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
def test_pairwise_sq_dist_is_sq_dist_within_its_documented_error(name,
                                                                 dtype):
  """[N, K] table against `sq_dist` pair by pair, with coincident and (on
  spheres) antipodal pairs: O(eps) away from θ = π, 2π√(8 eps) at it."""
  m = MANIFOLDS[name]()
  x = _points(m, 40, dtype, seed=5)
  c = tf.concat([_points(m, 7, dtype, seed=6), x[:2]], 0)
  if isinstance(m, M.Sphere):
    c = tf.concat([c, -x[2:4]], 0)
  table = m.pairwise_sq_dist(x, c)
  assert table.shape == (40, c.shape[0])
  exact = m.sq_dist(x[:, tf.newaxis], c[tf.newaxis]).numpy()
  eps = np.finfo(dtype.as_numpy_dtype).eps
  far = np.abs(np.sqrt(np.maximum(exact, 0.)) - np.pi) > 0.1
  np.testing.assert_allclose(table.numpy()[far], exact[far], atol=50 * eps,
                             rtol=50 * eps)
  np.testing.assert_allclose(table.numpy(), exact,
                             atol=2 * np.pi * np.sqrt(8 * eps) + 50 * eps)
  # Columns 7 and 8 are x[0] and x[1] themselves.
  np.testing.assert_allclose(table.numpy()[[0, 1], [7, 8]], 0., atol=50 * eps)


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


# -- Constants for Lemmas 3-4, the certified bounds and the log-det forms. ----


def test_constants_of_tori_and_spheres():
  for n in (1, 2, 5):
    t, s = M.Torus(n), M.Sphere(n)
    assert (t.sectional_curvature_bound, s.sectional_curvature_bound) == (0, 1)
    assert t.injectivity_radius == s.injectivity_radius == math.pi
    assert t.embed_derivative_bounds == s.embed_derivative_bounds == (1, 1)
    assert t.has_closed_form_log_det_dexp and s.has_closed_form_log_det_dexp
    assert t.is_flat and not s.is_flat
    assert t.max_certified_radius() == math.pi
    assert s.max_certified_radius() == math.pi / 2


class _Opaque(M.Torus):
  """A torus that keeps the protocol's defaults: it knows no constants."""
  sectional_curvature_bound = M.Manifold.sectional_curvature_bound
  injectivity_radius = M.Manifold.injectivity_radius
  embed_derivative_bounds = M.Manifold.embed_derivative_bounds
  has_closed_form_log_det_dexp = M.Manifold.has_closed_form_log_det_dexp
  is_flat = M.Manifold.is_flat

  def log_det_dexp(self, x, y):
    return None


def _constants(m):
  return (m.sectional_curvature_bound, m.injectivity_radius,
          m.embed_derivative_bounds, m.has_closed_form_log_det_dexp,
          m.is_flat, m.max_certified_radius())


@pytest.mark.parametrize('factors', [
    [M.Torus(1), M.Sphere(2)], [M.Torus(2), M.Torus(1)],
    [M.Sphere(3), M.Sphere(2)], [M.Torus(1), _Opaque(1)]],
    ids=lambda f: repr(f))
def test_products_compose_the_factors_constants(factors):
  """K: max over factors; inj: min; (D, S): max of each; closed-form log
  det d exp and flatness: all; unknown (None / False) if a factor's is."""
  p = M.Product(factors)
  ks = [m.sectional_curvature_bound for m in factors]
  radii = [m.injectivity_radius for m in factors]
  embeds = [m.embed_derivative_bounds for m in factors]
  known = all(k is not None for k in ks)
  assert p.sectional_curvature_bound == (max(ks) if known else None)
  assert p.injectivity_radius == (min(radii) if known else None)
  assert p.embed_derivative_bounds == (
      (max(e[0] for e in embeds), max(e[1] for e in embeds))
      if all(e is not None for e in embeds) else None)
  assert p.has_closed_form_log_det_dexp == all(
      m.has_closed_form_log_det_dexp for m in factors)
  assert p.is_flat == all(m.is_flat for m in factors)
  # Power(M, k) has Product([M] * k)'s constants, i.e. M's.
  for m in factors:
    assert _constants(M.Power(m, 3)) == _constants(M.Product([m] * 3)) == (
        _constants(m))
  x = p.uniform(tf.float64).sample(3, seed=1)
  assert (p.log_det_dexp(x, x) is not None) == p.has_closed_form_log_det_dexp


def test_the_lemma4_hessian_bound():
  s, t = M.Sphere(2), M.Torus(3)
  for lam in (0.1, 0.8, 1.5):
    assert s.lemma4_hessian_bound(lam) == lam / math.tan(lam)
    assert t.lemma4_hessian_bound(lam) == 1.
  assert s.lemma4_hessian_bound(0.) == t.lemma4_hessian_bound(0.) == 1.
  assert s.lemma4_hessian_bound(math.pi / 2) == 0.
  assert t.lemma4_hessian_bound(3.) == 1. and t.lemma4_hessian_bound(3.2) == 0.
  assert _Opaque(1).lemma4_hessian_bound(0.1) == 0.
  p = M.Power(M.Sphere(2), 4)
  assert p.lemma4_hessian_bound(0.8) == s.lemma4_hessian_bound(0.8)

  class QuarterSphere(M.Sphere):   # as if of radius 1/2: curvature 4
    sectional_curvature_bound = 4.
    injectivity_radius = math.pi / 2

  q = QuarterSphere(2)
  assert q.max_certified_radius() == pytest.approx(math.pi / 4)
  assert q.lemma4_hessian_bound(0.3) == pytest.approx(0.6 / math.tan(0.6))
  assert q.lemma4_hessian_bound(0.8) == 0.


def _embedding_derivatives(m, x, v):
  """d/dt and d²/dt² of φ(exp_x(t v)) at t = 0, [N, embed_dim] each."""
  t = tf.zeros([tf.shape(x)[0], 1], x.dtype)
  with tf.autodiff.ForwardAccumulator(t, tf.ones_like(t)) as outer:
    with tf.autodiff.ForwardAccumulator(t, tf.ones_like(t)) as inner:
      phi = m.embed(m.expmap(x, t * v))
    d1 = inner.jvp(phi)
  return d1, outer.jvp(d1)


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
def test_embed_derivative_bounds_hold(name):
  """|Dφ v| <= D and |∇²φ(v, v)| <= S for unit tangent v, with the
  covariant Hessian d²/dt² φ(exp_x(tv)); both are attained here (Dφ is an
  isometry; S on a unit coordinate direction)."""
  m = MANIFOLDS[name]()
  d_bound, s_bound = m.embed_derivative_bounds
  x = _points(m, 64, tf.float64, seed=2)
  v = _tangents(m, x, 1.)
  v = tf.concat([v, m.tangent_frame(x)[:, :, 0]], 0)   # a coordinate one
  x = tf.concat([x, x], 0)
  v /= tf.norm(v, axis=-1, keepdims=True)
  d1, d2 = _embedding_derivatives(m, x, v)
  d1, d2 = tf.norm(d1, axis=-1).numpy(), tf.norm(d2, axis=-1).numpy()
  assert d1.max() <= d_bound * (1 + 1e-12) and d2.max() <= s_bound + 1e-12
  np.testing.assert_allclose(d1.max(), d_bound, rtol=1e-12)
  np.testing.assert_allclose(d2.max(), s_bound, rtol=1e-9)


def _distance_hessian(m):
  """(x, y) ↦ the Riemannian Hessian H_c of ½d(x, ·)² at y, [N, dim, dim]."""

  @tf.function  # eager pfor is slow
  def hessian(x, y):
    frame = m.tangent_frame(y)
    u = tf.zeros([tf.shape(y)[0], m.dim], y.dtype)
    with tf.GradientTape() as outer:
      outer.watch(u)
      with tf.GradientTape() as inner:
        inner.watch(u)
        half = 0.5 * m.sq_dist(x, m.expmap(y, tf.linalg.matvec(frame, u)))
      g = inner.gradient(half, u)
    return outer.batch_jacobian(g, u)

  return hessian


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
def test_curvature_bound_gives_the_distance_hessian_bound(name):
  """What Lemma 4 uses K for: at distance t < max_certified_radius, H_c has
  its eigenvalues in [η(t), 1], η = `lemma4_hessian_bound` (t cot t on Sⁿ,
  n >= 2, where the bound is attained; 1 on flat manifolds)."""
  m = MANIFOLDS[name]()
  x = _points(m, 64, tf.float64, seed=4)
  w = _tangents(m, x, 1.)
  hessian = _distance_hessian(m)
  for frac in (0.3, 0.9):
    t = frac * m.max_certified_radius()
    y = m.expmap(x, t * w / tf.norm(w, axis=-1, keepdims=True))
    eig = np.linalg.eigvalsh(hessian(x, y).numpy())
    eta = m.lemma4_hessian_bound(t)
    assert eig.min() >= eta - 1e-9 and eig.max() <= 1. + 1e-9
    if isinstance(m, M.Sphere) and m.dim >= 2:
      np.testing.assert_allclose(eig[:, 0], eta, rtol=1e-9)
    if m.is_flat:
      np.testing.assert_allclose(eig, 1., atol=1e-9)
      np.testing.assert_allclose(m.log_det_dexp(x, y), 0., atol=0)


@pytest.mark.parametrize('name', sorted(MANIFOLDS))
def test_injectivity_radius_is_where_geodesics_stop_minimising(name):
  """A geodesic of length r is minimising for r below the injectivity
  radius, and (in the worst direction: one axis of one factor) not beyond."""
  m = MANIFOLDS[name]()
  x = _points(m, 32, tf.float64, seed=6)
  e = m.tangent_frame(x)[:, :, 0]           # unit, inside the first factor
  inj = m.injectivity_radius
  np.testing.assert_allclose(m.dist(x, m.expmap(x, 0.99 * inj * e)),
                             0.99 * inj, rtol=1e-9)
  assert np.all(m.dist(x, m.expmap(x, 1.01 * inj * e)).numpy()
                < inj * (1 - 1e-3))


def test_a_subclass_that_drops_log_det_dexp_has_no_closed_form():
  class NoDexp(M.Sphere):
    def log_det_dexp(self, x, y):
      return None

  assert M.Sphere(2).has_closed_form_log_det_dexp
  assert not NoDexp(2).has_closed_form_log_det_dexp
  assert not M.Power(NoDexp(2), 2).has_closed_form_log_det_dexp
  assert not M.Product([M.Torus(1), NoDexp(2)]).has_closed_form_log_det_dexp
