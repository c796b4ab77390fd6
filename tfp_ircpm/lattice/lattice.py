"""Spins on sites, and the periodic L×L lattice: the shared geometry.

Two kinds of spin, named by `spin`:

* 'xy': unit vectors of S¹, stored as angles θ ∈ [0, 2π), one per site; the
  points of N sites are [..., N] on `Torus(N)`;
* 'o3': unit vectors of S², stored as they are, site by site; the points of
  N sites are [..., 3N] on `Power(Sphere(2), N)` (the same manifold as
  `Product([Sphere(2)] * N)`, computed as one batched factor).

`Sites(num_sites, spin)` knows N, the spin kind, the manifold and the
conversions spins ⇄ points, with no geometry (what a base invariant under
every site permutation needs). `Lattice(size, spin)` adds the periodic L×L
lattice: site (a, b) at flat index a·L + b, each site bonded to its right
(a, b+1) and lower (a+1, b) neighbours, so Σ_⟨ij⟩ has 2L² terms (for L = 2
every pair is bonded twice: a 4-ring with coupling 2β; for L = 1 each site
is its own neighbour). Targets, potentials, bases and the heat bath all
take their sizes, neighbours and conversions from one of these.

The old vocabulary `spin_dim` (2 for XY, 3 for O(3)) is accepted, with a
`DeprecationWarning`, where it was public; `spin_dim` remains as the
read-only number of components of a spin vector.
"""

import functools
import warnings
from typing import Tuple, Union

import numpy as np
import tensorflow as tf

from tfp_ircpm.manifolds import base
from tfp_ircpm.manifolds import power as power_lib
from tfp_ircpm.manifolds import sphere as sphere_lib
from tfp_ircpm.manifolds import torus as torus_lib

SPINS = ('xy', 'o3')
_SPIN_DIM = {'xy': 2, 'o3': 3}
_SPIN_OF_DIM = {2: 'xy', 3: 'o3'}


def canonical_spin(spin=None, spin_dim=None, stacklevel: int = 3) -> str:
  """'xy' or 'o3' from `spin`, or from the deprecated `spin_dim` (2 or 3).

  An integer given as `spin` (the old positional `spin_dim`) is accepted
  with a `DeprecationWarning`, as is `spin_dim=`.

  Args:
    spin: 'xy' or 'o3' (or, deprecated, 2 or 3).
    spin_dim: deprecated alias: 2 (XY) or 3 (O(3)).
    stacklevel: of the warning, counted from the caller of this function.

  Raises:
    TypeError: both are given.
    ValueError: an unknown spin.
  """
  if spin_dim is not None:
    if spin is not None:
      raise TypeError('Pass spin (or the deprecated spin_dim), not both.')
    spin = spin_dim
  if isinstance(spin, (int, np.integer)) and not isinstance(spin, bool):
    warnings.warn("spin_dim (2 or 3) is deprecated: pass spin='xy' or "
                  "spin='o3'.", DeprecationWarning, stacklevel=stacklevel)
    if int(spin) not in _SPIN_OF_DIM:
      raise ValueError(f'spin_dim must be 2 (XY) or 3 (O(3)), got {spin}.')
    return _SPIN_OF_DIM[int(spin)]
  if spin not in SPINS:
    raise ValueError(f"spin must be 'xy' or 'o3', got {spin!r}.")
  return spin


def _batch_shape(x: tf.Tensor, event_ndims: int):
  """x's batch shape: static where known (keeps reshapes' static shapes)."""
  if x.shape.rank is not None:
    shape = x.shape[:x.shape.rank - event_ndims]
    if shape.is_fully_defined():
      return shape.as_list()
  return tf.shape(x)[:tf.rank(x) - event_ndims]


def _axis(t: tf.Tensor, axis: int) -> int:
  """A negative axis as a non-negative one where the rank is known.

  `tf.roll` with a negative axis differentiates wrongly under pfor (the
  vectorised Jacobians of log-dets and Hessians): the converter shifts the
  axis by the new leading dimension as if it counted from the front.
  """
  if axis < 0 and t.shape.rank is not None:
    return t.shape.rank + axis
  return axis


def _concat(batch, event):
  if isinstance(batch, list):
    return batch + list(event)
  return tf.concat([batch, tf.constant(list(event), batch.dtype)], 0)


