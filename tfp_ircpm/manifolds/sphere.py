"""The unit sphere S^n ⊂ R^{n+1}."""

import math
from typing import List

import tensorflow as tf

from tfp_ircpm import distributions as ircpm_distributions
from tfp_ircpm import tolerances
from tfp_ircpm.manifolds import _series
from tfp_ircpm.manifolds import base


# (1 - √t cot √t) / t = 1/3 + t/45 + 2t²/945 + t³/4725 + 2t⁴/93555.
_ONE_MINUS_COT_COEFFS = (1. / 3, 1. / 45, 2. / 945, 1. / 4725, 2. / 93555)
# (1 - cos √t) / t and (1 - sin √t / √t) / t.
_ONE_MINUS_COS_COEFFS = (1. / 2, -1. / 24, 1. / 720, -1. / 40320,
                         1. / 3628800)
_ONE_MINUS_SINC_COEFFS = (1. / 6, -1. / 120, 1. / 5040, -1. / 362880,
                          1. / 39916800)


def _dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(a * b, axis=-1, keepdims=True)


class Sphere(base.Manifold):
  """S^n = {x ∈ R^{n+1} : |x| = 1} with the round metric.

  Geodesic formulas are written in terms of squared chord lengths so that
  every function is analytic in its inputs, including at x = y, and so that
  small angles keep full relative precision in float32 (arccos(x·y) would lose
  half the digits there).
  """

  def __init__(self, dim: int):
    if int(dim) < 1:
      raise ValueError(f'Sphere dimension must be >= 1, got {dim}.')
    self._dim = int(dim)

  def __repr__(self):
    return f'Sphere({self._dim})'

  @property
  def dim(self) -> int:
    return self._dim

  @property
  def ambient_dim(self) -> int:
    return self._dim + 1

  @property
  def embed_dim(self) -> int:
    return self._dim + 1

  @property
  def volume(self) -> float:
    n1 = self._dim + 1
    return 2. * math.pi ** (n1 / 2.) / math.gamma(n1 / 2.)

  @property
  def sectional_curvature_bound(self) -> float:
    """1: the unit sphere has constant curvature 1.

    Also for S¹, whose 1-dimensional tangent spaces have no planes (it is
    intrinsically flat, H_c = I): there the bound is vacuous and the Lemma 4
    criterion it gives (λ < π/2, η = λ cot λ) is conservative. Use
    `Torus(1)` for the flat criterion on a circle.
    """
    return 1.

  @property
  def injectivity_radius(self) -> float:
    """π: the distance to the cut locus (the antipode)."""
    return math.pi

  @property
  def embed_derivative_bounds(self):
    """(1, 1) for the inclusion φ(x) = x: |Dφ v| = |v| and
    ∇²φ(v, v) = −|v|² x (the second fundamental form), of norm |v|²."""
    return 1., 1.

  @property
  def unit_sphere_embedding(self) -> bool:
    return True

  @property
  def has_closed_form_log_det_dexp(self) -> bool:
    """True, unless a subclass replaced `log_det_dexp` (which may then return
    None) without overriding this property too."""
    return type(self).log_det_dexp is Sphere.log_det_dexp

  def expmap(self, x, v):
    """exp_x(v) = cos|v| x + sin|v|/|v| v, analytic in |v|² (no NaN at v = 0)."""
    t2 = tf.reduce_sum(v * v, axis=-1, keepdims=True)
    return _series.cos_sqrt(t2) * x + _series.sinc_sqrt(t2) * v

  def _chords(self, x, y):
    """Squared half-chords z² = |y - x|²/4 = sin²(θ/2), w² = |y + x|²/4 = cos²(θ/2).

    Each shape [..., 1]. z² resolves small angles and w² angles near π, so
    each formula below only ever uses the one that is <= 1/2.
    """
    a, b = y - x, y + x
    z2 = 0.25 * tf.reduce_sum(a * a, axis=-1, keepdims=True)
    w2 = 0.25 * tf.reduce_sum(b * b, axis=-1, keepdims=True)
    near = z2 <= 0.5
    half = tf.constant(0.5, x.dtype)
    # Double-where: each branch sees only inputs in [0, 1/2], so no branch
    # ever evaluates asin' at 1 (infinite) and poisons the other's gradient.
    z2_near = tf.where(near, z2, half)
    z2_far = tf.where(near, half, tf.maximum(z2, half))
    w2_far = tf.where(near, half, tf.minimum(w2, half))
    return near, z2_near, z2_far, w2_far

  def _far_angle(self, w2_far):
    """θ = π - 2 asin(w) for θ > π/2, from w² = cos²(θ/2)."""
    pi = tf.constant(math.pi, w2_far.dtype)
    return pi - 2. * _series.safe_sqrt(w2_far) * _series.asinc_sqrt(w2_far)

  def logmap(self, x, y):
    """log_x(y) = θ / sin θ · P_x(y - x).

    For θ <= π/2, θ / sin θ = [asin(z)/z] / sqrt(1 - z²), analytic in z² at 0.
    For θ > π/2, sin θ = 2 z w with w = |x + y|/2. At the cut locus y = -x the
    direction P_x(y - x) vanishes and log is undefined; we floor w² at machine
    epsilon so the result stays finite (near the zero vector).
    """
    w = y - x
    u = w - _dot(x, w) * x
    near, z2_near, z2_far, w2_far = self._chords(x, y)
    ratio_near = _series.asinc_sqrt(z2_near) / tf.sqrt(1. - z2_near)
    eps = tf.constant(_series.machine_eps(x.dtype), x.dtype)
    ratio_far = self._far_angle(w2_far) / (
        2. * tf.sqrt(z2_far) * tf.sqrt(tf.maximum(w2_far, eps)))
    return tf.where(near, ratio_near, ratio_far) * u

  def sq_dist(self, x, y):
    """θ² = 4 z² (asin(z)/z)² for θ <= π/2, (π - 2 asin w)² beyond."""
    near, z2_near, _, w2_far = self._chords(x, y)
    near_val = 4. * z2_near * tf.square(_series.asinc_sqrt(z2_near))
    far_val = tf.square(self._far_angle(w2_far))
    return tf.squeeze(tf.where(near, near_val, far_val), axis=-1)

  def pairwise_sq_dist(self, x, c):
    """acos(x·c)² from one matmul: 9× cheaper than `sq_dist` broadcast over
    [N, K] pairs (4096 × 64 on S²: 0.6 ms against 5.5 ms). The rounding of
    x·c (a few eps, with the inputs' own unit-norm error) moves θ² by O(eps)
    away from θ = π, and by up to about 2π√(8 eps) near it (6e-3 in
    float32): screening only."""
    cos = tf.clip_by_value(tf.linalg.matmul(x, c, transpose_b=True), -1., 1.)
    return tf.square(tf.acos(cos))

  def log_det_dexp(self, x, y):
    """(n - 1) log(sin r / r), r = d(x, y); analytic in r² at r = 0."""
    return (self._dim - 1) * tf.math.log(
        _series.sinc_sqrt(self.sq_dist(x, y)))

  def half_sq_dist_derivatives(self, x, y, frame):
    """½r², -l and r cot r · I + (1 - r cot r)/r² · l lᵀ, l = E_yᵀ log_y(x).

    The Hessian of ½d(x, ·)² on the unit sphere (Jacobi fields of curvature
    1): 1 along the geodesic to x, r cot r across it. Both coefficients are
    analytic in r², so x = y needs no branch (the Hessian is I there); they
    diverge at the cut locus r = π, where d² is not differentiable.
    """
    l = tf.linalg.matvec(frame, self.logmap(y, x), transpose_a=True)
    t2 = self.sq_dist(x, y)
    rcot = (_series.cos_sqrt(t2) / _series.sinc_sqrt(t2))[..., tf.newaxis,
                                                           tf.newaxis]
    q = _series.series_or_closed(
        t2, lambda t: (1. - tf.sqrt(t) / tf.tan(tf.sqrt(t))) / t,
        _ONE_MINUS_COT_COEFFS)[..., tf.newaxis, tf.newaxis]
    eye = tf.eye(self._dim, dtype=x.dtype)
    hess = rcot * eye + q * (l[..., :, tf.newaxis] * l[..., tf.newaxis, :])
    return 0.5 * t2, -l, hess

  def exp_second_order_term(self, y, egrad, frame):
    """-(y·∇f) I: exp_y(u) = cos|u| y + sinc|u| u has ∂²exp/∂u² = -y ⊗ I at
    u = 0, and the frame is orthonormal."""
    del frame
    eye = tf.eye(self._dim, dtype=y.dtype)
    return -_dot(y, egrad)[..., tf.newaxis] * eye

  def exp_jacobi_fields(self, y, w, frame_y, frame_x):
    """Jacobi fields of curvature 1, r = |w|, l = E_yᵀ w:

        D₁ = cos r I + (1 - cos r)/r² l lᵀ,   D₂ = sinc r I + (1 - sinc r)/r² l lᵀ

    (along the geodesic J = δy + t δw, across it cos(rt) δy + sin(rt)/r δw),
    and Γ E_y = E_y - (1 - cos r)/r² w lᵀ - sinc r · y lᵀ. Every coefficient
    is analytic in r², so w = 0 (T = E_yᵀE_y = I, D₁ = D₂ = I) needs no
    branch.
    """
    l = tf.linalg.matvec(frame_y, w, transpose_a=True)
    t2 = tf.reduce_sum(l * l, axis=-1)[..., tf.newaxis, tf.newaxis]
    cos, sinc = _series.cos_sqrt(t2), _series.sinc_sqrt(t2)
    c1 = _series.series_or_closed(
        t2, lambda t: (1. - tf.cos(tf.sqrt(t))) / t, _ONE_MINUS_COS_COEFFS)
    c2 = _series.series_or_closed(
        t2, lambda t: (1. - tf.sin(tf.sqrt(t)) / tf.sqrt(t)) / t,
        _ONE_MINUS_SINC_COEFFS)
    ll = l[..., :, tf.newaxis] * l[..., tf.newaxis, :]
    eye = tf.eye(self._dim, dtype=y.dtype)
    transported = (frame_y - c1 * (w[..., :, tf.newaxis] * l[..., tf.newaxis, :])
                   - sinc * (y[..., :, tf.newaxis] * l[..., tf.newaxis, :]))
    transport = tf.linalg.matmul(frame_x, transported, transpose_a=True)
    return transport, cos * eye + c1 * ll, sinc * eye + c2 * ll

  def proju(self, x, u):
    return u - _dot(x, u) * x

  def projx(self, x):
    return x / tf.norm(x, axis=-1, keepdims=True)

  def tangent_frame(self, x):
    """Columns H e_j (j < n) of the Householder reflection H with H(s e_n) = x.

    u = s e_n - x with s = -sign(x_n) keeps |u|² = 2(1 + |x_n|) >= 2, so the
    frame is well conditioned everywhere, with a switch of s at the equator
    x_n = 0. The columns e_j + u x_j / (1 - s x_n) are orthonormal and
    orthogonal to x. Log-dets do not depend on the frame, only on its being
    orthonormal, so the switch is harmless.
    """
    n = self._dim
    xn = x[..., n:]
    s = tf.where(xn >= 0., -tf.ones_like(xn), tf.ones_like(xn))
    e_n = tf.one_hot(n, n + 1, dtype=x.dtype)
    u = s * e_n - x                                   # [..., n+1]
    coef = x[..., :n] / (1. - s * xn)                 # [..., n]
    eye = tf.eye(n + 1, n, dtype=x.dtype)             # e_j, j < n, as columns
    return eye + u[..., :, tf.newaxis] * coef[..., tf.newaxis, :]

  def frame_orientation(self, x):
    """det[E_x, x] = det(H) · s = -s: +1 for x_n >= 0, -1 below the equator
    (H, s as in `tangent_frame`; a Householder reflection has det -1)."""
    return tf.where(x[..., self._dim] >= 0., tf.ones_like(x[..., 0]),
                    -tf.ones_like(x[..., 0]))

  def embed(self, x):
    return x

  def uniform(self, dtype=tf.float32):
    return ircpm_distributions.SphericalUniform(
        dimension=self.ambient_dim, dtype=dtype)

  def membership_assertions(self, x) -> List[tf.Operation]:
    ops = self._check_event_size(x, repr(self))
    ops += self._finite_assertions(x, repr(self))
    atol = tolerances.for_dtype(x.dtype).membership
    norm = tf.norm(x, axis=-1)
    ops.append(tf.debugging.assert_near(
        norm, tf.ones_like(norm), atol=atol, rtol=0.,
        message=f'{self!r}: points are off the sphere (| |x| - 1 | > {atol}).'))
    return ops
