r"""Maximum-likelihood density estimation on the Earth-science datasets on S².

Trains a stack of IRCPMs (separate uncertified MLP ψ per layer) by maximum
likelihood on one dataset and seed's 80% training split, using only the
closed-form inverse and its exact log-det, with the solve-free fold barrier
of `training.fit_nll` and model selection / early stopping on the 10%
validation split (only checkpoints with det J_f⁻¹ > 0 count).

The base is either the uniform density (`--base=uniform`) or, by default, a
trainable mixture of `--components` von Mises–Fisher densities
(`distributions.vmf_mixture`, centres started at training points). The
mixture is first fitted alone (`--base_steps`, same model selection), its
test NLL is recorded as the ablation "mixture alone", and then the IRCPMs,
started at the identity (`zero_output`), are trained on the fixed mixture
(with it, under `--joint`).

It then reports the
test NLL (nats, w.r.t. the area measure of the unit sphere, so the uniform
density scores log 4π ≈ 2.531), runs `check_diffeomorphism` on the selected
model, writes JSON and saves a lat/long density map with the test points.

  python examples/earth.py --dataset=volcano --seed=0 \
      --data_path=../shared/data/earth --output_dir=results/earth
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import data as data_lib
from tfp_ircpm import diagnostics
from tfp_ircpm import training

flags.DEFINE_string('data_path', None, 'Folder with the CSV files (default: '
                    '$EARTH_DATA or ../shared/data/earth).')
flags.DEFINE_enum('dataset', 'volcano', sorted(data_lib.DATASETS), 'Dataset.')
flags.DEFINE_integer('seed', 0, 'Seed of the split and the initialisation.')
flags.DEFINE_enum('base', 'vmf_mixture', ['uniform', 'vmf_mixture'],
                  'Base distribution of the flow.')
flags.DEFINE_integer('components', 500, 'vMF mixture components (at most '
                     'the number of training points).')
flags.DEFINE_float('concentration', 50., 'Initial κ of every component.')
flags.DEFINE_integer('base_steps', 1500, 'Maximum Adam steps of the '
                     'mixture-alone fit (0: none).')
flags.DEFINE_float('base_learning_rate', 2e-2, 'Adam learning rate of the '
                   'mixture-alone fit (cosine decay).')
flags.DEFINE_bool('joint', False, 'Also train the fitted mixture with the '
                  'IRCPMs (by default only ψ trains: restarting Adam on the '
                  'sharp fitted components first undoes part of the fit).')
flags.DEFINE_integer('layers', 4, 'IRCPMs in the stack.')
flags.DEFINE_integer('hidden', 64, 'Width of the two hidden layers of ψ.')
flags.DEFINE_float('output_scale', 1. / 20., 'ψ output scale.')
flags.DEFINE_bool('shared', False, 'One ψ shared by every layer.')
flags.DEFINE_bool('certified', False, 'Certified potentials (Lemmas 3-4 '
                  'enforced for every parameter value).')
flags.DEFINE_integer('steps', 800, 'Maximum Adam steps.')
flags.DEFINE_integer('batch_size', 1024, 'Minibatch (full batch if larger '
                     'than the training set).')
flags.DEFINE_float('learning_rate', None, 'Initial Adam learning rate '
                   '(cosine decay over --steps); default 5e-3 on the '
                   'uniform base, 1e-3 on the fitted mixture.')
flags.DEFINE_bool('jit_compile', True, 'XLA-compile the training step.')
flags.DEFINE_integer('eval_every', 50, 'Steps between validation checks.')
flags.DEFINE_integer('patience', 6, 'Checks without improvement before '
                     'early stopping.')
flags.DEFINE_float('fold_penalty', 1000., 'Weight of the det J_f⁻¹ > '
                   'fold_margin barrier (training.fit_nll).')
flags.DEFINE_float('fold_margin', 0.2, 'Margin of the fold barrier.')
flags.DEFINE_integer('check_points', 20000, 'Uniform points for the final '
                     'check_diffeomorphism.')
flags.DEFINE_string('output_dir', 'results/earth', 'Where to write results.')
flags.DEFINE_bool('figure', True, 'Save the density map PNG.')
flags.DEFINE_bool('summarize', False, 'Only print the markdown table of '
                  'test NLL mean ± std over the JSON files in --output_dir.')
FLAGS = flags.FLAGS

# Published test NLLs (nats, lower is better): Riemannian CNF, Moser Flow
# and Riemannian score-based from the oxcsml/riemannian-score-sde README;
# the vMF mixture and Riemannian flow matching from Chen & Lipman 2023
# (arXiv 2302.03660), Table 2. See docs/results/earth.md.
PUBLISHED = {
    'Mixture of vMF': dict(volcano='-0.31', earthquake='0.59', flood='1.09',
                           fire='-0.23'),
    'Riemannian CNF': dict(volcano='-6.05 ± 0.61', earthquake='0.14 ± 0.23',
                           flood='1.11 ± 0.19', fire='-0.80 ± 0.54'),
    'Moser Flow': dict(volcano='-4.21 ± 0.17', earthquake='-0.16 ± 0.06',
                       flood='0.57 ± 0.10', fire='-1.28 ± 0.05'),
    'Riemannian score-based': dict(volcano='-4.92 ± 0.25',
                                   earthquake='-0.19 ± 0.07',
                                   flood='0.48 ± 0.09', fire='-1.33 ± 0.06'),
    'Riemannian flow matching': dict(volcano='-7.93', earthquake='-0.28',
                                     flood='0.42', fire='-1.86'),
}


def latlon_grid(n_lat: int = 90, n_lon: int = 180):
  """(lon, lat) meshes in degrees [n_lat, n_lon] and points [n_lat·n_lon, 3]."""
  lon = np.linspace(-180., 180., n_lon)
  lat = np.linspace(-90., 90., n_lat)
  lo, la = np.meshgrid(lon, lat)
  pts = data_lib.latlon_to_sphere(np.stack([la, lo], -1)).reshape(-1, 3)
  return lo, la, pts


def save_density_map(path: str, q, test_points: np.ndarray,
                     title: str) -> bool:
  """Plate carrée map of log q with the test points; False without mpl."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  lo, la, pts = latlon_grid()
  log_prob = ircpm.metrics.log_prob_fn(q)
  log_q = np.concatenate([
      log_prob(tf.constant(pts[i:i + 4096], q.dtype)).numpy()
      for i in range(0, len(pts), 4096)]).reshape(lo.shape)
  test = data_lib.sphere_to_latlon(test_points)
  fig, ax = plt.subplots(figsize=(10, 5))
  # Sharp components have tails of e^{-2κ}: a full-range scale would be all
  # tail, so show the top 12 nats (lower values saturate).
  mesh = ax.pcolormesh(lo, la, log_q, shading='auto', cmap='viridis',
                       vmin=max(log_q.min(), log_q.max() - 12.))
  fig.colorbar(mesh, ax=ax, label='log density (nats / sr)')
  ax.scatter(test[:, 1], test[:, 0], s=3, c='red', label='test points')
  ax.set_xlim(-180, 180)
  ax.set_ylim(-90, 90)
  ax.set_xlabel('longitude (°)')
  ax.set_ylabel('latitude (°)')
  ax.set_title(title)
  ax.legend(loc='lower left')
  fig.savefig(path, dpi=90, bbox_inches='tight')
  plt.close(fig)
  return True


