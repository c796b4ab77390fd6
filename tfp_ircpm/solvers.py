"""The c-transform solve y*(x) = argmin_y h(x, y), h = ½d(x,y)² + ψ(y) (Eq. 2).

Both solvers start at y = x (Lemma 4), work in the orthonormal tangent frame
E_y, retract every iterate onto the manifold, track convergence per point and
report iterations and the final Riemannian gradient norm ‖grad_y h‖.

* `'newton'` (default): Newton steps in the frame, H v = -g, with g and H the
  gradient and Hessian of the pull-back v ↦ h(x, exp_y(E_y v)) at v = 0 (the
  Riemannian gradient and Hessian, since exp is a second-order retraction).
  Under the bounds of Lemmas 3-4, H = I + O(‖Hess ψ‖ + curvature) is positive
  definite on the basin and convergence is quadratic. Away from that regime a
  Gershgorin shift keeps H positive definite and an Armijo backtracking over
  step sizes {1, ½, ¼, ⅛} keeps h decreasing, so the iteration is a descent
  method from y = x like the paper's.
* `'gradient'`: the paper's Riemannian gradient descent with unit step,
  y ← exp_y(-grad_y h). Linear rate ‖Hess ψ‖-ish; kept for comparison.

Newton's linear algebra has two back-ends (`linear_algebra`):

* `'dense'`: H in the frame (dim reverse passes) and a Cholesky
  factorisation, per iteration;
* `'cg'`: conjugate gradients on Hessian-vector products (two reverse passes
  each, `derivatives.hvp`) with a short backtracking line search: no dim ×
  dim matrix, for high-dimensional manifolds (lattices, T^{L²}).

Gradients never flow through the iterations: the returned point is wrapped in
`tf.stop_gradient`, and differentiation goes through the implicit function
theorem at the solution, with H⁻¹ applied densely (`implicit_step`) or by CG
(`cg_implicit_step`).
"""

import functools
from typing import Callable, NamedTuple, Optional

import tensorflow as tf

from tfp_ircpm import _autodiff
from tfp_ircpm import _linalg
from tfp_ircpm import derivatives as deriv
from tfp_ircpm import matrix_free
from tfp_ircpm import tolerances
from tfp_ircpm.manifolds import _series
from tfp_ircpm.manifolds import base

# The objective and its derivatives live in `derivatives`; these names stay
# here for the code that imported them from the solver.
call_potential = deriv.call_potential
cost = deriv.cost
local_derivatives = deriv.local_derivatives

Potential = Callable[[tf.Tensor], tf.Tensor]

METHODS = ('newton', 'gradient')
LINEAR_ALGEBRA = ('dense', 'cg')
_CG_STEP_SIZES = (1., 0.5, 0.25)
_ARMIJO_C = 1e-4
_STEP_SIZES = (1., 0.5, 0.25, 0.125)


class SolveResult(NamedTuple):
  """Outcome of a batched c-transform solve over N points.

  Attributes:
    point: y*, [N, ambient_dim], no gradient.
    iterations: [N] int32, iterations each point needed.
    residual: [N], ‖grad_y h(x, y*)‖ (Riemannian norm).
    converged: [N] bool, residual <= tolerance and h(x, y*) finite.
    hessian: [N, dim, dim], Riemannian Hessian of h(x, ·) at y* in E_{y*}.
    gradient: [N, dim], grad_y h(x, y*) in E_{y*} = `tangent_frame(y*)`, or
      None where a caller built the result without it.
    value: [N], h(x, y*) = ½d(x, y*)² + ψ(y*); non-finite where ψ is, or
      None where a caller built the result without it.
    suboptimal: [N] bool, True where y* is provably not the minimiser of
      h(x, ·): a candidate point has a lower value (`suboptimal_points`) or
      the Hessian is not positive definite there. Or None.
    hvps: scalar int32, the batches of Hessian-vector products the CG
      back-end ran (None for the dense one).

  With the CG back-end `hessian` and `gradient` are None: no dim × dim
  matrix exists, and the IFT step recomputes grad_y h on a tape.
  """
  point: tf.Tensor
  iterations: tf.Tensor
  residual: tf.Tensor
  converged: tf.Tensor
  hessian: tf.Tensor
  gradient: Optional[tf.Tensor] = None
  value: Optional[tf.Tensor] = None
  suboptimal: Optional[tf.Tensor] = None
  hvps: Optional[tf.Tensor] = None


