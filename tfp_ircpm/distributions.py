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

import tensorflow_probability as tfp
from tensorflow_probability.python.experimental import tangent_spaces

tfd = tfp.distributions


class IntrinsicSpace(tangent_spaces.TangentSpace):
  """Tangent space of a Riemannian manifold with orthonormal (unit-volume) basis.

  The density correction of any dimension-preserving bijector of the manifold
  onto itself is its intrinsic `forward_log_det_jacobian`, and the result stays
  in this space.
  """

  def _transform_general(self, x, f, **kwargs):
    return f.forward_log_det_jacobian(x, **kwargs), self

  def _transform_dimension_preserving(self, x, f, **kwargs):
    return f.forward_log_det_jacobian(x, **kwargs), self

  def _transform_coordinatewise(self, x, f, **kwargs):
    return f.forward_log_det_jacobian(x, **kwargs), self


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
