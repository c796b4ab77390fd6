"""A bijector contract for manifold bijectors, in the spirit of TFP's
`bijector_test_util.assert_bijective_and_finite` (which TFP 0.25 does not
ship), with tolerances that float32 log-dets can meet.

`assert_bijector_contract(bijector, x)` checks, at points x (and y) on the
manifold:

  finite        forward, inverse and both log-dets are finite;
  round_trip    d(f⁻¹(f(x)), x) and d(f(f⁻¹(y)), y) (geodesic distance);
  log_det       fldj(x) = -ildj(f(x)), with fldj read after forward(x) (the
                solve's route) and on a tensor forward has not seen (TFP's
                fallback, -ildj(f(x)) in closed form); ildj(y) =
                -fldj(f⁻¹(y));
  invert        tfb.Invert(bijector) has the swapped maps and log-dets;
  shapes        extra batch dims [2, n/2, ambient] give the same values, and
                event_ndims 1, 2, 3 reduce the log-dets over the batch axes;
  gradients     forward, inverse and both log-dets have finite gradients
                with respect to the points and every trainable variable, and
                each reaches some variable;
  change_of_measure
                ildj(y) = log|det E_xᵀ J E_y| with J from central finite
                differences of the inverse in float64 (orthonormal frames,
                `conftest.fd_intrinsic_jacobian`): the log-det is the
                density change w.r.t. the Riemannian volume. With the round
                trip and fldj = -ildj∘f this also pins fldj.

Every check runs; failures are collected and raised together as a
`ContractError` (an AssertionError) whose `failures` maps each failed check
to its message, so a test can assert which checks a broken bijector fails.

Tolerances (see benchmarks/float32_logdet_accuracy.py): log-dets are
compared with an absolute tolerance only. A log-det is a sum of logarithms
of eigenvalues near 1, so its round-off is absolute (a few eps times dim,
~1e-6 in float32) whatever its value, and it is often near 0: a relative
tolerance with atol = 0 (TFP's default rtol 1e-5) then demands an absolute
accuracy of 1e-5 |ldj|, below float32's resolution for |ldj| < 0.1.
"""

import collections
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from conftest import fd_intrinsic_jacobian

tfb = tfp.bijectors

Tolerance = collections.namedtuple('Tolerance', ['point', 'log_det'])

# point: geodesic distance; log_det: absolute. float32 log-dets: worst 1.7e-6
# against float64 and for fldj + ildj∘f (S², T², S³, T¹×S², S²×S²; MLP ψ
# (32, 32), output scales 0.05-0.3), i.e. ~14 eps32, a few times the 2-3e-7
# of rounding the exact Jacobian once; 1e-5 leaves a margin of 6. float64:
# the solve's Hessian route agrees with the closed form to ~2e-11 (solver
# tolerance 1e-10).
TOLERANCES = {
    tf.float32: Tolerance(point=1e-5, log_det=1e-5),
    tf.float64: Tolerance(point=1e-10, log_det=1e-9),
}
# Central differences with step 1e-6 in float64: round-off ~1e-10 per entry.
FD_ATOL = 1e-7

CHECKS = ('finite', 'round_trip', 'log_det', 'invert', 'shapes', 'gradients',
          'change_of_measure')


class ContractError(AssertionError):
  """Raised by `assert_bijector_contract`; `failures`: check → message."""

  def __init__(self, failures: Dict[str, str]):
    self.failures = dict(failures)
    lines = [f'{name}: {msg}' for name, msg in self.failures.items()]
    super().__init__('bijector contract violated:\n  ' + '\n  '.join(lines))


def tolerance_for(dtype) -> Tolerance:
  return TOLERANCES[tf.as_dtype(dtype)]


def _np(t):
  return np.asarray(t.numpy() if hasattr(t, 'numpy') else t, np.float64)


def _fresh(t):
  # A new tensor: TFP's bijector cache is keyed on the tensor object.
  return tf.identity(t)


class _Recorder:
  """Collects measured maxima and failures."""

  def __init__(self):
    self.measured = {}
    self.failures = collections.OrderedDict()

  def fail(self, check, msg):
    if check in self.failures:
      msg = self.failures[check] + '; ' + msg
    self.failures[check] = msg

  def close(self, check, what, err, atol):
    err = _np(err)
    worst = float(np.max(np.abs(err))) if err.size else 0.
    self.measured[what] = worst
    if not np.all(np.isfinite(err)):
      self.fail(check, f'{what}: non-finite values')
    elif worst > atol:
      self.fail(check, f'{what}: max error {worst:.3g} > atol {atol:.3g} '
                       f'({int(np.sum(np.abs(err) > atol))} of {err.size})')

  def finite(self, check, what, value):
    if not np.all(np.isfinite(_np(value))):
      bad = int(np.sum(~np.isfinite(_np(value))))
      self.fail(check, f'{what}: {bad} non-finite values')


