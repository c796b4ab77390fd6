"""Potentials ψ: M → R, the dual functions of the c-transform (Eq. 2).

A potential is any callable mapping points [..., ambient_dim] to values [...].
`MLP` is the paper's parametrisation (Sec. 5): a softplus MLP on smooth
features of the point, with its output divided by a constant (1/20 in the
paper) so that ‖grad ψ‖ and ‖Hess ψ‖ start small, as Lemmas 3-4 require.

ψ must be C² (twice continuously differentiable), and log-det gradients
differentiate it three times: the c-transform solve uses Hess ψ, Lemma 4
bounds it, and the log-det of Eq. 4 is built from it. A ReLU-type network
has a piecewise-constant (or, for ELU, discontinuous) Hessian, so Newton
solves miss their tolerance and round trips lose accuracy without any
error being raised. `nonsmooth_activations` reports the known non-C²
activations a potential uses; `MLP` warns about its own.
"""

import functools
import math
from typing import Callable, List, Optional, Sequence
import warnings

import numpy as np
import tensorflow as tf

from tfp_ircpm import _autodiff
from tfp_ircpm import _lazy
from tfp_ircpm.manifolds import base


@tf.custom_gradient
def softplus(x: tf.Tensor) -> tf.Tensor:
  """softplus with an explicit sigmoid derivative.

  Mathematically identical to `tf.nn.softplus`. Under XLA, TF's registered
  SoftplusGrad makes nested-tape log-det gradients recompile on every call;
  spelling the derivative out as sigmoid (itself smooth, so higher-order tapes
  work) avoids that.
  """

  def grad(dy):
    return dy * tf.sigmoid(x)

  return tf.nn.softplus(x), grad


