"""Matrix-free c-transform solve and IFT step for high-dimensional manifolds.

`solvers.solve` forms the dim×dim Hessian of h(x, ·) = ½d(x, ·)² + ψ (one
reverse pass per dimension, every Newton iteration) and `implicit_step`
factorises it. On a lattice (T^{L²}, (S²)^{L²}) that is O(d) passes and O(d³)
work per point. Here every linear algebra step is conjugate gradients (CG) on
Hessian-vector products (HVPs, two reverse passes each), so a solve costs a
few dozen passes whatever d:

* `hvp`: u ↦ Hess_y h(x, ·)[u], in ambient coordinates, via the pull-back
  v ↦ h(x, exp_y(P_y v)). exp is a second-order retraction, so its Hessian at
  v = 0 is P Hess P (the Riemannian Hessian, Sec. 4.2); adding (I − P) makes
  the operator the identity on normal directions, so CG runs in R^ambient.
* `solve`: Newton-CG from y = x (Lemma 4), with a short backtracking line
  search on h, tapes paused, no gradients.
* `forward`: y* plus one implicit Newton step w = −H⁻¹ F(x, y*, θ), H held
  fixed, whose derivative is the implicit-function-theorem derivative
  −H⁻¹ ∂F (as `solvers.implicit_step`), with H⁻¹ applied by CG in both the
  forward and the backward pass (H is symmetric, so the adjoint is the same
  solve).

Under the bounds of Lemmas 3-4, H = I + Hess ψ + O(curvature) is symmetric
positive definite and close to I, so CG needs few iterations.
"""

from typing import Callable, NamedTuple, Optional

import tensorflow as tf
# Public TF has no way to pause every active tape; GradientTape.stop_recording
# uses this same context for its own tape.
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import

from tfp_ircpm import solvers
from tfp_ircpm.manifolds import base

Potential = Callable[[tf.Tensor], tf.Tensor]
MatVec = Callable[[tf.Tensor], tf.Tensor]

_STEP_SIZES = (1., 0.5, 0.25)


def _gradient(fn: Callable[[tf.Tensor], tf.Tensor], v: tf.Tensor) -> tf.Tensor:
  """∇ Σ fn(v) (no tape in graph mode, so it works with tapes paused)."""
  zero = tf.UnconnectedGradients.ZERO
  if tf.executing_eagerly():
    with tf.GradientTape() as tape:
      tape.watch(v)
      value = fn(v)
    return tape.gradient(value, v, unconnected_gradients=zero)
  return tf.gradients(fn(v), v, unconnected_gradients=zero)[0]


def pullback_gradient(manifold: base.Manifold, potential: Potential,
                      x: tf.Tensor, y: tf.Tensor) -> Callable:
  """v ↦ ∇_v h(x, exp_y(P_y v)) for v [N, ambient]; at v = 0: grad_y h."""

  def grad(v):
    def value(w):
      z = manifold.expmap(y, manifold.proju(y, w))
      return solvers.cost(manifold, potential, x, z)
    return _gradient(value, v)

  return grad


def hvp(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
        y: tf.Tensor) -> MatVec:
  """u ↦ (P Hess_y h P + I − P) u for u [N, ambient] (not differentiable)."""
  grad = pullback_gradient(manifold, potential, x, y)
  zero = tf.zeros_like(y)

  def matvec(u):
    u = tf.stop_gradient(u)
    hu = _gradient(lambda v: tf.reduce_sum(grad(v) * u, axis=-1), zero)
    return hu + (u - manifold.proju(y, u))

  return matvec


class CGResult(NamedTuple):
  """Batched CG outcome: `solution` [N, n], `residual` [N] (‖b − Ax‖),
  `iterations` (scalar), `positive` [N] (no direction of curvature <= 0 was
  met: A looked positive definite)."""
  solution: tf.Tensor
  residual: tf.Tensor
  iterations: tf.Tensor
  positive: tf.Tensor