# Candidates of `suboptimal_points` drawn from the batch itself, and the
# size of the chunks in which h(x, candidate) is evaluated ([N, chunk, A]
# at a time, so 10⁵-point batches stay within memory).
MAX_BATCH_CANDIDATES = 256
_CANDIDATE_CHUNK = 64


def suboptimal_points(manifold: base.Manifold, potential: Potential,
                      x: tf.Tensor, y: tf.Tensor, psi_y: tf.Tensor,
                      candidates: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Where y is provably not the global minimiser of h(x, ·), [N] bool.

  The c-transform map sends x to the *global* minimiser of h(x, ·) =
  ½d(x, ·)² + ψ (Eq. 2). A descent from y = x can stop at another critical
  point, where the round trip f⁻¹(y) = x and det J_{f⁻¹}(y) > 0 still hold,
  so no local test sees it. Then f⁻¹ takes the value x twice and folds
  somewhere, and the density formula of Eq. 4 is wrong at y (y lies
  outside the image of f). The same holds for y given to the inverse, with
  x = f⁻¹(y).

  This is a cheap multi-start test: h(x_i, ·) is evaluated at up to
  `MAX_BATCH_CANDIDATES` of the batch's own points y_j (whose ψ(y_j) are
  already known) and at fixed `candidates`; a value below h(x_i, y_i) by
  more than √eps (1 + |h|) proves y_i suboptimal. It costs N·K distance
  evaluations and K evaluations of ψ, no derivatives. It can miss a better
  minimiser that no candidate comes near: a sufficient test for failure,
  not a certificate of success.

  Args:
    x: [N, ambient_dim].
    y: [N, ambient_dim], the points under test.
    psi_y: ψ(y), [N].
    candidates: fixed points [K, ambient_dim] on the manifold, or None.

  Returns:
    [N] bool.
  """
  dtype = y.dtype
  n = tf.shape(y)[0]
  # A spread subset of the batch (indices repeat when N < 256). The padding
  # row only keeps the gather valid for N = 0, where nothing is tested.
  idx = tf.cast(tf.linspace(tf.constant(0., tf.float64),
                            tf.cast(tf.maximum(n - 1, 0), tf.float64),
                            MAX_BATCH_CANDIDATES), tf.int32)
  cand = tf.gather(tf.pad(y, [[0, 1], [0, 0]]), idx)
  cand_psi = tf.gather(tf.pad(psi_y, [[0, 1]]), idx)
  if candidates is not None:
    fixed = tf.cast(candidates, dtype)
    cand = tf.concat([cand, fixed], 0)
    cand_psi = tf.concat([cand_psi, call_potential(potential, fixed)], 0)
  h_self = 0.5 * manifold.sq_dist(x, y) + psi_y
  # Chunks of candidates bound the [N, chunk] distance matrix. A loop, not
  # an unrolled Python one, keeps one copy of the distance's ops in the
  # graph. The last chunk is padded with copies of the first candidate,
  # which cannot change a minimum. The chunks screen with
  # `pairwise_sq_dist` (on Sⁿ one matmul, where `sq_dist`'s safe branches
  # over all pairs were most of log_prob's time) and keep each point's best
  # candidate; its h is then recomputed with `sq_dist`, so screening error
  # can only pick a near-tie, never flag a point the exact values clear.
  total = MAX_BATCH_CANDIDATES + (0 if candidates is None else
                                  int(candidates.shape[0]))
  chunks = -(-total // _CANDIDATE_CHUNK)
  pad = chunks * _CANDIDATE_CHUNK - total
  cand = tf.concat([cand, tf.repeat(cand[:1], pad, axis=0)], 0)
  cand_psi = tf.concat([cand_psi, tf.repeat(cand_psi[:1], pad, axis=0)], 0)
  cand = tf.reshape(cand, [chunks, _CANDIDATE_CHUNK, -1])
  cand_psi = tf.reshape(cand_psi, [chunks, _CANDIDATE_CHUNK])

  def body(i, best, best_point, best_psi):
    h = 0.5 * manifold.pairwise_sq_dist(x, cand[i]) + cand_psi[i][tf.newaxis]
    j = tf.argmin(h, axis=-1, output_type=tf.int32)
    h_min = tf.reduce_min(h, axis=-1)
    better = h_min < best
    best = tf.where(better, h_min, best)
    best_point = tf.where(better[:, tf.newaxis], tf.gather(cand[i], j),
                          best_point)
    best_psi = tf.where(better, tf.gather(cand_psi[i], j), best_psi)
    return i + 1, best, best_point, best_psi

  _, _, best_point, best_psi = tf.while_loop(
      lambda i, *_: i < chunks, body,
      (tf.constant(0), tf.fill(tf.shape(h_self),
                               tf.constant(float('inf'), dtype)),
       y, psi_y),   # no candidate better: h_self, never flagged
      maximum_iterations=chunks)
  best = 0.5 * manifold.sq_dist(x, best_point) + best_psi
  eps = tf.constant(_series.machine_eps(dtype), dtype)
  slack = tf.sqrt(eps) * (1. + tf.abs(h_self))
  return best < h_self - slack


def default_tolerance(dtype: tf.DType) -> float:
  """Residual tolerance on ‖grad_y h‖ (`tolerances`: 1e-5 f32, 1e-10 f64)."""
  return tolerances.for_dtype(dtype).solve


def default_max_iterations(method: str) -> int:
  return 50 if method == 'newton' else 1000


def retract(manifold: base.Manifold, y: tf.Tensor, frame: tf.Tensor,
            v: tf.Tensor) -> tf.Tensor:
  """exp_y(E_y v) for frame coordinates v [N, dim], re-projected onto M."""
  return manifold.projx(manifold.expmap(y, tf.linalg.matvec(frame, v)))


def _gershgorin_shift(hess: tf.Tensor, floor: float) -> tf.Tensor:
  """hess + μI with μ >= 0 chosen so every Gershgorin disc sits above `floor`.

  Zero whenever H is diagonally dominant with diagonal > floor (the Lemma 4
  regime, H ≈ I), so Newton's quadratic convergence is untouched there.
  """
  diag = tf.linalg.diag_part(hess)
  off = tf.reduce_sum(tf.abs(hess), axis=-1) - tf.abs(diag)
  mu = tf.nn.relu(floor - tf.reduce_min(diag - off, axis=-1))
  eye = tf.eye(tf.shape(hess)[-1], dtype=hess.dtype)
  return hess + mu[:, tf.newaxis, tf.newaxis] * eye


def solve(manifold: base.Manifold,
          potential: Potential,
          x: tf.Tensor,
          method: str = 'newton',
          tolerance: Optional[float] = None,
          max_iterations: Optional[int] = None,
          candidates: Optional[tf.Tensor] = None,
          linear_algebra: str = 'dense',
          cg_iterations: int = 50) -> SolveResult:
  """Minimises h(x, ·) from y = x for a batch of points.

  Builds a graph with every gradient tape paused (eagerly, inside a one-off
  `tf.function`; `IRCPM` keeps a cached one).

  Args:
    manifold: the `Manifold`.
    potential: ψ, points [..., ambient] → [...].
    x: [N, ambient_dim] points on the manifold.
    method: 'newton' or 'gradient'.
    tolerance: stop once ‖grad_y h‖ <= tolerance (default by dtype).
    max_iterations: iteration cap (default 50 Newton, 1000 gradient).
    candidates: fixed points [K, ambient_dim] for the global-minimum test
      (`suboptimal_points`), besides the batch's own solutions.
    linear_algebra: 'dense' or 'cg' (Newton only; see the module docstring).
    cg_iterations: CG cap per Newton step (an inexact Newton step is still a
      descent direction).

  Returns:
    A `SolveResult`; nothing in it carries gradients.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}.')
  if linear_algebra not in LINEAR_ALGEBRA:
    raise ValueError(f'linear_algebra must be one of {LINEAR_ALGEBRA}, got '
                     f'{linear_algebra!r}.')
  if linear_algebra == 'cg' and method != 'newton':
    raise ValueError("linear_algebra='cg' is a Newton back-end; use "
                     "method='newton'.")
  x = tf.stop_gradient(tf.convert_to_tensor(x))
  if linear_algebra == 'cg':
    build = functools.partial(
        _cg_solve_graph, manifold, potential, tolerance=tolerance,
        max_iterations=max_iterations, cg_iterations=cg_iterations,
        candidates=candidates)
  else:
    build = functools.partial(
        _solve_graph, manifold, potential, method=method,
        tolerance=tolerance, max_iterations=max_iterations,
        candidates=candidates)
  return _autodiff.without_tapes(build, x)


