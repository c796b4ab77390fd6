r"""First calls: a 3-layer IRCPM flow on S² against TFP's own MAF ×3.

What a user meets before any steady state: the first
`experimental_sample_and_log_prob`, the same call at a new batch size
(retracing), the steady state, the first `log_prob`, and the first training
step (reverse KL for the IRCPM, maximum likelihood for both), then the
export as a SavedModel with `sample` and `log_prob` signatures
(`tfp_ircpm.export.save` against `tf.saved_model.save` of the same two
functions of the MAF). Each side runs
in its own fresh Python process, so neither inherits the other's traced
functions or autograph cache; the table gives each IRCPM figure as a ratio
to the MAF's in the same run.

  python -m benchmarks.first_call [--output=benchmarks/first_call.json]

The IRCPM side is `make_flow(Sphere(2), 3, hidden_units=(64, 64))` (float32,
uniform base); the MAF side is three `tfb.MaskedAutoregressiveFlow` with
`AutoregressiveNetwork(params=2, hidden_units=[64, 64])` on R³ with a
standard normal base: the size of network a user would compare.
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('output', 'benchmarks/first_call.json', 'JSON output.')
flags.DEFINE_enum('side', None, ['ircpm', 'maf'],
                  'Internal: measure one side in this process.')

_ROWS = ('sample_and_log_prob_256', 'sample_and_log_prob_300',
         'steady_256', 'log_prob_256', 'ml_step', 'reverse_kl_step', 'export')


def _timed(fn) -> float:
  """Seconds of one call of fn, waiting for the tensors it returns."""
  start = time.perf_counter()
  out = fn()
  for t in (out if isinstance(out, (tuple, list)) else [out]):
    t.numpy()
  return time.perf_counter() - start


def _measure(side: str) -> dict:
  """Seconds of each first call on one side, in this (fresh) process."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  tfd, tfb = tfp.distributions, tfp.bijectors
  if side == 'ircpm':
    import tfp_ircpm as ircpm  # pylint: disable=g-import-not-at-top
    m = ircpm.manifolds.Sphere(2)
    q = ircpm.make_flow(m, 3, hidden_units=(64, 64), seed=0)
    data = m.random_uniform(256, tf.float32, seed=(1, 2))
    target = ircpm.targets.sphere_four_modes()
  else:
    layers = [tfb.MaskedAutoregressiveFlow(tfb.AutoregressiveNetwork(
        params=2, hidden_units=[64, 64], event_shape=[3])) for _ in range(3)]
    q = tfd.TransformedDistribution(
        tfd.MultivariateNormalDiag(tf.zeros(3)), tfb.Chain(layers))
    data = tf.random.stateless_normal([256, 3], [1, 2])
    target = None
  out = {}
  out['sample_and_log_prob_256'] = _timed(
      lambda: q.experimental_sample_and_log_prob(256, seed=(3, 4)))
  out['sample_and_log_prob_300'] = _timed(
      lambda: q.experimental_sample_and_log_prob(300, seed=(3, 5)))
  out['steady_256'] = min(_timed(
      lambda: q.experimental_sample_and_log_prob(256, seed=(3, i)))
                          for i in range(6, 9))
  out['log_prob_256'] = _timed(lambda: q.log_prob(tf.identity(data)))
  variables = q.trainable_variables
  optimizer = tf_keras.optimizers.Adam(1e-3)

  def step_fn(loss_fn):
    @tf.function
    def step():
      with tf.GradientTape() as tape:
        loss = loss_fn()
      optimizer.apply_gradients(zip(tape.gradient(loss, variables),
                                    variables))
      return loss
    return step

  out['ml_step'] = _timed(step_fn(
      lambda: -tf.reduce_mean(q.log_prob(data))))
  if target is not None:
    def reverse_kl():
      y, log_q = q.experimental_sample_and_log_prob(256, seed=(5, 6))
      return tf.reduce_mean(log_q - target.unnormalized_log_prob(y))
    out['reverse_kl_step'] = _timed(step_fn(reverse_kl))
  out['export'] = _export_seconds(side, q)
  return out


def _export_seconds(side: str, q) -> float:
  """Seconds to write q as a SavedModel with sample and log_prob."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = tempfile.mkdtemp()
  start = time.perf_counter()
  if side == 'ircpm':
    import tfp_ircpm as ircpm  # pylint: disable=g-import-not-at-top
    ircpm.export.save(q, path)
  else:
    module = tf.Module()
    module.q = q
    module.sample = tf.function(
        lambda n: q.sample(n),
        input_signature=[tf.TensorSpec([], tf.int32)])
    module.log_prob = tf.function(
        q.log_prob, input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    tf.saved_model.save(module, path, signatures=dict(
        sample=module.sample, log_prob=module.log_prob))
  return time.perf_counter() - start


def _run_side(side: str) -> dict:
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.first_call', f'--side={side}'],
      capture_output=True, text=True, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.side:
    print(json.dumps(_measure(FLAGS.side)))
    return
  sides = {side: _run_side(side) for side in ('maf', 'ircpm')}
  rows = []
  fmt = lambda v, spec: '-' if v is None else format(v, spec)
  print(f'{"first call":26s} {"IRCPM s":>9s} {"MAF s":>9s} {"ratio":>7s}')
  for name in _ROWS:
    ours, theirs = sides['ircpm'].get(name), sides['maf'].get(name)
    ratio = ours / theirs if ours is not None and theirs else None
    rows.append(dict(call=name, ircpm_s=ours, maf_s=theirs, ratio=ratio))
    print(f'{name:26s} {fmt(ours, ".2f"):>9s} {fmt(theirs, ".2f"):>9s} '
          f'{fmt(ratio, ".1f"):>7s}')
  with open(FLAGS.output, 'w') as f:
    json.dump(dict(rows=rows, sides=sides), f, indent=1)
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
