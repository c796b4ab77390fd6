"""Products of manifolds, e.g. T^1 × S^2, with events concatenated."""

from typing import List, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import _autodiff
from tfp_ircpm.manifolds import base

tfd = tfp.distributions


def _block_diagonal(blocks: Sequence[tf.Tensor]) -> tf.Tensor:
  """[..., Σd_i, Σd_i] from square blocks [..., d_i, d_i]."""
  ops = [tf.linalg.LinearOperatorFullMatrix(b) for b in blocks]
  return tf.linalg.LinearOperatorBlockDiag(ops).to_dense()


class Product(base.Manifold):
  """M_1 × ... × M_k with the product metric.

  A point is the concatenation of the factors' points on the last axis;
  tangent frames are block diagonal, so d² adds up and log-dets of the whole
  are log-dets of a block-structured Jacobian.
  """

  def __init__(self, manifolds: Sequence[base.Manifold]):
    manifolds = list(manifolds)
    if not manifolds:
      raise ValueError('Product needs at least one manifold.')
    for m in manifolds:
      if not isinstance(m, base.Manifold):
        raise TypeError(f'Product factors must be Manifolds, got {m!r}.')
    self._factors = manifolds
    self._sizes = [m.ambient_dim for m in manifolds]

  def __repr__(self):
    return f'Product({self._factors!r})'

  @property
  def factors(self) -> List[base.Manifold]:
    return list(self._factors)

  @property
  def dim(self) -> int:
    return sum(m.dim for m in self._factors)

  @property
  def ambient_dim(self) -> int:
    return sum(self._sizes)

  @property
  def embed_dim(self) -> int:
    return sum(m.embed_dim for m in self._factors)

  @property
  def volume(self) -> float:
    v = 1.
    for m in self._factors:
      v *= m.volume
    return v

  @property
  def sectional_curvature_bound(self) -> Optional[float]:
    """The maximum over the factors (planes that mix factors are flat);
    None if a factor's is unknown."""
    ks = [m.sectional_curvature_bound for m in self._factors]
    return None if any(k is None for k in ks) else max(ks)

  @property
  def injectivity_radius(self) -> Optional[float]:
    """The minimum over the factors (a product of geodesics is a geodesic,
    and d² adds up); None if a factor's is unknown."""
    radii = [m.injectivity_radius for m in self._factors]
    return None if any(r is None for r in radii) else min(radii)

  @property
  def embed_derivative_bounds(self) -> Optional[Tuple[float, float]]:
    """(max D_i, max S_i) over the factors, for the concatenated features.

    Dφ is block diagonal, so |Dφ v|² = Σ|Dφ_i v_i|² <= max D_i² |v|², and
    |∇²φ(v, v)| <= Σ S_i |v_i|² <= max S_i |v|².
    """
    parts = [m.embed_derivative_bounds for m in self._factors]
    if any(p is None for p in parts):
      return None
    return max(p[0] for p in parts), max(p[1] for p in parts)

  @property
  def unit_sphere_embedding(self) -> bool:
    return all(m.unit_sphere_embedding for m in self._factors)

  @property
  def has_closed_form_log_det_dexp(self) -> bool:
    return all(m.has_closed_form_log_det_dexp for m in self._factors)

  @property
  def is_flat(self) -> bool:
    return all(m.is_flat for m in self._factors)

  def split(self, x: tf.Tensor) -> List[tf.Tensor]:
    return tf.split(x, self._sizes, axis=-1)

  def _map(self, fn_name, *args):
    parts = zip(*(self.split(a) for a in args))
    return [getattr(m, fn_name)(*p) for m, p in zip(self._factors, parts)]

  def expmap(self, x, v):
    return tf.concat(self._map('expmap', x, v), axis=-1)

  def logmap(self, x, y):
    return tf.concat(self._map('logmap', x, y), axis=-1)

  def sq_dist(self, x, y):
    return tf.add_n(self._map('sq_dist', x, y))

  def log_det_dexp(self, x, y):
    """Sum over the factors (exp is a product map); None if one is unknown."""
    parts = self._map('log_det_dexp', x, y)
    return None if any(p is None for p in parts) else tf.add_n(parts)

  def _split_frame(self, frame):
    """The factors' frames, the diagonal blocks of a block-diagonal E."""
    blocks, row, col = [], 0, 0
    for m in self._factors:
      blocks.append(frame[..., row:row + m.ambient_dim, col:col + m.dim])
      row, col = row + m.ambient_dim, col + m.dim
    return blocks

  def half_sq_dist_derivatives(self, x, y, frame):
    """The factors' values summed, gradients concatenated, Hessians block
    diagonal; None if a factor has no closed form."""
    parts = [m.half_sq_dist_derivatives(a, b, e) for m, a, b, e in zip(
        self._factors, self.split(x), self.split(y), self._split_frame(frame))]
    if any(p is None for p in parts):
      return None
    values, grads, hessians = zip(*parts)
    return (tf.add_n(list(values)), tf.concat(grads, axis=-1),
            _block_diagonal(hessians))

  def exp_second_order_term(self, y, egrad, frame):
    """Block diagonal: exp is a product map."""
    parts = [m.exp_second_order_term(a, g, e) for m, a, g, e in zip(
        self._factors, self.split(y), self.split(egrad),
        self._split_frame(frame))]
    return None if any(p is None for p in parts) else _block_diagonal(parts)

  def exp_jacobi_fields(self, y, w, frame_y, frame_x):
    """Each of T, D₁, D₂ block diagonal: exp is a product map."""
    parts = [m.exp_jacobi_fields(a, b, e, f) for m, a, b, e, f in zip(
        self._factors, self.split(y), self.split(w),
        self._split_frame(frame_y), self._split_frame(frame_x))]
    if any(p is None for p in parts):
      return None
    return tuple(_block_diagonal(blocks) for blocks in zip(*parts))

  def proju(self, x, u):
    return tf.concat(self._map('proju', x, u), axis=-1)

  def projx(self, x):
    return tf.concat(self._map('projx', x), axis=-1)

  def embed(self, x):
    # ψ's features: differentiated three times in training (see concat_last).
    return _autodiff.concat_last(self._map('embed', x))

  def tangent_frame(self, x):
    frames = self._map('tangent_frame', x)
    batch = tf.shape(x)[:-1]
    rows = []
    col_start = 0
    total = self.dim
    for m, f in zip(self._factors, frames):
      pad_left = tf.zeros(tf.concat([batch, [m.ambient_dim, col_start]], 0),
                          x.dtype)
      pad_right = tf.zeros(
          tf.concat([batch, [m.ambient_dim, total - col_start - m.dim]], 0),
          x.dtype)
      rows.append(tf.concat([pad_left, f, pad_right], axis=-1))
      col_start += m.dim
    return tf.concat(rows, axis=-2)

  def frame_orientation(self, x):
    # A block-diagonal frame is oriented by the product of its blocks'.
    return tf.math.reduce_prod(tf.stack(self._map('frame_orientation', x), -1),
                               axis=-1)

  def uniform(self, dtype=tf.float32):
    return tfd.Blockwise([m.uniform(dtype) for m in self._factors])

  def membership_assertions(self, x) -> List[tf.Operation]:
    ops = self._check_event_size(x, repr(self))
    for m, part in zip(self._factors, self.split(x)):
      ops += m.membership_assertions(part)
    return ops