class MLP(tf.Module):
  """ψ(x) = output_scale · W_L σ(... σ(W_1 embed(x) + b_1) ...).

  The output layer has no bias: a constant shift of ψ leaves the map
  unchanged (f depends on ψ only through its gradient), so such a bias would
  never receive a gradient.

  `embed` is the manifold's smooth embedding: the point itself on S^n,
  (cos θ, sin θ) on T^n (so ψ is smooth and 2π-periodic), concatenations on
  products.

  ψ must be C² (see the module docstring): keep the activation smooth. A
  known non-smooth one (ReLU and relatives) raises a `UserWarning`.

  Weights are drawn with standard deviation 1/√fan_in. Glorot on a 3-wide
  unit-norm input leaves the pre-activations tiny, the softplus nearly linear
  on the sphere, and training crawls.

  Args:
    manifold: the `Manifold` ψ is defined on.
    hidden_units: widths of the hidden layers (paper: (32, 32) on T², (128,
      128) on S²).
    output_scale: the constant the output is multiplied by (paper: 1/20).
    activation: elementwise non-linearity; must be C² (ψ must be: the solve
      uses Hess ψ and log-det gradients its third derivatives). A known
      non-C² one (relu, leaky_relu, elu, selu, abs, ...; see
      `nonsmooth_activations`) raises a `UserWarning`.
    dtype: variable dtype (arithmetic follows the input's dtype).
    seed: integer seed for the initialisation.
    certified: multiply ψ by `certified_scale()`, which enforces for every
      value of the parameters the bounds on ‖grad ψ‖ and ‖Hess ψ‖ of
      Lemmas 3-4, so the solve from y = x finds the unique minimiser and the
      map stays a diffeomorphism.
    zero_output: start the output layer at zero, so ψ = 0 and the map is
      the identity at initialisation (its gradient still moves the output
      layer at the first step). Use it to stack flows on a base that is
      already fitted: a random ψ would first undo the fit.
    certified_radius: λ of Lemma 3 for `certified_targets`; on spheres the
      default (None) chooses λ per parameter value (see `certified_scale`).
  """

  def __init__(self,
               manifold: base.Manifold,
               hidden_units: Sequence[int] = (32, 32),
               output_scale: float = 1. / 20.,
               activation: Callable[[tf.Tensor], tf.Tensor] = softplus,
               dtype=tf.float32,
               seed: Optional[int] = None,
               certified: bool = False,
               certified_radius: Optional[float] = None,
               zero_output: bool = False,
               name: str = 'mlp_potential'):
    super().__init__(name=name)
    self.manifold = manifold
    self.certified = bool(certified)
    if self.certified:
      _embedding_constants(manifold)            # raises if unknown
      self._targets = certified_targets(manifold, certified_radius)
      if activation is not softplus:
        raise ValueError('certified=True needs the softplus activation '
                         "(its derivative bounds σ' <= 1, σ'' <= 1/4).")
    self.output_scale = float(output_scale)
    self.activation = activation
    rough = _nonsmooth_activation_name(activation)
    if rough is not None:
      warnings.warn(
          f'{type(self).__name__} activation {rough!r} is not twice '
          f'continuously differentiable: the IRCPM needs a C² potential '
          f'(the solve uses Hess ψ, log-det gradients its third '
          f'derivatives), and with it solves can miss their tolerance and '
          f'round trips lose accuracy. Use softplus (the default), tanh or '
          f'swish.', UserWarning, stacklevel=2)
    self.hidden_units = tuple(int(h) for h in hidden_units)
    self._dtype = tf.as_dtype(dtype)
    sizes = (self._feature_dim(),) + self.hidden_units + (1,)
    rng = tf.random.Generator.from_seed(seed) if seed is not None else (
        tf.random.Generator.from_non_deterministic_state())
    self.weights = []
    self.biases = []
    with self.name_scope:
      for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal([fan_in, fan_out], dtype=self._dtype) / math.sqrt(fan_in)
        if zero_output and i == len(sizes) - 2:      # the output layer
          w = tf.zeros_like(w)
        self.weights.append(tf.Variable(w, name=f'w{i}'))
        if i < len(sizes) - 2:
          b = rng.normal([fan_out], dtype=self._dtype) * 0.1
          self.biases.append(tf.Variable(b, name=f'b{i}'))

  def _feature_dim(self) -> int:
    return self.manifold.embed_dim

  def derivative_bounds(self):
    """Upper bounds (G, H) on ‖grad ψ‖ and ‖Hess ψ‖ (Riemannian) over M.

    For the network before the certification scale; see `certified_scale`.
    The manifold's `embed_derivative_bounds` (D, S) enter as ‖Dφ‖ and
    ‖∇²φ‖; a manifold without them raises ValueError.
    """
    d_emb, s_emb = _embedding_constants(self.manifold)
    hidden = self.weights[:-1]
    norms = [tf.linalg.svd(w, compute_uv=False)[0] for w in hidden]
    # sens[k] bounds |∂ψ/∂h_k| entrywise (h_0 the features): σ' ∈ (0, 1).
    sens = [None] * (len(hidden) + 1)
    sens[-1] = self.output_scale * tf.abs(self.weights[-1][:, 0])
    for k in range(len(hidden), 0, -1):
      sens[k - 1] = tf.linalg.matvec(tf.abs(hidden[k - 1]), sens[k])
    # jac[k] bounds ‖D h_k‖ (spectral norms through the layers).
    jac = [tf.constant(d_emb, self._dtype)]
    lip = [tf.ones([], self._dtype)]        # ‖∂h_k/∂h_0‖, without Dφ
    for norm in norms:
      jac.append(norm * jac[-1])
      lip.append(norm * lip[-1])
    # F bounds ‖∇Ψ‖, the gradient with respect to the features h_0.
    feature_grad = tf.minimum(
        self.output_scale * tf.norm(self.weights[-1]) * lip[-1],
        tf.norm(sens[0]))
    grad_bound = d_emb * feature_grad
    hess_bound = tf.zeros([], self._dtype)
    for k, w in enumerate(hidden, start=1):
      # W diag(c) Wᵀ is positive semi-definite for c = ¼ a_k >= 0, so its
      # norm is its top eigenvalue (no square root: smooth at c = 0).
      curvature = tf.matmul(w * (0.25 * sens[k])[tf.newaxis, :], w,
                            transpose_b=True)
      hess_bound += (tf.linalg.eigvalsh(curvature)[-1]
                     * tf.square(jac[k - 1]))
    if s_emb:
      hess_bound = hess_bound + s_emb * feature_grad
    return grad_bound, hess_bound

  def certified_scale(self) -> tf.Tensor:
    """c in (0, 1]: multiplying ψ by c enforces the bounds of Lemmas 3-4.

    Derivation. Write h₀ = φ(x) (the embedding), z_k = h_{k-1} W_k + b_k,
    h_k = σ(z_k), ψ = Ψ(h₀) = s h_{L-1} w_L; σ = softplus has 0 < σ' < 1
    and 0 < σ'' <= 1/4. Backpropagation gives g_{k-1} = W_k (σ'(z_k) ⊙ g_k)
    for g_k = ∂ψ/∂h_k, so entrywise |g_k| <= a_k with a_{L-1} = s|w_L| and
    a_{k-1} = |W_k| a_k, and ‖g_0‖ = ‖∇Ψ‖ <= F = min(s ‖w_L‖ Π_k ‖W_k‖,
    ‖a_0‖). The Riemannian Hessian of ψ = Ψ ∘ φ is a sum of one curvature
    term per layer plus the embedding's:
      Hess ψ = Σ_k J_{k-1}ᵀ W_k diag(σ''(z_k) ⊙ g_k) W_kᵀ J_{k-1}
               + Σ_i g_{0,i} ∇²φ_i,
    with J_k = Dh_k, ‖J_k‖ <= j_k = ‖W_k‖ j_{k-1}, j_0 = ‖Dφ‖ <= D
    (spectral norms, exact), and ∇²φ the covariant Hessian of the features,
    |∇²φ(v, v)| <= S |v|² (D, S: `Manifold.embed_derivative_bounds`; (1, 1)
    on tori, spheres, their products and powers; on spheres the S-term is
    the curvature term −(x·∇Ψ) of P∇²ΨP − (x·∇Ψ)P). Since −W diag(c) Wᵀ ⪯
    W diag(σ''⊙g) Wᵀ ⪯ W diag(c) Wᵀ for c = ¼ a_k,
      ‖Hess ψ‖ <= H = Σ_k ‖W_k diag(¼ a_k) W_kᵀ‖ j_{k-1}² + S F,
      ‖grad ψ‖ <= G = D F.
    Weighting each unit by its own a_k, rather than ‖W_k‖² max a_k, keeps H
    within a small factor of the truth.

    The scale. Lemma 4 asks for ‖grad ψ‖ < λ/2 and ‖Hess ψ‖ < η(λ) for
    some admissible λ (`Manifold.lemma4_hessian_bound`). On flat manifolds
    (tori; η = 1 for λ < π) c = min(1, G*/G, H*/H) with (G*, H*) from
    `certified_targets`, and so on curved ones with a fixed
    `certified_radius` λ. On curved manifolds (curvature <= K, K > 0; K = 1
    on spheres, where η = λ cot λ, λ < π/2, Sec. 4.3) λ is by default not
    fixed but chosen per parameter value: the smallest admissible λ for cψ
    is 2cG, and cH < η(2cG) = 2cG√K cot(2cG√K) holds exactly when
    tan(2cG√K) < 2G√K/H, so
      c = min(1, 0.98 · atan(2G√K/H) / (2G√K)),
    with λ = 2cG/0.98 <= atan(2G√K/H)/√K < π/(2√K) (<= atan(2)/√K here,
    where H >= S F = G; c is also capped at 0.98 of the injectivity radius
    where that is smaller than π/(2√K)). A network whose
    gradient bound is small relative to its Hessian bound then gets a larger
    λ, and the other way round, instead of a single compromise fixed in
    advance.

    c is a differentiable function of the parameters, so training sees it,
    and the bounds hold for every value of the parameters.
    """
    grad_bound, hess_bound = self.derivative_bounds()
    one = tf.ones([], self._dtype)
    if self._targets is None:                       # adaptive λ (curved)
      k = float(self.manifold.sectional_curvature_bound)
      rk = math.sqrt(k)           # 1 on the unit sphere: Sec. 4.3 as written
      # G = 0 only for ψ ≡ 0 (H >= G), e.g. zero_output=True at the start:
      # every bound holds and c = 1, the limit of the formula as G -> 0 with
      # H small. The safe denominators keep the unused branch's gradient
      # finite.
      positive = grad_bound > 0.
      g = tf.where(positive, grad_bound, one)
      h = tf.where(positive, hess_bound, one)
      c = _MARGIN * tf.atan(2. * rk * g / h) / (2. * rk * g)
      inj = float(self.manifold.injectivity_radius)
      if inj < math.pi / (2. * math.sqrt(k)):
        c = tf.minimum(c, _MARGIN * inj / (2. * g))
      return tf.where(positive, tf.minimum(one, c), one)
    g_target, h_target = self._targets
    return tf.minimum(one, tf.minimum(g_target / grad_bound,
                                      h_target / hess_bound))

  def features(self, x: tf.Tensor) -> tf.Tensor:
    """The network's input features, [..., feature_dim]."""
    return self.manifold.embed(x)

  @property
  def num_parameters(self) -> int:
    return sum(int(v.shape.num_elements()) for v in self.trainable_variables)

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    """ψ(x): points [..., ambient_dim] → values [...].

    Arithmetic runs in the dtype of x (variables are cast), so a float32
    network evaluated on float64 points is a float64 computation.
    """
    dtype = x.dtype
    h = self.features(x)
    batch_shape = tf.shape(h)[:-1]
    h = tf.reshape(h, [-1, self._feature_dim()])
    for w, b in zip(self.weights[:-1], self.biases):
      h = self.activation(tf.matmul(h, tf.cast(w, dtype)) + tf.cast(b, dtype))
    out = tf.matmul(h, tf.cast(self.weights[-1], dtype))[:, 0]
    out = out * tf.constant(self.output_scale, dtype)
    if self.certified:
      out = out * tf.cast(self.certified_scale(), dtype)
    return tf.reshape(out, batch_shape)


