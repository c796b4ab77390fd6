"""Lattice targets: nearest-neighbour O(n) models on the periodic L×L lattice.

u(s) = −β Σ_⟨ij⟩ sᵢ·sⱼ over the lattice's 2L² bonds (see `Lattice`), with
unit spins: the XY model (`xy_model`, angles on T^{L²}) and the O(3)
non-linear sigma model (`o3_model`, unit vectors on (S²)^{L²}).
"""

import functools
import math
import warnings
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfp_ircpm import targets as targets_lib
from tfp_ircpm.lattice import lattice as lattice_lib
from tfp_ircpm.manifolds import base
from tfp_ircpm.manifolds import torus as torus_lib


class LatticeTarget(targets_lib.Target):
  """p ∝ e^{-u} for a nearest-neighbour O(n) model on an L×L torus lattice.

  u(s) = -β Σ_⟨ij⟩ sᵢ·sⱼ with unit spins sᵢ ∈ S^{n-1}: XY (n = 2, angles)
  or O(3) (n = 3, unit vectors). Observables are per configuration:
  `energy_per_site` = -Σ_⟨ij⟩ sᵢ·sⱼ / L² and `magnetisation` = Σᵢ sᵢ; the
  susceptibility is χ = ⟨|M|²⟩ / L² (⟨M⟩ = 0 by the global symmetry).

  There is no quadrature above tiny lattices, so `log_normalizer` raises
  unless `quadrature` is given.

  Args:
    lattice: the `Lattice` (its size, spin kind, manifold and bonds).
    beta: β >= 0.
    quadrature: as for `Target`, or None.
    name: a short identifier (default '{spin}_L{size}').

  The former signature `LatticeTarget(manifold, lattice_size, beta,
  spin_dim, quadrature, name)` still works, with a `DeprecationWarning`.
  """

  def __init__(self, lattice, beta, quadrature: Optional[Callable] = None,
               name: Optional[str] = None, *legacy):
    manifold = None
    if isinstance(lattice, base.Manifold):
      warnings.warn(
          'LatticeTarget(manifold, lattice_size, beta, spin_dim, quadrature, '
          'name) is deprecated: pass LatticeTarget(Lattice(size, spin), beta, '
          'quadrature, name).', DeprecationWarning, stacklevel=2)
      args = (lattice, beta, quadrature, name) + legacy
      if len(args) != 6:
        raise TypeError('The deprecated LatticeTarget signature takes '
                        '(manifold, lattice_size, beta, spin_dim, quadrature, '
                        'name).')
      manifold, size, beta, spin_dim, quadrature, name = args
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        lattice = lattice_lib.Lattice(size, lattice_lib.canonical_spin(
            spin_dim))
      if manifold.ambient_dim != lattice.ambient_dim:
        raise ValueError(f'{manifold} does not hold the points of {lattice}.')
    elif legacy:
      raise TypeError(f'LatticeTarget takes at most 4 arguments, got '
                      f'{4 + len(legacy)}.')
    self.lattice = lattice_lib.as_lattice(lattice)
    self.lattice_size = self.lattice.size
    self.beta = float(beta)
    super().__init__(manifold or self.lattice.manifold, self._energy_fn,
                     quadrature, name or f'{self.lattice.spin}_L'
                     f'{self.lattice.size}')

  @property
  def spin(self) -> str:
    """'xy' or 'o3'."""
    return self.lattice.spin

  @property
  def spin_dim(self) -> int:
    """Components of a spin vector: 2 (XY) or 3 (O(3))."""
    return self.lattice.spin_dim

  @property
  def num_sites(self) -> int:
    return self.lattice.num_sites

  def spins(self, x: tf.Tensor) -> tf.Tensor:
    """Unit spins [..., L, L, n] from points [..., ambient_dim]."""
    return self.lattice.spins(x)

  def bond_sum(self, x: tf.Tensor) -> tf.Tensor:
    """Σ_⟨ij⟩ sᵢ·sⱼ, [...]."""
    return self.lattice.bond_sum(x)

  def _energy_fn(self, x: tf.Tensor) -> tf.Tensor:
    self.manifold._check_event_size(x, self.name)  # pylint: disable=protected-access
    return -tf.constant(self.beta, x.dtype) * self.bond_sum(x)

  def energy_per_site(self, x: tf.Tensor) -> tf.Tensor:
    """-Σ_⟨ij⟩ sᵢ·sⱼ / L² (no β), [...]."""
    return -self.bond_sum(x) / float(self.num_sites)

  def magnetisation(self, x: tf.Tensor) -> tf.Tensor:
    """M = Σᵢ sᵢ, [..., n]."""
    return tf.reduce_sum(self.spins(x), axis=[-3, -2])

  def vorticity(self, x: tf.Tensor) -> tf.Tensor:
    """XY winding number of every plaquette, [..., L, L] (integer-valued).

    Plaquette (r, c) has corners (r, c), (r, c+1), (r+1, c+1), (r+1, c); its
    winding is the sum of the wrapped angle differences around it over 2π.
    On the periodic lattice the windings sum to 0. Vortices are the
    disordered phase's topological defects (free above T_BKT): a flow that
    under-samples them shows it here before anywhere else.
    """
    if self.spin != 'xy':
      raise ValueError("vorticity is defined for XY spins (spin='xy').")
    lattice = self.lattice
    a = lattice.grid(x)
    b = lattice.right(a)              # (r, c+1)
    c = lattice.lower(b)              # (r+1, c+1)
    d = lattice.lower(a)              # (r+1, c)
    loop = sum(torus_lib.wrap(v - u) for u, v in ((a, b), (b, c), (c, d),
                                                   (d, a)))
    return tf.round(loop / (2. * np.pi))

  def vortex_count(self, x: tf.Tensor) -> tf.Tensor:
    """Σ |winding| over plaquettes (vortices plus antivortices), [...]."""
    return tf.reduce_sum(tf.abs(self.vorticity(x)), axis=[-2, -1])

  @functools.cached_property
  def log_normalizer(self) -> float:
    if self._quadrature is None:
      raise ValueError(
          f'{self.name}: log Z has no quadrature on a {self.lattice_size}x'
          f'{self.lattice_size} lattice; use importance-sampling estimates '
          '(e.g. tfp_ircpm.lattice.heat_bath / the lattice example) instead.')
    return super().log_normalizer


