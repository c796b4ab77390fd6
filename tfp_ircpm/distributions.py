"""Base distributions whose densities TFP transforms with intrinsic log-dets.

`tfd.TransformedDistribution.log_prob` asks the base distribution for a
*tangent space* and lets it decide how a bijector changes the density. TFP's
`SphericalUniform`, `VonMisesFisher` and `PowerSpherical` answer with
`SphericalSpace`, which differentiates `bijector.forward` along a basis of the
sphere (JVPs). For an IRCPM that is both slow (a solve per JVP) and wrong for
training: the JVP of the IFT-differentiated solve is exact, but its derivative
with respect to ψ's variables is a second-order derivative of the solve, which
the implicit function theorem at first order does not provide. `tfb.Chain`
inherits that default, so a Chain of IRCPMs over a spherical base goes down
that path even though every IRCPM overrides its own density correction.

`IntrinsicSpace` instead states the convention every bijector of this package
follows: `forward_log_det_jacobian` already *is* the log-density change with
respect to the manifold's Riemannian volume (the intrinsic log|det E_yᵀ J E_x|
of Eq. 4). Bases reporting it make TFP call `forward_log_det_jacobian`, which
for a `tfb.Chain` is the sum of its parts' intrinsic log-dets.
"""

import warnings
import weakref

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.experimental import tangent_spaces

from tfp_ircpm import _lazy

tfb = tfp.bijectors
tfd = tfp.distributions


# Plain TFP chains already warned about (see `_warn_plain_chain`).
_WARNED_CHAINS = weakref.WeakSet()


def _warn_plain_chain(f) -> None:
  """Warns once per plain `tfb.Chain` (or other composition) of IRCPMs.

  TFP caches a chain's results by tensor identity and never checks them
  again: after a training step `log_prob` of a tensor seen before returns
  the old density, and `log_prob` of samples drawn outside a gradient tape
  has the wrong gradient. `tfp_ircpm.bijectors.Chain` validates its cache.
  """
  # Imported here: bijectors import the manifolds, which import this module.
  from tfp_ircpm.bijectors import chain as chain_lib  # pylint: disable=g-import-not-at-top
  from tfp_ircpm.bijectors import ircpm as ircpm_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(f, tfb.Composition) or isinstance(f, chain_lib.Chain):
    return
  if f in _WARNED_CHAINS:
    return
  if not any(isinstance(b, ircpm_lib.IRCPM) for b in f.bijectors):
    return
  _WARNED_CHAINS.add(f)
  warnings.warn(
      f'{f.name}: a plain tfb.Chain of IRCPMs. TFP caches its results by '
      'tensor identity without checking them, so after a training step '
      'log_prob of a tensor it has seen returns the old density, and the '
      'gradient of log_prob of samples drawn outside a GradientTape is wrong. '
      'Use tfp_ircpm.bijectors.Chain (or tfp_ircpm.training.ircpm_flow).',
      UserWarning, stacklevel=4)


class IntrinsicSpace(tangent_spaces.TangentSpace):
  """Tangent space of a Riemannian manifold with orthonormal (unit-volume) basis.

  The density correction of any dimension-preserving bijector of the manifold
  onto itself is its intrinsic `forward_log_det_jacobian`, and the result stays
  in this space.
  """

  def _transform_general(self, x, f, **kwargs):
    return self._transform_dimension_preserving(x, f, **kwargs)

  def _transform_dimension_preserving(self, x, f, **kwargs):
    _warn_plain_chain(f)
    return f.forward_log_det_jacobian(x, **kwargs), self

  def _transform_coordinatewise(self, x, f, **kwargs):
    return self._transform_dimension_preserving(x, f, **kwargs)


class SphericalUniform(tfd.SphericalUniform):
  """`tfd.SphericalUniform` whose tangent space is `IntrinsicSpace`.

  Same sampler, same density 1/|S^n| with respect to the sphere's volume
  measure; only the rule TFP uses to push the density through bijectors
  changes (see the module docstring).
  """

  def _experimental_tangent_space(self, x):
    del x
    return IntrinsicSpace()


class _IntrinsicMixin:

  def _experimental_tangent_space(self, x):
    del x
    return IntrinsicSpace()


