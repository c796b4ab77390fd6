r"""Density estimation on data: one call that fits an IRCPM flow.

`fit(train, validation, manifold)` returns a `tfd.Distribution` and a
report. The model is a stack of IRCPMs whose potentials are sharp convex
wells (`potentials.Wells`) centred at training points, layer l with wells
of concentration κ_l (rising geometrically, coarse to fine), on one of two
bases:

* on Sⁿ by default, a small von Mises–Fisher mixture (100 components)
  fitted alone first (`distributions.vmf_mixture`), then fixed: the
  mixture places the mass coarsely and the layers (κ_l = 100 … 10⁵) shape
  it, from regions of a few degrees down to single event sites;
* on Tⁿ, or with base='uniform', the uniform density: the first layers
  move mass between regions and the last ones between neighbouring events,
  and every gain is made by the IRCPM layers themselves.

Why wells, and why a stack. Maximum likelihood needs no c-transform solve,
and the only hard constraint is det J_{f⁻¹} > 0 (a lower bound on Hess ψ).
A well of curvature a at c multiplies the density at c by about (1 + a)ⁿ
(`potentials.Wells`), on the length scale 1/√κ; its concave skirt is what
limits a (a·m(κ) below the budget, `potentials.well_concavity`), so one
layer gains at most about n·log 3 nats at a point and depth does the rest.

Crowding. Wells whose skirts overlap add their concavities, so each well's
share of the budget is divided by how many wells of its layer reach it
(`potentials.Wells(bound='crowd')`); the stack starts close to, but not
at, the identity, with det J_{f⁻¹} > 0.

Leave-one-out. The wells sit at training points, so plain maximum
likelihood rewards each well for its own centre and the fine layers
memorise the training set. The training loss is the leave-one-out
likelihood instead (`potentials.LeaveOneOut`): each row is scored without
the well at its own coordinate, so a well gains only from the other points
within its reach, while a coordinate that repeats keeps its well (repeated
event sites earn their spikes). The model, its validation and its checks
are the full stack.

Training (`training.train` with a `training.ValidationMonitor`): Adam on
minibatches, validation model selection, early stopping, and the fold
barrier of `training.fit_nll` evaluated where folds would happen: on uniform
points and on rings around the training batch at each layer's skirt radius
√(3/κ_l). The best few eligible checkpoints (det J_{f⁻¹} > 0 on uniform
and validation points) are kept, and the best one that passes
`diagnostics.check_diffeomorphism` is returned (uniform points, the train
and validation points, points on every well's skirt, and a descent of
det J_{f⁻¹} from the lowest of them); if none passes, the report
says so (`report.diffeomorphism.passed` is False) and the best is returned.

Command line:

  python -m tfp_ircpm.density --csv FILE [--columns lat,lon | --angles]
"""

import dataclasses
import math
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_ircpm import data as data_lib
from tfp_ircpm import diagnostics
from tfp_ircpm import distributions
from tfp_ircpm import flows
from tfp_ircpm import kde as kde_lib
from tfp_ircpm import losses
from tfp_ircpm import potentials
from tfp_ircpm import training
from tfp_ircpm.manifolds import base as base_lib
from tfp_ircpm.manifolds import sphere as sphere_lib
from tfp_ircpm.manifolds import torus as torus_lib

tfd = tfp.distributions

# κ_l of the layers, coarse to fine. On the uniform base the stack has to
# move mass between regions first. On a small fitted mixture the mass is
# roughly in place and the layers shape it from a few degrees (κ = 100,
# width 1/√κ) down to single sites; the middle scales repeat because the
# crowd bound caps one layer's gain in a dense region at about one well's.
UNIFORM_BASE_CONCENTRATIONS = (30., 100., 300., 1e3, 3e3, 1e4, 3e4)
MIXTURE_BASE_CONCENTRATIONS = (100., 300., 300., 1e3, 1e3, 1e3, 3e3, 1e4, 3e4,
                               1e5)


