"""The failure policy: no wrong density without a signal.

Each test here is one row of the README's failure-policy table that is not
covered elsewhere (`test_edge_cases.py` has the input checks,
`test_export.py` the serving checks, `test_keras.py` the checkpoint
recipes).
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import training

from conftest import fibonacci_sphere

tfd, tfb = tfp.distributions, tfp.bijectors
M = ircpm.manifolds
SPHERE = M.Sphere(2)
TORUS = M.Torus(2)


def _grid_t2(n):
  g = (np.arange(n) + 0.5) * 2. * np.pi / n
  return np.stack(np.meshgrid(g, g, indexing='ij'), -1).reshape(-1, 2)


def _folded(manifold, scale, dtype=tf.float64, **kwargs):
  """An IRCPM whose ψ is far outside the bounds of Lemmas 3-4: f⁻¹ folds."""
  psi = ircpm.potentials.MLP(manifold, (32, 32), output_scale=scale, seed=0,
                             dtype=dtype)
  return ircpm.IRCPM(manifold, psi, **kwargs)


# -- folds: det J_{f⁻¹} <= 0, or y outside the image of f -----------------------


@pytest.fixture(scope='module')
def fibonacci():
  return tf.constant(fibonacci_sphere(20000), tf.float64)


def test_folded_density_is_flagged_and_the_rest_integrates_to_one(fibonacci):
  """The Eq. 4 formula integrates to ~4 on a folded map; the points the
  fold policy flags are exactly where it is wrong: without them, what is
  left is the density of f_#π (f sends x to the global minimiser, so its
  image is where the formula holds), which integrates to 1."""
  bij = _folded(SPHERE, 40., fold='nan')
  q = tfd.TransformedDistribution(SPHERE.uniform(tf.float64), bij)
  ignore = tfd.TransformedDistribution(
      SPHERE.uniform(tf.float64), _folded(SPHERE, 40., fold='ignore'))
  area = 4. * np.pi / 20000
  raw = ignore.log_prob(fibonacci).numpy()
  assert np.all(np.isfinite(raw))
  assert np.sum(np.exp(raw)) * area > 3.          # the silently wrong value
  lp = q.log_prob(fibonacci).numpy()
  flagged = np.isnan(lp)
  assert 0.5 < flagged.mean() < 0.999
  np.testing.assert_allclose(np.sum(np.exp(lp[~flagged])) * area, 1.,
                             atol=2e-3)
  # Folded points are flagged by sign, and the others by the global test.
  y = tf.constant(fibonacci.numpy()[:4000])
  det = bij.inverse_jacobian_determinant(y).numpy()
  assert np.all(flagged[:4000][det <= 0.])
  assert np.any(flagged[:4000] & (det > 0.))
  np.testing.assert_array_equal(
      np.isnan(bij.inverse_log_det_jacobian(y, 1).numpy()), flagged[:4000])


def test_fold_raises_under_validate_args_and_warns_by_default(capfd):
  y = tf.constant(fibonacci_sphere(500), tf.float64)
  strict = tfd.TransformedDistribution(
      SPHERE.uniform(tf.float64), _folded(SPHERE, 10., validate_args=True))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'(?s)det J_f\^-1 <= 0 at.*image of f'):
    strict.log_prob(y)
  default = tfd.TransformedDistribution(SPHERE.uniform(tf.float64),
                                        _folded(SPHERE, 10.))
  capfd.readouterr()
  lp = default.log_prob(y)
  assert np.all(np.isfinite(lp))
  assert 'the map folds, so these densities are wrong' in capfd.readouterr().err
  # A map within the bounds of Lemma 4 says nothing.
  fine = tfd.TransformedDistribution(SPHERE.uniform(tf.float64),
                                     _folded(SPHERE, 0.05))
  fine.log_prob(y)
  assert 'WARNING' not in capfd.readouterr().err


def test_training_losses_follow_the_fold_policy(capfd):
  """nll_loss (log_prob at data) and reverse_kl_loss (sample_and_log_prob:
  its samples are wrong where a solve stops at a local minimum)."""
  x = tf.constant(fibonacci_sphere(256), tf.float64)
  psi = ircpm.potentials.MLP(TORUS, (32, 32), output_scale=5., seed=0)
  for policy in ['nan', 'warn']:
    data_fit = tfd.TransformedDistribution(
        SPHERE.uniform(tf.float64), _folded(SPHERE, 10., fold=policy))
    sampled = tfd.TransformedDistribution(
        TORUS.uniform(), ircpm.IRCPM(TORUS, psi, fold=policy))
    capfd.readouterr()
    nll = training.nll_loss(data_fit, x)
    kl = training.reverse_kl_loss(sampled, ircpm.targets.torus_u2(), 256,
                                  seed=(1, 2))
    err = capfd.readouterr().err
    if policy == 'nan':
      assert np.isnan(nll) and np.isnan(kl)
    else:
      assert np.isfinite(nll) and np.isfinite(kl)
      assert 'the map folds' in err and 'not its minimiser' in err


def test_jit_turns_folds_into_nan(fibonacci):
  """XLA can neither print nor raise: 'warn' and validate_args act as 'nan'."""
  y = tf.constant(fibonacci.numpy()[::10])
  eager = tfd.TransformedDistribution(
      SPHERE.uniform(tf.float64), _folded(SPHERE, 40., fold='nan'))
  flagged = np.isnan(eager.log_prob(y).numpy())
  assert flagged.any() and not flagged.all()
  for kwargs in [{}, {'validate_args': True}]:
    q = tfd.TransformedDistribution(SPHERE.uniform(tf.float64),
                                    _folded(SPHERE, 40., **kwargs))
    lp = tf.function(q.log_prob, jit_compile=True)(y).numpy()
    np.testing.assert_array_equal(np.isnan(lp), flagged)


@pytest.mark.parametrize('n', [3, 5, 12])
def test_determinant_signs_under_xla(n):
  """The fold test needs sign det J under XLA, which has no LU on CPU."""
  rng = np.random.default_rng(n)
  m = rng.normal(size=(300, n, n))
  m[:100] *= np.sign(np.linalg.det(m[:100]))[:, None, None] ** (n % 2)
  sign, logabs = tf.function(ircpm._linalg.slogdet, jit_compile=True)(  # pylint: disable=protected-access
      tf.constant(m))
  np.testing.assert_array_equal(sign.numpy(), np.sign(np.linalg.det(m)))
  np.testing.assert_allclose(logabs.numpy(), np.log(np.abs(np.linalg.det(m))),
                             rtol=1e-9)
  sign32, _ = tf.function(ircpm._linalg.slogdet, jit_compile=True)(  # pylint: disable=protected-access
      tf.constant(m, tf.float32))
  np.testing.assert_array_equal(sign32.numpy(), np.sign(np.linalg.det(m)))


# -- the solve stops at a non-global minimiser --------------------------------


def _brute_force_minimum(psi, x, n=400):
  grid = _grid_t2(n)
  values = psi(tf.constant(grid, tf.float32)).numpy()
  out = []
  for xi in x:
    d = (grid - xi + np.pi) % (2. * np.pi) - np.pi
    out.append(np.min(0.5 * np.sum(d * d, -1) + values))
  return np.array(out)


def test_non_global_minimisers_are_flagged():
  """At output scale 5 some descents from y = x stop in a local minimum of
  h(x, ·), with a converged residual, a round trip and det > 0. The
  global-minimum test flags exactly the ones a grid search proves wrong."""
  psi = ircpm.potentials.MLP(TORUS, (32, 32), output_scale=5., seed=0)
  bij = ircpm.IRCPM(TORUS, psi)
  x = TORUS.uniform().sample(200, seed=(0, 0))
  res = bij.solve(x)
  assert bool(tf.reduce_all(res.converged))
  truly = res.value.numpy() > _brute_force_minimum(psi, x.numpy()) + 1e-3
  assert truly.sum() >= 3
  np.testing.assert_array_equal(res.suboptimal.numpy(), truly)
  # Locally everything looks fine at those points.
  y = tf.boolean_mask(res.point, truly)
  x_bad = tf.boolean_mask(x, truly)
  np.testing.assert_allclose(TORUS.dist(bij.inverse(y), x_bad), 0., atol=1e-4)
  assert np.all(bij.inverse_jacobian_determinant(y).numpy() > 0.)
  strict = ircpm.IRCPM(TORUS, psi, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match='not its minimiser'):
    strict.forward(x)
  nan = ircpm.IRCPM(TORUS, psi, fold='nan')
  out = nan.forward(x).numpy()
  np.testing.assert_array_equal(np.isnan(out).any(-1), truly)
  q = tfd.TransformedDistribution(TORUS.uniform(), nan)
  _, lp = q.experimental_sample_and_log_prob(200, seed=(4, 5))
  assert np.isnan(lp.numpy()).any()


def test_saddle_points_of_h_are_suboptimal():
  """A Hessian that is not positive definite at y* is not a minimiser."""
  hess = tf.constant([[[1., 0.], [0., -0.5]], [[1., 0.2], [0.2, 0.9]]])
  np.testing.assert_allclose(
      ircpm._linalg.min_eigenvalue_symmetric(hess).numpy(),  # pylint: disable=protected-access
      [-0.5, 0.95 - np.sqrt(0.0025 + 0.04)], rtol=1e-6)


# -- a non-finite potential -----------------------------------------------------


def _nan_cap(dtype=tf.float64):
  """ψ = NaN on the cap z > 0.8, an MLP elsewhere (written with tf.where,
  whose gradient is 0 on the cap: it looks flat there)."""
  mlp = ircpm.potentials.MLP(SPHERE, (16,), output_scale=0.1, seed=0,
                             dtype=dtype)

  def psi(y):
    return tf.where(y[..., 2] > 0.8, tf.constant(np.nan, dtype), mlp(y))
  return psi


def test_non_finite_potential_is_reported_like_a_non_finite_input():
  x = tf.constant(fibonacci_sphere(400), tf.float64)
  cap = x[:, 2] > 0.8
  assert 10 < int(tf.reduce_sum(tf.cast(cap, tf.int32))) < 390
  bij = ircpm.IRCPM(SPHERE, _nan_cap())
  res = bij.solve(x)
  assert not np.any(res.converged.numpy()[cap.numpy()])
  y = bij.forward(x).numpy()
  np.testing.assert_array_equal(np.isnan(y).any(-1), cap.numpy())
  lp = tfd.TransformedDistribution(SPHERE.uniform(tf.float64),
                                   bij).log_prob(x).numpy()
  np.testing.assert_array_equal(np.isnan(lp), cap.numpy())
  assert np.isnan(bij.inverse(x).numpy()[cap.numpy()]).all()
  strict = ircpm.IRCPM(SPHERE, _nan_cap(), validate_args=True)
  for call in [strict.forward, strict.inverse,
               lambda z: strict.inverse_log_det_jacobian(z, 1)]:
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match='potential is NaN or infinite'):
      call(x)


# -- TFP's bijector cache -------------------------------------------------------


def _flow(chain=True):
  psi = ircpm.potentials.MLP(SPHERE, (16, 16), output_scale=0.3, seed=0)
  bij = ircpm.IRCPM(SPHERE, psi)
  return tfd.TransformedDistribution(
      SPHERE.uniform(), ircpm.bijectors.Chain([bij, bij]) if chain else bij)


def _step(q, points, optimizer):
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(q.log_prob(tf.identity(points)))
  optimizer.apply_gradients(zip(tape.gradient(loss, q.trainable_variables),
                                q.trainable_variables))


@pytest.mark.parametrize('chain', [True, False])
def test_cached_densities_follow_the_variables(chain):
  q = _flow(chain)
  test = SPHERE.uniform().sample(16, seed=(1, 1))
  before = q.log_prob(test).numpy()
  optimizer = tf_keras.optimizers.Adam(0.05)
  _step(q, test, optimizer)
  after = q.log_prob(test).numpy()
  fresh = q.log_prob(tf.identity(test)).numpy()
  assert np.max(np.abs(fresh - before)) > 1e-2
  np.testing.assert_allclose(after, fresh, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('chain', [True, False])
def test_cached_samples_keep_their_gradients(chain):
  """log_prob of samples drawn outside the tape: the same gradient as for
  a fresh copy of the tensor (the cache holds x and the log-det computed
  outside it)."""
  q = _flow(chain)
  for draw in [lambda: q.sample(32, seed=(2, 3)),
               lambda: q.experimental_sample_and_log_prob(32, seed=(2, 3))[0]]:
    ys = draw()

    def grads(points):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(q.log_prob(points))
      return tape.gradient(loss, q.trainable_variables)

    cached, fresh = grads(ys), grads(tf.identity(ys))
    assert all(g is not None for g in cached)
    for a, b in zip(cached, fresh):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_cache_inside_a_traced_function():
  """An assignment traced between two uses of a tensor expires the entry."""
  q = _flow()

  @tf.function
  def shifted(points):
    for v in q.trainable_variables:
      v.assign_add(0.01 * tf.ones_like(v))
    return q.log_prob(points), q.log_prob(tf.identity(points))

  @tf.function
  def around(points):
    first = q.log_prob(points)
    after, fresh = shifted(points)
    return first, after, fresh

  test = SPHERE.uniform().sample(8, seed=(1, 1))
  first, after, fresh = [t.numpy() for t in around(test)]
  assert np.max(np.abs(first - fresh)) > 1e-4
  np.testing.assert_allclose(after, fresh, rtol=1e-6, atol=1e-6)


def test_sample_and_log_prob_still_runs_one_solve_per_link(monkeypatch):
  """The validated cache keeps TFP's: the log-det comes from the forward
  pass's solve, also under a tape."""
  q = _flow()
  bij = q.bijector.bijectors[0]
  calls = []
  solve = bij._solve_fn  # pylint: disable=protected-access

  def counting(x):
    calls.append(1)
    return solve(x)

  monkeypatch.setattr(bij, '_solve_fn', counting)
  q.experimental_sample_and_log_prob(16, seed=(1, 2))
  assert len(calls) == 2                      # two links, one ψ
  with tf.GradientTape() as tape:
    _, lp = q.experimental_sample_and_log_prob(16, seed=(1, 2))
    loss = tf.reduce_mean(lp)
  assert len(calls) == 4
  assert all(g is not None for g in tape.gradient(loss,
                                                  q.trainable_variables))


