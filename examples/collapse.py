r"""The single-IRCPM collapse on S², certified against uncertified ψ.

Trains one IRCPM (no stack) with an MLP [128, 128] ψ on the S² four-mode
target by reverse KL (Adam 1e-3, batch 256, constant rate) for several seeds,
with and without `certified=True`, records ESS (on `--eval_samples` samples)
every `--eval_every` steps, and runs `check_diffeomorphism` at the end.
Writes JSON and (with matplotlib) a PNG of ESS against step.

  python examples/collapse.py [--seeds=0,1,2] [--steps=1500]
"""

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import diagnostics
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training

tfd = tfp.distributions

flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated seeds.')
flags.DEFINE_integer('steps', 1500, 'Adam steps per run.')
flags.DEFINE_integer('eval_every', 100, 'Steps between ESS evaluations.')
flags.DEFINE_integer('eval_samples', 4000, 'Samples per ESS evaluation.')
flags.DEFINE_string('modes', 'uncertified,certified', 'Which runs.')
flags.DEFINE_string('output_dir', 'results/collapse', 'Where to write.')
FLAGS = flags.FLAGS


def run(seed: int, certified: bool):
  target = targets_lib.sphere_four_modes()
  sphere = target.manifold
  psi = ircpm.potentials.MLP(sphere, (128, 128), output_scale=1 / 20,
                             seed=seed, certified=certified)
  bij = ircpm.IRCPM(sphere, psi, nonconvergence='ignore')
  q = tfd.TransformedDistribution(sphere.uniform(), bij)
  curve = []

  def callback(step, loss):
    del loss
    if step % FLAGS.eval_every == 0 or step == FLAGS.steps - 1:
      m = training.evaluate(q, target, FLAGS.eval_samples, seed=(seed, step))
      curve.append((step, 100 * m['ess'], m['kl']))

  start = time.time()
  training.train(lambda s: training.reverse_kl_loss(q, target, 256, seed=s),
                 q.trainable_variables, FLAGS.steps, learning_rate=1e-3,
                 seed=seed, log_every=0, callback=callback)
  report = diagnostics.check_diffeomorphism(bij, num_points=100000,
                                            bound_points=100000)
  ess = [c[1] for c in curve]
  peak = max(ess)
  result = dict(seed=seed, certified=certified, curve=curve, peak_ess=peak,
                final_ess=ess[-1], drop_after_peak=peak - min(
                    ess[ess.index(peak):]),
                final_kl=curve[-1][2], seconds=time.time() - start,
                diffeomorphism=report.summary(), passed=report.passed,
                bounds=report.bounds[0].verdict())
  print(f"{'certified' if certified else 'uncertified'} seed {seed}: peak "
        f"ESS {peak:.1f}%, final {ess[-1]:.1f}%, drop after peak "
        f"{result['drop_after_peak']:.1f} points; {report.summary()}",
        flush=True)
  return result


def main(_):
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  results = []
  for mode in FLAGS.modes.split(','):
    for seed in [int(s) for s in FLAGS.seeds.split(',')]:
      results.append(run(seed, mode == 'certified'))
  with open(os.path.join(FLAGS.output_dir, 'collapse.json'), 'w') as f:
    json.dump(results, f, indent=2)
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  fig, ax = plt.subplots(figsize=(7, 4))
  for r in results:
    steps, ess = [c[0] for c in r['curve']], [c[1] for c in r['curve']]
    ax.plot(steps, ess, color='tab:blue' if r['certified'] else 'tab:red',
            label=f"{'certified' if r['certified'] else 'uncertified'} "
                  f"seed {r['seed']}")
  ax.set_xlabel('step')
  ax.set_ylabel('ESS (%)')
  ax.set_title('single IRCPM on the S² four-mode target')
  ax.legend(fontsize=7)
  fig.savefig(os.path.join(FLAGS.output_dir, 'collapse.png'), dpi=90,
              bbox_inches='tight')


if __name__ == '__main__':
  app.run(main)
