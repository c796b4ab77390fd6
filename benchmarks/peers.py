r"""Peers side by side: IRCPM flows against zuko's neural circular spline flow.

On tori the flow a user would pick today is zuko's NCSF (autoregressive
rational-quadratic splines on [−π, π)). This benchmark runs both on the
same machine in the same run, each side in its own fresh process:

* quality at equal training wall time: reverse KL (Eq. 9) with batch 256
  and Adam 1e-3 on each target; ESS and KL (nats, with the target's exact
  log Z) on 20 000 fresh samples at each of --budgets seconds of training
  (evaluation time is not counted). Both sides are scored by this
  library's float64 target energy on the samples they draw. On the XY
  model log Z is unknown: the table reports F = E_q[log q + u] = KL − log Z
  instead, which ranks the two sides exactly, on 2 000 samples
  (--xy_eval_samples);
* throughput: log_prob and sample+log_prob of 4096 points (median of 5) on
  T², T⁸ and T³² with each library in its fastest mode (XLA for IRCPM;
  `torch.compile` for zuko where it compiles, else eager: the table says
  which).

IRCPM side on tori: `make_flow(Torus(n), 3, share=True, hidden_units=(32,
32))` (1 248 parameters on T²), trained by `losses.reverse_kl_loss` in an
XLA step. On the XY model (`xy<L>`, β = 0.9): the lattice example's recipe
(4 IRCPMs with equivariant conv ψ and the bond term, the λ_min guard;
see `_xy_model`). zuko side: `NCSF(features=n, transforms=3,
hidden_features=(64, 64), bins=8)` (22 026 parameters on T²), torch 2.13
CPU, eager training.

  pip install -c constraints.txt -e '.[peers]'
  python -m benchmarks.peers [--targets=u1,u2,u3,pairs8,pairs32,xy4,xy8]
      [--budgets=30,120,600] [--throughput_dims=2,8,32] [--threads=0]
      [--output=benchmarks/peers.json]

One core per side, two runs at a time (as for the committed figures):

  taskset -c 0 python -m benchmarks.peers --targets=xy8,pairs32,u1 \
      --throughput_dims= --threads=1 --output=/tmp/core0.json &
  taskset -c 1 python -m benchmarks.peers --targets=xy4,u2,u3,pairs8 \
      --throughput_dims= --threads=1 --output=/tmp/core1.json
  python -m benchmarks.peers --merge=/tmp/core0.json,/tmp/core1.json

Without torch and zuko it prints why and exits 0 (torch is never a
dependency of tfp_ircpm).
"""

import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list('targets',
                  ['u1', 'u2', 'u3', 'pairs8', 'pairs32', 'xy4', 'xy8'],
                  'Targets: u1, u2, u3 (T², Table 1), pairs<n> (Tⁿ, '
                  '`targets.torus_correlated_pairs`) and xy<L> (the XY model '
                  'on T^{L²} at β = 0.9, `lattice.xy_model`).')
flags.DEFINE_list('budgets', ['30', '120', '600'],
                  'Training seconds at which to evaluate.')
flags.DEFINE_list('throughput_dims', ['2', '8', '32'],
                  'Torus dimensions of the throughput rows.')
flags.DEFINE_integer('batch_size', 256, 'Reverse-KL batch.')
flags.DEFINE_integer('eval_samples', 20000, 'Samples for ESS and KL.')
flags.DEFINE_integer('xy_eval_samples', 2000, 'Samples for ESS and F on the '
                     'XY targets (exact log-dets at L² dimensions; the '
                     'lattice results use 1000-2000).')
flags.DEFINE_integer('seed', 0, 'Seed of both sides.')
flags.DEFINE_integer('threads', 0, 'Threads of each side (TF intra- and '
                     'inter-op, torch); 0 keeps each library\'s default. With '
                     '`taskset -c K`, 1 gives each side one core.')
flags.DEFINE_string('output', 'benchmarks/peers.json', 'JSON output.')
flags.DEFINE_list('merge', [], 'Instead of running: merge these JSON '
                  'outputs (e.g. two runs on separate cores) into --output '
                  'and print the tables.')
flags.DEFINE_string('side', None, 'Internal: run one side in this process '
                    '("ircpm:quality:u2", "zuko:throughput:8", …).')

THROUGHPUT_POINTS = 4096
# Exact log-dets at 64 dimensions hold a [batch, 64, 64] Jacobian per layer.
XY_EVAL_BATCH = 500
REPEATS = 5


