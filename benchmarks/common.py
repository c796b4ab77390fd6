"""Timing, memory, JSON and model helpers shared by the benchmarks.

Import this after setting TF's environment variables (each benchmark's entry
point does so before its first TensorFlow import); it imports TensorFlow.
"""

import json
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import _autodiff
from tfp_ircpm import solvers

tfd = tfp.distributions


# -- timing and memory ---------------------------------------------------------


def block(out):
  """Waits for every tensor in the structure `out` (fetches its value)."""
  for t in tf.nest.flatten(out):
    if isinstance(t, tf.Tensor):
      t.numpy()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of fn() over `repeats` calls, after one warm-up call.

  The warm-up traces fn when it is a tf.function; tensors fn returns are
  waited for inside the timed interval.
  """
  block(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn())
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
    block(fn())
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, bucket in zip(fns, times):
      start = time.perf_counter()
      block(fn())
      bucket.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


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
  allocator reuses. TF's default CPU allocator keeps no statistics for
  tf.function steps; set TF_CPU_ALLOCATOR_USE_BFC=true before importing
  TensorFlow (benchmarks/run.py does) to get them. fn must already be
  traced, so tracing is not counted.
  """
  try:
    tf.config.experimental.reset_memory_stats('CPU:0')
    base = tf.config.experimental.get_memory_info('CPU:0')['current']
    block(fn())
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
  block(fn())
  peak = _vm_kib('VmHWM')
  return None if base is None or peak is None else (peak - base) / 1024.


def load_average() -> List[float]:
  """The 1, 5 and 15 minute load averages, rounded to 0.01."""
  return [round(x, 2) for x in os.getloadavg()]


def write_json(obj: Dict, path: str, indent: int = 2):
  """Writes obj to path as indented JSON, creating missing directories."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(obj, f, indent=indent)


# -- models --------------------------------------------------------------------


def named_manifold(name: str):
  """'S2', 'T2', 'T<d>' (the torus Tᵈ) or 'S<d>' ((S²)^(d/2), as a Power)."""
  if name == 'S2':
    return ircpm.manifolds.Sphere(2)
  if name == 'T2':
    return ircpm.manifolds.Torus(2)
  kind, d = name[0], int(name[1:])
  if kind == 'T':
    return ircpm.manifolds.Torus(d)
  return ircpm.manifolds.Power(ircpm.manifolds.Sphere(2), d // 2)


def make_model(manifold, hidden=(128, 128), scale=0.3, method='newton',
               tolerance=None, max_iterations=None):
  """(ψ, IRCPM, its push-forward of the uniform distribution)."""
  psi = ircpm.potentials.MLP(manifold, hidden, output_scale=scale, seed=0)
  bij = ircpm.IRCPM(manifold, psi, method=method, tolerance=tolerance,
                    max_iterations=max_iterations, nonconvergence='ignore')
  return psi, bij, tfd.TransformedDistribution(manifold.uniform(), bij)


def ambient_hessian_fn(psi):
  """A tf.function: points [N, A] → the Euclidean Hessian of ψ, [N, A, A].

  A reverse passes through ψ, and no manifold operation: the cheapest exact
  second derivative of ψ, so a lower bound on an exact log-det of
  exp(grad ψ). The library has no such function (its solver and log-det
  differentiate through the exp map), hence this one.
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

  return ambient


def tangent_hessian_fn(manifold, psi):
  """A tf.function: points y [N, A] → the solver's Hessian at x = y, [N, d, d].

  `solvers.local_derivatives(manifold, ψ, y, y)`: the Hessian of
  v ↦ h(y, exp_y(E_y v)) = ½ d(y, exp_y(E_y v))² + ψ(exp_y(E_y v)) at v = 0,
  i.e. the identity plus the tangent Hessian of ψ (d passes, plus the exp
  map), the derivative the solve evaluates once per iteration.
  """
  @tf.function
  def tangent(y):
    return solvers.local_derivatives(manifold, psi, y, y)[2]

  return tangent
