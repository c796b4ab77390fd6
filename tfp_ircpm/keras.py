"""`FlowModel`: a `tf_keras.Model` that trains a flow with `compile`/`fit`.

Two objectives, chosen by the data handed to `fit`:

* reverse KL to a target energy (Eq. 9), with no data: `fit(epochs=...,
  steps_per_epoch=...)` draws `batch_size` samples from the flow at every
  step from a stateless seed derived from (seed, optimizer step), so runs
  are reproducible and resume after a checkpoint restore. Logs `loss`
  (mean(log q − log p̃)), `kl` (loss + log Z, nats) and `ess` (fraction) of
  each batch, averaged over the epoch by Keras.
* maximum likelihood on data: `fit(points, batch_size=...)` or a
  `tf.data.Dataset` of points [batch, *event_shape]. Logs `loss` = `nll`
  (−mean log q). Only the closed-form inverse runs, never a solve.

`model(points)` and `predict(points)` return log q(points) [batch];
`evaluate` computes the same metrics as `fit` without updating anything
(reverse-KL mode: give `steps`; samples come from seed + 1).

Variables: the model tracks the distribution (so every variable of ψ,
including a `tf_keras` potential's, is in `model.trainable_variables`,
`tf.train.Checkpoint(model=...)` and `save_weights`). Under
`tf.distribute.MirroredStrategy` create the distribution, the model and the
optimizer inside `strategy.scope()`; `tfp_ircpm.distribute` makes every
replica compute its slice of the single-device global batch.

Saving: the architecture is Python code (manifold, potential, bijectors,
target), so only weights are saved, and they are restored into a model
rebuilt by the same code. Read a file with the reader that matches its
writer: the object graph of `save_weights` / `ModelCheckpoint(...,
save_weights_only=True)` is rooted at the model (`distribution/...`,
`optimizer/...`), that of `tf.train.Checkpoint(model=model)` at the
checkpoint (`model/distribution/...`), and reading one with the other
matches nothing. `load_weights` here raises unless every variable the model
already has got a value (Keras only checks that something matched, and the
metric and optimizer variables always do), and refuses HDF5 and `.keras`
paths, whose files hold only variables of Keras layers, so none of the
flow's. `save()` raises: see `FlowModel.save`.
"""

import os
from typing import Dict

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_ircpm import backup as backup_lib
from tfp_ircpm import distribute
from tfp_ircpm import training

tfd = tfp.distributions


