"""tolerances: the one table of default tolerances, and who reads it.

Proven here:

* `for_dtype` rows are ordered, float64 < float32 < float16 <= bfloat16 in
  every field, each above its dtype's machine epsilon; dtypes are accepted
  in any spelling, and integer, bool and complex dtypes raise ValueError;
* `IRCPM` with tolerance=None solves to `for_dtype(dtype).solve` (Newton
  in float64, gradient descent in float32): every residual is within it;
  a row patched into the table that is looser than every starting residual
  stops the solve before its first step, so the default really is read
  from the table, and an explicit tolerance overrides it;
* `Sphere(2).membership_assertions`, and `IRCPM(validate_args=True)`
  through it, accept points off the sphere by 0.5 × `membership` and
  reject them at 10 ×, in float32 and float64 (without validate_args the
  point is projected instead).
"""

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import tolerances

M = ircpm.manifolds
S2 = M.Sphere(2)

FIELDS = tolerances.Tolerances._fields


def test_rows_are_ordered_by_precision_in_every_field():
  rows = [tolerances.for_dtype(d) for d in
          (tf.float64, tf.float32, tf.float16, tf.bfloat16)]
  assert FIELDS == ('solve', 'cg', 'membership', 'round_trip')
  for field in FIELDS:
    f64, f32, f16, bf16 = (getattr(r, field) for r in rows)
    assert 0. < f64 < f32 < f16 <= bf16, field
  # Each default is a multiple of its dtype's round-off (bfloat16: 8 bits).
  eps = {tf.float64: np.finfo(np.float64).eps,
         tf.float32: np.finfo(np.float32).eps,
         tf.float16: np.finfo(np.float16).eps, tf.bfloat16: 2. ** -7}
  for dtype, e in eps.items():
    row = tolerances.for_dtype(dtype)
    assert all(getattr(row, f) >= 5. * e for f in FIELDS), dtype


def test_for_dtype_accepts_any_spelling_and_rejects_non_floats():
  assert tolerances.for_dtype('float32') == tolerances.for_dtype(tf.float32)
  assert tolerances.for_dtype(np.float64) == tolerances.for_dtype(tf.float64)
  assert tolerances.for_dtype(tf.float64).solve == 1e-10
  assert tolerances.for_dtype(tf.float32).solve == 1e-5
  for dtype in (tf.int32, tf.int64, 'int8', tf.bool, tf.complex64):
    with pytest.raises(ValueError, match='No default tolerances'):
      tolerances.for_dtype(dtype)


def _bijector(dtype, method, **kwargs):
  psi = ircpm.potentials.MLP(S2, (8, 8), output_scale=0.3, seed=4,
                             dtype=dtype)
  return ircpm.IRCPM(S2, psi, method=method, **kwargs)


# Every fresh IRCPM traces its solve (seconds), so each case below builds one.
@pytest.mark.parametrize('dtype,method', [(tf.float64, 'newton'),
                                          (tf.float32, 'gradient')])
def test_ircpm_solves_to_the_table_tolerance_by_default(dtype, method):
  x = S2.uniform(dtype).sample(64, seed=(1, 2))
  bij = _bijector(dtype, method)
  assert bij.tolerance is None
  res = bij.solve(x)
  tol = tolerances.for_dtype(dtype).solve
  assert bool(tf.reduce_all(res.converged))
  assert np.max(res.residual.numpy()) <= tol
  assert int(tf.reduce_min(res.iterations)) > 0     # it had to iterate


def test_the_default_solve_tolerance_is_read_from_the_table(monkeypatch):
  """A row looser than every starting residual ‖grad ψ(x)‖ stops the solve
  before its first step; an explicit tolerance still overrides it."""
  x = S2.uniform(tf.float64).sample(64, seed=(1, 2))
  table = tolerances._TABLE  # pylint: disable=protected-access
  monkeypatch.setitem(table, tf.float64,
                      table[tf.float64]._replace(solve=1e3))
  res = _bijector(tf.float64, 'gradient').solve(x)
  assert bool(tf.reduce_all(res.converged))
  np.testing.assert_array_equal(res.iterations.numpy(), 0)
  np.testing.assert_allclose(res.point.numpy(), x.numpy(), atol=1e-15)
  strict = _bijector(tf.float64, 'gradient', tolerance=1e-10).solve(x)
  assert int(tf.reduce_min(strict.iterations)) > 0
  assert np.max(strict.residual.numpy()) <= 1e-10


@pytest.mark.parametrize('dtype', [tf.float32, tf.float64])
def test_membership_tolerance_is_what_validation_accepts(dtype):
  atol = tolerances.for_dtype(dtype).membership
  rng = np.random.default_rng(0)
  u = rng.normal(size=(8, 3))
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  near = tf.constant(u * (1. + 0.5 * atol), dtype)
  far = tf.constant(u * (1. - 10. * atol), dtype)
  S2.membership_assertions(near)             # eager: raises if it fails
  with pytest.raises(tf.errors.InvalidArgumentError, match='off the sphere'):
    S2.membership_assertions(far)
  bij = _bijector(dtype, 'newton', validate_args=True)
  bij.inverse(near)
  with pytest.raises(tf.errors.InvalidArgumentError, match='off the sphere'):
    bij.inverse(far)
  # Without validate_args the point is projected, not refused.
  x = _bijector(dtype, 'newton').inverse(far)
  assert bool(tf.reduce_all(tf.math.is_finite(x)))
