"""Losses, metrics and a plain custom training loop.

* `reverse_kl_loss`: Eq. 9, KL(q‖p) up to log Z, for a target known up to
  its normaliser (Boltzmann generators): mean(log q(y) + u(y)), y ~ q.
* `nll_loss`: forward KL / maximum likelihood for data: -mean log q(x). It
  runs only the closed-form inverse and its log-det, never a solve.
* `evaluate`: ESS and KL exactly as the paper and RCPM define them, on N
  samples from q: w = p̃/q, ESS = (Σw)²/Σw²/N, KL = mean(log q − log p̃) +
  log Z.
* `train`: a `tf.function` Adam step in a Python loop with progress output.
"""

import time
from typing import Callable, Dict, List, Optional

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_ircpm import logdet as logdet_lib

tfd = tfp.distributions


def reverse_kl_loss(q: tfd.Distribution, target, batch_size: int,
                    seed=None, logdet: str = 'auto') -> tf.Tensor:
  """mean_{y~q}[log q(y) − log p̃(y)] = KL(q‖p) − log Z (Eq. 9).

  `logdet`: 'exact', 'stochastic' or 'auto' (see `tfp_ircpm.logdet`: the
  stochastic estimator, for IRCPM flows on high-dimensional tori, gives an
  unbiased gradient but leaves the log-det out of the value).
  """
  if logdet_lib.uses_stochastic(q, logdet):
    return logdet_lib.reverse_kl_loss(q, target, batch_size, seed=seed,
                                      estimator='stochastic')
  y, log_q = q.experimental_sample_and_log_prob(batch_size, seed=seed)
  return tf.reduce_mean(log_q - tf.cast(target.unnormalized_log_prob(y),
                                        log_q.dtype))


def nll_loss(q: tfd.Distribution, data: tf.Tensor) -> tf.Tensor:
  """-mean log q(x) over data points [N, ambient_dim]."""
  return -tf.reduce_mean(q.log_prob(data))


def ess_from_log_weights(log_w: tf.Tensor) -> tf.Tensor:
  """(Σw)²/Σw²/N, computed stably from log-weights [N] (float64)."""
  log_w = tf.cast(log_w, tf.float64)
  n = tf.cast(tf.size(log_w), tf.float64)
  return tf.exp(2. * tf.reduce_logsumexp(log_w)
                - tf.reduce_logsumexp(2. * log_w)) / n


