"""Autodiff helpers shared by the solver and the log-det."""

import tensorflow as tf

# Up to this many outputs a batch Jacobian is built from one reverse pass per
# output. Beyond it `tape.batch_jacobian` vectorises the passes with pfor,
# whose graphs take seconds to trace and optimise inside a while-loop.
MAX_UNROLLED_OUTPUTS = 8


def batch_jacobian(tape: tf.GradientTape, target: tf.Tensor,
                   source: tf.Tensor) -> tf.Tensor:
  """d target[n, i] / d source[n, j] → [N, I, J] for per-example maps.

  Args:
    tape: a persistent tape that recorded `target` from `source`.
    target: [N, I] with a static I.
    source: [N, J].
  """
  n_out = tf.compat.dimension_value(target.shape[-1])
  zero = tf.UnconnectedGradients.ZERO
  if n_out is None or n_out > MAX_UNROLLED_OUTPUTS:
    return tape.batch_jacobian(target, source, unconnected_gradients=zero)
  with tape:  # resume recording, so that the slices are on the tape too
    parts = tf.unstack(target, axis=1)
  rows = [tape.gradient(p, source, unconnected_gradients=zero) for p in parts]
  return tf.stack(rows, axis=1)
