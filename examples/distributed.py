r"""Multi-worker training with `tf.distribute`, with backups, both ways.

Every worker runs this same script. Under `TF_CONFIG` it is one worker of a
`tf.distribute.MultiWorkerMirroredStrategy` cluster; without it, one
process. It prints its role, then trains an IRCPM flow on S² twice:

1. by reverse KL to the four-mode target (Sec. 5.2) with
   `training.train(..., strategy=..., backup_dir=...)`: each replica draws
   its slice of the global batch from the step's stateless seed;
2. by maximum likelihood on samples of a von Mises–Fisher density with
   `FlowModel.fit` and `tfp_ircpm.keras.BackupAndRestore`: the `tf.data`
   pipeline is auto-sharded, so each worker reads its own part of every
   global batch.

Backups go to --backup_dir (a directory every worker can read). Kill any
worker and start the job again with the same flags: training resumes from
the last backup and ends with the same weights as an uninterrupted run
(a finished reverse-KL run is restored, not rerun: remove --backup_dir to
train afresh). The chief prints the quality of both fits.

  python examples/distributed.py                      # one process
  python examples/distributed.py --local_workers=2    # two workers here
  TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]},
              "task": {"type": "worker", "index": 0}}' \
      python examples/distributed.py --backup_dir=/shared/backups
"""

import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import distribute
from tfp_ircpm import keras as ircpm_keras
from tfp_ircpm import targets
from tfp_ircpm import training

tfd = tfp.distributions

flags.DEFINE_integer('local_workers', 0, 'Start this many workers on this '
                     'machine (TF_CONFIG on 127.0.0.1) and wait for them.')
flags.DEFINE_integer('global_batch', 256, 'Samples per step over the whole '
                     'cluster: a multiple of the number of replicas.')
flags.DEFINE_integer('steps', 200, 'Reverse-KL steps.')
flags.DEFINE_integer('epochs', 4, 'Maximum-likelihood epochs.')
flags.DEFINE_integer('num_points', 4096, 'Data points for maximum likelihood.')
flags.DEFINE_integer('backup_every', 50, 'Steps between backups.')
flags.DEFINE_string('backup_dir', 'results/distributed/backup',
                    'Backups (shared by all workers).')
flags.DEFINE_integer('eval_samples', 8192, 'Samples for ESS and KL.')
FLAGS = flags.FLAGS


def _flow(sphere):
  return ircpm.make_flow(sphere, 3, hidden_units=(32, 32))


def launch_local_workers(n: int) -> int:
  """Runs this script as n workers of a local cluster; their exit code."""
  args = [sys.executable, os.path.abspath(__file__)] + [
      a for a in sys.argv[1:] if not a.startswith('--local_workers')]
  procs = [subprocess.Popen(args, env=dict(os.environ, TF_CONFIG=config))
           for config in distribute.local_tf_configs(n)]
  try:
    return max(abs(p.wait()) for p in procs)
  finally:
    for p in procs:            # one failed: the others wait on it forever
      if p.poll() is None:
        p.kill()


def main(_):
  logging.set_verbosity(logging.WARNING)   # tf.distribute logs every reduce
  if FLAGS.local_workers:
    sys.exit(launch_local_workers(FLAGS.local_workers))
  strategy = (tf.distribute.MultiWorkerMirroredStrategy()
              if 'TF_CONFIG' in os.environ else tf.distribute.get_strategy())
  role = distribute.role(strategy)
  print(f'[{role.task_type} {role.task_id}] role: {role}', flush=True)
  if FLAGS.global_batch % role.num_replicas:
    raise app.UsageError(f'--global_batch={FLAGS.global_batch} must be a '
                         f'multiple of the {role.num_replicas} replicas.')
  target = targets.sphere_four_modes()
  sphere = target.manifold

  # 1. Reverse KL, custom loop.
  with strategy.scope():
    q = _flow(sphere)
    optimizer = tf_keras.optimizers.Adam(
        tf_keras.optimizers.schedules.CosineDecay(3e-3, FLAGS.steps))
  training.train(
      lambda s: distribute.reverse_kl_loss(q, target, FLAGS.global_batch,
                                           s)[0],
      q.trainable_variables, FLAGS.steps, optimizer=optimizer, seed=(0, 0),
      log_every=50 if role.is_chief else 0, strategy=strategy,
      backup_dir=os.path.join(FLAGS.backup_dir, 'reverse_kl'),
      backup_every=FLAGS.backup_every)
  if role.is_chief:
    m = training.evaluate(q, target, FLAGS.eval_samples, seed=(1, 2))
    print(f'reverse KL, {FLAGS.steps} steps: ESS = {100 * m["ess"]:.2f}%  '
          f'KL = {m["kl"]:.4f}', flush=True)

  # 2. Maximum likelihood, Keras.
  truth = tfd.VonMisesFisher(tf.math.l2_normalize([1., 1., 1.]), 5.)
  points = truth.sample(FLAGS.num_points, seed=(3, 4))
  data = (tf.data.Dataset.from_tensor_slices(points)
          .batch(FLAGS.global_batch, drop_remainder=True))
  with strategy.scope():
    q = _flow(sphere)
    model = ircpm_keras.FlowModel(q)
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3))
  history = model.fit(data, epochs=FLAGS.epochs, verbose=0, callbacks=[
      ircpm_keras.BackupAndRestore(os.path.join(FLAGS.backup_dir, 'nll'))])
  if role.is_chief:
    test = truth.sample(4096, seed=(5, 6))
    print(f'maximum likelihood, {FLAGS.epochs} epochs: train NLL '
          f'{history.history["nll"][-1]:.4f}, test NLL '
          f'{training.batched_nll(q, test):.4f} (truth '
          f'{float(-tf.reduce_mean(truth.log_prob(test))):.4f})', flush=True)


if __name__ == '__main__':
  app.run(main)
