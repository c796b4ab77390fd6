"""Stochastic log-det gradients for training IRCPMs in high dimension.

The exact log-det (Eq. 4) costs one derivative pass per dimension and an
O(d³) factorisation per point. For training only its *gradient* is needed.
In symmetric form (see `logdet_surrogate`), log|det J_{f⁻¹}(y)| = log det H +
log|det d exp|, with H the Riemannian Hessian of h(x, ·) at y = f(x):
symmetric, positive definite under the bounds of Lemmas 3-4, and on Tᵈ equal
to J itself, I + Hess ψ (the second term is closed form, 0 on tori). So

    ∂ log det H = tr(H⁻¹ ∂H) = E_v[vᵀ H⁻¹ ∂H v]      (Hutchinson, E vvᵀ = I)

and with u = H⁻¹v from conjugate gradients on Hessian-vector products, held
constant, the surrogate s = uᵀ(H v) has E ∇s = ∇ log det H (the estimator of
convex potential flows, Huang et al. 2021). H v is differentiated through ψ's
variables and through y, which carries the implicit-function-theorem
gradients of the solve (`matrix_free.forward`). The surrogate's value is
s − stop_gradient(s) = 0: the loss it enters has the right gradient in
expectation, not the right value. Evaluation (ESS, KL) keeps exact log-dets.

`reverse_kl_loss` trains a `TransformedDistribution` of IRCPMs this way, with
the estimator chosen by argument: 'exact', 'stochastic', or 'auto' (stochastic
above `AUTO_EXACT_MAX_DIM` dimensions on tori, spheres and their products and
powers, exact otherwise).
"""

from typing import List, Optional

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import _autodiff
from tfp_ircpm import derivatives
from tfp_ircpm import flows
from tfp_ircpm import matrix_free
from tfp_ircpm import tolerances
from tfp_ircpm.bijectors import ircpm as ircpm_lib
from tfp_ircpm.manifolds import base

# Where the flow walker lived before `flows`.
flow_layers = flows.flow_layers

tfd = tfp.distributions
tfb = tfp.bijectors

ESTIMATORS = ('auto', 'exact', 'stochastic')
# Exact log-dets cost one reverse pass per dimension; up to here that is
# cheaper than a CG solve per probe and gives the exact gradient.
AUTO_EXACT_MAX_DIM = 16


def choose_estimator(manifold: base.Manifold, estimator: str = 'auto') -> str:
  """'exact' or 'stochastic' for `manifold`; validates the choice."""
  if estimator not in ESTIMATORS:
    raise ValueError(f'estimator must be one of {ESTIMATORS}, got '
                     f'{estimator!r}.')
  supported = manifold.has_closed_form_log_det_dexp
  if estimator == 'auto':
    high = manifold.dim > AUTO_EXACT_MAX_DIM
    return 'stochastic' if supported and high else 'exact'
  if estimator == 'stochastic' and not supported:
    raise ValueError(
        f'The stochastic log-det needs log det d(exp) in closed form '
        f'(Manifold.log_det_dexp), which {manifold!r} does not provide. Use '
        f'estimator="exact".')
  return estimator


def rademacher_probes(num_probes: int, shape, dtype, seed) -> tf.Tensor:
  """±1 probes [num_probes, *shape] (E vvᵀ = I)."""
  shape = tf.concat([[num_probes], shape], 0)
  return tfp.random.rademacher(shape, dtype=dtype, seed=seed)


