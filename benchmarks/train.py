"""Section train: a reverse-KL step (Eq. 9), IFT against unrolled backprop.

IFT gradients against backpropagation through K unrolled descent steps (the
paper): time and peak memory (TF's CPU allocator statistics) per step.
"""

import time
from typing import Dict, List, Optional

import tensorflow as tf
import tf_keras

from benchmarks import common
from tfp_ircpm import solvers
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training


def train_step_fn(q, bij, target, batch, unrolled: Optional[int],
                  jit_compile=False):
  """A reverse-KL Adam step; `unrolled`=K backpropagates through K steps."""
  m = bij.manifold
  variables = q.trainable_variables
  opt = tf_keras.optimizers.Adam(1e-4)

  def loss_fn(seed):
    if unrolled is None:
      return training.reverse_kl_loss(q, target, batch, seed=seed)
    x = q.distribution.sample(batch, seed=seed)
    y = solvers.unrolled_solve(m, bij.potential, x, unrolled)
    # log q(y) = log p₀(f⁻¹(y)) + ildj(y), exact at the solver's output.
    log_q = q.distribution.log_prob(x) + bij.inverse_log_det_jacobian(y, 1)
    return tf.reduce_mean(log_q - target.unnormalized_log_prob(y))

  @tf.function(jit_compile=jit_compile)
  def step(seed):
    with tf.GradientTape() as tape:
      loss = loss_fn(seed)
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    return loss

  return step


def measure(iterations, batch, repeats) -> List[Dict]:
  target = targets_lib.sphere_four_modes()
  m = target.manifold
  rows = []
  seed = tf.constant([5, 6])
  for k in iterations:
    row = dict(iterations=k, batch=batch)
    for kind in ('ift', 'unrolled'):
      # IFT: the same K descent iterations forward (tolerance 0), then one
      # implicit step, so both rows do the same forward work.
      _, bij, q = common.make_model(m, scale=1 / 20, method='gradient',
                                    tolerance=0., max_iterations=k)
      step = train_step_fn(q, bij, target, batch,
                           None if kind == 'ift' else k)
      start = time.perf_counter()
      common.block(step(seed))
      trace = time.perf_counter() - start
      row[kind] = dict(
          step_s=common.median_seconds(lambda: step(seed), repeats),
          peak_mib=common.peak_memory_mib(lambda: step(seed)),
          first_call_s=trace)
    row['speedup'] = row['unrolled']['step_s'] / row['ift']['step_s']
    rows.append(row)
  _, bij, q = common.make_model(m, scale=1 / 20)
  step = train_step_fn(q, bij, target, batch, None)
  newton = dict(step_s=common.median_seconds(lambda: step(seed), repeats),
                peak_mib=common.peak_memory_mib(lambda: step(seed)))
  for row in rows:
    # The library's own step (Newton to tolerance + IFT) against the paper's.
    row['newton_ift_speedup'] = row['unrolled']['step_s'] / newton['step_s']
  return [dict(rows=rows, newton_ift=newton, target_speedup_at_30=3.0)]