def _solve_graph(manifold, potential, x, method, tolerance, max_iterations,
                 candidates=None):
  """Body of `solve`, in graph mode with tapes paused."""
  dtype = x.dtype
  tol = tf.constant(
      default_tolerance(dtype) if tolerance is None else tolerance, dtype)
  cap = int(default_max_iterations(method) if max_iterations is None
            else max_iterations)
  newton = method == 'newton'
  n = tf.shape(x)[0]

  def derivatives(y):
    return deriv.local_derivatives(manifold, potential, x, y,
                                   with_hessian=newton, symbolic=True)

  def newton_direction(g, hess):
    return -_linalg.solve(_gershgorin_shift(hess, 1e-3), g,
                          positive_definite=True)

  def armijo_ok(value_new, value, slope, a):
    # The slack absorbs round-off in h once the step is below resolution.
    eps = tf.constant(_series.machine_eps(dtype), dtype)
    slack = 16. * eps * (1. + tf.abs(value))
    return value_new <= value + _ARMIJO_C * a * slope + slack

  def backtrack(y, frame, v, value, slope, rejected, y_full):
    # Largest Armijo step among the shorter ones; if none qualifies take
    # the smallest. Only ψ's value is evaluated at these points.
    chosen = retract(manifold, y, frame, _STEP_SIZES[-1] * v)
    for a in reversed(_STEP_SIZES[1:-1]):
      yc = retract(manifold, y, frame, a * v)
      ok = armijo_ok(cost(manifold, potential, x, yc), value, slope, a)
      chosen = tf.where(ok[:, tf.newaxis], yc, chosen)
    return tf.where(rejected[:, tf.newaxis], chosen, y_full)

  def gradient_step(y, g, frame):
    return retract(manifold, y, frame, -g)

  def residual_of(g):
    return tf.norm(g, axis=-1)

  # One evaluation of h's derivatives per trip, at the trial points: the
  # graph holds a single copy of them (with ψ's Hessian, most of the solve's
  # ops), which is what tracing a solve costs. The first trip evaluates
  # y = x. A trial is "trusted" when it needs no Armijo test: the start, a
  # backtracked step (already tested, or the smallest), and every descent
  # step (unit steps, as in the paper). A full Newton step is tested with
  # the value that comes with its derivatives, so near the solution (the
  # Lemma 4 regime) a step costs one Hessian and one Cholesky
  # factorisation; the shorter steps are only evaluated, under tf.cond, when
  # some active point rejects the full one, and the chosen one gets its
  # derivatives on the next trip. `iters` counts accepted steps.
  y0 = manifold.projx(x)
  ambient, dim = manifold.ambient_dim, manifold.dim
  zeros = lambda *shape: tf.zeros(tf.stack([n, *shape]), dtype)

  def cond(i, y, value, g, hess, frame, iters, active, y_trial, slope,
           trusted):
    del y, value, g, hess, frame, iters, y_trial, slope, trusted
    return tf.logical_and(i < 2 * cap + 1, tf.reduce_any(active))

  def body(i, y, value, g, hess, frame, iters, active, y_trial, slope,
           trusted):
    value_t, g_t, hess_t, frame_t = derivatives(y_trial)
    if newton:
      accept = tf.logical_or(trusted, armijo_ok(value_t, value, slope, 1.))
    else:
      accept = tf.ones_like(active)
    take = tf.logical_and(active, accept)
    keep = take[:, tf.newaxis]
    y = tf.where(keep, y_trial, y)
    g = tf.where(keep, g_t, g)
    value = tf.where(take, value_t, value)
    if hess_t is not None:
      hess = tf.where(keep[..., tf.newaxis], hess_t, hess)
    frame = tf.where(keep[..., tf.newaxis], frame_t, frame)
    iters = iters + tf.cast(tf.logical_and(take, i > 0), tf.int32)
    active = tf.logical_and(active, tf.logical_and(residual_of(g) > tol,
                                                   iters < cap))
    if newton:
      v = newton_direction(g, hess)
      slope = tf.reduce_sum(g * v, axis=-1)                     # < 0
      y_full = retract(manifold, y, frame, v)
      rejected = tf.logical_and(active, ~accept)
      y_trial = tf.cond(
          tf.reduce_any(rejected),
          lambda: backtrack(y, frame, v, value, slope, rejected, y_full),
          lambda: y_full)
      trusted = rejected
    else:
      y_trial = gradient_step(y, g, frame)
    return (i + 1, y, value, g, hess, frame, iters, active, y_trial, slope,
            trusted)

  _, y, value, g, hess, _, iters, _, _, _, _ = tf.while_loop(
      cond, body,
      (tf.constant(0), y0, zeros(), zeros(dim), zeros(dim, dim),
       zeros(ambient, dim), tf.zeros([n], tf.int32), tf.ones([n], tf.bool),
       y0, zeros(), tf.ones([n], tf.bool)),
      maximum_iterations=2 * cap + 1)
  if not newton:
    # Only H is new here: a recomputed g can differ from the loop's by
    # round-off, which at a float32 tolerance near the residual floor would
    # report points the loop stopped on as unconverged.
    _, _, hess, _ = deriv.local_derivatives(manifold, potential, x, y,
                                            symbolic=True)
  residual = residual_of(g)
  # A non-finite ψ(y*) is reported like a non-finite input: tf.where-style
  # NaN regions have zero gradient, and would otherwise look flat.
  converged = tf.logical_and(residual <= tol, tf.math.is_finite(value))
  psi_y = value - 0.5 * manifold.sq_dist(x, y)
  # At a minimiser H is positive semi-definite; a negative eigenvalue means
  # the descent stopped at a saddle, which the global test would not see.
  suboptimal = tf.logical_or(
      suboptimal_points(manifold, potential, x, y, psi_y, candidates),
      _linalg.min_eigenvalue_symmetric(hess) <= 0.)
  return SolveResult(
      point=tf.stop_gradient(y),
      iterations=tf.stop_gradient(iters),
      residual=tf.stop_gradient(residual),
      converged=tf.stop_gradient(converged),
      hessian=tf.stop_gradient(hess),
      gradient=tf.stop_gradient(g),
      value=tf.stop_gradient(value),
      suboptimal=tf.stop_gradient(suboptimal))


