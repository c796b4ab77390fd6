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
      c = _MARGIN * tf.atan(2. * rk * grad_bound / hess_bound) / (
          2. * rk * grad_bound)
      inj = float(self.manifold.injectivity_radius)
      if inj < math.pi / (2. * math.sqrt(k)):
        c = tf.minimum(c, _MARGIN * inj / (2. * grad_bound))
      return tf.minimum(one, c)
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
  return tf.concat([tf.cos(diff), tf.sin(diff)], axis=-1)


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


class LatticeConvPotential(tf.Module):
  """ψ = output_scale · Σ_sites CNN(bond features), for L×L periodic lattices.

  The features at site i are functions of the bonds to its right and lower
  neighbours j: (cos, sin)(θᵢ − θⱼ) for XY spins (`spin='xy'`, points are
  angles [..., L²]) or sᵢ·sⱼ for O(3) spins (`spin='o3'`, points are unit
  vectors [..., 3L²]). They are invariant under the global symmetry (U(1)
  shifts θ ↦ θ + c, resp. rotations s ↦ Rs). The network is `len(hidden_units)`
  circular 3×3 convolutions with softplus and a 1×1 read-out, summed over
  sites, so ψ is also invariant under lattice translations. Both groups act
  by isometries, hence the IRCPM is equivariant under them (Lemma 1).

  Convolutions are sums of `tf.roll`ed matmuls rather than `tf.nn.conv2d`:
  rolls give the periodic boundary directly, and every derivative order is
  plain matmuls (log-det gradients need third derivatives of ψ).

  Args:
    lattice_size: L.
    spin: 'xy' or 'o3'.
    hidden_units: channels of the 3×3 convolution layers.
    output_scale: multiplies ψ; keeps ‖Hess ψ‖ small at initialisation.
    dtype: variable dtype (arithmetic follows the input's dtype).
    seed: integer seed for the initialisation.
    certified: (XY only) multiply ψ by `certified_scale()`, which keeps
      ‖Hess ψ‖ <= 0.98 for every value of the parameters, so J_{f⁻¹} =
      I + Hess ψ stays positive definite: f is a diffeomorphism of T^{L²}
      (the gradient map of the strictly convex ½|y|² + ψ, commuting with
      2πZ^{L²}) and the Newton-CG solve sees condition numbers <= 99.
    bond_term: add Σ_sites wᵀφᵢ, a learnable linear function of the bond
      features φᵢ (started at w = 0). It contains the energy itself, e.g.
      −u/β = Σ_⟨ij⟩ cos(θᵢ − θⱼ) for XY: the paper's αu family of Sec. 3.3,
      which Lemma 2 suggests as the leading term of ψ (on a uniform base
      log det(I + α Hess u) = −2αu + O(α²)), with the network as correction.
    pair_term: add Σ_{i,j} W(rᵢ − rⱼ) sᵢ·sⱼ, a learnable coupling of *every*
      pair of spins (sᵢ = (cos θᵢ, sin θᵢ) for XY) through a periodic kernel
      W [L, L] of the displacement (started at 0; W(0) is unused, sᵢ·sᵢ = 1).
      Invariant under both groups, like the network, but of unlimited range:
      the network sees 1 + len(hidden_units) sites each way, while the
      target's long-wavelength modes (spin waves; their variance ∝
      1/(β λ_k) for Laplacian eigenvalues λ_k) couple the whole lattice. In
      the spin-wave regime Hess ψ of this term is a circulant, so each layer
      can set the contraction of every Fourier mode k on its own (Ŵ(k)).
  """

  _OFFSETS = tuple((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1))

  def __init__(self,
               lattice_size: int,
               spin: str = 'xy',
               hidden_units: Sequence[int] = (16, 16),
               output_scale: float = 0.1,
               dtype=tf.float32,
               seed: Optional[int] = None,
               certified: bool = False,
               bond_term: bool = False,
               pair_term: bool = False,
               name: str = 'lattice_conv_potential'):
    super().__init__(name=name)
    if spin not in ('xy', 'o3'):
      raise ValueError(f"spin must be 'xy' or 'o3', got {spin!r}.")
    if certified and spin != 'xy':
      raise ValueError('certified=True is implemented for XY spins only.')
    self.certified = bool(certified)
    self.lattice_size = int(lattice_size)
    self.spin = spin
    self.output_scale = float(output_scale)
    self.hidden_units = tuple(int(h) for h in hidden_units)
    self._dtype = tf.as_dtype(dtype)
    in_channels = 4 if spin == 'xy' else 2
    rng = tf.random.Generator.from_seed(seed) if seed is not None else (
        tf.random.Generator.from_non_deterministic_state())
    self.kernels, self.biases = [], []
    sizes = (in_channels,) + self.hidden_units
    with self.name_scope:
      for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        fan_in = 9 * c_in
        k = rng.normal([9, c_in, c_out], dtype=self._dtype) / math.sqrt(fan_in)
        self.kernels.append(tf.Variable(k, name=f'kernel{i}'))
        self.biases.append(tf.Variable(
            rng.normal([c_out], dtype=self._dtype) * 0.1, name=f'bias{i}'))
      readout = rng.normal([sizes[-1]], dtype=self._dtype) / math.sqrt(
          sizes[-1])
      self.readout = tf.Variable(readout, name='readout')
      self.bond_weights = (tf.Variable(tf.zeros([in_channels], self._dtype),
                                       name='bond_weights')
                           if bond_term else None)
      self.pair_weights = (tf.Variable(tf.zeros([lattice_size] * 2,
                                                self._dtype),
                                       name='pair_weights')
                           if pair_term else None)
    l = self.lattice_size
    sites = np.stack(np.meshgrid(np.arange(l), np.arange(l), indexing='ij'),
                     -1).reshape(-1, 2)
    disp = (sites[:, None] - sites[None, :]) % l
    # C[i, j] = W(rᵢ − rⱼ) is a gather of W: index of each pair's displacement.
    self._pair_index = disp[..., 0] * l + disp[..., 1]

  @property
  def num_parameters(self) -> int:
    return sum(int(v.shape.num_elements()) for v in self.trainable_variables)

  @property
  def ambient_dim(self) -> int:
    return self.lattice_size ** 2 * (1 if self.spin == 'xy' else 3)

  def features(self, x: tf.Tensor) -> tf.Tensor:
    """Invariant bond features [N, L, L, C] for points [N, ambient_dim]."""
    l = self.lattice_size
    if self.spin == 'xy':
      theta = tf.reshape(x, [-1, l, l])
      dx = theta - tf.roll(theta, -1, axis=2)
      dy = theta - tf.roll(theta, -1, axis=1)
      return tf.stack([tf.cos(dx), tf.sin(dx), tf.cos(dy), tf.sin(dy)], -1)
    s = tf.reshape(x, [-1, l, l, 3])
    return tf.stack([tf.reduce_sum(s * tf.roll(s, -1, axis=2), -1),
                     tf.reduce_sum(s * tf.roll(s, -1, axis=1), -1)], -1)

  def hessian_bound(self) -> tf.Tensor:
    """An upper bound on ‖Hess ψ‖ over T^{L²} (XY, before certification).

    As `MLP.certified_scale`, with the convolutions as structured matrices
    C_k = Σ_o S_o ⊗ K_{k,o} (S_o the lattice shifts), so ‖C_k‖ <= Σ_o ‖K_{k,o}‖
    and entrywise sensitivities are translation invariant: a_L = s|r|,
    a_{k-1} = Σ_o |K_{k,o}| a_k per channel. The features are (cos, sin) of
    the bond differences Dθ, ‖D‖² <= 8 (the lattice Laplacian's top
    eigenvalue), and Σ_m g_m ∇²φ(D_mθ) <= 4 (‖a_0^x‖ + ‖a_0^y‖) with a_0^x
    the (cos, sin) pair of the x-bonds. Hence
      ‖Hess ψ‖ <= Σ_k ¼ max(a_k) ‖C_k‖² j_{k-1}² + 4 (‖a_0^x‖ + ‖a_0^y‖),
    j_0 = √8, j_k = ‖C_k‖ j_{k-1}.
    """
    if self.spin != 'xy':
      raise ValueError('hessian_bound is implemented for XY spins only.')
    norms = [tf.reduce_sum(tf.linalg.svd(k, compute_uv=False)[:, 0])
             for k in self.kernels]
    sens = [None] * (len(self.kernels) + 1)
    sens[-1] = self.output_scale * tf.abs(self.readout)
    for k in range(len(self.kernels), 0, -1):
      sens[k - 1] = tf.reduce_sum(
          tf.linalg.matvec(tf.abs(self.kernels[k - 1]), sens[k]), axis=0)
    jac_sq = [tf.constant(8., self._dtype)]
    for norm in norms:
      jac_sq.append(tf.square(norm) * jac_sq[-1])
    a_0 = sens[0]
    if self.bond_weights is not None:      # the linear term adds to ∂ψ/∂φ
      a_0 = a_0 + tf.abs(self.bond_weights)
    bound = 4. * (tf.norm(a_0[:2]) + tf.norm(a_0[2:]))
    if self.pair_weights is not None:
      # Σ_ij W_ij cos(θᵢ − θⱼ) has Hessian entries 2S_kl cos(θ_k − θ_l) off the
      # diagonal and minus their row sums on it (S = sym W), so by
      # Gershgorin ‖·‖ <= 4 max_k Σ_l |S_kl| <= 4 Σ_{r≠0} |W(r)|.
      bound += 4. * tf.reduce_sum(tf.abs(self._pair_kernel(self._dtype)))
    for k, norm in enumerate(norms, start=1):
      bound += 0.25 * tf.reduce_max(sens[k]) * tf.square(norm) * jac_sq[k - 1]
    return bound

  def certified_scale(self) -> tf.Tensor:
    """min(1, 0.98 / hessian_bound()): ψ times it has ‖Hess ψ‖ <= 0.98."""
    return tf.minimum(tf.ones([], self._dtype), 0.98 / self.hessian_bound())

  def _pair_kernel(self, dtype) -> tf.Tensor:
    """W [L²] with W(0) = 0 (it would only add a constant)."""
    w = tf.reshape(tf.cast(self.pair_weights, dtype), [-1])
    return tf.concat([tf.zeros([1], dtype), w[1:]], 0)

  def _pair_energy(self, x: tf.Tensor) -> tf.Tensor:
    """Σ_{i,j} W(rᵢ − rⱼ) sᵢ·sⱼ for points [N, ambient_dim] → [N]."""
    if self.spin == 'xy':
      s = tf.stack([tf.cos(x), tf.sin(x)], -1)       # [N, L², 2]
    else:
      s = tf.reshape(x, [-1, self.lattice_size ** 2, 3])
    coupling = tf.gather(self._pair_kernel(x.dtype), self._pair_index)
    return tf.einsum('nia,ij,nja->n', s, coupling, s)

  def _conv(self, h: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    out = 0.
    for k, (a, b) in enumerate(self._OFFSETS):
      shifted = tf.roll(h, shift=[a, b], axis=[1, 2])
      out += tf.einsum('nijc,cd->nijd', shifted, kernel[k])
    return out

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    """ψ(x): points [..., ambient_dim] → [...] (in x's dtype)."""
    dtype = x.dtype
    batch_shape = tf.shape(x)[:-1]
    h = features = self.features(tf.reshape(x, [-1, self.ambient_dim]))
    for kernel, bias in zip(self.kernels, self.biases):
      h = softplus(self._conv(h, tf.cast(kernel, dtype)) + tf.cast(bias, dtype))
    per_site = tf.linalg.matvec(h, tf.cast(self.readout, dtype))
    out = tf.reduce_sum(per_site, axis=[1, 2]) * tf.constant(
        self.output_scale, dtype)
    if self.bond_weights is not None:
      out += tf.reduce_sum(tf.linalg.matvec(
          features, tf.cast(self.bond_weights, dtype)), axis=[1, 2])
    if self.pair_weights is not None:
      out += self._pair_energy(tf.reshape(x, [-1, self.ambient_dim]))
    if self.certified:
      out = out * tf.cast(self.certified_scale(), dtype)
    return tf.reshape(out, batch_shape)


def spin_wave_pair_weights(lattice_size: int, beta: float,
                           concentration: float, scale: float = 1.
                           ) -> np.ndarray:
  """Pair kernel W [L, L] whose IRCPM maps site noise to spin waves.

  For `LatticeConvPotential(pair_term=True)` over `SymmetricMeanField(κ)`:
  the kernel with which one IRCPM turns the base's i.i.d. site fluctuations
  (variance ≈ 1/κ about the common direction) into the Gaussian spin-wave
  approximation of the target, u ≈ (β/2) θᵀΔθ (Δ the lattice Laplacian;
  O(3) has two such transverse fields per site).

  Near the aligned state the pair term ψ = Σ_{i≠j} W(rᵢ − rⱼ) sᵢ·sⱼ has
  Hess ψ = 2(S − diag(S1)), S the circulant of W, so J_{f⁻¹} = I + Hess ψ
  has eigenvalues 1 + 2(Ŵ(k) − Ŵ(0)) on the Fourier modes k, and
  y = J⁻¹x has covariance J⁻²/κ. Matching (βΔ)⁻¹ on every k ≠ 0 needs
  J(k) = √(βλ_k/κ), λ_k = Σ_axes 4 sin²(k_a/2); the zero mode (the global
  direction, which the base already draws uniformly) keeps J = 1, and
  Ŵ's mean is fixed by W(0) = 0. `scale` interpolates: J(k) = 1 +
  scale (√(βλ_k/κ) − 1) (0: identity map).

  The map is contracting on modes with βλ_k > κ and expanding on the rest;
  its λ_min(J) at the aligned state is min(1, 1 + scale(√(βλ_min/κ) − 1)),
  λ_min = 4 sin²(π/L), which must stay above the guard's floor.

  Returns:
    W [L, L] (float64), with W(0) = 0 and W(r) = W(−r).
  """
  l = int(lattice_size)
  k = 2. * np.pi * np.arange(l) / l
  lam = (4. * np.sin(k[:, None] / 2.) ** 2 + 4. * np.sin(k[None, :] / 2.) ** 2)
  target = np.sqrt(beta * lam / concentration)
  target[0, 0] = 1.
  w_hat = (scale * (target - 1.)) / 2.
  w_hat -= w_hat.mean()
  w = np.real(np.fft.ifft2(w_hat))
  w[0, 0] = 0.
  return w
