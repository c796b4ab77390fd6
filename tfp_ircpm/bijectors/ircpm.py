"""The Implicit Riemannian Concave Potential Map as a TFP bijector."""

import functools
import sys
import warnings
from typing import Callable, NamedTuple, Optional

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras
# Public TF has no way to ask whether a tensor is being differentiated in
# forward mode.
from tensorflow.python.eager import forwardprop_util  # pylint: disable=g-direct-tensorflow-import

from tfp_ircpm import _autodiff
from tfp_ircpm import _linalg
from tfp_ircpm import _xla
from tfp_ircpm import derivatives
from tfp_ircpm import potentials
from tfp_ircpm import solvers
from tfp_ircpm.bijectors import _cache
from tfp_ircpm.manifolds import base

tfb = tfp.bijectors

NONCONVERGENCE_POLICIES = ('warn', 'nan', 'ignore')
FOLD_POLICIES = ('warn', 'nan', 'ignore')
LINEAR_ALGEBRA = ('auto', 'dense', 'cg')
# linear_algebra='auto' uses conjugate gradients above this many dimensions:
# the dense back-end forms the dim × dim Hessian (dim reverse passes) and
# factorises it at every Newton iteration.
AUTO_DENSE_MAX_DIM = 16
# Fixed uniform points at which every solve and log-det also evaluates
# h(x, ·) (`solvers.suboptimal_points`), besides the batch's own points.
DEFAULT_GLOBAL_CHECK_POINTS = 64


class _LogDet(NamedTuple):
  """The closed-form log-det at y and the evidence that it is valid, [N]."""
  ildj: tf.Tensor       # log|det E_xᵀ J_{f⁻¹}(y) E_y|
  sign: tf.Tensor       # sign of det J_{f⁻¹} between oriented tangent spaces
  outside: tf.Tensor    # y provably outside the image of f (bool)
  finite: tf.Tensor     # ψ(y) is finite (bool)


# Above this many ambient coordinates the exact log-det builds J from
# forward-mode JVPs along the tangent frame (`JVP_CHUNK` directions per pass)
# instead of a pfor-vectorised reverse-mode batch Jacobian, whose memory
# grows with A² times the activations (see `_forward_mode_inverse_jacobian`).
MAX_REVERSE_JACOBIAN_DIM = 128
JVP_CHUNK = 32