def have_peers() -> bool:
  try:
    import torch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    import zuko  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


XY_BETA = 0.9


def _lattice_size(name: str):
  """L for 'xy<L>', else None."""
  return int(name[2:]) if name.startswith('xy') else None


def _target(name: str):
  from tfp_ircpm import lattice  # pylint: disable=g-import-not-at-top
  from tfp_ircpm import targets  # pylint: disable=g-import-not-at-top
  if name.startswith('pairs'):
    return targets.torus_correlated_pairs(int(name[5:]))
  if _lattice_size(name):
    return lattice.xy_model(_lattice_size(name), XY_BETA)
  return targets.TARGETS[name]()


def _eval_samples(target_name: str) -> int:
  return (FLAGS.xy_eval_samples if _lattice_size(target_name)
          else FLAGS.eval_samples)


def _log_normalizer(target):
  """Exact log Z, or None where no quadrature exists (XY above L = 2)."""
  try:
    return target.log_normalizer
  except ValueError:
    return None


def _metrics(log_q, log_p, log_z) -> dict:
  """ESS (fraction), KL(q‖p) and the free energy F = E_q[log q − log p̃]
  from float64 log-densities, as `metrics.evaluate` computes them.

  F = KL − log Z needs no log Z, so it compares two flows exactly where
  log Z is unknown (KL is then NaN). The ESS is NaN if any weight is not
  finite (a failed solve), and `nonfinite` counts them.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tfp_ircpm import metrics  # pylint: disable=g-import-not-at-top
  log_w = np.asarray(log_p, np.float64) - np.asarray(log_q, np.float64)
  bad = int(np.sum(~np.isfinite(log_w)))
  free_energy = float(np.mean(-log_w))
  return dict(ess=float(metrics.ess_from_log_weights(log_w)) if not bad
              else float('nan'), free_energy=free_energy,
              kl=free_energy + log_z if log_z is not None else float('nan'),
              nonfinite=bad)


def _log_p(target, points):
  """This library's float64 energy of the points [N, n] (angles; both
  libraries' conventions differ by 2π shifts, which u ignores)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return target.unnormalized_log_prob(tf.constant(points, tf.float64)).numpy()


# -- IRCPM side ------------------------------------------------------------------


def _ircpm_flow(dim: int):
  import tfp_ircpm as ircpm  # pylint: disable=g-import-not-at-top
  return ircpm.make_flow(ircpm.Torus(dim), 3, share=True,
                         hidden_units=(32, 32))


def _xy_model(target):
  """The lattice example's XY model (docs/results/lattice.md, the grid):
  4 IRCPMs with translation- and U(1)-equivariant conv ψ and the bond term,
  uniform base, the λ_min guard at floor 0.2, exact log-dets at L = 4 and
  the stochastic estimator at L = 8 (`--estimator=auto`), XLA at L = 8.
  Trained here with this benchmark's batch and constant Adam 1e-3, as the
  other side (the grid used batch 64 and 3e-3 with cosine decay over a
  fixed number of steps, which a time budget does not have)."""
  from examples.lattice import config as config_lib  # pylint: disable=g-import-not-at-top
  from examples.lattice import models  # pylint: disable=g-import-not-at-top
  size = target.lattice_size
  config = config_lib.Config(
      model='xy', L=size, beta=XY_BETA, psi='equivariant', layers=4,
      bond_term=True, barrier_floor=0.2, batch_size=FLAGS.batch_size,
      seed=FLAGS.seed, jit_compile=size >= 8)
  model, estimator = models.build_model(target, config)
  return model, estimator, config.jit_compile