def _cg_solve_graph(manifold, potential, x, tolerance, max_iterations,
                    cg_iterations, candidates=None):
  """Newton-CG from y = x, in graph mode with tapes paused.

  Each Newton direction solves (P H P + I − P) d = −grad_y h by CG to a 1%
  relative residual (inexact Newton); where CG meets non-positive curvature
  or returns nothing, −grad is used. A backtracking over {1, ½, ¼} keeps h
  decreasing. `suboptimal` combines the global-minimum test with the
  curvature CG saw in the last step (no Hessian exists to test).
  """
  dtype = x.dtype
  tol = tf.constant(default_tolerance(dtype) if tolerance is None
                    else tolerance, dtype)
  cap = int(default_max_iterations('newton') if max_iterations is None
            else max_iterations)
  h = deriv.cost_fn(manifold, potential, x)

  def grad_at(y):
    return deriv.local_ambient_gradient(manifold, potential, x, y,
                                        symbolic=True)

  def newton_step(y, g):
    cg = matrix_free.conjugate_gradient(
        lambda u: deriv.local_hvp(manifold, potential, x, y,
                                  tf.stop_gradient(u),
                                  identity_on_normals=True),
        -g, rtol=1e-2, atol=0.1 * tol, max_iterations=cg_iterations)
    direction = tf.where(tf.norm(cg.solution, axis=-1, keepdims=True) > 0.,
                         cg.solution, -g)
    value = h(y)
    slope = tf.reduce_sum(g * direction, -1)
    chosen = None
    for a in reversed(_CG_STEP_SIZES):
      yc = manifold.projx(manifold.expmap(y, a * direction))
      ok = h(yc) <= value + _ARMIJO_C * a * slope
      chosen = yc if chosen is None else tf.where(ok[:, None], yc, chosen)
    return chosen, cg.iterations, cg.positive

  y0 = manifold.projx(x)
  g0 = grad_at(y0)
  n = tf.shape(x)[0]
  active0 = tf.norm(g0, axis=-1) > tol

  def cond(i, y, g, active, iters, hvps, positive):
    del y, g, iters, hvps, positive
    return tf.logical_and(i < cap, tf.reduce_any(active))

  def body(i, y, g, active, iters, hvps, positive):
    y_new, cg_iters, cg_positive = newton_step(y, g)
    y = tf.where(active[:, None], y_new, y)
    positive = tf.where(active, cg_positive, positive)
    g = grad_at(y)
    iters = iters + tf.cast(active, tf.int32)
    active = active & (tf.norm(g, axis=-1) > tol)
    return i + 1, y, g, active, iters, hvps + cg_iters, positive

  _, y, g, _, iters, hvps, positive = tf.while_loop(
      cond, body, (tf.constant(0), y0, g0, active0, tf.zeros([n], tf.int32),
                   tf.constant(0), tf.ones([n], tf.bool)),
      maximum_iterations=cap)
  residual = tf.norm(g, axis=-1)
  value = h(y)
  converged = tf.logical_and(residual <= tol, tf.math.is_finite(value))
  psi_y = value - 0.5 * manifold.sq_dist(x, y)
  suboptimal = tf.logical_or(
      suboptimal_points(manifold, potential, x, y, psi_y, candidates),
      ~positive)
  return SolveResult(
      point=tf.stop_gradient(y), iterations=iters,
      residual=tf.stop_gradient(residual), converged=converged,
      hessian=None, gradient=None, value=tf.stop_gradient(value),
      suboptimal=suboptimal, hvps=hvps)


