"""M^k, e.g. (S²)^k for k spins, computed as one batched factor."""

from typing import List, Optional, Tuple

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm.manifolds import base

tfd = tfp.distributions
tfb = tfp.bijectors


class Power(base.Manifold):
  """M × ... × M (k copies) with the product metric.

  The same manifold as `Product([manifold] * k)`, with the same point layout
  (the k factors' points concatenated on the last axis, [..., k·A]), but
  every operation reshapes to [..., k, A] and calls the factor once. The
  graph therefore does not grow with k: a `Product` of k spheres holds k
  copies of each sphere op, and its Jacobian graphs (one reverse pass per
  output, vectorised by pfor) grow as k² (measured: (S²)^8 log_prob and
  sample used 14 GB while tracing; see benchmarks/RESULTS.md).

  The factor's operations must act on the last axis only (`Sphere` and
  `Torus` do).
  """

  def __init__(self, manifold: base.Manifold, k: int):
    if not isinstance(manifold, base.Manifold):
      raise TypeError(f'Power needs a Manifold, got {manifold!r}.')
    if int(k) != k or k < 1:
      raise ValueError(f'Power needs k >= 1 copies, got {k!r}.')
    self._factor = manifold
    self._k = int(k)

  def __repr__(self):
    return f'Power({self._factor!r}, {self._k})'

  @property
  def factor(self) -> base.Manifold:
    return self._factor

  @property
  def k(self) -> int:
    return self._k

  @property
  def dim(self) -> int:
    return self._k * self._factor.dim

  @property
  def ambient_dim(self) -> int:
    return self._k * self._factor.ambient_dim

  @property
  def embed_dim(self) -> int:
    return self._k * self._factor.embed_dim

  @property
  def volume(self) -> float:
    return self._factor.volume ** self._k

  # The constants of the bounds are those of Product([factor] * k).

  @property
  def sectional_curvature_bound(self) -> Optional[float]:
    """The factor's (planes that mix copies are flat)."""
    return self._factor.sectional_curvature_bound

  @property
  def injectivity_radius(self) -> Optional[float]:
    """The factor's."""
    return self._factor.injectivity_radius

  @property
  def embed_derivative_bounds(self) -> Optional[Tuple[float, float]]:
    """The factor's (D, S), as for `Product`: the copies' blocks are
    orthogonal."""
    return self._factor.embed_derivative_bounds

  @property
  def unit_sphere_embedding(self) -> bool:
    return self._factor.unit_sphere_embedding

  @property
  def has_closed_form_log_det_dexp(self) -> bool:
    return self._factor.has_closed_form_log_det_dexp

  @property
  def is_flat(self) -> bool:
    return self._factor.is_flat

  # [..., k·n] <-> [..., k, n]
  def _split(self, x: tf.Tensor, n: int) -> tf.Tensor:
    return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self._k, n]], 0))

  def _merge(self, x: tf.Tensor) -> tf.Tensor:
    return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [-1]], 0))

  def _points(self, x):
    return self._split(x, self._factor.ambient_dim)

  def expmap(self, x, v):
    return self._merge(self._factor.expmap(self._points(x), self._points(v)))

  def logmap(self, x, y):
    return self._merge(self._factor.logmap(self._points(x), self._points(y)))

  def sq_dist(self, x, y):
    return tf.reduce_sum(
        self._factor.sq_dist(self._points(x), self._points(y)), axis=-1)

  def log_det_dexp(self, x, y):
    """Sum over the copies (exp is a product map), or None if unknown."""
    parts = self._factor.log_det_dexp(self._points(x), self._points(y))
    return None if parts is None else tf.reduce_sum(parts, axis=-1)

  def _frames(self, frame):
    """The k diagonal blocks [..., k, A, d] of a block-diagonal frame."""
    a, d = self._factor.ambient_dim, self._factor.dim
    shape = tf.concat([tf.shape(frame)[:-2], [self._k, a, self._k, d]], 0)
    blocks = tf.reshape(frame, shape)                     # [..., k, A, k, d]
    nb = blocks.shape.rank - 4
    batch = list(range(nb))
    # The diagonal over the two k axes ([..., A, d, k]), k moved back first.
    diag = tf.linalg.diag_part(tf.transpose(
        blocks, batch + [nb + 1, nb + 3, nb, nb + 2]))
    return tf.transpose(diag, batch + [nb + 2, nb, nb + 1])

  def _block_diagonal(self, blocks):
    """[..., k·d, k·d] from the k blocks [..., k, d, d]."""
    eye = tf.eye(self._k, dtype=blocks.dtype)
    full = tf.einsum('...iab,ij->...iajb', blocks, eye)
    shape = tf.concat([tf.shape(blocks)[:-3], [self.dim, self.dim]], 0)
    return tf.reshape(full, shape)

  def half_sq_dist_derivatives(self, x, y, frame):
    """The copies' values summed, gradients concatenated, Hessians block
    diagonal; None if the factor has no closed form."""
    parts = self._factor.half_sq_dist_derivatives(
        self._points(x), self._points(y), self._frames(frame))
    if parts is None:
      return None
    value, grad, hess = parts
    return (tf.reduce_sum(value, axis=-1), self._merge(grad),
            self._block_diagonal(hess))

  def exp_second_order_term(self, y, egrad, frame):
    term = self._factor.exp_second_order_term(
        self._points(y), self._points(egrad), self._frames(frame))
    return None if term is None else self._block_diagonal(term)

  def exp_jacobi_fields(self, y, w, frame_y, frame_x):
    parts = self._factor.exp_jacobi_fields(
        self._points(y), self._points(w), self._frames(frame_y),
        self._frames(frame_x))
    return None if parts is None else tuple(self._block_diagonal(p)
                                            for p in parts)

  def proju(self, x, u):
    return self._merge(self._factor.proju(self._points(x), self._points(u)))

  def projx(self, x):
    return self._merge(self._factor.projx(self._points(x)))

  def embed(self, x):
    return self._merge(self._factor.embed(self._points(x)))

  def tangent_frame(self, x):
    """Block-diagonal frame [..., k·A, k·d], the factors' frames on the
    diagonal, as `Product`'s."""
    f = self._factor.tangent_frame(self._points(x))       # [..., k, A, d]
    eye = tf.eye(self._k, dtype=f.dtype)
    blocks = tf.einsum('...iab,ij->...iajb', f, eye)      # [..., k, A, k, d]
    shape = tf.concat([tf.shape(x)[:-1], [self.ambient_dim, self.dim]], 0)
    return tf.reshape(blocks, shape)

  def frame_orientation(self, x):
    return tf.math.reduce_prod(
        self._factor.frame_orientation(self._points(x)), axis=-1)

  def uniform(self, dtype=tf.float32) -> tfd.Distribution:
    """k independent copies of the factor's uniform, events [k·A]."""
    a = self._factor.ambient_dim
    return tfd.TransformedDistribution(
        tfd.Sample(self._factor.uniform(dtype), self._k),
        tfb.Reshape(event_shape_out=[self._k * a],
                    event_shape_in=[self._k, a]))

  def membership_assertions(self, x) -> List[tf.Operation]:
    ops = self._check_event_size(x, repr(self))
    if ops:  # the reshape below needs the right size
      with tf.control_dependencies(ops):
        x = tf.identity(x)
    return ops + self._factor.membership_assertions(self._points(x))
