"""The manifold protocol shared by tori, spheres and their products.

Points are represented in an ambient coordinate space of size `ambient_dim`
(angles for tori, unit vectors for spheres); tangent vectors live in the same
coordinates. All methods broadcast over leading (batch) axes, work in float32
and float64, and trace in `tf.function` and XLA.
"""

import abc
from typing import List

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


class Manifold(abc.ABC):
  """A compact Riemannian manifold embedded in R^ambient_dim.

  Shapes: a point `x` is `[..., ambient_dim]`; a tangent vector `v` at `x` is
  `[..., ambient_dim]`; `tangent_frame(x)` is `[..., ambient_dim, dim]` with
  orthonormal columns spanning T_x M.
  """

  @property
  @abc.abstractmethod
  def dim(self) -> int:
    """Intrinsic dimension n."""

  @property
  @abc.abstractmethod
  def ambient_dim(self) -> int:
    """Size of the event (last) axis."""

  @property
  def event_shape(self) -> tf.TensorShape:
    return tf.TensorShape([self.ambient_dim])

  @property
  @abc.abstractmethod
  def embed_dim(self) -> int:
    """Size of the features returned by `embed`."""

  @abc.abstractmethod
  def expmap(self, x: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    """exp_x(v): the point reached along the geodesic from x with velocity v."""

  @abc.abstractmethod
  def logmap(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """log_x(y): the tangent vector at x with exp_x(log_x(y)) = y, |.| = d(x,y).

    Defined off the cut locus of x; on it a finite (not NaN) vector is returned.
    """

  @abc.abstractmethod
  def sq_dist(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """d(x, y)², shape [...]; smooth (twice differentiable) at x = y."""

  def dist(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Geodesic distance d(x, y), shape [...]; zero gradient at x = y."""
    from tfp_ircpm.manifolds import _series  # pylint: disable=g-import-not-at-top
    return _series.safe_sqrt(self.sq_dist(x, y))

  def log_det_dexp(self, x: tf.Tensor, y: tf.Tensor):
    """log|det d(exp_y)| at v = log_y(x), shape [...], or None if unknown.

    The Jacobian determinant of the exponential map between orthonormal
    frames: it converts the Hessian of h(x, ·) at the c-transform's minimiser
    into the log-det of f⁻¹ there (see `IRCPM`). Zero on flat manifolds,
    (n - 1) log(sin r / r) with r = d(x, y) on Sⁿ (Jacobi fields of constant
    curvature 1). Manifolds that do not know it return None.
    """
    del x, y
    return None

  @abc.abstractmethod
  def proju(self, x: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """Orthogonal projection of an ambient vector u onto T_x M."""

  @abc.abstractmethod
  def projx(self, x: tf.Tensor) -> tf.Tensor:
    """Retraction of an ambient point onto M (normalise on S^n, wrap on T^n).

    The c-transform solver applies it to every iterate so that float32
    round-off cannot drift off the manifold and grow geometrically.
    """

  @abc.abstractmethod
  def tangent_frame(self, x: tf.Tensor) -> tf.Tensor:
    """Orthonormal frame E_x of T_x M, shape [..., ambient_dim, dim]."""

  def frame_orientation(self, x: tf.Tensor) -> tf.Tensor:
    """±1, [...]: the orientation of `tangent_frame(x)` relative to a fixed
    orientation of M (default: every frame positively oriented)."""
    return tf.ones(tf.shape(x)[:-1], x.dtype)

  @abc.abstractmethod
  def embed(self, x: tf.Tensor) -> tf.Tensor:
    """Smooth features of x, [..., embed_dim], for networks (e.g. cos/sin)."""

  @abc.abstractmethod
  def uniform(self, dtype=tf.float32) -> tfd.Distribution:
    """The normalised volume (Haar) measure as a TFP distribution.

    Its density is 1 / vol(M) with respect to the Riemannian volume, which is
    the measure in which every IRCPM log-det is expressed.
    """

  @abc.abstractmethod
  def membership_assertions(self, x: tf.Tensor) -> List[tf.Operation]:
    """Assertions that x lies on M (event size, finiteness, constraint)."""

  @property
  def volume(self) -> float:
    """Riemannian volume of M."""
    raise NotImplementedError

  def _check_event_size(self, x: tf.Tensor, name: str) -> List[tf.Operation]:
    """Static check when possible, runtime assertion otherwise."""
    size = tf.compat.dimension_value(x.shape[-1]) if x.shape.rank else None
    if size is not None:
      if size != self.ambient_dim:
        raise ValueError(
            f'{name}: points must have event size {self.ambient_dim} '
            f'(last axis), got shape {x.shape}.')
      return []
    return [tf.debugging.assert_equal(
        tf.shape(x)[-1], self.ambient_dim,
        message=f'{name}: points must have event size {self.ambient_dim}.')]

  def _finite_assertions(self, x: tf.Tensor, name: str) -> List[tf.Operation]:
    return [tf.debugging.assert_all_finite(
        x, message=f'{name}: points contain NaN or Inf.')]

  def random_uniform(self, n: int, dtype=tf.float32, seed=None) -> tf.Tensor:
    """n points from the uniform measure, shape [n, ambient_dim]."""
    return self.uniform(dtype).sample(n, seed=seed)
