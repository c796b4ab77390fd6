"""tfp_ircpm.keras.FlowModel: fit, callbacks, evaluate/predict, checkpoints.

Run as a script (`python tests/test_keras.py restore CKPT POINTS OUT`) it is
the fresh process that restores a checkpoint.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import keras as ircpm_keras
from tfp_ircpm import targets
from tfp_ircpm import training

tfd, tfb = tfp.distributions, tfp.bijectors
ROOT = pathlib.Path(__file__).resolve().parent.parent
BATCH = 128


def build(seed: int = 0) -> ircpm_keras.FlowModel:
  """One IRCPM (MLP (16, 16) ψ) on S², for the four-mode target."""
  target = targets.sphere_four_modes()
  sphere = target.manifold
  psi = ircpm.potentials.MLP(sphere, (16, 16), output_scale=1 / 20,
                             seed=seed)
  q = tfd.TransformedDistribution(sphere.uniform(), ircpm.IRCPM(sphere, psi))
  return ircpm_keras.FlowModel(q, target, batch_size=BATCH, seed=seed)


def log_prob_graph(model):
  """log q as one graph with a [None, 3] signature, built the same way in
  both processes: eager calls trace for the first static batch shape, and
  oneDNN may order sums differently per shape (2e-7 apart in float32)."""
  return tf.function(model.distribution.log_prob, input_signature=[
      tf.TensorSpec([None, 3], tf.float32)])


def fixed_points() -> np.ndarray:
  return ircpm.manifolds.Sphere(2).random_uniform(32, seed=(7, 7)).numpy()


class _Recorder(tf_keras.callbacks.Callback):
  """Records logs, the learning rate and log q(fixed points) per epoch."""

  def __init__(self, points):
    super().__init__()
    self.points = points
    self.log_probs, self.lrs, self.batches = [], [], 0

  def on_train_batch_end(self, batch, logs=None):
    self.batches += 1

  def on_epoch_end(self, epoch, logs=None):
    # The scheduler set this epoch's rate at the epoch's beginning.
    self.lrs.append(float(tf_keras.backend.get_value(self.model.optimizer.lr)))
    self.log_probs.append(self.model(self.points).numpy())


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """Fits once with the standard callbacks; the tests read the outcome."""
  tmp = tmp_path_factory.mktemp('keras')
  model = build()
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-2))
  before = model.evaluate(steps=2, verbose=0, return_dict=True)
  recorder = _Recorder(fixed_points())
  callbacks = [
      recorder,
      tf_keras.callbacks.ModelCheckpoint(str(tmp / 'ckpt_{epoch:02d}'),
                                         save_weights_only=True),
      tf_keras.callbacks.LearningRateScheduler(
          lambda epoch: 1e-2 if epoch < 2 else 5e-3),
  ]
  # The TensorBoard callback needs the tensorboard package (in setup.py).
  if importlib.util.find_spec('tensorboard') is not None:
    callbacks.append(tf_keras.callbacks.TensorBoard(str(tmp / 'tb')))
  history = model.fit(epochs=3, steps_per_epoch=10, callbacks=callbacks,
                      verbose=0)
  after = model.evaluate(steps=2, verbose=0, return_dict=True)
  return dict(model=model, tmp=tmp, before=before, after=after,
              history=history.history, recorder=recorder)


def test_fit_lowers_the_loss_and_logs_kl_and_ess(trained):
  before, after, history = trained['before'], trained['after'], trained[
      'history']
  assert set(history) >= {'loss', 'kl', 'ess'}
  assert len(history['loss']) == 3
  # Same evaluation samples before and after (evaluate is deterministic).
  assert after['kl'] < before['kl'] - 0.05, (before, after)
  assert after['ess'] > before['ess']
  assert history['loss'][-1] < history['loss'][0]
  log_z = targets.sphere_four_modes().log_normalizer
  np.testing.assert_allclose(np.array(history['kl']) - history['loss'],
                             log_z, atol=1e-4)


def test_evaluate_metrics_are_the_papers_ess_and_kl(trained):
  """evaluate(steps=1) against the definitions on the same samples."""
  model = trained['model']
  got = model.evaluate(steps=1, verbose=0, return_dict=True)
  seed = tf.random.experimental.stateless_fold_in(
      tf.constant([model.seed, 1]), 0)
  y, log_q = model.distribution.experimental_sample_and_log_prob(BATCH,
                                                                 seed=seed)
  log_w = model.target.unnormalized_log_prob(y) - log_q
  np.testing.assert_allclose(got['loss'], -np.mean(log_w), rtol=1e-5)
  np.testing.assert_allclose(
      got['ess'], float(training.ess_from_log_weights(log_w)), rtol=1e-4)
  assert got == model.evaluate(steps=1, verbose=0, return_dict=True)


def test_predict_and_call_give_log_densities(trained):
  model = trained['model']
  points = fixed_points()
  expected = model.distribution.log_prob(points).numpy()
  np.testing.assert_allclose(model(points).numpy(), expected, atol=1e-5)
  np.testing.assert_allclose(model.predict(points, batch_size=16, verbose=0),
                             expected, atol=1e-5)


def test_callbacks_fire(trained):
  tmp, recorder = trained['tmp'], trained['recorder']
  assert recorder.batches == 30
  assert recorder.lrs == pytest.approx([1e-2, 1e-2, 5e-3])
  assert trained['history']['lr'] == pytest.approx([1e-2, 1e-2, 5e-3])
  for epoch in (1, 2, 3):
    assert (tmp / f'ckpt_{epoch:02d}.index').exists()


def test_model_checkpoint_restores_that_epochs_weights(trained):
  model, tmp, recorder = trained['model'], trained['tmp'], trained['recorder']
  points = fixed_points()
  assert np.abs(recorder.log_probs[0] - recorder.log_probs[-1]).max() > 1e-4
  model.load_weights(str(tmp / 'ckpt_01'))
  np.testing.assert_array_equal(model(points).numpy(), recorder.log_probs[0])
  model.load_weights(str(tmp / 'ckpt_03'))
  np.testing.assert_array_equal(model(points).numpy(), recorder.log_probs[-1])


def test_early_stopping_stops(trained):
  model = trained['model']
  stop = tf_keras.callbacks.EarlyStopping(monitor='loss', patience=0,
                                          min_delta=1e3)
  history = model.fit(epochs=5, steps_per_epoch=2, callbacks=[stop],
                      verbose=0)
  assert len(history.history['loss']) == 2
  assert stop.stopped_epoch == 1


def test_tensorboard_callback_writes_the_metrics(trained):
  pytest.importorskip('tensorboard')
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in (trained['tmp'] / 'tb' / 'train').glob('events.out.*'):
    for record in tf.data.TFRecordDataset(str(path)):
      event = event_pb2.Event.FromString(record.numpy())
      tags.update(v.tag for v in event.summary.value)
  assert {'epoch_loss', 'epoch_kl', 'epoch_ess'} <= tags


@pytest.mark.slow  # a second TF process: ~30 s of CPU
def test_checkpoint_restores_bitwise_in_a_new_process(trained, tmp_path):
  model = trained['model']
  points = fixed_points()
  np.save(tmp_path / 'points.npy', points)
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  expected = log_prob_graph(model)(points).numpy()
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2')
  subprocess.run([sys.executable, __file__, 'restore', path,
                  str(tmp_path / 'points.npy'), str(tmp_path / 'out.npz')],
                 check=True, env=env, timeout=600, capture_output=True)
  out = np.load(tmp_path / 'out.npz')
  assert np.abs(out['before'] - expected).max() > 1e-3  # another init
  np.testing.assert_array_equal(out['after'], expected)


def _restore_main(path, points_path, out_path):
  model = build(seed=1)
  points = np.load(points_path)
  log_prob = log_prob_graph(model)
  before = log_prob(points).numpy()
  # The optimizer's slots are in the checkpoint too; this model has none.
  tf.train.Checkpoint(model=model).read(path).expect_partial(
  ).assert_existing_objects_matched()
  np.savez(out_path, before=before, after=log_prob(points).numpy())


def _keras_psi(dtype=tf.float32):
  psi = tf_keras.Sequential([
      tf_keras.layers.Dense(16, activation='softplus', dtype=dtype),
      tf_keras.layers.Dense(1, dtype=dtype, kernel_initializer=(
          tf_keras.initializers.RandomNormal(stddev=0.02, seed=1)))])
  psi.build([None, 3])
  return psi


def test_variables_are_tracked_through_chain_distribution_and_model():
  sphere = ircpm.manifolds.Sphere(2)
  mlp = ircpm.potentials.MLP(sphere, (8, 8), seed=0)
  keras_psi = _keras_psi()
  shared = ircpm.IRCPM(sphere, mlp)
  other = ircpm.IRCPM(sphere, keras_psi)
  expected = {v.ref() for v in list(mlp.trainable_variables)
              + list(keras_psi.trainable_variables)}
  assert len(mlp.trainable_variables) == 5
  assert len(keras_psi.trainable_variables) == 4
  for chain_cls in (tfb.Chain, ircpm.bijectors.Chain):
    chain = chain_cls([shared, other, shared])
    q = tfd.TransformedDistribution(sphere.uniform(), chain)
    model = ircpm_keras.FlowModel(q)
    for obj in (chain, q, model):
      refs = [v.ref() for v in obj.trainable_variables]
      assert len(refs) == len(expected) == 9
      assert set(refs) == expected
    assert len(model.trainable_weights) == 9


def test_checkpoint_holds_every_psi_variable(tmp_path):
  model = build()
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'c'))
  names = [n for n, _ in tf.train.list_variables(path)
           if 'distribution' in n and 'OPTIMIZER' not in n]
  assert len(names) == len(model.trainable_variables) == 5


@pytest.mark.slow  # another flow to trace: ~20 s of CPU
def test_keras_potential_trains_by_maximum_likelihood():
  """ψ a tf_keras Sequential; data-driven fit on an array of points."""
  sphere = ircpm.manifolds.Sphere(2)
  psi = _keras_psi()
  bij = ircpm.IRCPM(sphere, psi)
  q = tfd.TransformedDistribution(sphere.uniform(), bij)
  data = tfd.VonMisesFisher([0., 0., 1.], 2.).sample(512, seed=(1, 2))
  initial = [w.numpy() for w in psi.trainable_weights]
  model = ircpm_keras.FlowModel(q)
  model.compile(optimizer=tf_keras.optimizers.Adam(2e-2))
  history = model.fit(data, batch_size=128, epochs=4, verbose=0).history
  assert set(history) == {'loss', 'nll'}
  assert history['nll'][-1] < history['nll'][0] - 0.02, history
  final = model.evaluate(data, batch_size=128, verbose=0, return_dict=True)
  np.testing.assert_allclose(final['nll'],
                             -np.mean(q.log_prob(data).numpy()), rtol=1e-5)
  changed = [np.abs(w.numpy() - w0).max() > 0
             for w, w0 in zip(psi.trainable_weights, initial)]
  # The output bias shifts ψ by a constant, which leaves the map and q
  # unchanged: its gradient is exactly 0. Every other weight trained.
  assert changed == [True, True, True, False]
  # Still an IRCPM: the solve inverts the closed-form inverse.
  x = sphere.random_uniform(64, seed=(3, 3))
  np.testing.assert_allclose(bij.inverse(bij.forward(x)), x, atol=1e-4)


def test_bad_use_gives_clear_errors():
  model = build()
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
  with pytest.raises(ValueError, match='steps_per_epoch'):
    model.fit(epochs=1)
  with pytest.raises(ValueError, match='FlowModel'):
    model.fit(steps_per_epoch=1, batch_size=64)
  with pytest.raises(ValueError, match='needs steps'):
    model.evaluate()
  no_target = ircpm_keras.FlowModel(model.distribution)
  with pytest.raises(ValueError, match='needs a target'):
    no_target.fit(steps_per_epoch=1)
  with pytest.raises(TypeError, match='tfd.Distribution'):
    ircpm_keras.FlowModel('q')
  with pytest.raises(TypeError, match='unnormalized_log_prob'):
    ircpm_keras.FlowModel(model.distribution, target=3.)


@pytest.mark.slow
def test_keras_fit_example_trains_exports_and_reloads(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run(
      [sys.executable, str(ROOT / 'examples' / 'keras_fit.py'),
       '--epochs=2', '--steps_per_epoch=20', '--hidden=16', '--stack=1',
       '--eval_samples=2000', f'--output_dir={tmp_path}'],
      capture_output=True, text=True, env=env, timeout=900, check=True).stdout
  import re  # pylint: disable=g-import-not-at-top
  local = re.search(r'in process:  ESS = ([\d.]+)%', out)
  served = re.search(r'reloaded SavedModel .*ESS = ([\d.]+)%', out)
  assert local and served, out
  # Same seeds in and out of process: the same samples.
  assert abs(float(local.group(1)) - float(served.group(1))) < 0.05
  assert (tmp_path / 'saved_model' / 'saved_model.pb').exists()


if __name__ == '__main__':
  if sys.argv[1:2] == ['restore']:
    _restore_main(*sys.argv[2:5])
