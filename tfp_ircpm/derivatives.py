"""h(x, y) = ½d(x, y)² + ψ(y) and its derivatives on the manifold (Sec. 4.2).

The one place where the c-transform's objective is differentiated. Every
derivative is taken through a pull-back to a vector space at y, and exp is
a second-order retraction, so the derivatives at 0 are the Riemannian ones:

* in frame coordinates, v ↦ f(exp_y(E_y v)) for v ∈ R^dim: value, gradient
  [N, dim] and Hessian [N, dim, dim] (`frame_derivatives`, for the dense
  Newton solve, the IFT step, the bound check);
* in ambient coordinates, w ↦ f(exp_y(P_y w)) for w ∈ R^ambient:
  gradients and Hessian-vector products [N, ambient] on T_y
  (`ambient_gradient`, `hvp`, for conjugate gradients and the stochastic
  log-det), where no dim × dim matrix is ever formed.

Two modes. With tapes (default) the results are differentiable again, in x,
y and ψ's variables (the IFT step and the log-det surrogates need that).
With `symbolic=True` they use `tf.gradients` while tracing, which needs no
tape: the solvers run with every tape paused (`_autodiff.without_tapes`),
and eagerly a tape is used. There `local_derivatives` assembles h's
derivatives from the manifold's closed forms and ψ's ambient derivatives,
which on S² shrinks the solver's graph about five-fold (the safe
small-angle branches of exp and d are never differentiated).
"""

from typing import Callable, Optional, Tuple

import tensorflow as tf

from tfp_ircpm import _autodiff
from tfp_ircpm.manifolds import base

Potential = Callable[[tf.Tensor], tf.Tensor]
Function = Callable[[tf.Tensor], tf.Tensor]

_ZERO = tf.UnconnectedGradients.ZERO


def call_potential(potential: Potential, y: tf.Tensor) -> tf.Tensor:
  """ψ(y) with shape [...] for points [..., ambient_dim].

  Accepts potentials returning [..., 1] (Keras models). Any other static
  shape is an error, as is a float dtype other than y's (a float32 Keras
  model fed float64 points would otherwise lose precision silently).
  """
  out = tf.convert_to_tensor(potential(y))
  batch = y.shape[:-1]
  if out.shape.rank is not None and out.shape.rank == y.shape.rank and (
      tf.compat.dimension_value(out.shape[-1]) == 1):
    out = tf.squeeze(out, axis=-1)
  if out.shape.rank is not None and batch.rank is not None and not (
      out.shape.is_compatible_with(batch)):
    raise ValueError(
        f'The potential must map points {y.shape} to values {batch} (or '
        f'{batch + [1]}); it returned shape {out.shape}.')
  if out.dtype != y.dtype:
    raise TypeError(
        f'The potential returned {out.dtype.name} values for {y.dtype.name} '
        'points; make it compute in the points\' dtype (potentials.MLP does) '
        'or pass points of its dtype.')
  return out


def cost(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
         y: tf.Tensor) -> tf.Tensor:
  """h(x, y) = ½ d(x, y)² + ψ(y), shape [...] (Eq. 2)."""
  return 0.5 * manifold.sq_dist(x, y) + call_potential(potential, y)


def cost_fn(manifold: base.Manifold, potential: Potential,
            x: tf.Tensor) -> Function:
  """y ↦ h(x, y)."""
  return lambda y: cost(manifold, potential, x, y)


def gradient(fn: Function, v: tf.Tensor, symbolic: bool = False) -> tf.Tensor:
  """∇_v Σ fn(v), shaped like v.

  `symbolic`: use `tf.gradients` while tracing (no tape needed).
  """
  if symbolic and not tf.executing_eagerly():
    return tf.gradients(fn(v), v, unconnected_gradients=_ZERO)[0]
  with tf.GradientTape() as tape:
    tape.watch(v)
    value = fn(v)
  return tape.gradient(value, v, unconnected_gradients=_ZERO)


