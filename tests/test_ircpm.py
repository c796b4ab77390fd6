"""The IRCPM bijector: inverses, log-dets, densities, IFT gradients, symmetry."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from conftest import MANIFOLDS
from conftest import fd_intrinsic_jacobian
from conftest import fibonacci_sphere
from conftest import make_bijector

tfd = tfp.distributions
tfb = tfp.bijectors
M = ircpm.manifolds


# Each case traces a new solve: the float32 cases on the three- and
# four-dimensional manifolds (30-50 s each on two cores) run outside CI; CI
# keeps every manifold in float64 and the one- and two-dimensional ones in
# float32 (benchmarks/float32_logdet_accuracy.py measures float32 on the
# products).
_SLOW_FLOAT32 = ('S3', 'S2pow2', 'T1xS2')


def _round_trip_cases():
  for dtype, tol in [(tf.float32, 1e-5), (tf.float64, 1e-10)]:
    for name in sorted(MANIFOLDS):
      slow = dtype == tf.float32 and name in _SLOW_FLOAT32
      yield pytest.param(name, dtype, tol,
                         marks=(pytest.mark.slow,) if slow else ())


@pytest.mark.parametrize('name,dtype,tol', _round_trip_cases())
def test_round_trips(name, dtype, tol):
  m = MANIFOLDS[name]()
  bij = make_bijector(m, dtype=dtype, scale=0.1, seed=3)
  x = m.uniform(dtype).sample(200, seed=1)
  y = bij.forward(x)
  assert y.dtype == dtype
  # Fresh tensors defeat TFP's bijector cache, so the inverse really runs.
  x_back = bij.inverse(tf.identity(y))
  assert np.max(m.dist(x, x_back).numpy()) < tol
  y2 = m.uniform(dtype).sample(200, seed=2)
  y2_back = bij.forward(bij.inverse(y2) + 0.)
  assert np.max(m.dist(y2, y2_back).numpy()) < tol
  # The map is not the identity: the test has something to invert.
  assert np.max(m.dist(x, y).numpy()) > 1e-3


# S³ repeats S²'s sphere terms at 2-3x the trace cost: outside CI.
@pytest.mark.parametrize('name', ['T2', 'S1', 'S2', pytest.param(
    'S3', marks=pytest.mark.slow), 'T1xS2'])
def test_log_dets_match_finite_differences(name):
  m = MANIFOLDS[name]()
  bij = make_bijector(m, scale=0.4, seed=5)
  y = m.uniform(tf.float64).sample(32, seed=4)
  jac_inv = fd_intrinsic_jacobian(m, bij.inverse, y, 1e-6)
  ref = np.log(np.abs(np.linalg.det(jac_inv)))
  ildj = bij.inverse_log_det_jacobian(tf.identity(y)).numpy()
  np.testing.assert_allclose(ildj, ref, atol=1e-7)
  assert np.std(ref) > 1e-2     # a non-trivial Jacobian
  # The forward log-det against finite differences of the *solve*.
  x = m.uniform(tf.float64).sample(16, seed=6)
  jac_fwd = fd_intrinsic_jacobian(m, bij.forward, x, 1e-6)
  ref_f = np.log(np.abs(np.linalg.det(jac_fwd)))
  fldj = bij.forward_log_det_jacobian(tf.identity(x)).numpy()
  np.testing.assert_allclose(fldj, ref_f, atol=1e-7)


def test_forward_mode_log_det_equals_the_reverse_mode_one(monkeypatch):
  """Above MAX_REVERSE_JACOBIAN_DIM the exact ildj comes from chunked JVPs.

  Forced on T¹ × S² (a chunk of 2 does not divide dim 3, so the padding is
  exercised), values and ψ-gradients match the pfor route.
  """
  ircpm_module = ircpm.bijectors.ircpm
  m = MANIFOLDS['T1xS2']()
  y = m.uniform(tf.float64).sample(8, seed=2)

  def value_and_grads():
    bij = make_bijector(m, scale=0.4, seed=5)
    with tf.GradientTape() as tape:
      ildj = bij.inverse_log_det_jacobian(tf.identity(y))
      total = tf.reduce_sum(ildj * tf.range(1., 9., dtype=tf.float64))
    grads = tape.gradient(total, bij.potential.trainable_variables)
    return ildj.numpy(), [g.numpy() for g in grads]

  ref, ref_grads = value_and_grads()
  monkeypatch.setattr(ircpm_module, 'MAX_REVERSE_JACOBIAN_DIM', 0)
  monkeypatch.setattr(ircpm_module, 'JVP_CHUNK', 2)
  got, got_grads = value_and_grads()
  assert np.std(ref) > 1e-2
  np.testing.assert_allclose(got, ref, atol=1e-11)
  for g, r in zip(got_grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-10)


def _chain3(m, **kw):
  b = make_bijector(m, **kw)
  return tfb.Chain([b, b, b]), b


def _assert_normalised(q, base, pts, weight):
  """∫ q ≈ Σ w_i q(x_i) within 1e-3, and the same sum with the log-det
  dropped or negated misses 1 by > 1e-2: the check sees a wrong log-det, not
  only a wrong normaliser."""
  integral = float(tf.reduce_sum(weight * tf.exp(q.log_prob(pts))))
  assert abs(integral - 1.) < 1e-3
  log_pull = base.log_prob(q.bijector.inverse(pts))
  ildj = q.bijector.inverse_log_det_jacobian(pts, event_ndims=1)
  for wrong in [log_pull, log_pull - ildj]:
    assert abs(float(tf.reduce_sum(weight * tf.exp(wrong))) - 1.) > 1e-2


@pytest.mark.parametrize('stack', [1, 3])
def test_density_integrates_to_one_on_t2(stack):
  m = M.Torus(2)
  b = make_bijector(m, scale=1.0, hidden=(32, 32), seed=10)
  base = tfd.Independent(tfd.VonMises(tf.constant([1., 3.], tf.float64),
                                      tf.constant([1., 0.5], tf.float64)), 1)
  q = tfd.TransformedDistribution(base, tfb.Chain([b] * stack))
  g = (np.arange(160) + 0.5) * 2 * math.pi / 160
  a, c = np.meshgrid(g, g, indexing='ij')
  pts = tf.constant(np.stack([a.ravel(), c.ravel()], -1))
  _assert_normalised(q, base, pts, (2 * math.pi / 160) ** 2)


@pytest.mark.parametrize('stack', [1, 3])
def test_density_integrates_to_one_on_s2(stack):
  m = M.Sphere(2)
  b = make_bijector(m, scale=1.0, hidden=(32, 32), seed=9)
  base = ircpm.distributions.VonMisesFisher(
      tf.constant([0.6, 0., 0.8], tf.float64), tf.constant(2., tf.float64))
  q = tfd.TransformedDistribution(base, tfb.Chain([b] * stack))
  n = 20000
  _assert_normalised(q, base, tf.constant(fibonacci_sphere(n)),
                     4 * math.pi / n)


@pytest.mark.slow    # S² and T² integrate by quadrature in CI
def test_density_integrates_to_one_on_s3_by_importance_sampling():
  m = M.Sphere(3)
  chain, _ = _chain3(m, scale=0.15, hidden=(16, 16), seed=10)
  q = tfd.TransformedDistribution(m.uniform(tf.float64), chain)
  u = m.uniform(tf.float64)
  x = u.sample(100000, seed=12)
  w = np.exp(q.log_prob(x).numpy() - u.log_prob(x).numpy())
  stderr = np.std(w) / math.sqrt(w.size)
  assert stderr < 3e-4          # the check below can resolve a 1e-3 error
  assert np.std(w) > 0.03       # and the density is not the uniform one
  assert abs(np.mean(w) - 1.) < 1e-3
  # A log-det of the wrong sign would be visible: then the weights are 1/w,
  # whose mean exceeds 1 by about var(log w) (Jensen).
  assert np.mean(1. / w) - 1. > 10 * stderr


def test_sample_and_log_prob_agree_with_log_prob():
  m = M.Sphere(2)
  chain, _ = _chain3(m, seed=2)
  q = tfd.TransformedDistribution(m.uniform(tf.float64), chain)
  y, lp = q.experimental_sample_and_log_prob([4, 8], seed=3)
  assert y.shape == (4, 8, 3) and lp.shape == (4, 8)
  np.testing.assert_allclose(q.log_prob(tf.identity(y)), lp, atol=1e-9)

  @tf.function
  def both():
    return q.experimental_sample_and_log_prob(5, seed=3), q.sample(5, seed=3)

  (ys, lps), ys2 = both()
  np.testing.assert_allclose(ys, ys2, atol=1e-12)
  np.testing.assert_allclose(q.log_prob(tf.identity(ys)), lps, atol=1e-9)


@pytest.mark.parametrize('name,dtype,tol', [
    pytest.param(name, dtype, tol, marks=(pytest.mark.slow,) if (
        name == 'S3' or (dtype == tf.float32 and name == 'T1xS2')) else ())
    for dtype, tol in [(tf.float32, 2e-4), (tf.float64, 1e-8)]
    for name in ['S2', 'S3', 'T2', 'T1xS2']])
def test_forward_log_det_from_the_solve_hessian(name, dtype, tol):
  """ildj read off the solve (log det H + log|det d exp|) = the closed form.

  The scale makes ‖Hess ψ‖ ~ 1 and r = d(x, f(x)) ~ 0.5, so a missing
  curvature term (n - 1) log(sin r / r) or a wrong sign would show.
  """
  m = MANIFOLDS[name]()
  b = make_bijector(m, dtype=dtype, scale=0.6, seed=4)
  x = m.random_uniform(500, dtype=dtype, seed=5)
  y = b.forward(x)
  attrs = b._cache.forward_attributes(x)   # pylint: disable=protected-access
  assert 'ildj' in attrs, 'the forward pass did not store its log-det'
  exact = b._ildj_fn(tf.reshape(y, [-1, m.ambient_dim]))  # pylint: disable=protected-access
  spread = float(tf.math.reduce_std(exact))
  assert spread > 0.05
  np.testing.assert_allclose(attrs['ildj'], exact, atol=tol)
  np.testing.assert_allclose(b.forward_log_det_jacobian(x, 1), -exact,
                             atol=tol)


def test_forward_log_det_gradients_equal_the_closed_form_route():
  """The custom gradient of the solve's log-det is the closed-form one, for x
  and for ψ's variables, and plain-function potentials fall back to it."""
  m = M.Sphere(2)
  b = make_bijector(m, scale=0.4, seed=6)
  x = m.random_uniform(64, dtype=tf.float64, seed=7)
  variables = b.potential.trainable_variables

  def grads(fast):
    with tf.GradientTape() as tape:
      tape.watch(x)
      if fast:
        ildj = -b.forward_log_det_jacobian(x, 1)
      else:   # bypass the cache: closed form at the same point
        ildj = b._ildj_fn(b.forward(x))  # pylint: disable=protected-access
      loss = tf.reduce_sum(ildj * tf.range(64, dtype=tf.float64) / 64.)
    return tape.gradient(loss, [x] + list(variables))

  for g_fast, g_exact in zip(grads(True), grads(False)):
    np.testing.assert_allclose(g_fast, g_exact, rtol=1e-7, atol=1e-9)

  psi = b.potential
  plain = ircpm.IRCPM(m, lambda y: psi(y))
  y = plain.forward(x)
  assert 'ildj' not in plain._cache.forward_attributes(x)  # pylint: disable=protected-access
  np.testing.assert_allclose(plain.forward_log_det_jacobian(x, 1),
                             b.forward_log_det_jacobian(x, 1), atol=1e-9)
  del y


