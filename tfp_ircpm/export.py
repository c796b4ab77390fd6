"""SavedModel export of a flow for serving without tfp_ircpm or TFP.

`save(distribution, path)` traces two `tf.function`s and writes them as
serving signatures:

* `sample(n [] int32, seed [2] int32)` → {'points': [n, *event_shape],
  'log_prob': [n]}: a stateless draw, so equal seeds give bit-identical
  samples in the exporting process and in the server;
* `log_prob(points [N, *event_shape])` → {'log_prob': [N]}.

The traced graphs hold the whole computation as core TF ops: the IRCPM
forward solve (a `While` inside the cached solve function), the IFT step and
the log-dets (the nested tapes are resolved into explicit gradient ops at
trace time). Only the variables are saved alongside, so loading needs
nothing but `tf.saved_model.load` (or TF Serving / `saved_model_cli`).

A computation that cannot live in a SavedModel raises `ExportError` naming
the signature: Python-only ops (`tf.py_function`, `tf.numpy_function`) or a
trace failure (e.g. a potential calling `.numpy()` on its input).
"""

from typing import Dict, Iterator

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

# Ops that call back into the Python interpreter of the exporting process.
PYTHON_OPS = frozenset({'PyFunc', 'PyFuncStateless', 'EagerPyFunc'})


class ExportError(ValueError):
  """A signature of the flow cannot be written to a SavedModel."""


class FlowModule(tf.Module):
  """The exported object: two serving functions and the flow's variables.

  Holds the variables, not the distribution, so the SavedModel's object
  graph contains no TFP types and loads without TFP.
  """

  def __init__(self, distribution: tfd.Distribution, name: str = 'flow'):
    super().__init__(name=name)
    event_shape = distribution.event_shape
    if not event_shape.is_fully_defined():
      raise ExportError('The distribution needs a static event shape to '
                        f'export, got {event_shape}.')
    self._flow_variables = list(distribution.variables)
    dtype = distribution.dtype

    def sample(n, seed):
      points, log_prob = distribution.experimental_sample_and_log_prob(
          n, seed=seed)
      return {'points': points, 'log_prob': log_prob}

    def log_prob(points):
      return {'log_prob': distribution.log_prob(points)}

    self.sample = tf.function(sample, input_signature=[
        tf.TensorSpec([], tf.int32, name='n'),
        tf.TensorSpec([2], tf.int32, name='seed')])
    self.log_prob = tf.function(log_prob, input_signature=[
        tf.TensorSpec([None] + event_shape.as_list(), dtype, name='points')])

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Traces both functions; `ExportError` names the one that fails."""
    concrete = {}
    for name in ('sample', 'log_prob'):
      try:
        concrete[name] = getattr(self, name).get_concrete_function()
      except Exception as e:  # pylint: disable=broad-except
        raise ExportError(f'Cannot export signature {name!r}: tracing it '
                          f'failed with {type(e).__name__}: {e}') from e
      python_ops = sorted({op for op, _ in _graph_ops(concrete[name].graph)
                           if op in PYTHON_OPS})
      if python_ops:
        where = sorted({fn for op, fn in _graph_ops(concrete[name].graph)
                        if op in PYTHON_OPS})
        raise ExportError(
            f'Cannot export signature {name!r}: it runs Python code '
            f'({", ".join(python_ops)} in {", ".join(where)}), which a '
            'SavedModel cannot hold. Write the potential (and target) in '
            'TensorFlow ops instead of tf.py_function/tf.numpy_function.')
    return concrete


def _graph_ops(graph: tf.Graph) -> Iterator[tuple]:
  """(op type, function name) of every node, nested functions included."""
  graph_def = graph.as_graph_def()
  for node in graph_def.node:
    yield node.op, graph.name
  for function in graph_def.library.function:
    for node in function.node_def:
      yield node.op, function.signature.name


def save(distribution: tfd.Distribution, path: str) -> FlowModule:
  """Writes `distribution` as a SavedModel with serving signatures.

  Args:
    distribution: the flow, e.g. a `tfd.TransformedDistribution` of IRCPMs
      (or a `tfp_ircpm.keras.FlowModel`'s `.distribution`). Its event shape
      must be static.
    path: the SavedModel directory.

  Returns:
    The saved `FlowModule`, whose `sample`/`log_prob` are the exported
    functions (calling them in process gives what the server returns).

  Raises:
    ExportError: naming a signature that cannot be exported.
  """
  if not isinstance(distribution, tfd.Distribution):
    inner = getattr(distribution, 'distribution', None)  # a FlowModel
    if not isinstance(inner, tfd.Distribution):
      raise TypeError('save needs a tfd.Distribution (or a FlowModel), got '
                      f'{distribution!r}.')
    distribution = inner
  module = FlowModule(distribution)
  signatures = module.signatures()
  tf.saved_model.save(module, path, signatures=signatures)
  return module