def conjugate_gradient(matvec: MatVec, b: tf.Tensor,
                       rtol: float = 1e-6, atol: float = 0.,
                       max_iterations: int = 100) -> CGResult:
  """Solves A x = b row by row for symmetric positive definite A.

  Each row of b [N, n] is its own system (A acts row-wise); a row stops
  updating once ‖r‖ <= max(rtol ‖b‖, atol) or when it meets curvature
  pᵀAp <= 0 (then A is not SPD there and `positive` is False).
  """
  b = tf.convert_to_tensor(b)
  dtype = b.dtype
  tiny = tf.constant(1e-30 if dtype == tf.float64 else 1e-20, dtype)
  threshold = tf.maximum(rtol * tf.norm(b, axis=-1), atol)
  x0 = tf.zeros_like(b)
  rs0 = tf.reduce_sum(b * b, -1)
  active0 = tf.sqrt(rs0) > threshold
  positive0 = tf.ones_like(active0)

  def cond(i, x, r, p, rs, active, positive):
    del x, r, p, rs, positive
    return tf.logical_and(i < max_iterations, tf.reduce_any(active))

  def body(i, x, r, p, rs, active, positive):
    ap = matvec(p)
    pap = tf.reduce_sum(p * ap, -1)
    curved = pap > tiny
    step = active & curved
    alpha = tf.where(step, rs / tf.where(step, pap, 1.), 0.)
    x = x + alpha[:, None] * p
    r = r - alpha[:, None] * ap
    rs_new = tf.reduce_sum(r * r, -1)
    beta = tf.where(step, rs_new / tf.where(step, rs, 1.), 0.)
    p = tf.where(step[:, None], r + beta[:, None] * p, p)
    positive = positive & (curved | ~active)
    active = step & (tf.sqrt(rs_new) > threshold)
    rs = tf.where(step, rs_new, rs)
    return i + 1, x, r, p, rs, active, positive

  i, x, r, _, _, _, positive = tf.while_loop(
      cond, body, (tf.constant(0), x0, b, b, rs0, active0, positive0),
      maximum_iterations=max_iterations)
  return CGResult(x, tf.norm(r, axis=-1), i, positive)


class SolveResult(NamedTuple):
  """`point` y* [N, ambient], `residual` ‖grad_y h‖ [N], `converged` [N],
  `iterations` [N] (Newton steps), `hvps` (scalar: HVP batches run)."""
  point: tf.Tensor
  residual: tf.Tensor
  converged: tf.Tensor
  iterations: tf.Tensor
  hvps: tf.Tensor


def solve(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
          tolerance: Optional[float] = None, max_iterations: int = 30,
          cg_iterations: int = 50) -> SolveResult:
  """Newton-CG minimisation of h(x, ·) from y = x, tapes paused.

  Args:
    x: [N, ambient] points.
    tolerance: stop a point once ‖grad_y h‖ <= tolerance (default by dtype,
      as `solvers.default_tolerance`).
    max_iterations: Newton steps cap.
    cg_iterations: CG cap per Newton step (an inexact Newton step is still a
      descent direction; non-SPD curvature falls back to the CG iterate so
      far or, at the first iteration, to −grad).

  Returns:
    A `SolveResult`; nothing in it carries gradients.
  """
  x = tf.stop_gradient(tf.convert_to_tensor(x))
  with record.stop_recording():
    if tf.executing_eagerly():
      return tf.function(_solve_graph)(manifold, potential, x, tolerance,
                                       max_iterations, cg_iterations)
    return _solve_graph(manifold, potential, x, tolerance, max_iterations,
                        cg_iterations)


