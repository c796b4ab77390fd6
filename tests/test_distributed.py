"""MirroredStrategy over 2 logical CPUs follows single-device training.

TF fixes its logical devices when the runtime starts, so the comparison runs
in a subprocess: this file run as a script (`python tests/test_distributed.py
OUT.json`) splits the CPU into two logical devices first, then trains the
same flow with the same global batch and seed four ways (custom loop and
Keras `fit`, one device and MirroredStrategy) and writes the losses.
"""

import json
import os
import pathlib
import subprocess
import sys

if __name__ == '__main__':
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import distribute
from tfp_ircpm import keras as ircpm_keras
from tfp_ircpm import targets
from tfp_ircpm import training

tfd = tfp.distributions
ROOT = pathlib.Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 128
STEPS = 8
LEARNING_RATE = 1e-2


def _flow():
  """Same initial ψ whatever the strategy (seeded MLP)."""
  target = targets.sphere_four_modes()
  sphere = target.manifold
  psi = ircpm.potentials.MLP(sphere, (16, 16), output_scale=1 / 20, seed=0)
  return tfd.TransformedDistribution(sphere.uniform(),
                                     ircpm.IRCPM(sphere, psi)), target


def _custom_loop(strategy):
  with strategy.scope():
    q, target = _flow()
    optimizer = tf_keras.optimizers.Adam(LEARNING_RATE)
  losses = training.train(
      lambda s: distribute.reverse_kl_loss(q, target, GLOBAL_BATCH, s)[0],
      q.trainable_variables, STEPS, optimizer=optimizer,
      # A tuple seed is stateless; an int seed draws from TF's global RNG,
      # so two calls in one process would see different sample streams.
      seed=(0, 0), log_every=0, strategy=strategy)
  return losses, q


def _keras_fit(strategy):
  with strategy.scope():
    q, target = _flow()
    model = ircpm_keras.FlowModel(q, target, batch_size=GLOBAL_BATCH)
    model.compile(optimizer=tf_keras.optimizers.Adam(LEARNING_RATE))
  history = model.fit(epochs=STEPS, steps_per_epoch=1, verbose=0).history
  return history, q


def _keras_nll(strategy, data):
  with strategy.scope():
    q, _ = _flow()
    model = ircpm_keras.FlowModel(q)
    model.compile(optimizer=tf_keras.optimizers.Adam(LEARNING_RATE))
  dataset = tf.data.Dataset.from_tensor_slices(data).batch(64)
  return model.fit(dataset, epochs=2, verbose=0).history['nll']


def _main(out_path):
  cpus = [d.name for d in tf.config.list_logical_devices('CPU')]
  mirrored = tf.distribute.MirroredStrategy(cpus)
  single = tf.distribute.get_strategy()
  data = tfd.VonMisesFisher([0., 0., 1.], 2.).sample(256, seed=(1, 2))
  result = dict(devices=cpus, replicas=mirrored.num_replicas_in_sync)
  for name, strategy in (('single', single), ('mirrored', mirrored)):
    losses, q = _custom_loop(strategy)
    result[f'loop_{name}'] = losses
    result[f'loop_{name}_weights'] = [
        v.numpy().ravel().tolist() for v in q.trainable_variables]
    history, _ = _keras_fit(strategy)
    result[f'keras_{name}'] = history
    result[f'nll_{name}'] = _keras_nll(strategy, data)
  with open(out_path, 'w') as f:
    json.dump(result, f)


# Four trainings in a second TF process: ~85 s of CPU.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp('distributed') / 'runs.json'
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, __file__, str(out)], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text())


def test_two_logical_cpus_make_two_replicas(runs):
  assert len(runs['devices']) == 2
  assert runs['replicas'] == 2


def test_custom_loop_matches_single_device(runs):
  single, mirrored = runs['loop_single'], runs['loop_mirrored']
  assert len(single) == len(mirrored) == STEPS
  np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-4)
  for a, b in zip(runs['loop_mirrored_weights'], runs['loop_single_weights']):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_keras_fit_matches_single_device(runs):
  single, mirrored = runs['keras_single'], runs['keras_mirrored']
  for key in ('loss', 'kl', 'ess'):
    assert len(single[key]) == STEPS
    np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-4,
                               atol=1e-4)


def test_keras_maximum_likelihood_matches_single_device(runs):
  np.testing.assert_allclose(runs['nll_mirrored'], runs['nll_single'],
                             rtol=1e-5)


if __name__ == '__main__':
  _main(sys.argv[1])