class VonMisesFisher(_IntrinsicMixin, tfd.VonMisesFisher):
  """`tfd.VonMisesFisher` reporting `IntrinsicSpace` (use as an IRCPM base)."""


class PowerSpherical(_IntrinsicMixin, tfd.PowerSpherical):
  """`tfd.PowerSpherical` reporting `IntrinsicSpace` (use as an IRCPM base)."""


class MixtureSameFamily(_IntrinsicMixin, tfd.MixtureSameFamily):
  """`tfd.MixtureSameFamily` reporting `IntrinsicSpace` (use as an IRCPM base).

  A mixture of densities on the manifold is a density with respect to the
  same volume measure as its components, so the intrinsic log-dets of the
  bijectors above it apply unchanged.
  """


def vmf_mixture(mean_directions, concentration=50., logits=None,
                dtype=tf.float32, validate_args: bool = False,
                name: str = 'vmf_mixture') -> MixtureSameFamily:
  """A trainable mixture of K von Mises–Fisher densities on S^n.

  p(x) = Σ_k softmax(logits)_k C_n(κ_k) exp(κ_k μ_kᵀx), a density with
  respect to the sphere's volume measure (as `tfd.VonMisesFisher`'s is).

  The parameters are variables in unconstrained form, so any gradient step
  keeps them valid: the mean directions are stored as free vectors m_k and
  used as m_k/‖m_k‖ (a `DeferredTensor`), the concentrations through
  exp (a `TransformedVariable`), and the weights as logits. Centres started
  at data points (e.g. K training points) make a maximum-likelihood fit fast.

  Args:
    mean_directions: initial centres, [K, n+1] (normalised here).
    concentration: initial κ > 0, scalar or [K].
    logits: initial mixture logits [K] (default: equal weights).
    dtype: dtype of the variables.
    validate_args: passed to the TFP distributions.
    name: name scope of the variables.

  Returns:
    A `MixtureSameFamily` over `tfd.VonMisesFisher` components with event
    shape [n+1], whose `trainable_variables` are the three variables.
  """
  centres = np.asarray(mean_directions, dtype=tf.as_dtype(dtype).as_numpy_dtype)
  if centres.ndim != 2 or centres.shape[0] < 1 or centres.shape[1] < 2:
    raise ValueError('mean_directions must have shape [K, n+1] with K >= 1, '
                     f'n >= 1; got {centres.shape}.')
  norms = np.linalg.norm(centres, axis=-1, keepdims=True)
  if not np.all(np.isfinite(centres)) or np.any(norms == 0.):
    raise ValueError('mean_directions must be finite and non-zero.')
  k = centres.shape[0]
  kappa = np.broadcast_to(np.asarray(concentration, centres.dtype), [k])
  if not np.all(np.isfinite(kappa)) or np.any(kappa <= 0.):
    raise ValueError(f'concentration must be > 0, got {concentration}.')
  with tf.name_scope(name):
    means = tf.Variable(centres / norms, name='mean_directions')
    kappa = tfp.util.TransformedVariable(kappa, tfb.Exp(),
                                         name='concentration')
    logits = tf.Variable(np.zeros([k], centres.dtype) if logits is None
                         else np.asarray(logits, centres.dtype),
                         name='logits')
  # Normalising on use, rather than projecting after each step, keeps the
  # optimiser's state meaningful and needs no constraint callback.
  directions = tfp.util.DeferredTensor(
      means, lambda m: m / tf.norm(m, axis=-1, keepdims=True))
  return MixtureSameFamily(
      tfd.Categorical(logits=logits, validate_args=validate_args),
      tfd.VonMisesFisher(directions, kappa, validate_args=validate_args),
      validate_args=validate_args, name=name)


# `SymmetricMeanField`, `symmetric_mean_field_mixture` and the special
# functions of their normalisers live in `tfp_ircpm.lattice.bases` (which
# builds on the classes above and on the manifolds, and the manifolds import
# this module, so importing them here at module level would be circular);
# these names resolve to them on first use.

__getattr__, __dir__ = _lazy.reexport(
    globals(), 'tfp_ircpm.lattice.bases',
    ['SymmetricMeanField', 'log_bessel_i0', 'log_sinh', 'log_sinhc',
     'symmetric_mean_field_mixture'])
