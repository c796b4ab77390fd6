r"""Quickstart: a 3-fold shared IRCPM stack on S² fit to a vMF mixture.

Trains q = f∘f∘f # Uniform(S²), with one MLP potential ψ shared by the three
IRCPMs, by reverse KL (Eq. 9) to a normalised mixture of three von
Mises-Fisher densities, then prints the effective sample size and KL(q‖p)
on 20000 samples:

  w = p / q,  ESS = (Σw)² / Σw² / N,  KL = mean(log q - log p).

Usage:
  python examples/quickstart.py [--steps=300] [--batch_size=256]
"""

import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm

tfd = tfp.distributions
tfb = tfp.bijectors

flags.DEFINE_integer('steps', 300, 'Adam steps.')
flags.DEFINE_integer('batch_size', 256, 'Samples per step.')
flags.DEFINE_float('learning_rate', 3e-3, 'Adam learning rate.')
flags.DEFINE_integer('eval_samples', 20000, 'Samples for ESS and KL.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
FLAGS = flags.FLAGS


def vmf_mixture() -> tfd.Distribution:
  """A normalised mixture of three von Mises-Fisher densities on S²."""
  mus = np.array([[0.0, 0.0, 1.0], [0.8, 0.6, 0.0], [-0.6, 0.0, -0.8]])
  return tfd.MixtureSameFamily(
      tfd.Categorical(probs=tf.constant([0.5, 0.3, 0.2])),
      tfd.VonMisesFisher(tf.constant(mus, tf.float32),
                         tf.constant([6.0, 8.0, 5.0])))


def metrics(q: tfd.Distribution, target: tfd.Distribution, n: int, seed):
  y, log_q = q.experimental_sample_and_log_prob(n, seed=seed)
  log_w = tf.cast(target.log_prob(y), tf.float64) - tf.cast(log_q, tf.float64)
  w = tf.exp(log_w - tf.reduce_max(log_w))
  ess = tf.reduce_sum(w) ** 2 / tf.reduce_sum(w * w) / n
  kl = -tf.reduce_mean(log_w)
  return float(ess), float(kl)


def main(_):
  tf.random.set_seed(FLAGS.seed)
  sphere = ircpm.manifolds.Sphere(2)
  psi = ircpm.potentials.MLP(sphere, hidden_units=(32, 32),
                             output_scale=1 / 20, seed=FLAGS.seed)
  bij = ircpm.IRCPM(sphere, psi)
  q = tfd.TransformedDistribution(sphere.uniform(), tfb.Chain([bij, bij, bij]))
  target = vmf_mixture()
  optimizer = tf_keras.optimizers.Adam(FLAGS.learning_rate)

  @tf.function
  def train_step(seed):
    with tf.GradientTape() as tape:
      y, log_q = q.experimental_sample_and_log_prob(FLAGS.batch_size,
                                                    seed=seed)
      loss = tf.reduce_mean(log_q - target.log_prob(y))   # KL(q‖p)
    grads = tape.gradient(loss, q.trainable_variables)
    optimizer.apply_gradients(zip(grads, q.trainable_variables))
    return loss

  ess0, kl0 = metrics(q, target, FLAGS.eval_samples, seed=(FLAGS.seed, 1))
  print(f'before training: ESS = {100 * ess0:.1f}%  KL = {kl0:.4f} nats')
  start = time.time()
  seeds = tfp.random.split_seed(FLAGS.seed, n=FLAGS.steps)
  for step in range(FLAGS.steps):
    loss = train_step(seeds[step])
    if step % 50 == 0 or step == FLAGS.steps - 1:
      print(f'step {step:4d}  loss (KL) {float(loss):.4f}  '
            f'{time.time() - start:.1f}s', flush=True)
  ess, kl = metrics(q, target, FLAGS.eval_samples, seed=(FLAGS.seed, 2))
  print(f'after {FLAGS.steps} steps ({time.time() - start:.1f}s): '
        f'ESS = {100 * ess:.1f}%  KL = {kl:.4f} nats '
        f'(N = {FLAGS.eval_samples})')


if __name__ == '__main__':
  app.run(main)
