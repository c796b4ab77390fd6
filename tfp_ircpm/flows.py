"""Building flows of IRCPMs, and finding the IRCPMs in a flow.

* `make_flow`: q = (f_L ∘ … ∘ f_1)_# base as a `tfd.TransformedDistribution`
  over `bijectors.Chain`, so it is correct over any base (the manifold's
  uniform, `tfd.VonMisesFisher`, a fitted mixture, …) and its bijector cache
  is validated.
* `flow_layers(q)`: the base and the IRCPM layers in application order, for
  every part of the package that walks a flow (diagnostics, stochastic
  log-dets, export, training monitors).
"""

from typing import List, Optional, Sequence, Tuple, Union

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import transformed_distribution as transformed_lib  # pylint: disable=g-direct-tensorflow-import

from tfp_ircpm import potentials as potentials_lib
from tfp_ircpm.bijectors import chain as chain_lib
from tfp_ircpm.bijectors import ircpm as ircpm_lib
from tfp_ircpm.manifolds import base as base_lib

tfb = tfp.bijectors
tfd = tfp.distributions


class NotAFlowError(TypeError, ValueError):
  """The object is not an IRCPM, a chain of them, or a flow of them.

  A TypeError and a ValueError, so code written against either keeps
  catching it.
  """


def is_transformed(distribution) -> bool:
  """Whether `distribution` is a `tfd.TransformedDistribution` (any bijector).

  `tfd.TransformedDistribution(...)` returns an instance of a private base
  class when its bijector is not a CompositeTensor (IRCPMs are not), so
  `isinstance(q, tfd.TransformedDistribution)` is False for our flows.
  """
  return isinstance(distribution, transformed_lib._TransformedDistribution)  # pylint: disable=protected-access


def bijector_layers(bijector) -> List[ircpm_lib.IRCPM]:
  """The IRCPMs of an IRCPM or of (nested) chains of them, in application
  order (a layer shared by several links appears once per link).

  Raises:
    NotAFlowError: for any other bijector.
  """
  if isinstance(bijector, ircpm_lib.IRCPM):
    return [bijector]
  # tfb.Chain of non-CompositeTensor bijectors is a private composition.
  if isinstance(bijector, tfb.Composition):
    return [layer for part in reversed(bijector.bijectors)
            for layer in bijector_layers(part)]
  raise NotAFlowError(f'Need an IRCPM or a Chain of IRCPMs, got {bijector!r}.')


def flow_layers(q: tfd.Distribution
                ) -> Tuple[tfd.Distribution, List[ircpm_lib.IRCPM]]:
  """(base, IRCPMs in application order) of q = base pushed by IRCPMs.

  Args:
    q: a `tfd.TransformedDistribution` whose bijector is an `IRCPM` or a
      `Chain` (any depth) of them.

  Raises:
    NotAFlowError: for anything else.
  """
  if not is_transformed(q):
    raise NotAFlowError(
        f'Need a TransformedDistribution of IRCPMs, got {q!r}.')
  return q.distribution, bijector_layers(q.bijector)


def distinct(layers: Sequence[ircpm_lib.IRCPM]) -> List[ircpm_lib.IRCPM]:
  """`layers` without repeats (a shared ψ's layer once), in order."""
  out = []
  for layer in layers:
    if all(layer is not o for o in out):
      out.append(layer)
  return out


def make_flow(manifold: base_lib.Manifold,
              num_layers: int,
              potential: Union[None, potentials_lib.MLP, Sequence] = None,
              base: Optional[tfd.Distribution] = None,
              share: bool = False,
              hidden_units: Sequence[int] = (64, 64),
              output_scale: float = 1. / 20.,
              certified: bool = False,
              zero_output: bool = False,
              dtype=tf.float32,
              seed: int = 0,
              **ircpm_kwargs) -> tfd.TransformedDistribution:
  """q = (f_L ∘ … ∘ f_1)_# base, a stack of `num_layers` IRCPMs.

  Args:
    manifold: the `Manifold`.
    num_layers: L >= 1.
    potential: None (each layer gets `potentials.MLP(manifold,
      hidden_units, output_scale, certified=, zero_output=, dtype=)`, seeded
      1000·seed + k), one potential (shared by every layer), or a sequence of
      `num_layers` potentials (layer k uses the k-th).
    base: the base distribution, with density with respect to the
      manifold's volume (default `manifold.uniform(dtype)`; e.g.
      `distributions.vmf_mixture`, `tfd.VonMisesFisher`).
    share: with potential=None, one MLP for every layer (the paper's S²
      model: one IRCPM applied L times).
    hidden_units, output_scale, certified, zero_output, dtype, seed: of the
      default MLPs (see `potentials.MLP`; `zero_output` starts the stack at
      the identity, for a base that is already fitted).
    **ircpm_kwargs: passed to every `IRCPM` (method, tolerance,
      nonconvergence, fold, linear_algebra, validate_args, …).

  Returns:
    A `tfd.TransformedDistribution` over an `ircpm.bijectors.Chain`.
  """
  if int(num_layers) < 1:
    raise ValueError(f'num_layers must be >= 1, got {num_layers}.')
  num_layers = int(num_layers)

  def mlp(k):
    return potentials_lib.MLP(manifold, hidden_units,
                              output_scale=output_scale, dtype=dtype,
                              seed=1000 * seed + k, certified=certified,
                              zero_output=zero_output, name=f'psi{k}')

  if potential is None:
    psis = [mlp(0)] * num_layers if share else [mlp(k)
                                                for k in range(num_layers)]
  elif callable(potential):
    psis = [potential] * num_layers
  else:
    psis = list(potential)
    if len(psis) != num_layers:
      raise ValueError(f'Got {len(psis)} potentials for {num_layers} '
                       'layers.')
  layers, made = [], {}
  for k, psi in enumerate(psis):
    # One IRCPM per distinct ψ: a shared ψ is one bijector applied L times,
    # so its solve and log-det functions are traced once.
    if id(psi) not in made:
      made[id(psi)] = ircpm_lib.IRCPM(manifold, psi, name=f'ircpm{k}',
                                      **ircpm_kwargs)
    layers.append(made[id(psi)])
  if base is None:
    base = manifold.uniform(dtype)
  # Chain applies its list from last to first; layer 0 acts first.
  return tfd.TransformedDistribution(base, chain_lib.Chain(layers[::-1]))