@dataclasses.dataclass
class FitReport:
  """What `fit` did.

  Attributes:
    validation_nll, train_nll: mean NLL (nats, w.r.t. the manifold's
      volume) of the selected model.
    base_validation_nll: the base alone (the uniform density: log vol M;
      a fitted mixture: its own validation NLL).
    best_step, steps_run, seconds: the selected checkpoint and the cost
      of training (the final check not included).
    stopped_by: 'steps', 'early_stopping' or 'time_budget'.
    folds_seen: validation checks whose min det J_{f⁻¹} <= 0 (never
      selected).
    rejected_by_check: steps of better checkpoints that the final
      `check_diffeomorphism` rejected (then the next best was checked).
    diffeomorphism: the selected model's `DiffeomorphismReport`.
    config: the settings used.
    history: the validation checks (step, train_loss, validation_nll,
      min_det).
  """
  validation_nll: float
  train_nll: float
  base_validation_nll: float
  best_step: int
  steps_run: int
  seconds: float
  stopped_by: str
  folds_seen: int
  rejected_by_check: List[int]
  diffeomorphism: diagnostics.DiffeomorphismReport
  config: Dict
  history: List[Dict]

  def summary(self) -> str:
    return (f'validation NLL {self.validation_nll:.4f} (base alone '
            f'{self.base_validation_nll:.4f}), train NLL '
            f'{self.train_nll:.4f}; step {self.best_step} of '
            f'{self.steps_run} ({self.stopped_by}), {self.seconds:.0f} s; '
            + self.diffeomorphism.summary())


def well_layers(manifold: base_lib.Manifold, train_points: np.ndarray,
                concentrations: Sequence[float], num_centres: int,
                share: float, seed: int, dtype) -> List[potentials.Wells]:
  """One `potentials.Wells` per κ_l, centred at distinct training points.

  The wells use bound='crowd': well i gets sigmoid(w_i)/n_i of the budget,
  n_i counting the wells whose skirts reach c_i, so a cluster of wells
  acts like one well and skirts rarely pile up into a fold; all start at
  sigmoid(w_i) = `share`. κ_min = κ_l/2 keeps Lemma 4's gradient term
  small, so nearly all of the budget goes to curvature. Centres stay
  fixed: a move of one well width would cost more likelihood than it
  could gain.
  """
  rng = np.random.default_rng(seed)
  distinct = data_lib.distinct(train_points)
  psis = []
  for l, kappa in enumerate(concentrations):
    m = min(int(num_centres), len(distinct))
    centres = distinct[rng.choice(len(distinct), m, replace=False)]
    psis.append(potentials.Wells(
        manifold, centres, concentration=float(kappa), curvature=share,
        bound='crowd', min_concentration=float(kappa) / 2.,
        trainable_centres=False, dtype=dtype, name=f'wells{l}'))
  return psis


def well_owners(train_points: np.ndarray, wells: potentials.Wells,
                decimals: int = data_lib.DECIMALS) -> np.ndarray:
  """[M] int: the row of `train_points` that alone has well j's centre as
  its coordinate (after `data.distinct`'s rounding), or -1 where several
  rows or none do (`potentials.LeaveOneOut`)."""
  rows = {}
  for i, key in enumerate(map(tuple, np.round(train_points, decimals))):
    rows.setdefault(key, []).append(i)
  centres = np.round(wells.centre_variable.numpy(), decimals)
  owners = [rows.get(tuple(c), []) for c in centres]
  return np.asarray([r[0] if len(r) == 1 else -1 for r in owners], np.int32)


def _rings(manifold: base_lib.Manifold, x: tf.Tensor, radius,
           seed) -> tf.Tensor:
  """exp_x(v) for random tangent v with |v| ∈ radius·[0.3, 2] (radius a
  scalar or [N, 1])."""
  s1, s2 = tfp.random.split_seed(seed)
  v = manifold.proju(x, tf.random.stateless_normal(tf.shape(x), s1,
                                                   dtype=x.dtype))
  norm = tf.norm(v, axis=-1, keepdims=True)
  length = radius * tf.random.stateless_uniform(
      tf.concat([tf.shape(x)[:1], [1]], 0), s2, 0.3, 2., dtype=x.dtype)
  return manifold.expmap(x, v / tf.maximum(norm, 1e-12) * length)


def skirt_points(psis: Sequence[potentials.Wells], per_well: int,
                 seed) -> tf.Tensor:
  """[Σ_l M_l · per_well, ambient_dim]: random points around every well of
  every layer at r ∈ [0.3, 2]·√(3/κ_i), its concave skirt, where the
  wells' skirts can add up to a fold (`potentials.Wells`)."""
  seeds = tfp.random.split_seed(seed, n=len(psis))
  out = []
  for psi, s in zip(psis, seeds):
    c = tf.repeat(psi.centres(), per_well, axis=0)
    k = tf.repeat(psi.concentrations(), per_well)
    out.append(_rings(psi.manifold, c, tf.sqrt(3. / k)[:, tf.newaxis], s))
  return tf.concat(out, 0)


