"""Section scaling: log_prob and sample on Tᵈ and (S²)ᵏ against d."""

from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from benchmarks import common


def fit_exponent(dims, seconds) -> Optional[float]:
  """Slope of log seconds against log d over d >= 8 (None: too few)."""
  pairs = [(d, s) for d, s in zip(dims, seconds) if d >= 8 and s]
  if len(pairs) < 2:
    return None
  d, s = np.log(np.array(pairs)).T
  return float(np.polyfit(d, s, 1)[0])


def measure(dims, sample_dims, points, repeats,
            progress: Callable[[List[Dict]], None] = lambda r: None,
            ) -> List[Dict]:
  """One series per family, with exponents fitted by `fit_exponent`.

  progress(rows) is called after each d (large d take minutes).
  """
  rows = []
  for family in ('T', 'S'):
    series = dict(family='T^d' if family == 'T' else '(S²)^k', points=points,
                  dims=[], log_prob_s=[], hessian_s=[], sample_s=[],
                  logdet_share=[])
    rows.append(series)
    for d in dims:
      m = common.named_manifold(f'{family}{d}')
      psi, bij, q = common.make_model(m, hidden=(128, 128), scale=0.3)
      y = m.uniform().sample(points, seed=1)
      ambient = common.ambient_hessian_fn(psi)
      log_prob = tf.function(q.log_prob)
      grad_only = tf.function(bij.inverse)
      t_lp = common.median_seconds(lambda: log_prob(y), repeats)
      t_inv = common.median_seconds(lambda: grad_only(y), repeats)
      t_hess = common.median_seconds(lambda: ambient(y), repeats)
      t_s = None
      if d in sample_dims:
        sample = tf.function(
            lambda q=q: q.experimental_sample_and_log_prob(points, seed=(3, 4)))
        t_s = common.median_seconds(sample, repeats)
      series['dims'].append(d)
      series['log_prob_s'].append(t_lp)
      series['hessian_s'].append(t_hess)
      series['sample_s'].append(t_s)
      # The share of log_prob beyond the closed-form inverse: the log-det.
      series['logdet_share'].append(max(0., 1. - t_inv / t_lp))
      progress(rows)  # keep what is done
    series['log_prob_exponent'] = fit_exponent(series['dims'],
                                                series['log_prob_s'])
    series['sample_exponent'] = fit_exponent(series['dims'],
                                              series['sample_s'])
  return rows
