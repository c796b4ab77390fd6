"""Training loops and the monitors that watch them.

* `train`: a `tf.function` optimizer step in a Python loop, with progress
  output, callbacks and an optional `tf.distribute` strategy.
* `fit_reverse_kl` (Eq. 9 to a target energy) and `fit_nll` (maximum
  likelihood with validation model selection) built on it.
* `DiffeomorphismMonitor` and `ValidationMonitor`: callbacks that stop
  training when the model stops being a bijection.

The objectives are in `losses`, the quality measures in `metrics`; their
names are re-exported here for code written against this module.
"""

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_ircpm import backup as backup_lib
from tfp_ircpm import flows
from tfp_ircpm import losses
from tfp_ircpm import metrics
from tfp_ircpm.manifolds import base as base_lib

tfd = tfp.distributions

reverse_kl_loss = losses.reverse_kl_loss
nll_loss = losses.nll_loss
ess_from_log_weights = metrics.ess_from_log_weights
bridge_log_normalizer = metrics.bridge_log_normalizer
evaluate = metrics.evaluate
batched_nll = metrics.batched_nll


NONFINITE_POLICIES = ('raise', 'skip')


def _build_optimizer(optimizer, variables) -> None:
  """Creates the optimizer's slots for `variables` now (new and legacy
  tf_keras optimizers)."""
  if hasattr(optimizer, 'build'):
    optimizer.build(variables)
  else:
    optimizer._create_all_weights(variables)  # pylint: disable=protected-access


