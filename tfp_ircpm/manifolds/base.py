"""The manifold protocol shared by tori, spheres and their products.

Points are represented in an ambient coordinate space of size `ambient_dim`
(angles for tori, unit vectors for spheres); tangent vectors live in the same
coordinates. All methods broadcast over leading (batch) axes, work in float32
and float64, and trace in `tf.function` and XLA.

Besides the geometry, a manifold answers the questions that the bound check
(`bounds.check_bounds`), the certified potentials (`potentials.MLP`,
`potentials.certified_targets`) and the log-det estimators (`logdet`) ask,
so that none of them switches on manifold types:

* `sectional_curvature_bound` K and `injectivity_radius`: the constants of
  the Lemma 4 criterion (`lemma4_hessian_bound`);
* `embed_derivative_bounds`: ‖Dφ‖ and ‖∇²φ‖ of the features φ = `embed`,
  for the certified MLP bounds;
* `has_closed_form_log_det_dexp` and `is_flat`: which log-det forms apply;
* `half_sq_dist_derivatives`, `exp_second_order_term` and
  `exp_jacobi_fields`: the closed-form pieces of the Riemannian derivatives
  of h = ½d² + ψ and of the Jacobian of f⁻¹ = exp(grad ψ), which the solver
  and the log-det use instead of differentiating through exp and d (whose
  safe-branch graphs are ten times the size of ψ's on spheres).

Products and powers compose them from their factors. A manifold that does
not know a constant returns None (the default), and the code that needs it
then refuses to certify rather than guess.
"""