class Sites:
  """N spins of one kind with no geometry: the manifold and spins ⇄ points.

  Args:
    num_sites: N >= 1.
    spin: 'xy' or 'o3'.
  """

  def __init__(self, num_sites: int, spin: str = 'xy'):
    if isinstance(num_sites, bool) or int(num_sites) != num_sites or (
        num_sites < 1):
      raise ValueError(f'num_sites must be an integer >= 1, got {num_sites}.')
    self._num_sites = int(num_sites)
    self._spin = canonical_spin(spin)

  def __repr__(self):
    return f'Sites({self._num_sites}, {self._spin!r})'

  def _key(self):
    return (self._num_sites, self._spin)

  def __eq__(self, other):
    return type(self) is type(other) and self._key() == other._key()  # pylint: disable=protected-access

  def __hash__(self):
    return hash((type(self).__name__,) + self._key())

  @property
  def num_sites(self) -> int:
    return self._num_sites

  @property
  def spin(self) -> str:
    """'xy' or 'o3'."""
    return self._spin

  @property
  def spin_dim(self) -> int:
    """Components of a spin vector: 2 (XY) or 3 (O(3))."""
    return _SPIN_DIM[self._spin]

  @property
  def site_dim(self) -> int:
    """Coordinates of one site's point: 1 (an angle) or 3 (a unit vector)."""
    return 1 if self._spin == 'xy' else 3

  @property
  def ambient_dim(self) -> int:
    return self._num_sites * self.site_dim

  @functools.cached_property
  def manifold(self) -> base.Manifold:
    """`Torus(N)` (XY) or `Power(Sphere(2), N)` (O(3))."""
    if self._spin == 'xy':
      return torus_lib.Torus(self._num_sites)
    return power_lib.Power(sphere_lib.Sphere(2), self._num_sites)

  def site_spins(self, x: tf.Tensor) -> tf.Tensor:
    """Unit spins [..., N, n] from points [..., ambient_dim]."""
    x = tf.convert_to_tensor(x)
    if self._spin == 'xy':
      return tf.stack([tf.cos(x), tf.sin(x)], -1)
    return tf.reshape(x, _concat(_batch_shape(x, 1), [self._num_sites, 3]))

  def site_points(self, spins: tf.Tensor) -> tf.Tensor:
    """Points [..., ambient_dim] from unit spins [..., N, n].

    XY angles come back in [0, 2π); O(3) vectors are taken as they are.
    """
    spins = tf.convert_to_tensor(spins)
    batch = _batch_shape(spins, 2)
    if self._spin == 'xy':
      theta = tf.math.floormod(tf.atan2(spins[..., 1], spins[..., 0]),
                               tf.constant(2. * np.pi, spins.dtype))
      return tf.reshape(theta, _concat(batch, [self._num_sites]))
    return tf.reshape(spins, _concat(batch, [3 * self._num_sites]))

  def magnetisation(self, x: tf.Tensor) -> tf.Tensor:
    """M = Σᵢ sᵢ, [..., n]."""
    return tf.reduce_sum(self.site_spins(x), axis=-2)

  def act(self, x: tf.Tensor, g) -> tf.Tensor:
    """The global symmetry on points [..., ambient_dim].

    XY: g is an angle (U(1)), θᵢ ↦ θᵢ + g mod 2π; O(3): g is a rotation
    [3, 3], sᵢ ↦ g sᵢ. Both are isometries of the manifold.
    """
    x = tf.convert_to_tensor(x)
    g = tf.convert_to_tensor(g, x.dtype)
    if self._spin == 'xy':
      return tf.math.floormod(x + g, tf.constant(2. * np.pi, x.dtype))
    s = self.site_spins(x)
    return self.site_points(tf.linalg.matvec(g, s))