def _cell(values) -> str:
  v = np.asarray(values)
  return f'{v.mean():.2f} ± {v.std():.2f} (n={len(v)})' if len(v) else '–'


def _delta(values) -> str:
  v = np.asarray(values)
  return (f'{v.mean():+.4f} [{v.min():+.4f}, {v.max():+.4f}]' if len(v)
          else '–')


def summarize(output_dir: str) -> str:
  """Markdown: published rows, then ours (mean ± std over seeds, n, checks).

  One row per model found in the JSON files, and for models on a fitted
  mixture base also the mixture-alone row (the ablation of the IRCPMs).
  """
  by_model = {}
  for name in sorted(os.listdir(output_dir)):
    if name.endswith('.json'):
      with open(os.path.join(output_dir, name)) as f:
        r = json.load(f)
      by_model.setdefault(r['model'], {}).setdefault(r['dataset'], []).append(r)
  order = ['volcano', 'earthquake', 'flood', 'fire']
  lines = ['| method | Volcano | Earthquake | Flood | Fire |',
           '|---|---|---|---|---|']
  for method, row in PUBLISHED.items():
    lines.append(f'| {method} | ' + ' | '.join(
        row.get(d, '–') for d in order) + ' |')
  notes = []
  for model, results in by_model.items():
    with_base = [r for rs in results.values() for r in rs
                 if r.get('base_alone')]
    if with_base:
      lines.append(f'| ablation: {with_base[0]["base_alone"]["model"]} | '
                   + ' | '.join(_cell([r['base_alone']['test_nll']
                                       for r in results.get(d, [])
                                       if r.get('base_alone')])
                                for d in order) + ' |')
    lines.append(f'| **IRCPM: {model}** | ' + ' | '.join(
        _cell([r['test_nll'] for r in results.get(d, [])]) for d in order)
                 + ' |')
    if with_base:
      # What the IRCPM layers add, per seed (same split, same base).
      lines.append('| IRCPM layers: Δ test NLL vs the base alone, mean '
                   '[min, max] | ' + ' | '.join(
                       _delta([r['test_nll'] - r['base_alone']['test_nll']
                               for r in results.get(d, [])
                               if r.get('base_alone')]) for d in order)
                   + ' |')
    lines.append('| check_diffeomorphism passed | ' + ' | '.join(
        f'{sum(r["diffeomorphism"]["passed"] for r in results[d])}/'
        f'{len(results[d])}' if d in results else '–' for d in order) + ' |')
    seeds = sorted({r['seed'] for rs in results.values() for r in rs})
    notes.append(f'{model}: seeds {seeds}.')
  return '\n'.join(lines) + '\n\n' + '\n'.join(notes)