def well_concavity(concentration):
  """m(κ) = (2 + 1/κ) exp(−(3κ + 1)/(2κ + 1)): −a·m(κ) bounds Hess below for
  one `Wells` well of curvature a (see `Wells`). numpy or TF input."""
  k = concentration
  exp = tf.exp if tf.is_tensor(k) else np.exp
  return (2. + 1. / k) * exp(-(3. * k + 1.) / (2. * k + 1.))


def _wells_budget(manifold: base.Manifold, min_concentration: float) -> float:
  """The largest curvature budget A that `Wells` certifies (Lemma 4).

  With Σ_i a_i m(κ_i) <= A, Hess ψ ⪰ −A and ‖grad ψ‖ <= c₀ A, c₀ =
  1/(m(κ_min) √(e κ_min)) (the largest ‖grad‖/(a m) of one well for κ >=
  κ_min >= 1). Lemma 4 needs ‖grad ψ‖ < λ/2 and Hess ψ ≻ −η(λ) for one
  admissible λ (`certified_targets`, 2% margin on both), so
  A = max_λ min(G*(λ)/c₀, H*(λ)), searched on a grid of λ.
  """
  _, lam_max = _lemma4_constants(manifold)
  c0 = 1. / (well_concavity(float(min_concentration))
             * math.sqrt(math.e * min_concentration))
  best = 0.
  for lam in np.linspace(lam_max / 400., lam_max * (1. - 1. / 400.), 400):
    g, h = certified_targets(manifold, float(lam))
    best = max(best, min(g / c0, h))
  return best