class IRCPM(tfb.Bijector):
  """f(x) = exp_x(-grad ψ^c(x)), ψ^c(x) = min_y ½d(x,y)² + ψ(y) (Eqs. 2-3).

  * forward: the c-transform solve from y = x (Lemma 4). By the envelope
    theorem -grad ψ^c(x) = log_x(y*), so f(x) = y*. Gradients with respect to
    x and to ψ's variables use the implicit function theorem at y*
    (`solvers.implicit_step`), never the solver's iterations.
  * inverse: the solve's optimality condition -log_y(x) + grad ψ(y) = 0 gives
    f⁻¹(y) = exp_y(grad ψ(y)) in closed form: exact, no solve.
  * inverse_log_det_jacobian(y) = log|det E_{f⁻¹(y)}ᵀ J_{f⁻¹}(y) E_y| (Eq. 4),
    the intrinsic log-det with orthonormal frames, so densities are with
    respect to the Riemannian volume (as `tfd.SphericalUniform`'s are).
    forward_log_det_jacobian(x) = -ildj(f(x)). After a forward solve the
    log-det at f(x) is read off the solve's own Hessian (see
    `_solve_log_det`), so sampling with log-probabilities costs no separate
    Jacobian.

  f is a diffeomorphism when ψ obeys the bounds of Lemmas 3-4 (small ‖grad ψ‖
  and ‖Hess ψ‖); then ψ is also the c-transform of ψ^c and the closed-form
  inverse inverts the solve. ψ must be C² (the solve uses Hess ψ; log-det
  gradients need third derivatives): potentials with known non-smooth
  activations (ReLU, ...) draw a warning.

  Evidence that the map is not a bijection where it is evaluated is never
  hidden behind a finite density (the `fold` policy):

  * log-dets at y (log_prob, inverse_log_det_jacobian, the training losses):
    the signed det J_{f⁻¹}(y) is <= 0 (a fold), or y lies outside the image
    of f, i.e. h(f⁻¹(y), ·) is lower at another point
    (`solvers.suboptimal_points`: the batch's points and
    `global_check_points` fixed uniform points);
  * forward (sample, sample_and_log_prob): the solve stopped at a critical
    point of h(x, ·) that is not its minimiser (a lower candidate, or a
    Hessian that is not positive definite).

  These are tests at the evaluated points. det J_{f⁻¹} > 0 there does not
  prove that f is a bijection; `diagnostics.check_diffeomorphism` (and the
  training monitors built on it) test the whole manifold on dense points.

  Args:
    manifold: a `tfp_ircpm.manifolds.Manifold`.
    potential: ψ, any callable mapping points [..., ambient_dim] to [...]
      (or [..., 1]): a `potentials.*` object, a `tf.Module`, a `tf_keras`
      model or a function. tf.Module/Keras variables are tracked, and an
      unbuilt Keras model is built here on a [1, ambient_dim] input. The
      bijector's dtype is that of ψ's variables (None for a potential
      without variables, which then runs in the points' dtype).
    method: solver, 'newton' (default) or 'gradient' (the paper's descent).
    tolerance: solver tolerance on ‖grad_y h‖; default 1e-5 (float32) or
      1e-10 (float64).
    max_iterations: solver cap; default 50 (Newton) or 1000 (gradient).
    linear_algebra: the Newton solve's and the IFT step's back-end: 'dense'
      (the dim × dim Hessian and Cholesky), 'cg' (conjugate gradients on
      Hessian-vector products: no matrix, for lattices) or 'auto' (dense up
      to `AUTO_DENSE_MAX_DIM` dimensions). Log-dets are exact either way;
      the losses can select a stochastic estimator
      (`losses.reverse_kl_loss(estimator=...)`).
    nonconvergence: what `forward` does with points whose solve missed the
      tolerance when `validate_args=False`: 'warn' (default; prints a
      warning to stderr), 'nan' (those outputs become NaN, so nothing
      downstream is silently wrong) or 'ignore'.
    fold: the same choice for points where the map is evidently not a
      bijection (see above): 'warn' (default), 'nan' (those points' log-dets,
      and in forward their outputs, become NaN) or 'ignore'.
    global_check_points: fixed uniform points used as extra candidates of
      the global-minimum test (0: only the batch's points).
    validate_args: check inputs (event size, finiteness, membership of the
      manifold) and raise `tf.errors.InvalidArgumentError` on a
      non-converged solve, a non-finite ψ or a fold. Under XLA
      (`jit_compile=True`), which can neither print nor raise, 'warn' and
      `validate_args=True` both act as 'nan'.
    name: name scope.
  """

  # Like tfb.FFJORD: the forward pass also yields the log-det, stored as a
  # cache attribute that forward_/inverse_log_det_jacobian read back. The
  # cache drops entries that went stale or are off the active tape
  # (`_cache.ValidatedCache`).
  _cache = _cache.ValidatedCache(
      forward_name='_augmented_forward', inverse_name='_augmented_inverse')

  def __init__(self,
               manifold: base.Manifold,
               potential: Callable[[tf.Tensor], tf.Tensor],
               method: str = 'newton',
               tolerance: Optional[float] = None,
               max_iterations: Optional[int] = None,
               nonconvergence: str = 'warn',
               fold: str = 'warn',
               linear_algebra: str = 'auto',
               global_check_points: int = DEFAULT_GLOBAL_CHECK_POINTS,
               validate_args: bool = False,
               name: str = 'ircpm'):
    parameters = dict(locals())
    if not isinstance(manifold, base.Manifold):
      raise TypeError(f'manifold must be a Manifold, got {manifold!r}.')
    if not callable(potential):
      raise TypeError(f'potential must be callable, got {potential!r}.')
    if method not in solvers.METHODS:
      raise ValueError(f'method must be one of {solvers.METHODS}.')
    if nonconvergence not in NONCONVERGENCE_POLICIES:
      raise ValueError(
          f'nonconvergence must be one of {NONCONVERGENCE_POLICIES}.')
    if fold not in FOLD_POLICIES:
      raise ValueError(f'fold must be one of {FOLD_POLICIES}.')
    if linear_algebra not in LINEAR_ALGEBRA:
      raise ValueError(f'linear_algebra must be one of {LINEAR_ALGEBRA}.')
    if linear_algebra == 'auto':
      linear_algebra = ('dense' if manifold.dim <= AUTO_DENSE_MAX_DIM
                        or method != 'newton' else 'cg')
    if linear_algebra == 'cg' and method != 'newton':
      raise ValueError("linear_algebra='cg' needs method='newton'.")
    if int(global_check_points) < 0:
      raise ValueError('global_check_points must be >= 0.')
    _build_keras_potential(potential, manifold)
    nonsmooth = potentials.nonsmooth_activations(potential)
    # potentials.MLP has warned about its own activation already.
    if nonsmooth and not isinstance(potential, potentials.MLP):
      warnings.warn(
          f'{name}: the potential uses non-smooth activations '
          f'({", ".join(nonsmooth)}). ψ must be C²: the solve uses Hess ψ '
          'and log-det gradients its third derivatives, so solves may miss '
          'their tolerance and round trips fail. Use softplus, tanh, swish '
          'or another smooth activation.', UserWarning, stacklevel=2)
    with tf.name_scope(name) as name:
      self._manifold = manifold
      self._potential = potential
      self._method = method
      self._tolerance = tolerance
      self._max_iterations = max_iterations
      self._nonconvergence = nonconvergence
      self._fold = fold
      self._linear_algebra = linear_algebra
      self._candidates = _fixed_candidates(manifold, int(global_check_points))
      self._cache_state = _cache.StateTracker(self._potential_variables)
      # The solve and the log-det run as tf.functions in every mode. Traced
      # once per input signature, they are reused by every call (a Chain of
      # the same instance traces them once, not once per link), and eager
      # batch Jacobians run as graphs. `_noinline` keeps them as function
      # calls in the caller's graph: inlined, a 3-link chain hands grappler
      # six copies of the solver loop (measured: 14 s to first run instead
      # of 4 s for sample + sample_and_log_prob on S²).
      # With ψ's dtype known, both are traced once with the batch dimension
      # unknown, so a new batch size never retraces them; otherwise the
      # second shape relaxes the first trace. Not for the matrix-free and
      # forward-mode regimes: there an unknown batch dimension left shape
      # arithmetic in the CG and JVP loops that a static one lets grappler
      # fold (measured: those tests 30-40% slower).
      no_inline = {'_noinline': True}
      dtype = self._potential_dtype()
      small = (linear_algebra == 'dense'
               and manifold.ambient_dim <= MAX_REVERSE_JACOBIAN_DIM)
      signature = (None if dtype is None or not small else
                   [tf.TensorSpec([None, manifold.ambient_dim], dtype)])
      # TF counts traces per function *code*: bound methods of several
      # IRCPMs share it, so one trace per instance (a 6-layer stack) read as
      # "6 out of the last 6 calls triggered retracing". A partial per
      # instance is its own key.
      traced = lambda method: tf.function(
          functools.partial(method, self), input_signature=signature,
          reduce_retracing=signature is None, autograph=False,
          experimental_attributes=no_inline)
      self._solve_fn = traced(type(self)._solve_flat)
      self._log_det_fn = traced(type(self)._log_det_flat)
      super().__init__(
          forward_min_event_ndims=1,
          dtype=self._potential_dtype(),
          validate_args=validate_args,
          parameters=parameters,
          name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    # No batch parameters: an IRCPM maps single events, batch shape [].
    del dtype
    return dict()

  @property
  def manifold(self) -> base.Manifold:
    return self._manifold

  @property
  def potential(self):
    return self._potential

  @property
  def method(self) -> str:
    return self._method

  @property
  def tolerance(self) -> Optional[float]:
    """The solve's tolerance on ‖grad_y h‖; None: 1e-5 (f32) / 1e-10 (f64)."""
    return self._tolerance

  @property
  def max_iterations(self) -> Optional[int]:
    """The solve's iteration cap; None: 50 (Newton) / 1000 (gradient)."""
    return self._max_iterations

  @property
  def linear_algebra(self) -> str:
    """'dense' or 'cg' (what 'auto' resolved to)."""
    return self._linear_algebra

  @property
  def nonconvergence(self) -> str:
    return self._nonconvergence

  @property
  def fold(self) -> str:
    return self._fold

  @classmethod
  def _is_increasing(cls):
    return False

  # -- helpers ---------------------------------------------------------------

  def _potential_variables(self):
    return list(getattr(self._potential, 'variables', None) or ())

  def _potential_dtype(self) -> Optional[tf.DType]:
    """The one floating dtype of ψ's variables, or None (none, or mixed)."""
    dtypes = {v.dtype.base_dtype for v in self._potential_variables()
              if v.dtype.is_floating}
    return dtypes.pop() if len(dtypes) == 1 else None

  def _check_dtype(self, x):
    """Tensors must be float32/float64 and of the bijector's dtype.

    NumPy arrays and Python values are converted to the bijector's dtype,
    as TF converts them, but only from float32/float64. TFP's own check
    would raise a ValueError naming neither the flow nor ψ.
    """
    dtype = getattr(x, 'dtype', None)
    if dtype is None or not isinstance(x, (tf.Tensor, tf.Variable,
                                           np.ndarray, np.generic)):
      return
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.float64):
      raise TypeError(f'{self.name}: points must be float32 or float64, got '
                      f'{dtype.name}.')
    if (self.dtype is not None and dtype != self.dtype
        and not isinstance(x, (np.ndarray, np.generic))):
      raise TypeError(
          f'{self.name}: points have dtype {dtype.name} but the potential\'s '
          f'variables are {self.dtype.name}; cast the points, or build ψ '
          'in that dtype.')

  def _call_forward(self, x, name, **kwargs):
    self._check_dtype(x)
    return super()._call_forward(x, name, **kwargs)

  def _call_inverse(self, y, name, **kwargs):
    self._check_dtype(y)
    return super()._call_inverse(y, name, **kwargs)

  def _call_forward_log_det_jacobian(self, x, event_ndims, name, **kwargs):
    self._check_dtype(x)
    return super()._call_forward_log_det_jacobian(x, event_ndims, name,
                                                  **kwargs)

  def _call_inverse_log_det_jacobian(self, y, event_ndims, name, **kwargs):
    self._check_dtype(y)
    return super()._call_inverse_log_det_jacobian(y, event_ndims, name,
                                                  **kwargs)

  def _flatten_points(self, x):
    x = tf.convert_to_tensor(x, dtype_hint=self.dtype)
    # The solve needs a Cholesky factorisation and the log-det a QR, which
    # TF has for float32 and float64 only; integers would also truncate.
    if x.dtype not in (tf.float32, tf.float64):
      raise TypeError(f'{self.name}: points must be float32 or float64, got '
                      f'{x.dtype.name}.')
    if self.validate_args:
      with tf.control_dependencies(self._manifold.membership_assertions(x)):
        x = tf.identity(x)
    else:
      self._manifold._check_event_size(x, self.name)  # pylint: disable=protected-access
    shape = tf.shape(x)
    return tf.reshape(x, [-1, self._manifold.ambient_dim]), shape

  def _candidates_like(self, dtype):
    if self._candidates is None:
      return None
    return tf.constant(self._candidates, dtype)

  def _solve_flat(self, x):
    return solvers.solve(self._manifold, self._potential, x,
                         method=self._method, tolerance=self._tolerance,
                         max_iterations=self._max_iterations,
                         candidates=self._candidates_like(x.dtype),
                         linear_algebra=self._linear_algebra)

  def _solve_any_mode(self, x_flat):
    """The solve, with no gradient path into its iterations in any mode.

    The call runs with every tape paused (the solver uses symbolic gradients
    inside), so no tape records the while-loop or builds a backward function
    for it; stop_gradient on the outputs makes that explicit.
    """
    result = _autodiff.without_tapes(self._solve_fn, tf.stop_gradient(x_flat))
    return result._replace(**{k: tf.stop_gradient(v)
                              for k, v in result._asdict().items()
                              if v is not None})

  def riemannian_grad_potential(self, y: tf.Tensor) -> tf.Tensor:
    """grad ψ(y) = P_y ∇ψ(y), [..., ambient_dim]; differentiable (nested tapes)."""
    return derivatives.ambient_gradient(
        self._manifold, lambda z: derivatives.call_potential(self._potential,
                                                             z), y)

  def _inverse_flat(self, y):
    """exp_y(grad ψ(y)) [N, ambient]; NaN where ψ(y) is not finite."""
    return derivatives.inverse_map(self._manifold, self._potential, y)[0]

  # -- failure policies --------------------------------------------------------

  def _apply_policy(self, values, bad, policy, message):
    """Raise, warn about, NaN or ignore `values` rows where `bad` [N].

    `message` is a list of strings and scalar tensors (Assert / tf.print
    arguments). validate_args raises; under XLA, which can neither print
    nor raise (tf2xla compiles Assert to a no-op), 'warn' and validate_args
    act as 'nan'.
    """
    strict = self.validate_args
    if _xla.in_xla_context() and (strict or policy == 'warn'):
      return _nan_rows(values, bad)
    if strict:
      ok = tf.debugging.Assert(~tf.reduce_any(bad), message, summarize=8)
      with tf.control_dependencies([ok]):
        return tf.identity(values)
    if policy == 'nan':
      return _nan_rows(values, bad)
    if policy == 'warn':
      def warn():
        tf.print('WARNING:', *message, output_stream=sys.stderr)
        return tf.constant(True)
      done = tf.cond(tf.reduce_any(bad), warn, lambda: tf.constant(True))
      with tf.control_dependencies([done]):
        return tf.identity(values)
    return values

  def _nonfinite_message(self, bad):
    return [f'{self.name}: the potential is NaN or infinite at', _count(bad),
            'points; their outputs are NaN (a non-finite ψ is treated like '
            'a non-finite input).']

  def _check_forward(self, y, result):
    """The policies for one forward solve, applied to y [N, ambient]."""
    finite = tf.math.is_finite(result.value)
    nonfinite = ~finite
    y = _nan_rows(y, nonfinite)
    if self.validate_args:
      y = self._apply_policy(y, nonfinite, 'nan',
                             self._nonfinite_message(nonfinite))
    missed = ~result.converged & finite
    y = self._apply_policy(
        y, missed, self._nonconvergence,
        [f'{self.name}: the c-transform solve did not reach its tolerance '
         'everywhere: it missed its tolerance at',
         _count(missed), 'points (psi may violate the bounds of Lemmas '
         '3-4, or max_iterations is too small). Worst residual:',
         tf.reduce_max(tf.where(missed, result.residual,
                                tf.zeros_like(result.residual)))])
    wrong = result.suboptimal & result.converged
    return self._apply_policy(
        y, wrong, self._fold,
        [f'{self.name}: the solve stopped at a critical point of h(x, .) '
         'that is not its minimiser at', _count(wrong), 'points (a lower '
         'value elsewhere, or a Hessian that is not positive definite): the '
         'map is not a bijection (f^-1 folds), so these samples and their '
         'densities are wrong. Check the model with '
         'diagnostics.check_diffeomorphism; keep psi within the bounds of '
         'Lemmas 3-4 (e.g. potentials.MLP(certified=True)).'])

  def _check_log_det(self, ildj, log_det: _LogDet):
    """The policies for closed-form log-dets, applied to ildj [N]."""
    nonfinite = ~log_det.finite
    ildj = _nan_rows(ildj, nonfinite)
    if self.validate_args:
      ildj = self._apply_policy(ildj, nonfinite, 'nan',
                                self._nonfinite_message(nonfinite))
    folded = (log_det.sign <= 0.) & log_det.finite
    outside = log_det.outside & log_det.finite & ~folded
    return self._apply_policy(
        ildj, folded | outside, self._fold,
        [f'{self.name}: det J_f^-1 <= 0 at', _count(folded), 'points and y '
         'outside the image of f (h(f^-1(y), .) lower elsewhere) at',
         _count(outside), 'more: the map folds, so these densities are '
         'wrong. Check the model with diagnostics.check_diffeomorphism; keep '
         'psi within the bounds of Lemmas 3-4 (e.g. '
         'potentials.MLP(certified=True)).'])

  def _refuse_forward_mode(self, x):
    """Forward-mode autodiff through the solve is not supported: raise."""
    if forwardprop_util.pack_tangents([x]).tangents:
      raise NotImplementedError(
          f'{self.name}: forward-mode differentiation of IRCPM.forward '
          '(through the c-transform solve) is not supported. TFP does it to '
          'correct densities when a plain tfb.Chain of IRCPMs sits on a TFP '
          'spherical base (tfd.SphericalUniform, tfd.VonMisesFisher, '
          'tfd.PowerSpherical). Use tfp_ircpm.bijectors.Chain instead of '
          'tfb.Chain, or a base that reports the intrinsic tangent space '
          '(manifold.uniform(), tfp_ircpm.distributions.*).')

  # -- public diagnostics ------------------------------------------------------

  def solve(self, x: tf.Tensor) -> solvers.SolveResult:
    """Runs the c-transform solve at x and returns its diagnostics.

    Args:
      x: points [..., ambient_dim].

    Returns:
      `SolveResult` with `point` [..., ambient_dim], `iterations`, `residual`
      (‖grad_y h‖), `converged`, `value` (h(x, y*)) and `suboptimal` [...],
      `gradient` [..., dim] and `hessian` [..., dim, dim]. None of it
      carries gradients; use `forward` for differentiable outputs.
    """
    with tf.name_scope(f'{self.name}/solve'):
      self._check_dtype(x)
      x_flat, shape = self._flatten_points(x)
      r = self._solve_any_mode(self._manifold.projx(x_flat))
      batch = shape[:-1]
      d = self._manifold.dim
      return solvers.SolveResult(
          point=tf.reshape(r.point, shape),
          iterations=tf.reshape(r.iterations, batch),
          residual=tf.reshape(r.residual, batch),
          converged=tf.reshape(r.converged, batch),
          hessian=(None if r.hessian is None else
                   tf.reshape(r.hessian, tf.concat([batch, [d, d]], 0))),
          gradient=(None if r.gradient is None else
                    tf.reshape(r.gradient, tf.concat([batch, [d]], 0))),
          value=tf.reshape(r.value, batch),
          suboptimal=tf.reshape(r.suboptimal, batch),
          hvps=r.hvps)

  # -- Bijector hooks ----------------------------------------------------------

  def _forward(self, x):
    return self._augmented_forward(x)[0]

  def _augmented_forward(self, x):
    """(f(x), {'ildj': ildj(f(x))}) from one solve."""
    self._refuse_forward_mode(x)
    with _cache.read_only_ops():
      x_flat, shape = self._flatten_points(x)
      y, ildj, _ = self._forward_flat(x_flat)
      attrs = None
      if ildj is not None:
        attrs = {'ildj': tf.reshape(ildj, shape[:-1])}
      return tf.reshape(y, shape), attrs

  def _forward_flat(self, x_flat):
    """(y [N, A], ildj at y [N] or None, SolveResult) under the policies."""
    x_flat = self._manifold.projx(x_flat)
    result = self._solve_any_mode(x_flat)
    if self._linear_algebra == 'cg':
      y = solvers.cg_implicit_step(self._manifold, self._potential, x_flat,
                                   result)
    else:
      y = solvers.lazy_implicit_step(self._manifold, self._potential, x_flat,
                                     result)
    y = self._check_forward(y, result)
    ildj = self._solve_log_det(x_flat, y, result)
    if ildj is not None:
      # Rows whose output a policy turned into NaN get a NaN log-det.
      ildj = _nan_rows(ildj, tf.reduce_any(tf.math.is_nan(y), axis=-1))
    return y, ildj, result

  def forward_with_result(self, x: tf.Tensor):
    """(f(x) [..., ambient], the solve's `SolveResult` [...]) from one solve.

    The same value, gradients and failure policies as `forward`, for code
    that also needs the solve's flags (e.g. a loss that drops samples whose
    solve failed: `result.converged & ~result.suboptimal`). The result's
    fields are flattened to [N, ...]; it bypasses the bijector cache.
    """
    self._check_dtype(x)
    self._refuse_forward_mode(x)
    with tf.name_scope(f'{self.name}/forward_with_result'):
      with _cache.read_only_ops():
        x_flat, shape = self._flatten_points(x)
        y, _, result = self._forward_flat(x_flat)
        return tf.reshape(y, shape), result

  def _augmented_inverse(self, y):
    return self._inverse(y), None

  def _solve_log_det(self, x_flat, y_flat, result):
    """ildj at y = f(x) from the solve's Hessian, [N]; None where unavailable.

    Differentiating the optimality condition F(x, y) = -log_y(x) + grad ψ(y)
    = 0 along x = f⁻¹(y) gives D log_y(x) dx = H dy, with H the Riemannian
    Hessian of h(x, ·) at y* (Sec. 4.2), so

        log|det J_{f⁻¹}(y*)| = log det H + log|det d(exp_y*)|_{log_y* x}|,

    the second term being (n - 1) log(sin r / r) on Sⁿ and 0 on Tⁿ
    (`Manifold.log_det_dexp`). The solve returns H, so the value costs one
    dim × dim determinant instead of the dim reverse passes of the
    closed-form route; they agree to O(tolerance) (tested). |det| matches
    the closed-form route's convention; the solve has checked that H is
    positive definite (`SolveResult.suboptimal`).

    Its gradient is the closed-form route's, computed only when asked for
    (`_autodiff.with_lazy_gradient`): ψ's variables are passed in
    explicitly, so this needs a potential that lists them (a tf.Module or
    Keras model). Plain callables, and batches where some solve failed (H is
    then not the Hessian at a minimiser), use the closed-form route.
    """
    if not isinstance(self._potential, tf.Module) or result.hessian is None:
      return None
    correction = self._manifold.log_det_dexp(x_flat, result.point)
    if correction is None:
      return None

    def from_hessian():
      return tf.stop_gradient(_linalg.logabsdet(result.hessian) + correction)

    value = tf.cond(tf.reduce_all(result.converged), from_hessian,
                    lambda: tf.stop_gradient(self._ildj_fn(y_flat)))
    return _autodiff.with_lazy_gradient(value, self._ildj_fn, y_flat,
                                        self._potential.trainable_variables)

  def _inverse(self, y):
    with _cache.read_only_ops():
      y_flat, shape = self._flatten_points(y)
      x = self._inverse_flat(y_flat)
      if self.validate_args:
        psi_ok = tf.reduce_all(tf.math.is_finite(x), axis=-1)
        x = self._apply_policy(x, ~psi_ok, 'nan',
                               self._nonfinite_message(~psi_ok))
      return tf.reshape(x, shape)

  def _inverse_log_det_jacobian(self, y):
    with _cache.read_only_ops():
      y_flat, shape = self._flatten_points(y)
      log_det = self._call_log_det(y_flat)
      ildj = self._check_log_det(log_det.ildj, log_det)
      return tf.reshape(ildj, shape[:-1])

  def _call_log_det(self, y_flat) -> _LogDet:
    """`_log_det_flat` as a nested function call, or inline under XLA.

    XLA cannot see through the gradient of a nested function call: it then
    treats every argument of the jit-compiled function (seeds, ψ's
    variables) as a compile-time constant, so a training step that updates
    ψ recompiled at every call (measured: 7 s a step on S², MLP [128, 128],
    instead of milliseconds). Inline, XLA compiles once; the grappler cost
    that the nested call avoids (see __init__) does not arise under XLA.
    """
    if _xla.in_xla_context():
      return self._log_det_flat(y_flat)
    return self._log_det_fn(y_flat)

  def _ildj_fn(self, y_flat):
    """log|det E_xᵀ J_{f⁻¹}(y) E_y| for y [N, ambient_dim] → [N], unchecked."""
    return self._call_log_det(y_flat).ildj

  def _log_det_flat(self, y_flat) -> _LogDet:
    """The closed-form log-det at y [N, ambient_dim] and its evidence, [N].

    The sign is that of det J_{f⁻¹} between oriented tangent spaces (see
    `inverse_jacobian_determinant`); `outside` is the global-minimum test
    of `solvers.suboptimal_points` at (f⁻¹(y), y).
    """
    m = self._manifold
    y_flat = m.projx(y_flat)
    jac, x = self._intrinsic_inverse_jacobian(y_flat)
    sign, ildj = _linalg.slogdet(jac)
    sign = sign * m.frame_orientation(x) * m.frame_orientation(y_flat)
    x, y_stop = tf.stop_gradient(x), tf.stop_gradient(y_flat)
    psi = tf.stop_gradient(derivatives.call_potential(self._potential,
                                                      y_stop))
    outside = solvers.suboptimal_points(m, self._potential, x, y_stop, psi,
                                        self._candidates_like(y_flat.dtype))
    return _LogDet(ildj=ildj, sign=tf.stop_gradient(sign),
                   outside=tf.stop_gradient(outside),
                   finite=tf.math.is_finite(psi))

  def _intrinsic_inverse_jacobian(self, y_flat):
    """(E_xᵀ J_{f⁻¹}(y) E_y [N, dim, dim], x = f⁻¹(y) [N, ambient_dim]).

    J is the ambient Jacobian of y ↦ f⁻¹(projx(y)) (one reverse pass per
    ambient coordinate, nested over the tape that gives grad ψ). On tangent
    vectors it is the manifold differential (projx and d exp_y at 0 are the
    identity there), so E_xᵀ J E_y is the intrinsic Jacobian. Two dense
    products after the fact are much cheaper than differentiating through
    v ↦ exp_y(E_y v), whose pfor-vectorised chain through the frame was
    7.9× slower on T^256 (256 points: 1.41 s against 0.18 s).
    """
    m = self._manifold
    y_flat = m.projx(y_flat)
    if m.ambient_dim > MAX_REVERSE_JACOBIAN_DIM:
      return self._forward_mode_inverse_jacobian(y_flat)
    # Jacobi fields and ψ's ambient Hessian, where the manifold has them:
    # no tape through exp's and proj's safe branches, whose higher-order
    # graphs dominate tracing (and training's third derivatives).
    closed = derivatives.inverse_jacobian(m, self._potential, y_flat)
    if closed is not None:
      return closed
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(y_flat)
      x = self._inverse_flat(y_flat)
    jac = _autodiff.batch_jacobian(tape, x, y_flat)              # [N, A, A]
    jac = tf.linalg.matmul(jac, m.tangent_frame(y_flat))
    return tf.linalg.matmul(m.tangent_frame(x), jac, transpose_a=True), x

  def _forward_mode_inverse_jacobian(self, y_flat):
    """As `_intrinsic_inverse_jacobian`, from JVPs along the frame at y.

    One forward-over-reverse pass per tangent direction E_y eₖ gives the
    column J E_y eₖ directly: dim passes instead of ambient_dim reverse
    passes, and no [N, A, A] ambient Jacobian. The directions run as extra
    batch rows, `JVP_CHUNK` at a time, so memory is bounded by the chunk
    rather than by dim: the pfor batch Jacobian of the nested tapes was
    killed at 6.8 GB for 50 points on T²⁵⁶ with a conv ψ.
    """
    m = self._manifold
    n = tf.shape(y_flat)[0]
    a, d = m.ambient_dim, m.dim
    k = min(JVP_CHUNK, d)
    chunks = -(-d // k)
    frame = tf.linalg.matrix_transpose(m.tangent_frame(y_flat))  # [N, d, A]
    # Zero directions pad the last chunk; their columns are sliced off below.
    frame = tf.pad(frame, [[0, 0], [0, chunks * k - d], [0, 0]])
    frame = tf.transpose(tf.reshape(frame, [n, chunks, k, a]), [1, 0, 2, 3])
    y_rep = tf.repeat(y_flat, k, axis=0)   # row i·k + j: point i, direction j

    def columns(directions):                                     # [N, k, A]
      with tf.autodiff.ForwardAccumulator(
          y_rep, tf.reshape(directions, [-1, a])) as acc:
        x_rep = self._inverse_flat(y_rep)
      return tf.reshape(acc.jvp(x_rep), [n, k, a])

    if _xla.in_xla_context():
      # tf2xla cannot differentiate a forward accumulator inside a while
      # loop (dynamic BroadcastGradientArgs); XLA's scheduler bounds memory.
      jac_t = tf.stack([columns(frame[c]) for c in range(chunks)])
    else:
      # One chunk at a time: run in parallel, the chunks' activations would
      # all be alive at once (4.5 GB measured for 50 points on T²⁵⁶).
      jac_t = tf.map_fn(columns, frame, parallel_iterations=1)   # [C, N, k, A]
    jac_t = tf.reshape(tf.transpose(jac_t, [1, 0, 2, 3]), [n, chunks * k, a])
    x = self._inverse_flat(y_flat)
    return tf.linalg.matrix_transpose(                           # E_xᵀ J E_y
        tf.linalg.matmul(jac_t[:, :d], m.tangent_frame(x))), x

  def intrinsic_inverse_jacobian(self, y: tf.Tensor) -> tf.Tensor:
    """E_xᵀ J_{f⁻¹}(y) E_y, [..., dim, dim] (x = f⁻¹(y); Eq. 4's matrix).

    On a torus the frames are the identity and this is I + Hess ψ(y), whose
    eigenvalues say how far f⁻¹ is from folding (Lemma 3). Above
    `MAX_REVERSE_JACOBIAN_DIM` ambient coordinates it is built from chunked
    JVPs, with memory bounded by `JVP_CHUNK`.
    """
    y_flat, shape = self._flatten_points(y)
    jac, _ = self._intrinsic_inverse_jacobian(y_flat)
    d = self._manifold.dim
    return tf.reshape(jac, tf.concat([shape[:-1], [d, d]], 0))

  def inverse_jacobian_determinant(self, y: tf.Tensor) -> tf.Tensor:
    """Signed det of J_{f⁻¹}(y) between oriented tangent spaces, [...].

    det(E_xᵀ J E_y) times the orientations of the two frames
    (`Manifold.frame_orientation`), so the sign does not depend on which
    frame `tangent_frame` picked. f⁻¹ = exp(grad ψ) is homotopic to the
    identity (scale ψ to 0), so on a compact connected manifold det > 0
    everywhere implies f⁻¹ is a covering of degree 1: a diffeomorphism.
    """
    y_flat, shape = self._flatten_points(y)
    y_flat = self._manifold.projx(y_flat)
    jac, x = self._intrinsic_inverse_jacobian(y_flat)
    orient = (self._manifold.frame_orientation(x)
              * self._manifold.frame_orientation(y_flat))
    return tf.reshape(_linalg.det(jac) * orient, shape[:-1])

  def _experimental_compute_density_correction(self, x, tangent_space,
                                               backward_compat=False,
                                               **kwargs):
    """Intrinsic fldj whatever the base's tangent space.

    TFP's default would differentiate `forward` along a basis of the tangent
    space (JVPs through the solve), which is slow and gives wrong parameter
    gradients (second derivatives of the IFT step). The intrinsic fldj is
    already the density change with respect to the Riemannian volume, and the
    image stays on the same manifold, so the tangent space is unchanged.
    """
    del backward_compat
    event_ndims = kwargs.pop('event_ndims', self.forward_min_event_ndims)
    return (self.forward_log_det_jacobian(x, event_ndims=event_ndims,
                                          **kwargs),
            tangent_space)


def _count(bad: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(tf.cast(bad, tf.int32))


def _nan_rows(values: tf.Tensor, bad: tf.Tensor) -> tf.Tensor:
  """values with the rows where `bad` [N] set to NaN (values [N, ...])."""
  bad = tf.reshape(bad, tf.concat(
      [tf.shape(bad), tf.ones([tf.rank(values) - 1], tf.int32)], 0))
  return tf.where(bad, tf.constant(float('nan'), values.dtype), values)


def _build_keras_potential(potential, manifold: base.Manifold) -> None:
  """Builds an unbuilt tf_keras model on one point, so that its variables
  exist (and are tracked, and set the bijector's dtype) before first use."""
  if isinstance(potential, tf_keras.layers.Layer) and not potential.built:
    dtype = tf.as_dtype(getattr(potential, 'dtype', None) or tf.float32)
    with tf.init_scope():
      potential(tf.zeros([1, manifold.ambient_dim], dtype))


def _fixed_candidates(manifold: base.Manifold, num: int):
  """`num` uniform points [num, ambient_dim] (float64 NumPy) from a fixed
  seed, or None: the fixed candidates of the global-minimum test."""
  if not num:
    return None
  with tf.init_scope():
    return manifold.uniform(tf.float64).sample(num, seed=(17, 29)).numpy()
