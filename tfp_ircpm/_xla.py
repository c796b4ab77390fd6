"""Whether the graph being traced will be compiled by XLA."""

import tensorflow as tf

from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import


def in_xla_context() -> bool:
  """True while tracing a function for XLA (`jit_compile=True`).

  The same test TFP uses (`implementation_selection.is_xla`): XLA needs
  static shapes and cannot print or raise, so a few code paths differ.
  """
  return (not tf.executing_eagerly() and
          control_flow_util.GraphOrParentsInXlaContext(
              tf.compat.v1.get_default_graph()))