def train(loss_fn: Callable[..., tf.Tensor],
          variables: List[tf.Variable],
          steps: int,
          learning_rate: float = 1e-3,
          optimizer: Optional[tf_keras.optimizers.Optimizer] = None,
          seed: int = 0,
          log_every: int = 100,
          jit_compile: bool = False,
          callback: Optional[Callable[[int, float], Optional[bool]]] = None,
          strategy: Optional[tf.distribute.Strategy] = None,
          data: Optional[tf.data.Dataset] = None,
          backup_dir: Optional[str] = None,
          backup_every: int = 100,
          nonfinite: str = 'raise',
          ) -> List[float]:
  """Minimises loss_fn over `variables` with Adam; returns the losses.

  Args:
    loss_fn: maps a stateless seed (shape [2] int32 tensor) to a scalar
      loss; with `data`, loss_fn(seed, batch).
    variables: the trainable variables (e.g. `q.trainable_variables`).
    steps: the total number of optimisation steps.
    learning_rate: Adam's learning rate, used when `optimizer` is None.
    optimizer: a `tf_keras` optimizer.
    seed: integer seed; step i uses the i-th split of it.
    log_every: print a progress line every this many steps (0: never).
    jit_compile: compile the step with XLA.
    callback: called as callback(step, loss) after each step; training
      stops early when it returns True (e.g. a `DiffeomorphismMonitor`).
    strategy: a `tf.distribute.Strategy` whose scope created the variables
      (and the optimizer, if given). Each step then runs `loss_fn` on every
      replica, which must return that replica's share of the loss (see
      `tfp_ircpm.distribute.reverse_kl_loss`); the optimizer sums the
      gradients over replicas and the reported loss is the sum of shares.
    data: a `tf.data.Dataset` of global batches, at least `steps` of them
      (`.repeat()`). Under a strategy it goes through
      `strategy.experimental_distribute_dataset`, which shards it over the
      workers (each reads its own part of every global batch) and splits
      each worker's part over its replicas.
    backup_dir: where to keep step-level backups for fault tolerance (a
      directory every worker can read, e.g. on a shared file system).
      Every `backup_every` steps, and after the last step, the step count,
      `variables`, the optimizer's state and the losses so far are saved
      (`tf.train.CheckpointManager`, which moves a backup into place only
      once it is complete). A call that finds a backup restores it and runs
      only the remaining steps: step i always uses seed split i, and with
      `data` the batches of the restored steps are skipped, so a job killed
      and restarted with the same arguments ends with the weights of an
      uninterrupted run (with `data`, provided the dataset's order is
      deterministic, e.g. a seeded shuffle). Under a multi-worker strategy
      every worker saves (a save may read variables that are synchronised
      across workers), the chief into
      `backup_dir`, the others into `backup_dir/worker-<id>`; all restore
      the chief's. An unreadable or mismatched backup raises ValueError
      naming its file (`tfp_ircpm.backup`). Callbacks see only the steps
      run in this call.
    backup_every: steps between backups.
    nonfinite: what a step whose loss or gradients are not finite does (a
      failed solve or a fold gives NaN under the default policies, and
      under XLA always). Its update is never applied: one NaN gradient
      would turn every variable NaN through the optimizer's moments.
      'raise' (default): raise `FloatingPointError` naming the step, the
      variables and the optimizer as they were before it. 'skip': record
      the loss (NaN) and go on with the next seed.
      Without a strategy the step is dropped whole, optimizer state
      included. Under a strategy the optimizer applies zero gradients
      instead (the replicas' updates cannot be made conditional), so its
      moments still move the variables once, by a finite amount.

  Returns:
    The losses of steps 0 … steps − 1 (with a backup: the restored ones,
    then this call's), shorter if the callback stopped training.
  """
  if nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f'nonfinite must be one of {NONFINITE_POLICIES}, got '
                     f'{nonfinite!r}.')
  if strategy is not None and jit_compile:
    raise ValueError('jit_compile is not supported with a strategy here: '
                     'compile the replica step instead.')
  if backup_dir is not None and int(backup_every) < 1:
    raise ValueError(f'backup_every must be >= 1, got {backup_every}.')
  scope_strategy = strategy or tf.distribute.get_strategy()
  if optimizer is None:
    with scope_strategy.scope():
      optimizer = tf_keras.optimizers.Adam(learning_rate)

  if strategy is None:
    # Slots exist before the first trace, so the conditional update below
    # creates no variables inside a branch.
    _build_optimizer(optimizer, variables)

  def replica_step(s, *batch):
    with tf.GradientTape() as tape:
      loss = loss_fn(s, *batch)
    grads = tape.gradient(loss, variables)
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    finite = tf.math.is_finite(loss)
    for g, _ in pairs:
      # Sparse gradients (embedding lookups in a Keras ψ) carry `values`.
      values = g.values if isinstance(g, tf.IndexedSlices) else g
      finite &= tf.reduce_all(tf.math.is_finite(values))
    if strategy is None:
      def update():
        optimizer.apply_gradients(pairs)
        return tf.constant(True)
      tf.cond(finite, update, lambda: tf.constant(False))
      return loss
    # merge_call (the optimizer's all-reduce) cannot run in a branch: zero
    # gradients everywhere when any replica's are not finite.
    ctx = tf.distribute.get_replica_context()
    finite = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                            tf.cast(~finite, tf.float32)) == 0.
    dense = [(tf.convert_to_tensor(g), v) for g, v in pairs]
    optimizer.apply_gradients(
        [(tf.where(finite, g, tf.zeros_like(g)), v) for g, v in dense])
    return loss

  @tf.function(jit_compile=jit_compile)
  def step(s, *batch):
    if strategy is None:
      return replica_step(s, *batch)
    return strategy.reduce(tf.distribute.ReduceOp.SUM,
                           strategy.run(replica_step, args=(s,) + batch),
                           axis=None)

  losses = []
  backup = None
  if backup_dir is not None:
    backup = backup_lib.Backup(backup_dir, scope_strategy, variables,
                               optimizer, steps)
    losses = backup.restore()
  start_step = len(losses)
  batches = None
  if data is not None:
    data = data.skip(start_step)
    batches = iter(strategy.experimental_distribute_dataset(data)
                   if strategy is not None else data)
  seeds = tfp.random.split_seed(seed, n=steps)
  start = time.time()
  for i in range(start_step, steps):
    try:
      batch = () if batches is None else (next(batches),)
    except StopIteration:
      raise ValueError(f'data ran out after {i} steps of {steps}: give at '
                       'least `steps` batches (e.g. dataset.repeat()).'
                       ) from None
    loss = float(step(seeds[i], *batch))
    losses.append(loss)
    if not math.isfinite(loss) and nonfinite == 'raise':
      raise FloatingPointError(
          f'step {i}: the loss is {loss}; its update was not applied. A '
          'sample\'s solve failed or the flow folded (NaN under the default '
          'policies and under XLA): lower the learning rate or ψ\'s output '
          'scale, add a λ_min guard (logdet.min_eigenvalue_penalty), or pass '
          "nonfinite='skip' to go on without the step.")
    stop = callback is not None and callback(i, loss)
    if log_every and (i % log_every == 0 or i == steps - 1):
      print(f'step {i:5d}  loss {loss:.5f}  {time.time() - start:7.1f}s',
            flush=True)
    if backup is not None and (len(losses) % int(backup_every) == 0
                               or i == steps - 1):
      backup.save(losses)
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
                   jit_compile: bool = False, nonfinite: str = 'raise'
                   ) -> List[float]:
  """Trains q toward target by reverse KL (Eq. 9) with Adam.

  With `decay`, the learning rate follows a cosine decay to 0 over `steps`,
  which removes the stochastic-gradient noise floor at the end of training.
  `nonfinite` is `train`'s: a NaN step raises, or is skipped.
  """
  lr = learning_rate
  if decay:
    lr = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps)
  return train(lambda s: reverse_kl_loss(q, target, batch_size, seed=s),
               q.trainable_variables, steps,
               optimizer=tf_keras.optimizers.Adam(lr), seed=seed,
               log_every=log_every, jit_compile=jit_compile,
               nonfinite=nonfinite)


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


