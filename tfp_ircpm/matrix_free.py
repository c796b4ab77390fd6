"""Conjugate gradients on Hessian-vector products: the matrix-free back-end.

`solvers.solve(..., linear_algebra='cg')` and `solvers.cg_implicit_step`
(what `IRCPM(linear_algebra='cg')` runs) apply the Riemannian Hessian H of
h(x, ·) only through Hessian-vector products (`derivatives.hvp`, two
reverse passes each), so a solve costs a few dozen passes whatever the
dimension and no dim × dim matrix is formed: T^{L²} and (S²)^{L²} fit.
Under the bounds of Lemmas 3-4, H = I + Hess ψ + O(curvature) is symmetric
positive definite and close to I, so CG needs few iterations.

This module holds the batched CG itself, and keeps the older entry points
(`hvp`, `pullback_gradient`, `solve`, `forward`) as thin wrappers.
"""

from typing import Callable, NamedTuple, Optional

import tensorflow as tf

from tfp_ircpm import derivatives as deriv
from tfp_ircpm.manifolds import base

Potential = Callable[[tf.Tensor], tf.Tensor]
MatVec = Callable[[tf.Tensor], tf.Tensor]


def pullback_gradient(manifold: base.Manifold, potential: Potential,
                      x: tf.Tensor, y: tf.Tensor) -> Callable:
  """v ↦ ∇_v h(x, exp_y(P_y v)) for v [N, ambient]; at v = 0: grad_y h."""
  h = deriv.cost_fn(manifold, potential, x)
  return lambda v: deriv.gradient(
      lambda w: h(manifold.expmap(y, manifold.proju(y, w))), v,
      symbolic=True)


def hvp(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
        y: tf.Tensor) -> MatVec:
  """u ↦ (P Hess_y h P + I − P) u for u [N, ambient] (not differentiable)."""
  return lambda u: deriv.local_hvp(manifold, potential, x, y,
                                   tf.stop_gradient(u),
                                   identity_on_normals=True)


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


def solve(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
          tolerance: Optional[float] = None, max_iterations: int = 30,
          cg_iterations: int = 50):
  """`solvers.solve(..., linear_algebra='cg')` (Newton-CG from y = x)."""
  from tfp_ircpm import solvers  # pylint: disable=g-import-not-at-top
  return solvers.solve(manifold, potential, x, tolerance=tolerance,
                       max_iterations=max_iterations,
                       linear_algebra='cg', cg_iterations=cg_iterations)


def forward(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
            tolerance: Optional[float] = None, max_iterations: int = 30,
            cg_iterations: int = 50, cg_rtol: Optional[float] = None,
            nonconvergence: str = 'nan', return_converged: bool = False):
  """f(x) = argmin_y h(x, y) for x [N, ambient], with IFT gradients.

  The Newton-CG solve and `solvers.cg_implicit_step`, without a bijector:
  same value and first derivatives as `IRCPM(linear_algebra='cg').forward`.

  Args:
    nonconvergence: 'nan' (points whose solve missed the tolerance, or
      stopped at a point that is not the minimiser, become NaN) or 'ignore'.
    return_converged: also return [N] flags: converged and not suboptimal.
  """
  from tfp_ircpm import solvers  # pylint: disable=g-import-not-at-top
  if nonconvergence not in ('nan', 'ignore'):
    raise ValueError("nonconvergence must be 'nan' or 'ignore'.")
  x = manifold.projx(tf.convert_to_tensor(x))
  result = solve(manifold, potential, x, tolerance, max_iterations,
                 cg_iterations)
  out = solvers.cg_implicit_step(manifold, potential, x, result,
                                 cg_rtol=cg_rtol,
                                 cg_iterations=4 * cg_iterations)
  ok = result.converged & ~result.suboptimal
  if nonconvergence == 'nan':
    out = tf.where(ok[:, None], out, tf.constant(float('nan'), out.dtype))
  if return_converged:
    return out, ok
  return out