def evaluate(q: tfd.Distribution, target, num_samples: int = 20000,
             seed=None, batch_size: int = 5000) -> Dict[str, float]:
  """ESS (fraction in (0, 1]) and KL(q‖p) in nats on `num_samples` samples.

  KL adds the target's quadrature log-normaliser, so it is an absolute
  estimate; ESS is invariant to it. Samples are drawn in batches.
  """
  seeds = tfp.random.split_seed(seed if seed is not None else 0,
                                n=-(-num_samples // batch_size))
  log_ws = []
  done = 0
  for s in tf.unstack(seeds):
    n = min(batch_size, num_samples - done)
    y, log_q = q.experimental_sample_and_log_prob(n, seed=s)
    log_p = tf.cast(target.unnormalized_log_prob(y), tf.float64)
    log_ws.append(log_p - tf.cast(log_q, tf.float64))
    done += n
  log_w = tf.concat(log_ws, 0)
  finite = tf.reduce_all(tf.math.is_finite(log_w))
  return dict(
      ess=float(ess_from_log_weights(log_w)) if finite else float('nan'),
      kl=float(-tf.reduce_mean(log_w)) + target.log_normalizer,
      num_samples=int(num_samples))


def train(loss_fn: Callable[[tf.Tensor], tf.Tensor],
          variables: List[tf.Variable],
          steps: int,
          learning_rate: float = 1e-3,
          optimizer: Optional[tf_keras.optimizers.Optimizer] = None,
          seed: int = 0,
          log_every: int = 100,
          jit_compile: bool = False,
          callback: Optional[Callable[[int, float], Optional[bool]]] = None,
          ) -> List[float]:
  """Minimises loss_fn(seed) over `variables` with Adam; returns the losses.

  Args:
    loss_fn: maps a stateless seed (shape [2] int32 tensor) to a scalar loss.
    variables: the trainable variables (e.g. `q.trainable_variables`).
    steps: number of optimisation steps.
    learning_rate: Adam's learning rate, used when `optimizer` is None.
    optimizer: a `tf_keras` optimizer.
    seed: integer seed; step i uses the i-th split of it.
    log_every: print a progress line every this many steps (0: never).
    jit_compile: compile the step with XLA.
    callback: called as callback(step, loss) after each step; training
      stops early when it returns True (e.g. a `DiffeomorphismMonitor`).
  """
  optimizer = optimizer or tf_keras.optimizers.Adam(learning_rate)

  @tf.function(jit_compile=jit_compile)
  def step(s):
    with tf.GradientTape() as tape:
      loss = loss_fn(s)
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(
        [(g, v) for g, v in zip(grads, variables) if g is not None])
    return loss

  seeds = tfp.random.split_seed(seed, n=steps)
  losses = []
  start = time.time()
  for i in range(steps):
    loss = float(step(seeds[i]))
    losses.append(loss)
    stop = callback is not None and callback(i, loss)
    if log_every and (i % log_every == 0 or i == steps - 1):
      print(f'step {i:5d}  loss {loss:.5f}  {time.time() - start:7.1f}s',
            flush=True)
    if stop:
      print(f'stopped at step {i} by the callback', flush=True)
      break
  return losses


class DiffeomorphismMonitor:
  """A `train` callback that runs `diagnostics.check_diffeomorphism` every
  `every` steps and warns or stops when the model stops being a bijection.

  Attributes:
    reports: (step, DiffeomorphismReport) for every check run.
  """

  def __init__(self, bijector, every: int = 100, num_points: int = 20000,
               on_failure: str = 'stop', dtype=tf.float32):
    if on_failure not in ('stop', 'warn'):
      raise ValueError("on_failure must be 'stop' or 'warn'.")
    self.bijector = bijector
    self.every = int(every)
    self.num_points = int(num_points)
    self.on_failure = on_failure
    self.dtype = dtype
    self.reports = []

  def __call__(self, step: int, loss: float) -> bool:
    del loss
    if step % self.every:
      return False
    from tfp_ircpm import diagnostics  # pylint: disable=g-import-not-at-top
    report = diagnostics.check_diffeomorphism(
        self.bijector, num_points=self.num_points, dtype=self.dtype,
        seed=step)
    self.reports.append((step, report))
    if report.passed:
      return False
    print(f'WARNING: step {step}: {report.summary()}', flush=True)
    return self.on_failure == 'stop'


def fit_reverse_kl(q: tfd.Distribution, target, steps: int,
                   batch_size: int = 256, learning_rate: float = 1e-3,
                   decay: bool = True, seed: int = 0, log_every: int = 100,
                   jit_compile: bool = False) -> List[float]:
  """Trains q toward target by reverse KL (Eq. 9) with Adam.

  With `decay`, the learning rate follows a cosine decay to 0 over `steps`,
  which removes the stochastic-gradient noise floor at the end of training.
  """
  lr = learning_rate
  if decay:
    lr = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps)
  return train(lambda s: reverse_kl_loss(q, target, batch_size, seed=s),
               q.trainable_variables, steps,
               optimizer=tf_keras.optimizers.Adam(lr), seed=seed,
               log_every=log_every, jit_compile=jit_compile)


def fit_and_evaluate(q: tfd.Distribution, target, steps: int,
                     batch_size: int = 256, learning_rate: float = 1e-3,
                     seed: int = 0, eval_samples: int = 20000,
                     log_every: int = 250) -> Dict:
  """`fit_reverse_kl`, timed, then `evaluate` on `eval_samples` samples.

  Returns a dict with the losses, the training wall time in seconds, and
  ESS (fraction) and KL (nats).
  """
  start = time.time()
  losses = fit_reverse_kl(q, target, steps, batch_size=batch_size,
                          learning_rate=learning_rate, seed=seed,
                          log_every=log_every)
  seconds = time.time() - start
  metrics = evaluate(q, target, eval_samples, seed=(seed, 99))
  return dict(losses=losses, seconds=seconds, ess=metrics['ess'],
              kl=metrics['kl'])


def markdown_table(rows: List[Dict], columns: List[str]) -> str:
  """A markdown table of dict rows over the given columns."""
  def fmt(v):
    return f'{v:.4g}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |',
           '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in columns) + ' |'
            for r in rows]
  return '\n'.join(lines)