def test_a_plain_tfb_chain_of_ircpms_warns():
  psi = ircpm.potentials.MLP(SPHERE, (8,), seed=0)
  bij = ircpm.IRCPM(SPHERE, psi)
  q = tfd.TransformedDistribution(SPHERE.uniform(), tfb.Chain([bij, bij]))
  with pytest.warns(UserWarning, match='tfp_ircpm.bijectors.Chain'):
    q.log_prob(SPHERE.uniform().sample(4, seed=(1, 1)))


# -- TFP plumbing ---------------------------------------------------------------


@pytest.mark.parametrize('base', ['uniform', 'vmf', 'power_spherical'])
def test_plain_chain_over_tfp_spherical_bases_names_the_fix(base):
  dist = {
      'uniform': lambda: tfd.SphericalUniform(3),
      'vmf': lambda: tfd.VonMisesFisher([0., 0., 1.], 2.),
      'power_spherical': lambda: tfd.PowerSpherical([0., 0., 1.], 2.)}[base]()
  psi = ircpm.potentials.MLP(SPHERE, (8,), seed=0)
  bij = ircpm.IRCPM(SPHERE, psi)
  q = tfd.TransformedDistribution(dist, tfb.Chain([bij, bij]))
  with pytest.raises(NotImplementedError, match='tfp_ircpm.bijectors.Chain'):
    q.log_prob(SPHERE.uniform().sample(8, seed=(1, 1)))
  good = tfd.TransformedDistribution(dist, ircpm.bijectors.Chain([bij, bij]))
  assert np.all(np.isfinite(good.log_prob(SPHERE.uniform().sample(
      8, seed=(1, 1)))))