class FlowModel(tf_keras.Model):
  """A Keras model around a flow `distribution` (a `tfd.Distribution`).

  Args:
    distribution: the flow, e.g. `tfd.TransformedDistribution(M.uniform(),
      tfb.Chain([IRCPM(M, psi)] * 3))`.
    target: a `tfp_ircpm.targets.Target` (anything with
      `unnormalized_log_prob` and `log_normalizer`) for reverse-KL training
      without data; None for maximum likelihood only.
    batch_size: the global number of samples per reverse-KL step (a
      multiple of the number of replicas).
    seed: integer seed of the reverse-KL sample stream.
    name: model name.
  """

  def __init__(self, distribution: tfd.Distribution, target=None,
               batch_size: int = 256, seed: int = 0,
               name: str = 'flow_model'):
    super().__init__(name=name)
    if not isinstance(distribution, tfd.Distribution):
      raise TypeError(f'distribution must be a tfd.Distribution, got '
                      f'{distribution!r}.')
    if target is not None and not hasattr(target, 'unnormalized_log_prob'):
      raise TypeError('target must have unnormalized_log_prob (e.g. a '
                      f'tfp_ircpm.targets.Target), got {target!r}.')
    self.distribution = distribution
    self.target = target
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self._log_z = (float(target.log_normalizer) if target is not None
                   and hasattr(target, 'log_normalizer') else 0.)
    self._loss_tracker = tf_keras.metrics.Mean(name='loss')
    self._kl_tracker = tf_keras.metrics.Mean(name='kl')
    self._ess_tracker = tf_keras.metrics.Mean(name='ess')
    self._nll_tracker = tf_keras.metrics.Mean(name='nll')
    # Every replica tracks the global batch's figures (its losses gather
    # the other replicas' terms), so Keras must report one replica's value:
    # its default under MultiWorkerMirroredStrategy sums over replicas.
    self.distribute_reduction_method = 'first'
    # Every variable exists once the distribution does: the model is built
    # (BackupAndRestore, for one, builds the optimizer only then, so that
    # its slots restore at once rather than deferred).
    self.built = True

  @property
  def metrics(self):
    # Keras resets these at the start of every epoch and evaluate.
    return [self._loss_tracker, self._kl_tracker, self._ess_tracker,
            self._nll_tracker]

  def call(self, points: tf.Tensor) -> tf.Tensor:
    """log q(points): [batch, *event_shape] → [batch]."""
    return self.distribution.log_prob(points)

  # -- data-free reverse KL ----------------------------------------------------

  def _no_data(self, method: str) -> tf.data.Dataset:
    if self.target is None:
      raise ValueError(f'FlowModel.{method} without data needs a target '
                       '(reverse KL); pass FlowModel(distribution, target) '
                       'or give data points for maximum likelihood.')
    # One dummy element per replica: Keras splits each batch over replicas.
    replicas = self.distribute_strategy.num_replicas_in_sync
    return tf.data.Dataset.from_tensors(tf.zeros([replicas])).repeat()

  def fit(self, x=None, y=None, **kwargs):
    """`tf_keras.Model.fit`; with x=None trains by reverse KL.

    Without data, `steps_per_epoch` is required (the sample stream is
    infinite) and `batch_size` is the constructor's.
    """
    if x is None:
      if kwargs.get('steps_per_epoch') is None:
        raise ValueError('FlowModel.fit without data needs steps_per_epoch.')
      if kwargs.pop('batch_size', None) is not None:
        raise ValueError('Set the reverse-KL batch size in FlowModel(...).')
      x = self._no_data('fit')
    return super().fit(x, y, **kwargs)

  def evaluate(self, x=None, y=None, **kwargs):
    """`tf_keras.Model.evaluate`; with x=None evaluates reverse KL."""
    if x is None:
      if kwargs.get('steps') is None:
        raise ValueError('FlowModel.evaluate without data needs steps.')
      x = self._no_data('evaluate')
    return super().evaluate(x, y, **kwargs)

  def _step_seed(self, stream: int, counter: tf.Tensor) -> tf.Tensor:
    """A stateless seed [2] for step `counter` of sample stream `stream`."""
    return tf.random.experimental.stateless_fold_in(
        tf.constant([self.seed, stream], tf.int32),
        tf.cast(counter, tf.int32))

  def _logs(self, reverse_kl: bool) -> Dict[str, tf.Tensor]:
    trackers = ((self._loss_tracker, self._kl_tracker, self._ess_tracker)
                if reverse_kl else (self._loss_tracker, self._nll_tracker))
    return {m.name: m.result() for m in trackers}

  def _reverse_kl(self, seed) -> tf.Tensor:
    share, log_w = distribute.reverse_kl_loss(
        self.distribution, self.target, self.batch_size, seed)
    loss = -tf.reduce_mean(log_w)
    self._loss_tracker.update_state(loss)
    self._kl_tracker.update_state(loss + tf.cast(self._log_z, loss.dtype))
    self._ess_tracker.update_state(training.ess_from_log_weights(log_w))
    return share

  def _nll(self, data) -> tf.Tensor:
    points, _, _ = tf_keras.utils.unpack_x_y_sample_weight(data)
    share, log_q = distribute.nll_loss(self.distribution, points)
    nll = -tf.reduce_mean(log_q)
    self._loss_tracker.update_state(nll)
    self._nll_tracker.update_state(nll)
    return share

  def _is_no_data(self, data) -> bool:
    return (self.target is not None and isinstance(data, tf.Tensor)
            and data.shape.rank == 1)

  def train_step(self, data) -> Dict[str, tf.Tensor]:
    reverse_kl = self._is_no_data(data)
    with tf.GradientTape() as tape:
      if reverse_kl:
        share = self._reverse_kl(self._step_seed(0, self.optimizer.iterations))
      else:
        share = self._nll(data)
    variables = self.trainable_variables
    grads = tape.gradient(share, variables)
    self.optimizer.apply_gradients(
        [(g, v) for g, v in zip(grads, variables) if g is not None])
    return self._logs(reverse_kl)

  def test_step(self, data) -> Dict[str, tf.Tensor]:
    reverse_kl = self._is_no_data(data)
    if reverse_kl:
      # Keras resets _test_counter at every evaluate: same samples each call.
      self._reverse_kl(self._step_seed(1, self._test_counter))
    else:
      self._nll(data)
    return self._logs(reverse_kl)

  def predict_step(self, data) -> tf.Tensor:
    points, _, _ = tf_keras.utils.unpack_x_y_sample_weight(data)
    return self(points)

  # -- saving ------------------------------------------------------------------

  def save(self, filepath, *args, **kwargs):
    """Raises NotImplementedError: a FlowModel cannot be saved whole.

    Keras would write a SavedModel directory once the model has been called
    (`get_config` raises, so no config goes in), and `load_model` would
    revive it as a generic object whose call still gives log q but that has
    no distribution to sample, no trainable variables and a `fit` that
    fails. `.keras` and `.h5` fail anyway. Nothing is written.
    """
    del filepath, args, kwargs
    raise NotImplementedError(_NO_SAVE)

  def get_config(self):
    raise NotImplementedError(_NO_SAVE)

  def save_weights(self, filepath, overwrite=True, save_format=None,
                   options=None):
    """`tf_keras.Model.save_weights` in the TensorFlow checkpoint format.

    Read the file back with `load_weights` or `tf.train.Checkpoint(model)`
    (the model as the root), not `tf.train.Checkpoint(model=model)`.

    Raises:
      ValueError: for an HDF5 or `.keras` path or save_format='h5'.
    """
    _check_tf_format(filepath, save_format, 'save_weights')
    return super().save_weights(filepath, overwrite=overwrite,
                                save_format=save_format, options=options)

  def load_weights(self, filepath, *args, **kwargs):
    """`tf_keras.Model.load_weights` that never restores nothing silently.

    Returns the checkpoint load status. Values in the file for variables
    the model does not have yet (Adam's moments before its first step) are
    restored when those are created; values for variables it will never
    have (the optimizer's, in a model that is not compiled) are ignored.

    Raises:
      AssertionError: if a variable the model already has (ψ's, the
        metrics', the optimizer's once compiled) got no value from the file:
        a file of another flow, or one written by
        `tf.train.Checkpoint(model=model)`.
      ValueError: for an HDF5 or `.keras` file.
    """
    _check_tf_format(filepath, None, 'load_weights')
    status = super().load_weights(filepath, *args, **kwargs)
    if status is not None:
      status.assert_existing_objects_matched()
    return status