def hessian_vector_product(manifold: base.Manifold, potential, x: tf.Tensor,
                           y: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
  """P Hess_y h(x, ·) P v, [N, ambient]; differentiable in x, y and ψ (tapes).

  `derivatives.hvp` of h(x, ·): the Riemannian Hessian of Sec. 4.2 on T_y
  (0 on normal directions). On a torus it is (I + Hess ψ) v.
  """
  return derivatives.hvp(manifold, derivatives.cost_fn(manifold, potential, x),
                         y, v)


def logdet_surrogate(manifold: base.Manifold, potential, y: tf.Tensor,
                     probes: tf.Tensor, cg_rtol: Optional[float] = None,
                     cg_max_iterations: int = 100) -> tf.Tensor:
  """Zero-valued s with E_v ∇s = ∇ log|det J_{f⁻¹}(y)|, shape [N].

  Eq. 4 in symmetric form: differentiating the optimality condition
  −log_y(x) + grad ψ(y) = 0 along x = f⁻¹(y) gives

      log|det J_{f⁻¹}(y)| = log det H + log|det d(exp_y)|_{log_y x}|,

  with H the Riemannian Hessian of h(x, ·) at y (symmetric positive
  definite at the minimiser) and the second term in closed form
  (`Manifold.log_det_dexp`; 0 on tori, where H = I + Hess ψ). It holds for
  every (y, θ), since x = f⁻¹(y) is exact, so its gradient is
  tr(H⁻¹ ∂H) + ∂(log det d exp): the first term by Hutchinson with tangent
  probes P_y v (E[P v vᵀ P] = P) and u = H⁻¹ P v from CG, both held fixed;
  the frame's own motion drops out of the trace (tr(EᵀdE + dEᵀE) = 0). The
  second term is exact. x is the closed-form inverse, differentiable in y
  and ψ, and y may carry the IFT gradients of the solve.

  Args:
    manifold: a manifold with `log_det_dexp` (see `choose_estimator`).
    potential: ψ.
    y: points [N, ambient], may carry gradients (e.g. from
      `matrix_free.forward`).
    probes: [P, N, ambient] with E vvᵀ = I on the tangent space
      (`rademacher_probes`); with √dim times an orthonormal tangent basis
      the mean over probes is the exact gradient.
    cg_rtol: CG relative tolerance (default 1e-5 in float32, 1e-10 in
      float64); the estimator is unbiased up to the CG error.
    cg_max_iterations: CG cap.

  Returns:
    [N] tensor: its value is 0; its gradient is as above (mean over probes).
  """
  choose_estimator(manifold, 'stochastic')
  y = tf.convert_to_tensor(y)
  probes = tf.cast(probes, y.dtype)
  num_probes = tf.shape(probes)[0]
  a = manifold.ambient_dim
  x = derivatives.inverse_map(manifold, potential, y)[0]
  tile = lambda t: tf.reshape(tf.tile(t[tf.newaxis], [num_probes, 1, 1]),
                              [-1, a])
  x_rep, y_rep = tile(x), tile(y)
  v = tf.stop_gradient(manifold.proju(y_rep, tf.reshape(probes, [-1, a])))
  rtol = (cg_rtol if cg_rtol is not None
          else tolerances.for_dtype(y.dtype).cg)
  x_stop, y_stop = tf.stop_gradient(x_rep), tf.stop_gradient(y_rep)

  def cg_solve(rhs):
    # The operator is H on T_y and the identity on normals; rhs is tangent.
    return matrix_free.conjugate_gradient(
        matrix_free.hvp(manifold, potential, x_stop, y_stop), rhs, rtol=rtol,
        max_iterations=cg_max_iterations).solution

  # H is symmetric, so uᵀ = vᵀH⁻¹ is a plain solve.
  u = tf.stop_gradient(_autodiff.without_tapes(cg_solve, v))
  s = tf.reduce_sum(
      u * hessian_vector_product(manifold, potential, x_rep, y_rep, v), -1)
  s = tf.reduce_mean(tf.reshape(s, [num_probes, -1]), axis=0)
  if not manifold.is_flat:          # 0 on flat manifolds
    s += manifold.log_det_dexp(x, y)
  return s - tf.stop_gradient(s)


def sample_and_log_prob(q: tfd.TransformedDistribution, n: int, seed=None,
                        estimator: str = 'exact', num_probes: int = 1,
                        return_layer_points: bool = False,
                        return_converged: bool = False):
  """y ~ q [n, ambient] and log q(y) [n], layer by layer.

  Each layer runs its own forward (`IRCPM.forward_with_result`: its solve
  back-end and its nonconvergence and fold policies, the same as
  `q.experimental_sample_and_log_prob`). With estimator 'exact', log q is
  exact (Eq. 4 via each layer's `inverse_log_det_jacobian`, from the
  solve's Hessian with the dense back-end); with 'stochastic' the log-det
  terms are the zero-valued surrogates of `logdet_surrogate` (right
  gradient in expectation, value log base(x) only). With
  `return_converged`, also a [n] bool mask of the points whose every solve
  converged to a minimiser, so a training loss can drop the others (give
  the layers nonconvergence='ignore' to keep them finite and quiet). With
  `return_layer_points`, also the list of each layer's output points (for
  `min_eigenvalue_penalty`).
  """
  base_dist, layers = flows.flow_layers(q)
  manifold = layers[0].manifold
  estimator = choose_estimator(manifold, estimator)
  base_seed, probe_seed = tfp.random.split_seed(seed if seed is not None
                                                else 0)
  x = base_dist.sample(n, seed=base_seed)
  log_q = base_dist.log_prob(x)
  y = x
  probe_seeds = tfp.random.split_seed(probe_seed, n=len(layers))
  points = []
  converged = tf.ones(tf.shape(x)[:1], tf.bool)
  for i, layer in enumerate(layers):
    y, result = layer.forward_with_result(y)
    converged &= result.converged & ~result.suboptimal
    points.append(y)
    if estimator == 'exact':
      log_q += layer.inverse_log_det_jacobian(y, event_ndims=1)
    else:
      probes = rademacher_probes(num_probes, tf.shape(y), y.dtype,
                                 probe_seeds[i])
      log_q += logdet_surrogate(layer.manifold, layer.potential, y, probes)
  out = (y, log_q)
  if return_layer_points:
    out += (points,)
  if return_converged:
    out += (converged,)
  return out


def min_hessian_eigenvalue(manifold: base.Manifold, potential, y: tf.Tensor,
                           iterations: int = 20, shift: float = 4.,
                           seed=None) -> tf.Tensor:
  """Differentiable estimate of λ_min(H) on T_y, [N].

  H is the Riemannian Hessian of h(x, ·) at y, x = f⁻¹(y) (Sec. 4.2; see
  `logdet_surrogate`). On Tᵈ it is J_{f⁻¹} = I + Hess ψ; on spheres and
  their products and powers it is Hess ½d(x, ·)² + Hess ψ, whose distance
  part has eigenvalues 1 and t·cot t at t = d(x, y) (Lemma 4). Either way
  λ_min(H) → 0 is where the c-transform solve stops being well posed
  (Lemmas 3-4) and det J_{f⁻¹} = det H · det d exp → 0.

  Power iteration on shift·I − H restricted to T_y (its top eigenvector is
  H's bottom one while λ_max(H) − λ_min(H) < 2·shift) from a random tangent
  start, then the Rayleigh quotient uᵀHu with u held fixed: its gradient
  (through ψ's variables, x and y) is ∇λ_min at convergence
  (Hellmann-Feynman). A Rayleigh quotient never lies below λ_min, so a short
  iteration *under*-reports violations.

  Args:
    manifold: a manifold with the symmetric form (`choose_estimator`).
    potential: ψ.
    y: points [N, ambient] (may carry gradients).
    iterations: power iterations.
    shift: see above.
    seed: stateless seed for the start vectors.

  Returns:
    [N] estimates of λ_min(H).
  """
  if not manifold.has_closed_form_log_det_dexp:
    raise ValueError(f'min_hessian_eigenvalue needs log det d(exp) in closed '
                     f'form (Manifold.log_det_dexp); got {manifold!r}.')
  y = tf.convert_to_tensor(y)
  x = derivatives.inverse_map(manifold, potential, y)[0]
  x_stop, y_stop = tf.stop_gradient(x), tf.stop_gradient(y)
  # Symbolic HVPs: tapes are paused for the iteration. The operator is H on
  # T_y and the identity on normals; iterates stay tangent.
  matvec = matrix_free.hvp(manifold, potential, x_stop, y_stop)

  def unit(u):
    return u / tf.norm(u, axis=-1, keepdims=True)

  def power(u0):
    def body(i, u):
      return i + 1, unit(manifold.proju(y_stop, shift * u - matvec(u)))
    return tf.while_loop(lambda i, u: i < iterations, body,
                         (tf.constant(0), u0))[1]

  u0 = tf.random.stateless_normal(tf.shape(y), seed if seed is not None
                                  else (0, 0), dtype=y.dtype)
  u0 = unit(manifold.proju(y_stop, u0))
  u = tf.stop_gradient(_autodiff.without_tapes(power, u0))
  return tf.reduce_sum(
      u * hessian_vector_product(manifold, potential, x, y, u), axis=-1)


def min_eigenvalue(manifold: base.Manifold, potential, y: tf.Tensor,
                   iterations: int = 20,
                   shift: float = 3., seed=None) -> tf.Tensor:
  """λ_min(Hess ψ(y)) on a flat manifold, [N]: `min_hessian_eigenvalue` − 1.

  Flat (`Manifold.is_flat`): tori and their products and powers, where
  J_{f⁻¹} = I + Hess ψ.
  """
  if not manifold.is_flat:
    raise ValueError(f'min_eigenvalue needs a flat manifold such as a torus '
                     f'(J = I + Hess psi); got {manifold!r}. Use '
                     f'min_hessian_eigenvalue.')
  return min_hessian_eigenvalue(manifold, potential, y, iterations,
                                shift + 1., seed) - 1.


def min_eigenvalue_penalty(layers: List[ircpm_lib.IRCPM], points,
                           floor: float = 0.2, iterations: int = 20,
                           seed=None) -> tf.Tensor:
  """Σ_layers mean_points relu(floor − λ_min(H)), H as `min_hessian_eigenvalue`.

  A soft guard, not a certificate: it keeps H (on Tᵈ, J_{f⁻¹} = I + Hess ψ)
  positive definite where the samples are. Reverse KL otherwise drives
  λ_min to 0 in the regions the flow expands, where samples are rare; there
  the map stops being a diffeomorphism and, on spheres, the solve fails
  (measured: 22 of 500 evaluation solves at O(3) L = 8, β = 1.1 unguarded).

  Args:
    layers: the IRCPMs, in application order.
    points: each layer's output points [N, ambient] (`sample_and_log_prob`
      with `return_layer_points`).
    floor: λ_min below this is penalised.
    iterations, seed: as `min_hessian_eigenvalue`.
  """
  seeds = tfp.random.split_seed(seed if seed is not None else 0,
                                n=len(layers))
  total = 0.
  for i, (layer, y) in enumerate(zip(layers, points)):
    lam = min_hessian_eigenvalue(layer.manifold, layer.potential, y,
                                 iterations, seed=seeds[i])
    total += tf.reduce_mean(tf.nn.relu(floor - lam))
  return total


def reverse_kl_loss(q: tfd.TransformedDistribution, target, batch_size: int,
                    seed=None, estimator: str = 'auto',
                    num_probes: int = 1) -> tf.Tensor:
  """`losses.reverse_kl_loss` (Eq. 9), kept here under its former home."""
  from tfp_ircpm import losses  # pylint: disable=g-import-not-at-top
  return losses.reverse_kl_loss(q, target, batch_size, seed,
                                estimator=estimator, num_probes=num_probes)


def log_prob_surrogate(q: tfd.TransformedDistribution, y: tf.Tensor,
                       seed=None, num_probes: int = 1) -> tf.Tensor:
  """log base(f⁻¹(y)) [N] with log-det surrogates: ∇ is unbiased for ∇ log q.

  For maximum likelihood (forward KL) in high dimension: y are data
  [N, ambient]. Each layer's inverse is the closed form exp_y(grad ψ(y)),
  so no solve runs; each log|det J_{f⁻¹}| is the zero-valued
  `logdet_surrogate` at that layer's output, whose expected gradient is
  the log-det's. The value is log base(x₀) only (use the bijector's exact
  log-dets, `q.log_prob`, to evaluate the likelihood).

  Args:
    q: a flow of IRCPMs over its base, as `flow_layers` accepts.
    y: points [N, ambient] on q's manifold.
    seed: stateless seed of the Rademacher probes (None: seed 0, so the
      same probes every call; pass a fresh seed per training step).
    num_probes: probes per point and layer (the variance falls as 1/num).

  Returns:
    [N], in y's dtype.
  """
  base_dist, layers = flows.flow_layers(q)
  choose_estimator(layers[0].manifold, 'stochastic')
  y = tf.convert_to_tensor(y)
  seeds = tfp.random.split_seed(seed if seed is not None else 0,
                                n=len(layers))
  total = tf.zeros(tf.shape(y)[:1], y.dtype)
  for i, layer in reversed(list(enumerate(layers))):
    probes = rademacher_probes(num_probes, tf.shape(y), y.dtype, seeds[i])
    total += logdet_surrogate(layer.manifold, layer.potential, y, probes)
    y = derivatives.inverse_map(layer.manifold, layer.potential, y)[0]
  return total + tf.cast(base_dist.log_prob(y), y.dtype)


def uses_stochastic(q: tfd.Distribution, estimator: str = 'auto') -> bool:
  """Whether `estimator` resolves to the stochastic log-det for q.

  'auto' is stochastic for IRCPM flows of dimension above
  `AUTO_EXACT_MAX_DIM` on manifolds with the symmetric form of Eq. 4
  (`choose_estimator`: tori, spheres, their products and powers);
  'stochastic' where that form is missing is a ValueError.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f'estimator must be one of {ESTIMATORS}, got '
                     f'{estimator!r}.')
  if estimator == 'exact':
    return False
  try:
    _, layers = flows.flow_layers(q)
  except flows.NotAFlowError:
    if estimator == 'stochastic':
      raise
    return False
  return choose_estimator(layers[0].manifold, estimator) == 'stochastic'
