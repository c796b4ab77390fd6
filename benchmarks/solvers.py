r"""Newton vs the paper's gradient descent for the c-transform solve.

Times `IRCPM.solve` (median of repeats, after a warm-up call that traces)
for both methods on the same points and potential, reports the ratio
measured in this one run, the iteration counts and the distance between the
two minimisers. Writes JSON next to the printed table.

  python -m benchmarks.solvers [--points=4096] [--repeats=5] \
      [--output=benchmarks/solvers.json]
"""

import os
import platform

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

from benchmarks import common
import tfp_ircpm as ircpm

flags.DEFINE_integer('points', 4096, 'Batch of points per solve.')
flags.DEFINE_integer('repeats', 5, 'Timed repetitions (median reported).')
flags.DEFINE_string('output', 'benchmarks/solvers.json', 'JSON output path.')
FLAGS = flags.FLAGS


def main(_):
  rows = []
  cases = [('S2', ircpm.manifolds.Sphere(2)), ('T2', ircpm.manifolds.Torus(2))]
  for name, manifold in cases:
    for dtype, scale in [(tf.float32, 0.3), (tf.float64, 0.3),
                         (tf.float32, 1.5), (tf.float64, 1.5)]:
      # output_scale 0.3: near-identity maps (a fresh model); 1.5: ‖Hess ψ‖
      # near 1, the regime of trained potentials, where descent slows down.
      psi = ircpm.potentials.MLP(manifold, (128, 128), output_scale=scale,
                                 seed=0, dtype=dtype)
      x = manifold.uniform(dtype).sample(FLAGS.points, seed=1)
      result = {}
      for method in ('newton', 'gradient'):
        bij = ircpm.IRCPM(manifold, psi, method=method)
        res = bij.solve(x)
        result[method] = dict(
            seconds=common.median_seconds(lambda b=bij: b.solve(x).point,
                                          FLAGS.repeats),
            mean_iterations=float(tf.reduce_mean(
                tf.cast(res.iterations, tf.float32))),
            max_iterations=int(tf.reduce_max(res.iterations)),
            converged=bool(tf.reduce_all(res.converged)),
            point=res.point)
      gap = float(tf.reduce_max(manifold.dist(result['newton'].pop('point'),
                                              result['gradient'].pop('point'))))
      rows.append(dict(manifold=name, dtype=dtype.name, points=FLAGS.points,
                       output_scale=scale,
                       newton=result['newton'], gradient=result['gradient'],
                       speedup=result['gradient']['seconds']
                       / result['newton']['seconds'],
                       max_distance_between_minimisers=gap))
  header = (f"{'case':<18}{'newton s':>10}{'it mean/max':>13}"
            f"{'descent s':>11}{'it mean/max':>13}{'speed-up':>10}{'gap':>10}")
  print(header)
  for r in rows:
    n, g = r['newton'], r['gradient']
    case = f"{r['manifold']} {r['dtype']} x{r['output_scale']}"
    print(f"{case:<18}{n['seconds']:>10.3f}"
          f"{n['mean_iterations']:>8.1f}/{n['max_iterations']:<4d}"
          f"{g['seconds']:>11.3f}{g['mean_iterations']:>8.1f}/"
          f"{g['max_iterations']:<4d}{r['speedup']:>10.2f}"
          f"{r['max_distance_between_minimisers']:>10.1e}")
  common.write_json(dict(machine=platform.platform(), cpus=os.cpu_count(),
                         rows=rows), FLAGS.output)
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