_NO_SAVE = (
    'FlowModel.save() is not supported: the flow (manifold, potential, '
    'bijectors, target) is Python code with no Keras config, and a reloaded '
    'SavedModel could compute log q but neither sample nor train. Save the '
    'weights with model.save_weights(path) or ModelCheckpoint(path, '
    'save_weights_only=True) and restore them with model.load_weights(path) '
    'into a model rebuilt by the same code (or write and read a '
    'tf.train.Checkpoint(model=model)), and export the distribution for '
    'serving with tfp_ircpm.export.save(model.distribution, path).')


def _check_tf_format(filepath, save_format, method: str):
  path = os.fspath(filepath)
  h5 = (path.endswith(('.h5', '.hdf5', '.keras'))
        or str(save_format).lower() in ('h5', 'hdf5', 'keras'))
  if not h5 and os.path.isfile(path):  # A checkpoint is a prefix, no file.
    with open(path, 'rb') as f:
      h5 = f.read(8).startswith((b'\x89HDF\r\n\x1a\n', b'PK\x03\x04'))
  if h5:
    raise ValueError(
        f'FlowModel.{method}: {path!r} is an HDF5 or .keras weights file, '
        'which holds only variables of Keras layers; the flow\'s variables '
        'live in the distribution, not in a layer, so it would hold none of '
        'them. Use a TensorFlow checkpoint path (no .h5/.hdf5/.keras '
        'suffix), e.g. \'ckpt/weights\'.')