def assert_bijector_contract(bijector: tfb.Bijector,
                             x: tf.Tensor,
                             y: Optional[tf.Tensor] = None,
                             *,
                             manifold=None,
                             point_atol: Optional[float] = None,
                             log_det_atol: Optional[float] = None,
                             fd_eps: float = 1e-6,
                             fd_atol: float = FD_ATOL,
                             reference: Optional[tfb.Bijector] = None,
                             checks=CHECKS) -> Dict[str, float]:
  """Checks `bijector` at points x (domain) and y (codomain) on a manifold.

  Args:
    bijector: a bijector with forward_min_event_ndims 1 on `manifold`
      (points [..., ambient_dim], log-dets [...]).
    x: [n, ambient_dim] points; an even n lets the shapes check reuse the
      traced functions ([2, n/2, ambient_dim] flattens to the same shape).
    y: [n, ambient_dim] points for the inverse (default: x).
    manifold: default `bijector.manifold`.
    point_atol, log_det_atol: absolute tolerances (geodesic distance and
      log-det); default `TOLERANCES[x.dtype]`.
    fd_eps, fd_atol: finite-difference step (float64) and the extra
      tolerance allowed for the finite differences.
    reference: a bijector with the same inverse in float64, for the finite
      differences (default: `bijector`, called on float64 points). A
      float32 IRCPM refuses float64 points: pass a float64 twin.
    checks: the subset of `CHECKS` to run.

  Returns:
    The measured worst errors, by quantity.

  Raises:
    ContractError: listing every failed check.
  """
  unknown = set(checks) - set(CHECKS)
  if unknown:
    raise ValueError(f'unknown checks {sorted(unknown)}; known: {CHECKS}')
  m = manifold if manifold is not None else bijector.manifold
  x = tf.convert_to_tensor(x)
  y = x if y is None else tf.convert_to_tensor(y)
  tol = tolerance_for(x.dtype)
  point_atol = tol.point if point_atol is None else point_atol
  log_det_atol = tol.log_det if log_det_atol is None else log_det_atol
  rec = _Recorder()

  # Values shared by the checks (fresh tensors wherever a cache hit would
  # hide a computation).
  x_in = _fresh(x)
  fx = bijector.forward(x_in)
  fldj_solve = bijector.forward_log_det_jacobian(x_in, event_ndims=1)
  fldj_cold = bijector.forward_log_det_jacobian(_fresh(x), event_ndims=1)
  ildj_fx = bijector.inverse_log_det_jacobian(_fresh(fx), event_ndims=1)
  gy = bijector.inverse(_fresh(y))
  ildj_y = bijector.inverse_log_det_jacobian(_fresh(y), event_ndims=1)

  if 'finite' in checks:
    for what, value in [('forward', fx), ('inverse', gy),
                        ('fldj', fldj_solve), ('ildj', ildj_y)]:
      rec.finite('finite', what, value)
    if fx.dtype != x.dtype or gy.dtype != y.dtype:
      rec.fail('finite', f'dtype changed: {x.dtype.name} -> {fx.dtype.name}')
    if fldj_solve.shape != x.shape[:-1] or ildj_y.shape != y.shape[:-1]:
      rec.fail('finite', f'log-det shapes {fldj_solve.shape}, '
                         f'{ildj_y.shape} for points {x.shape}')

  if 'round_trip' in checks:
    rec.close('round_trip', 'd(inverse(forward(x)), x)',
              m.dist(x, bijector.inverse(_fresh(fx))), point_atol)
    rec.close('round_trip', 'd(forward(inverse(y)), y)',
              m.dist(y, bijector.forward(_fresh(gy))), point_atol)

  if 'log_det' in checks:
    rec.close('log_det', 'fldj(x) + ildj(f(x)) [after forward]',
              fldj_solve + ildj_fx, log_det_atol)
    rec.close('log_det', 'fldj(x) + ildj(f(x)) [fldj first]',
              fldj_cold + ildj_fx, log_det_atol)
    fldj_gy = bijector.forward_log_det_jacobian(_fresh(gy), event_ndims=1)
    rec.close('log_det', 'ildj(y) + fldj(inverse(y))', ildj_y + fldj_gy,
              log_det_atol)

  if 'invert' in checks:
    inv = tfb.Invert(bijector)
    rec.close('invert', 'Invert.forward(y) vs inverse(y)',
              m.dist(inv.forward(_fresh(y)), gy), point_atol)
    rec.close('invert', 'Invert.inverse(x) vs forward(x)',
              m.dist(inv.inverse(_fresh(x)), fx), point_atol)
    rec.close('invert', 'Invert.fldj(y) vs ildj(y)',
              inv.forward_log_det_jacobian(_fresh(y), 1) - ildj_y,
              log_det_atol)
    rec.close('invert', 'Invert.ildj(x) vs fldj(x)',
              inv.inverse_log_det_jacobian(_fresh(x), 1) - fldj_solve,
              log_det_atol)

  if 'shapes' in checks:
    _check_shapes(rec, bijector, m, x, y, fx, gy, fldj_solve, ildj_y,
                  point_atol, log_det_atol)

  if 'gradients' in checks:
    _check_gradients(rec, bijector, x, y)

  if 'change_of_measure' in checks:
    ref = bijector if reference is None else reference
    y64 = tf.cast(y, tf.float64)
    jac = fd_intrinsic_jacobian(m, ref.inverse, y64, fd_eps)
    fd_ildj = np.log(np.abs(np.linalg.det(jac)))
    rec.close('change_of_measure', 'ildj(y) - log|det FD Jacobian|',
              _np(ildj_y) - fd_ildj, log_det_atol + fd_atol)

  if rec.failures:
    raise ContractError(rec.failures)
  return rec.measured


