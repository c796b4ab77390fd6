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
"""

from typing import Tuple

import tensorflow as tf
import tensorflow_probability as tfp

tfb = tfp.bijectors
tfd = tfp.distributions


def replica_info() -> Tuple[tf.Tensor, int]:
  """(replica id [] int32, number of replicas) in the current context."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None:
    raise RuntimeError('Call this in a replica context (inside strategy.run '
                       'or a Keras train_step), not in cross-replica context.')
  replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
  return replica_id, ctx.num_replicas_in_sync


def gather(x: tf.Tensor) -> tf.Tensor:
  """Concatenates x [n, ...] over replicas along axis 0 (identity for one)."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return x
  return ctx.all_gather(x, axis=0)


def local_batch_size(global_batch_size: int) -> int:
  """B / R; raises unless the global batch splits evenly over replicas."""
  _, replicas = replica_info()
  if global_batch_size % replicas:
    raise ValueError(f'The global batch size {global_batch_size} must be a '
                     f'multiple of the number of replicas ({replicas}).')
  return global_batch_size // replicas


def sample_and_log_prob(distribution: tfd.Distribution,
                        global_batch_size: int,
                        seed) -> Tuple[tf.Tensor, tf.Tensor]:
  """This replica's slice of a global sample and its log-density.

  Args:
    distribution: a `tfd.TransformedDistribution` (for other distributions
      each replica samples its share with the seed folded by replica id, so
      the draw depends on the replica count).
    global_batch_size: B, a multiple of the number of replicas.
    seed: a stateless seed, [2] int32.

  Returns:
    (points [B/R, *event_shape], log_prob [B/R]); with one replica exactly
    `distribution.experimental_sample_and_log_prob(B, seed)`'s draw.
  """
  n = local_batch_size(global_batch_size)
  replica_id, replicas = replica_info()
  if not _is_transformed(distribution):
    if replicas > 1:
      seed = tf.random.experimental.stateless_fold_in(seed, replica_id)
    return distribution.experimental_sample_and_log_prob(n, seed=seed)
  x = distribution.distribution.sample(global_batch_size, seed=seed)
  if replicas > 1:
    x = x[replica_id * n:(replica_id + 1) * n]
  y = distribution.bijector.forward(x)
  # The bijector cache maps y back to x, so this runs no extra inverse.
  return y, distribution.log_prob(y)


def _is_transformed(distribution) -> bool:
  # tfd.TransformedDistribution(...) returns instances of a private base
  # class (`_TransformedDistribution`) when the bijector is not a
  # CompositeTensor, so isinstance(tfd.TransformedDistribution) is False.
  return (isinstance(getattr(distribution, 'bijector', None), tfb.Bijector)
          and isinstance(getattr(distribution, 'distribution', None),
                         tfd.Distribution))


def reverse_kl_loss(distribution: tfd.Distribution, target,
                    global_batch_size: int, seed
                    ) -> Tuple[tf.Tensor, tf.Tensor]:
  """This replica's share of Eq. 9 and the global batch's log-weights.

  Returns:
    (Σ_local (log q − log p̃) / B, a scalar whose sum over replicas is the
    single-device loss; log w = log p̃ − log q over the global batch [B],
    gathered from all replicas).
  """
  y, log_q = sample_and_log_prob(distribution, global_batch_size, seed)
  log_w = tf.cast(target.unnormalized_log_prob(y), log_q.dtype) - log_q
  share = -tf.reduce_sum(log_w) / tf.cast(global_batch_size, log_w.dtype)
  return share, gather(log_w)


def nll_loss(distribution: tfd.Distribution,
             points: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """This replica's share of −mean log q over the global batch of data.

  Args:
    points: this replica's data [n, *event_shape] (replicas may hold
      different n, e.g. the last batch of an epoch).

  Returns:
    (−Σ_local log q / N, N the global count; log q over the global batch).
  """
  log_q = distribution.log_prob(points)
  gathered = gather(log_q)
  total = tf.cast(tf.shape(gathered)[0], log_q.dtype)
  return -tf.reduce_sum(log_q) / total, gathered
