"""Target densities p ∝ e^{-u} on tori and spheres, with quadrature normalisers.

Each `Target` has an energy u(x), `unnormalized_log_prob` = -u, and
`log_normalizer` = log ∫ e^{-u} dvol (Riemannian volume: the measure all
log_probs of this package use), computed once by quadrature in float64 and
cached, so `log_prob` is normalised and KL values are absolute.

Torus targets (Sec. 5.1, Table 1). The paper prints u₁ = sin(π(x₁ − x₂)) and
u₃ = 1.4 sin(2πx₁/3) sin(2πx₂/3); neither is 2π-periodic, so neither is a
function on T². We use the periodic forms with the described structure:

* u₁(θ) = sin(2(θ₁ − θ₂)): invariant under the diagonal shift θ ↦ θ + c·1
  (the U(1) symmetry the paper describes), multimodal (two ridges of high
  density along θ₁ − θ₂ = 3π/4, 7π/4);
* u₂: the multimodal target of Rezende et al. 2020 (Table 2),
  p ∝ Σᵢ exp(cos(θ₁ − φᵢ₁) + cos(θ₂ − φᵢ₂)), φ = (0.21, 2.85), (1.89, 6.18),
  (3.77, 1.56): three modes;
* u₃(θ) = 1.4 sin(2θ₁) sin(2θ₂): eight modes, where sin 2θ₁ sin 2θ₂ = −1,
  as the paper's "8 modes".

Sphere target (Sec. 5.2, Eq. 10): p(x) ∝ Σₖ exp(10 μₖᵀx), μₖ = (sin φₖ cos θₖ,
sin φₖ sin θₖ, cos φₖ), θ = (1.5, 1.0, 5.0, 4.0), φ = (0.7, −1, 0.6, −0.7) +
π/2: the form of the RCPM reference code (the printed (0.6, 0.5) does not
reproduce the published figure).
"""

import functools
import math
from typing import Callable

import numpy as np
import tensorflow as tf

from tfp_ircpm import _lazy
from tfp_ircpm.manifolds import base
from tfp_ircpm.manifolds import sphere as sphere_lib
from tfp_ircpm.manifolds import torus as torus_lib


class Target(tf.Module):
  """p(x) = e^{-u(x)} / Z on a manifold.

  Args:
    manifold: the `Manifold`.
    energy: u, points [..., ambient_dim] → [...]; must accept float64 numpy
      arrays converted to tensors (for the quadrature).
    quadrature: callable returning (points [K, ambient] float64, weights [K])
      with Σ weights f(points) ≈ ∫ f dvol.
    name: a short identifier.
  """

  def __init__(self, manifold: base.Manifold,
               energy: Callable[[tf.Tensor], tf.Tensor],
               quadrature: Callable[[], tuple], name: str):
    super().__init__(name=name)
    self.manifold = manifold
    self._energy = energy
    self._quadrature = quadrature

  def energy(self, x: tf.Tensor) -> tf.Tensor:
    """u(x), [...]."""
    return self._energy(x)

  def unnormalized_log_prob(self, x: tf.Tensor) -> tf.Tensor:
    return -self._energy(x)

  @functools.cached_property
  def log_normalizer(self) -> float:
    """log Z = log ∫ e^{-u} dvol, by quadrature in float64 (computed once)."""
    points, weights = self._quadrature()
    neg_u = -self._energy(tf.constant(points, tf.float64)).numpy()
    top = np.max(neg_u)
    return float(top + np.log(np.sum(weights * np.exp(neg_u - top))))

  def log_prob(self, x: tf.Tensor) -> tf.Tensor:
    """Normalised log-density with respect to the Riemannian volume."""
    return -self._energy(x) - tf.constant(self.log_normalizer, x.dtype)


def torus_grid(n: int = 512, dim: int = 2):
  """Midpoint rule on [0, 2π)^dim: spectrally accurate for smooth periodic f."""
  g = (np.arange(n) + 0.5) * 2. * math.pi / n
  mesh = np.meshgrid(*([g] * dim), indexing='ij')
  points = np.stack([m.ravel() for m in mesh], axis=-1)
  return points, np.full(len(points), (2. * math.pi / n) ** dim)


def sphere_grid(n_polar: int = 400, n_azimuth: int = 800):
  """Gauss-Legendre in z = cos(polar) × midpoint rule in azimuth on S².

  dvol = dz dφ, so the weights are w_z · 2π/n_azimuth.
  """
  z, wz = np.polynomial.legendre.leggauss(n_polar)
  phi = (np.arange(n_azimuth) + 0.5) * 2. * math.pi / n_azimuth
  zz, pp = np.meshgrid(z, phi, indexing='ij')
  r = np.sqrt(1. - zz ** 2)
  points = np.stack([r * np.cos(pp), r * np.sin(pp), zz], -1).reshape(-1, 3)
  weights = (wz[:, None] * np.full(n_azimuth, 2. * math.pi / n_azimuth)).ravel()
  return points, weights