class Wells(tf.Module):
  r"""ψ(x) = −Σ_i (a_i/κ_i) exp(−κ_i ½|φ(x) − φ(c_i)|²): sharp convex wells.

  A sum of M von Mises kernels with learnable centres c_i ∈ M,
  concentrations κ_i >= κ_min >= 1 and curvatures a_i >= 0, on manifolds
  whose embedding φ is a product of unit spheres (`Manifold.
  unit_sphere_embedding`: Sⁿ, Tⁿ, their products and powers). Each well is
  a minimum of ψ with Hess ψ(c_i) = a_i I. Under f⁻¹(y) = exp_y(grad ψ(y))
  it pulls mass in: near c_i, det J_{f⁻¹} ≈ (1 + a_i)^n, so one layer
  multiplies the density at a data point by up to (1 + a)^n, on a length
  scale 1/√κ_i that smooth MLP potentials (which move mass on the scale of
  a radian) cannot reach. Maximum likelihood needs no solve, and the only
  hard constraint is det J_{f⁻¹} > 0: a lower bound on Hess ψ (Lemma 4's
  positive definiteness of H_c + Hess ψ); the positive curvature at the
  wells is unbounded.

  Derivation of the bound. With r_f the geodesic distance from c in the
  unit-sphere factor f, ½|φ(x) − φ(c)|² = Σ_f (1 − cos r_f) =: g, and
  Hess_f(1 − cos r_f) = cos r_f · I_f on Sⁿ and S¹ alike (F(r) = 1 − cos r
  has F'' = cos r and F' cot r = cos r). For one well ψ = −(a/κ) e^{−κg},
    grad ψ = a e^{−κg} ∇g,   Hess ψ = a e^{−κg} (diag_f(cos r_f I_f) − κ ∇g∇gᵀ),
  with |∇g|² = Σ_f sin² r_f. Put u = Σ_f sin²(r_f/2), so g = 2u,
  cos r_f >= 1 − 2u and Σ_f sin² r_f <= 4u. Then
    λ_min(Hess ψ) >= a e^{−2κu} (1 − (2 + 4κ) u) >= −a m(κ),
    m(κ) = (2 + 1/κ) exp(−(3κ + 1)/(2κ + 1))   (`well_concavity`),
  the minimum over u >= 0 (at u* = (3κ + 1)/(2κ(2κ + 1))): m(1) = 0.79,
  m(∞) = 2e^{−3/2} = 0.446, the concave skirt at r ≈ √(3/κ). Likewise
  ‖grad ψ‖ <= a e^{−2κu} 2√u <= a/√(eκ), which for κ >= 1 is at most
  c₀ a m(κ), c₀ = 1/(m(κ_min)√(eκ_min)) (m(κ)√κ increases for κ >= 1).

  The parametrisation. a_i = A s_i / m(κ_i) with shares s_i in [0, 1] and
  A the budget of `_wells_budget` (the largest value that Lemma 4
  certifies: 0.98 on tori, 0.63 on spheres at κ_min = 1, 0.83 at κ_min = 10):
    bound='sum': s = softmax(w, 0)[:M] (a null slot keeps Σ s < 1), so
      Hess ψ ⪰ −Σ a_i m(κ_i) ⪰ −A and ‖grad ψ‖ < c₀ A for every parameter
      value: the map is a diffeomorphism and the solve from y = x finds the
      unique minimiser (Lemma 4).
    bound='well': s_i = sigmoid(w_i), so each well alone is certified but
      overlapping skirts can add up. The sum is not certified: train with
      a fold barrier (`training.fit_nll(fold_penalty=)`) and check the
      result (`diagnostics.check_diffeomorphism`); the IRCPM's fold policy
      reports any det J_{f⁻¹} <= 0 it evaluates.
    bound='crowd': s_i = sigmoid(w_i) / n_i with n_i = Σ_j exp(−κ_ij
      ½|φ(c_i) − φ(c_j)|² / 8), κ_ij = min(κ_i, κ_j) (n_i >= 1 counts the
      wells whose skirts reach c_i). A pile of k coincident wells then has
      the budget of one, so skirts rarely add up to a fold, while isolated
      wells keep the full per-well budget. Still not certified: use the
      barrier and the check as for 'well'.

  Args:
    manifold: a `Manifold` with `unit_sphere_embedding`.
    centres: initial centres [M, ambient_dim], points of M (e.g. M training
      points).
    concentration: initial κ, scalar or [M], > min_concentration.
    curvature: initial total share (bound='sum') or per-well share
      (bound='well', 'crowd': sigmoid(w_i)) of the budget, in (0, 1).
    bound: 'sum' (certified), 'well' or 'crowd' (see above).
    min_concentration: κ_min >= 1.
    trainable_centres: whether the centres train.
    dtype: variable dtype (arithmetic follows the input's dtype).
    name: name scope.

  Shapes: `__call__(x)` maps [..., ambient_dim] to [...].
  """

  def __init__(self,
               manifold: base.Manifold,
               centres,
               concentration=100.,
               curvature: float = 0.1,
               bound: str = 'sum',
               min_concentration: float = 1.,
               trainable_centres: bool = True,
               dtype=tf.float32,
               name: str = 'wells_potential'):
    super().__init__(name=name)
    if not manifold.unit_sphere_embedding:
      raise ValueError(
          f'Wells needs a manifold whose embedding is a product of unit '
          f'spheres (Manifold.unit_sphere_embedding); {manifold!r} is not.')
    if bound not in ('sum', 'well', 'crowd'):
      raise ValueError(
          f"bound must be 'sum', 'well' or 'crowd', got {bound!r}.")
    if not float(min_concentration) >= 1.:
      raise ValueError('min_concentration must be >= 1 (the gradient bound '
                       f'uses it), got {min_concentration}.')
    if not 0. < float(curvature) < 1.:
      raise ValueError(f'curvature must be in (0, 1), got {curvature}.')
    self.manifold = manifold
    self.bound = bound
    self.min_concentration = float(min_concentration)
    self._dtype = tf.as_dtype(dtype)
    np_dtype = self._dtype.as_numpy_dtype
    centres = np.asarray(centres, np_dtype)
    if (centres.ndim != 2 or centres.shape[0] < 1
        or centres.shape[1] != manifold.ambient_dim):
      raise ValueError(f'centres must have shape [M, {manifold.ambient_dim}]'
                       f' with M >= 1, got {centres.shape}.')
    if not np.all(np.isfinite(centres)):
      raise ValueError('centres must be finite.')
    m = centres.shape[0]
    kappa = np.broadcast_to(np.asarray(concentration, np_dtype), [m])
    if not np.all(kappa > self.min_concentration):
      raise ValueError(f'concentration must exceed min_concentration '
                       f'{self.min_concentration}, got {concentration}.')
    self.budget = _wells_budget(manifold, self.min_concentration)
    frac = float(curvature)
    if bound == 'sum':
      w0 = math.log(frac / (m * (1. - frac)))
    else:
      w0 = math.log(frac / (1. - frac))
    with self.name_scope:
      self.centre_variable = tf.Variable(centres, name='centres',
                                         trainable=bool(trainable_centres))
      self.log_excess_concentration = tf.Variable(
          np.log(kappa - self.min_concentration), name='log_excess_kappa')
      self.share_logits = tf.Variable(np.full([m], w0, np_dtype),
                                      name='share_logits')

  @property
  def num_wells(self) -> int:
    return int(self.share_logits.shape[0])

  def centres(self) -> tf.Tensor:
    """c_i, [M, ambient_dim]."""
    return self.manifold.projx(self.centre_variable)

  def concentrations(self) -> tf.Tensor:
    """κ_i >= κ_min, [M]."""
    return self.min_concentration + tf.exp(self.log_excess_concentration)

  def shares(self) -> tf.Tensor:
    """s_i, [M]: Σ s < 1 (bound='sum') or each s_i < 1 (bound='well')."""
    w = self.share_logits
    if self.bound == 'sum':
      return tf.nn.softmax(tf.concat([w, tf.zeros([1], w.dtype)], 0))[:-1]
    if self.bound == 'crowd':
      return tf.sigmoid(w) / self.crowding()
    return tf.sigmoid(w)

  def crowding(self) -> tf.Tensor:
    """n_i >= 1 of bound='crowd', [M] (see the class docstring)."""
    e = self.manifold.embed(self.centres())
    g = 0.5 * tf.reduce_sum(tf.square(e[:, tf.newaxis] - e[tf.newaxis]), -1)
    k = self.concentrations()
    kij = tf.minimum(k[:, tf.newaxis], k[tf.newaxis])
    # exp(−κ r²/16) at separation r: two wells whose concave skirts (at
    # r ≈ √(3/κ) from each) meet halfway, r ≈ 3.5/√κ, count each other
    # about half.
    return tf.reduce_sum(tf.exp(-0.125 * kij * g), axis=-1)

  def curvatures(self) -> tf.Tensor:
    """a_i = Hess ψ(c_i) of each well alone, [M]."""
    return (self.budget * self.shares()
            / well_concavity(self.concentrations()))

  def gradient_and_concavity_bounds(self):
    """(G, A): ‖grad ψ‖ <= G and Hess ψ ⪰ −A over M (sums over the wells of
    a_i/√(eκ_i) and a_i m(κ_i)); with bound='sum', A <= `budget`. Hess ψ
    has no upper bound (unlike `MLP.derivative_bounds`' two-sided one)."""
    a, k = self.curvatures(), self.concentrations()
    return (tf.reduce_sum(a / tf.sqrt(math.e * k)),
            tf.reduce_sum(a * well_concavity(k)))

  def ambient_derivatives(self, x: tf.Tensor, with_hessian: bool = True,
                          keep: Optional[tf.Tensor] = None):
    """(ψ [N], ∇ψ [N, A], ∇²ψ [N, A, A] or None) in closed form, or None.

    Euclidean derivatives in ambient coordinates (the derivatives engine's
    `derivatives.potential_derivatives` uses them instead of nested tapes,
    which for M wells would differentiate a [N, M] graph three times in a
    training step). With w_i = a_i e^{−κ_i g_i} and g_i as in the class
    docstring,
      ∇ψ = Σ_i w_i ∇g_i,   ∇²ψ = Σ_i w_i (∇²g_i − κ_i ∇g_i ∇g_iᵀ),
    where on Sⁿ (x ∈ R^{n+1}) ∇g_i = x − c_i, ∇²g_i = I, and on Tⁿ (angles)
    ∇g_i = sin(θ − c_i), ∇²g_i = diag cos(θ − c_i). Other manifolds: None
    (the engine then uses tapes).

    Args:
      x: [N, ambient_dim].
      with_hessian: also return ∇²ψ (else None in its place).
      keep: optional [N, M] weights of the wells at each point (1 keeps a
        well, 0 leaves it out: `LeaveOneOut`).
    """
    from tfp_ircpm.manifolds import sphere as sphere_lib  # pylint: disable=g-import-not-at-top
    from tfp_ircpm.manifolds import torus as torus_lib  # pylint: disable=g-import-not-at-top
    is_sphere = isinstance(self.manifold, sphere_lib.Sphere)
    if not (is_sphere or isinstance(self.manifold, torus_lib.Torus)):
      return None
    dtype = x.dtype
    c = tf.cast(self.centres(), dtype)                        # [M, A]
    k = tf.cast(self.concentrations(), dtype)                 # [M]
    a = tf.cast(self.curvatures(), dtype)
    diff = x[:, tf.newaxis, :] - c                            # [N, M, A]
    if is_sphere:
      grad_g = diff
      g = 0.5 * tf.reduce_sum(tf.square(diff), axis=-1)
    else:
      grad_g = tf.sin(diff)
      # 1 − cos r = 2 sin²(r/2): no cancellation near the centres.
      g = 2. * tf.reduce_sum(tf.square(tf.sin(0.5 * diff)), axis=-1)
    e = tf.exp(-k * g)                                        # [N, M]
    if keep is not None:
      e = e * tf.cast(keep, dtype)
    w = a * e
    psi = -tf.reduce_sum((a / k) * e, axis=-1)
    grad = tf.einsum('nm,nma->na', w, grad_g)
    if not with_hessian:
      return psi, grad, None
    outer = tf.einsum('nm,nma,nmb->nab', w * k, grad_g, grad_g)
    if is_sphere:
      eye = tf.eye(self.manifold.ambient_dim, dtype=dtype)
      curv = tf.reduce_sum(w, axis=-1)[:, tf.newaxis, tf.newaxis] * eye
    else:
      curv = tf.linalg.diag(tf.einsum('nm,nma->na', w, tf.cos(diff)))
    return psi, grad, curv - outer

  def __call__(self, x: tf.Tensor,
               keep: Optional[tf.Tensor] = None) -> tf.Tensor:
    """ψ(x) [...] for x [..., ambient_dim]; `keep` [..., M] as in
    `ambient_derivatives`."""
    dtype = x.dtype
    e = self.manifold.embed(x)[..., tf.newaxis, :]           # [..., 1, E]
    ec = tf.cast(self.manifold.embed(self.centres()), dtype)  # [M, E]
    # The squared difference, not F − φ(x)·φ(c): at κ ~ 1e4 the cancellation
    # of the dot-product form costs float32 its accuracy near the centres.
    g = 0.5 * tf.reduce_sum(tf.square(e - ec), axis=-1)      # [..., M]
    k = tf.cast(self.concentrations(), dtype)
    a = tf.cast(self.curvatures(), dtype)
    e = tf.exp(-k * g)
    if keep is not None:
      e = e * tf.cast(keep, dtype)
    return -tf.reduce_sum((a / k) * e, axis=-1)


