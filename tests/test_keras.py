"""tfp_ircpm.keras.FlowModel: fit, callbacks, evaluate/predict, checkpoints,
and the save() that is refused.

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


def build(seed: int = 0, model_seed=None) -> ircpm_keras.FlowModel:
  """One IRCPM (MLP (16, 16) ψ, initialised from `seed`) on S², for the
  four-mode target; `model_seed` (default `seed`) seeds the sample stream."""
  target = targets.sphere_four_modes()
  sphere = target.manifold
  psi = ircpm.potentials.MLP(sphere, (16, 16), output_scale=1 / 20,
                             seed=seed)
  q = tfd.TransformedDistribution(sphere.uniform(), ircpm.IRCPM(sphere, psi))
  return ircpm_keras.FlowModel(
      q, target, batch_size=BATCH,
      seed=seed if model_seed is None else model_seed)


def log_prob_graph(model):
  """log q as one graph with a [None, 3] signature, built the same way in
  both processes: eager calls trace for the first static batch shape, and
  oneDNN may order sums differently per shape (2e-7 apart in float32)."""
  return tf.function(model.distribution.log_prob, input_signature=[
      tf.TensorSpec([None, 3], tf.float32)])


def fixed_points() -> np.ndarray:
  return ircpm.manifolds.Sphere(2).random_uniform(32, seed=(7, 7)).numpy()


class _Recorder(tf_keras.callbacks.Callback):
  """Records the learning rate, log q(fixed points) and the trainable
  variables per epoch."""

  def __init__(self, points):
    super().__init__()
    self.points = points
    self.log_probs, self.lrs, self.variables, self.batches = [], [], [], 0

  def on_train_batch_end(self, batch, logs=None):
    self.batches += 1

  def on_epoch_end(self, epoch, logs=None):
    # The scheduler set this epoch's rate at the epoch's beginning.
    self.lrs.append(float(tf_keras.backend.get_value(self.model.optimizer.lr)))
    self.log_probs.append(self.model(self.points).numpy())
    self.variables.append(
        [v.numpy() for v in self.model.trainable_variables])


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


def _assert_restored(model, variables, log_prob, points):
  """`model` holds exactly `variables` and computes `log_prob` (to 1e-6:
  another model object traces its own functions, and oneDNN may sum in
  another order, ~1e-7 apart)."""
  got = [v.numpy() for v in model.trainable_variables]
  assert len(got) == len(variables) == 5
  for g, v in zip(got, variables):
    np.testing.assert_array_equal(g, v)
  np.testing.assert_allclose(model(points).numpy(), log_prob, rtol=1e-6)


def _recipes():
  """The README's readers of a save_weights / ModelCheckpoint file."""
  return {
      'load_weights': lambda m, path: m.load_weights(path),
      'Checkpoint(model)': lambda m, path: tf.train.Checkpoint(m).read(
          path).expect_partial().assert_existing_objects_matched(),
  }


@pytest.mark.parametrize('recipe', sorted(_recipes()))
def test_model_checkpoint_file_restores_into_a_fresh_model(trained, recipe):
  """A ModelCheckpoint(save_weights_only=True) file read into a model
  rebuilt with another initialisation (no optimizer: inference)."""
  recorder, points = trained['recorder'], fixed_points()
  fresh = build(seed=1)
  before = [v.numpy() for v in fresh.trainable_variables]
  assert max(np.abs(b - v).max() for b, v in zip(
      before, recorder.variables[-1])) > 0.1  # another init
  _recipes()[recipe](fresh, str(trained['tmp'] / 'ckpt_03'))
  _assert_restored(fresh, recorder.variables[-1], recorder.log_probs[-1],
                   points)


def test_tf_train_checkpoint_rooted_at_model_kwarg_round_trips(trained,
                                                                tmp_path):
  """tf.train.Checkpoint(model=...) / CheckpointManager files: read with the
  same layout, strictly."""
  model, points = trained['model'], fixed_points()
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  variables = [v.numpy() for v in model.trainable_variables]
  fresh = build(seed=1)
  tf.train.Checkpoint(model=fresh).read(path).expect_partial(
  ).assert_existing_objects_matched()
  _assert_restored(fresh, variables, model(points).numpy(), points)


def test_mixing_the_two_checkpoint_layouts_restores_nothing_and_says_so(
    trained, tmp_path):
  """save_weights roots the object graph at the model, Checkpoint(model=m)
  at the checkpoint: one read through the other matches no variable. The
  strict recipes raise instead of passing silently."""
  model = trained['model']
  keras_file = str(trained['tmp'] / 'ckpt_03')
  names = {n for n, _ in tf.train.list_variables(keras_file)}
  assert any(n.startswith('distribution/') for n in names)
  assert not any(n.startswith('model/') for n in names)
  fresh = build(seed=1)
  before = [v.numpy() for v in fresh.trainable_variables]
  status = tf.train.Checkpoint(model=fresh).read(keras_file).expect_partial()
  for b, v in zip(before, fresh.trainable_variables):
    np.testing.assert_array_equal(v.numpy(), b)  # nothing restored
  with pytest.raises(AssertionError, match='not bound to checkpointed'):
    status.assert_existing_objects_matched()
  # The other way round: load_weights on a Checkpoint(model=m) file.
  ckpt_file = tf.train.Checkpoint(model=model).write(str(tmp_path / 'c'))
  with pytest.raises(AssertionError):
    fresh.load_weights(ckpt_file)
  for b, v in zip(before, fresh.trainable_variables):
    np.testing.assert_array_equal(v.numpy(), b)


