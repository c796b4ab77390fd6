"""Section floor: log_prob over the Hessian of ψ alone on the same points.

log_prob is the closed-form inverse plus the exact intrinsic log-det (Eq. 4);
no exact log-det costs less than a Hessian of ψ, so the cheaper of the
ambient and the tangent Hessian is the floor.
"""

from typing import Dict, List

import tensorflow as tf

from benchmarks import common


def measure(cases, points, repeats) -> List[Dict]:
  rows = []
  for name in cases:
    m = common.named_manifold(name)
    psi, _, q = common.make_model(m)
    y = m.uniform().sample(points, seed=1)
    ambient = common.ambient_hessian_fn(psi)
    tangent = common.tangent_hessian_fn(m, psi)
    log_prob = tf.function(q.log_prob)
    t_amb, t_tan, t_lp = common.interleaved_medians(
        [lambda: ambient(y), lambda: tangent(y), lambda: log_prob(y)],
        repeats)
    floor = min(t_amb, t_tan)
    rows.append(dict(manifold=name, points=points,
                     hessian_ambient_s=t_amb, hessian_tangent_s=t_tan,
                     log_prob_s=t_lp, ratio=t_lp / floor, target=3.0))
  return rows
