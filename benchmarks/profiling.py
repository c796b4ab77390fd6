"""Section profile: where sample's time goes, in units of one Hessian of ψ.

(The module is not called `profile`, which would shadow the standard
library's module of that name when benchmarks/ is on sys.path.)
"""

from typing import Dict, List

import tensorflow as tf

from benchmarks import common
from tfp_ircpm import solvers


def measure(cases, scales, points, repeats) -> List[Dict]:
  """Times ψ, its Hessian, the solver's derivative, solve, forward, sample.

  A sample costs the solve (one value + gradient + tangent Hessian of h at
  y = x, then one per Newton iteration, over the whole batch until the
  slowest point converges), the log-det from the solve's Hessian (a 2 × 2
  determinant) and the IFT point (no extra ψ evaluation when no gradient is
  taken). log_prob costs the closed-form inverse plus its Jacobian. So
  sample / log_prob ≈ (1 + max iterations) · derivative / log_prob.
  """
  rows = []
  for name in cases:
    m = common.named_manifold(name)
    for scale in scales:
      psi, bij, q = common.make_model(m, scale=scale, tolerance=1e-6)
      x = m.uniform().sample(points, seed=2)
      y = bij.forward(x)
      ambient = common.ambient_hessian_fn(psi)
      fns = dict(
          psi=tf.function(lambda: psi(y)),
          hessian=lambda: ambient(y),
          derivative=tf.function(lambda: solvers.local_derivatives(
              m, psi, x, y)[:3]),
          solve=tf.function(lambda: solvers.solve(m, psi, x,
                                                  tolerance=1e-6).point),
          forward=tf.function(lambda: bij.forward(x)),
          sample_and_log_prob=tf.function(
              lambda q=q: q.experimental_sample_and_log_prob(points,
                                                             seed=(3, 4))),
          log_prob=tf.function(lambda: q.log_prob(y)))
      seconds = dict(zip(fns, common.interleaved_medians(list(fns.values()),
                                                         repeats)))
      iters = bij.solve(x).iterations
      max_iter = int(tf.reduce_max(iters))
      unit = seconds['hessian']
      rows.append(dict(
          manifold=name, output_scale=scale, points=points,
          seconds=seconds, in_hessians={k: v / unit
                                        for k, v in seconds.items()},
          mean_iterations=float(tf.reduce_mean(tf.cast(iters, tf.float32))),
          max_iterations=max_iter,
          predicted_ratio=(1 + max_iter) * seconds['derivative']
          / seconds['log_prob'],
          ratio=seconds['sample_and_log_prob'] / seconds['log_prob']))
  return rows
