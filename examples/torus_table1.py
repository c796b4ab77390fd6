r"""Reproduces Table 1 of the paper: IRCPMs on T² for targets u₁, u₂, u₃.

Each row trains a stack of `--stack` IRCPMs sharing one ψ by reverse KL
(Eq. 9), then reports ESS and KL(q‖p) on 20000 samples (the paper's
protocol), the parameter count and the CPU wall time. Results go to
`--output_dir` as JSON and a markdown table; with matplotlib installed,
a figure per row like the paper's Fig. 2 (energy, samples, ψ, ψ^c).

  python examples/torus_table1.py [--rows=u1:mlp,u2:alpha] [--steps=1500]

Rows: u1:{mlp,sym,alpha,alpha_m}, u2:{mlp,alpha,alpha_m},
u3:{mlp,alpha,alpha_m}. See `tfp_ircpm.targets` for the (periodic) forms of
u₁ and u₃ used.
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
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training

tfd = tfp.distributions

ALL_ROWS = ('u1:mlp,u1:sym,u1:alpha,u1:alpha_m,u2:mlp,u2:alpha,u2:alpha_m,'
            'u3:mlp,u3:alpha,u3:alpha_m')
PAPER_ESS = {'u1:mlp': 84.2, 'u1:sym': 94.4, 'u1:alpha': 97.8,
             'u1:alpha_m': 98.6, 'u2:mlp': 99.9, 'u2:alpha': 95.6,
             'u2:alpha_m': 96.9, 'u3:mlp': 98.2, 'u3:alpha': 98.4,
             'u3:alpha_m': 99.3}
NAMES = {'mlp': 'MLP', 'sym': 'Symmetric MLP', 'alpha': 'αu',
         'alpha_m': 'αu + ∇uᵀM∇u'}

flags.DEFINE_string('rows', ALL_ROWS, 'Comma-separated target:psi rows.')
flags.DEFINE_integer('steps', 1500, 'Adam steps per row.')
flags.DEFINE_integer('batch_size', 256, 'Samples per step.')
flags.DEFINE_float('learning_rate', 3e-3, 'Initial Adam learning rate.')
flags.DEFINE_integer('stack', 3, 'IRCPMs in the shared-parameter stack.')
flags.DEFINE_integer('eval_samples', 20000, 'Samples for ESS and KL.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('output_dir', 'results/torus', 'Where to write results.')
FLAGS = flags.FLAGS


def make_potential(kind: str, target):
  torus = target.manifold
  if kind == 'mlp':
    return ircpm.potentials.MLP(torus, (32, 32), output_scale=1 / 20,
                                seed=FLAGS.seed)
  if kind == 'sym':
    return ircpm.potentials.InvariantMLP(
        torus, ircpm.potentials.diagonal_shift_features, 2, (32, 32),
        output_scale=1 / 20, seed=FLAGS.seed)
  return ircpm.potentials.EnergyPotential(
      torus, target.energy, quadratic=(kind == 'alpha_m'), alpha=0.1)


def save_figure(path, target, q, psi, bij):
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  n = 100
  g = (np.arange(n) + 0.5) * 2 * np.pi / n
  a, b = np.meshgrid(g, g, indexing='ij')
  grid = tf.constant(np.stack([a.ravel(), b.ravel()], -1), tf.float32)
  u = target.energy(grid).numpy().reshape(n, n)
  psi_v = psi(grid).numpy().reshape(n, n)
  y_star = bij.solve(grid).point
  psi_c = ircpm.solvers.cost(target.manifold, psi, grid,
                             y_star).numpy().reshape(n, n)
  samples = q.sample(5000, seed=(FLAGS.seed, 7)).numpy()
  fig, axes = plt.subplots(1, 4, figsize=(16, 4))
  for ax, img, title in [(axes[0], u, 'target energy u'), (axes[2], psi_v, 'ψ'),
                         (axes[3], psi_c, 'ψ^c')]:
    ax.imshow(img.T, origin='lower', extent=[0, 2 * np.pi, 0, 2 * np.pi])
    ax.set_title(title)
  axes[1].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3)
  axes[1].set_xlim(0, 2 * np.pi)
  axes[1].set_ylim(0, 2 * np.pi)
  axes[1].set_title('model samples')
  fig.savefig(path, dpi=80, bbox_inches='tight')
  plt.close(fig)
  return True


def run_row(row: str):
  target_name, kind = row.split(':')
  target = targets_lib.TARGETS[target_name]()
  psi = make_potential(kind, target)
  bij = ircpm.IRCPM(target.manifold, psi)
  q = tfd.TransformedDistribution(target.manifold.uniform(),
                                  ircpm.bijectors.Chain([bij] * FLAGS.stack))
  print(f'== {row}: {NAMES[kind]}, {psi.num_parameters} parameters', flush=True)
  fit = training.fit_and_evaluate(
      q, target, FLAGS.steps, batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
      eval_samples=FLAGS.eval_samples)
  result = dict(row=row, target=target_name, psi=NAMES[kind],
                parameters=psi.num_parameters,
                paper_ess=PAPER_ESS.get(row), ess=100 * fit['ess'],
                kl=fit['kl'], train_seconds=fit['seconds'], steps=FLAGS.steps,
                stack=FLAGS.stack, final_loss=fit['losses'][-1])
  fig_path = os.path.join(FLAGS.output_dir, f'{row.replace(":", "_")}.png')
  if save_figure(fig_path, target, q, psi, bij):
    result['figure'] = fig_path
  print(f'   ESS {result["ess"]:.1f}% (paper {result["paper_ess"]}%)  '
        f'KL {result["kl"]:.4f}  {fit["seconds"]:.0f}s', flush=True)
  return result


def main(_):
  tf.random.set_seed(FLAGS.seed)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  results = [run_row(r) for r in FLAGS.rows.split(',') if r]
  cols = ['target', 'psi', 'parameters', 'paper_ess', 'ess', 'kl',
          'train_seconds']
  table = _tables.markdown_table(results, cols)
  print(table)
  with open(os.path.join(FLAGS.output_dir, 'table1.json'), 'w') as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(FLAGS.output_dir, 'table1.md'), 'w') as f:
    f.write(table + '\n')


if __name__ == '__main__':
  app.run(main)
