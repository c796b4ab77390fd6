r"""The performance suite of issue 6: ratios against the floor and the paper.

Every figure is a ratio of medians measured in this one run (each timed
function is traced and warmed up first), so that machine load cancels as far
as it can. Sections:

1. floor: `log_prob` (closed-form inverse + exact intrinsic log-det, Eq. 4)
   over the time of the Hessian of ψ alone on the same points, the floor of
   any exact log-det.
2. sample: `experimental_sample_and_log_prob` (c-transform solve + IFT step
   + log-det) over `log_prob`, Newton against the paper's unit-step descent,
   with mean/max solver iterations.
3. train: one reverse-KL step (Eq. 9) with IFT gradients against backprop
   through K unrolled descent steps (the paper), K = 10, 30, 100: time and
   peak memory (TF's CPU allocator statistics).
4. xla: `jit_compile=True` against plain `tf.function`.
5. time to quality: read from `benchmarks/time_to_quality.json` (written by
   `python -m benchmarks.time_to_quality`), or run with --time_to_quality.
6. scaling: log_prob and sample on Tᵈ and (S²)ᵏ against d, with fitted
   exponents.

  python -m benchmarks.run [--quick] [--output=benchmarks/results.json]
"""

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TF's default CPU allocator keeps no statistics for tf.function steps
# (get_memory_info reports a peak of 0); the BFC allocator does.
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import _autodiff
from tfp_ircpm import solvers
from tfp_ircpm import targets as targets_lib
from tfp_ircpm import training

tfd = tfp.distributions

flags.DEFINE_bool('quick', False, 'Small sizes and few cases (< 2 min).')
flags.DEFINE_integer('repeats', 5, 'Timed repetitions (median reported).')
flags.DEFINE_string('output', 'benchmarks/results.json', 'JSON output path.')
flags.DEFINE_bool('time_to_quality', False,
                  'Run the time-to-quality training (minutes) instead of '
                  'reading benchmarks/time_to_quality.json.')
flags.DEFINE_list('scaling_dims', ['2', '4', '8', '16', '32', '64', '128',
                                   '256'], 'Dimensions d for the scaling '
                  'section (full mode).')
flags.DEFINE_integer('scaling_sample_max', 64, 'Largest d at which the '
                     'scaling section also times sample.')
flags.DEFINE_list('train_iterations', ['10', '30', '100'], 'Solver '
                  'iterations K of the train section (full mode).')
flags.DEFINE_string('sections',
                    'floor,sample,profile,train,xla,quality,scaling',
                    'Comma-separated sections to run.')
FLAGS = flags.FLAGS

SECTIONS = ('floor', 'sample', 'profile', 'train', 'xla', 'quality',
            'scaling')
TTQ_JSON = 'benchmarks/time_to_quality.json'