class Lattice(Sites):
  """Spins on the periodic L×L lattice (see the module docstring).

  Grid tensors put the sites on two axes, [..., L, L, *trailing], row a
  before column b; `trailing` counts the axes after them (0 for XY angles,
  1 for spin vectors or feature channels).

  Args:
    size: L >= 1.
    spin: 'xy' or 'o3'.
  """

  def __init__(self, size: int, spin: str = 'xy'):
    if isinstance(size, bool) or int(size) != size or size < 1:
      raise ValueError(f'Lattice size must be an integer >= 1, got {size}.')
    super().__init__(int(size) ** 2, spin)
    self._size = int(size)

  def __repr__(self):
    return f'Lattice({self._size}, {self.spin!r})'

  @property
  def size(self) -> int:
    """L."""
    return self._size

  # -- neighbour structure (static, numpy) ------------------------------------

  def index(self, row, col):
    """Flat index of site (row, col), periodic: (row mod L)·L + col mod L."""
    l = self._size
    return (np.asarray(row) % l) * l + np.asarray(col) % l

  @functools.cached_property
  def coordinates(self) -> np.ndarray:
    """(row, col) of every site in flat order, [N, 2]."""
    l = self._size
    return np.stack(np.meshgrid(np.arange(l), np.arange(l), indexing='ij'),
                    -1).reshape(-1, 2)

  @functools.cached_property
  def right_neighbours(self) -> np.ndarray:
    """Flat index of each site's right neighbour (a, b+1), [N]."""
    a, b = self.coordinates.T
    return self.index(a, b + 1)

  @functools.cached_property
  def lower_neighbours(self) -> np.ndarray:
    """Flat index of each site's lower neighbour (a+1, b), [N]."""
    a, b = self.coordinates.T
    return self.index(a + 1, b)

  @functools.cached_property
  def neighbours(self) -> np.ndarray:
    """All four neighbours (right, lower, left, upper) of each site, [N, 4]."""
    a, b = self.coordinates.T
    return np.stack([self.index(a, b + 1), self.index(a + 1, b),
                     self.index(a, b - 1), self.index(a - 1, b)], -1)

  @functools.cached_property
  def bonds(self) -> np.ndarray:
    """The 2N bonds (i, j): every site to its right, then to its lower
    neighbour, [2N, 2]. Σ_⟨ij⟩ runs over these (with multiplicity)."""
    sites = np.arange(self.num_sites)
    return np.concatenate([
        np.stack([sites, self.right_neighbours], -1),
        np.stack([sites, self.lower_neighbours], -1)], 0)

  @functools.cached_property
  def checkerboard(self) -> np.ndarray:
    """True on the even sites ((a + b) even), [L, L]. For even L no bond
    joins two sites of one colour."""
    a = np.arange(self._size)
    return (a[:, None] + a[None, :]) % 2 == 0

  @functools.cached_property
  def displacement_index(self) -> np.ndarray:
    """D[i, j] = flat index of rᵢ − rⱼ (mod L), [N, N]: a kernel W [L, L]
    of the displacement as an N×N coupling is W.ravel()[D]."""
    r = self.coordinates
    disp = (r[:, None] - r[None, :]) % self._size
    return disp[..., 0] * self._size + disp[..., 1]

  def laplacian_eigenvalues(self) -> np.ndarray:
    """λ_k = Σ_axes 4 sin²(k_a/2) on the Fourier modes k = 2πm/L, [L, L]
    (float64): the spectrum of the periodic lattice Laplacian."""
    k = 2. * np.pi * np.arange(self._size) / self._size
    return 4. * np.sin(k[:, None] / 2.) ** 2 + 4. * np.sin(k[None, :] / 2.) ** 2

  # -- grid tensors -------------------------------------------------------------

  def grid(self, x: tf.Tensor) -> tf.Tensor:
    """Points [..., ambient_dim] on the grid: [..., L, L] (XY angles) or
    [..., L, L, 3] (O(3) vectors)."""
    x = tf.convert_to_tensor(x)
    event = [self._size] * 2 + ([] if self.spin == 'xy' else [3])
    return tf.reshape(x, _concat(_batch_shape(x, 1), event))

  def spins(self, x: tf.Tensor) -> tf.Tensor:
    """Unit spins [..., L, L, n] from points [..., ambient_dim]."""
    if self.spin == 'xy':
      theta = self.grid(x)
      return tf.stack([tf.cos(theta), tf.sin(theta)], -1)
    return self.grid(x)

  def points(self, spins: tf.Tensor) -> tf.Tensor:
    """Points [..., ambient_dim] from unit spins [..., L, L, n] (XY angles
    in [0, 2π))."""
    spins = tf.convert_to_tensor(spins)
    return self.site_points(tf.reshape(
        spins, _concat(_batch_shape(spins, 3), [self.num_sites,
                                                self.spin_dim])))

  def _grid_axes(self, grid: tf.Tensor, trailing: int):
    """(row axis, column axis) of a grid tensor, non-negative if possible."""
    return _axis(grid, -2 - trailing), _axis(grid, -1 - trailing)

  def right(self, grid: tf.Tensor, trailing: int = 0) -> tf.Tensor:
    """Each site's right neighbour's value, for a grid tensor."""
    grid = tf.convert_to_tensor(grid)
    return tf.roll(grid, -1, axis=self._grid_axes(grid, trailing)[1])

  def lower(self, grid: tf.Tensor, trailing: int = 0) -> tf.Tensor:
    """Each site's lower neighbour's value, for a grid tensor."""
    grid = tf.convert_to_tensor(grid)
    return tf.roll(grid, -1, axis=self._grid_axes(grid, trailing)[0])

  def neighbour_sum(self, grid: tf.Tensor, trailing: int = 0) -> tf.Tensor:
    """Σ_{j ~ i} over the four neighbours (with multiplicity), per site."""
    grid = tf.convert_to_tensor(grid)
    rows, cols = self._grid_axes(grid, trailing)
    return (tf.roll(grid, 1, axis=rows) + tf.roll(grid, -1, axis=rows)
            + tf.roll(grid, 1, axis=cols) + tf.roll(grid, -1, axis=cols))

  def translate(self, x: tf.Tensor, shift: Tuple[int, int]) -> tf.Tensor:
    """Lattice translation of points: site (a, b) moves to (a + s₀, b + s₁)."""
    x = tf.convert_to_tensor(x)
    grid = self.grid(x)
    moved = tf.roll(grid, shift=list(shift), axis=list(self._grid_axes(
        grid, 0 if self.spin == 'xy' else 1)))
    return tf.reshape(moved, tf.shape(x))

  # -- bonds ------------------------------------------------------------------------

  def bond_angles(self, x: tf.Tensor) -> tf.Tensor:
    """XY: θᵢ − θⱼ to the right and lower neighbours, [..., L, L, 2]."""
    if self.spin != 'xy':
      raise ValueError('bond_angles is defined for XY spins.')
    theta = self.grid(x)
    return tf.stack([theta - self.right(theta), theta - self.lower(theta)], -1)

  def bond_cosines(self, x: tf.Tensor) -> tf.Tensor:
    """sᵢ·sⱼ to the right and lower neighbours, [..., L, L, 2]."""
    if self.spin == 'xy':
      return tf.cos(self.bond_angles(x))
    s = self.grid(x)
    return tf.stack([tf.reduce_sum(s * self.right(s, 1), -1),
                     tf.reduce_sum(s * self.lower(s, 1), -1)], -1)

  def bond_sum(self, x: tf.Tensor) -> tf.Tensor:
    """Σ_⟨ij⟩ sᵢ·sⱼ over the 2N bonds, [...]."""
    return tf.reduce_sum(self.bond_cosines(x), axis=[-3, -2, -1])


