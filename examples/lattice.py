r"""IRCPM flows for the XY model on T^{L²} and the O(3) sigma model on (S²)^{L²}.

Trains one flow by reverse KL and reports the *exact* ESS (exact log-dets at
evaluation; training uses the estimator chosen by --estimator, 'auto' being
the stochastic Hutchinson + CG log-det on tori above 16 dimensions), an
importance-sampling KL estimate, and the energy per site and susceptibility
χ = ⟨|M|²⟩/L² from the flow (raw and reweighted) and from a heat-bath MCMC
run on the same lattice. --psi picks the model:

* equivariant: a stack of IRCPMs with `potentials.LatticeConvPotential`
  (invariant under the global symmetry and lattice translations);
* mlp: the same stack with non-equivariant `potentials.MLP` ψ of about the
  same parameter count;
* meanfield: independent von Mises (XY) / von Mises-Fisher (O(3)) sites.

  python examples/lattice.py --model=xy --L=8 --beta=0.9 --steps=500
"""

import json
import math
import os
import resource
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import logdet
from tfp_ircpm import mcmc
from tfp_ircpm import potentials
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training

tfd = tfp.distributions
tfb = tfp.bijectors

flags.DEFINE_enum('model', 'xy', ['xy', 'o3'], 'Lattice model.')
flags.DEFINE_integer('L', 8, 'Lattice size (L×L, periodic).')
flags.DEFINE_float('beta', 0.9, 'Inverse temperature β.')
flags.DEFINE_integer('steps', 500, 'Adam steps.')
flags.DEFINE_enum('psi', 'equivariant', ['equivariant', 'mlp', 'meanfield'],
                  'Potential / model family.')
flags.DEFINE_integer('layers', 2, 'IRCPMs in the stack (each its own ψ).')
flags.DEFINE_integer('hidden', 16, 'Channels of the two conv layers.')
flags.DEFINE_bool('bond_term', False, 'Equivariant ψ also gets a learnable '
                  'linear term in the bond features (contains αu; see '
                  'potentials.LatticeConvPotential).')
flags.DEFINE_bool('pair_term', False, 'Equivariant ψ also gets a learnable '
                  'all-pairs coupling Σ W(rᵢ − rⱼ) sᵢ·sⱼ of unlimited range '
                  '(see potentials.LatticeConvPotential).')
flags.DEFINE_enum('base', 'uniform', ['uniform', 'symmetric'],
                  "Flow base: the uniform measure, or "
                  "distributions.SymmetricMeanField (i.i.d. von Mises(-Fisher) "
                  "sites about a uniformly random common direction; κ is "
                  "trained with the flow).")
flags.DEFINE_float('base_concentration', 2., 'Initial κ of --base=symmetric '
                   '(and the κ of the --spin_wave kernel).')
flags.DEFINE_list('base_concentrations', [], 'If given, --base=symmetric is '
                  'distributions.symmetric_mean_field_mixture with these '
                  'initial κ_k (equal weights), e.g. 0.9,1.3,1.7,2.1,2.5.')
flags.DEFINE_bool('spin_wave', False, 'Start the first IRCPM\'s pair kernel '
                  'at potentials.spin_wave_pair_weights(L, β, κ) (needs '
                  '--pair_term and --base=symmetric).')
flags.DEFINE_float('forward_kl_weight', 0., 'If > 0, the loss adds this '
                   'times the negative log-likelihood of heat-bath samples '
                   '(forward KL, mass-covering: "training by example" as '
                   'well as by energy). 0: reverse KL only.')
flags.DEFINE_integer('data_sweeps', 2000, 'Heat-bath sweeps for the '
                     'forward-KL data (--mcmc_chains chains, every 10th '
                     'sweep after 200 kept; seed --seed + 1).')
flags.DEFINE_float('output_scale', 0.1, 'ψ output scale.')
flags.DEFINE_integer('batch_size', 64, 'Samples per step.')
flags.DEFINE_float('learning_rate', 1e-3, 'Initial Adam rate (cosine decay).')
flags.DEFINE_enum('estimator', 'auto', list(logdet.ESTIMATORS),
                  'Training log-det estimator.')
