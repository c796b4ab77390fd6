r"""Wall seconds of training to reach ESS ≥ 99% and KL ≤ 0.003 on S² (Sec. 5.2).

Trains a stack of IRCPMs sharing an MLP ψ on `targets.sphere_four_modes()`
by reverse KL (Eq. 9) with Adam and cosine decay, evaluates ESS and KL on
`eval_samples` samples every `eval_every` steps, and stops at the first
evaluation that meets both thresholds. The reported training time excludes
the evaluations (and includes the first step's tracing); the total wall time
is reported too. Writes JSON.

  python -m benchmarks.time_to_quality [--steps=4000] [--nojit_compile]
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow_probability as tfp
import tf_keras

from benchmarks import common
import tfp_ircpm as ircpm
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training

tfd = tfp.distributions

# The benchmarked configuration; `benchmarks.run --time_to_quality` uses it
# too.
DEFAULTS = dict(steps=4000, batch_size=256, learning_rate=5e-3, stack=3,
                hidden=128, eval_every=500, eval_samples=20000,
                jit_compile=True, seed=0)

flags.DEFINE_integer('steps', DEFAULTS['steps'],
                     'Adam steps (the cosine decay horizon).')
flags.DEFINE_integer('batch_size', DEFAULTS['batch_size'], 'Samples per step.')
flags.DEFINE_float('learning_rate', DEFAULTS['learning_rate'],
                   'Initial Adam learning rate.')
flags.DEFINE_integer('stack', DEFAULTS['stack'], 'IRCPMs sharing one ψ.')
flags.DEFINE_integer('hidden', DEFAULTS['hidden'],
                     'Width of the two hidden layers.')
flags.DEFINE_integer('eval_every', DEFAULTS['eval_every'],
                     'Steps between evaluations.')
flags.DEFINE_integer('eval_samples', DEFAULTS['eval_samples'],
                     'Samples for ESS and KL.')
flags.DEFINE_bool('jit_compile', DEFAULTS['jit_compile'],
                  'Compile the training step with XLA (compiling the step '
                  'takes about 35 s).')
flags.DEFINE_integer('seed', DEFAULTS['seed'], 'Random seed.')
flags.DEFINE_string('output', 'benchmarks/time_to_quality.json',
                    'JSON output path.')
FLAGS = flags.FLAGS

ESS_TARGET = 0.99
KL_TARGET = 0.003


def time_to_quality(steps: int, batch_size: int, learning_rate: float,
                    stack: int, hidden: int, eval_every: int,
                    eval_samples: int, jit_compile: bool, seed: int) -> dict:
  """Trains until ESS ≥ 99% and KL ≤ 0.003 (or `steps`); returns a record."""
  target = targets_lib.sphere_four_modes()
  sphere = target.manifold
  psi = ircpm.potentials.MLP(sphere, (hidden, hidden), output_scale=1 / 20,
                             seed=seed)
  bij = ircpm.IRCPM(sphere, psi)
  q = tfd.TransformedDistribution(sphere.uniform(), ircpm.bijectors.Chain([bij] * stack))
  evals = []
  clock = dict(train=0., last=time.time())

  def callback(step, loss):
    del loss
    if (step + 1) % eval_every and step + 1 != steps:
      return False
    clock['train'] += time.time() - clock['last']
    m = training.evaluate(q, target, eval_samples, seed=(seed, 99))
    evals.append(dict(step=step + 1, train_seconds=clock['train'],
                      ess=m['ess'], kl=m['kl']))
    print(f"step {step + 1}: ESS {100 * m['ess']:.2f}%  KL {m['kl']:.5f}  "
          f"train {clock['train']:.1f}s", flush=True)
    clock['last'] = time.time()
    return m['ess'] >= ESS_TARGET and m['kl'] <= KL_TARGET

  start = time.time()
  lr = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps)
  training.train(
      lambda s: training.reverse_kl_loss(q, target, batch_size, seed=s),
      q.trainable_variables, steps, optimizer=tf_keras.optimizers.Adam(lr),
      seed=seed, log_every=0, jit_compile=jit_compile, callback=callback)
  reached = [e for e in evals
             if e['ess'] >= ESS_TARGET and e['kl'] <= KL_TARGET]
  return dict(
      config=dict(stack=stack, psi=f'MLP [{hidden}, {hidden}] / 20',
                  batch_size=batch_size, learning_rate=learning_rate,
                  schedule=f'cosine decay over {steps} steps',
                  jit_compile=jit_compile, seed=seed,
                  eval_samples=eval_samples),
      reached=bool(reached),
      seconds_to_quality=reached[0]['train_seconds'] if reached else None,
      steps_to_quality=reached[0]['step'] if reached else None,
      total_wall_seconds=time.time() - start,
      evaluations=evals, load_average=os.getloadavg())


def main(_):
  record = time_to_quality(**{k: getattr(FLAGS, k) for k in DEFAULTS})
  print(json.dumps({k: v for k, v in record.items() if k != 'evaluations'},
                   indent=2))
  common.write_json(record, FLAGS.output)
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