def test_forward_log_det_falls_back_when_a_solve_fails():
  """With an unconverged point, H is not a minimiser's Hessian: the value must
  come from the closed form, not from H."""
  m = M.Sphere(2)
  b = make_bijector(m, scale=0.6, seed=4, max_iterations=1,
                    nonconvergence='ignore')
  x = m.random_uniform(200, dtype=tf.float64, seed=5)
  assert not bool(tf.reduce_all(b.solve(x).converged))
  y = b.forward(x)
  np.testing.assert_allclose(
      -b.forward_log_det_jacobian(x, 1),
      b._ildj_fn(y), atol=1e-12)  # pylint: disable=protected-access


def _fd_grad(loss, var, index, h=1e-6):
  w0 = var.numpy()
  d = np.zeros_like(w0)
  d[index] = h
  var.assign(w0 + d)
  lp = float(loss())
  var.assign(w0 - d)
  lm = float(loss())
  var.assign(w0)
  return (lp - lm) / (2 * h)


@pytest.mark.parametrize('name', ['S2', 'T2', pytest.param(
    'T1xS2', marks=pytest.mark.slow)])
def test_ift_gradients_match_finite_differences_and_unrolled(name):
  m = MANIFOLDS[name]()
  bij = make_bijector(m, scale=0.2, seed=11)
  psi = bij.potential
  x = m.uniform(tf.float64).sample(16, seed=5)
  a = tf.constant(np.random.default_rng(0).normal(size=(16, m.ambient_dim)))

  def loss_of(y):
    return tf.reduce_sum(a * m.embed(y)[..., :m.ambient_dim]) + tf.reduce_sum(
        tf.sin(y))

  def loss():
    return loss_of(bij.forward(tf.identity(x)))

  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    l_ift = loss_of(bij.forward(x + 0.))
    l_unr = loss_of(ircpm.solvers.unrolled_solve(m, psi, x, 30))
  np.testing.assert_allclose(l_ift, l_unr, rtol=1e-12)
  for var in [psi.weights[0], psi.weights[1], psi.biases[0]]:
    g_ift = tape.gradient(l_ift, var).numpy()
    g_unr = tape.gradient(l_unr, var).numpy()
    np.testing.assert_allclose(g_ift, g_unr, atol=1e-9)
    idx = tuple(np.unravel_index(np.argmax(np.abs(g_ift)), g_ift.shape))
    np.testing.assert_allclose(g_ift[idx], _fd_grad(loss, var, idx),
                               rtol=1e-5)
  # Gradient with respect to the input point, along tangent directions.
  gx = tape.gradient(l_ift, x)
  np.testing.assert_allclose(
      m.proju(x, gx), m.proju(x, tape.gradient(l_unr, x)), atol=1e-9)
  frame = m.tangent_frame(x)
  e = frame[..., 0]
  eps = 1e-6
  fd = (loss_of(bij.forward(m.expmap(x, eps * e)))
        - loss_of(bij.forward(m.expmap(x, -eps * e)))) / (2 * eps)
  np.testing.assert_allclose(tf.reduce_sum(gx * e), fd, rtol=1e-5)