class LeaveOneOut(tf.Module):
  """The wells' ψ with each training row's own well left out.

  Maximum likelihood on the points that the wells are centred at rewards
  each well for its own centre: a well of width 1/√κ at an isolated
  training point raises that point's density by up to (1 + a)ⁿ whether or
  not any other point lies near it, so fine wells memorise the training
  set. The leave-one-out likelihood, the classical remedy for kernel
  bandwidths, scores row i under the wells without the one centred at row
  i: a well then gains only from the *other* points within its reach. A
  coordinate that occurs in several rows keeps its well for all of them
  (the other copies justify it): repeated event sites earn their spikes.

  Evaluate this potential on [batch_size, ambient_dim] points, the batch
  whose training-row indices were last assigned to `rows` ([batch_size]
  int32); it shares every variable with `wells`, so the gradient trains
  them.

  Args:
    wells: a `Wells`.
    owners: [M] int, the training row that alone owns well j (its centre
      is that row's coordinate and no other row's), or -1.
    batch_size: rows per evaluation.
  """

  def __init__(self, wells: Wells, owners, batch_size: int,
               name: str = 'leave_one_out'):
    super().__init__(name=name)
    owners = np.asarray(owners, np.int32)
    if owners.shape != (wells.num_wells,):
      raise ValueError(f'owners must have shape [{wells.num_wells}], got '
                       f'{owners.shape}.')
    self.wells = wells
    self.owners = tf.constant(owners)
    with self.name_scope:
      self.rows = tf.Variable(tf.fill([int(batch_size)], -2), trainable=False,
                              name='rows')

  def _keep(self, x: tf.Tensor) -> tf.Tensor:
    """[N, M]: False where well j is row n's own. Owner -1 never equals a
    row index (>= 0), so shared wells are always kept; so are all wells at
    the points of a call of another size than `rows` (the log-det's
    global-minimum candidates), which belong to no row (-2, no owner)."""
    n = tf.shape(x)[0]
    rows = tf.cond(tf.equal(n, tf.size(self.rows)), lambda: self.rows,
                   lambda: tf.fill([n], -2))
    return tf.not_equal(rows[:, tf.newaxis], self.owners[tf.newaxis])

  def ambient_derivatives(self, x: tf.Tensor, with_hessian: bool = True):
    return self.wells.ambient_derivatives(x, with_hessian,
                                          keep=self._keep(x))

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    return self.wells(x, keep=self._keep(x))