def frame_derivatives(manifold: base.Manifold, fn: Function, y: tf.Tensor,
                      with_hessian: bool = True,
                      frame: Optional[tf.Tensor] = None,
                      symbolic: bool = False
                      ) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor],
                                 tf.Tensor]:
  """Value, gradient and Hessian of v ↦ fn(exp_y(E_y v)) at v = 0.

  Args:
    fn: points [N, ambient] → [N].
    y: [N, ambient_dim].
    with_hessian: also return the Hessian.
    frame: E_y, [N, ambient_dim, dim]; computed from y when omitted.
    symbolic: `tf.gradients` instead of tapes while tracing.

  Returns:
    (value [N], gradient [N, dim], Hessian [N, dim, dim] or None,
    E_y [N, ambient, dim]).
  """
  if frame is None:
    frame = manifold.tangent_frame(y)
  v = tf.zeros(tf.stack([tf.shape(y)[0], manifold.dim]), dtype=y.dtype)

  def pulled_back(w):
    return fn(manifold.expmap(y, tf.linalg.matvec(frame, w)))

  if symbolic and not tf.executing_eagerly():
    value = pulled_back(v)
    g = tf.gradients(value, v, unconnected_gradients=_ZERO)[0]
    hess = None
    if with_hessian:
      rows = [tf.gradients(gk, v, unconnected_gradients=_ZERO)[0]
              for gk in tf.unstack(g, num=manifold.dim, axis=1)]
      hess = tf.stack(rows, axis=1)
    return value, g, hess, frame

  def value_and_gradient():
    with tf.GradientTape() as inner:
      inner.watch(v)
      value = pulled_back(v)
    return value, inner.gradient(value, v, unconnected_gradients=_ZERO)

  if not with_hessian:
    value, g = value_and_gradient()
    return value, g, None, frame
  with tf.GradientTape(persistent=True) as outer:
    outer.watch(v)
    value, g = value_and_gradient()
  return value, g, _autodiff.batch_jacobian(outer, g, v), frame


def local_derivatives(manifold: base.Manifold, potential: Potential,
                      x: tf.Tensor, y: tf.Tensor, with_hessian: bool = True,
                      frame: Optional[tf.Tensor] = None,
                      symbolic: bool = False):
  """`frame_derivatives` of h(x, ·) at y: (h, grad_y h, Hess_y h, E_y).

  Where the manifold knows `half_sq_dist_derivatives` and
  `exp_second_order_term`, the derivatives are assembled from those closed
  forms and the ambient derivatives of ψ alone (`_closed_form_local`): the
  same numbers, without differentiating through exp and d. That holds for
  the solvers (`symbolic=True` in a graph) and for the gradient alone in
  tape mode (the IFT step), which stays differentiable in x, y and ψ's
  variables. A tape-mode Hessian, which callers may differentiate in y
  through the frame, keeps the pull-back.
  """
  if frame is None:
    frame = manifold.tangent_frame(y)
  graph_symbolic = symbolic and not tf.executing_eagerly()
  if graph_symbolic or not with_hessian:
    closed = _closed_form_local(manifold, potential, x, y, with_hessian,
                                frame, graph_symbolic)
    if closed is not None:
      return closed
  return frame_derivatives(manifold, cost_fn(manifold, potential, x), y,
                           with_hessian=with_hessian, frame=frame,
                           symbolic=symbolic)


def _closed_form_local(manifold, potential, x, y, with_hessian, frame,
                       symbolic):
  """h, grad h, Hess h in E_y from closed-form pieces, or None.

    grad h = E_yᵀ∇ψ(y) - E_yᵀ log_y(x),
    Hess h = E_yᵀ ∇²ψ(y) E_y + ⟨∇ψ, II⟩ + Hess ½d(x, ·)²,

  where ∇ψ, ∇²ψ are ψ's Euclidean derivatives in ambient coordinates (1 +
  dim reverse passes through ψ only: `tf.gradients` when `symbolic`, which
  the Hessian needs, a tape otherwise) and ⟨∇ψ, II⟩ is
  `Manifold.exp_second_order_term`.
  """
  dist = manifold.half_sq_dist_derivatives(x, y, frame)
  if dist is None:
    return None
  d_value, d_grad, d_hess = dist
  closed = potential_derivatives(potential, y, with_hessian)
  if closed is not None:
    psi, egrad, ehess = closed
  else:
    psi, egrad = _potential_gradient(potential, y, symbolic)
  g = tf.linalg.matvec(frame, egrad, transpose_a=True) + d_grad
  if not with_hessian:
    return psi + d_value, g, None, frame
  term = manifold.exp_second_order_term(y, egrad, frame)
  if term is None:
    return None
  if closed is not None:
    hess_psi = tf.linalg.matmul(frame, tf.linalg.matmul(ehess, frame),
                                transpose_a=True)
  else:
    # ∇²ψ E_k column by column; E is held fixed, only ψ's curvature is
    # wanted.
    fixed = tf.stop_gradient(frame)
    cols = [tf.gradients(tf.reduce_sum(egrad * fixed[..., k], axis=-1), y,
                         unconnected_gradients=_ZERO)[0]
            for k in range(manifold.dim)]
    hess_psi = tf.linalg.matmul(frame, tf.stack(cols, axis=-1),
                                transpose_a=True)
  hess = hess_psi + term + d_hess
  hess = 0.5 * (hess + tf.linalg.matrix_transpose(hess))
  return psi + d_value, g, hess, frame


