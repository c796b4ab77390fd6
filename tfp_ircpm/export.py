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

Both signatures validate their input in the graph (plain `tf.debugging`
ops, so the checks run in the server too) and answer a bad request with an
`InvalidArgumentError` whose message names the problem:

* `log_prob`: points must have rank 1 + len(event_shape) and the event
  shape on the trailing axes, be finite, and lie on the flow's manifold to
  the tolerance `validate_args=True` uses: the check is the manifold's own
  `membership_assertions` (unit norm on spheres, angle range on tori,
  factor by factor on products and powers). The manifold is that of the
  IRCPM layers (`flow_manifold`); a flow without IRCPM layers gets the
  shape and finiteness checks only, unless `manifold=` is given.
* `sample`: n must be >= 0.

The `points` input is declared with unknown shape (`saved_model_cli show`
prints `unknown_rank`) and gets its static [N, *event_shape] back only
after the checks: against a declared [N, 3], TF's graph optimiser folds the
rank check to a constant, and a [3] or [1, 1, 3] input would pass it.

A computation that cannot live in a SavedModel raises `ExportError` naming
the signature: Python-only ops (`tf.py_function`, `tf.numpy_function`) or a
trace failure (e.g. a potential calling `.numpy()` on its input).

Gradients. By default (`differentiable=False`) the model is for serving:
`log_prob` keeps its derivatives (they are plain ops of the traced graph),
but `sample` is stored without them. The forward solve's IFT point and its
log-det take their derivatives from custom gradients that recompute them on
a tape (`_autodiff.with_lazy_gradient`), and `tf.saved_model.save` traces
every custom gradient it stores: on a 3-layer S² flow (MLP [64, 64]) the
save took 5.0 s with them and 1.1 s without, after the signatures' own
tracing. Without them, a gradient through the reloaded `sample` raises
`LookupError` naming `differentiable=True`, never a silently wrong or zero
gradient.
`differentiable=True` stores them, for a consumer that trains through the
reloaded sampler (first derivatives only; see below).
"""

import contextlib
from typing import Dict, Iterator, Optional

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import _autodiff
from tfp_ircpm import flows
from tfp_ircpm.manifolds import base as manifold_base

try:
  from tensorflow.python.saved_model import save_context  # pylint: disable=g-direct-tensorflow-import
except ImportError:  # another TF layout: trace outside it (see _tracing)
  save_context = None

tfd = tfp.distributions

# Ops that call back into the Python interpreter of the exporting process.
PYTHON_OPS = frozenset({'PyFunc', 'PyFuncStateless', 'EagerPyFunc'})

# What a gradient request through a `differentiable=False` sample says.
NO_GRADIENT_MESSAGE = (
    'tfp_ircpm.export: this SavedModel was saved without the sampler\'s '
    'gradients (export.save(..., differentiable=False), the default); save '
    'it with differentiable=True to differentiate sample.')

# With differentiable=True, loading the SavedModel logs absl warnings
# "Importing a function (...) with ops with unsaved custom gradients. Will
# likely fail if a gradient is requested." Where they come from, and why
# they are harmless:
#
# * tf.saved_model.save (by default, SaveOptions(experimental_custom_gradients
#   =True)) stores a gradient function for every tf.custom_gradient op in the
#   saved functions, but only one level deep: a custom-gradient op inside a
#   stored gradient function (or inside a function that only a gradient
#   function calls) gets no stored gradient. The loader warns once for every
#   function holding such an op.
# * Here: `sample`'s forward solve returns the IFT point through
#   `_autodiff.with_lazy_gradient`, whose gradient function recomputes the
#   point on a tape, i.e. evaluates ψ, and the package's `potentials.MLP`
#   applies its activation through the tf.custom_gradient
#   `potentials.softplus`. So one warning per IRCPM layer with such a ψ
#   (none for a tf_keras ψ: its softplus is TF's op with a registered
#   gradient).
# * The warned functions run only when a gradient of a gradient is taken.
#   Calling a signature computes values and never runs them
#   (tests/test_export.py checks that none is reachable from the
#   signatures). First derivatives of the reloaded model work, their
#   gradient functions being stored (checked once by hand: d log_prob/d
#   points, d log_prob/d variables and the reparameterised d sample/d
#   variables); a second derivative through `sample` raises LookupError, as
#   the warning says.
# * The saving side cannot remove them without a worse model:
#   experimental_custom_gradients=False stores no gradient function at all,
#   so every saved function holding a custom-gradient op warns (6 instead of
#   1 for one MLP IRCPM, the two signatures among them) and first
#   derivatives fail too; stripping the ops' gradient-override attributes
#   would silence the loader but make a gradient request silently bypass the
#   custom gradients (the IFT point differentiated through whatever computed
#   its value) instead of failing. A consumer that wants a quiet load can
#   raise the level of Python's 'absl' logger around `tf.saved_model.load`.
# * The default, differentiable=False, stores none of these gradient
#   functions, so loading it warns about nothing of this kind.
#
# Tracing: `tf.saved_model.save` traces in a "save context", which is part of
# every tf.function's cache key. `FlowModule` traces its functions in that
# same context (`_tracing`) and holds the concrete functions, not the
# `tf.function`s. A `tf.function` attribute would be retraced by the saver:
# every graph stored twice and every warning logged twice (for one MLP
# IRCPM: 11 MB and 2 warnings instead of 6.1 MB and 1). Concrete functions
# traced outside the save context are not retraced, but then the saver's
# gradient tracing retraces the bijector's cached inner functions (the
# log-det function that the lazy log-det's gradient calls), whose
# custom-gradient ops go unsaved as well (3 warnings instead of 1).

SAVE_OPTIONS = tf.saved_model.SaveOptions()


def _tracing():
  """The context `tf.saved_model.save(..., options=SAVE_OPTIONS)` traces in."""
  if save_context is None or save_context.in_save_context():
    return contextlib.nullcontext()
  return save_context.save_context(SAVE_OPTIONS)


class ExportError(ValueError):
  """A signature of the flow cannot be written to a SavedModel."""


def flow_manifold(distribution: tfd.Distribution
                  ) -> Optional[manifold_base.Manifold]:
  """The manifold the flow's points lie on, or None if it is not known.

  That of the IRCPM layers for a `tfd.TransformedDistribution` of an IRCPM
  or a chain of them (`flows.flow_layers`); otherwise the distribution's
  own `manifold` (tfp_ircpm's base distributions that have one); otherwise
  None.
  """
  try:
    _, layers = flows.flow_layers(distribution)
  except flows.NotAFlowError:
    layers = []
  if layers:
    return layers[-1].manifold  # the space log_prob's points come from
  manifold = getattr(distribution, 'manifold', None)
  return manifold if isinstance(manifold, manifold_base.Manifold) else None


def _assert(condition, data) -> tf.Operation:
  return tf.debugging.Assert(condition, data, summarize=16)


def checked_points(points: tf.Tensor, event_shape: tf.TensorShape,
                   manifold: Optional[manifold_base.Manifold],
                   name: str = 'log_prob') -> tf.Tensor:
  """`points` [N, *event_shape] once the serving checks have passed.

  Each stage runs only after the previous one passed, so the error names the
  first problem: the rank, the event shape, NaN/Inf, then (with a manifold)
  its `membership_assertions`. `points` may have any static shape; the
  result has the static shape [None, *event_shape].
  """
  event = event_shape.as_list()
  expected = '[' + ', '.join(['N'] + [str(d) for d in event]) + ']'
  shape = tf.shape(points)
  rank_ok = _assert(
      tf.equal(tf.size(shape), 1 + len(event)),
      [f'{name}: points must have rank {1 + len(event)} (shape {expected}); '
       'got shape', shape])
  with tf.control_dependencies([rank_ok]):
    event_ok = _assert(
        tf.reduce_all(tf.equal(shape[1:], tf.constant(event, shape.dtype))),
        [f'{name}: points must have event '
         + (f'size {event[0]} on the last axis' if len(event) == 1 else
            f'shape {event} on the trailing axes')
         + f' (shape {expected}); got shape', shape])
  with tf.control_dependencies([event_ok]):
    points = tf.ensure_shape(tf.identity(points), [None] + event)
  points = tf.debugging.assert_all_finite(
      points, message=f'{name}: points contain NaN or Inf.')
  if manifold is not None:
    with tf.control_dependencies(manifold.membership_assertions(points)):
      points = tf.identity(points)
  return points


class FlowModule(tf.Module):
  """The exported object: two serving functions and the flow's variables.

  Holds the variables, not the distribution, so the SavedModel's object
  graph contains no TFP types and loads without TFP. Construction traces
  both functions (see `save` for the checks they make on their input);
  `sample` and `log_prob` are the traced concrete functions, i.e. what the
  server runs.

  Args:
    distribution: the flow; its event shape must be static.
    name: the module's name.
    manifold: the manifold whose membership `log_prob` checks; by default
      `flow_manifold(distribution)`. Its event shape must be the flow's.
    differentiable: whether `sample` keeps its gradients (see the module
      docstring); `log_prob` always does.

  Raises:
    ExportError: naming a signature that cannot be exported, or for a
      manifold that does not match the event shape.
  """

  def __init__(self, distribution: tfd.Distribution, name: str = 'flow',
               manifold: Optional[manifold_base.Manifold] = None,
               differentiable: bool = False):
    super().__init__(name=name)
    event_shape = distribution.event_shape
    if not event_shape.is_fully_defined():
      raise ExportError('The distribution needs a static event shape to '
                        f'export, got {event_shape}.')
    if manifold is None:
      manifold = flow_manifold(distribution)
    elif not isinstance(manifold, manifold_base.Manifold):
      raise TypeError(f'manifold must be a Manifold, got {manifold!r}.')
    if manifold is not None and manifold.event_shape != event_shape:
      raise ExportError(
          f'The manifold {manifold!r} has event shape {manifold.event_shape}, '
          f'the distribution {event_shape}.')
    # A plain Python object: not tracked, so not part of the SavedModel.
    self._manifold = manifold
    self._flow_variables = list(distribution.variables)
    dtype = distribution.dtype

    def sample(n, seed):
      n_ok = _assert(tf.greater_equal(n, 0), ['sample: n must be >= 0; got', n])
      with tf.control_dependencies([n_ok]):
        n = tf.identity(n)
      points, log_prob = distribution.experimental_sample_and_log_prob(
          n, seed=seed)
      return {'points': points, 'log_prob': log_prob}

    def log_prob(points):
      points = checked_points(points, event_shape, manifold)
      return {'log_prob': distribution.log_prob(points)}

    functions = {
        'sample': tf.function(sample, input_signature=[
            tf.TensorSpec([], tf.int32, name='n'),
            tf.TensorSpec([2], tf.int32, name='seed')]),
        # Unknown shape: see the module docstring.
        'log_prob': tf.function(log_prob, input_signature=[
            tf.TensorSpec(None, dtype, name='points')])}
    gradients = lambda: (contextlib.nullcontext() if differentiable else
                         _autodiff.values_only(NO_GRADIENT_MESSAGE))
    concrete = {}
    for key, function in functions.items():
      try:
        with _tracing(), gradients():
          concrete[key] = function.get_concrete_function()
      except Exception as e:  # pylint: disable=broad-except
        raise ExportError(f'Cannot export signature {key!r}: tracing it '
                          f'failed with {type(e).__name__}: {e}') from e
      graph_ops = list(_graph_ops(concrete[key].graph))
      python_ops = sorted({op for op, _ in graph_ops if op in PYTHON_OPS})
      if python_ops:
        where = sorted({fn for op, fn in graph_ops if op in PYTHON_OPS})
        raise ExportError(
            f'Cannot export signature {key!r}: it runs Python code '
            f'({", ".join(python_ops)} in {", ".join(where)}), which a '
            'SavedModel cannot hold. Write the potential (and target) in '
            'TensorFlow ops instead of tf.py_function/tf.numpy_function.')
    self.sample = concrete['sample']
    self.log_prob = concrete['log_prob']

  @property
  def manifold(self) -> Optional[manifold_base.Manifold]:
    """The manifold `log_prob` checks membership of (None: shape and
    finiteness only)."""
    return self._manifold

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """The serving signatures, {'sample': ..., 'log_prob': ...}."""
    return {'sample': self.sample, 'log_prob': self.log_prob}


def _graph_ops(graph: tf.Graph) -> Iterator[tuple]:
  """(op type, function name) of every node, nested functions included."""
  graph_def = graph.as_graph_def()
  for node in graph_def.node:
    yield node.op, graph.name
  for function in graph_def.library.function:
    for node in function.node_def:
      yield node.op, function.signature.name


def save(distribution: tfd.Distribution, path: str,
         manifold: Optional[manifold_base.Manifold] = None,
         differentiable: bool = False) -> FlowModule:
  """Writes `distribution` as a SavedModel with serving signatures.

  Both signatures check their input in the graph and fail with an
  `InvalidArgumentError` naming the problem: `log_prob` needs points of
  shape [N, *event_shape], finite, on the manifold (to the tolerance of
  `validate_args=True`); `sample` needs n >= 0. `log_prob` keeps its
  gradients; `sample` keeps them only with `differentiable=True` (otherwise
  a gradient request raises `LookupError`). With `differentiable=True`,
  loading logs one absl warning about "unsaved custom gradients" for each
  IRCPM layer whose ψ uses tf.custom_gradient (e.g. `potentials.MLP`): it
  concerns second derivatives only (see the comment at the top of this
  module).

  Args:
    distribution: the flow, e.g. a `tfd.TransformedDistribution` of IRCPMs
      (or a `tfp_ircpm.keras.FlowModel`'s `.distribution`). Its event shape
      must be static.
    path: the SavedModel directory.
    manifold: overrides the manifold whose membership `log_prob` checks
      (default: that of the IRCPM layers, see `flow_manifold`).
    differentiable: store `sample`'s gradients too (slower to save: each
      IRCPM layer's custom gradients are traced).

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
  module = FlowModule(distribution, manifold=manifold,
                      differentiable=differentiable)
  tf.saved_model.save(module, path, signatures=module.signatures(),
                      options=SAVE_OPTIONS)
  return module