def _log_prob_grad_check(q, data, var, fn=None):
  def loss():
    return -tf.reduce_mean(q.log_prob(tf.identity(data)))
  fn = fn or loss
  with tf.GradientTape() as tape:
    value = fn()
  g = tape.gradient(value, var)
  assert g is not None
  g = g.numpy()
  idx = tuple(np.unravel_index(np.argmax(np.abs(g)), g.shape))
  np.testing.assert_allclose(g[idx], _fd_grad(loss, var, idx), rtol=1e-5)


# Every base runs eagerly for one and two links, and in tf.function for one
# of them; the other traced cases run outside CI.
@pytest.mark.parametrize('stack,base_kind,graph', [
    pytest.param(stack, base_kind, graph, marks=(pytest.mark.slow,) if (
        graph and (stack, base_kind) in ((1, 'vmf'), (1, 'tfd_uniform'),
                                         (2, 'uniform'))) else ())
    for stack in [1, 2] for base_kind in ['uniform', 'tfd_uniform', 'vmf']
    for graph in [False, True]])
def test_log_prob_gradients_match_finite_differences(graph, base_kind, stack):
  """Maximum-likelihood gradients over spherical bases (the TFP pitfall)."""
  m = M.Sphere(2)
  b = make_bijector(m, scale=0.2, seed=13)
  if base_kind == 'uniform':
    base, chain = m.uniform(tf.float64), tfb.Chain([b] * stack)
  elif base_kind == 'tfd_uniform':   # plain TFP base: needs our Chain
    base = tfd.SphericalUniform(3, dtype=tf.float64)
    chain = ircpm.bijectors.Chain([b] * stack)
  else:
    base = tfd.VonMisesFisher(tf.constant([0., 0., 1.], tf.float64),
                              tf.constant(2., tf.float64))
    chain = ircpm.bijectors.Chain([b] * stack)
  q = tfd.TransformedDistribution(base, chain)
  data = m.uniform(tf.float64).sample(64, seed=7)
  fn = None
  if graph:
    fn = tf.function(lambda: -tf.reduce_mean(q.log_prob(tf.identity(data))))
  _log_prob_grad_check(q, data, b.potential.weights[1], fn)


