r"""Reproduces Sec. 5.2: a 3-fold shared IRCPM stack on the S² four-mode target.

ψ is an MLP [128, 128] on the point's Euclidean coordinates with its output
divided by 20; the three IRCPMs share it. Trains by reverse KL with exact
log-dets, reports ESS and KL on 20000 samples, the parameter count and wall
time, runs the bound check of Secs. 4.3/5.2 on 10⁶ uniform points, and
writes JSON, a markdown table and (with matplotlib) a figure like Fig. 3.

  python examples/sphere_s2.py [--steps=6000] [--learning_rate=2e-3]
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import _tables  # examples/_tables.py, beside this script
import tfp_ircpm as ircpm
from tfp_ircpm import bounds
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training

tfd = tfp.distributions

flags.DEFINE_integer('steps', 6000, 'Adam steps.')
flags.DEFINE_integer('batch_size', 256, 'Samples per step.')
flags.DEFINE_float('learning_rate', 2e-3, 'Initial Adam learning rate (cosine decay).')
flags.DEFINE_integer('stack', 3, 'IRCPMs in the stack.')
flags.DEFINE_bool('share', True, 'One ψ shared by every IRCPM of the stack '
                  '(the paper); --noshare gives each its own.')
flags.DEFINE_integer('hidden', 128, 'Width of the two hidden layers.')
flags.DEFINE_integer('eval_samples', 20000, 'Samples for ESS and KL.')
flags.DEFINE_integer('bound_points', 10 ** 6, 'Points for the bound check.')
flags.DEFINE_bool('certified', False, 'Use certified potentials '
                  '(potentials.MLP(certified=True)).')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('output_dir', 'results/sphere', 'Where to write results.')
FLAGS = flags.FLAGS


def save_figure(path, target, q, psi):
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  lon = np.linspace(-np.pi, np.pi, 200)
  lat = np.linspace(-np.pi / 2, np.pi / 2, 100)
  lo, la = np.meshgrid(lon, lat)
  pts = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo),
                  np.sin(la)], -1).reshape(-1, 3)
  grid = tf.constant(pts, tf.float32)
  logp = target.log_prob(grid).numpy().reshape(lo.shape)
  psi_v = psi(grid).numpy().reshape(lo.shape)
  s = q.sample(5000, seed=(FLAGS.seed, 7)).numpy()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  axes[0].pcolormesh(lo, la, np.exp(logp))
  axes[0].set_title('target density')
  axes[1].scatter(np.arctan2(s[:, 1], s[:, 0]), np.arcsin(np.clip(s[:, 2], -1, 1)),
                  s=1, alpha=0.3)
  axes[1].set_xlim(-np.pi, np.pi)
  axes[1].set_ylim(-np.pi / 2, np.pi / 2)
  axes[1].set_title('model samples')
  axes[2].pcolormesh(lo, la, -psi_v)
  axes[2].set_title('-ψ')
  for ax in axes:
    ax.set_xlabel('longitude')
    ax.set_ylabel('latitude')
  fig.savefig(path, dpi=80, bbox_inches='tight')
  plt.close(fig)
  return True


def main(_):
  tf.random.set_seed(FLAGS.seed)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  target = targets_lib.sphere_four_modes()
  sphere = target.manifold
  psis = [ircpm.potentials.MLP(sphere, (FLAGS.hidden, FLAGS.hidden),
                               output_scale=1 / 20, seed=FLAGS.seed + i,
                               certified=FLAGS.certified)
          for i in range(1 if FLAGS.share else FLAGS.stack)]
  bijectors = [ircpm.IRCPM(sphere, psi) for psi in psis]
  if FLAGS.share:
    bijectors = bijectors * FLAGS.stack
  q = tfd.TransformedDistribution(sphere.uniform(), ircpm.bijectors.Chain(bijectors))
  num_parameters = sum(psi.num_parameters for psi in psis)
  print(f'{num_parameters} parameters; log Z = {target.log_normalizer:.6f}')
  fit = training.fit_and_evaluate(
      q, target, FLAGS.steps, batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
      eval_samples=FLAGS.eval_samples)
  # The stack is a diffeomorphism if every link is: check each ψ.
  reports = [bounds.check_bounds(sphere, psi, num_points=FLAGS.bound_points)
             for psi in psis]
  report = max(reports, key=lambda r: r.max_hess / max(r.eta, 1e-12))
  name = 'certified MLP' if FLAGS.certified else 'MLP'
  result = dict(target='S² four modes',
                psi=f'{name} [{FLAGS.hidden}, {FLAGS.hidden}] / 20',
                stack=FLAGS.stack, shared=FLAGS.share,
                parameters=num_parameters,
                paper_ess=99.5, paper_kl=0.003, ess=100 * fit['ess'],
                kl=fit['kl'], train_seconds=fit['seconds'], steps=FLAGS.steps,
                final_loss=fit['losses'][-1], bounds=report._asdict(),
                bound_verdict=report.verdict(),
                all_guaranteed=all(r.guaranteed for r in reports))
  fig = os.path.join(FLAGS.output_dir, 's2.png')
  if save_figure(fig, target, q, psis[0]):
    result['figure'] = fig
  table = _tables.markdown_table(
      [result], ['target', 'psi', 'parameters', 'paper_ess', 'ess',
                 'paper_kl', 'kl', 'train_seconds'])
  print(table)
  print(report.verdict())
  with open(os.path.join(FLAGS.output_dir, 's2.json'), 'w') as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(FLAGS.output_dir, 's2.md'), 'w') as f:
    f.write(table + '\n\n' + report.verdict() + '\n')


if __name__ == '__main__':
  app.run(main)