def cg_implicit_step(manifold: base.Manifold, potential: Potential,
                     x: tf.Tensor, result: SolveResult,
                     cg_rtol: Optional[float] = None,
                     cg_iterations: int = 200) -> tf.Tensor:
  """`implicit_step` with H⁻¹ applied by conjugate gradients.

  Returns exp_{y*}(−P w), w = H⁻¹ F(x, y*, θ), F = grad_y h recorded on the
  caller's tapes (x and ψ's variables) with y* constant. H is symmetric, so
  the adjoint of the solve is the same CG; H's own dependence on (x, θ) is
  second order at the solution (F ≈ 0). Value y* plus one Newton step;
  first derivatives are the IFT's. CG runs with tapes paused, in both the
  forward and the backward pass.

  Args:
    x: [N, ambient_dim], possibly carrying gradients.
    result: the `SolveResult` of `solve` at x.
    cg_rtol: CG relative tolerance (default `tolerances`' cg entry).
    cg_iterations: CG cap.
  """
  y = result.point
  x_stop = tf.stop_gradient(x)
  rtol = (cg_rtol if cg_rtol is not None
          else tolerances.for_dtype(x.dtype).cg)

  def inverse_hessian(rhs):
    def cg_solve(b):
      return matrix_free.conjugate_gradient(
          lambda u: deriv.local_hvp(manifold, potential, x_stop, y,
                                    tf.stop_gradient(u),
                                    identity_on_normals=True),
          b, rtol=rtol, max_iterations=cg_iterations).solution
    return _autodiff.without_tapes(cg_solve, rhs)

  @tf.custom_gradient
  def solve_op(rhs):
    def grad(upstream, variables=None):
      return inverse_hessian(upstream), [None] * len(variables or [])
    return inverse_hessian(rhs), grad

  f = deriv.local_ambient_gradient(manifold, potential, x, y)
  w = solve_op(f)
  return manifold.projx(manifold.expmap(y, -manifold.proju(y, w)))