def _embedding_constants(manifold: base.Manifold):
  """(‖Dφ‖, ‖∇²φ‖) for the manifold's `embed` φ
  (`Manifold.embed_derivative_bounds`); ValueError if it has none."""
  consts = manifold.embed_derivative_bounds
  if consts is None:
    raise ValueError(
        f'No certified bounds for {manifold!r}: it does not provide '
        f'Manifold.embed_derivative_bounds.')
  return float(consts[0]), float(consts[1])


_MARGIN = 0.98  # keeps the strict inequalities of Lemmas 3-4 strict.


def _lemma4_constants(manifold: base.Manifold):
  """(K, λ_max): curvature bound and the sup of admissible radii; raises if
  the manifold does not know them."""
  k = manifold.sectional_curvature_bound
  lam_max = manifold.max_certified_radius()
  if k is None or lam_max is None:
    raise ValueError(
        f'No certified bounds for {manifold!r}: it does not provide '
        f'Manifold.sectional_curvature_bound and injectivity_radius.')
  return float(k), float(lam_max)


def certified_targets(manifold: base.Manifold,
                      radius: Optional[float] = None):
  """(G*, H*): bounds on ‖grad ψ‖, ‖Hess ψ‖ under which descent from y = x
  finds the unique minimiser of h(x, ·) (Lemmas 3-4), or None.

  With λ = `radius`, G* = 0.98 λ/2 and H* = 0.98 η(λ), η the manifold's
  `lemma4_hessian_bound` and λ below its `max_certified_radius`. On curved
  manifolds (`sectional_curvature_bound` K > 0: spheres, and products and
  powers with a sphere factor) η(λ) = λ√K cot(λ√K), i.e. λ cot λ with
  λ < π/2 on the unit sphere (Sec. 4.3); radius=None there returns None,
  which tells `MLP.certified_scale` to choose λ per parameter value. On
  flat ones (tori) λ < π (default 0.98π, 0.98 of the injectivity radius)
  and H* = 0.98 (H_c = I). The 2% margin keeps the inequalities strict.
  """
  k, lam_max = _lemma4_constants(manifold)
  if k > 0.:
    if radius is None:
      return None
    lam = float(radius)
    if not 0. < lam < lam_max:
      raise ValueError(f'On {manifold!r} (curvature <= {k:g}) the certified '
                       f'radius must be in (0, {lam_max:.6g}) (π/2 on '
                       f'spheres), got {lam}.')
    return _MARGIN * lam / 2., _MARGIN * manifold.lemma4_hessian_bound(lam)
  lam = _MARGIN * lam_max if radius is None else float(radius)
  if not 0. < lam < lam_max:
    raise ValueError(f'On {manifold!r} (flat) the certified radius must be '
                     f'in (0, {lam_max:.6g}) (π on tori), got {lam}.')
  return _MARGIN * lam / 2., _MARGIN * manifold.lemma4_hessian_bound(lam)