def as_sites(sites: Union[int, Sites], spin=None, spin_dim=None,
             stacklevel: int = 4) -> Sites:
  """A `Sites` from N and a spin, or the given `Sites`/`Lattice` itself.

  With a `Sites`, `spin` (or the deprecated `spin_dim`) may be omitted, and
  must agree with it when given.
  """
  if isinstance(sites, Sites):
    if spin is not None or spin_dim is not None:
      if canonical_spin(spin, spin_dim, stacklevel) != sites.spin:
        raise ValueError(f'spin {spin or spin_dim!r} disagrees with {sites}.')
    return sites
  if spin is None and spin_dim is None:
    raise TypeError('Pass spin (or a Sites / Lattice).')
  return Sites(sites, canonical_spin(spin, spin_dim, stacklevel))


def as_lattice(lattice: Union[int, Lattice], spin=None,
               stacklevel: int = 4) -> Lattice:
  """A `Lattice` from L and a spin ('xy' by default), or the given one."""
  if isinstance(lattice, Lattice):
    if spin is not None and canonical_spin(spin, None, stacklevel) != (
        lattice.spin):
      raise ValueError(f'spin {spin!r} disagrees with {lattice}.')
    return lattice
  if isinstance(lattice, Sites):
    raise TypeError(f'{lattice} has no lattice geometry; pass a Lattice.')
  return Lattice(lattice, canonical_spin('xy' if spin is None else spin, None,
                                         stacklevel))


def lattice_of(obj) -> Lattice:
  """The `Lattice` of a target, potential or base, or `obj` if it is one."""
  if isinstance(obj, Lattice):
    return obj
  lattice = getattr(obj, 'lattice', None)
  if isinstance(lattice, Lattice):
    return lattice
  size, spin_dim = (getattr(obj, 'lattice_size', None),
                    getattr(obj, 'spin_dim', None))
  if size is not None and spin_dim in _SPIN_OF_DIM:
    # An object that describes its lattice the older way.
    return Lattice(size, _SPIN_OF_DIM[spin_dim])
  raise TypeError(f'{obj!r} has no Lattice.')


__all__ = ['SPINS', 'Lattice', 'Sites', 'as_lattice', 'as_sites',
           'canonical_spin', 'lattice_of']
