"""Replica-aware sampling and losses for `tf.distribute` strategies.

Under a `tf.distribute.Strategy` every replica runs the same step function.
A global batch of B samples is split so that replica r of R computes the
samples [r·B/R, (r+1)·B/R) of the *same* global draw a single device would
make with that seed: the (cheap) base sample is drawn for the whole global
batch from the stateless seed and sliced, and only the replica's slice goes
through the (expensive) flow. Losses are returned as the replica's share of
the global mean, Σ_local ℓ / B, because optimizers sum gradients over
replicas; metrics are computed on the all-gathered global batch. Hence a
MirroredStrategy run over R devices follows the single-device trajectory up
to float round-off (summation order of the all-reduce), and the same code
runs under `MultiWorkerMirroredStrategy` on a cluster.

Cluster helpers: `role(strategy)` says which task this process is, and
`backup_directory` is where it writes its backups (the chief's directory,
or a per-worker scratch directory: under `MultiWorkerMirroredStrategy`
every worker takes part in a save, but only the chief's copy is kept).
`tfp_ircpm.training.train(..., backup_dir=...)` follows it;
`tf_keras.callbacks.BackupAndRestore` has the same rule under its own names
(`backup_dir/chief`, `backup_dir/workertemp_<id>`).
"""

import contextlib
import json
import os
import socket
from typing import List, NamedTuple, Tuple

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import losses

tfd = tfp.distributions

# The replica arithmetic lives in `losses`; these are its names here.
replica_info = losses.replica_info
gather = losses.gather
local_batch_size = losses.local_batch_size


class Role(NamedTuple):
  """This process's place in the cluster (`role`)."""
  task_type: str       # 'worker', 'chief', … ('local' without a cluster)
  task_id: int
  num_workers: int     # processes that hold replicas
  num_replicas: int    # replicas in sync over the whole cluster
  is_chief: bool       # writes backups, checkpoints and summaries

  def __str__(self) -> str:
    return (f'{self.task_type} {self.task_id} of {self.num_workers} '
            f'worker(s), {self.num_replicas} replica(s)'
            + (', chief' if self.is_chief else ''))


def role(strategy: tf.distribute.Strategy = None) -> Role:
  """The task of this process under `strategy` (default: the current one),
  read from its cluster resolver (`TF_CONFIG` for
  `MultiWorkerMirroredStrategy`)."""
  strategy = strategy or tf.distribute.get_strategy()
  resolver = getattr(strategy, 'cluster_resolver', None)
  spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
  replicas = strategy.num_replicas_in_sync
  if not spec:
    return Role('local', 0, 1, replicas, True)
  workers = sum(len(spec.get(t, ())) for t in ('chief', 'worker'))
  return Role(resolver.task_type, int(resolver.task_id or 0), workers,
              replicas, bool(strategy.extended.should_checkpoint))


def local_tf_configs(num_workers: int) -> List[str]:
  """`TF_CONFIG` values for a cluster of `num_workers` processes on this
  machine (free ports on 127.0.0.1; worker 0 is the chief). For trying a
  multi-worker job before a cluster manager writes the real ones."""
  with contextlib.ExitStack() as stack:
    socks = [stack.enter_context(socket.socket()) for _ in range(num_workers)]
    for s in socks:
      s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in socks]
  cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
  return [json.dumps({'cluster': cluster,
                      'task': {'type': 'worker', 'index': i}})
          for i in range(num_workers)]


def backup_directory(directory: str,
                     strategy: tf.distribute.Strategy = None) -> str:
  """`directory` for the chief, `directory/worker-<id>` for the others."""
  r = role(strategy)
  if r.is_chief:
    return directory
  return os.path.join(directory, f'{r.task_type}-{r.task_id}')


def sample_and_log_prob(distribution: tfd.Distribution,
                        global_batch_size: int,
                        seed) -> Tuple[tf.Tensor, tf.Tensor]:
  """This replica's slice of a global sample and its log-density
  (`losses.sample_and_log_prob` with exact log-dets)."""
  return losses.sample_and_log_prob(distribution, global_batch_size, seed)


def reverse_kl_loss(distribution: tfd.Distribution, target,
                    global_batch_size: int, seed, estimator: str = 'exact'
                    ) -> Tuple[tf.Tensor, tf.Tensor]:
  """This replica's share of Eq. 9 and the global batch's log-weights.

  Returns:
    (Σ_local (log q − log p̃) / B, a scalar whose sum over replicas is the
    single-device loss; log w = log p̃ − log q over the global batch [B],
    gathered from all replicas).
  """
  return losses.reverse_kl_loss(distribution, target, global_batch_size,
                                seed, estimator=estimator,
                                return_log_weights=True)


def nll_loss(distribution: tfd.Distribution,
             points: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """This replica's share of −mean log q over the global batch of data.

  Returns:
    (−Σ_local log q / N, N the global count; log q over the global batch).
  """
  return losses.nll_loss(distribution, points, return_log_prob=True)