def test_reverse_kl_gradient_matches_finite_differences():
  """Gradients through sample_and_log_prob: the IFT path plus ildj(f(x))."""
  m = M.Sphere(2)
  b = make_bijector(m, scale=0.2, seed=14)
  q = tfd.TransformedDistribution(m.uniform(tf.float64), tfb.Chain([b, b]))
  mu = tf.constant([0.3, -0.2, 0.9], tf.float64)

  def loss():
    y, lp = q.experimental_sample_and_log_prob(64, seed=tf.constant([1, 2]))
    return tf.reduce_mean(lp - 5. * tf.linalg.matvec(y, mu))

  var = b.potential.weights[0]
  for fn in [loss, tf.function(loss)]:
    with tf.GradientTape() as tape:
      value = fn()
    g = tape.gradient(value, var).numpy()
    idx = tuple(np.unravel_index(np.argmax(np.abs(g)), g.shape))
    np.testing.assert_allclose(g[idx], _fd_grad(loss, var, idx), rtol=1e-5)


def test_equivariance_torus_diagonal_shift():
  m = M.Torus(2)
  mlp = ircpm.potentials.MLP(M.Torus(1), (16, 16), output_scale=0.2, seed=3,
                             dtype=tf.float64)

  def psi(y):   # invariant under θ -> θ + c·1
    return mlp(y[..., :1] - y[..., 1:])

  bij = ircpm.IRCPM(m, psi)
  x = m.uniform(tf.float64).sample(64, seed=3)
  for c in [0.3, 2.0, -1.1]:
    lhs = bij.forward(m.projx(x + c))
    rhs = m.projx(bij.forward(tf.identity(x)) + c)
    assert np.max(m.dist(lhs, rhs).numpy()) < 1e-10
  assert np.max(m.dist(x, bij.forward(tf.identity(x))).numpy()) > 1e-2


