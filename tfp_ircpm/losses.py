"""The training objectives: reverse KL to an energy, and maximum likelihood.

* `reverse_kl_loss`: Eq. 9, KL(q‖p) up to log Z, for a target known up to
  its normaliser (Boltzmann generators): mean(log q(y) + u(y)), y ~ q.
* `nll_loss`: forward KL / maximum likelihood on data: −mean log q(x). It
  runs only the closed-form inverse and its log-det, never a solve.

Both select the log-det estimator (`estimator='exact'|'stochastic'|'auto'`,
see `tfp_ircpm.logdet`): the stochastic one, for IRCPM flows on
high-dimensional manifolds, gives an unbiased gradient but leaves the
log-det out of the value.

Both are replica-aware. Under a `tf.distribute` strategy each replica
computes its slice of the single-device global batch (for the reverse KL,
the cheap base sample is drawn for the whole batch from the stateless seed
and sliced; only the slice goes through the flow) and returns its *share*
of the global mean, Σ_local ℓ / B, because optimizers sum gradients over
replicas. With one replica the share is the mean. `tfp_ircpm.distribute`
adds the all-gathered batch for metrics.
"""

from typing import Optional, Tuple

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import flows
from tfp_ircpm import logdet as logdet_lib

tfd = tfp.distributions


def replica_info() -> Tuple[tf.Tensor, int]:
  """(replica id [] int32, number of replicas); (0, 1) outside replicas."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None:
    return tf.constant(0), 1
  return (tf.cast(ctx.replica_id_in_sync_group, tf.int32),
          ctx.num_replicas_in_sync)


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


def sample_and_log_prob(q: tfd.Distribution, global_batch_size: int, seed,
                        estimator: str = 'exact', num_probes: int = 1
                        ) -> Tuple[tf.Tensor, tf.Tensor]:
  """This replica's slice of a global sample of q and its log-density.

  Args:
    q: the flow (or any distribution: then each replica samples its share
      with the seed folded by replica id, and the draw depends on the
      replica count).
    global_batch_size: B, a multiple of the number of replicas.
    seed: a stateless seed, [2] int32.
    estimator: 'exact' or 'stochastic' log-dets (already resolved).
    num_probes: Hutchinson probes per point and layer (stochastic only).

  Returns:
    (points [B/R, *event_shape], log_prob [B/R]); with no strategy exactly
    `q.experimental_sample_and_log_prob(B, seed)`.
  """
  n = local_batch_size(global_batch_size)
  replica_id, replicas = replica_info()
  if estimator == 'stochastic':
    if replicas > 1:
      seed = tf.random.experimental.stateless_fold_in(seed, replica_id)
    return logdet_lib.sample_and_log_prob(q, n, seed, 'stochastic',
                                          num_probes)
  if not flows.is_transformed(q):
    if replicas > 1:
      seed = tf.random.experimental.stateless_fold_in(seed, replica_id)
    return q.experimental_sample_and_log_prob(n, seed=seed)
  if not tf.distribute.has_strategy() and replicas == 1:
    return q.experimental_sample_and_log_prob(n, seed=seed)
  x = q.distribution.sample(global_batch_size, seed=seed)
  if replicas > 1:
    x = x[replica_id * n:(replica_id + 1) * n]
  y = q.bijector.forward(x)
  # The bijector cache maps y back to x, so this runs no extra inverse.
  return y, q.log_prob(y)


def reverse_kl_loss(q: tfd.Distribution, target, batch_size: int,
                    seed=None, estimator: str = 'auto', num_probes: int = 1,
                    return_log_weights: bool = False, logdet: Optional[str]
                    = None):
  """mean_{y~q}[log q(y) − log p̃(y)] = KL(q‖p) − log Z (Eq. 9).

  Args:
    q: the flow.
    target: anything with `unnormalized_log_prob` (a `targets.Target`).
    batch_size: the global number of samples B.
    seed: stateless seed [2] (None: seed 0).
    estimator: 'exact', 'stochastic' or 'auto' (`logdet.uses_stochastic`).
    num_probes: Hutchinson probes (stochastic only).
    return_log_weights: also return log w = log p̃ − log q over the global
      batch [B] (all-gathered from the replicas).
    logdet: the former name of `estimator`.

  Returns:
    This replica's share of the loss (the loss itself with one replica),
    and the log-weights if asked.
  """
  if logdet is not None:
    estimator = logdet
  stochastic = logdet_lib.uses_stochastic(q, estimator)
  seed = seed if seed is not None else (0, 0)
  y, log_q = sample_and_log_prob(q, batch_size, seed,
                                 'stochastic' if stochastic else 'exact',
                                 num_probes)
  log_w = tf.cast(target.unnormalized_log_prob(y), log_q.dtype) - log_q
  share = -tf.reduce_sum(log_w) / tf.cast(batch_size, log_w.dtype)
  if return_log_weights:
    return share, gather(log_w)
  return share


def nll_loss(q: tfd.Distribution, data: tf.Tensor, estimator: str = 'exact',
             seed=None, num_probes: int = 1,
             return_log_prob: bool = False):
  """−mean log q(x) over this replica's data points [n, ambient_dim].

  Args:
    q: the flow.
    data: points [n, *event_shape] (replicas may hold different n, e.g. the
      last batch of an epoch).
    estimator: 'exact' (`q.log_prob`), 'stochastic'
      (`logdet.log_prob_surrogate`: value log base(f⁻¹(x)), unbiased
      gradient) or 'auto'.
    seed, num_probes: of the stochastic probes.
    return_log_prob: also return log q over the global batch.

  Returns:
    −Σ_local log q / N with N the global count (the mean with one replica),
    and the gathered log q if asked.
  """
  if logdet_lib.uses_stochastic(q, estimator):
    log_q = logdet_lib.log_prob_surrogate(q, data, seed, num_probes)
  else:
    log_q = q.log_prob(data)
  gathered = gather(log_q)
  total = tf.cast(tf.shape(gathered)[0], log_q.dtype)
  share = -tf.reduce_sum(log_q) / total
  if return_log_prob:
    return share, gathered
  return share