def test_load_weights_raises_when_the_flow_variables_are_not_restored(
    tmp_path):
  """A file of another flow (a chain of two IRCPMs) still matches the metric
  variables, which is all Keras' own load_weights checks: it would restore
  nothing of ψ and pass. FlowModel.load_weights raises."""
  sphere = ircpm.manifolds.Sphere(2)
  chain = ircpm.bijectors.Chain([
      ircpm.IRCPM(sphere, ircpm.potentials.MLP(sphere, (16, 16), seed=s))
      for s in (3, 4)])
  other = ircpm_keras.FlowModel(
      tfd.TransformedDistribution(sphere.uniform(), chain))
  other.save_weights(str(tmp_path / 'other'))
  fresh = build(seed=1)
  before = [v.numpy() for v in fresh.trainable_variables]
  status = tf.train.Checkpoint(fresh).read(str(tmp_path / 'other'))
  status.expect_partial().assert_nontrivial_match()  # Keras' only check
  with pytest.raises(AssertionError, match='not bound to checkpointed'):
    fresh.load_weights(str(tmp_path / 'other'))
  for b, v in zip(before, fresh.trainable_variables):
    np.testing.assert_array_equal(v.numpy(), b)


def test_hdf5_and_keras_weight_files_are_refused(tmp_path):
  """They hold only variables of Keras layers, none of the flow's: Keras
  would write and read them without a word and restore nothing."""
  model = build()
  for name in ('w.h5', 'w.weights.h5', 'w.hdf5', 'w.keras'):
    with pytest.raises(ValueError, match='HDF5 or .keras'):
      model.save_weights(str(tmp_path / name))
    assert not (tmp_path / name).exists()
  with pytest.raises(ValueError, match='HDF5 or .keras'):
    model.save_weights(str(tmp_path / 'w'), save_format='h5')
  # A file Keras wrote (plain tf_keras.Model.save_weights), named either way.
  tf_keras.Model.save_weights(model, str(tmp_path / 'plain.h5'))
  (tmp_path / 'plain').write_bytes((tmp_path / 'plain.h5').read_bytes())
  for name in ('plain.h5', 'plain'):
    with pytest.raises(ValueError, match='HDF5 or .keras'):
      model.load_weights(str(tmp_path / name))


def test_save_raises_a_clear_error_and_writes_nothing(trained, tmp_path):
  """Called or not, to a SavedModel directory, .keras or .h5; also through
  ModelCheckpoint without save_weights_only. (Keras alone would write a
  SavedModel once the model has been called, and load_model would revive
  an object that computes log q but cannot sample or train.)"""
  model = trained['model']
  assert model.built  # called by the recorder: Keras' save would succeed
  for m in (model, build()):
    for name in ('saved', 'm.keras', 'm.h5'):
      with pytest.raises(NotImplementedError,
                         match=r'save_weights.*export\.save'):
        m.save(str(tmp_path / name))
      assert not (tmp_path / name).exists()
    with pytest.raises(NotImplementedError, match='not supported'):
      m.get_config()
  # What fit(callbacks=[ModelCheckpoint(path)]) does at an epoch's end.
  checkpoint = tf_keras.callbacks.ModelCheckpoint(str(tmp_path / 'full'))
  checkpoint.set_model(model)
  with pytest.raises(NotImplementedError, match='save_weights'):
    checkpoint.on_epoch_end(0, logs={'loss': 0.})
  assert not (tmp_path / 'full').exists()


@pytest.mark.slow  # traces a fresh train step: ~20 s of CPU
def test_model_checkpoint_file_resumes_training_bitwise(trained):
  """Restored into a fresh compiled model (another ψ init, the same sample
  seed), epoch 2's file trains on to exactly epoch 3's weights: Adam's
  moments and step count (hence the reverse-KL seeds) come back too."""
  recorder, points = trained['recorder'], fixed_points()
  fresh = build(seed=1, model_seed=0)
  fresh.compile(optimizer=tf_keras.optimizers.Adam(1e-2))
  fresh.load_weights(str(trained['tmp'] / 'ckpt_02'))
  assert int(fresh.optimizer.iterations) == 20
  fresh.fit(epochs=1, steps_per_epoch=10, verbose=0, callbacks=[
      tf_keras.callbacks.LearningRateScheduler(lambda epoch: 5e-3)])
  _assert_restored(fresh, recorder.variables[-1], recorder.log_probs[-1],
                   points)


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