def test_equivariance_sphere_rotation_about_z():
  m = M.Sphere(2)
  mlp = ircpm.potentials.MLP(M.Torus(1), (16, 16), output_scale=0.2, seed=4,
                             dtype=tf.float64)

  def psi(y):   # depends on x3 only
    return mlp(2. * y[..., 2:])

  bij = ircpm.IRCPM(m, psi)
  x = m.uniform(tf.float64).sample(64, seed=4)
  for angle in [0.4, 2.5]:
    r = tf.constant([[math.cos(angle), -math.sin(angle), 0.],
                     [math.sin(angle), math.cos(angle), 0.],
                     [0., 0., 1.]], tf.float64)
    lhs = bij.forward(tf.linalg.matvec(r, x))
    rhs = tf.linalg.matvec(r, bij.forward(tf.identity(x)))
    np.testing.assert_allclose(lhs, rhs, atol=1e-10)


class _ModulePotential(tf.Module):

  def __init__(self):
    super().__init__()
    self.a = tf.Variable([0.1, -0.2, 0.05], dtype=tf.float64)

  def __call__(self, y):
    return 0.3 * tf.reduce_sum(self.a * tf.sin(2. * y), -1)


def test_potential_kinds_and_variable_tracking():
  m = M.Sphere(2)
  keras_psi = tf_keras.Sequential([
      tf_keras.layers.Dense(8, activation='softplus', input_shape=(3,),
                            dtype='float64'),
      tf_keras.layers.Dense(1, dtype='float64')])
  module = _ModulePotential()
  # A constant shift of ψ leaves f unchanged, so the Keras model's output
  # bias gets no gradient (potentials.MLP has no output bias for that reason).
  for psi, n_vars, n_grads in [(keras_psi, 4, 3), (module, 1, 1),
                               (lambda y: 0.1 * y[..., 2] ** 2, 0, 0),
                               (make_bijector(m).potential, 5, 5)]:
    bij = ircpm.IRCPM(m, psi)
    q = tfd.TransformedDistribution(m.uniform(tf.float64),
                                    tfb.Chain([bij, bij]))
    assert len(bij.trainable_variables) == n_vars
    assert len(q.trainable_variables) == n_vars
    x = m.uniform(tf.float64).sample(8, seed=1)
    y = bij.forward(x)
    assert np.max(m.dist(x, bij.inverse(tf.identity(y))).numpy()) < 1e-10
    if n_vars:
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(q.log_prob(tf.identity(x)))
      grads = tape.gradient(loss, q.trainable_variables)
      assert sum(g is not None for g in grads) == n_grads


