"""The c-transform solve: global minimiser, convergence, diagnostics."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from conftest import fibonacci_sphere
from conftest import make_bijector

M = ircpm.manifolds
solvers = ircpm.solvers


def _brute_force(manifold, psi, x, grid):
  """argmin over the grid of h(x, ·) for each x, and the minimum value."""
  h = solvers.cost(manifold, psi, x[:, None, :], grid[None, :, :])
  idx = tf.argmin(h, axis=1)
  return tf.gather(grid, idx), tf.reduce_min(h, axis=1)


def _grid(name):
  if name == 'T1':
    return tf.constant(np.linspace(0, 2 * math.pi, 20000, endpoint=False)[:, None])
  if name == 'T2':
    g = np.linspace(0, 2 * math.pi, 300, endpoint=False)
    a, b = np.meshgrid(g, g, indexing='ij')
    return tf.constant(np.stack([a.ravel(), b.ravel()], -1))
  return tf.constant(fibonacci_sphere(60000))


def _torus_multimodal(y):
  """0.08 Σ_i cos(3 θ_i + i): three wells per circle, |ψ''| <= 0.72 < 1."""
  phase = tf.range(y.shape[-1], dtype=y.dtype)
  return 0.08 * tf.reduce_sum(tf.cos(3. * y + phase), -1)


def _potential(kind, manifold):
  if kind == 'mlp':
    return make_bijector(manifold, scale=0.25, hidden=(32, 32),
                         seed=7).potential
  if isinstance(manifold, M.Torus):
    return _torus_multimodal
  return _sharp_potential()


_GRID = [('T1', M.Torus(1), 2 * math.pi / 20000),
         ('T2', M.Torus(2), 2 * math.pi / 300),
         ('S2', M.Sphere(2), math.sqrt(4 * math.pi / 60000))]


# Gradient descent on S² repeats the S² Newton cases at twice the cost:
# outside CI (T¹ and T² keep both methods in CI).
@pytest.mark.parametrize('kind', ['mlp', 'multimodal'])
@pytest.mark.parametrize('name,manifold,spacing,method', [
    pytest.param(name, manifold, spacing, method,
                 marks=(pytest.mark.slow,) if (
                     name, method) == ('S2', 'gradient') else ())
    for method in ['newton', 'gradient'] for name, manifold, spacing in _GRID])
def test_solve_finds_global_minimiser(name, manifold, spacing, method, kind):
  psi = _potential(kind, manifold)
  bij = ircpm.IRCPM(manifold, psi, method=method)
  x = manifold.uniform(tf.float64).sample(12, seed=3)
  res = bij.solve(x)
  assert bool(tf.reduce_all(res.converged))
  y_grid, h_grid = _brute_force(manifold, psi, x, _grid(name))
  h_solve = solvers.cost(manifold, psi, x, res.point)
  # The solve is at least as good as the best grid point, and next to it.
  assert np.all(h_solve.numpy() <= h_grid.numpy() + 1e-12)
  assert np.all(manifold.dist(res.point, y_grid).numpy() < 2 * spacing)


@pytest.mark.parametrize('name,manifold', [('T1', M.Torus(1)),
                                           ('S2', M.Sphere(2))])
def test_multimodal_potentials_have_several_local_minima(name, manifold):
  """Guards the previous test: its 'multimodal' ψ has several wells."""
  psi = _potential('multimodal', manifold)
  g = _grid(name)
  v = psi(tf.cast(g, tf.float64)).numpy()
  if name == 'T1':
    minima = np.sum((v < np.roll(v, 1)) & (v < np.roll(v, -1)))
  else:  # each well centre beats a ring of points at distance 0.2 around it
    centres = tf.constant([[0., 0., 1.], [1., 0., 0.], [0., -0.6, 0.8]],
                          tf.float64)
    minima = 0
    for c in tf.unstack(centres):
      frame = manifold.tangent_frame(c)
      ring = tf.stack([manifold.expmap(
          c, 0.2 * (math.cos(a) * frame[:, 0] + math.sin(a) * frame[:, 1]))
                       for a in np.linspace(0, 2 * math.pi, 12)])
      minima += int(np.all(psi(c[None]).numpy() < psi(ring).numpy()))
  assert minima >= 3


def test_newton_converges_quadratically_and_agrees_with_gradient_descent():
  m = M.Sphere(2)
  newton = make_bijector(m, scale=0.3, hidden=(32, 32), seed=2)
  descent = ircpm.IRCPM(m, newton.potential, method='gradient')
  x = m.uniform(tf.float64).sample(256, seed=1)
  rn, rg = newton.solve(x), descent.solve(x)
  assert bool(tf.reduce_all(rn.converged)) and bool(tf.reduce_all(rg.converged))
  np.testing.assert_allclose(rn.point, rg.point, atol=1e-9)
  assert rn.iterations.numpy().max() <= 4
  assert rg.iterations.numpy().mean() > 2 * rn.iterations.numpy().mean()


def _sharp_potential(kappa=20., c=0.04):
  """-c Σ_k exp(κ(μ_k·y - 1)): narrow wells, ‖Hess ψ‖ ≈ cκ = 0.8."""
  mus = tf.constant([[0., 0., 1.], [1., 0., 0.], [0., -0.6, 0.8]], tf.float32)

  def psi(y):
    return -c * tf.reduce_sum(
        tf.exp(kappa * (tf.linalg.matvec(tf.cast(mus, y.dtype), y) - 1.)), -1)
  return psi


def test_float32_sharp_potential_converges_and_stays_on_sphere():
  m = M.Sphere(2)
  bij = ircpm.IRCPM(m, _sharp_potential(), validate_args=True)
  x = m.uniform(tf.float32).sample(4096, seed=11)
  res = bij.solve(x)
  assert bool(tf.reduce_all(res.converged))
  assert res.iterations.numpy().max() < 20        # nowhere near the cap of 50
  assert res.residual.numpy().max() <= 1e-5
  np.testing.assert_allclose(tf.norm(res.point, axis=-1), 1., atol=2e-7)
  y = bij.forward(x)
  xr = bij.inverse(tf.identity(y))
  assert np.max(m.dist(x, xr).numpy()) < 1e-5


def _one_step_bijector(**kwargs):
  """One Newton step from y = x cannot reach 1e-14 for this ψ."""
  m = M.Sphere(2)
  psi = make_bijector(m, scale=0.3, seed=4).potential
  return m, ircpm.IRCPM(m, psi, max_iterations=1, tolerance=1e-14, **kwargs)


def test_nonconvergence_raises_under_validate_args():
  m, bij = _one_step_bijector(validate_args=True)
  x = m.uniform(tf.float64).sample(16, seed=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match='did not reach'):
    bij.forward(x)


def test_nonconvergence_nan_policy_and_diagnostics():
  m, bij = _one_step_bijector(nonconvergence='nan')
  x = m.uniform(tf.float64).sample(16, seed=2)
  res = bij.solve(x)
  assert not bool(tf.reduce_any(res.converged))
  assert np.all(res.iterations.numpy() == 1)
  assert np.all(res.residual.numpy() > 1e-14)
  assert np.all(np.isnan(bij.forward(x).numpy()))


def test_nonconvergence_warns(capfd):
  m, bij = _one_step_bijector()
  x = m.uniform(tf.float64).sample(16, seed=2)
  y = bij.forward(x)
  assert np.all(np.isfinite(y.numpy()))
  assert 'missed its tolerance at 16 points' in capfd.readouterr().err


def test_solve_in_tf_function_with_batch_shape():
  m = M.Torus(2)
  bij = make_bijector(m)

  @tf.function
  def f(x):
    return bij.solve(x)

  x = m.uniform(tf.float64).sample([3, 5], seed=0)
  res = f(x)
  assert res.point.shape == (3, 5, 2)
  assert res.iterations.shape == (3, 5)
  assert res.hessian.shape == (3, 5, 2, 2)
  np.testing.assert_allclose(res.point, bij.solve(x).point, atol=1e-12)


@pytest.mark.parametrize('n', [1, 2, 3, 4])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_small_linear_solves_and_logdets_match_numpy(n, dtype):
  """The closed forms (n <= 2) and factorisations behind Newton, the IFT
  step and the log-det, on tangent-Hessian-like matrices: I + SSᵀ and I + S."""
  from tfp_ircpm import _linalg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(n)
  s = 0.4 * rng.normal(size=(64, n, n))
  m = (np.eye(n) + s @ np.swapaxes(s, -1, -2)).astype(dtype)  # SPD
  general = (np.eye(n) + s).astype(dtype)
  rhs = rng.normal(size=(64, n)).astype(dtype)
  tol = 1e-4 if dtype == np.float32 else 1e-11
  for mat, spd in ((m, True), (general, False)):
    np.testing.assert_allclose(
        _linalg.solve(tf.constant(mat), tf.constant(rhs),
                      positive_definite=spd),
        np.linalg.solve(mat, rhs[..., None])[..., 0], rtol=tol, atol=tol)
    for jit in (False, True):  # LU outside XLA, QR under it (n > 2)
      logdet = tf.function(_linalg.logabsdet, jit_compile=jit)
      np.testing.assert_allclose(logdet(tf.constant(mat)),
                                 np.linalg.slogdet(mat)[1], rtol=tol,
                                 atol=tol)
