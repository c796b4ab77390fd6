"""One process of the multi-worker tests (`tests/test_multiworker.py`).

  python tests/multiworker_job.py MODE OUT.json [BACKUP_DIR]

With `TF_CONFIG` set it is one worker of a `MultiWorkerMirroredStrategy`
cluster; without it, the single-process reference (the default strategy)
with the same global batch. It trains a small IRCPM flow on S² for `STEPS`
steps and writes its role, the losses and the final weights as JSON.

MODE: `loop_kl` / `loop_nll` (`training.train`, reverse KL or maximum
likelihood on a `tf.data` pipeline auto-sharded over the workers),
`keras_kl` / `keras_nll` (`FlowModel.fit`). With BACKUP_DIR the run keeps
backups there (`train(backup_dir=...)`, `tfp_ircpm.keras.BackupAndRestore`)
and resumes from them. `KILL_AT_STEP=k` makes worker 1 kill itself with
SIGKILL after step k, in the middle of training.
"""

import json
import os
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import distribute
from tfp_ircpm import keras as ircpm_keras
from tfp_ircpm import targets
from tfp_ircpm import training

tfd = tfp.distributions
GLOBAL_BATCH = 32
STEPS = 6
BACKUP_EVERY = 2
LEARNING_RATE = 1e-2


def _flow():
  """The same initial ψ in every process (seeded MLP)."""
  target = targets.sphere_four_modes()
  sphere = target.manifold
  psi = ircpm.potentials.MLP(sphere, (8, 8), output_scale=1 / 20, seed=0)
  return tfd.TransformedDistribution(sphere.uniform(),
                                     ircpm.IRCPM(sphere, psi)), target


def _data() -> np.ndarray:
  """STEPS global batches of points, the same in every process."""
  return tfd.VonMisesFisher([0., 0., 1.], 2.).sample(
      GLOBAL_BATCH * STEPS, seed=(1, 2)).numpy()


def _dataset() -> tf.data.Dataset:
  # Every worker reads the whole pipeline and keeps its part of each
  # global batch: DATA sharding (from_tensor_slices has no files).
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return (tf.data.Dataset.from_tensor_slices(_data()).batch(GLOBAL_BATCH)
          .repeat().with_options(options))


class _KillAt(tf_keras.callbacks.Callback):
  """Keras twin of the loop's kill callback."""

  def __init__(self, kill):
    super().__init__()
    self.kill = kill

  def on_train_batch_end(self, batch, logs=None):
    self.kill(int(self.model.optimizer.iterations.numpy()) - 1)


def main(mode: str, out_path: str, backup_dir: str = None) -> None:
  multi = 'TF_CONFIG' in os.environ
  strategy = (tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=tf.distribute.experimental.CommunicationOptions(
          timeout_seconds=120)) if multi else tf.distribute.get_strategy())
  role = distribute.role(strategy)
  print(f'role: {role}', flush=True)
  kill_at = int(os.environ.get('KILL_AT_STEP', -1))

  def kill(step):
    if step == kill_at and role.task_id == 1:
      print(f'killing myself after step {step}', flush=True)
      os.kill(os.getpid(), signal.SIGKILL)

  with strategy.scope():
    q, target = _flow()
    optimizer = tf_keras.optimizers.Adam(LEARNING_RATE)
  result = dict(role=role._asdict())
  if mode.startswith('loop'):
    if mode == 'loop_kl':
      loss_fn = lambda s: distribute.reverse_kl_loss(q, target, GLOBAL_BATCH,
                                                     s)[0]
      data = None
    else:
      def loss_fn(s, batch):
        del s
        return distribute.nll_loss(q, batch)[0]
      data = _dataset()
    result['losses'] = training.train(
        loss_fn, q.trainable_variables, STEPS, optimizer=optimizer,
        seed=(0, 0), log_every=1, strategy=strategy if multi else None,
        data=data, backup_dir=backup_dir, backup_every=BACKUP_EVERY,
        callback=lambda step, loss: kill(step))
    result['iterations'] = int(optimizer.iterations.numpy())
  else:
    with strategy.scope():
      model = ircpm_keras.FlowModel(
          q, target if mode == 'keras_kl' else None, batch_size=GLOBAL_BATCH)
      model.compile(optimizer=optimizer)
    callbacks = [_KillAt(kill)]
    if backup_dir is not None:
      callbacks.append(ircpm_keras.BackupAndRestore(
          backup_dir, save_freq=BACKUP_EVERY, delete_checkpoint=False))
    if mode == 'keras_kl':
      history = model.fit(epochs=STEPS // 2, steps_per_epoch=2, verbose=0,
                          callbacks=callbacks)
    else:
      history = model.fit(_dataset(), epochs=STEPS // 2, steps_per_epoch=2,
                          verbose=0, callbacks=callbacks)
    result['losses'] = history.history['loss']
    result['iterations'] = int(model.optimizer.iterations.numpy())
  result['weights'] = [v.numpy().ravel().tolist()
                       for v in q.trainable_variables]
  if mode.endswith('nll') and multi:
    result['shard'] = _local_points(strategy)
  if role.is_chief or not multi:
    with open(out_path, 'w') as f:
      json.dump(result, f)
  else:
    with open(f'{out_path}.worker{role.task_id}', 'w') as f:
      json.dump(result, f)


def _local_points(strategy) -> list:
  """This worker's elements of the distributed dataset, STEPS batches."""
  it = iter(strategy.experimental_distribute_dataset(_dataset()))
  out = []
  for _ in range(STEPS):
    local = strategy.experimental_local_results(next(it))
    out.append(np.concatenate([t.numpy() for t in local]).tolist())
  return out


if __name__ == '__main__':
  main(*sys.argv[1:])
