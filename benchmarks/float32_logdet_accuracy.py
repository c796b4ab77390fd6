r"""How accurate are float32 log-dets? Measured against the same model in float64.

For random IRCPMs (MLP ψ, hidden (32, 32), several output scales and seeds)
on S², T², S³, T¹ × S² and S² × S², compares in float32

  * ildj(y) (closed form: nested-tape Jacobian of exp_y(grad ψ(y))) and
  * fldj(x) after forward(x) (read off the c-transform solve's Hessian)

with the same model in float64 (the float32 weights copied exactly into a
float64 ψ; same input values), and checks fldj(x) = -ildj(f(x)) within
float32 (fresh tensors defeat TFP's bijector cache). Also reports

  * the floor: log|det| of the float64 Jacobian rounded once to float32 and
    evaluated in float32, i.e. the error of any float32 code that had the
    correctly rounded matrix;
  * the Jacobian's own entrywise error |J32 - J64| in units of eps32 and the
    first-order prediction |tr(J64⁻¹ (J32 - J64))| of the log-det error;
  * the float32 round trip d(x, f⁻¹(f(x))) (geodesic distance);
  * how many points fail TFP's `assert_bijective_and_finite` default for
    the log-dets (|fldj + ildj∘f| <= 1e-5 |ildj∘f|, atol 0).

Prints a table and writes JSON next to this file; no timing assertions.

  python -m benchmarks.float32_logdet_accuracy [--points=256] [--seeds=3] \
      [--output=benchmarks/float32_logdet_accuracy.json]

Each manifold's two bijectors are traced once; scales and seeds are applied
by assigning ψ's variables (the output scale is folded into the last layer),
so the run costs two solve traces per manifold.
"""

import os
import platform

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import common
import tfp_ircpm as ircpm

M = ircpm.manifolds

flags.DEFINE_integer('points', 256, 'Points per configuration.')
flags.DEFINE_integer('seeds', 3, 'Random ψ per (manifold, scale).')
flags.DEFINE_list('scales', ['0.05', '0.1', '0.2', '0.3'], 'Output scales.')
flags.DEFINE_list('manifolds', ['S2', 'T2', 'S3', 'T1xS2', 'S2pow2'],
                  'Manifolds to measure.')
flags.DEFINE_string('output',
                    os.path.join(os.path.dirname(__file__),
                                 'float32_logdet_accuracy.json'),
                    'JSON output path.')
FLAGS = flags.FLAGS

EPS32 = float(np.finfo(np.float32).eps)     # 1.19e-7
HIDDEN = (32, 32)

CASES = {
    'S2': lambda: M.Sphere(2),
    'T2': lambda: M.Torus(2),
    'S3': lambda: M.Sphere(3),
    'T1xS2': lambda: M.Product([M.Torus(1), M.Sphere(2)]),
    'S2pow2': lambda: M.Power(M.Sphere(2), 2),
}


def _assign(psi32, psi64, manifold, scale, seed):
  """Draws a fresh MLP(scale, seed) into psi32 and copies it exactly to psi64."""
  fresh = ircpm.potentials.MLP(manifold, HIDDEN, output_scale=1., seed=seed,
                               dtype=tf.float32)
  for dst, src in zip(psi32.weights, fresh.weights):
    dst.assign(src)
  psi32.weights[-1].assign(fresh.weights[-1] * scale)
  for dst, src in zip(psi32.biases, fresh.biases):
    dst.assign(src)
  for dst, src in zip(psi64.variables, psi32.variables):
    dst.assign(tf.cast(src, tf.float64))   # exact: float32 ⊂ float64
  for a, b in zip(psi32.variables, psi64.variables):
    assert np.array_equal(a.numpy().astype(np.float64), b.numpy())


def _stats(err, ref):
  err = np.abs(np.asarray(err, np.float64))
  rel = err / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
  return dict(abs_max=float(err.max()), abs_median=float(np.median(err)),
              rel_max=float(rel.max()), rel_median=float(np.median(rel)))


