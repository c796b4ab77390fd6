r"""The performance suite: ratios against the floor and the paper.

Every figure is a ratio of medians measured in this one run (each timed
function is traced and warmed up first), so that machine load cancels as far
as it can. Sections, one module each (helpers in `benchmarks.common`):

1. floor (`benchmarks.floor`): `log_prob` (closed-form inverse + exact
   intrinsic log-det, Eq. 4) over the time of the Hessian of ψ alone on the
   same points, the floor of any exact log-det.
2. sample (`benchmarks.sample`): `experimental_sample_and_log_prob`
   (c-transform solve + IFT step + log-det) over `log_prob`, Newton against
   the paper's unit-step descent, with mean/max solver iterations.
   profile (`benchmarks.profiling`): where sample's time goes, in units of
   one Hessian of ψ.
3. train (`benchmarks.train`): one reverse-KL step (Eq. 9) with IFT
   gradients against backprop through K unrolled descent steps (the paper),
   K = 10, 30, 100: time and peak memory (TF's CPU allocator statistics).
4. xla (`benchmarks.xla`): `jit_compile=True` against plain `tf.function`.
5. quality (`benchmarks.quality`), time to quality: read from
   `benchmarks/time_to_quality.json` (written by
   `python -m benchmarks.time_to_quality`), or run with --time_to_quality.
6. scaling (`benchmarks.scaling`): log_prob and sample on Tᵈ and (S²)ᵏ
   against d, with fitted exponents.

This module is the driver: flags, section selection, the printed report and
the JSON.

  python -m benchmarks.run [--quick] [--sections=floor,train] \
      [--output=benchmarks/results.json]
"""

import os
import platform
import time
from typing import Dict, List, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TF's default CPU allocator keeps no statistics for tf.function steps
# (get_memory_info reports a peak of 0); the BFC allocator does.
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

from benchmarks import common
from benchmarks import floor
from benchmarks import profiling
from benchmarks import quality
from benchmarks import sample
from benchmarks import scaling
from benchmarks import train
from benchmarks import xla

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


# -- driver --------------------------------------------------------------------


def run(quick: bool, repeats: int, sections, time_to_quality=False,
        output: Optional[str] = None,
        scaling_dims=(2, 4, 8, 16, 32, 64, 128, 256),
        scaling_sample_max: int = 64,
        train_iterations=(10, 30, 100)) -> Dict:
  """Runs `sections` in SECTIONS order; rewrites `output` after each."""
  results = dict(
      machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                   tensorflow=tf.__version__,
                   load_before=common.load_average()),
      quick=quick, repeats=repeats)
  start = time.time()
  cases = ['S2'] if quick else ['S2', 'T2']
  scales = [0.3] if quick else [0.3, 1.5]   # near the identity, and sharp
  points = 512 if quick else 4096
  dump = lambda *_: output and common.write_json(results, output)
  if 'floor' in sections:
    results['floor'] = floor.measure(cases, points, repeats)
  dump()
  if 'sample' in sections:
    results['sample'] = sample.measure(cases, scales, points, repeats)
  dump()
  if 'profile' in sections:
    results['profile'] = profiling.measure(cases, scales, points, repeats)
  dump()
  if 'train' in sections:
    results['train'] = train.measure([3] if quick else train_iterations,
                                     64 if quick else 256, repeats)
  dump()
  if 'xla' in sections:
    results['xla'] = xla.measure(256 if quick else 4096, 256, repeats,
                                 quick=quick)
  dump()
  if 'quality' in sections:
    results['quality'] = quality.measure(time_to_quality, quick)
  dump()
  if 'scaling' in sections:
    dims = [2, 4] if quick else scaling_dims
    results['scaling'] = scaling.measure(
        dims, [] if quick else [d for d in dims if d <= scaling_sample_max],
        64 if quick else 256, repeats,
        lambda rows: dump(results.update(scaling=rows)))
  results['machine']['load_after'] = common.load_average()
  results['seconds'] = time.time() - start
  return results


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
  common.write_json(results, FLAGS.output)
  print(f"wrote {FLAGS.output} in {results['seconds']:.0f}s")


if __name__ == '__main__':
  app.run(main)