def test_batch_shape_and_dtype():
  psi = ircpm.potentials.MLP(SPHERE, (8,), seed=0)
  bij = ircpm.IRCPM(SPHERE, psi)
  assert bij.experimental_batch_shape() == tf.TensorShape([])
  assert bij.dtype == tf.float32
  assert 'dtype_x=float32' in repr(bij)
  assert ircpm.IRCPM(SPHERE, lambda y: y[..., 0]).dtype is None


@pytest.mark.parametrize('manifold', [SPHERE, TORUS,
                                      M.Product([M.Torus(1), M.Sphere(2)])],
                         ids=repr)
def test_one_dtype_policy_on_every_manifold(manifold):
  psi = ircpm.potentials.MLP(manifold, (8,), seed=0)
  q = tfd.TransformedDistribution(manifold.uniform(),
                                  ircpm.IRCPM(manifold, psi))
  x64 = tf.cast(manifold.uniform().sample(4, seed=(1, 1)), tf.float64)
  with pytest.raises(TypeError, match='float64 but the potential.*float32'):
    q.log_prob(x64)
  with pytest.raises(TypeError, match='float64 but the potential.*float32'):
    q.bijector.forward(x64)
  # NumPy values convert, as TF converts them.
  assert np.all(np.isfinite(q.log_prob(x64.numpy())))