# -- Smoothness of potentials -------------------------------------------------

# Activations whose second derivative is discontinuous or undefined (relu-type
# kinks; elu, selu and softsign are C¹ only), by the names TF and Keras give
# them. Smooth ones (softplus, tanh, sigmoid, swish/silu, gelu, mish,
# exponential, linear, softmax) are absent.
_NONSMOOTH_NAMES = frozenset([
    'relu', 'relu6', 'leaky_relu', 'crelu', 'crelu_v2', 'elu', 'selu',
    'prelu', 'thresholded_relu', 'hard_sigmoid', 'hard_silu', 'hard_swish',
    'hard_tanh', 'softsign', 'abs', 'absolute'])
_CANONICAL = {'crelu_v2': 'crelu', 'absolute': 'abs'}


def _nonsmooth_callables():
  """{callable: name} for the non-C² activations of TF and tf_keras."""
  table = {tf.nn.relu: 'relu', tf.nn.relu6: 'relu6',
           tf.nn.leaky_relu: 'leaky_relu', tf.nn.crelu: 'crelu',
           tf.nn.elu: 'elu', tf.nn.selu: 'selu', tf.math.abs: 'abs',
           tf.math.softsign: 'softsign'}
  try:
    import tf_keras  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    return table
  for name in ('relu', 'elu', 'selu', 'hard_sigmoid', 'softsign'):
    fn = getattr(tf_keras.activations, name, None)
    if fn is not None:
      table[fn] = name
  return table


def _nonsmooth_layer_name(obj) -> Optional[str]:
  """The activation of a tf_keras activation layer (ReLU, ELU, ...), if
  non-smooth."""
  try:
    import tf_keras  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    return None
  layers = tf_keras.layers
  for cls, name in ((layers.ReLU, 'relu'), (layers.LeakyReLU, 'leaky_relu'),
                    (layers.ELU, 'elu'), (layers.PReLU, 'prelu'),
                    (layers.ThresholdedReLU, 'thresholded_relu')):
    if isinstance(obj, cls):
      return name
  return None


def _nonsmooth_activation_name(activation) -> Optional[str]:
  """The name of `activation` (a callable or Keras name string) if it is a
  known non-C² activation, else None (smooth, or unknown)."""
  if activation is None:
    return None
  if isinstance(activation, str):
    name = activation.lower()
    return _CANONICAL.get(name, name) if name in _NONSMOOTH_NAMES else None
  while isinstance(activation, functools.partial):   # e.g. leaky_relu(α)
    activation = activation.func
  try:
    name = _nonsmooth_callables().get(activation)
  except TypeError:                                  # unhashable callable
    name = None
  if name is not None:
    return name
  name = getattr(activation, '__name__', None)
  if isinstance(name, str) and name.lower() in _NONSMOOTH_NAMES:
    return _CANONICAL.get(name.lower(), name.lower())
  return None


def nonsmooth_activations(potential) -> List[str]:
  """Names of the known non-C² activations a potential uses, e.g. ['relu'].

  The IRCPM needs ψ twice continuously differentiable (module docstring);
  this is a static inspection, not a proof of smoothness. It looks at the
  `activation` attribute of the potential and, for `tf.Module`s (which
  include `tf_keras` layers and models), of every submodule, recursively
  through nested models, and at `tf_keras` activation layers (ReLU,
  LeakyReLU, ELU, PReLU, ThresholdedReLU). Reported: relu, relu6,
  leaky_relu, crelu, elu and selu (C¹ only), prelu, thresholded_relu,
  hard_sigmoid, hard_silu/hard_swish, softsign (C¹), abs. Not reported:
  smooth ones (softplus, tanh, sigmoid, swish/silu, gelu, mish,
  exponential, linear, softmax) and anything it cannot see into: a plain
  Python function, or a lambda wrapping a ReLU, gives [].

  Args:
    potential: ψ: a `potentials.MLP`, a `tf_keras` model, any `tf.Module`
      or callable.

  Returns:
    The names, each once, in the order first found.
  """
  found = []
  objects = [potential]
  if isinstance(potential, tf.Module):
    objects += list(potential.submodules)
  for obj in objects:
    try:
      activation = getattr(obj, 'activation', None)
    except Exception:  # pylint: disable=broad-except
      activation = None                  # a property that fails to evaluate
    for name in (_nonsmooth_layer_name(obj),
                 _nonsmooth_activation_name(activation)):
      if name is not None and name not in found:
        found.append(name)
  return found