def _check_shapes(rec, bijector, m, x, y, fx, gy, fldj, ildj, point_atol,
                  log_det_atol):
  k = int(x.shape[0]) // 2
  a = m.ambient_dim
  xb = tf.reshape(x[:2 * k], [2, k, a])
  yb = tf.reshape(y[:2 * k], [2, k, a])
  fxb = bijector.forward(xb)
  gyb = bijector.inverse(yb)
  for what, value, want in [('forward', fxb, [2, k, a]),
                            ('inverse', gyb, [2, k, a])]:
    if value.shape.as_list() != want:
      rec.fail('shapes', f'{what} of [2, {k}, {a}] has shape {value.shape}')
      return
  rec.close('shapes', 'forward([2, k, A]) vs forward([n, A])',
            m.dist(tf.reshape(fxb, [-1, a]), fx[:2 * k]), point_atol)
  rec.close('shapes', 'inverse([2, k, A]) vs inverse([n, A])',
            m.dist(tf.reshape(gyb, [-1, a]), gy[:2 * k]), point_atol)
  flat = {'fldj': _np(fldj)[:2 * k].reshape(2, k),
          'ildj': _np(ildj)[:2 * k].reshape(2, k)}
  for event_ndims, want_shape, reduce in [(1, [2, k], lambda v: v),
                                          (2, [2], lambda v: v.sum(-1)),
                                          (3, [], np.sum)]:
    for what, fn, pts in [
        ('fldj', bijector.forward_log_det_jacobian, xb),
        ('ildj', bijector.inverse_log_det_jacobian, yb)]:
      value = fn(_fresh(pts), event_ndims=event_ndims)
      if value.shape.as_list() != want_shape:
        rec.fail('shapes', f'{what}(event_ndims={event_ndims}) has shape '
                           f'{value.shape}, want {want_shape}')
        continue
      # A sum of k values carries k times the per-point round-off.
      atol = log_det_atol * (1 if event_ndims == 1 else
                             (k if event_ndims == 2 else 2 * k))
      rec.close('shapes', f'{what}(event_ndims={event_ndims})',
                _np(value) - reduce(flat[what]), atol)


def _check_gradients(rec, bijector, x, y):
  variables = list(bijector.trainable_variables)
  if not variables:
    rec.fail('gradients', 'the bijector has no trainable variables')
  rng = np.random.default_rng(0)
  weights = tf.constant(rng.normal(size=x.shape), x.dtype)
  scalars = tf.constant(rng.normal(size=x.shape[:-1]), x.dtype)
  xs, ys = _fresh(x), _fresh(y)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([xs, ys])
    fx = bijector.forward(xs)
    # sin keeps the loss smooth across a torus's wrap of the angles.
    losses = {
        'forward': tf.reduce_sum(weights * tf.sin(fx)),
        'fldj': tf.reduce_sum(
            scalars * bijector.forward_log_det_jacobian(xs, 1)),
        'inverse': tf.reduce_sum(weights * tf.sin(bijector.inverse(ys))),
        'ildj': tf.reduce_sum(
            scalars * bijector.inverse_log_det_jacobian(ys, 1)),
    }
  for what, loss in losses.items():
    point = xs if what in ('forward', 'fldj') else ys
    g_point = tape.gradient(loss, point)
    if g_point is None:
      rec.fail('gradients', f'{what}: no gradient to the points')
    else:
      rec.finite('gradients', f'd {what} / d points', g_point)
    grads = tape.gradient(loss, variables)
    missing = [v.name for v, g in zip(variables, grads) if g is None]
    if missing:
      rec.fail('gradients', f'{what}: no gradient to {missing}')
    present = [_np(g) for g in grads if g is not None]
    for v, g in zip(variables, grads):
      if g is not None:
        rec.finite('gradients', f'd {what} / d {v.name}', g)
    if variables and not any(np.any(g != 0) for g in present):
      rec.fail('gradients', f'{what}: every variable gradient is zero')
  del tape