def _solve_graph(manifold, potential, x, tolerance, max_iterations,
                 cg_iterations):
  dtype = x.dtype
  tol = tf.constant(solvers.default_tolerance(dtype) if tolerance is None
                    else tolerance, dtype)
  zero = tf.zeros_like(x)

  def grad_at(y):
    return pullback_gradient(manifold, potential, x, y)(zero)

  def newton_step(y, g):
    cg = conjugate_gradient(hvp(manifold, potential, x, y), -g, rtol=1e-2,
                            atol=0.1 * tol, max_iterations=cg_iterations)
    direction = tf.where(tf.norm(cg.solution, axis=-1, keepdims=True) > 0.,
                         cg.solution, -g)
    value = solvers.cost(manifold, potential, x, y)
    slope = tf.reduce_sum(g * direction, -1)
    chosen = None
    for a in reversed(_STEP_SIZES):
      yc = manifold.projx(manifold.expmap(y, a * direction))
      ok = solvers.cost(manifold, potential, x, yc) <= value + 1e-4 * a * slope
      chosen = yc if chosen is None else tf.where(ok[:, None], yc, chosen)
    return chosen, cg.iterations

  y0 = manifold.projx(x)
  g0 = grad_at(y0)
  active0 = tf.norm(g0, axis=-1) > tol

  def cond(i, y, g, active, iters, hvps):
    del y, g, iters, hvps
    return tf.logical_and(i < max_iterations, tf.reduce_any(active))

  def body(i, y, g, active, iters, hvps):
    y_new, cg_iters = newton_step(y, g)
    y = tf.where(active[:, None], y_new, y)
    g = grad_at(y)
    iters = iters + tf.cast(active, tf.int32)
    active = active & (tf.norm(g, axis=-1) > tol)
    return i + 1, y, g, active, iters, hvps + cg_iters

  _, y, g, _, iters, hvps = tf.while_loop(
      cond, body, (tf.constant(0), y0, g0, active0,
                   tf.zeros(tf.shape(x)[:1], tf.int32), tf.constant(0)),
      maximum_iterations=max_iterations)
  residual = tf.norm(g, axis=-1)
  return SolveResult(tf.stop_gradient(y), tf.stop_gradient(residual),
                     residual <= tol, iters, hvps)


def forward(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
            tolerance: Optional[float] = None, max_iterations: int = 30,
            cg_iterations: int = 50, cg_rtol: Optional[float] = None,
            nonconvergence: str = 'nan', return_converged: bool = False):
  """f(x) = argmin_y h(x, y) for x [N, ambient], with IFT gradients.

  Same value and first derivatives as `IRCPM.forward` (`solvers.implicit_step`
  with H⁻¹ applied by CG instead of a dense factorisation).

  Args:
    nonconvergence: 'nan' (points whose solve missed the tolerance become
      NaN) or 'ignore'.
    return_converged: also return the solve's `converged` flags [N].
  """
  if nonconvergence not in ('nan', 'ignore'):
    raise ValueError("nonconvergence must be 'nan' or 'ignore'.")
  x = tf.convert_to_tensor(x)
  x = manifold.projx(x)
  result = solve(manifold, potential, x, tolerance, max_iterations,
                 cg_iterations)
  y = result.point
  x_stop = tf.stop_gradient(x)
  rtol = cg_rtol if cg_rtol is not None else (
      1e-5 if x.dtype == tf.float32 else 1e-10)
  cg_cap = 4 * cg_iterations

  def cg_solve(rhs):
    return conjugate_gradient(hvp(manifold, potential, x_stop, y), rhs,
                              rtol=rtol, max_iterations=cg_cap).solution

  def inverse_hessian(rhs):
    # Paused tapes would also blind eager HVP tapes: eagerly, run as a graph
    # (symbolic gradients need no tape).
    with record.stop_recording():
      if tf.executing_eagerly():
        return tf.function(cg_solve)(rhs)
      return cg_solve(rhs)

  @tf.custom_gradient
  def solve_op(rhs):
    def grad(upstream, variables=None):
      # H is symmetric, so the adjoint solve is the same CG; H's own
      # dependence on (x, θ) is second order at the solution (F ≈ 0).
      return inverse_hessian(upstream), [None] * len(variables or [])
    return inverse_hessian(rhs), grad

  # F(x, y*, θ) = grad_y h: recorded by the caller's tapes (x and ψ's
  # variables), with y* constant.
  with tf.GradientTape() as tape:
    v = tf.zeros_like(y)
    tape.watch(v)
    value = solvers.cost(manifold, potential, x,
                         manifold.expmap(y, manifold.proju(y, v)))
  f = tape.gradient(value, v, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  w = solve_op(f)
  out = manifold.projx(manifold.expmap(y, -manifold.proju(y, w)))
  if nonconvergence == 'nan':
    out = tf.where(result.converged[:, None], out,
                   tf.constant(float('nan'), out.dtype))
  if return_converged:
    return out, result.converged
  return out
