"""A TFP Chain whose density correction composes its parts' corrections."""

from tensorflow_probability.python.bijectors import chain as tfp_chain

from tfp_ircpm.bijectors import _cache


# The base is TFP's non-CompositeTensor chain (what `tfb.Chain(...)` itself
# returns when a link, like IRCPM, is not a CompositeTensor). Subclassing
# `tfb.Chain` would make this class a CompositeTensor whatever its links, and
# `TransformedDistribution.trainable_variables`, which flattens composites
# through their type specs, would then find none of ψ's variables.
class Chain(tfp_chain._Chain):  # pylint: disable=protected-access
  """`tfb.Chain` that lets each bijector correct the density itself.

  TFP's Chain inherits the generic density correction, which over spherical
  bases (`tfd.VonMisesFisher`, `tfd.PowerSpherical`, `tfd.SphericalUniform`)
  differentiates the forward pass of the whole chain along a tangent basis.
  Through IRCPMs that is slow and gives wrong parameter gradients, because it
  needs second derivatives of the implicit solve. This Chain instead walks the
  bijectors in application order and asks each one for its correction in the
  current tangent space; every `IRCPM` answers with its intrinsic
  `forward_log_det_jacobian`. The intermediate points come from the bijector
  cache filled by `inverse`, so no extra solves run inside `log_prob`.

  Its own cache (TFP caches a chain's results too, keyed by the input
  tensor) expires when any link's variables change or an entry is off the
  active gradient tape, like each `IRCPM`'s (`_cache.ValidatedPlainCache`).
  A plain `tfb.Chain` keeps TFP's: after a training step, `log_prob` of a
  tensor it has seen before returns the old density, and `log_prob` of
  samples drawn outside a tape has the wrong gradient. Use this class.
  """

  _cache = _cache.ValidatedPlainCache()

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._cache_state = _cache.StateTracker(self._link_variables)

  def _link_variables(self):
    out = []
    for bij in self.bijectors:
      found = getattr(bij, '_potential_variables', None)
      for v in (found() if found else bij.variables):
        if all(v is not o for o in out):
          out.append(v)
    return out

  def _experimental_compute_density_correction(self, x, tangent_space,
                                               backward_compat=False,
                                               **kwargs):
    event_ndims = kwargs.pop('event_ndims', self.forward_min_event_ndims)
    total = 0.
    for bij in reversed(self.bijectors):
      correction, tangent_space = bij.experimental_compute_density_correction(
          x, tangent_space, backward_compat=backward_compat,
          event_ndims=event_ndims, **kwargs)
      total = total + correction
      x = bij.forward(x, **kwargs)
      event_ndims = bij.forward_event_ndims(event_ndims, **kwargs)
    return total, tangent_space