def min_inverse_det(bijector, num_points: int = 4096, points=None,
                    dtype=tf.float32, seed: int = 0) -> float:
  """min det J_{f⁻¹} over every IRCPM link, at uniform (and given) points.

  The solve-free part of `diagnostics.check_diffeomorphism`: det > 0
  everywhere makes each f⁻¹ = exp(grad ψ) a diffeomorphism (degree
  argument), so training can watch validity without running a solve.
  """
  worst = float('inf')
  for k, link in enumerate(flows.distinct(flows.bijector_layers(bijector))):
    x = link.manifold.uniform(dtype).sample(num_points, seed=(seed, k))
    if points is not None:
      x = tf.concat([x, tf.cast(points, dtype)], 0)
    worst = min(worst, float(tf.reduce_min(
        link.inverse_jacobian_determinant(x))))
  return worst


class ValidationMonitor:
  """A `train` callback for maximum likelihood: model selection on a
  validation set, early stopping, and a solve-free validity guard.

  Every `every` steps it computes the validation NLL and, with
  `validity_points > 0`, `min_inverse_det` of the model's bijector on that
  many uniform points plus the validation points. A checkpoint is eligible
  only while det J_{f⁻¹} > 0 (otherwise f⁻¹ folds, ∫q > 1, and its
  likelihood is meaningless); a fold stops training. Training also stops
  after `patience` evaluations without a better eligible validation NLL
  (for folded checks, see below).
  With `stop_on_fold=False` a folded check is only ineligible (a fold
  barrier in the loss may undo it); it counts towards the patience unless
  its validation NLL is the best seen at any check. Early stopping asks
  whether training still learns, and a run whose checks keep folding while
  validation keeps improving is still learning: counting those checks
  stopped a Volcano fit at step 551 of 2 000, its eligible best at step
  150, while validation had improved at every check. Such a run ends on
  its step or time budget instead, with its eligible best.
  `keep` > 1 also keeps the runners-up (`candidates`, `restore_candidate`),
  for a caller whose final, more thorough check may reject the best.
  `fold_probe(step)`, if given, returns a further min det J_{f⁻¹} (e.g. a
  search where folds are likely, `diagnostics.search_min_det`) that joins
  the eligibility test.
  `restore_best()` puts the best eligible variables back.

  Attributes:
    history: dicts (step, train_loss, validation_nll, min_det) per check.
    best_step, best_validation: the selected checkpoint.
  """

  def __init__(self, q: tfd.Distribution, validation, every: int = 50,
               patience: int = 10, validity_points: int = 4096,
               batch_size: int = 4096,
               variables: Optional[List[tf.Variable]] = None,
               stop_on_fold: bool = True, keep: int = 1,
               fold_probe: Optional[Callable[[int], float]] = None):
    self.q = q
    self.fold_probe = fold_probe
    self.validation = tf.convert_to_tensor(validation, q.dtype)
    self.every = int(every)
    self.patience = int(patience)
    self.validity_points = int(validity_points)
    self.batch_size = int(batch_size)
    self.variables = list(variables or q.trainable_variables)
    self.history = []
    self._last_decision = False
    self.best_step = None
    self.best_validation = float('inf')
    self._best_values = None
    self._since_best = 0
    self.folded = False
    self.stop_on_fold = bool(stop_on_fold)
    self.keep = max(1, int(keep))
    self.candidates = []   # the `keep` best eligible: (nll, step, values)

  def evaluate(self, step: int, loss: float) -> Dict:
    """Validation NLL and (optionally) min det J_{f⁻¹} now."""
    record = dict(step=step, train_loss=loss,
                  validation_nll=batched_nll(self.q, self.validation,
                                             self.batch_size))
    # A bare base distribution (no bijector) has no map that could fold.
    if self.validity_points and flows.is_transformed(self.q):
      record['min_det'] = min_inverse_det(
          self.q.bijector, self.validity_points, self.validation,
          dtype=self.q.dtype, seed=step)
    if self.fold_probe is not None:
      record['min_det'] = min(record.get('min_det', float('inf')),
                              float(self.fold_probe(step)))
    return record

  def consider_initial(self) -> None:
    """Records the weights before training as a candidate, at step -1.

    Model selection then never returns something worse on validation than
    the starting point, e.g. a fitted base with flows started at the
    identity. A fold there only makes the start ineligible.
    """
    record = self.evaluate(-1, None)
    self.history.append(record)
    if record.get('min_det', 1.) > 0.:
      self._take_best(-1, record)
      self._consider_candidate(-1, record)

  def _take_best(self, step: int, record: Dict) -> None:
    self.best_validation = record['validation_nll']
    self.best_step = step
    self._best_values = [v.numpy() for v in self.variables]

  def _consider_candidate(self, step: int, record: Dict) -> None:
    nll = record['validation_nll']
    if len(self.candidates) == self.keep and nll >= self.candidates[-1][0]:
      return
    values = (self._best_values if step == self.best_step
              else [v.numpy() for v in self.variables])
    self.candidates.append((nll, step, values))
    self.candidates.sort(key=lambda c: c[0])
    del self.candidates[self.keep:]

  def restore_candidate(self, rank: int) -> int:
    """Puts back the rank-th best eligible checkpoint (0: the best, as
    `restore_best`; up to `keep` − 1); returns its step."""
    _, step, values = self.candidates[rank]
    for v, value in zip(self.variables, values):
      v.assign(value)
    return step

  def __call__(self, step: int, loss: float) -> bool:
    if step % self.every:
      return False
    return self.check(step, loss)

  def check(self, step: int, loss: float) -> bool:
    """Evaluates now; True when training should stop.

    A step evaluated already (a caller's last check landing on an
    evaluation step) is not evaluated again: its weights would take two of
    the `keep` candidate places, and a final check that rejected the first
    copy could pass the second with other random check points.
    """
    if self.history and self.history[-1]['step'] == step:
      return self._last_decision
    self._last_decision = self._check(step, loss)
    return self._last_decision

  def _check(self, step: int, loss: float) -> bool:
    record = self.evaluate(step, loss)
    # Better than every earlier check, eligible or not.
    learning = record['validation_nll'] < min(
        (h['validation_nll'] for h in self.history), default=float('inf'))
    self.history.append(record)
    if record.get('min_det', 1.) <= 0.:
      self.folded = True
      print(f'step {step}: f⁻¹ folds (min det {record["min_det"]:.3g}); '
            + ('stopping' if self.stop_on_fold else 'not eligible'),
            flush=True)
      if self.stop_on_fold:
        return True
      self._since_best = 0 if learning else self._since_best + 1
      return self._since_best >= self.patience
    if record['validation_nll'] < self.best_validation:
      self._take_best(step, record)
      self._consider_candidate(step, record)
      self._since_best = 0
      return False
    self._consider_candidate(step, record)
    self._since_best += 1
    return self._since_best >= self.patience

  def restore_best(self) -> None:
    if self._best_values is None:
      raise ValueError('No eligible checkpoint was recorded.')
    for v, value in zip(self.variables, self._best_values):
      v.assign(value)


