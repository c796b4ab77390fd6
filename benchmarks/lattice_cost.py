r"""Cost of a training step and peak memory against the lattice size L.

Runs `examples/lattice.py` once per (model, L, ψ), each in its own process
and one after another (so peak RSS is that configuration's own), for a few
Adam steps and a small exact evaluation, and tabulates its measurements:
seconds per training step (steady state: the first, tracing step left out),
peak RSS during training, and seconds per sample of the exact log q (the
evaluation's wall time over its samples; it includes the evaluation's
tracing, so it is an upper bound). Ratios against L = 4 are the figures to
quote; absolute seconds depend on the machine's load. Writes JSON.

  python -m benchmarks.lattice_cost [--sizes=4,8,16] [--steps=6]
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parent.parent

flags.DEFINE_list('sizes', ['4', '8', '16'], 'Lattice sizes L.')
flags.DEFINE_list('models', ['xy', 'o3'], 'Lattice models.')
flags.DEFINE_list('psis', ['equivariant', 'mlp'], 'Potentials.')
flags.DEFINE_integer('steps', 6, 'Adam steps per configuration.')
flags.DEFINE_integer('eval_samples', 25, 'Samples of the exact evaluation.')
flags.DEFINE_string('output', 'benchmarks/lattice_cost.json', 'JSON path.')
FLAGS = flags.FLAGS

# The configurations of the grid in docs/results/lattice.md (examples/lattice.py flags).
LAYERS = {'xy': 4, 'o3': 2}


def measure(model: str, size: int, psi: str) -> dict:
  with tempfile.TemporaryDirectory() as out:
    cmd = [sys.executable, str(ROOT / 'examples' / 'lattice.py'),
           f'--model={model}', f'--L={size}', '--beta=0.9', f'--psi={psi}',
           '--bond_term', f'--layers={LAYERS[model]}',
           f'--steps={FLAGS.steps}', f'--eval_samples={FLAGS.eval_samples}',
           f'--eval_batch={FLAGS.eval_samples}', '--mcmc_sweeps=0',
           f'--output_dir={out}']
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
    [name] = os.listdir(out)
    with open(os.path.join(out, name)) as f:
      r = json.load(f)
  return dict(model=model, L=size, psi=psi,
              dim=size * size * (1 if model == 'xy' else 2),
              params=r['params'],
              estimator=r['estimator'], layers=r['layers'],
              seconds_per_step=r['seconds_per_step'],
              peak_rss_mb_train=r['peak_rss_mb_train'],
              eval_seconds_per_sample=r['eval_seconds'] / FLAGS.eval_samples)


def main(_):
  rows = []
  print('| model | L | dim | ψ | estimator | s/step | × L=4 | train RSS MB '
        '| eval s/sample |')
  print('|---|---|---|---|---|---|---|---|---|')
  for model in FLAGS.models:
    for psi in FLAGS.psis:
      first = None
      for size in map(int, FLAGS.sizes):
        r = measure(model, size, psi)
        first = first or r['seconds_per_step']
        r['ratio_to_smallest'] = r['seconds_per_step'] / first
        rows.append(r)
        print(f"| {model} | {size} | {r['dim']} | {psi} | {r['estimator']} "
              f"| {r['seconds_per_step']:.3g} | {r['ratio_to_smallest']:.2g} "
              f"| {r['peak_rss_mb_train']:.0f} "
              f"| {r['eval_seconds_per_sample']:.3g} |", flush=True)
  with open(FLAGS.output, 'w') as f:
    json.dump(dict(steps=FLAGS.steps, eval_samples=FLAGS.eval_samples,
                   machine=dict(cpus=os.cpu_count()), rows=rows), f, indent=1)


if __name__ == '__main__':
  app.run(main)