class InvariantMLP(MLP):
  """ψ = MLP(features(x)) with G-invariant features: a G-equivariant flow.

  If every g ∈ G acts by isometries and features(g·x) = features(x), then ψ
  is G-invariant and the IRCPM is G-equivariant (Lemma 1). The paper's
  "Symmetric MLP" on T² uses h = θ₁ − θ₂, invariant under the diagonal shift
  θ ↦ θ + c·1; `diagonal_shift_features` provides (cos h, sin h) for it.

  Args:
    manifold: the `Manifold` ψ is defined on.
    features: callable, points [..., ambient_dim] → [..., feature_dim].
    feature_dim: size of the features' last axis.
    hidden_units, output_scale, activation, dtype, seed: as for `MLP`.
  """

  def __init__(self,
               manifold: base.Manifold,
               features: Callable[[tf.Tensor], tf.Tensor],
               feature_dim: int,
               hidden_units: Sequence[int] = (32, 32),
               output_scale: float = 1. / 20.,
               activation: Callable[[tf.Tensor], tf.Tensor] = softplus,
               dtype=tf.float32,
               seed: Optional[int] = None,
               name: str = 'invariant_mlp_potential'):
    self._features_fn = features
    self._feature_size = int(feature_dim)
    super().__init__(manifold, hidden_units, output_scale, activation, dtype,
                     seed, name=name)

  def _feature_dim(self) -> int:
    return self._feature_size

  def features(self, x: tf.Tensor) -> tf.Tensor:
    return self._features_fn(x)


def diagonal_shift_features(theta: tf.Tensor) -> tf.Tensor:
  """(cos, sin) of consecutive differences θᵢ − θᵢ₊₁ on Tⁿ, [..., 2(n−1)].

  Invariant under the diagonal U(1) action θ ↦ θ + c·1 (the symmetry of the
  paper's u₁), and a complete set of invariants: they determine θ up to it.
  """
  diff = theta[..., :-1] - theta[..., 1:]
  return _autodiff.concat_last([tf.cos(diff), tf.sin(diff)])


def gradient(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
  """∇fn(x) (ambient), differentiable again, for use *inside* potentials.

  The c-transform solve builds its graph with every gradient tape paused
  (see `solvers.solve`), so a potential that needs a derivative of something
  must not rely on `tf.GradientTape` alone: in graph mode this uses
  `tf.gradients`, which needs no tape, and eagerly a tape.
  """
  if tf.executing_eagerly():
    with tf.GradientTape() as tape:
      tape.watch(x)
      value = fn(x)
    return tape.gradient(value, x,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)
  value = fn(x)
  return tf.gradients(value, x,
                      unconnected_gradients=tf.UnconnectedGradients.ZERO)[0]


class EnergyPotential(tf.Module):
  """ψ = α u(x) [+ grad u(x)ᵀ M grad u(x)]: the families of Sec. 3.3.

  Lemma 2 suggests that ψ, ψ^c and the target energy u share their mode
  structure, so ψ = g(u) + Δ with g non-decreasing. This class is the
  paper's Table 1 "αu" (1 parameter) and "αu + ∇uᵀM∇u" (α and a symmetric
  M: 4 parameters on T²) parametrisations.

  grad u is the Riemannian gradient in ambient coordinates. On tori that is
  the tangent-frame gradient itself (the frame is the identity), so M is the
  symmetric matrix in the tangent frame. On spheres a frame cannot be chosen
  smoothly everywhere (hairy ball), so M acts on the ambient representation
  P_x ∇u, keeping ψ smooth: (n+1)(n+2)/2 entries of M on Sⁿ.

  Args:
    manifold: the `Manifold`.
    energy: u, points [..., ambient_dim] → [...].
    quadratic: include the ∇uᵀM∇u term.
    alpha: initial α.
    dtype: variable dtype.
  """

  def __init__(self,
               manifold: base.Manifold,
               energy: Callable[[tf.Tensor], tf.Tensor],
               quadratic: bool = False,
               alpha: float = 0.1,
               dtype=tf.float32,
               name: str = 'energy_potential'):
    super().__init__(name=name)
    self.manifold = manifold
    self.energy = energy
    self.quadratic = bool(quadratic)
    with self.name_scope:
      self.alpha = tf.Variable(tf.constant(alpha, dtype), name='alpha')
      if self.quadratic:
        n = manifold.ambient_dim
        self.m_entries = tf.Variable(tf.zeros([n * (n + 1) // 2], dtype),
                                     name='m_upper')

  @property
  def num_parameters(self) -> int:
    return sum(int(v.shape.num_elements()) for v in self.trainable_variables)

  def matrix(self, dtype=None) -> tf.Tensor:
    """The symmetric M, [ambient_dim, ambient_dim].

    `m_entries` holds its upper triangle in row-major order (the order of
    `np.triu_indices`): M₀₀, M₀₁, ..., M₁₁, ...
    """
    n = self.manifold.ambient_dim
    rows, cols = np.triu_indices(n)
    upper = tf.scatter_nd(np.stack([rows, cols], -1), self.m_entries, [n, n])
    m = upper + tf.transpose(upper) - tf.linalg.diag(tf.linalg.diag_part(upper))
    return m if dtype is None else tf.cast(m, dtype)

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    dtype = x.dtype
    u = tf.cast(self.energy(x), dtype)
    psi = tf.cast(self.alpha, dtype) * u
    if self.quadratic:
      grad_u = self.manifold.proju(
          x, gradient(lambda z: tf.cast(self.energy(z), dtype), x))
      m = self.matrix(dtype)
      psi += tf.reduce_sum(grad_u * tf.linalg.matvec(m, grad_u), axis=-1)
    return psi


# -- Lattice-equivariant potentials -------------------------------------------
#
# `LatticeConvPotential` and `spin_wave_pair_weights` live in
# `tfp_ircpm.lattice.potentials` (which uses `softplus` above, so importing
# them here at module level would be circular); these names resolve to them
# on first use.

__getattr__, __dir__ = _lazy.reexport(
    globals(), 'tfp_ircpm.lattice.potentials', ['LatticeConvPotential', 'spin_wave_pair_weights'])