def fit(train_points, validation_points, manifold: base_lib.Manifold,
        time_budget_s: Optional[float] = None, seed: int = 0,
        concentrations: Optional[Sequence[float]] = None,
        num_centres: int = 1000, share: Optional[float] = None,
        steps: int = 2000, batch_size: int = 512,
        learning_rate: Optional[float] = None,
        eval_every: int = 50, patience: int = 6,
        fold_penalty: float = 1e4, fold_margin: float = 0.2,
        penalty_points: int = 512, validity_points: int = 5000,
        check_points: int = 20000, check_skirt_points: int = 8,
        check_search_steps: int = 30, fold_search_points: int = 64,
        fold_search_steps: int = 20, keep: int = 3,
        base: str = 'auto', base_components: int = 100,
        base_steps: int = 1500,
        leave_one_out: bool = True,
        jit_compile: bool = True, dtype=tf.float32, verbose: bool = True):
  """Fits a coarse-to-fine wells flow by maximum likelihood (module doc).

  Args:
    train_points: [N, ambient_dim] points of `manifold` (Sⁿ: unit vectors;
      Tⁿ: angles in radians).
    validation_points: [N_val, ambient_dim], for model selection and early
      stopping only.
    manifold: a `Sphere` or a `Torus`.
    time_budget_s: stop training after this many seconds (the selected
      checkpoint is still the best on validation); None: `steps` only.
    seed: of the centres, the minibatches and the barrier points.
    concentrations: κ_l of the layers, coarse to fine (default
      `UNIFORM_BASE_CONCENTRATIONS` or `MIXTURE_BASE_CONCENTRATIONS`).
    num_centres: wells per layer (at most the distinct training points).
    share: initial budget share of each well (see `well_layers`; default
      0.3 on the uniform base, 0.05 on a mixture, whose sharp components
      a strong start would blur).
    steps, batch_size, learning_rate: Adam with cosine decay (learning
      rate default 1e-2 on the uniform base, 3e-2 on a mixture).
    eval_every, patience: validation checks and early stopping.
    fold_penalty, fold_margin, penalty_points: the fold barrier.
    validity_points: uniform points of the monitor's fold check at each
      validation check (a checkpoint with det J_{f⁻¹} <= 0 there is
      never selected).
    check_points: uniform points of the final `check_diffeomorphism`.
    check_skirt_points: points per well on its concave skirt
      (`skirt_points`) added to the final check's train and validation
      points: a skirt overlap that folds the map covers far less than the
      spacing of uniform points at κ = 10⁵.
    check_search_steps: steps of the final check's descent of det J_{f⁻¹}
      from its lowest points (`diagnostics.search_min_det`).
    fold_search_points, fold_search_steps: at every evaluation, per layer,
      a descent of det J_{f⁻¹} (that many steps) from the lowest of two
      skirt points per well; the `fold_search_points` lowest points it
      reaches join the fold barrier's points until the next evaluation,
      and a det <= 0 among them makes the checkpoint ineligible (0: off).
      On Fire (1 000 wells a layer on dense clusters) the hunt with 16
      points and 10 steps left folds that the final check found in all
      three kept checkpoints of 4 of 5 seeds, and 64 and 20 left none;
      on 1 000-well layers they cost a quarter to a third of the steps in
      a time budget.
    keep: eligible checkpoints kept for the final check (the best that
      passes is returned).
    base: 'auto' ('vmf_mixture' on Sⁿ, 'uniform' on Tⁿ), 'uniform', or
      'vmf_mixture' (Sⁿ only): a mixture of
      `base_components` von Mises–Fisher densities centred at training
      points, fitted alone first (`training.fit_nll`, at most `base_steps`
      Adam steps, validation model selection) and then fixed while the
      IRCPM layers train on it. Its validation NLL is the report's
      `base_validation_nll`, the ablation of the layers. A small mixture
      leaves the layers the work: with 500 components the mixture alone
      came within 0.05–0.14 nats of the flow on Earthquake and Flood.
    leave_one_out: train on the leave-one-out likelihood (module doc);
      False: plain maximum likelihood.
    jit_compile: XLA-compile the training step.
    dtype: of the model.
    verbose: print progress.

  Returns:
    (q, report): the fitted `tfd.TransformedDistribution` and a `FitReport`.
  """
  if not isinstance(manifold, (sphere_lib.Sphere, torus_lib.Torus)):
    raise TypeError(f'fit supports Sphere and Torus, got {manifold!r}.')
  if base == 'auto':
    base = ('vmf_mixture' if isinstance(manifold, sphere_lib.Sphere)
            else 'uniform')
  mixture = base == 'vmf_mixture'
  if concentrations is None:
    concentrations = (MIXTURE_BASE_CONCENTRATIONS if mixture
                      else UNIFORM_BASE_CONCENTRATIONS)
  if share is None:
    share = 0.05 if mixture else 0.3
  if learning_rate is None:
    learning_rate = 3e-2 if mixture else 1e-2
  event = [manifold.ambient_dim]
  train_np = training.as_points(train_points, dtype, event, 'train_points',
                                manifold).numpy()
  val_np = training.as_points(validation_points, dtype, event,
                              'validation_points', manifold).numpy()
  config = dict(concentrations=[float(k) for k in concentrations],
                num_centres=int(num_centres), share=float(share),
                steps=int(steps), batch_size=int(batch_size),
                learning_rate=float(learning_rate), eval_every=eval_every,
                patience=patience, fold_penalty=fold_penalty,
                fold_margin=fold_margin, penalty_points=penalty_points,
                validity_points=validity_points, check_points=check_points,
                check_skirt_points=int(check_skirt_points),
                check_search_steps=int(check_search_steps),
                fold_search_points=int(fold_search_points),
                fold_search_steps=int(fold_search_steps),
                leave_one_out=bool(leave_one_out),
                time_budget_s=time_budget_s, seed=seed,
                dtype=tf.as_dtype(dtype).name)
  start = time.time()
  base_dist, base_nll = None, math.log(manifold.volume)
  if base == 'vmf_mixture':
    if not isinstance(manifold, sphere_lib.Sphere):
      raise ValueError("base='vmf_mixture' needs a Sphere.")
    rng = np.random.default_rng(seed)
    k = min(int(base_components), len(train_np))
    base_dist = distributions.vmf_mixture(
        train_np[rng.choice(len(train_np), k, replace=False)], 50.,
        dtype=dtype)
    base_fit = training.fit_nll(
        base_dist, train_np, val_np, int(base_steps),
        batch_size=min(1024, len(train_np)), learning_rate=2e-2,
        eval_every=eval_every, patience=patience, seed=seed, log_every=0,
        jit_compile=jit_compile)
    base_nll = base_fit['best_validation']
    if verbose:
      print(f'{k}-component vMF mixture alone: validation NLL '
            f'{base_nll:.4f} ({time.time() - start:.0f} s)', flush=True)
  elif base != 'uniform':
    raise ValueError(f"base must be 'uniform' or 'vmf_mixture', got "
                     f'{base!r}.')
  config.update(base=base, base_components=int(base_components),
                base_steps=int(base_steps))
  psis = well_layers(manifold, train_np, concentrations, num_centres, share,
                     seed, dtype)
  q = flows.make_flow(manifold, len(psis), potential=psis, base=base_dist,
                      dtype=dtype)
  train_t = tf.constant(train_np)
  n = len(train_np)
  batch = min(int(batch_size), n)
  nll_q, loo = q, []
  if leave_one_out:
    loo = [potentials.LeaveOneOut(psi, well_owners(train_np, psi), batch)
           for psi in psis]
    # A training objective, not the model: removing row i's own well can
    # fold the leave-one-out map at x_i (the well's curvature was holding
    # its neighbours' skirts there), and then log|det| → −∞ at det = 0 is
    # itself a barrier. The model's folds are the barrier's and the
    # monitor's business, on q.
    nll_q = flows.make_flow(manifold, len(loo), potential=loo,
                            base=base_dist, dtype=dtype, fold='ignore',
                            global_check_points=0)
  radii = [math.sqrt(3. / float(k)) for k in concentrations]
  links = flows.distinct(flows.bijector_layers(q.bijector))
  num_uniform = int(penalty_points) // 2
  num_ring = max(1, int(penalty_points) // (2 * len(radii)))
  # Where a descent of det last found each layer's lowest points: a fold on
  # a skirt overlap can be far narrower than the rings' sampling, and the
  # barrier only acts where it is evaluated.
  num_hard = int(fold_search_points)
  hard = tf.Variable(tf.gather(train_t, np.arange(
      max(1, num_hard * len(links))) % n), trainable=False, name='fold_hunt')

  def fold_probe(step: int) -> float:
    worst, found = float('inf'), []
    for l, link in enumerate(links):
      wells = link.potential
      per_well = max(2, -(-num_hard // wells.num_wells))
      starts = tf.cast(skirt_points([wells], per_well,
                                    (seed, 7919 * (step + 1) + l)),
                       train_t.dtype)
      det, points = diagnostics.search_min_det(
          link, starts, int(fold_search_steps), keep=num_hard)
      worst = min(worst, float(tf.reduce_min(det)))
      found.append(points)
    hard.assign(tf.concat(found, 0))
    return worst

  def loss_fn(s):
    s_batch, s_uniform, s_rings = tfp.random.split_seed(s, n=3)
    idx = tf.random.stateless_uniform([batch], s_batch, 0, n, dtype=tf.int32)
    x = tf.gather(train_t, idx)
    for psi in loo:
      psi.rows.assign(idx)
    loss = losses.nll_loss(nll_q, x)
    if not fold_penalty:
      return loss
    # Each link's concave skirts lie at about √(3/κ_l) from its centres,
    # which are training points; uniform points alone would almost never
    # land there at the fine scales. The wells fix their centres, so the
    # data are nearly fixed points of every link and the rings need no
    # pull-back through the later links.
    ring_seeds = tfp.random.split_seed(s_rings, n=len(radii))
    y = tf.concat(
        [manifold.uniform(dtype).sample(num_uniform, seed=s_uniform),
         x[:num_ring]] +
        [_rings(manifold, x[:num_ring], r, ring_seeds[l])
         for l, r in enumerate(radii)] + ([hard] if num_hard else []), 0)
    for link in links:
      det = link.inverse_jacobian_determinant(y)
      loss += fold_penalty * tf.reduce_mean(
          tf.square(tf.nn.relu(fold_margin - det)))
    return loss

  # Fine-scale skirt overlaps are small targets: the monitor's check may
  # miss one that the final, larger check finds, hence `keep`.
  monitor = training.ValidationMonitor(q, val_np, every=eval_every,
                                       patience=patience, stop_on_fold=False,
                                       validity_points=validity_points,
                                       keep=keep,
                                       fold_probe=(fold_probe if num_hard
                                                   and fold_penalty else None),
                                       variables=list(
                                           q.bijector.trainable_variables))
  monitor.consider_initial()
  stopped = {'by': 'steps'}

  def callback(step, loss):
    if monitor(step, loss):
      stopped['by'] = 'early_stopping'
      return True
    if time_budget_s is not None and time.time() - start > time_budget_s:
      stopped['by'] = 'time_budget'
      monitor.check(step, loss)
      return True
    return False

  schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps)
  losses_run = training.train(
      loss_fn, monitor.variables, int(steps),
      optimizer=tf_keras.optimizers.Adam(schedule), seed=seed,
      log_every=100 if verbose else 0, jit_compile=jit_compile,
      callback=callback,
      # A NaN batch (a fold the barrier has not removed yet) is dropped;
      # the monitor and the final check judge the model.
      nonfinite='skip')
  last = len(losses_run) - 1
  if stopped['by'] == 'steps':   # the monitor skips a step it evaluated
    monitor.check(last, losses_run[-1])
  seconds = time.time() - start
  # The final check is more thorough than the monitor's (forward solves,
  # round trips, other uniform points): a checkpoint it rejects gives way
  # to the next best eligible one, and if none passes the report says so.
  rejected = []
  for rank in range(len(monitor.candidates)):
    selected = monitor.restore_candidate(rank)
    points = tf.constant(np.concatenate([train_np, val_np]))
    if check_skirt_points:
      points = tf.concat([points, tf.cast(skirt_points(
          psis, int(check_skirt_points), (seed, rank)), points.dtype)], 0)
    report = diagnostics.check_diffeomorphism(
        q.bijector, num_points=check_points, points=points,
        search_steps=int(check_search_steps), seed=seed)
    if report.passed:
      break
    rejected.append(selected)
  if not report.passed:
    monitor.restore_candidate(0)
    selected = monitor.candidates[0][1]
  result = FitReport(
      validation_nll=training.batched_nll(q, val_np),
      train_nll=training.batched_nll(q, train_np),
      base_validation_nll=base_nll, best_step=selected,
      rejected_by_check=rejected,
      steps_run=len(losses_run), seconds=seconds, stopped_by=stopped['by'],
      folds_seen=sum(r.get('min_det', 1.) <= 0. for r in monitor.history),
      diffeomorphism=report, config=config, history=monitor.history)
  if verbose:
    print(result.summary(), flush=True)
  return q, result


def save_density_map(path: str, q, manifold, test_points, title: str) -> bool:
  """A PNG of log q on a grid (S²: latitude/longitude; T²: the two angles)
  with the test points; False without matplotlib or for other manifolds."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  from tfp_ircpm import metrics  # pylint: disable=g-import-not-at-top
  if isinstance(manifold, sphere_lib.Sphere) and manifold.dim == 2:
    u, v = np.meshgrid(np.linspace(-180., 180., 240), np.linspace(-90., 90., 120))
    grid = data_lib.latlon_to_sphere(np.stack([v, u], -1)).reshape(-1, 3)
    test = data_lib.sphere_to_latlon(test_points)[:, ::-1]
    labels = ('longitude (°)', 'latitude (°)')
  elif isinstance(manifold, torus_lib.Torus) and manifold.dim == 2:
    u, v = np.meshgrid(np.linspace(0., 2. * np.pi, 160),
                       np.linspace(0., 2. * np.pi, 160))
    grid = np.stack([u, v], -1).reshape(-1, 2)
    test = np.mod(test_points, 2. * np.pi)
    labels = ('θ₁', 'θ₂')
  else:
    return False
  log_prob = metrics.log_prob_fn(q)
  log_q = np.concatenate([
      log_prob(tf.constant(grid[i:i + 4096], q.dtype)).numpy()
      for i in range(0, len(grid), 4096)]).reshape(u.shape)
  fig, ax = plt.subplots(figsize=(10, 5))
  # Sharp wells leave a long low tail: show the top 12 nats.
  mesh = ax.pcolormesh(u, v, log_q, shading='auto', cmap='viridis',
                       vmin=max(np.nanmin(log_q), np.nanmax(log_q) - 12.))
  fig.colorbar(mesh, ax=ax, label='log density (nats)')
  ax.scatter(test[:, 0], test[:, 1], s=3, c='red', label='test points')
  ax.set_xlabel(labels[0])
  ax.set_ylabel(labels[1])
  ax.set_title(title)
  ax.legend(loc='lower left')
  fig.savefig(path, dpi=90, bbox_inches='tight')
  plt.close(fig)
  return True


def evaluate(q, train_points, test_points) -> Dict:
  """Test NLL of the flow q and of its base alone, raw and deduplicated.

  The deduplicated figures drop the `test_points` rows whose coordinates
  also occur in `train_points` (`data.deduplicated`). The base alone is
  `q.distribution`: the ablation of the IRCPM layers.
  """
  dtype = q.dtype.as_numpy_dtype
  dedup = data_lib.deduplicated(test_points, train_points)
  out = dict(num_test=len(test_points), num_test_deduplicated=len(dedup))
  for prefix, dist in (('', q), ('base_', q.distribution)):
    out[prefix + 'test_nll'] = training.batched_nll(
        dist, np.asarray(test_points, dtype))
    out[prefix + 'test_nll_deduplicated'] = (training.batched_nll(
        dist, dedup.astype(dtype)) if len(dedup) else None)
  return out


def record(q, report: FitReport, split, manifold: base_lib.Manifold,
           with_kde: bool = True) -> Dict:
  """A JSON-ready dict of a fit: `evaluate`'s test figures, the report's
  fields and, with `with_kde`, the tuned KDE on the same split (raw and
  deduplicated test NLL). `split` is a `data.Split`."""
  result = dict(**evaluate(q, split.train, split.test),
                validation_nll=report.validation_nll,
                train_nll=report.train_nll, base=report.config['base'],
                base_validation_nll=report.base_validation_nll,
                best_step=report.best_step, steps_run=report.steps_run,
                train_seconds=report.seconds, stopped_by=report.stopped_by,
                folds_seen=report.folds_seen,
                rejected_by_check=report.rejected_by_check,
                diffeomorphism=report.diffeomorphism._asdict(),
                config=report.config, history=report.history)
  if with_kde:
    start = time.time()
    tuned = kde_lib.tune(manifold, split.train, split.validation)
    dedup = data_lib.deduplicated(split.test, split.train)
    result['kde'] = dict(
        concentration=tuned.concentration,
        test_nll=training.batched_nll(tuned.distribution, split.test,
                                     traced=False),
        test_nll_deduplicated=(training.batched_nll(
            tuned.distribution, dedup, traced=False) if len(dedup) else None),
        seconds=time.time() - start)
  return result


def main(argv=None) -> Dict:
  """`python -m tfp_ircpm.density --csv FILE ...`: split, fit, report."""
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog='python -m tfp_ircpm.density',
      description='Fit an IRCPM density to points in a CSV: latitude/'
      'longitude in degrees (S²), or angles in radians (Tⁿ, --angles).')
  parser.add_argument('--csv', required=True, help='the data file')
  parser.add_argument('--columns', default=None,
                      help='comma-separated column names or 0-based '
                      'indices (default: lat,lon = the first two columns; '
                      'with --angles, every column)')
  parser.add_argument('--angles', action='store_true',
                      help='the columns are angles in radians: a torus')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of the 80/10/10 split and of the fit')
  parser.add_argument('--time_budget_s', type=float, default=600.)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--concentrations', default=None,
                      help='comma-separated κ of the layers, coarse to fine '
                      '(default: density.MIXTURE_BASE_CONCENTRATIONS on S², '
                      'UNIFORM_BASE_CONCENTRATIONS on tori)')
  parser.add_argument('--base', default='auto',
                      choices=['auto', 'uniform', 'vmf_mixture'],
                      help='base of the flow (auto: a fitted vMF mixture '
                      'on S², uniform on tori)')
  parser.add_argument('--num_centres', type=int, default=1000,
                      help='wells per layer')
  parser.add_argument('--check_points', type=int, default=20000,
                      help='uniform points of the final diffeomorphism check')
  parser.add_argument('--output_dir', default='density_results')
  parser.add_argument('--no_kde', action='store_true',
                      help='skip the tuned KDE baseline')
  args = parser.parse_args(argv)
  columns = args.columns.split(',') if args.columns else None
  if args.angles:
    points = data_lib.read_columns(args.csv, columns)
    manifold = torus_lib.Torus(points.shape[1])
    points = np.mod(points, 2. * np.pi)
  else:
    if columns is None:
      latlon = data_lib.read_latlon(args.csv)
    else:
      if len(columns) != 2:
        raise SystemExit('--columns needs two columns (latitude,longitude).')
      latlon = data_lib.read_columns(args.csv, columns)
    points = data_lib.latlon_to_sphere(latlon)
    manifold = sphere_lib.Sphere(2)
  split = data_lib.split(points, args.seed)
  tf.random.set_seed(args.seed)
  q, report = fit(split.train, split.validation, manifold,
                  time_budget_s=args.time_budget_s, seed=args.seed,
                  steps=args.steps, num_centres=args.num_centres,
                  check_points=args.check_points,
                  base=args.base, concentrations=(
                      [float(k) for k in args.concentrations.split(',')]
                      if args.concentrations else None))
  result = dict(csv=os.path.abspath(args.csv), manifold=repr(manifold),
                seed=args.seed, num_points=len(points),
                **record(q, report, split, manifold,
                         with_kde=not args.no_kde))
  os.makedirs(args.output_dir, exist_ok=True)
  stem = os.path.join(args.output_dir, os.path.splitext(
      os.path.basename(args.csv))[0] + f'_seed{args.seed}')
  if save_density_map(stem + '.png', q, manifold, split.test,
                 f'{os.path.basename(args.csv)} (seed {args.seed}): test '
                 f'NLL {result["test_nll"]:.3f}'):
    result['figure'] = stem + '.png'
  with open(stem + '.json', 'w') as f:
    json.dump(result, f, indent=2, default=float)
  print(f'test NLL {result["test_nll"]:.4f} nats ({result["num_test"]} '
        'points); deduplicated '
        + (f'{result["test_nll_deduplicated"]:.4f} '
           f'({result["num_test_deduplicated"]} points)'
           if result['test_nll_deduplicated'] is not None else '–')
        + (f'; tuned KDE {result["kde"]["test_nll"]:.4f}'
           if 'kde' in result else '') + f'; wrote {stem}.json', flush=True)
  return result


if __name__ == '__main__':
  main()