def implicit_step(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
                  result: SolveResult) -> tf.Tensor:
  """y*(x, θ) with first derivatives from the implicit function theorem.

  At the solution F(x, y, θ) = E_yᵀ grad_y h = 0. Linearising in a tangent
  displacement y = exp_{y*}(E w) gives H δw = -(∂_x F δx + ∂_θ F δθ), with H
  the Riemannian Hessian (Sec. 4.2, Eq. 8). We return

      y_out = exp_{y*}(E_{y*} w),   w = -H⁻¹ F(x, y*, θ),

  with y*, E_{y*} and H held constant (stop-gradient). Its value is y* plus
  one Newton step (F ≈ residual, so y_out is y* to ~residual²), and its
  derivative with respect to x and to ψ's variables is exactly the IFT
  derivative -E H⁻¹ ∂F: one linear solve in the frame per point, memory
  independent of the number of solver iterations.

  Only first derivatives of y_out are IFT-exact; derivatives of derivatives
  (e.g. the gradient of an autodiff Jacobian of `forward`) are not. Log-dets
  therefore go through the closed-form inverse instead.

  Args:
    x: [N, ambient_dim], possibly carrying gradients.
    result: the `SolveResult` of `solve` at x.

  Returns:
    [N, ambient_dim] points on the manifold.
  """
  y = result.point
  frame = tf.stop_gradient(manifold.tangent_frame(y))
  _, g, _, _ = local_derivatives(manifold, potential, x, y,
                                 with_hessian=False, frame=frame)
  w = -_linalg.solve(result.hessian, g)
  return retract(manifold, y, frame, w)


