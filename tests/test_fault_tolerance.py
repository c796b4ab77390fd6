"""Backups (`tfp_ircpm.backup`): `training.train(backup_dir=...)` and
`tfp_ircpm.keras.BackupAndRestore` resume exactly and refuse bad files.

An interrupted run restarted with the same arguments resumes from its last
backup and ends bit for bit where an uninterrupted run ends (step i always
uses seed split i; with data, the restored steps' batches are skipped). A
backup that cannot be restored in full is an error that names its file,
never a silent partial restore or a silent fresh start. The losses here
are cheap stochastic quadratics, so the tests cost no flow tracing; the
multi-worker kill test (`test_multiworker.py`) does the same with IRCPMs.
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_ircpm import keras as ircpm_keras
from tfp_ircpm import training

tfd = tfp.distributions

STEPS, EVERY = 10, 3


class Interrupted(Exception):
  pass


def _problem():
  v = tf.Variable([1., -2., 0.5])
  return v, tf_keras.optimizers.Adam(0.1)


def _loss(v):
  return lambda s: tf.reduce_sum(
      tf.square(v - tf.random.stateless_normal([3], s)))


def _data_loss(v):
  return lambda s, batch: tf.reduce_sum(tf.square(v - batch))


def _dataset():
  return tf.data.Dataset.from_tensor_slices(
      np.arange(60, dtype=np.float32).reshape(20, 3) / 10.)


def _run(backup_dir, stop_after=None, data=False):
  v, opt = _problem()

  def interrupt(step, loss):
    del loss
    if step == stop_after:
      raise Interrupted

  losses = training.train(_data_loss(v) if data else _loss(v), [v], STEPS,
                          optimizer=opt, seed=(4, 2), log_every=0,
                          data=_dataset() if data else None,
                          backup_dir=backup_dir, backup_every=EVERY,
                          callback=interrupt)
  return losses, v.numpy(), int(opt.iterations)


@pytest.mark.parametrize('data', [False, True], ids=['seeded', 'data'])
def test_an_interrupted_run_resumes_at_its_last_backup_exactly(tmp_path,
                                                               data):
  want_losses, want_v, _ = _run(None, data=data)
  backup = str(tmp_path / 'b')
  with pytest.raises(Interrupted):
    _run(backup, stop_after=7, data=data)       # 8 steps done, backup at 6
  assert tf.train.latest_checkpoint(backup).endswith('ckpt-6')
  losses, v, iterations = _run(backup, data=data)
  assert losses == want_losses                  # restored 6, ran 4
  np.testing.assert_array_equal(v, want_v)
  assert iterations == STEPS                    # no step lost or repeated
  # Finished: a rerun restores the final backup and runs nothing.
  assert _run(backup, data=data)[0] == want_losses


def _backup(tmp_path):
  backup = str(tmp_path / 'b')
  _run(backup)
  path = tf.train.latest_checkpoint(backup)
  assert path.endswith(f'ckpt-{STEPS}')
  return backup, path


def test_a_truncated_backup_is_an_error_naming_the_file(tmp_path):
  backup, path = _backup(tmp_path)
  data_file, = glob.glob(path + '.data-*')
  size = os.path.getsize(data_file)
  with open(data_file, 'r+b') as f:
    f.truncate(size // 2)
  with pytest.raises(ValueError, match=f'Cannot restore the backup {path}'):
    _run(backup)


def test_a_corrupted_backup_is_an_error_naming_the_file(tmp_path):
  backup, path = _backup(tmp_path)
  data_file, = glob.glob(path + '.data-*')
  raw = bytearray(open(data_file, 'rb').read())
  raw[len(raw) // 2] ^= 0xFF                    # a flipped byte: CRC fails
  with open(data_file, 'wb') as f:
    f.write(bytes(raw))
  with pytest.raises(ValueError, match=f'Cannot restore the backup {path}'):
    _run(backup)


def test_a_lost_state_file_is_not_a_silent_fresh_start(tmp_path):
  backup, _ = _backup(tmp_path)
  os.remove(os.path.join(backup, 'checkpoint'))
  with pytest.raises(ValueError, match='state file .*checkpoint'):
    _run(backup)


def test_a_backup_of_another_model_is_refused(tmp_path):
  backup, path = _backup(tmp_path)
  w = tf.Variable(tf.zeros([4]))              # another shape
  with pytest.raises(ValueError, match=f'Cannot restore the backup {path}'):
    training.train(_loss(w), [w], STEPS, seed=(4, 2), log_every=0,
                   backup_dir=backup)
  with pytest.raises(ValueError, match='backup_every'):
    training.train(_loss(w), [w], STEPS, backup_dir=backup, backup_every=0)


def test_data_that_runs_out_is_an_error():
  v, _ = _problem()
  with pytest.raises(ValueError, match='data ran out after 20 steps of 25'):
    training.train(_data_loss(v), [v], 25, data=_dataset(), log_every=0)


# -- FlowModel.fit with tfp_ircpm.keras.BackupAndRestore ------------------------
# Any tfd.Distribution trains in a FlowModel: a Gaussian keeps these cheap.


def _keras_run(backup_dir, epochs=4, stop_at_epoch=None):
  loc = tf.Variable([0.5, -1.])
  model = ircpm_keras.FlowModel(tfd.MultivariateNormalDiag(loc, [1., 2.]))
  model.compile(optimizer=tf_keras.optimizers.Adam(0.1))

  class Stop(tf_keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      if epoch == stop_at_epoch:
        raise Interrupted

  data = tf.data.Dataset.from_tensor_slices(
      np.linspace(-1., 3., 32, dtype=np.float32).reshape(16, 2)).batch(4)
  callbacks = [Stop()]
  if backup_dir is not None:
    callbacks.append(ircpm_keras.BackupAndRestore(backup_dir,
                                                  delete_checkpoint=False))
  model.fit(data, epochs=epochs, verbose=0, callbacks=callbacks)
  return loc.numpy(), int(model.optimizer.iterations.numpy())


def test_keras_backup_resumes_at_an_epoch_end_exactly(tmp_path):
  want = _keras_run(None)
  backup = str(tmp_path / 'k')
  with pytest.raises(Interrupted):
    _keras_run(backup, stop_at_epoch=2)
  loc, iterations = _keras_run(backup)
  np.testing.assert_array_equal(loc, want[0])
  assert iterations == want[1] == 16


def test_keras_backup_refuses_a_truncated_file_or_a_lost_state_file(
    tmp_path):
  backup = str(tmp_path / 'k')
  _keras_run(backup, epochs=2)
  path = tf.train.latest_checkpoint(os.path.join(backup, 'chief'))
  data_file, = glob.glob(path + '.data-*')
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 2)
  with pytest.raises(ValueError, match=f'Cannot restore the backup {path}'):
    _keras_run(backup)
  os.remove(os.path.join(backup, 'chief', 'checkpoint'))
  with pytest.raises(ValueError, match='state file .*checkpoint'):
    _keras_run(backup)