def _measure(manifold, b32, b64, n, seed):
  x64 = tf.cast(manifold.random_uniform(n, tf.float32, seed=seed + 100),
                tf.float64)
  y64 = tf.cast(manifold.random_uniform(n, tf.float32, seed=seed + 200),
                tf.float64)
  x32, y32 = tf.cast(x64, tf.float32), tf.cast(y64, tf.float32)  # exact
  ildj32 = b32.inverse_log_det_jacobian(tf.identity(y32), 1).numpy()
  ildj64 = b64.inverse_log_det_jacobian(tf.identity(y64), 1).numpy()
  # forward first, so that fldj is the solve's Hessian route (called on a
  # tensor forward has not seen, TFP's fldj falls back to -ildj(f(x)), the
  # closed form, and the comparison below would be trivially exact).
  fx32, fx64 = tf.identity(x32), tf.identity(x64)
  y_of_x32, y_of_x64 = b32.forward(fx32), b64.forward(fx64)
  fldj32 = b32.forward_log_det_jacobian(fx32, 1).numpy()
  fldj64 = b64.forward_log_det_jacobian(fx64, 1).numpy()
  back32 = b32.inverse_log_det_jacobian(tf.identity(y_of_x32), 1).numpy()
  back64 = b64.inverse_log_det_jacobian(tf.identity(y_of_x64), 1).numpy()
  # The Jacobian itself, and the floor of a float32 log-det of it.
  jac32 = b32.intrinsic_inverse_jacobian(tf.identity(y32)).numpy()
  jac64 = b64.intrinsic_inverse_jacobian(tf.identity(y64)).numpy()
  floor32 = ircpm._linalg.logabsdet(  # pylint: disable=protected-access
      tf.constant(jac64.astype(np.float32))).numpy()
  d_jac = jac32.astype(np.float64) - jac64
  predicted = np.abs(np.trace(np.linalg.solve(jac64, d_jac), axis1=-2,
                              axis2=-1))
  tfp_fail = np.abs(fldj32 + back32) > 1e-5 * np.abs(back32)
  round_trip32 = manifold.dist(x32, b32.inverse(tf.identity(y_of_x32)))
  return dict(
      ildj_abs_median=float(np.median(np.abs(ildj64))),
      ildj_abs_max=float(np.max(np.abs(ildj64))),
      ildj_abs_min=float(np.min(np.abs(ildj64))),
      ildj_vs_f64=_stats(ildj32 - ildj64, ildj64),
      fldj_vs_f64=_stats(fldj32 - fldj64, fldj64),
      fldj_plus_ildj_f32=_stats(fldj32 + back32, back32),
      fldj_plus_ildj_f64=_stats(fldj64 + back64, back64),
      floor_rounded_jacobian=_stats(floor32 - ildj64, ildj64),
      jacobian_entry_err_max_eps=float(np.max(np.abs(d_jac)) / EPS32),
      jacobian_cond_max=float(np.max(np.linalg.cond(jac64))),
      predicted_first_order_max=float(np.max(predicted)),
      tfp_default_failures=int(np.sum(tfp_fail)),
      round_trip_f32_max=float(tf.reduce_max(round_trip32)),
      points=n)