def as_points(points, dtype, event_shape: Sequence[int], name: str,
              manifold: Optional[base_lib.Manifold] = None) -> tf.Tensor:
  """points as a [N >= 1] + event_shape tensor of `dtype`, else ValueError.

  Non-finite values are refused and, with `manifold`, so are points off
  it (eagerly, each membership assertion raises as it is made).
  """
  points = tf.convert_to_tensor(np.asarray(points), dtype)
  event = list(event_shape)
  if (points.shape.rank != 2 or points.shape[0] == 0
      or points.shape[1:].as_list() != event):
    raise ValueError(f'{name} must have shape [N >= 1] + {event}, got '
                     f'{points.shape}.')
  if not bool(tf.reduce_all(tf.math.is_finite(points))):
    raise ValueError(f'{name} has non-finite values.')
  if manifold is not None:
    try:
      manifold.membership_assertions(points)
    except tf.errors.InvalidArgumentError as e:
      raise ValueError(f'{name}: {e.message}') from None
  return points


def fit_nll(q: tfd.Distribution, train_points, validation_points,
            steps: int, batch_size: Optional[int] = None,
            learning_rate: float = 1e-3, decay: bool = True,
            eval_every: int = 50, patience: int = 10,
            validity_points: int = 4096, seed: int = 0,
            log_every: int = 100, jit_compile: bool = False,
            variables: Optional[List[tf.Variable]] = None,
            fold_penalty: float = 0., fold_margin: float = 0.05,
            penalty_points: int = 256) -> Dict:
  """Maximum likelihood with validation model selection and early stopping.

  Minimises `nll_loss` on minibatches of `train_points` [N, ambient_dim]
  (all of them with batch_size None) with Adam, under a cosine decay when
  `decay`. The loss runs only the closed-form inverse and its exact log-det
  (no c-transform solve). A `ValidationMonitor` selects the checkpoint with
  the best validation NLL among those whose f⁻¹ has det > 0 (the starting
  weights included, as step -1), stops early, and the selected variables are
  restored before returning.

  `variables` defaults to `q.trainable_variables`; pass them when ψ keeps
  variables that the distribution does not track (e.g. a plain function).

  Likelihood alone drives uncertified stacks into folds: where f⁻¹ folds,
  |det| counts each preimage, ∫q exceeds 1 and the NLL keeps falling. With
  `fold_penalty` > 0 the loss adds fold_penalty · Σ_links mean relu(
  fold_margin − det J_{f⁻¹})² over `penalty_points` fresh uniform points per
  step (solve-free, like the NLL), a barrier that keeps every link's det
  away from 0. The validity guard still decides which checkpoints count.

  Returns:
    dict with losses (per step), history (per check), best_step,
    best_validation, folded (training stopped on a fold), steps_run and
    seconds.
  """
  event = q.event_shape.as_list()
  train_points = as_points(train_points, q.dtype, event, 'train_points')
  validation_points = as_points(validation_points, q.dtype, event,
                                'validation_points')
  n = int(train_points.shape[0])

  links = []
  if fold_penalty:
    links = flows.distinct(flows.bijector_layers(q.bijector))

  def loss_fn(s):
    if batch_size is None or batch_size >= n:
      loss = nll_loss(q, train_points)
    else:
      idx = tf.random.stateless_uniform([batch_size], s, 0, n,
                                        dtype=tf.int32)
      loss = nll_loss(q, tf.gather(train_points, idx))
    for k, link in enumerate(links):
      u = link.manifold.uniform(q.dtype).sample(
          penalty_points, seed=tfp.random.split_seed(s, n=len(links))[k])
      det = link.inverse_jacobian_determinant(u)
      loss += fold_penalty * tf.reduce_mean(
          tf.square(tf.nn.relu(fold_margin - det)))
    return loss

  monitor = ValidationMonitor(q, validation_points, every=eval_every,
                              patience=patience,
                              validity_points=validity_points,
                              variables=variables)
  lr = learning_rate
  if decay:
    lr = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps)
  start = time.time()
  monitor.consider_initial()
  losses = train(loss_fn, monitor.variables, steps,
                 optimizer=tf_keras.optimizers.Adam(lr), seed=seed,
                 log_every=log_every, jit_compile=jit_compile,
                 callback=monitor)
  last = len(losses) - 1
  if not monitor.folded:   # the monitor skips a step it evaluated
    monitor.check(last, losses[-1])   # the final weights are a candidate too
  monitor.restore_best()
  return dict(losses=losses, history=monitor.history,
              best_step=monitor.best_step,
              best_validation=monitor.best_validation,
              folded=monitor.folded, steps_run=len(losses),
              seconds=time.time() - start)