def potential_derivatives(potential: Potential, y: tf.Tensor,
                          with_hessian: bool = True):
  """ψ's own closed-form (ψ [N], ∇ψ [N, A], ∇²ψ [N, A, A] or None), or None.

  A potential may define `ambient_derivatives(y, with_hessian)` (e.g.
  `potentials.Wells`) to replace the nested tapes through it; the result
  is differentiable in y and its variables like any TF expression. Points
  y are [N, ambient_dim]; other ranks and potentials without the method
  give None, and the callers differentiate ψ instead.
  """
  fn = getattr(potential, 'ambient_derivatives', None)
  if fn is None or y.shape.rank != 2:
    return None
  return fn(y, with_hessian)


def _potential_gradient(potential: Potential, y: tf.Tensor,
                        symbolic: bool) -> Tuple[tf.Tensor, tf.Tensor]:
  """(ψ(y) [N], ∇ψ(y) [N, ambient]): the potential's closed form, else
  `tf.gradients` when `symbolic` in a graph, a tape otherwise (then
  differentiable again)."""
  closed = potential_derivatives(potential, y, with_hessian=False)
  if closed is not None:
    return closed[0], closed[1]
  if symbolic and not tf.executing_eagerly():
    psi = call_potential(potential, y)
    return psi, tf.gradients(psi, y, unconnected_gradients=_ZERO)[0]
  with tf.GradientTape() as tape:
    tape.watch(y)
    psi = call_potential(potential, y)
  return psi, tape.gradient(psi, y, unconnected_gradients=_ZERO)


def local_ambient_gradient(manifold: base.Manifold, potential: Potential,
                           x: tf.Tensor, y: tf.Tensor,
                           symbolic: bool = False) -> tf.Tensor:
  """grad_y h(x, ·) = P_y ∇ψ(y) - log_y(x), [N, ambient].

  The Riemannian gradient in ambient coordinates, in closed form (grad
  ½d(x, ·)² = -log_·(x) away from the cut locus): no pass through exp or
  d. With tapes it is differentiable in x and ψ's variables (the CG IFT
  step); only x's tangent directions are defined.
  """
  egrad = _potential_gradient(potential, y, symbolic)[1]
  return manifold.proju(y, egrad) - manifold.logmap(y, x)


def local_hvp(manifold: base.Manifold, potential: Potential, x: tf.Tensor,
              y: tf.Tensor, u: tf.Tensor,
              identity_on_normals: bool = False) -> tf.Tensor:
  """P Hess_y h P u [N, ambient] from the closed-form gradient field, for
  the solvers (not differentiable again).

  G(y) = P_y ∇ψ(y) - log_y(x) extends grad_y h off M; on an embedded M the
  covariant derivative is the projected ambient one, ∇_v G = P DG v, and
  the Riemannian Hessian is symmetric, so P ∇_y⟨G(y), c⟩ = Hess c for the
  fixed tangent c = P_y u: one reverse pass through G (ψ twice, logmap
  once) instead of two through h ∘ exp.
  """
  c = tf.stop_gradient(manifold.proju(y, u))
  if not tf.executing_eagerly():
    g = local_ambient_gradient(manifold, potential, x, y, symbolic=True)
    out = tf.gradients(tf.reduce_sum(g * c, axis=-1), y,
                       unconnected_gradients=_ZERO)[0]
  else:
    with tf.GradientTape() as tape:
      tape.watch(y)
      g = local_ambient_gradient(manifold, potential, x, y)
      inner = tf.reduce_sum(g * c, axis=-1)
    out = tape.gradient(inner, y, unconnected_gradients=_ZERO)
  out = manifold.proju(y, out)
  if identity_on_normals:
    out = out + (u - manifold.proju(y, u))
  return out


def _ambient_pullback(manifold: base.Manifold, fn: Function,
                      y: tf.Tensor) -> Function:
  return lambda w: fn(manifold.expmap(y, manifold.proju(y, w)))