def main(_):
  if FLAGS.summarize:
    print(summarize(FLAGS.output_dir))
    return
  tf.random.set_seed(FLAGS.seed)
  data_path = FLAGS.data_path or data_lib.default_data_path()
  if data_path is None:
    raise app.UsageError('No data folder: pass --data_path.')
  split = data_lib.load_dataset(FLAGS.dataset, data_path, FLAGS.seed)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  sphere = ircpm.manifolds.Sphere(2)
  batch = FLAGS.batch_size if FLAGS.batch_size < len(split.train) else None
  mixture = FLAGS.base == 'vmf_mixture'
  base, base_result, base_desc = None, None, 'uniform base'
  if mixture:
    k = min(FLAGS.components, len(split.train))
    rng = np.random.default_rng(FLAGS.seed)
    centres = split.train[rng.choice(len(split.train), k, replace=False)]
    base = ircpm.distributions.vmf_mixture(centres, FLAGS.concentration)
    base_desc = f'{k}-component vMF mixture base'
    if FLAGS.base_steps and not FLAGS.joint:
      base_desc += ' (fitted first, then fixed)'
    if FLAGS.base_steps:
      fit = training.fit_nll(base, split.train, split.validation,
                             FLAGS.base_steps, batch_size=batch,
                             learning_rate=FLAGS.base_learning_rate,
                             eval_every=FLAGS.eval_every,
                             patience=FLAGS.patience, seed=FLAGS.seed,
                             log_every=0, jit_compile=FLAGS.jit_compile)
      base_result = dict(
          test_nll=training.batched_nll(base, split.test),
          validation_nll=fit['best_validation'], best_step=fit['best_step'],
          steps_run=fit['steps_run'], train_seconds=fit['seconds'],
          model=f'{k}-component vMF mixture alone')
      print(f'mixture alone: test NLL {base_result["test_nll"]:.4f} '
            f'(validation {fit["best_validation"]:.4f} at step '
            f'{fit["best_step"]}, {fit["seconds"]:.0f}s)', flush=True)
  q = training.ircpm_flow(sphere, FLAGS.layers, (FLAGS.hidden, FLAGS.hidden),
                          output_scale=FLAGS.output_scale,
                          shared=FLAGS.shared, certified=FLAGS.certified,
                          seed=FLAGS.seed, base=base, zero_output=mixture)
  print(f'{FLAGS.dataset} seed {FLAGS.seed}: train/val/test = '
        f'{len(split.train)}/{len(split.validation)}/{len(split.test)}; '
        f'{sum(int(np.prod(v.shape)) for v in q.trainable_variables)} '
        'parameters', flush=True)
  learning_rate = FLAGS.learning_rate or (1e-3 if mixture else 5e-3)
  variables = None
  if base_result is not None and not FLAGS.joint:
    variables = list(q.bijector.trainable_variables)
  fit = training.fit_nll(q, split.train, split.validation, FLAGS.steps,
                         variables=variables,
                         batch_size=batch, learning_rate=learning_rate,
                         eval_every=FLAGS.eval_every, patience=FLAGS.patience,
                         seed=FLAGS.seed, log_every=100,
                         jit_compile=FLAGS.jit_compile,
                         fold_penalty=FLAGS.fold_penalty,
                         fold_margin=FLAGS.fold_margin)
  test_nll = training.batched_nll(q, split.test)
  start = time.time()
  report = diagnostics.check_diffeomorphism(
      q.bijector, num_points=FLAGS.check_points,
      points=tf.constant(np.concatenate([split.train, split.test]),
                         tf.float32))
  check_seconds = time.time() - start
  print(f'test NLL {test_nll:.4f}  (best validation {fit["best_validation"]:.4f} '
        f'at step {fit["best_step"]} of {fit["steps_run"]}, '
        f'{fit["seconds"]:.0f}s)')
  print(report.summary())
  kind = 'certified MLP' if FLAGS.certified else 'MLP'
  result = dict(
      dataset=FLAGS.dataset, seed=FLAGS.seed, test_nll=test_nll,
      validation_nll=fit['best_validation'], best_step=fit['best_step'],
      steps_run=fit['steps_run'], folded=fit['folded'],
      train_seconds=fit['seconds'],
      model=(f'{FLAGS.layers} IRCPMs, {"shared" if FLAGS.shared else "separate"}'
             f' {kind} ψ [{FLAGS.hidden}, {FLAGS.hidden}] × '
             f'{FLAGS.output_scale:g}, {base_desc}'),
      base_alone=base_result,
      flags=dict(layers=FLAGS.layers, hidden=FLAGS.hidden,
                 output_scale=FLAGS.output_scale, shared=FLAGS.shared,
                 certified=FLAGS.certified, steps=FLAGS.steps,
                 batch_size=FLAGS.batch_size,
                 learning_rate=learning_rate, base=FLAGS.base,
                 components=FLAGS.components,
                 concentration=FLAGS.concentration,
                 base_steps=FLAGS.base_steps,
                 base_learning_rate=FLAGS.base_learning_rate,
                 joint=FLAGS.joint, jit_compile=FLAGS.jit_compile,
                 eval_every=FLAGS.eval_every, patience=FLAGS.patience,
                 fold_penalty=FLAGS.fold_penalty,
                 fold_margin=FLAGS.fold_margin),
      diffeomorphism=dict(passed=report.passed,
                          min_det_uniform=report.min_det_uniform,
                          min_det_points=report.min_det_points,
                          max_roundtrip_error=report.max_roundtrip_error,
                          all_converged=report.all_converged,
                          num_points=FLAGS.check_points,
                          seconds=check_seconds),
      history=fit['history'])
  stem = os.path.join(FLAGS.output_dir,
                      f'{FLAGS.dataset}_{FLAGS.base}_seed{FLAGS.seed}')
  if FLAGS.figure and save_density_map(
      stem + '.png', q, split.test,
      f'{FLAGS.dataset} (seed {FLAGS.seed}): test NLL {test_nll:.3f}'):
    result['figure'] = stem + '.png'
  with open(stem + '.json', 'w') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