def _check_lattice(lattice_size: int, beta: float):
  if int(lattice_size) != lattice_size or lattice_size < 2:
    raise ValueError(f'lattice_size must be an integer >= 2, got '
                     f'{lattice_size}.')
  if not math.isfinite(beta) or beta < 0.:
    raise ValueError(f'beta must be finite and >= 0, got {beta}.')


def xy_model(lattice_size: int, beta: float) -> LatticeTarget:
  """2-D XY model u(θ) = -β Σ_⟨ij⟩ cos(θᵢ − θⱼ) on T^{L²} (periodic L×L).

  Points are angles [..., L²] in row-major site order. For L = 2 (T⁴) log Z
  is computed by a 24⁴ midpoint rule (spectrally accurate); above, none.
  """
  _check_lattice(lattice_size, beta)
  lattice = lattice_lib.Lattice(int(lattice_size), 'xy')
  quadrature = (functools.partial(targets_lib.torus_grid, 24, 4)
                if lattice.num_sites == 4 else None)
  return LatticeTarget(lattice, beta, quadrature, f'xy_L{lattice_size}')


def o3_model(lattice_size: int, beta: float) -> LatticeTarget:
  """O(3) non-linear sigma model u(s) = -β Σ_⟨ij⟩ sᵢ·sⱼ on (S²)^{L²}.

  Points are unit vectors concatenated site by site, [..., 3L²]: the
  manifold is `Power(Sphere(2), L²)`, which equals `Product([Sphere(2)] * L²)`
  but runs each operation once on [..., L², 3], so graphs (and the traces of
  solves and log-dets) do not grow with L².
  """
  _check_lattice(lattice_size, beta)
  lattice = lattice_lib.Lattice(int(lattice_size), 'o3')
  return LatticeTarget(lattice, beta, None, f'o3_L{lattice_size}')


MODELS = {'xy': xy_model, 'o3': o3_model}


def lattice_model(lattice_size: int, beta: float, spin: str = 'xy'
                  ) -> LatticeTarget:
  """`xy_model` or `o3_model` by `spin`."""
  return MODELS[lattice_lib.canonical_spin(spin)](lattice_size, beta)


__all__ = ['LatticeTarget', 'MODELS', 'lattice_model', 'o3_model', 'xy_model']