import abc
import math
from typing import List, Optional, Tuple

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

  def pairwise_sq_dist(self, x: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """d(x_i, c_j)² for x [N, ambient] and c [K, ambient] → [N, K].

    Values only, for screening many pairs without differentiating them
    (the solver's global-minimum test, which recomputes the pair it picks
    with `sq_dist`). A manifold may override it with a cheaper formula whose
    error it documents. By default `sq_dist` broadcast.
    """
    return self.sq_dist(x[:, tf.newaxis], c[tf.newaxis])

  def dist(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Geodesic distance d(x, y), shape [...]; zero gradient at x = y."""
    from tfp_ircpm.manifolds import _series  # pylint: disable=g-import-not-at-top
    return _series.safe_sqrt(self.sq_dist(x, y))

  # -- Constants for the bounds of Lemmas 3-4 and the log-det forms. --------

  @property
  def sectional_curvature_bound(self) -> Optional[float]:
    """K: an upper bound on every sectional curvature of M, or None.

    0 on the flat Tⁿ, 1 on the unit Sⁿ, the maximum over the factors on
    products (a plane mixing two factors has curvature 0). It fixes the
    Hessian bound η of Lemma 4: by the Hessian comparison theorem, curvature
    <= K makes the Hessian H_c of ½d(x, ·)² at distance t < min(inj, π/(2√K))
    have eigenvalue 1 along the geodesic and >= tcg_K(t) = t√K cot(t√K)
    across it (tcg_0 = 1), so H_c ⪰ tcg_K(λ) I on the ball B_x(λ); see
    `lemma4_hessian_bound`. With K = 1 this is Sec. 4.3's tcg(t) = t cot t,
    attained on Sⁿ.
    """
    return None

  @property
  def injectivity_radius(self) -> Optional[float]:
    """inj(M): exp_x is a diffeomorphism on every open ball of this radius.

    π for Tⁿ = Rⁿ/2πZⁿ and for the unit Sⁿ, the minimum over the factors
    on products. Lemma 4 needs the radius λ of Lemma 3 below it. None when
    unknown.
    """
    return None

  @property
  def embed_derivative_bounds(self) -> Optional[Tuple[float, float]]:
    """(D, S): bounds on the first two derivatives of φ = `embed`, or None.

    φ: M → R^embed_dim. For unit tangent vectors v at any x,
      |Dφ_x v| <= D   and   |∇²φ_x(v, v)| <= S,
    with ∇²φ the Riemannian (covariant) Hessian of φ, taken component-wise:
    (∇²φ)(v, v) = d²/dt² φ(exp_x(tv)) at t = 0. By the chain rule a
    network Ψ on the features, ψ = Ψ ∘ φ, has
      Hess ψ(v, v) = D²Ψ(Dφ v, Dφ v) + ∇Ψ · ∇²φ(v, v),
    so ‖grad ψ‖ <= D ‖∇Ψ‖ and ‖Hess ψ‖ <= D² ‖D²Ψ‖ + S ‖∇Ψ‖: the
    constants `potentials.MLP.derivative_bounds` uses. (1, 1) on Tⁿ
    (φ = (cos θ, sin θ): ∇²φ(v, v) = −(v_i² cos θ_i, v_i² sin θ_i)) and on
    Sⁿ (φ the inclusion: ∇²φ(v, v) = −|v|² x, the second fundamental
    form); the maximum of each over the factors on products.
    """
    return None

  @property
  def has_closed_form_log_det_dexp(self) -> bool:
    """Whether `log_det_dexp` returns a tensor (not None).

    The stochastic log-det estimators of `logdet` need it (the symmetric
    form log det J_{f⁻¹} = log det H + log|det d exp|). True on tori,
    spheres, and products and powers of manifolds that have it.
    """
    return False

  @property
  def unit_sphere_embedding(self) -> bool:
    """Whether `embed` maps M isometrically onto a product of unit spheres.

    True for Sⁿ (the inclusion), Tⁿ ((cos θ_i, sin θ_i), n unit circles),
    and products and powers of them. Then ½|φ(x) − φ(c)|² = Σ_f (1 − cos
    r_f), r_f the geodesic distance in factor f, the identity that
    `potentials.Wells` derives its curvature bound from. False when unknown.
    """
    return False

  @property
  def is_flat(self) -> bool:
    """Whether M is known to be flat (all sectional curvatures 0).

    Then d exp is an isometry (`log_det_dexp` = 0) and the Riemannian
    Hessian of h(x, ·) is I + Hess ψ, i.e. J_{f⁻¹} itself: true for Tⁿ and
    products and powers of flat manifolds; False when unknown.
    """
    return False

  def lemma4_hessian_bound(self, radius: float) -> float:
    """η(λ): ‖Hess ψ‖ < η and ‖grad ψ‖ < λ/2 give Lemma 4's conclusion.

    λ = `radius` must be below `injectivity_radius` (so exp_x is a
    diffeomorphism on the closed ball B_x(λ)), and for K =
    `sectional_curvature_bound` > 0 below π/(2√K). There
      η(λ) = tcg_K(λ) = λ√K cot(λ√K)   (K > 0),   η = 1   (K <= 0),
    a lower bound on the eigenvalues of H_c = Hess ½d(x, ·)² on the ball
    (see `sectional_curvature_bound`), so H_c + Hess ψ ≻ 0 there: the
    positive definiteness the proof of Lemma 4 uses. On curvature >= 0 (all
    products of tori and spheres) also H_c ⪯ I, so η is Sec. 4.3's bound
    ‖H_c − I‖ <= 1 − η: λ cot λ for the unit sphere (λ < π/2), 1 for the
    flat torus (λ < π).

    Returns 0. (no λ-ball qualifies, nothing is certified) when λ <= 0, λ
    is out of range, or a constant is unknown (None); 1. at λ = 0 exactly
    (ψ constant).
    """
    lam = float(radius)
    k = self.sectional_curvature_bound
    inj = self.injectivity_radius
    if lam == 0.:
      return 1.
    if k is None or inj is None or not 0. < lam < inj:
      return 0.
    if k <= 0.:
      return 1.
    t = lam * math.sqrt(k)
    return t / math.tan(t) if t < math.pi / 2 else 0.

  def max_certified_radius(self) -> Optional[float]:
    """sup of the λ for which `lemma4_hessian_bound(λ)` > 0, or None.

    min(injectivity_radius, π/(2√K)) for K > 0, the injectivity radius
    otherwise: π/2 on the unit sphere, π on the torus.
    """
    k = self.sectional_curvature_bound
    inj = self.injectivity_radius
    if k is None or inj is None:
      return None
    return min(inj, math.pi / (2. * math.sqrt(k))) if k > 0. else inj

  def log_det_dexp(self, x: tf.Tensor, y: tf.Tensor):
    """log|det d(exp_y)| at v = log_y(x), shape [...], or None if unknown.

    The Jacobian determinant of the exponential map between orthonormal
    frames: it converts the Hessian of h(x, ·) at the c-transform's minimiser
    into the log-det of f⁻¹ there (see `IRCPM`). Zero on flat manifolds,
    (n - 1) log(sin r / r) with r = d(x, y) on Sⁿ (Jacobi fields of constant
    curvature 1). Manifolds that do not know it return None (and
    `has_closed_form_log_det_dexp` False).
    """
    del x, y
    return None

  def half_sq_dist_derivatives(self, x: tf.Tensor, y: tf.Tensor,
                               frame: tf.Tensor):
    """y ↦ ½d(x, y)² at y, in the frame E_y: (value [...], Riemannian
    gradient [..., dim], Riemannian Hessian [..., dim, dim]), or None when
    no closed form is known (the solver then differentiates d through exp).

    The gradient is -E_yᵀ log_y(x) wherever d is smooth (away from the cut
    locus of x).

    Args:
      x, y: points [..., ambient_dim].
      frame: E_y = `tangent_frame(y)`, [..., ambient_dim, dim].
    """
    del x, y, frame
    return None

  def exp_second_order_term(self, y: tf.Tensor, egrad: tf.Tensor,
                            frame: tf.Tensor):
    """⟨∇f(y), ∂²exp_y(E_y v)/∂v∂v⟩ at v = 0, [..., dim, dim], or None.

    For an ambient function f with Euclidean gradient ∇f(y) = `egrad`, the
    Hessian of v ↦ f(exp_y(E_y v)) at 0, which is the Riemannian Hessian
    because exp is a second-order retraction, is E_yᵀ ∇²f E_y plus this
    term: the second fundamental form of M ⊂ R^ambient paired with ∇f (the
    Weingarten map). Zero on flat coordinates; -(y·∇f) I on the unit
    sphere. None when unknown.

    Args:
      y: points [..., ambient_dim].
      egrad: ∇f(y), [..., ambient_dim].
      frame: E_y, [..., ambient_dim, dim].
    """
    del y, egrad, frame
    return None

  def exp_jacobi_fields(self, y: tf.Tensor, w: tf.Tensor, frame_y: tf.Tensor,
                        frame_x: tf.Tensor):
    """(T, D₁, D₂), each [..., dim, dim], or None when unknown.

    The differential of (y, w) ↦ x = exp_y(w) in frames: moving y by δy and
    w by a covariant change δw (both in E_y coordinates) moves x by

        E_xᵀ δx = T (D₁ δy + D₂ δw),

    the value at 1 of the Jacobi field J along t ↦ exp_y(t w) with J(0) = δy
    and J'(0) = δw. T = E_xᵀ Γ E_y is the parallel transport from y to x
    (orthogonal, det = `frame_orientation(x)·frame_orientation(y)`).
    For f⁻¹(y) = exp_y(grad ψ(y)), δw = Hess ψ δy, so
    E_xᵀ J_{f⁻¹} E_y = T (D₁ + D₂ Hess ψ) (the matrix of Eq. 4).

    Args:
      y: points [..., ambient_dim].
      w: tangent vectors at y, [..., ambient_dim].
      frame_y, frame_x: E_y and E_x, x = exp_y(w), [..., ambient_dim, dim].
    """
    del y, w, frame_y, frame_x
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