# -- T² ---------------------------------------------------------------------

def _u1(theta):
  return tf.sin(2. * (theta[..., 0] - theta[..., 1]))


_U2_PHI = ((0.21, 2.85), (1.89, 6.18), (3.77, 1.56))


def _u2(theta):
  phi = tf.constant(_U2_PHI, theta.dtype)                 # [3, 2]
  terms = tf.reduce_sum(tf.cos(theta[..., None, :] - phi), axis=-1)
  return -tf.reduce_logsumexp(terms, axis=-1)


def _u3(theta):
  return 1.4 * tf.sin(2. * theta[..., 0]) * tf.sin(2. * theta[..., 1])


def torus_u1() -> Target:
  """u₁ = sin(2(θ₁ − θ₂)), with the diagonal U(1) symmetry."""
  return Target(torus_lib.Torus(2), _u1, torus_grid, 'torus_u1')


def torus_u2() -> Target:
  """u₂: three von Mises bumps (Rezende et al. 2020, multimodal)."""
  return Target(torus_lib.Torus(2), _u2, torus_grid, 'torus_u2')


def torus_u3() -> Target:
  """u₃ = 1.4 sin(2θ₁) sin(2θ₂)."""
  return Target(torus_lib.Torus(2), _u3, torus_grid, 'torus_u3')


def _pair_energy(theta):
  """Bivariate von Mises cosine model on (θ_a, θ_b): −cos θ_a − cos θ_b
  − 3 cos(θ_a − θ_b − π/2), strongly correlated."""
  a, b = theta[..., 0], theta[..., 1]
  return -(tf.cos(a) + tf.cos(b) + 3. * tf.cos(a - b - math.pi / 2.))


class _PairProduct(Target):
  """Σ of `_pair_energy` over disjoint pairs (θ_0, θ_1), (θ_2, θ_3), …:
  a product of independent T² factors, so log Z = (n/2) log Z₂ with Z₂ by
  quadrature on T², in any dimension n."""

  @functools.cached_property
  def log_normalizer(self) -> float:
    pair = Target(torus_lib.Torus(2), _pair_energy, torus_grid, 'pair')
    return self.manifold.dim // 2 * pair.log_normalizer


def _pairs_energy(theta):
  pairs = tf.reshape(theta, tf.concat([tf.shape(theta)[:-1], [-1, 2]], 0))
  return tf.reduce_sum(_pair_energy(pairs), axis=-1)


def torus_correlated_pairs(dim: int) -> Target:
  """Tⁿ (n even): independent, strongly correlated pairs of angles, each a
  bivariate von Mises cosine model, with an exact log Z in any dimension
  (for benchmarks at n = 8, 32 where quadrature over Tⁿ is out of reach)."""
  if dim < 2 or dim % 2:
    raise ValueError(f'dim must be even and >= 2, got {dim}.')
  return _PairProduct(torus_lib.Torus(dim), _pairs_energy, None,
                      f'torus_correlated_pairs_{dim}')


# -- S² ---------------------------------------------------------------------

_S2_THETA = (1.5, 1.0, 5.0, 4.0)
_S2_PHI = tuple(p + math.pi / 2 for p in (0.7, -1.0, 0.6, -0.7))


def sphere_modes() -> np.ndarray:
  """The four μₖ of the S² target, [4, 3]."""
  th, ph = np.array(_S2_THETA), np.array(_S2_PHI)
  return np.stack([np.sin(ph) * np.cos(th), np.sin(ph) * np.sin(th),
                   np.cos(ph)], -1)


def _u_s2(x):
  mus = tf.constant(sphere_modes(), x.dtype)
  return -tf.reduce_logsumexp(10. * tf.linalg.matvec(mus, x),
                              axis=-1)


def sphere_four_modes() -> Target:
  """p ∝ Σₖ exp(10 μₖᵀx) on S² (Eq. 10, RCPM reference form)."""
  return Target(sphere_lib.Sphere(2), _u_s2, sphere_grid, 'sphere_four_modes')


TARGETS = {
    'u1': torus_u1,
    'u2': torus_u2,
    'u3': torus_u3,
    's2': sphere_four_modes,
}


# -- Lattice models -----------------------------------------------------------
#
# `LatticeTarget`, `xy_model` and `o3_model` live in `tfp_ircpm.lattice`
# (built on `Target` above, so importing them here at module level would be
# circular); these names resolve to them on first use.

__getattr__, __dir__ = _lazy.reexport(
    globals(), 'tfp_ircpm.lattice.targets', ['LatticeTarget', '_check_lattice', 'o3_model',
                            'xy_model'])
