"""TFP's bijector cache, made safe for bijectors with trainable variables.

TFP caches every forward/inverse pair (and the log-det) keyed by the
identity of the input tensor. For a bijector whose map depends on
variables that is a trap twice over:

* **stale values**: after an optimizer step, `q.log_prob(t)` on the tensor
  `t` it was called on before returns the old density;
* **dropped gradients**: `ys = q.sample(n)` and then `q.log_prob(ys)` under
  a `tf.GradientTape` reads x = f⁻¹(ys) and the log-det from the cache,
  computed outside the tape, so no gradient reaches ψ.

`ValidatedCache` keeps TFP's cache (and so the single solve behind
`experimental_sample_and_log_prob` and the chain density corrections) but
uses an entry only while it is still right:

* the potential's variables hold the values they had when the entry was
  made. Eagerly the values are compared (`StateTracker`); inside a traced
  function, the ops traced since the entry are searched for one that may
  write a variable of ψ (an assignment, an optimizer update, or a call or
  control-flow op that receives the variable; the bijectors' own ops, which
  only read, are skipped: `read_only_ops`);
* under an active gradient tape, every tensor the entry computed (the
  transformed point and the log-det) is on that tape. Tensors the entry was
  *given* (a user's input) are always right as they are.

Otherwise the entry is discarded and recomputed.
"""

import contextlib
import weakref
from typing import List, Optional

import numpy as np
import tensorflow as tf
# Public TF has no test of whether a tensor is on an active tape;
# `record` is what GradientTape itself uses.
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import
from tensorflow_probability.python.internal import cache_util  # pylint: disable=g-direct-tensorflow-import

_STATE = '_ircpm_state'
_COMPUTED = '_ircpm_computed'

# Op types that only read a resource variable.
_READ_OPS = frozenset({'ReadVariableOp', 'VariableShape', 'VarIsInitializedOp',
                       'ResourceGather', 'ResourceGatherNd'})

# Per graph, the [start, end) ranges of op indices traced by the bijectors'
# own hooks, which read ψ's variables but never write them.
_READ_ONLY_RANGES = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def read_only_ops():
  """Marks the ops traced inside as reading, never writing, variables."""
  if tf.executing_eagerly():
    yield
    return
  graph = tf.compat.v1.get_default_graph()
  start = len(graph.get_operations())
  try:
    yield
  finally:
    _READ_ONLY_RANGES.setdefault(graph, []).append(
        (start, len(graph.get_operations())))


class StateTracker:
  """A token that changes whenever the given variables may have changed.

  Eagerly, a version number that increments when a variable's value
  differs from the last snapshot. While tracing, the graph and its op count:
  the token stays valid until an op traced after it may write one of the
  variables.
  """

  def __init__(self, variables_fn):
    self._variables_fn = variables_fn
    self._version = 0
    self._snapshot = None

  def _variables(self) -> List[tf.Variable]:
    return list(self._variables_fn())

  def _eager_version(self) -> int:
    values = [np.array(v.numpy(), copy=True) for v in self._variables()]
    old = self._snapshot
    if old is None or len(old) != len(values) or not all(
        a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        for a, b in zip(old, values)):
      self._version += 1
      self._snapshot = values
    return self._version

  def token(self):
    if tf.executing_eagerly():
      return ('eager', self._eager_version())
    graph = tf.compat.v1.get_default_graph()
    return ('graph', weakref.ref(graph), len(graph.get_operations()))

  def still_valid(self, token) -> bool:
    if token[0] == 'eager':
      return tf.executing_eagerly() and token[1] == self._eager_version()
    if tf.executing_eagerly():
      return False
    graph = tf.compat.v1.get_default_graph()
    if token[1]() is not graph:
      return False
    return not self._written_since(graph, token[2])

  def _handles(self, graph) -> Optional[set]:
    """ids of the tensors through which ops of `graph` reach the variables
    (the handles, and their captures in a function graph); None if unknown.
    """
    try:
      external = {id(v.handle) for v in self._variables()}
    except (AttributeError, ValueError, RuntimeError):
      return None   # e.g. a distributed variable outside a replica context
    ids = set(external)
    for outer, inner in getattr(graph, 'captures', ()):
      if id(outer) in external:
        ids.add(id(inner))
    return ids

  def _written_since(self, graph, start: int) -> bool:
    ops = graph.get_operations()[start:]
    if not ops:
      return False
    handles = self._handles(graph)
    ranges = _READ_ONLY_RANGES.get(graph, ())
    for index, op in enumerate(ops, start):
      if op.type in _READ_OPS:
        continue
      if handles is None:
        touches = any(t.dtype == tf.resource for t in op.inputs)
      else:
        touches = any(id(t) in handles for t in op.inputs)
      if touches and not any(s <= index < e for s, e in ranges):
        return True
    return False


def _on_active_tape(structure) -> bool:
  return all(record.should_record_backprop([t])
             for t in tf.nest.flatten(structure) if tf.is_tensor(t))


class _Validated:
  """Entry validation for TFP bijector caches (mixed into them below).

  The bound bijector must provide `_cache_state`, a `StateTracker`.
  """

  def _get_or_create_edge(self, input, forward_name, kwargs):  # pylint: disable=redefined-builtin
    edge = super()._get_or_create_edge(input, forward_name, kwargs)
    tracker = self.bijector._cache_state  # pylint: disable=protected-access
    attrs = edge.attributes
    if _STATE not in attrs:                       # a new edge
      attrs[_STATE] = tracker.token()
      return edge
    if self._usable(edge, tracker):
      return edge
    fresh = cache_util._DirectedFunctionInvocation(  # pylint: disable=protected-access
        edge.input_ref, None, attributes={_STATE: tracker.token()},
        dependencies=None)
    self.storage[edge.input_ref] = fresh
    return fresh

  @staticmethod
  def _usable(edge, tracker: StateTracker) -> bool:
    attrs = edge.attributes
    if not tracker.still_valid(attrs[_STATE]):
      return False
    if not record.could_possibly_record():
      return True
    computed = [v for k, v in attrs.items() if not k.startswith('_ircpm')]
    # The tensor the entry's function produced: its output, or, for the
    # reverse lookup, the key itself.
    for ref in (edge.input_ref, edge.output_ref):
      value = ref() if ref else None
      if value is not None and id(value) == attrs.get(_COMPUTED):
        computed.append(value)
    return _on_active_tape(computed)

  def _invoke(self, input, fn_name, kwargs, attributes):  # pylint: disable=redefined-builtin
    output = super()._invoke(input, fn_name, kwargs, attributes)
    attributes[_COMPUTED] = id(output)
    return output


class ValidatedCache(_Validated, cache_util.BijectorCacheWithGreedyAttrs):
  """`BijectorCacheWithGreedyAttrs` whose entries expire when wrong."""


class ValidatedPlainCache(_Validated, cache_util.BijectorCache):
  """`BijectorCache` whose entries expire when wrong."""