# -- timing and memory ---------------------------------------------------------


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of fn() over `repeats` calls, after one warm-up call."""
  _block(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _block(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved_medians(fns: Sequence[Callable[[], object]],
                        repeats: int) -> List[float]:
  """Median wall times of several functions timed in turn, round by round.

  On a shared machine the load drifts over seconds; timing the functions
  alternately exposes them to the same load, so their ratio is steadier than
  that of two back-to-back medians.
  """
  for fn in fns:
    _block(fn())
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, bucket in zip(fns, times):
      start = time.perf_counter()
      _block(fn())
      bucket.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def _block(out):
  for t in tf.nest.flatten(out):
    if isinstance(t, tf.Tensor):
      t.numpy()


def _vm_kib(field: str) -> Optional[int]:
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def peak_memory_mib(fn: Callable[[], object]) -> Optional[float]:
  """Peak memory above the baseline while fn() runs, in MiB.

  TF's CPU allocator statistics (peak minus current before the call) when
  available, else the kernel's resident high-water mark (VmHWM, reset
  through /proc/self/clear_refs), which undercounts memory that the
  allocator reuses. fn must already be traced, so tracing is not counted.
  """
  try:
    tf.config.experimental.reset_memory_stats('CPU:0')
    base = tf.config.experimental.get_memory_info('CPU:0')['current']
    _block(fn())
    peak = tf.config.experimental.get_memory_info('CPU:0')['peak']
    return (peak - base) / 2**20
  except (ValueError, RuntimeError, tf.errors.OpError):
    pass
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    return None
  base = _vm_kib('VmRSS')
  _block(fn())
  peak = _vm_kib('VmHWM')
  return None if base is None or peak is None else (peak - base) / 1024.


def _load() -> List[float]:
  return [round(x, 2) for x in os.getloadavg()]


# -- models --------------------------------------------------------------------


def _manifold(name: str):
  if name == 'S2':
    return ircpm.manifolds.Sphere(2)
  if name == 'T2':
    return ircpm.manifolds.Torus(2)
  kind, d = name[0], int(name[1:])
  if kind == 'T':
    return ircpm.manifolds.Torus(d)
  return ircpm.manifolds.Power(ircpm.manifolds.Sphere(2), d // 2)


def _model(manifold, hidden=(128, 128), scale=0.3, method='newton',
           tolerance=None, max_iterations=None):
  psi = ircpm.potentials.MLP(manifold, hidden, output_scale=scale, seed=0)
  bij = ircpm.IRCPM(manifold, psi, method=method, tolerance=tolerance,
                    max_iterations=max_iterations, nonconvergence='ignore')
  return psi, bij, tfd.TransformedDistribution(manifold.uniform(), bij)


def hessian_floor_fns(manifold, psi):
  """tf.functions giving Hess ψ at points [N, ambient] → (ambient, tangent).

  Ambient: the Euclidean Hessian [N, A, A] (A reverse passes); tangent: the
  Hessian of v ↦ ψ(exp_y(E_y v)) [N, d, d] (d passes, plus the exp map).
  Either is a lower bound on an exact log-det of exp(grad ψ).
  """
  @tf.function
  def ambient(y):
    with tf.GradientTape(persistent=True) as outer:
      outer.watch(y)
      with tf.GradientTape() as inner:
        inner.watch(y)
        value = solvers.call_potential(psi, y)
      g = inner.gradient(value, y)
    return _autodiff.batch_jacobian(outer, g, y)

  @tf.function
  def tangent(y):
    frame = manifold.tangent_frame(y)
    v = tf.zeros([tf.shape(y)[0], manifold.dim], y.dtype)
    with tf.GradientTape(persistent=True) as outer:
      outer.watch(v)
      with tf.GradientTape() as inner:
        inner.watch(v)
        value = solvers.call_potential(
            psi, manifold.expmap(y, tf.linalg.matvec(frame, v)))
      g = inner.gradient(value, v)
    return _autodiff.batch_jacobian(outer, g, v)

  return ambient, tangent


# -- sections ------------------------------------------------------------------


def floor_section(cases, points, repeats) -> List[Dict]:
  rows = []
  for name in cases:
    m = _manifold(name)
    psi, _, q = _model(m)
    y = m.uniform().sample(points, seed=1)
    ambient, tangent = hessian_floor_fns(m, psi)
    log_prob = tf.function(q.log_prob)
    t_amb, t_tan, t_lp = interleaved_medians(
        [lambda: ambient(y), lambda: tangent(y), lambda: log_prob(y)],
        repeats)
    floor = min(t_amb, t_tan)
    rows.append(dict(manifold=name, points=points,
                     hessian_ambient_s=t_amb, hessian_tangent_s=t_tan,
                     log_prob_s=t_lp, ratio=t_lp / floor, target=3.0))
  return rows


def sample_section(cases, scales, points, repeats) -> List[Dict]:
  rows = []
  for name in cases:
    m = _manifold(name)
    for scale in scales:
      row = dict(manifold=name, points=points, output_scale=scale,
                 tolerance=1e-6, target=3.0)
      for method in ('newton', 'gradient'):
        psi, bij, q = _model(m, scale=scale, method=method, tolerance=1e-6)
        x = m.uniform().sample(points, seed=2)
        y = bij.forward(x)
        log_prob = tf.function(q.log_prob)
        sample = tf.function(
            lambda q=q: q.experimental_sample_and_log_prob(points, seed=(3, 4)))
        t_lp, t_s = interleaved_medians([lambda: log_prob(y), sample],
                                        repeats)
        res = bij.solve(x)
        iters = tf.cast(res.iterations, tf.float32)
        row[method] = dict(sample_s=t_s, log_prob_s=t_lp, ratio=t_s / t_lp,
                           mean_iterations=float(tf.reduce_mean(iters)),
                           max_iterations=int(tf.reduce_max(iters)),
                           converged=bool(tf.reduce_all(res.converged)))
        del psi
      row['newton_speedup_over_gradient'] = (row['gradient']['sample_s']
                                             / row['newton']['sample_s'])
      rows.append(row)
  return rows


def _train_step_fn(q, bij, target, batch, unrolled: Optional[int],
                   jit_compile=False):
  """A reverse-KL Adam step; `unrolled`=K backpropagates through K steps."""
  m = bij.manifold
  variables = q.trainable_variables
  opt = tf_keras.optimizers.Adam(1e-4)

  def loss_fn(seed):
    if unrolled is None:
      return training.reverse_kl_loss(q, target, batch, seed=seed)
    x = q.distribution.sample(batch, seed=seed)
    y = solvers.unrolled_solve(m, bij.potential, x, unrolled)
    # log q(y) = log p₀(f⁻¹(y)) + ildj(y), exact at the solver's output.
    log_q = q.distribution.log_prob(x) + bij.inverse_log_det_jacobian(y, 1)
    return tf.reduce_mean(log_q - target.unnormalized_log_prob(y))

  @tf.function(jit_compile=jit_compile)
  def step(seed):
    with tf.GradientTape() as tape:
      loss = loss_fn(seed)
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    return loss

  return step


def train_section(iterations, batch, repeats) -> List[Dict]:
  target = targets_lib.sphere_four_modes()
  m = target.manifold
  rows = []
  seed = tf.constant([5, 6])
  for k in iterations:
    row = dict(iterations=k, batch=batch)
    for kind in ('ift', 'unrolled'):
      # IFT: the same K descent iterations forward (tolerance 0), then one
      # implicit step, so both rows do the same forward work.
      _, bij, q = _model(m, scale=1 / 20, method='gradient', tolerance=0.,
                         max_iterations=k)
      step = _train_step_fn(q, bij, target, batch,
                            None if kind == 'ift' else k)
      start = time.perf_counter()
      _block(step(seed))
      trace = time.perf_counter() - start
      row[kind] = dict(step_s=median_seconds(lambda: step(seed), repeats),
                       peak_mib=peak_memory_mib(lambda: step(seed)),
                       first_call_s=trace)
    row['speedup'] = row['unrolled']['step_s'] / row['ift']['step_s']
    rows.append(row)
  _, bij, q = _model(m, scale=1 / 20)
  step = _train_step_fn(q, bij, target, batch, None)
  newton = dict(step_s=median_seconds(lambda: step(seed), repeats),
                peak_mib=peak_memory_mib(lambda: step(seed)))
  for row in rows:
    # The library's own step (Newton to tolerance + IFT) against the paper's.
    row['newton_ift_speedup'] = row['unrolled']['step_s'] / newton['step_s']
  return [dict(rows=rows, newton_ift=newton, target_speedup_at_30=3.0)]


def xla_section(points, batch, repeats, quick=False) -> List[Dict]:
  """Plain tf.function against jit_compile=True; failures are reported."""
  m = ircpm.manifolds.Sphere(2)
  target = targets_lib.sphere_four_modes()
  _, _, q = _model(m, scale=1 / 20)
  y = m.uniform().sample(points, seed=1)
  seed = tf.constant([7, 8])
  fns = {
      'log_prob': lambda jit: tf.function(q.log_prob, jit_compile=jit),
      'sample_and_log_prob': lambda jit: tf.function(
          lambda s: q.experimental_sample_and_log_prob(points, seed=s),
          jit_compile=jit),
  }
  args = {'log_prob': y, 'sample_and_log_prob': seed}
  if quick:  # compiling the solve takes tens of seconds
    del fns['sample_and_log_prob']
  else:
    fns['train_step'] = lambda jit: _train_step_fn(
        q, q.bijector, target, batch, None, jit_compile=jit)
    args['train_step'] = seed
  rows = []
  for name, make in fns.items():
    row = dict(function=name)
    for jit in (False, True):
      key = 'xla' if jit else 'plain'
      fn = make(jit)
      try:
        start = time.perf_counter()
        _block(fn(args[name]))
        first = time.perf_counter() - start
        row[key] = dict(seconds=median_seconds(lambda: fn(args[name]),
                                               repeats),
                        first_call_s=first)
      except Exception as e:  # pylint: disable=broad-except
        row[key] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
    if 'seconds' in row['xla']:
      row['speedup'] = row['plain']['seconds'] / row['xla']['seconds']
    rows.append(row)
  return rows


def profile_section(cases, scales, points, repeats) -> List[Dict]:
  """Where sample's time goes, in units of one Hessian of ψ.

  A sample costs the solve (one value + gradient + tangent Hessian of h at
  y = x, then one per Newton iteration, over the whole batch until the
  slowest point converges), the log-det from the solve's Hessian (a 2 × 2
  determinant) and the IFT point (no extra ψ evaluation when no gradient is
  taken). log_prob costs the closed-form inverse plus its Jacobian. So
  sample / log_prob ≈ (1 + max iterations) · derivative / log_prob.
  """
  rows = []
  for name in cases:
    m = _manifold(name)
    for scale in scales:
      psi, bij, q = _model(m, scale=scale, tolerance=1e-6)
      x = m.uniform().sample(points, seed=2)
      y = bij.forward(x)
      ambient, _ = hessian_floor_fns(m, psi)
      fns = dict(
          psi=tf.function(lambda: psi(y)),
          hessian=lambda: ambient(y),
          derivative=tf.function(lambda: solvers.local_derivatives(
              m, psi, x, y)[:3]),
          solve=tf.function(lambda: solvers.solve(m, psi, x,
                                                  tolerance=1e-6).point),
          forward=tf.function(lambda: bij.forward(x)),
          sample_and_log_prob=tf.function(
              lambda q=q: q.experimental_sample_and_log_prob(points,
                                                             seed=(3, 4))),
          log_prob=tf.function(lambda: q.log_prob(y)))
      seconds = dict(zip(fns, interleaved_medians(list(fns.values()),
                                                  repeats)))
      iters = bij.solve(x).iterations
      max_iter = int(tf.reduce_max(iters))
      unit = seconds['hessian']
      rows.append(dict(
          manifold=name, output_scale=scale, points=points,
          seconds=seconds, in_hessians={k: v / unit
                                        for k, v in seconds.items()},
          mean_iterations=float(tf.reduce_mean(tf.cast(iters, tf.float32))),
          max_iterations=max_iter,
          predicted_ratio=(1 + max_iter) * seconds['derivative']
          / seconds['log_prob'],
          ratio=seconds['sample_and_log_prob'] / seconds['log_prob']))
  return rows


def quality_section(run: bool, quick: bool) -> List[Dict]:
  if run:
    from benchmarks import time_to_quality  # pylint: disable=g-import-not-at-top
    return [time_to_quality.time_to_quality(**time_to_quality.DEFAULTS)]
  if os.path.exists(TTQ_JSON) and not quick:
    with open(TTQ_JSON) as f:
      return [dict(json.load(f), source=TTQ_JSON)]
  return []


def fit_exponent(dims, seconds) -> Optional[float]:
  """Slope of log seconds against log d over d >= 8 (None: too few)."""
  pairs = [(d, s) for d, s in zip(dims, seconds) if d >= 8 and s]
  if len(pairs) < 2:
    return None
  d, s = np.log(np.array(pairs)).T
  return float(np.polyfit(d, s, 1)[0])


def scaling_section(dims, sample_dims, points, repeats,
                    progress: Callable[[List[Dict]], None] = lambda r: None,
                    ) -> List[Dict]:
  rows = []
  for family in ('T', 'S'):
    series = dict(family='T^d' if family == 'T' else '(S²)^k', points=points,
                  dims=[], log_prob_s=[], hessian_s=[], sample_s=[],
                  logdet_share=[])
    rows.append(series)
    for d in dims:
      m = _manifold(f'{family}{d}')
      psi, bij, q = _model(m, hidden=(128, 128), scale=0.3)
      y = m.uniform().sample(points, seed=1)
      ambient, _ = hessian_floor_fns(m, psi)
      log_prob = tf.function(q.log_prob)
      grad_only = tf.function(bij.inverse)
      t_lp = median_seconds(lambda: log_prob(y), repeats)
      t_inv = median_seconds(lambda: grad_only(y), repeats)
      t_hess = median_seconds(lambda: ambient(y), repeats)
      t_s = None
      if d in sample_dims:
        sample = tf.function(
            lambda q=q: q.experimental_sample_and_log_prob(points, seed=(3, 4)))
        t_s = median_seconds(sample, repeats)
      series['dims'].append(d)
      series['log_prob_s'].append(t_lp)
      series['hessian_s'].append(t_hess)
      series['sample_s'].append(t_s)
      # The share of log_prob beyond the closed-form inverse: the log-det.
      series['logdet_share'].append(max(0., 1. - t_inv / t_lp))
      progress(rows)  # large d take minutes; keep what is done
    series['log_prob_exponent'] = fit_exponent(series['dims'],
                                                series['log_prob_s'])
    series['sample_exponent'] = fit_exponent(series['dims'],
                                              series['sample_s'])
  return rows


# -- report --------------------------------------------------------------------


def print_tables(results: Dict):
  def f(v, spec='.3g'):
    return '-' if v is None else format(v, spec)
  for r in results.get('floor', []):
    print(f"floor {r['manifold']}: log_prob {f(r['log_prob_s'])}s, Hess ψ "
          f"ambient {f(r['hessian_ambient_s'])}s tangent "
          f"{f(r['hessian_tangent_s'])}s, ratio {r['ratio']:.2f} (target ≤ 3)")
  for r in results.get('sample', []):
    for meth in ('newton', 'gradient'):
      s = r[meth]
      print(f"sample {r['manifold']} x{r['output_scale']} {meth:>8}: "
            f"{f(s['sample_s'])}s = {s['ratio']:.2f}× log_prob, iterations "
            f"{s['mean_iterations']:.2f}/{s['max_iterations']}")
  for block in results.get('train', []):
    for r in block['rows']:
      i, u = r['ift'], r['unrolled']
      print(f"train K={r['iterations']:>3}: IFT {f(i['step_s'])}s "
            f"{f(i['peak_mib'], '.0f')} MiB, unrolled {f(u['step_s'])}s "
            f"{f(u['peak_mib'], '.0f')} MiB, speed-up {r['speedup']:.2f} "
            f"(Newton+IFT step: {r['newton_ift_speedup']:.2f})")
    n = block['newton_ift']
    print(f"train Newton+IFT: {f(n['step_s'])}s {f(n['peak_mib'], '.0f')} MiB")
  for r in results.get('xla', []):
    print(f"xla {r['function']}: plain {r['plain']}, xla {r['xla']}, "
          f"speed-up {f(r.get('speedup'))}")
  for r in results.get('profile', []):
    parts = ', '.join(f'{k} {v:.2f}' for k, v in r['in_hessians'].items())
    print(f"profile {r['manifold']} x{r['output_scale']} (in Hess ψ units, "
          f"iterations {r['mean_iterations']:.2f}/{r['max_iterations']}): "
          f"{parts}; ratio {r['ratio']:.2f}, predicted "
          f"{r['predicted_ratio']:.2f}")
  for r in results.get('quality', []):
    print(f"time to quality: reached={r['reached']} in "
          f"{f(r['seconds_to_quality'])}s ({r['config']})")
  for r in results.get('scaling', []):
    print(f"scaling {r['family']} dims {r['dims']}: log_prob exponent "
          f"{f(r['log_prob_exponent'])}, sample exponent "
          f"{f(r['sample_exponent'])}, log-det share "
          f"{[round(s, 2) for s in r['logdet_share']]}")


def run(quick: bool, repeats: int, sections, time_to_quality=False,
        output: Optional[str] = None,
        scaling_dims=(2, 4, 8, 16, 32, 64, 128, 256),
        scaling_sample_max: int = 64,
        train_iterations=(10, 30, 100)) -> Dict:
  results = dict(
      machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                   tensorflow=tf.__version__, load_before=_load()),
      quick=quick, repeats=repeats)
  start = time.time()
  cases = ['S2'] if quick else ['S2', 'T2']
  scales = [0.3] if quick else [0.3, 1.5]   # near the identity, and sharp
  points = 512 if quick else 4096
  if 'floor' in sections:
    results['floor'] = floor_section(cases, points, repeats)
  dump = lambda *_: output and _write(results, output)
  dump()
  if 'sample' in sections:
    results['sample'] = sample_section(cases, scales, points, repeats)
  dump()
  if 'profile' in sections:
    results['profile'] = profile_section(cases, scales, points, repeats)
  dump()
  if 'train' in sections:
    results['train'] = train_section([3] if quick else train_iterations,
                                     64 if quick else 256, repeats)
  dump()
  if 'xla' in sections:
    results['xla'] = xla_section(256 if quick else 4096, 256, repeats,
                                 quick=quick)
  dump()
  if 'quality' in sections:
    results['quality'] = quality_section(time_to_quality, quick)
  dump()
  if 'scaling' in sections:
    dims = [2, 4] if quick else scaling_dims
    results['scaling'] = scaling_section(
        dims, [] if quick else [d for d in dims if d <= scaling_sample_max],
        64 if quick else 256, repeats,
        lambda rows: dump(results.update(scaling=rows)))
  results['machine']['load_after'] = _load()
  results['seconds'] = time.time() - start
  return results


def _write(results: Dict, path: str):
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)


def parse_sections(spec: str) -> List[str]:
  """'floor,train' → ['floor', 'train']; unknown names are an error."""
  sections = [s.strip() for s in spec.split(',') if s.strip()]
  unknown = set(sections) - set(SECTIONS)
  if unknown or not sections:
    raise ValueError(f'unknown sections {sorted(unknown)} in {spec!r}; pick '
                     f'one or more of {SECTIONS}')
  return sections


def main(_):
  sections = parse_sections(FLAGS.sections)
  repeats = min(FLAGS.repeats, 3) if FLAGS.quick else FLAGS.repeats
  results = run(FLAGS.quick, repeats, sections, FLAGS.time_to_quality,
                FLAGS.output, [int(d) for d in FLAGS.scaling_dims],
                FLAGS.scaling_sample_max,
                [int(k) for k in FLAGS.train_iterations])
  print_tables(results)
  _write(results, FLAGS.output)
  print(f"wrote {FLAGS.output} in {results['seconds']:.0f}s")


if __name__ == '__main__':
  app.run(main)
