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
from tensorflow_probability.python.internal import dtype_util
from tensorflow_probability.python.internal import parameter_properties
from tensorflow_probability.python.internal import samplers
from tensorflow_probability.python.internal import tensor_util

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


class SymmetricMeanField(_IntrinsicMixin, tfd.Distribution):
  """Mean field averaged over the global symmetry: a base for lattice spins.

  N sites, each an i.i.d. von Mises (XY, `spin_dim=2`) or von Mises–Fisher
  (O(3), `spin_dim=3`) spin about a *common* direction μ, with μ itself
  uniform on S^{n-1} and marginalised in closed form:

      p(s) = ∫ Π_i C_n(κ) exp(κ μ·sᵢ) dμ/|S^{n-1}|
           = C_n(κ)^N · ₀F̃₁(κ|M|),    M = Σᵢ sᵢ,

  with ₀F̃₁(z) = I₀(z) for n = 2 and sinh(z)/z for n = 3 (the mean of
  exp(z μ·e) over the unit sphere), and C_n(κ) the von Mises(–Fisher)
  normaliser: 1/(2π I₀(κ)) resp. κ/(4π sinh κ). The density is with respect
  to the manifold's volume (Lebesgue measure of the angles on T^N, the
  product of sphere areas on (S²)^N), as `Torus.uniform`'s and
  `tfd.VonMisesFisher`'s are.

  Why: the symmetry-broken mean field (independent sites about a fixed μ)
  is not invariant, so a flow over it is not, and its importance weights
  vanish away from the chosen μ; the uniform base is invariant but has
  |M|²/N = 1, where an ordered phase has |M|²/N of order N. Averaging the
  mean field over the orbit keeps both: the density depends on s only
  through |M|, so it is invariant under the global symmetry (U(1) shifts,
  resp. rotations) and under every permutation of sites (lattice
  translations included), and a flow of IRCPMs with invariant ψ over it
  stays invariant (Lemma 1), while ⟨|M|²⟩/N = 1 + (N − 1) A_n(κ)² with
  A_n = ⟨μ·s⟩ (I₁/I₀(κ), resp. coth κ − 1/κ).

  Sampling is reparameterised in κ (TFP's von Mises(–Fisher) samplers; μ
  has no parameter).

  Args:
    num_sites: N.
    spin_dim: 2 (points are angles [..., N] in [0, 2π) on `Torus(N)`) or 3
      (unit vectors site by site, [..., 3N], on `Power(Sphere(2), N)`).
    concentration: κ > 0, float Tensor or variable; its shape is the batch
      shape.
    validate_args: check κ > 0, and that `log_prob`'s points lie on the
      manifold.
    allow_nan_stats: as for every TFP distribution.
    name: name scope.
  """

  def __init__(self, num_sites: int, spin_dim: int, concentration,
               validate_args: bool = False, allow_nan_stats: bool = True,
               name: str = 'SymmetricMeanField'):
    parameters = dict(locals())
    if int(num_sites) != num_sites or num_sites < 1:
      raise ValueError(f'num_sites must be an integer >= 1, got {num_sites}.')
    if spin_dim not in (2, 3):
      raise ValueError(f'spin_dim must be 2 (XY) or 3 (O(3)), got {spin_dim}.')
    self._num_sites = int(num_sites)
    self._spin_dim = int(spin_dim)
    with tf.name_scope(name) as name:
      dtype = dtype_util.common_dtype([concentration], tf.float32)
      self._concentration = tensor_util.convert_nonref_to_tensor(
          concentration, dtype=dtype, name='concentration')
      super().__init__(
          dtype=dtype,
          reparameterization_type=tfd.FULLY_REPARAMETERIZED,
          validate_args=validate_args, allow_nan_stats=allow_nan_stats,
          parameters=parameters, name=name)

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    return dict(concentration=parameter_properties.ParameterProperties(
        default_constraining_bijector_fn=(
            lambda: tfb.Softplus(low=dtype_util.eps(dtype)))))

  @property
  def num_sites(self) -> int:
    return self._num_sites

  @property
  def spin_dim(self) -> int:
    return self._spin_dim

  @property
  def concentration(self):
    return self._concentration

  @property
  def manifold(self):
    """`Torus(N)` (XY) or `Power(Sphere(2), N)` (O(3))."""
    # Imported here: the manifolds import this module for their uniforms.
    from tfp_ircpm.manifolds import power, sphere, torus  # pylint: disable=g-import-not-at-top
    if self._spin_dim == 2:
      return torus.Torus(self._num_sites)
    return power.Power(sphere.Sphere(2), self._num_sites)

  def _event_shape(self):
    # XY points are angles (one per site), O(3) points unit 3-vectors.
    return tf.TensorShape([self._num_sites * (1 if self._spin_dim == 2 else 3)])

  def _event_shape_tensor(self):
    return tf.constant(self._event_shape().as_list(), tf.int32)

  def _sample_n(self, n, seed=None):
    dir_seed, site_seed = samplers.split_seed(seed, salt='SymmetricMeanField')
    kappa = tf.convert_to_tensor(self._concentration)
    batch = self._batch_shape_tensor(concentration=kappa)
    sites = tf.concat([[n], batch, [self._num_sites]], 0)
    kappa = kappa[..., tf.newaxis]
    if self._spin_dim == 2:
      two_pi = tf.constant(2. * np.pi, self.dtype)
      phi = samplers.uniform(tf.concat([[n], batch, [1]], 0), maxval=two_pi,
                             dtype=self.dtype, seed=dir_seed)
      # tfd.VonMises samples in [-π, π] with implicit reparameterisation.
      eps = tfd.VonMises(tf.zeros([], self.dtype),
                         tf.broadcast_to(kappa, sites)).sample(seed=site_seed)
      theta = phi + eps
      return theta - two_pi * tf.floor(theta / two_pi)
    mu = tfd.SphericalUniform(3, dtype=self.dtype).sample(
        tf.concat([[n], batch, [1]], 0), seed=dir_seed)
    s = tfd.VonMisesFisher(
        tf.broadcast_to(mu, tf.concat([sites, [3]], 0)),
        tf.broadcast_to(kappa, sites)).sample(seed=site_seed)
    return tf.reshape(s, tf.concat([[n], batch, [3 * self._num_sites]], 0))

  def _log_prob(self, x):
    kappa = tf.convert_to_tensor(self._concentration)
    n = tf.cast(self._num_sites, self.dtype)
    if self._spin_dim == 2:
      m = tf.stack([tf.reduce_sum(tf.cos(x), -1), tf.reduce_sum(tf.sin(x), -1)],
                   -1)
      return (log_bessel_i0(kappa * tf.norm(m, axis=-1))
              - n * (np.log(2. * np.pi) + log_bessel_i0(kappa)))
    s = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self._num_sites, 3]], 0))
    r = tf.norm(tf.reduce_sum(s, -2), axis=-1)
    return (log_sinhc(kappa * r)
            + n * (tf.math.log(kappa) - np.log(4. * np.pi) - log_sinh(kappa)))

  def _parameter_control_dependencies(self, is_init):
    if not self.validate_args:
      return []
    if is_init != tensor_util.is_ref(self._concentration):
      return [tf.debugging.assert_positive(
          self._concentration, message='concentration must be positive.')]
    return []

  def _sample_control_dependencies(self, x):
    if not self.validate_args:
      return []
    return self.manifold.membership_assertions(x)