def ambient_gradient(manifold: base.Manifold, fn: Function, y: tf.Tensor,
                     symbolic: bool = False) -> tf.Tensor:
  """grad fn(y) = P_y ∇fn(y) [N, ambient], via w ↦ fn(exp_y(P_y w))."""
  return gradient(_ambient_pullback(manifold, fn, y), tf.zeros_like(y),
                  symbolic)


def hvp(manifold: base.Manifold, fn: Function, y: tf.Tensor, u: tf.Tensor,
        symbolic: bool = False, identity_on_normals: bool = False
        ) -> tf.Tensor:
  """P Hess fn(y) P u [N, ambient], the Riemannian Hessian on T_y applied to u.

  The Hessian at w = 0 of w ↦ fn(exp_y(P_y w)): two reverse passes, no
  dim × dim matrix. With tapes it is differentiable in y, u and whatever fn
  depends on. `identity_on_normals` adds (I − P_y) u, which makes the
  operator invertible on R^ambient so that conjugate gradients can run there.
  """
  pulled_back = _ambient_pullback(manifold, fn, y)
  w = tf.zeros_like(y)
  out = gradient(
      lambda z: tf.reduce_sum(gradient(pulled_back, z, symbolic) * u, -1),
      w, symbolic)
  if identity_on_normals:
    out = out + (u - manifold.proju(y, u))
  return out


def inverse_map(manifold: base.Manifold, potential: Potential,
                y: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(x = f⁻¹(y) = exp_y(grad ψ(y)) [N, ambient], ψ(y) [N]).

  The optimality condition −log_y(x) + grad ψ(y) = 0 of the c-transform
  solve, solved for x in closed form; differentiable in y and ψ's
  variables (nested tapes). x is NaN where ψ(y) is not finite: a NaN region
  of ψ written with tf.where has a zero gradient there, so without the mask
  it would look flat and map y to itself.
  """
  y = manifold.projx(y)
  psi, egrad = _potential_gradient(potential, y, symbolic=False)
  return _exp_of_gradient(manifold, y, psi, egrad), psi


def _exp_of_gradient(manifold, y, psi, egrad):
  """exp_y(P_y ∇ψ) [N, ambient], NaN where ψ(y) is not finite."""
  x = manifold.projx(manifold.expmap(y, manifold.proju(y, egrad)))
  return tf.where(tf.math.is_finite(psi)[..., tf.newaxis], x,
                  tf.constant(float('nan'), x.dtype))


def inverse_jacobian(manifold: base.Manifold, potential: Potential,
                     y: tf.Tensor):
  """(E_xᵀ J_{f⁻¹}(y) E_y [N, dim, dim], x = f⁻¹(y) [N, ambient]) or None.

  The matrix of Eq. 4 from closed forms: J_{f⁻¹} = T (D₁ + D₂ Hess ψ(y))
  (`Manifold.exp_jacobi_fields`), with Hess ψ = E_yᵀ ∇²ψ E_y + ⟨∇ψ, II⟩
  from ψ's ambient Hessian (nested tapes through ψ alone, one reverse pass
  per ambient coordinate). Differentiable in y and ψ's variables; x is
  `inverse_map`'s, NaN where ψ(y) is not finite. None where the manifold
  lacks a closed form (the caller then differentiates `inverse_map`).

  Args:
    y: [N, ambient_dim] points on the manifold.
  """
  y = manifold.projx(y)
  frame_y = manifold.tangent_frame(y)
  closed = potential_derivatives(potential, y)
  if closed is not None:
    psi, egrad, ehess = closed
  else:
    with tf.GradientTape(persistent=True) as outer:
      outer.watch(y)
      with tf.GradientTape() as inner:
        inner.watch(y)
        psi = call_potential(potential, y)
      egrad = inner.gradient(psi, y, unconnected_gradients=_ZERO)
    ehess = None
  term = manifold.exp_second_order_term(y, egrad, frame_y)
  if term is None:
    return None
  if ehess is None:
    ehess = _autodiff.batch_jacobian(outer, egrad, y)           # [N, A, A]
    del outer
  w = manifold.proju(y, egrad)
  x = _exp_of_gradient(manifold, y, psi, egrad)
  frame_x = manifold.tangent_frame(x)
  fields = manifold.exp_jacobi_fields(y, w, frame_y, frame_x)
  if fields is None:
    return None
  transport, d1, d2 = fields
  hess = tf.linalg.matmul(frame_y, tf.linalg.matmul(ehess, frame_y),
                          transpose_a=True) + term
  return tf.linalg.matmul(transport, d1 + tf.linalg.matmul(d2, hess)), x