def _ircpm_quality(target_name: str, budgets) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tfp_ircpm import losses  # pylint: disable=g-import-not-at-top
  target = _target(target_name)
  opt = tf_keras.optimizers.Adam(1e-3)
  if _lattice_size(target_name):
    model, estimator, jit = _xy_model(target)
    variables = model.trainable_variables

    def loss_fn(seed):
      return model.loss(target, FLAGS.batch_size, seed, estimator)

    # Exact log-dets, without XLA, as the lattice example evaluates.
    draw = tf.function(
        lambda seed: model.sample_and_log_prob(XY_EVAL_BATCH, seed, 'exact'))
    eval_batch = XY_EVAL_BATCH
  else:
    q = _ircpm_flow(target.manifold.dim)
    variables = q.trainable_variables
    jit = True

    def loss_fn(seed):
      return losses.reverse_kl_loss(q, target, FLAGS.batch_size, seed)

    draw = tf.function(
        lambda seed: q.experimental_sample_and_log_prob(5000, seed=seed),
        jit_compile=True)
    eval_batch = 5000

  @tf.function(jit_compile=jit)
  def step(seed):
    with tf.GradientTape() as tape:
      loss = loss_fn(seed)
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  log_z = _log_normalizer(target)

  def evaluate(k):
    log_q, log_p = [], []
    n = _eval_samples(target_name)
    for i in range(-(-n // eval_batch)):
      x, lq = draw(tf.constant([FLAGS.seed + 7, 1000 * k + i]))
      log_q.append(lq.numpy())
      log_p.append(_log_p(target, x.numpy()))
    return _metrics(np.concatenate(log_q)[:n], np.concatenate(log_p)[:n],
                    log_z)

  def one_step(i):
    return float(step(tf.constant([FLAGS.seed, i])))

  return _quality_loop(one_step, evaluate, budgets,
                       sum(int(tf.size(v)) for v in variables))


def _ircpm_throughput(dim: int) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  q = _ircpm_flow(dim)
  x = q.sample(THROUGHPUT_POINTS, seed=(1, 2))
  log_prob = tf.function(q.log_prob, jit_compile=True)
  sample = tf.function(
      lambda s: q.experimental_sample_and_log_prob(THROUGHPUT_POINTS, seed=s),
      jit_compile=True)
  seed = tf.constant([3, 4])
  return dict(mode='XLA',
              log_prob_s=common.median_seconds(lambda: log_prob(x), REPEATS),
              sample_and_log_prob_s=common.median_seconds(
                  lambda: sample(seed), REPEATS))


# -- zuko side -------------------------------------------------------------------


def _zuko_flow(dim: int):
  import torch  # pylint: disable=g-import-not-at-top
  import zuko  # pylint: disable=g-import-not-at-top
  torch.manual_seed(FLAGS.seed)
  return zuko.flows.NCSF(features=dim, transforms=3,
                         hidden_features=(64, 64), bins=8)


def _torch_energy(target_name: str):
  """The target's u in torch, for zuko's training gradients; checked
  against the library's energy at the start of every run."""
  import torch  # pylint: disable=g-import-not-at-top
  from tfp_ircpm import targets  # pylint: disable=g-import-not-at-top
  if target_name == 'u1':
    return lambda t: torch.sin(2. * (t[..., 0] - t[..., 1]))
  if target_name == 'u2':
    phi = torch.tensor(targets._U2_PHI,  # pylint: disable=protected-access
                       dtype=torch.float64)
    return lambda t: -torch.logsumexp(
        torch.cos(t[..., None, :] - phi.to(t.dtype)).sum(-1), dim=-1)
  if target_name == 'u3':
    return lambda t: 1.4 * torch.sin(2. * t[..., 0]) * torch.sin(
        2. * t[..., 1])
  size = _lattice_size(target_name)
  if size:
    def xy(t):
      # Row-major sites; each site's right and lower bonds, periodic.
      g = t.reshape(t.shape[:-1] + (size, size))
      return -XY_BETA * (torch.cos(g - torch.roll(g, -1, dims=-1))
                         + torch.cos(g - torch.roll(g, -1, dims=-2))
                         ).sum((-2, -1))
    return xy
  def pairs(t):
    p = t.reshape(t.shape[:-1] + (-1, 2))
    a, b = p[..., 0], p[..., 1]
    return -(torch.cos(a) + torch.cos(b)
             + 3. * torch.cos(a - b - math.pi / 2.)).sum(-1)
  return pairs


def _zuko_quality(target_name: str, budgets) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  target = _target(target_name)
  energy = _torch_energy(target_name)
  probe = np.random.default_rng(0).uniform(-math.pi, math.pi,
                                           (64, target.manifold.dim))
  np.testing.assert_allclose(
      -energy(torch.tensor(probe)).numpy(), _log_p(target, probe),
      rtol=1e-10, atol=1e-10)
  flow = _zuko_flow(target.manifold.dim)
  opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
  log_z = _log_normalizer(target)

  def one_step(i):
    del i
    x, log_q = flow().rsample_and_log_prob((FLAGS.batch_size,))
    loss = (log_q + energy(x)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)

  def evaluate(k):
    del k
    with torch.no_grad():
      x, log_q = flow().rsample_and_log_prob((_eval_samples(target_name),))
    x = x.double().numpy()
    return _metrics(log_q.double().numpy(), _log_p(target, x), log_z)

  return _quality_loop(one_step, evaluate, budgets,
                       sum(p.numel() for p in flow.parameters()))


def _zuko_throughput(dim: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  flow = _zuko_flow(dim)
  with torch.no_grad():
    x = flow().sample((THROUGHPUT_POINTS,))

  def log_prob_eager():
    with torch.no_grad():
      return flow().log_prob(x)

  def sample_eager():
    with torch.no_grad():
      return flow().rsample_and_log_prob((THROUGHPUT_POINTS,))

  out = dict(eager_log_prob_s=common.median_seconds(log_prob_eager, REPEATS),
             eager_sample_and_log_prob_s=common.median_seconds(sample_eager,
                                                               REPEATS))
  try:
    log_prob_c = torch.compile(log_prob_eager)
    sample_c = torch.compile(sample_eager)
    out.update(
        compiled_log_prob_s=common.median_seconds(log_prob_c, REPEATS),
        compiled_sample_and_log_prob_s=common.median_seconds(sample_c,
                                                             REPEATS))
  except Exception as e:  # pylint: disable=broad-except
    out['compile_error'] = f'{type(e).__name__}: {str(e)[:200]}'
  # The fastest mode of each call, as the comparison uses.
  for key in ('log_prob_s', 'sample_and_log_prob_s'):
    modes = {m: out[f'{m}_{key}'] for m in ('eager', 'compiled')
             if f'{m}_{key}' in out}
    best = min(modes, key=modes.get)
    out[key], out[f'{key[:-2]}_mode'] = modes[best], best
  return out


# -- shared ----------------------------------------------------------------------


def _quality_loop(one_step, evaluate, budgets, num_parameters) -> dict:
  """Steps until each budget of training seconds, then evaluates (the
  evaluation is not counted); the first step's time is reported apart."""
  start = time.perf_counter()
  one_step(0)
  first = time.perf_counter() - start
  trained, steps, rows = first, 1, []
  for k, budget in enumerate(budgets):
    tic = time.perf_counter()
    while trained + (time.perf_counter() - tic) < budget:
      one_step(steps)
      steps += 1
    trained += time.perf_counter() - tic
    rows.append(dict(seconds=round(trained, 1), steps=steps, **evaluate(k)))
    print(json.dumps(rows[-1]), flush=True)
  return dict(first_step_s=first, num_parameters=num_parameters, rows=rows,
              steady_step_ms=(1e3 * (trained - first) / (steps - 1)
                              if steps > 1 else float('nan')))


def _set_threads(library: str, threads: int) -> None:
  if not threads:
    return
  if library == 'ircpm':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def _run_side(spec: str) -> dict:
  library, what, arg = spec.split(':')
  _set_threads(library, FLAGS.threads)
  if what == 'quality':
    budgets = [float(b) for b in FLAGS.budgets]
    fn = _ircpm_quality if library == 'ircpm' else _zuko_quality
    return fn(arg, budgets)
  fn = _ircpm_throughput if library == 'ircpm' else _zuko_throughput
  return fn(int(arg))


def _fresh_process(spec: str) -> dict:
  args = [sys.executable, '-m', 'benchmarks.peers', f'--side={spec}',
          f'--budgets={",".join(FLAGS.budgets)}',
          f'--batch_size={FLAGS.batch_size}',
          f'--eval_samples={FLAGS.eval_samples}',
          f'--xy_eval_samples={FLAGS.xy_eval_samples}', f'--seed={FLAGS.seed}',
          f'--threads={FLAGS.threads}']
  proc = subprocess.run(args, capture_output=True, text=True, check=False)
  if proc.returncode:
    return dict(error=proc.stderr[-2000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(result: dict) -> str:
  lines = ['Quality at equal training time (reverse KL, batch '
           f'{FLAGS.batch_size}): ESS % / KL nats / steps; where log Z is '
           'unknown (XY) the KL column holds F = KL − log Z, marked F; a side '
           'whose first step (compilation) outlasts a budget is evaluated '
           'after it',
           '| target | budget (s) | IRCPM ESS | KL | steps | zuko ESS | KL | '
           'steps |', '|---|---|---|---|---|---|---|---|']

  def quality_cells(row):
    ess = (f'{100 * row["ess"]:.2f}' if math.isfinite(row['ess'])
           else f'nan ({row["nonfinite"]} failed)')
    if math.isfinite(row['kl']):
      kl = f'{row["kl"]:.4f}'
    elif math.isfinite(row.get('free_energy', float('nan'))):
      kl = f'F {row["free_energy"]:.3f}'
    else:
      kl = '–'
    return [ess, kl, f'{row["steps"]} ({row["seconds"]:.0f} s)']

  for name, sides in result['quality'].items():
    rows = [sides[s].get('rows', []) for s in ('ircpm', 'zuko')]
    for k, budget in enumerate(result['budgets']):
      cells = []
      for r in rows:
        cells += quality_cells(r[k]) if k < len(r) else ['error', '–', '–']
      lines.append(f'| {name} | {budget:g} | ' + ' | '.join(cells) + ' |')
  lines += ['', '| target | side | parameters | first step (s) | steady step '
            '(ms) |', '|---|---|---|---|---|']
  for name, sides in result['quality'].items():
    for side in ('ircpm', 'zuko'):
      r = sides[side]
      if 'rows' in r:
        lines.append(f'| {name} | {side} | {r["num_parameters"]} | '
                     f'{r["first_step_s"]:.2f} | {r["steady_step_ms"]:.1f} |')
  lines += ['', f'Throughput, {THROUGHPUT_POINTS} points (median of '
            f'{REPEATS}): milliseconds, and zuko / IRCPM',
            '| torus | call | IRCPM (XLA) | zuko (mode) | zuko / IRCPM |',
            '|---|---|---|---|---|']
  for dim, sides in result['throughput'].items():
    for call in ('log_prob', 'sample_and_log_prob'):
      ours, theirs = sides['ircpm'], sides['zuko']
      if f'{call}_s' not in ours or f'{call}_s' not in theirs:
        lines.append(f'| T{dim} | {call} | error | error | – |')
        continue
      a, b = ours[f'{call}_s'], theirs[f'{call}_s']
      lines.append(f'| T{dim} | {call} | {1e3 * a:.1f} | {1e3 * b:.1f} '
                   f'({theirs[f"{call}_mode"]}) | {b / a:.2f} |')
  return '\n'.join(lines)


def _merge(paths) -> dict:
  """One result from runs with the same budgets (say one per core): their
  quality and throughput entries side by side, each run's own record under
  'runs'."""
  runs = []
  for path in paths:
    with open(path) as f:
      runs.append(json.load(f))
  budgets = {tuple(r['budgets']) for r in runs}
  if len(budgets) != 1:
    raise ValueError(f'The runs have different budgets: {sorted(budgets)}.')
  result = dict(budgets=runs[0]['budgets'], quality={}, throughput={},
                runs=[{k: v for k, v in r.items()
                       if k not in ('quality', 'throughput')} for r in runs])
  for r in runs:
    result['quality'].update(r['quality'])
    result['throughput'].update(r['throughput'])
  return result


def main(_):
  if FLAGS.side:
    print(json.dumps(_run_side(FLAGS.side)), flush=True)
    return
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  if FLAGS.merge:
    result = _merge(FLAGS.merge)
    common.write_json(result, FLAGS.output)
    print(_table(result))
    return
  if not have_peers():
    print('benchmarks.peers needs torch and zuko: pip install -c '
          "constraints.txt -e '.[peers]' (skipped).")
    return
  result = dict(load_average_start=common.load_average(),
                budgets=[float(b) for b in FLAGS.budgets],
                threads=FLAGS.threads, affinity=sorted(os.sched_getaffinity(0)),
                quality={}, throughput={})
  for name in FLAGS.targets:
    result['quality'][name] = {
        lib: _fresh_process(f'{lib}:quality:{name}')
        for lib in ('ircpm', 'zuko')}
    print(name, json.dumps(result['quality'][name]), flush=True)
  for dim in FLAGS.throughput_dims:
    result['throughput'][dim] = {
        lib: _fresh_process(f'{lib}:throughput:{dim}')
        for lib in ('ircpm', 'zuko')}
    print(f'T{dim}', json.dumps(result['throughput'][dim]), flush=True)
  result['load_average_end'] = common.load_average()
  common.write_json(result, FLAGS.output)
  print(_table(result))


if __name__ == '__main__':
  app.run(main)