def log_bessel_i0(z: tf.Tensor) -> tf.Tensor:
  """log I₀(z) for z >= 0, finite for every z (I₀ itself overflows at ~88).

  Via the exponentially scaled I₀ of `tfp.math.bessel_ive`: log I₀(z) =
  log ive(0, z) + z. Its gradient is I₁/I₀(z), finite at z = 0.
  """
  return tf.math.log(tfp.math.bessel_ive(tf.zeros([], z.dtype), z)) + z


def log_sinh(z: tf.Tensor) -> tf.Tensor:
  """log sinh(z) for z > 0 without overflow: z + log1p(−e^{−2z}) − log 2."""
  return z + tf.math.log(-tf.math.expm1(-2. * z)) - np.log(2.)


def log_sinhc(z: tf.Tensor) -> tf.Tensor:
  """log(sinh(z)/z) for z >= 0, finite with finite gradients at z = 0.

  Below 1e-2 the two-term series z²/6 − z⁴/180 (error O(z⁶) < 1e-12);
  above, `log_sinh(z) − log z`. The double `tf.where` keeps the unused
  branch's gradient from seeing z = 0.
  """
  small = z < 1e-2
  safe = tf.where(small, tf.ones_like(z), z)
  z2 = tf.square(z)
  return tf.where(small, z2 / 6. - tf.square(z2) / 180.,
                  log_sinh(safe) - tf.math.log(safe))


def symmetric_mean_field_mixture(num_sites: int, spin_dim: int,
                                 concentrations, dtype=tf.float32,
                                 validate_args: bool = False,
                                 name: str = 'symmetric_mean_field_mixture'
                                 ) -> MixtureSameFamily:
  """An equal-weight mixture of `SymmetricMeanField`s with trainable κ_k.

  p(s) = (1/K) Σ_k SymmetricMeanField(s; κ_k): still invariant under the
  global symmetry and site permutations. Why a mixture: one κ fixes the
  magnetisation |M|/N ≈ A(κ) to within O(1/√N), while near a transition a
  finite lattice's |M| is broad (XY, L = 8, β = 0.9: |M|/N from 0.35 to
  0.75 among heat-bath states). A single-κ base puts its disordered,
  vortex-rich states many standard deviations out, and those states then
  dominate KL(p‖q) (measured: log p/q of +5 to +12 nats on the 15% of
  states with >= 6 vortices). Mixing κ's spreads |M| at the base.

  The weights are fixed (equal): samples are drawn by component and are
  then reparameterised in κ_k only, so the pathwise gradient is exact for
  κ but would miss the score term of trainable weights.

  Args:
    num_sites: N.
    spin_dim: 2 (XY angles) or 3 (O(3) unit vectors), as `SymmetricMeanField`.
    concentrations: initial κ_k > 0, [K].
    dtype: dtype of the variable.
    validate_args: passed to the distributions.
    name: name scope of the variable.

  Returns:
    A `MixtureSameFamily` (intrinsic tangent space) whose
    `trainable_variables` are the κ's (softplus-transformed).
  """
  kappa = np.asarray(concentrations, tf.as_dtype(dtype).as_numpy_dtype)
  if kappa.ndim != 1 or not kappa.size:
    raise ValueError(f'concentrations must be a non-empty vector, got shape '
                     f'{kappa.shape}.')
  if not np.all(np.isfinite(kappa)) or np.any(kappa <= 0.):
    raise ValueError(f'concentrations must be > 0, got {concentrations}.')
  with tf.name_scope(name):
    kappa = tfp.util.TransformedVariable(kappa, tfb.Softplus(),
                                         name='concentrations')
  return MixtureSameFamily(
      tfd.Categorical(logits=tf.zeros([kappa.shape[0]], dtype)),
      SymmetricMeanField(num_sites, spin_dim, kappa,
                         validate_args=validate_args),
      validate_args=validate_args, name=name)