def test_keras_potential_without_input_layer_is_built():
  psi = tf_keras.Sequential([tf_keras.layers.Dense(8, activation='softplus'),
                             tf_keras.layers.Dense(1)])
  assert not psi.built
  bij = ircpm.IRCPM(SPHERE, psi)
  q = tfd.TransformedDistribution(SPHERE.uniform(), bij)
  assert len(q.trainable_variables) == 4
  assert bij.dtype == tf.float32
  assert np.all(np.isfinite(q.log_prob(SPHERE.uniform().sample(4, seed=(1,
                                                                        2)))))


def test_non_smooth_keras_potential_warns():
  psi = tf_keras.Sequential([tf_keras.layers.Dense(8, activation='relu'),
                             tf_keras.layers.Dense(1)])
  with pytest.warns(UserWarning, match=r'non-smooth activations \(relu\)'):
    ircpm.IRCPM(SPHERE, psi)


# -- the global check ------------------------------------------------------------


def test_check_diffeomorphism_fails_on_non_global_minimisers():
  """A map whose solves stop at local minima fails the global check even
  where its sampled determinants are positive."""
  psi = ircpm.potentials.MLP(TORUS, (32, 32), output_scale=5., seed=0)
  report = ircpm.diagnostics.check_diffeomorphism(
      ircpm.IRCPM(TORUS, psi, fold='ignore'), num_points=2000)
  assert not report.passed
  assert not report.all_global


def test_keras_diffeomorphism_check_stops_a_folded_model():
  from tfp_ircpm import keras as ircpm_keras  # pylint: disable=g-import-not-at-top
  points = SPHERE.uniform().sample(64, seed=(3, 3))
  psi = ircpm.potentials.MLP(SPHERE, (8,), output_scale=40., seed=0)
  q = tfd.TransformedDistribution(
      SPHERE.uniform(), ircpm.IRCPM(SPHERE, psi, fold='ignore'))
  model = ircpm_keras.FlowModel(q)
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-4))
  check = ircpm_keras.DiffeomorphismCheck(num_points=4000)
  history = model.fit(points, batch_size=64, epochs=3, verbose=0,
                      callbacks=[check])
  assert len(history.history['loss']) == 1
  assert len(check.reports) == 1 and not check.reports[0][1].passed
