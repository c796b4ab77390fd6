"""Small dense linear algebra that also compiles under XLA on CPU."""

import tensorflow as tf


def logabsdet(m: tf.Tensor) -> tf.Tensor:
  """log|det m| for square matrices [..., n, n] with static n.

  `tf.linalg.slogdet` has no XLA CPU kernel and `tf.linalg.lu` no gradient,
  so: closed forms for n <= 2, and Σ log|diag R| of a QR factorisation above
  (|det Q| = 1). All three are differentiable, including twice.
  """
  n = tf.compat.dimension_value(m.shape[-1])
  if n is None:
    raise ValueError('logabsdet needs a static matrix size.')
  if n == 1:
    return tf.math.log(tf.abs(m[..., 0, 0]))
  if n == 2:
    return tf.math.log(tf.abs(det(m)))
  _, r = tf.linalg.qr(m)
  return tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r))), axis=-1)


def det(m: tf.Tensor) -> tf.Tensor:
  """det m for square matrices [..., n, n]: closed forms for n <= 2."""
  n = tf.compat.dimension_value(m.shape[-1])
  if n == 1:
    return m[..., 0, 0]
  if n == 2:
    return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
  return tf.linalg.det(m)