@pytest.mark.parametrize('fn', ['forward', 'inverse',
                                'inverse_log_det_jacobian'])
def test_bad_input_raises_under_validate_args(fn):
  m = M.Sphere(2)
  bij = make_bijector(m, validate_args=True)
  call = getattr(bij, fn)
  kw = {'event_ndims': 1} if 'log_det' in fn else {}
  with pytest.raises(tf.errors.InvalidArgumentError, match='off the sphere'):
    call(tf.constant([[1., 1., 0.]], tf.float64), **kw)
  with pytest.raises(ValueError, match='event size 3'):
    call(tf.constant([[1., 0.]], tf.float64), **kw)
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN or Inf'):
    call(tf.constant([[np.nan, 0., 1.]], tf.float64), **kw)


def test_bad_input_raises_through_log_prob_and_in_tf_function():
  m = M.Torus(2)
  bij = make_bijector(m, validate_args=True)
  q = tfd.TransformedDistribution(m.uniform(tf.float64), tfb.Chain([bij]))
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN or Inf'):
    q.log_prob(tf.constant([[np.inf, 1.]], tf.float64))
  f = tf.function(bij.forward)
  with pytest.raises(tf.errors.InvalidArgumentError, match='radians'):
    f(tf.constant([[100., 1.]], tf.float64))
  with pytest.raises(ValueError, match='event size 2'):
    bij.forward(tf.constant([[1., 2., 3.]], tf.float64))


def test_gradients_never_flow_through_solver_iterations():
  """Training-step graphs hold no while-loop gradient: nothing accumulates
  per-iteration intermediates (TensorList pushes), so memory cannot grow with
  the iteration count, and the parameter gradient is the same whether the
  solve takes 2-3 iterations (Newton) or 7-13 (gradient descent)."""
  m = M.Sphere(2)
  b_newton = make_bijector(m, scale=0.3, seed=15)
  b_descent = ircpm.IRCPM(m, b_newton.potential, method='gradient')
  x = m.uniform(tf.float64).sample(32, seed=8)
  var = b_newton.potential.weights[0]
  grads = []
  for bij in [b_newton, b_descent]:
    q = tfd.TransformedDistribution(m.uniform(tf.float64), tfb.Chain([bij]))

    @tf.function
    def step(x):
      with tf.GradientTape() as tape:
        y = q.bijector.forward(x)
        loss = tf.reduce_sum(q.log_prob(y) * y[:, 2])
      return tape.gradient(loss, var)

    graph = step.get_concrete_function(x).graph.as_graph_def()
    ops = {n.op for n in graph.node}
    for f in graph.library.function:
      ops |= {n.op for n in f.node_def}
    assert 'While' in ops or 'StatelessWhile' in ops   # the solve is there
    assert not {'TensorListPushBack', 'TensorListPopBack'} & ops
    grads.append(step(x).numpy())
  assert b_descent.solve(x).iterations.numpy().min() >= 5
  assert b_newton.solve(x).iterations.numpy().max() <= 3
  np.testing.assert_allclose(grads[0], grads[1], atol=1e-8)


def test_each_layer_traces_its_solve_once_without_retracing_warnings(caplog):
  """A new batch size reuses the solve's trace (batch dimension unknown),
  and the layers of a stack do not count as retraces of one another (TF
  keys its retracing warning on the traced function's code)."""
  m = M.Torus(1)   # the cheapest solve to trace; TF warns from 5 traces
  links = [make_bijector(m, scale=0.1, seed=s) for s in range(6)]
  with caplog.at_level('WARNING', logger='tensorflow'):
    for n in (5, 7, 9):
      x = m.uniform(tf.float64).sample(n, seed=n)
      for bij in links:
        y = bij.forward(x)
        np.testing.assert_allclose(bij.inverse(tf.identity(y)), x, atol=1e-9)
  for bij in links:
    assert bij._solve_fn.experimental_get_tracing_count() == 1  # pylint: disable=protected-access
  assert not [r for r in caplog.records if 'retracing' in r.getMessage()]
