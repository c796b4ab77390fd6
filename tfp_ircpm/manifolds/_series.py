"""Smooth, NaN-free evaluation of even analytic functions of sqrt(t2).

Functions such as cos(√t), sin(√t)/√t or asin(√z)/√z are analytic in t but
autodiff through `sqrt` produces inf·0 = NaN at t = 0, and cancellation
destroys their derivatives for small t. We therefore evaluate a truncated
Taylor series below a dtype-dependent threshold and the closed form above it,
with the "double where" trick so the unused branch never sees a bad input
(which would otherwise poison gradients with NaN even though it is masked).
"""

from typing import Callable, Sequence

import tensorflow as tf


def small_threshold(dtype: tf.DType) -> float:
  """Below this value of t2 the 5-term Taylor series is used.

  The series is truncated after t2**4, so its relative error is about
  t2**5 / 10! (≈ 3e-17 at 1e-2 for float32, ≈ 3e-27 at 1e-4 for float64):
  far below machine precision. The closed form above the threshold loses about
  eps / t2 in its second derivative, i.e. ~1e-5 (float32) and ~1e-12 (float64).
  """
  return 1e-2 if dtype in (tf.float16, tf.bfloat16, tf.float32) else 1e-4


def series_or_closed(t2: tf.Tensor,
                     closed: Callable[[tf.Tensor], tf.Tensor],
                     coeffs: Sequence[float]) -> tf.Tensor:
  """Evaluates `closed(t2)` or the Taylor polynomial `sum_k coeffs[k] t2**k`.

  Args:
    t2: non-negative tensor, any shape.
    closed: the closed form, only ever called on t2 >= threshold.
    coeffs: Taylor coefficients in t2, lowest order first.

  Returns:
    A tensor with the shape and dtype of `t2`, twice differentiable everywhere.
  """
  small = t2 < small_threshold(t2.dtype)
  safe_t2 = tf.where(small, tf.ones_like(t2), t2)
  poly = tf.zeros_like(t2)
  for c in reversed(coeffs):
    poly = poly * t2 + tf.cast(c, t2.dtype)
  return tf.where(small, poly, closed(safe_t2))


# cos(√t)
COS_COEFFS = (1., -1. / 2, 1. / 24, -1. / 720, 1. / 40320)
# sin(√t) / √t
SINC_COEFFS = (1., -1. / 6, 1. / 120, -1. / 5040, 1. / 362880)
# asin(√z) / √z
ASINC_COEFFS = (1., 1. / 6, 3. / 40, 5. / 112, 35. / 1152)


def cos_sqrt(t2: tf.Tensor) -> tf.Tensor:
  return series_or_closed(t2, lambda t: tf.cos(tf.sqrt(t)), COS_COEFFS)


def sinc_sqrt(t2: tf.Tensor) -> tf.Tensor:
  return series_or_closed(
      t2, lambda t: tf.sin(tf.sqrt(t)) / tf.sqrt(t), SINC_COEFFS)


def asinc_sqrt(z2: tf.Tensor) -> tf.Tensor:
  """asin(√z2)/√z2 for z2 in [0, 1]."""
  return series_or_closed(
      z2, lambda z: tf.asin(tf.sqrt(z)) / tf.sqrt(z), ASINC_COEFFS)


def machine_eps(dtype: tf.DType) -> float:
  return {tf.float16: 1e-3, tf.bfloat16: 8e-3, tf.float32: 1.2e-7}.get(
      dtype, 2.3e-16)


def safe_sqrt(t2: tf.Tensor) -> tf.Tensor:
  """sqrt with a zero (not NaN/inf) gradient at 0."""
  zero = tf.equal(t2, 0.)
  return tf.where(zero, tf.zeros_like(t2), tf.sqrt(tf.where(zero, tf.ones_like(t2), t2)))
