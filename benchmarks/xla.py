"""Section xla: `jit_compile=True` against plain `tf.function`."""

import time
from typing import Dict, List

import tensorflow as tf

import tfp_ircpm as ircpm
from benchmarks import common
from benchmarks import train
from tfp_ircpm import targets as targets_lib


def measure(points, batch, repeats, quick=False) -> List[Dict]:
  """Plain tf.function against jit_compile=True; failures are reported."""
  m = ircpm.manifolds.Sphere(2)
  target = targets_lib.sphere_four_modes()
  _, _, q = common.make_model(m, scale=1 / 20)
  y = m.uniform().sample(points, seed=1)
  seed = tf.constant([7, 8])
  fns = {
      'log_prob': lambda jit: tf.function(q.log_prob, jit_compile=jit),
      'sample_and_log_prob': lambda jit: tf.function(
          lambda s: q.experimental_sample_and_log_prob(points, seed=s),
          jit_compile=jit),
  }
  args = {'log_prob': y, 'sample_and_log_prob': seed}
  if quick:  # compiling the solve takes tens of seconds
    del fns['sample_and_log_prob']
  else:
    fns['train_step'] = lambda jit: train.train_step_fn(
        q, q.bijector, target, batch, None, jit_compile=jit)
    args['train_step'] = seed
  rows = []
  for name, make in fns.items():
    row = dict(function=name)
    for jit in (False, True):
      key = 'xla' if jit else 'plain'
      fn = make(jit)
      try:
        start = time.perf_counter()
        common.block(fn(args[name]))
        first = time.perf_counter() - start
        row[key] = dict(
            seconds=common.median_seconds(lambda: fn(args[name]), repeats),
            first_call_s=first)
      except Exception as e:  # pylint: disable=broad-except
        row[key] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
    if 'seconds' in row['xla']:
      row['speedup'] = row['plain']['seconds'] / row['xla']['seconds']
    rows.append(row)
  return rows