def lazy_implicit_step(manifold: base.Manifold, potential: Potential,
                       x: tf.Tensor, result: SolveResult) -> tf.Tensor:
  """`implicit_step` whose value reuses the solve's gradient.

  The value exp_{y*}(-E H⁻¹ g) needs g = grad_y h(x, y*), which the solve
  already computed at y* (`result.gradient`); only the derivative needs it
  recomputed on a tape. `_autodiff.with_lazy_gradient` builds that
  recomputation (one more gradient of ψ) only when a gradient is asked for,
  so sampling skips it. ψ's variables are passed in explicitly, which needs
  a potential that lists them (a tf.Module or Keras model); otherwise, or
  without `result.gradient`, this is `implicit_step`.

  Args:
    x: [N, ambient_dim], possibly carrying gradients.
    result: the `SolveResult` of `solve` at x.

  Returns:
    [N, ambient_dim], the value of `implicit_step` with its derivatives.
  """
  if result.gradient is None or not isinstance(potential, tf.Module):
    return implicit_step(manifold, potential, x, result)
  y = result.point
  frame = tf.stop_gradient(manifold.tangent_frame(y))
  value = retract(manifold, y, frame,
                  -_linalg.solve(result.hessian, result.gradient))
  return _autodiff.with_lazy_gradient(
      value, lambda z: implicit_step(manifold, potential, z, result), x,
      potential.trainable_variables)


def unrolled_solve(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
                   iterations: int) -> tf.Tensor:
  """The paper's approach: `iterations` unit-step Riemannian gradient steps
  from y = x, differentiated by backpropagation through every iteration.

  Memory and backward time grow linearly with `iterations`. Provided as the
  reference that IFT gradients are tested and benchmarked against.

  Args:
    x: [N, ambient_dim].
    iterations: a Python int (the loop is unrolled).

  Returns:
    [N, ambient_dim], differentiable through all iterations.
  """
  y = manifold.projx(x)
  for _ in range(int(iterations)):
    _, g, _, frame = local_derivatives(manifold, potential, x, y,
                                       with_hessian=False)
    y = retract(manifold, y, frame, -g)
  return y