flags.DEFINE_float('barrier_weight', 10., 'Weight (per site) of the '
                   'logdet.min_eigenvalue_penalty guard on the Riemannian '
                   'Hessian H of h(x, ·) (I + Hess psi on tori).')
flags.DEFINE_float('barrier_floor', 0.5, 'Floor on λ_min(H).')
flags.DEFINE_float('tolerance', None, 'Solve tolerance on ‖grad h‖ (default '
                   'solvers.default_tolerance: 1e-5 in float32).')
flags.DEFINE_integer('eval_samples', 2000, 'Samples for the exact ESS.')
flags.DEFINE_integer('eval_batch', 250, 'Evaluation batch size.')
flags.DEFINE_integer('mcmc_sweeps', 2000, 'Heat-bath sweeps (0: no MCMC).')
flags.DEFINE_integer('mcmc_chains', 64, 'Heat-bath chains.')
flags.DEFINE_bool('jit_compile', False, 'Compile the training step with XLA.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('output_dir', 'results/lattice', 'Where to write JSON.')
flags.DEFINE_string('checkpoint', None, 'If set, save the trained variables '
                    '(tf.train.Checkpoint) under this prefix.')
flags.DEFINE_string('restore', None, 'If set, start from the variables saved '
                    'by --checkpoint under this prefix (same model flags); '
                    'with --steps=0 the run only evaluates, e.g. on fresh '
                    'samples with another --seed.')
flags.DEFINE_bool('summarize', False, 'Only print the markdown table of every '
                  'result JSON under --output_dir (searched recursively).')
FLAGS = flags.FLAGS


def make_target():
  make = targets_lib.xy_model if FLAGS.model == 'xy' else targets_lib.o3_model
  return make(FLAGS.L, FLAGS.beta)


def mlp_width(params: int, embed_dim: int) -> int:
  """h with h² + (embed_dim + 3)h ≈ params: an MLP (h, h) of that size."""
  b = embed_dim + 3
  return max(1, int(round((-b + math.sqrt(b * b + 4 * params)) / 2)))


class MeanField(tf.Module):
  """Independent von Mises / von Mises-Fisher sites (reparameterised)."""

  def __init__(self, target):
    super().__init__(name='mean_field')
    self.target = target
    n = target.num_sites
    # Aligned means: the symmetry-broken mean-field solution. From random
    # means with small κ, reverse KL sits at the κ = 0 saddle (measured:
    # uniform samples after 2000 steps).
    # float64: in float32 the reparameterised vMF sample's κ-gradient is
    # NaN for the rare uniform draw that rounds w = cos(angle) to ±1
    # (measured: NaN κ after 458 steps, O(3) L = 8, β = 0.5, κ ≈ 0.2).
    if target.spin_dim == 2:
      self.loc = tf.Variable(tf.zeros([n], tf.float64))
    else:
      self.loc = tf.Variable(tf.tile(tf.constant([[0., 0., 1.]], tf.float64),
                                     [n, 1]))
    self.raw_kappa = tf.Variable(tf.zeros([n], tf.float64))

  def _dist(self):
    kappa = tf.nn.softplus(self.raw_kappa)
    if self.target.spin_dim == 2:
      return tfd.Independent(tfd.VonMises(self.loc, kappa), 1)
    mean = tf.math.l2_normalize(self.loc, -1)
    return tfd.Independent(tfd.VonMisesFisher(mean, kappa), 1)

  def sample_and_log_prob(self, n, seed, estimator=None):
    """Float32 samples [n, ambient] (as the flows'), float64 log q [n]."""
    del estimator
    d = self._dist()
    s = d.sample(n, seed=seed)
    return tf.cast(tf.reshape(s, [n, -1]), tf.float32), d.log_prob(s)

  def loss(self, target, n, seed, estimator):
    y, log_q = self.sample_and_log_prob(n, seed, estimator)
    return tf.reduce_mean(log_q + tf.cast(target.energy(y), tf.float64))

  def log_prob(self, y):
    """log q(y) [n] (float64) for points [n, ambient]."""
    n = tf.shape(y)[0]
    event = [-1] if self.target.spin_dim == 2 else [-1, 3]
    site = tf.reshape(tf.cast(y, tf.float64), tf.concat([[n], event], 0))
    return self._dist().log_prob(site)


class Flow:
  """A stack of IRCPMs over the uniform or symmetric base, sampled matrix-free."""

  def __init__(self, target, kind):
    m = target.manifold
    base = m.uniform()
    base_variables = []
    if FLAGS.base == 'symmetric' and FLAGS.base_concentrations:
      base = ircpm.distributions.symmetric_mean_field_mixture(
          target.num_sites, target.spin_dim,
          [float(k) for k in FLAGS.base_concentrations])
      base_variables = list(base.trainable_variables)
    elif FLAGS.base == 'symmetric':
      kappa = tfp.util.TransformedVariable(
          FLAGS.base_concentration, tfb.Softplus(), name='base_concentration')
      base = ircpm.distributions.SymmetricMeanField(
          target.num_sites, target.spin_dim, kappa)
      base_variables = list(kappa.trainable_variables)
    self.psis = []
    conv_params = None
    for i in range(FLAGS.layers):
      conv = potentials.LatticeConvPotential(
          FLAGS.L, FLAGS.model, (FLAGS.hidden, FLAGS.hidden),
          output_scale=FLAGS.output_scale, seed=FLAGS.seed + i,
          bond_term=FLAGS.bond_term, pair_term=FLAGS.pair_term)
      if FLAGS.spin_wave and i == 0:
        conv.pair_weights.assign(potentials.spin_wave_pair_weights(
            FLAGS.L, FLAGS.beta, FLAGS.base_concentration))
      conv_params = conv.num_parameters
      if kind == 'equivariant':
        self.psis.append(conv)
      else:
        width = mlp_width(conv_params, m.embed_dim)
        self.psis.append(potentials.MLP(m, (width, width),
                                        output_scale=FLAGS.output_scale,
                                        seed=FLAGS.seed + i))
    self.bijectors = [ircpm.IRCPM(m, p, tolerance=FLAGS.tolerance)
                      for p in self.psis]
    self.q = tfd.TransformedDistribution(
        base, ircpm.bijectors.Chain(list(reversed(self.bijectors))))
    self.base = base
    self.data = None     # heat-bath points for the forward-KL term
    self.trainable_variables = base_variables + [
        v for p in self.psis for v in p.trainable_variables]

  def sample_and_log_prob(self, n, seed, estimator='exact'):
    return logdet.sample_and_log_prob(self.q, n, seed, estimator)

  def log_prob(self, y):
    """Exact log q(y) [n]: closed-form inverses, no solve."""
    return self.q.log_prob(y)

  def forward_kl(self, n, seed, estimator):
    """−mean log q on n points drawn from `self.data` (up to a constant,
    KL(p‖q)); stochastic log-dets (`logdet.log_prob_surrogate`) when
    `estimator` is."""
    index_seed, probe_seed = tfp.random.split_seed(seed)
    index = tf.random.stateless_uniform([n], index_seed, 0,
                                        tf.shape(self.data)[0], tf.int32)
    batch = tf.gather(self.data, index)
    if estimator == 'stochastic':
      return -tf.reduce_mean(logdet.log_prob_surrogate(self.q, batch,
                                                       probe_seed))
    return -tf.reduce_mean(self.q.log_prob(batch))

  def loss(self, target, n, seed, estimator):
    """Reverse KL (log-dets per `estimator`) + the λ_min guard, plus the
    forward KL on heat-bath data when --forward_kl_weight > 0."""
    forward = 0.
    if self.data is not None:
      seed, data_seed = tfp.random.split_seed(seed)
      forward = FLAGS.forward_kl_weight * self.forward_kl(n, data_seed,
                                                          estimator)
    y, log_q, points, ok = logdet.sample_and_log_prob(
        self.q, n, seed, estimator, return_layer_points=True,
        return_converged=True)
    # Points whose solve failed are dropped (their gradients would be NaN);
    # evaluation counts them.
    terms = tf.where(ok, log_q + target.energy(y), 0.)
    kl = tf.reduce_sum(terms) / tf.maximum(
        tf.reduce_sum(tf.cast(ok, terms.dtype)), 1.)
    if not FLAGS.barrier_weight:
      return kl + forward
    points = [tf.where(ok[:, None], p, tf.stop_gradient(p)) for p in points]
    penalty = logdet.min_eigenvalue_penalty(
        self.bijectors, points, floor=FLAGS.barrier_floor, iterations=20,
        seed=seed)
    return kl + forward + FLAGS.barrier_weight * target.num_sites * penalty

  def min_eigenvalues(self, n, seed, chunk=25):
    """Exact min eigenvalue of J = I + Hess ψ per layer at n samples, [layers].

    Samples whose solve did not converge (NaN under the default policy) are
    left out; `evaluate` counts them as non-finite weights. J is built
    `chunk` points at a time (at L = 16 a pfor Hessian of 200 points was
    killed at 20 GB).
    """
    _, _, points, ok = tf.function(
        lambda s: logdet.sample_and_log_prob(
            self.q, n, s, 'exact', return_layer_points=True,
            return_converged=True))(seed)
    eig = tf.function(lambda b, y: tf.reduce_min(
        tf.linalg.eigvalsh(b.intrinsic_inverse_jacobian(y)), axis=-1))
    out = []
    for layer, y in zip(self.bijectors, points):
      y = tf.boolean_mask(y, ok)
      out.append(min(float(tf.reduce_min(eig(layer, y[i:i + chunk])))
                     for i in range(0, int(tf.shape(y)[0]), chunk)))
    return out


def evaluate(model, target, num_samples, seed):
  """Exact log-weights and observables on `num_samples` model samples.

  Returns (metrics dict, the finite log-weights log p̃ − log q [n]).
  """
  fn = tf.function(lambda s: model.sample_and_log_prob(FLAGS.eval_batch, s,
                                                       'exact'))
  seeds = tfp.random.split_seed(seed, n=-(-num_samples // FLAGS.eval_batch))
  log_w, energy, m2, vortices = [], [], [], []
  for s in tf.unstack(seeds):
    y, log_q = fn(s)
    log_w.append(-target.energy(y).numpy().astype(np.float64)
                 - log_q.numpy().astype(np.float64))
    energy.append(target.energy_per_site(y).numpy())
    m = target.magnetisation(y).numpy()
    m2.append((m ** 2).sum(-1) / target.num_sites)
    vortices.append(_vortex_count(target, y))
  log_w = np.concatenate(log_w)[:num_samples]
  energy = np.concatenate(energy)[:num_samples]
  m2 = np.concatenate(m2)[:num_samples]
  vortices = np.concatenate(vortices)[:num_samples]
  finite = np.isfinite(log_w)
  out = dict(nonfinite=int((~finite).sum()))
  if not finite.any():
    nan = float('nan')
    out.update(ess=nan, log_z_is=nan, kl_is=nan, energy_flow=nan,
               energy_reweighted=nan, chi_flow=nan, chi_reweighted=nan)
    return out, log_w[finite]
  if not finite.all():
    out.update(ess=float('nan'))
    log_w, energy, m2 = log_w[finite], energy[finite], m2[finite]
    vortices = vortices[finite]
  lw = log_w - log_w.max()
  w = np.exp(lw)
  if finite.all():
    out['ess'] = float(w.sum() ** 2 / (w * w).sum() / len(w))
  log_z = float(log_w.max() + np.log(w.mean()))
  w = w / w.sum()
  # Heavy weight tails show here first: one sample carrying most of the
  # mass makes the ESS (and every reweighted value) rest on that sample.
  out['max_weight'] = float(w.max())
  out.update(log_z_is=log_z, kl_is=log_z - float(log_w.mean()),
             energy_flow=float(energy.mean()),
             energy_reweighted=float((w * energy).sum()),
             chi_flow=float(m2.mean()), chi_reweighted=float((w * m2).sum()))
  if target.spin_dim == 2:
    out.update(vortices_flow=float(vortices.mean()),
               vortices_reweighted=float((w * vortices).sum()))
  out.update(_bootstrap_errors(lw, energy, m2))
  return out, log_w


def _bootstrap_errors(lw, energy, m2, resamples=200):
  """Bootstrap standard errors of the ESS and the reweighted e and χ.

  The ESS of a few thousand weights, and every self-normalised estimate,
  moves by several percent between sample sets (measured: 54–64% for one
  flow); the spread over resamples of the same set says by how much.
  """
  rng = np.random.default_rng(0)
  w = np.exp(lw - lw.max())
  stats = []
  for _ in range(resamples):
    i = rng.integers(0, len(w), len(w))
    wi = w[i] / w[i].sum()
    stats.append((1. / (wi * wi).sum() / len(wi), (wi * energy[i]).sum(),
                  (wi * m2[i]).sum()))
  sd = np.std(np.array(stats), axis=0, ddof=1)
  return dict(ess_err=float(sd[0]), energy_reweighted_err=float(sd[1]),
              chi_reweighted_err=float(sd[2]))


def _vortex_count(target, y):
  """Vortices per configuration [n] (XY), or zeros (O(3) has none)."""
  if target.spin_dim != 2:
    return np.zeros(int(tf.shape(y)[0]))
  return target.vortex_count(y).numpy()


def evaluate_on_target_samples(model, target, points, log_w_q):
  """KL(p‖q) and a bridge log Z from heat-bath points (samples of p).

  The ESS measured on q's samples misses regions where p has mass and q
  has almost none (they show up only as rare huge weights), so it can be
  far too high on a few thousand samples. KL(p‖q) = mean_p log w − log Z
  sees them, and bounds the ESS: ESS → 1/E_p[w/Z] <= exp(−KL(p‖q)).
  log Z is `training.bridge_log_normalizer` of both sets of weights.
  """
  log_prob = tf.function(model.log_prob)
  log_q = np.concatenate([
      log_prob(tf.constant(points[i:i + FLAGS.eval_batch])).numpy()
      for i in range(0, len(points), FLAGS.eval_batch)]).astype(np.float64)
  log_w_p = -target.energy(tf.constant(points)).numpy().astype(
      np.float64) - log_q
  finite = np.isfinite(log_w_p)
  out = dict(target_points=len(points), target_nonfinite=int((~finite).sum()))
  if not finite.all() or not len(log_w_q):
    return out
  log_z = training.bridge_log_normalizer(log_w_q, log_w_p)
  kl_pq = float(log_w_p.mean()) - log_z
  out.update(log_z_bridge=log_z, kl_pq=kl_pq,
             kl_qp=log_z - float(log_w_q.mean()),
             ess_bound=float(np.exp(-kl_pq)))
  if target.spin_dim == 2:
    # KL(p‖q) = Σ_k P(k vortices) · mean_{p, k} (log w − log Z): which
    # topological sectors q under-weights.
    counts = _vortex_count(target, tf.constant(points))
    out['kl_pq_by_vortex_count'] = {
        str(int(k)): [float((counts == k).mean()),
                      float(log_w_p[counts == k].mean() - log_z)]
        for k in np.unique(counts)}
  return out


def _fmt(value, spec='.3g'):
  if value is None:
    return '—'
  if isinstance(value, float) and math.isnan(value):
    return 'undefined'
  return format(value, spec)


def summarize(output_dir: str) -> str:
  """One markdown row per result JSON under `output_dir`, grid-ordered.

  MCMC columns come from any run of the same (model, L, β) that has them.
  """
  rows = []
  for root, _, files in os.walk(output_dir):
    for name in files:
      if name.endswith('.json'):
        with open(os.path.join(root, name)) as f:
          data = json.load(f)
        if isinstance(data, dict) and {'model', 'psi', 'ess'} <= set(data):
          rows.append(data)
  mcmc = {}
  for r in rows:
    if 'energy_mcmc' in r:
      mcmc[(r['model'], r['L'], r['beta'])] = r
  order = {'equivariant': 0, 'mlp': 1, 'meanfield': 2}
  rows.sort(key=lambda r: (r['model'], r['L'], r['beta'], order[r['psi']]))
  lines = ['| model | L | β | ψ | layers | params | steps | estimator | ESS | '
           'KL (IS) | KL(p‖q) | unconv. | e rew. | e MCMC | χ rew. | χ MCMC | '
           'λ_min(J) | s/step | train RSS MB |',
           '|' + '---|' * 19]
  for r in rows:
    ref = mcmc.get((r['model'], r['L'], r['beta']), {})
    e_mcmc = (f"{ref['energy_mcmc']:.4f}±{ref['energy_mcmc_err']:.1g}"
              if ref else '—')
    chi_mcmc = f"{ref['chi_mcmc']:.3g}±{ref['chi_mcmc_err']:.2g}" if ref else (
        '—')
    flow = r['psi'] != 'meanfield'
    ess = r['ess']
    equivariant = flow and r['psi'] == 'equivariant'
    lines.append('| ' + ' | '.join([
        r['model'], str(r['L']), f"{r['beta']:g}",
        r['psi'] + (' + bond' if equivariant and r.get('bond_term') else '')
        + (' + pair' if equivariant and r.get('pair_term') else '')
        + (' + spin wave' if equivariant and r.get('spin_wave') else '')
        + (', symmetric base' if flow and r.get('base') == 'symmetric'
           else '')
        + (f", fwd KL ×{r['forward_kl_weight']:g}"
           if r.get('forward_kl_weight') else ''),
        str(r.get('layers', '—')) if flow else '—', str(r['params']),
        str(r['steps']), r['estimator'],
        'undefined' if math.isnan(ess) else f'{100 * ess:.2f}%' + (
            f" ± {100 * r['ess_err']:.1f}" if 'ess_err' in r else ''),
        _fmt(r['kl_is']), _fmt(r.get('kl_pq')),
        f"{r['nonfinite']}/{r.get('eval_samples', '?')}",
        _fmt(r['energy_reweighted'], '.4f') + (
            f"±{r['energy_reweighted_err']:.1g}"
            if 'energy_reweighted_err' in r else ''),
        e_mcmc, _fmt(r['chi_reweighted']),
        chi_mcmc, _fmt(min(r['min_eig_J'])) if 'min_eig_J' in r else '—',
        _fmt(r['seconds_per_step'], '.2g'),
        _fmt(r['peak_rss_mb_train'], '.0f')]) + ' |')
  return '\n'.join(lines)


def main(_):
  if FLAGS.summarize:
    print(summarize(FLAGS.output_dir))
    return
  if FLAGS.spin_wave and not (FLAGS.psi == 'equivariant' and FLAGS.pair_term
                              and FLAGS.base == 'symmetric'):
    # The kernel is the first conv ψ's pair term, tuned to the symmetric
    # base's κ: without all three there is nothing to start, and ignoring
    # the flag would report a run that did not happen.
    raise app.UsageError('--spin_wave needs --psi=equivariant, --pair_term '
                         'and --base=symmetric.')
  tf.random.set_seed(FLAGS.seed)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  target = make_target()
  if FLAGS.psi == 'meanfield':
    model = MeanField(target)
    estimator = 'n/a'
  else:
    model = Flow(target, FLAGS.psi)
    estimator = ('stochastic' if logdet.uses_stochastic(model.q,
                                                        FLAGS.estimator)
                 else 'exact')
  if FLAGS.restore:
    if isinstance(model, MeanField):
      raise app.UsageError('--restore is for flows (--psi).')
    tf.train.Checkpoint(variables=model.trainable_variables).read(
        FLAGS.restore).assert_consumed()
  data_seconds = 0.
  if FLAGS.forward_kl_weight and FLAGS.steps:
    if not isinstance(model, Flow):
      raise app.UsageError('--forward_kl_weight needs a flow (--psi).')
    start = time.time()
    # Its own seed: the reference MCMC below stays independent of the data.
    model.data = tf.constant(mcmc.heat_bath(
        target, FLAGS.mcmc_chains, FLAGS.data_sweeps, 200, seed=FLAGS.seed + 1,
        samples_every=10)['samples'], tf.float32)
    data_seconds = time.time() - start
    print(f'forward-KL data: {model.data.shape[0]} heat-bath points '
          f'({data_seconds:.0f} s)', flush=True)
  params = sum(int(v.shape.num_elements()) for v in model.trainable_variables)
  print(f'{FLAGS.model} L={FLAGS.L} beta={FLAGS.beta} psi={FLAGS.psi} '
        f'params={params} estimator={estimator}', flush=True)

  def loss_fn(s):
    return model.loss(target, FLAGS.batch_size, s, estimator)

  lr = tf_keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate,
                                                 max(1, FLAGS.steps))
  times = []

  def callback(step, loss):
    del loss
    times.append(time.time())
    return False

  start = time.time()
  losses = training.train(loss_fn, model.trainable_variables, FLAGS.steps,
                          optimizer=tf_keras.optimizers.Adam(lr),
                          seed=FLAGS.seed, log_every=max(1, FLAGS.steps // 10),
                          callback=callback, jit_compile=FLAGS.jit_compile
                          ) if FLAGS.steps else []
  train_seconds = time.time() - start
  # The first step includes tracing; the rest is the steady cost per step.
  per_step = (float(np.mean(np.diff(times))) if len(times) > 2
              else float('nan'))
  rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.
  if FLAGS.checkpoint:
    tf.train.Checkpoint(variables=model.trainable_variables).write(
        FLAGS.checkpoint)
  start = time.time()
  metrics, log_w_q = evaluate(model, target, FLAGS.eval_samples,
                              (FLAGS.seed, 99))
  eval_seconds = time.time() - start
  if isinstance(model, Flow) and FLAGS.base == 'symmetric':
    kappa = (model.base.components_distribution if FLAGS.base_concentrations
             else model.base).concentration
    metrics['base_concentration'] = tf.convert_to_tensor(
        kappa).numpy().tolist()
  if isinstance(model, Flow) and FLAGS.model == 'xy':
    metrics['min_eig_J'] = model.min_eigenvalues(
        min(200, FLAGS.eval_samples), (FLAGS.seed, 7))
  result = dict(model=FLAGS.model, L=FLAGS.L, beta=FLAGS.beta, psi=FLAGS.psi,
                layers=FLAGS.layers, params=params, estimator=estimator,
                bond_term=FLAGS.bond_term, pair_term=FLAGS.pair_term,
                base=FLAGS.base, spin_wave=FLAGS.spin_wave,
                forward_kl_weight=FLAGS.forward_kl_weight,
                data_points=(0 if getattr(model, 'data', None) is None
                             else int(model.data.shape[0])),
                data_seconds=data_seconds,
                learning_rate=FLAGS.learning_rate,
                barrier_floor=FLAGS.barrier_floor, seed=FLAGS.seed,
                tolerance=FLAGS.tolerance,
                jit_compile=FLAGS.jit_compile,
                eval_samples=FLAGS.eval_samples,
                steps=FLAGS.steps, batch_size=FLAGS.batch_size,
                train_seconds=train_seconds, seconds_per_step=per_step,
                peak_rss_mb_train=rss_train, eval_seconds=eval_seconds,
                final_loss=losses[-1] if losses else None,
                restored_from=FLAGS.restore, **metrics)
  if FLAGS.mcmc_sweeps:
    start = time.time()
    chain = mcmc.heat_bath(target, FLAGS.mcmc_chains, FLAGS.mcmc_sweeps,
                           FLAGS.mcmc_sweeps // 5, seed=FLAGS.seed,
                           samples_every=10)
    e = mcmc.summarize(chain['energy_per_site'])
    chi = mcmc.summarize(chain['m2_per_site'])
    result.update(energy_mcmc=e['mean'], energy_mcmc_err=e['stderr'],
                  chi_mcmc=chi['mean'], chi_mcmc_err=chi['stderr'],
                  mcmc_seconds=time.time() - start)
    if FLAGS.model == 'xy':
      v = mcmc.summarize(_vortex_count(target, tf.constant(
          chain['samples'])).reshape(-1, FLAGS.mcmc_chains))
      result.update(vortices_mcmc=v['mean'], vortices_mcmc_err=v['stderr'])
    # At most eval_samples of the kept states, spread over the whole run.
    points = chain['samples'].astype(np.float32)
    points = points[np.linspace(0, len(points) - 1,
                                min(len(points), FLAGS.eval_samples)
                                ).astype(int)]
    start = time.time()
    result.update(evaluate_on_target_samples(model, target, points, log_w_q))
    result['target_eval_seconds'] = time.time() - start
  result['peak_rss_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024.
  print(json.dumps(result, indent=1), flush=True)
  name = f'{FLAGS.model}_L{FLAGS.L}_b{FLAGS.beta:g}_{FLAGS.psi}.json'
  with open(os.path.join(FLAGS.output_dir, name), 'w') as f:
    json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