def main(_):
  n = FLAGS.points
  rows = []
  for name in FLAGS.manifolds:
    manifold = CASES[name]()
    psi32 = ircpm.potentials.MLP(manifold, HIDDEN, output_scale=1., seed=0,
                                 dtype=tf.float32)
    psi64 = ircpm.potentials.MLP(manifold, HIDDEN, output_scale=1., seed=0,
                                 dtype=tf.float64)
    b32 = ircpm.IRCPM(manifold, psi32)
    b64 = ircpm.IRCPM(manifold, psi64)
    for scale in [float(s) for s in FLAGS.scales]:
      for seed in range(FLAGS.seeds):
        _assign(psi32, psi64, manifold, scale, seed)
        row = dict(manifold=name, dim=manifold.dim, scale=scale, seed=seed)
        row.update(_measure(manifold, b32, b64, n, seed))
        rows.append(row)
        print(f'{name} x{scale} seed {seed}: ildj err '
              f"{row['ildj_vs_f64']['abs_max']:.2e}", flush=True)

  def worst(rs, key, stat):
    return max(r[key][stat] for r in rs)

  def median(rs, key):
    return float(np.median([r[key]['abs_median'] for r in rs]))

  summary = []
  for name in FLAGS.manifolds:
    for scale in [float(s) for s in FLAGS.scales]:
      rs = [r for r in rows if r['manifold'] == name and r['scale'] == scale]
      summary.append(dict(
          manifold=name, dim=rs[0]['dim'], scale=scale, configs=len(rs),
          ildj_abs_median=float(np.median([r['ildj_abs_median'] for r in rs])),
          ildj_err_max=worst(rs, 'ildj_vs_f64', 'abs_max'),
          ildj_err_median=median(rs, 'ildj_vs_f64'),
          ildj_rel_max=worst(rs, 'ildj_vs_f64', 'rel_max'),
          ildj_rel_median=float(np.median(
              [r['ildj_vs_f64']['rel_median'] for r in rs])),
          fldj_err_max=worst(rs, 'fldj_vs_f64', 'abs_max'),
          fldj_err_median=median(rs, 'fldj_vs_f64'),
          consistency_f32_max=worst(rs, 'fldj_plus_ildj_f32', 'abs_max'),
          consistency_f32_median=median(rs, 'fldj_plus_ildj_f32'),
          consistency_f64_max=worst(rs, 'fldj_plus_ildj_f64', 'abs_max'),
          floor_max=worst(rs, 'floor_rounded_jacobian', 'abs_max'),
          jac_entry_err_eps=max(r['jacobian_entry_err_max_eps'] for r in rs),
          predicted_max=max(r['predicted_first_order_max'] for r in rs),
          cond_max=max(r['jacobian_cond_max'] for r in rs),
          tfp_failures=sum(r['tfp_default_failures'] for r in rs),
          round_trip_f32_max=max(r['round_trip_f32_max'] for r in rs),
          points=sum(r['points'] for r in rs)))

  header = (f"{'case':<14}{'|ildj| med':>11}{'ildj err max/med':>19}"
            f"{'rel max/med':>18}{'fldj err max/med':>19}"
            f"{'f+i∘f f32 max/med':>20}{'f64':>9}{'floor':>9}"
            f"{'δJ/eps':>8}{'pred':>9}{'TFP fail':>11}{'d(x,f⁻¹f x)':>12}")
  print(header)
  for s in summary:
    case = f"{s['manifold']} x{s['scale']}"
    print(f"{case:<14}{s['ildj_abs_median']:>11.1e}"
          f"{s['ildj_err_max']:>10.1e}/{s['ildj_err_median']:<8.1e}"
          f"{s['ildj_rel_max']:>9.1e}/{s['ildj_rel_median']:<8.1e}"
          f"{s['fldj_err_max']:>10.1e}/{s['fldj_err_median']:<8.1e}"
          f"{s['consistency_f32_max']:>11.1e}/"
          f"{s['consistency_f32_median']:<8.1e}"
          f"{s['consistency_f64_max']:>9.1e}{s['floor_max']:>9.1e}"
          f"{s['jac_entry_err_eps']:>8.1f}{s['predicted_max']:>9.1e}"
          f"{s['tfp_failures']:>6d}/{s['points']:<4d}"
          f"{s['round_trip_f32_max']:>12.1e}")
  overall = dict(
      ildj_err_max=max(s['ildj_err_max'] for s in summary),
      fldj_err_max=max(s['fldj_err_max'] for s in summary),
      consistency_f32_max=max(s['consistency_f32_max'] for s in summary),
      consistency_f64_max=max(s['consistency_f64_max'] for s in summary),
      round_trip_f32_max=max(s['round_trip_f32_max'] for s in summary),
      eps32=EPS32)
  print('overall worst:', ', '.join(f'{k} {v:.2e}' for k, v in overall.items()))
  common.write_json(dict(machine=platform.platform(), cpus=os.cpu_count(),
                         tensorflow=tf.__version__, hidden=list(HIDDEN),
                         points=n, seeds=FLAGS.seeds, overall=overall,
                         summary=summary, rows=rows), FLAGS.output)
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
