"""Autodiff helpers shared by the solver and the log-det."""

import contextlib
import threading
from typing import Iterator, Sequence

import tensorflow as tf
# Public TF has no way to pause every active tape; GradientTape.stop_recording
# uses this same context for its own tape.
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import

# Up to this many outputs a batch Jacobian is built from one reverse pass per
# output. Beyond it `tape.batch_jacobian` vectorises the passes with pfor,
# whose graphs take seconds to trace and optimise inside a while-loop.
MAX_UNROLLED_OUTPUTS = 8

# Set by `values_only`: the message of the gradient error, per thread.
_STATE = threading.local()


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


def concat_last(parts: Sequence[tf.Tensor]) -> tf.Tensor:
  """tf.concat(parts, -1) whose derivatives of every order exist under XLA.

  For features inside ψ, which training differentiates three times (grad
  ψ, Hess ψ, then the parameter gradient of the log-det). TF's Concat
  gradient slices, and under XLA the gradient of Slice is an
  XlaDynamicUpdateSlice, which has no gradient: XLA training steps failed
  to trace on tori. Equal parts are stacked and reshaped (gradients Unpack
  and Pack); unequal ones are placed by matrix products with 0/1 matrices,
  which are exact.

  Args:
    parts: tensors [..., d_i] with the same batch shape.
  """
  parts = list(parts)
  if len(parts) == 1:
    return parts[0]
  sizes = [int(p.shape[-1]) for p in parts]
  if len(set(sizes)) == 1:
    stacked = tf.stack(parts, axis=-2)                         # [..., k, d]
    return tf.reshape(stacked, tf.concat(
        [tf.shape(stacked)[:-2], [len(parts) * sizes[0]]], 0))
  total, start, out = sum(sizes), 0, None
  for p, size in zip(parts, sizes):
    place = tf.one_hot(tf.range(start, start + size), total, dtype=p.dtype)
    term = tf.linalg.matmul(p[..., tf.newaxis, :], place)[..., 0, :]
    out = term if out is None else out + term
    start += size
  return out


def with_lazy_gradient(value: tf.Tensor, exact_fn, z: tf.Tensor,
                       variables) -> tf.Tensor:
  """`value`, differentiated as if it were `exact_fn(z)`.

  For quantities whose value a solve already produced (the IFT point, the
  log-det from the solve's Hessian) but whose derivatives need `exact_fn`
  recomputed on a tape. tf.custom_gradient builds that recomputation only
  when a gradient is asked for, so sampling never pays it. `variables` (ψ's
  trainable variables) are passed in explicitly, as inputs. Under
  `values_only`, `value` with gradients disabled.

  Args:
    value: the tensor to return; equal to exact_fn(z) up to solver tolerance.
    exact_fn: z ↦ the same quantity, differentiable in z and `variables`.
    z: the input the gradient flows to.
    variables: the variables the gradient flows to.
  """
  message = getattr(_STATE, 'values_only', None)
  if message is not None:
    return tf.raw_ops.PreventGradient(input=value, message=message)
  variables = tuple(variables)

  @tf.custom_gradient
  def lazy(z, *variable_values):
    del variable_values

    def grad(upstream):
      with tf.GradientTape() as tape:
        tape.watch(z)
        exact = exact_fn(z)
      return tape.gradient(
          exact, (z,) + variables, output_gradients=upstream,
          unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return tf.identity(value), grad

  return lazy(z, *[tf.convert_to_tensor(v) for v in variables])


@contextlib.contextmanager
def values_only(message: str) -> Iterator[None]:
  """Within, `with_lazy_gradient` returns its value with gradients disabled.

  For graphs that are only ever evaluated (`export.save` without
  gradients): the value is wrapped in TF's `PreventGradient` op, so a later
  gradient request raises `LookupError` with `message` instead of building
  the recomputation, and nothing of it is traced now. A custom gradient's
  function is traced when a SavedModel is written (most of the save time of
  a flow: the IFT point's and the log-det's second derivatives).
  """
  previous = getattr(_STATE, 'values_only', None)
  _STATE.values_only = message
  try:
    yield
  finally:
    _STATE.values_only = previous


def without_tapes(fn, *args):
  """fn(*args) with every gradient tape paused, as a graph.

  For iterative solvers (the c-transform solve, conjugate gradients, power
  iteration) whose outputs are never differentiated: a tape that watches
  ψ's variables would make while_v2 wrap the loop for higher-order tape
  gradients, which costs seconds of tracing and memory per call. Inside,
  derivatives use `tf.gradients` (`derivatives.*(symbolic=True)`), which
  needs a graph: eagerly, fn runs in a one-off `tf.function` (callers that
  run often keep a cached one instead, and pass it here as fn).
  """
  with record.stop_recording():
    if tf.executing_eagerly() and not hasattr(fn, 'get_concrete_function'):
      return tf.function(fn)(*args)
    return fn(*args)