class DiffeomorphismCheck(tf_keras.callbacks.Callback):
  """Runs `diagnostics.check_diffeomorphism` on the model's flow.

  The fold policy of every `IRCPM` flags evidence at the points a step
  evaluates; this callback tests the whole manifold on dense uniform points
  every `every` epochs (and at the end of training), so a model that stops
  being a bijection is caught even where no sample or data point lands.

  Args:
    every: epochs between checks.
    num_points: uniform points per check.
    on_failure: 'stop' (set `model.stop_training`) or 'warn'.

  Attributes:
    reports: (epoch, DiffeomorphismReport) for every check run.
  """

  def __init__(self, every: int = 1, num_points: int = 20000,
               on_failure: str = 'stop'):
    super().__init__()
    if on_failure not in ('stop', 'warn'):
      raise ValueError("on_failure must be 'stop' or 'warn'.")
    self.every = int(every)
    self.num_points = int(num_points)
    self.on_failure = on_failure
    self.reports = []
    self._epoch = None

  def _check(self, epoch: int) -> None:
    # Imported here: diagnostics imports the bijectors, which keras.py
    # does not otherwise need.
    from tfp_ircpm import diagnostics  # pylint: disable=g-import-not-at-top
    bijector = getattr(self.model.distribution, 'bijector', None)
    if bijector is None:
      return                                  # a bare base cannot fold
    report = diagnostics.check_diffeomorphism(
        bijector, num_points=self.num_points, seed=epoch)
    self.reports.append((epoch, report))
    if not report.passed:
      print(f'WARNING: epoch {epoch}: {report.summary()}', flush=True)
      if self.on_failure == 'stop':
        self.model.stop_training = True

  def on_epoch_end(self, epoch, logs=None):
    del logs
    self._epoch = epoch
    if (epoch + 1) % self.every == 0:
      self._check(epoch)

  def on_train_end(self, logs=None):
    del logs
    if self._epoch is not None and (not self.reports
                                    or self.reports[-1][0] != self._epoch):
      self._check(self._epoch)


class BackupAndRestore(tf_keras.callbacks.BackupAndRestore):
  """`tf_keras.callbacks.BackupAndRestore` with `tfp_ircpm.backup`'s
  restore policy; the same arguments.

  Keras' own callback, given a truncated backup, raises IndexError ('Read
  less bytes than requested') naming no file; with its state file lost it
  starts afresh; and it restores whatever part of a mismatched backup
  matches. This one raises ValueError naming the file in all three cases,
  before anything is restored.

  Resuming is exact for reverse KL: `FlowModel` seeds each step's samples
  from the optimizer step, which the backup holds. For maximum likelihood
  Keras restarts the interrupted epoch's data from its first batch, so a
  resume repeats that epoch's first batches unless backups are taken at
  epoch ends (`save_freq='epoch'`, the default) of a dataset whose order
  is the same every epoch.
  """

  def on_train_begin(self, logs=None):
    # Keras keeps the chief's copy in backup_dir/chief and reads it there.
    chief = os.path.join(self.backup_dir, 'chief')
    path = backup_lib.latest(chief)
    if path is not None:
      optimizer = self.model.optimizer
      if self.model.built and hasattr(optimizer, 'build'):
        # As Keras does next: the slots then exist and are checked too.
        optimizer.build(self.model.trainable_variables)
      # Check that the model and optimizer restore in full before Keras
      # restores (it does not check); Keras then reads the same values
      # and its epoch and batch counters.
      backup_lib.restore(tf.train.Checkpoint(model=self.model), path)
    try:
      super().on_train_begin(logs)
    except Exception as e:  # pylint: disable=broad-except
      raise backup_lib.restore_error(path or chief, e) from e
