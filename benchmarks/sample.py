"""Section sample: `experimental_sample_and_log_prob` over `log_prob`.

Sampling is the c-transform solve, the IFT step and the log-det; Newton is
timed against the paper's unit-step descent, with mean/max solver iterations.
"""

from typing import Dict, List

import tensorflow as tf

from benchmarks import common


def measure(cases, scales, points, repeats) -> List[Dict]:
  rows = []
  for name in cases:
    m = common.named_manifold(name)
    for scale in scales:
      row = dict(manifold=name, points=points, output_scale=scale,
                 tolerance=1e-6, target=3.0)
      for method in ('newton', 'gradient'):
        psi, bij, q = common.make_model(m, scale=scale, method=method,
                                        tolerance=1e-6)
        x = m.uniform().sample(points, seed=2)
        y = bij.forward(x)
        log_prob = tf.function(q.log_prob)
        sample = tf.function(
            lambda q=q: q.experimental_sample_and_log_prob(points, seed=(3, 4)))
        t_lp, t_s = common.interleaved_medians([lambda: log_prob(y), sample],
                                               repeats)
        res = bij.solve(x)
        iters = tf.cast(res.iterations, tf.float32)
        row[method] = dict(sample_s=t_s, log_prob_s=t_lp, ratio=t_s / t_lp,
                           mean_iterations=float(tf.reduce_mean(iters)),
                           max_iterations=int(tf.reduce_max(iters)),
                           converged=bool(tf.reduce_all(res.converged)))
        del psi
      row['newton_speedup_over_gradient'] = (row['gradient']['sample_s']
                                             / row['newton']['sample_s'])
      rows.append(row)
  return rows