def ircpm_flow(manifold, num_layers: int, hidden_units=(64, 64),
               output_scale: float = 1. / 20., shared: bool = False,
               certified: bool = False, dtype=tf.float32,
               seed: int = 0, base: Optional[tfd.Distribution] = None,
               zero_output: bool = False) -> tfd.TransformedDistribution:
  """`flows.make_flow` with MLP potentials, under its former name.

  Layer k's MLP is seeded 1000·seed + k, and the Chain lists layer 0
  first, so layer L−1 acts first (as this function always built it).
  """
  from tfp_ircpm import potentials  # pylint: disable=g-import-not-at-top
  if num_layers < 1:
    raise ValueError(f'num_layers must be >= 1, got {num_layers}.')
  if shared:
    return flows.make_flow(manifold, num_layers, base=base, share=True,
                           hidden_units=hidden_units,
                           output_scale=output_scale, certified=certified,
                           zero_output=zero_output, dtype=dtype, seed=seed)
  psis = [potentials.MLP(manifold, hidden_units, output_scale=output_scale,
                         dtype=dtype, seed=1000 * seed + k,
                         certified=certified, zero_output=zero_output,
                         name=f'psi{k}') for k in range(num_layers)]
  return flows.make_flow(manifold, num_layers, potential=psis[::-1],
                         base=base, dtype=dtype)
