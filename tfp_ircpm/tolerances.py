"""Default tolerances by dtype: the one table.

Each is a multiple of the round-off its computation can reach in that
dtype. The solvers and log-dets run in float32 and float64 only (Cholesky
and QR exist for those); the low-precision rows serve the manifolds'
membership checks and diagnostics, which accept any float.

* `solve`: ‖grad_y h‖ at which the c-transform solve stops. Its round-off
  floor is about eps · (|log_y x| + |∇ψ|), ~1e-7 in float32; 1e-5 leaves
  room for sharp trained networks. The returned point takes one more
  implicit Newton step, so its error is ~tolerance², not tolerance.
* `cg`: relative residual of conjugate-gradient solves (IFT step, log-det
  surrogates), the same margin.
* `membership`: how far points may lie off the manifold (| |x| − 1 | on
  spheres) for `validate_args` and the serving signatures.
* `round_trip`: geodesic distance d(x, f⁻¹(f(x))) `check_diffeomorphism`
  accepts.
"""

from typing import NamedTuple

import tensorflow as tf


class Tolerances(NamedTuple):
  solve: float
  cg: float
  membership: float
  round_trip: float


_TABLE = {
    tf.float16: Tolerances(solve=1e-2, cg=1e-2, membership=1e-2,
                           round_trip=1e-2),
    tf.bfloat16: Tolerances(solve=5e-2, cg=5e-2, membership=5e-2,
                            round_trip=5e-2),
    tf.float32: Tolerances(solve=1e-5, cg=1e-5, membership=1e-4,
                           round_trip=1e-4),
    tf.float64: Tolerances(solve=1e-10, cg=1e-10, membership=1e-8,
                           round_trip=1e-8),
}


def for_dtype(dtype) -> Tolerances:
  """The defaults for a floating dtype (ValueError for others)."""
  dtype = tf.as_dtype(dtype).base_dtype
  if dtype not in _TABLE:
    raise ValueError(f'No default tolerances for {dtype.name}.')
  return _TABLE[dtype]
