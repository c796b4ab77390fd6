r"""Keras `fit` on the S² four-mode target, then SavedModel export and reload.

Builds the paper's 3-fold shared IRCPM stack (Sec. 5.2), wraps it in
`tfp_ircpm.keras.FlowModel`, trains it by reverse KL with `compile`/`fit`
(Keras progress bar; loss, KL and ESS per epoch; cosine learning-rate decay;
ModelCheckpoint of the weights), exports it with `tfp_ircpm.export.save`,
reloads the SavedModel with plain `tf.saved_model.load`, and prints the ESS
and KL of the reloaded model's samples next to the in-process ones.

  python examples/keras_fit.py [--epochs=10] [--steps_per_epoch=100]
"""

import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import export
from tfp_ircpm import keras as ircpm_keras
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training

tfd = tfp.distributions

flags.DEFINE_integer('epochs', 10, 'Keras epochs.')
flags.DEFINE_integer('steps_per_epoch', 100, 'Reverse-KL steps per epoch.')
flags.DEFINE_integer('batch_size', 256, 'Samples per step.')
flags.DEFINE_float('learning_rate', 3e-3,
                   'Initial Adam learning rate (cosine decay).')
flags.DEFINE_integer('stack', 3, 'IRCPMs in the shared-parameter stack.')
flags.DEFINE_integer('hidden', 64, 'Width of the two hidden layers.')
flags.DEFINE_integer('eval_samples', 20000, 'Samples for ESS and KL.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('output_dir', 'results/keras_fit',
                    'Where the checkpoint and the SavedModel go.')
FLAGS = flags.FLAGS


def reloaded_metrics(path: str, target, num_samples: int, seed, batch=5000):
  """ESS and KL of samples drawn by the reloaded SavedModel.

  Uses the seeds of `training.evaluate(..., seed=seed, batch_size=batch)`,
  so both see the same samples.
  """
  served = tf.saved_model.load(path).signatures['sample']
  seeds = tfp.random.split_seed(seed, n=-(-num_samples // batch))
  log_w = []
  for i, s in enumerate(tf.unstack(seeds)):
    n = min(batch, num_samples - i * batch)
    out = served(n=tf.constant(n), seed=s)
    log_w.append(tf.cast(target.unnormalized_log_prob(out['points'])
                         - out['log_prob'], tf.float64))
  log_w = tf.concat(log_w, 0)
  return dict(ess=float(training.ess_from_log_weights(log_w)),
              kl=float(-tf.reduce_mean(log_w)) + target.log_normalizer)


def main(_):
  logging.set_verbosity(logging.WARNING)  # no INFO line per checkpoint
  tf.random.set_seed(FLAGS.seed)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  target = targets_lib.sphere_four_modes()
  sphere = target.manifold
  psi = ircpm.potentials.MLP(sphere, (FLAGS.hidden, FLAGS.hidden),
                             output_scale=1 / 20, seed=FLAGS.seed)
  bij = ircpm.IRCPM(sphere, psi)
  q = tfd.TransformedDistribution(sphere.uniform(),
                                  ircpm.bijectors.Chain([bij] * FLAGS.stack))
  model = ircpm_keras.FlowModel(q, target, batch_size=FLAGS.batch_size,
                                seed=FLAGS.seed)
  steps = FLAGS.epochs * FLAGS.steps_per_epoch
  model.compile(optimizer=tf_keras.optimizers.Adam(
      tf_keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, steps)))
  checkpoint = os.path.join(FLAGS.output_dir, 'weights')
  start = time.time()
  model.fit(epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
            callbacks=[tf_keras.callbacks.ModelCheckpoint(
                checkpoint, save_weights_only=True)], verbose=2)
  print(f'trained {steps} steps in {time.time() - start:.0f}s')

  local = training.evaluate(q, target, FLAGS.eval_samples,
                            seed=(FLAGS.seed, 99))
  print(f'in process:  ESS = {100 * local["ess"]:.2f}%  '
        f'KL = {local["kl"]:.4f}')
  path = os.path.join(FLAGS.output_dir, 'saved_model')
  export.save(q, path)
  served = reloaded_metrics(path, target, FLAGS.eval_samples,
                            (FLAGS.seed, 99))
  print(f'reloaded SavedModel ({path}):  ESS = {100 * served["ess"]:.2f}%  '
        f'KL = {served["kl"]:.4f}')


if __name__ == '__main__':
  app.run(main)
