"""Step-level backups for fault-tolerant training, and their failure policy.

A long job (a lattice flow, millions of events, many workers) must survive
a killed process: it keeps backups of its whole training state and, when
restarted with the same arguments, resumes from the last one. Two entry
points share this module's rules:

* `training.train(..., backup_dir=...)` keeps a `Backup`: a
  `tf.train.CheckpointManager` of the step count, the variables, the
  optimizer's state and the losses so far;
* `tfp_ircpm.keras.BackupAndRestore`, for `FlowModel.fit`, is
  `tf_keras.callbacks.BackupAndRestore` with the same restore checks.

Failure policy: a backup that exists but cannot be restored in full
(truncated, corrupted, written by another model, or with its state file
lost) raises ValueError naming the file. It never restores part of the
state, and never starts afresh beside a backup it could not read.

Under `MultiWorkerMirroredStrategy` every worker takes part in a save; the
chief's copy goes to the backup directory, the others' to scratch
directories (`distribute.backup_directory`), and all restore the chief's.
"""

import os
from typing import List, Optional

import tensorflow as tf

from tfp_ircpm import distribute


def latest(directory: str) -> Optional[str]:
  """The newest complete backup's prefix in `directory`, or None if there
  is none; ValueError if backup files are there but the state file that
  lists them is missing or unreadable (a silent fresh start would discard
  the job's progress)."""
  path = tf.train.latest_checkpoint(directory)
  if path is None:
    leftovers = sorted(tf.io.gfile.glob(os.path.join(directory,
                                                     'ckpt-*.index')))
    if leftovers:
      raise ValueError(
          f'{directory} holds backups ({leftovers[-1]}) but its state file '
          f'{os.path.join(directory, "checkpoint")} is missing or '
          'unreadable; remove the directory to start over.')
  return path


def restore_error(path: str, error: Exception) -> ValueError:
  """The ValueError for a backup at `path` that failed to restore."""
  message = getattr(error, 'message', None) or str(error)
  return ValueError(
      f'Cannot restore the backup {path} (files {path}.index and '
      f'{path}.data-*): {type(error).__name__}: {message}. It is truncated, '
      'corrupted, or from another model or number of steps; remove it to '
      'fall back to the previous backup, or remove the directory to start '
      'over.')


def restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
  """Restores `checkpoint` from `path` in full, else `restore_error`."""
  try:
    checkpoint.restore(path).assert_existing_objects_matched()
  # A truncated file raises IndexError, a flipped byte DataLossError, a
  # mismatch AssertionError or ValueError: each means the same here.
  except Exception as e:  # pylint: disable=broad-except
    raise restore_error(path, e) from e


class Backup:
  """`training.train`'s backups: the step count, `variables`, the
  optimizer and the losses of a `steps`-step run, in `directory`.

  `restore()` returns the losses of the steps already done ([] without a
  backup); `save(losses)` records a state after len(losses) steps.
  """

  def __init__(self, directory: str, strategy: tf.distribute.Strategy,
               variables: List[tf.Variable], optimizer, steps: int):
    self.directory = directory
    with strategy.scope():
      # Restoring into slots that do not exist yet would be deferred, and a
      # mismatch would then pass unnoticed: build them now.
      if hasattr(optimizer, 'build'):
        optimizer.build(variables)
      self.losses = tf.Variable(tf.zeros([steps], tf.float64),
                                trainable=False, name='losses')
      self.done = tf.Variable(0, dtype=tf.int64, trainable=False,
                              name='steps_done')
    self.checkpoint = tf.train.Checkpoint(
        variables=list(variables), optimizer=optimizer, losses=self.losses,
        steps_done=self.done)
    # The manager writes a backup's files first and the state file that
    # lists it last, so a kill mid-save leaves the previous one current.
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, distribute.backup_directory(directory, strategy),
        max_to_keep=2)

  def restore(self) -> List[float]:
    path = latest(self.directory)
    if path is None:
      return []
    restore(self.checkpoint, path)
    done = int(self.done.numpy())
    print(f'restored {path}: resuming at step {done}', flush=True)
    return [float(v) for v in self.losses.numpy()[:done]]

  def save(self, losses: List[float]) -> None:
    steps = int(self.losses.shape[0])
    self.losses.assign(list(losses) + [0.] * (steps - len(losses)))
    self.done.assign(len(losses))
    self.manager.save(checkpoint_number=len(losses))
