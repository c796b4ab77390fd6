"""Is the model still a diffeomorphism? A check for trained IRCPMs.

f⁻¹ = exp(grad ψ) is smooth and homotopic to the identity (scale ψ to 0).
On a compact connected manifold, det J_{f⁻¹} > 0 everywhere makes f⁻¹ a
local diffeomorphism of degree 1, hence a diffeomorphism, and then ψ is the
c-transform of ψ^c, so the closed-form inverse inverts the solve and every
density is right. Once a training run violates it, f is no longer a
bijection and log-densities are silently wrong: the collapse reported for
single IRCPMs on S².

`check_diffeomorphism` estimates min det J_{f⁻¹} on dense uniform points
(and optional given points), measures the worst round trip
inverse(forward(x)) with solver convergence, checks that every solve found
the minimiser of h(x, ·) rather than another critical point (the
global-minimum test of `solvers.suboptimal_points`), and runs the bound
check of Lemmas 3-4 (sufficient, not necessary). Sampled points give
evidence, not a proof: a fold narrower than the sampling spacing can be
missed. Sharp potentials (wells of width 1/√κ ~ 0.003 rad) fold on patches
that far smaller, so the check can also search: from the lowest-det points
it has seen, it descends det J_{f⁻¹} (`search_min_det`), which finds the
local minimum of each basin it starts in rather than the value at a sample.
"""

import functools
from typing import List, NamedTuple, Optional
import weakref

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import bounds
from tfp_ircpm import flows
from tfp_ircpm import tolerances

tfb = tfp.bijectors


class DiffeomorphismReport(NamedTuple):
  """Result of `check_diffeomorphism` (worst case over the IRCPM links).

  Attributes:
    min_det_uniform: min signed det J_{f⁻¹} over uniform points.
    min_det_points: the same over the given points (None without points).
    max_roundtrip_error: max d(x, f⁻¹(f(x))) over uniform points x.
    all_converged: every forward solve met its tolerance.
    bounds: `bounds.BoundReport` per link, or None if not requested.
    passed: determinants positive, solves converged to global minimisers,
      round trips within `roundtrip_tolerance`.
    all_global: no solve stopped at a critical point of h(x, ·) that a
      candidate point shows is not its minimiser (then f⁻¹ takes a value
      twice: the map is not a bijection, even where det > 0).
    min_det_search: the lowest det J_{f⁻¹} that the descent from the
      lowest-det points reached (`search_min_det`), or None without it.
  """
  min_det_uniform: float
  min_det_points: Optional[float]
  max_roundtrip_error: float
  all_converged: bool
  bounds: Optional[List[bounds.BoundReport]]
  passed: bool
  all_global: bool = True
  min_det_search: Optional[float] = None

  def summary(self) -> str:
    status = 'PASSED' if self.passed else 'FAILED'
    points = ('' if self.min_det_points is None else
              f', given points {self.min_det_points:.3g}')
    if self.min_det_search is not None:
      points += f', searched {self.min_det_search:.3g}'
    return (f'diffeomorphism check {status}: min det J_f⁻¹ uniform '
            f'{self.min_det_uniform:.3g}{points}; worst round trip '
            f'{self.max_roundtrip_error:.2e}; solves converged: '
            f'{self.all_converged}; global minimisers: {self.all_global}')


def check_diffeomorphism(bijector,
                         num_points: int = 100000,
                         points: Optional[tf.Tensor] = None,
                         dtype=None,
                         roundtrip_tolerance: Optional[float] = None,
                         bound_points: int = 0,
                         batch_size: int = 20000,
                         search_steps: int = 0,
                         search_starts: int = 512,
                         seed: int = 0) -> DiffeomorphismReport:
  """Checks that every IRCPM of `bijector` is (numerically) a diffeomorphism.

  Args:
    bijector: an `IRCPM` or a `tfb.Chain` of them (each distinct link is
      checked; a composition of diffeomorphisms is one).
    num_points: uniform points for the determinant and round-trip checks.
    points: optional extra points [..., ambient_dim] (e.g. data or samples)
      at which det J_{f⁻¹} is also checked.
    dtype: computation dtype; default the bijector's (float32 if it has
      none).
    roundtrip_tolerance: max allowed d(x, f⁻¹(f(x))); default by dtype
      (`tolerances`: 1e-4 float32, 1e-8 float64).
    bound_points: if > 0, also run `bounds.check_bounds` on that many points.
    batch_size: points per batch.
    search_steps: if > 0, per link, descend det J_{f⁻¹} for that many steps
      (`search_min_det`) from the `search_starts` lowest-det uniform and
      given points; the report's `min_det_search` must then be > 0 too.
    search_starts: starting points of the search, per link.
    seed: sampling seed.
  """
  links = flows.distinct(flows.bijector_layers(bijector))
  if dtype is None:
    dtype = next((l.dtype for l in links if l.dtype is not None), tf.float32)
  tol = roundtrip_tolerance or tolerances.for_dtype(dtype).round_trip
  min_det, min_det_pts, worst_rt, converged = float('inf'), None, 0., True
  global_minima = True
  min_det_search = None
  reports = [] if bound_points else None
  if points is not None:
    points = tf.cast(points, dtype)
    points = tf.reshape(points, [-1, points.shape[-1]])
  for k, link in enumerate(links):
    m = link.manifold
    lowest = _Lowest(int(search_starts) if search_steps else 0)
    done, i = 0, 0
    while done < num_points:
      n = min(batch_size, num_points - done)
      x = m.uniform(dtype).sample(n, seed=(seed, 1000 * k + i))
      det = link.inverse_jacobian_determinant(x)
      min_det = min(min_det, float(tf.reduce_min(det)))
      lowest.add(x, det)
      res = link.solve(x)
      converged &= bool(tf.reduce_all(res.converged))
      global_minima &= not bool(tf.reduce_any(res.suboptimal))
      back = link.inverse(tf.identity(res.point))
      worst_rt = max(worst_rt, float(tf.reduce_max(m.dist(x, back))))
      done += n
      i += 1
    if points is not None:
      for start in range(0, int(points.shape[0]), batch_size):
        y = points[start:start + batch_size]
        det = link.inverse_jacobian_determinant(y)
        d = float(tf.reduce_min(det))
        min_det_pts = d if min_det_pts is None else min(min_det_pts, d)
        lowest.add(y, det)
    if search_steps and lowest.points is not None:
      d, _ = search_min_det(link, lowest.points, int(search_steps))
      d = float(tf.reduce_min(d))
      min_det_search = d if min_det_search is None else min(min_det_search,
                                                            d)
    if bound_points:
      reports.append(bounds.check_bounds(m, link.potential,
                                         num_points=bound_points, dtype=dtype,
                                         seed=seed))
  passed = (min_det > 0. and (min_det_pts is None or min_det_pts > 0.)
            and (min_det_search is None or min_det_search > 0.)
            and converged and global_minima and worst_rt <= tol)
  return DiffeomorphismReport(
      min_det_uniform=min_det, min_det_points=min_det_pts,
      max_roundtrip_error=worst_rt, all_converged=converged, bounds=reports,
      passed=bool(passed), all_global=global_minima,
      min_det_search=min_det_search)


class _Lowest:
  """The `size` points with the lowest det seen so far ([size, A])."""

  def __init__(self, size: int):
    self.size, self.points, self.dets = size, None, None

  def add(self, points: tf.Tensor, dets: tf.Tensor):
    if not self.size:
      return
    if self.points is not None:
      points = tf.concat([self.points, points], 0)
      dets = tf.concat([self.dets, dets], 0)
    keep = tf.math.top_k(-dets, k=min(self.size, int(dets.shape[0]))).indices
    self.points, self.dets = tf.gather(points, keep), tf.gather(dets, keep)


def search_min_det(link, starts: tf.Tensor, steps: int = 30,
                   initial_step: float = 1e-2, max_step: float = 0.1,
                   keep: Optional[int] = None):
  """Local minima of det J_{f⁻¹} of one IRCPM, by descent from `starts`.

  Riemannian descent along −grad det / ‖grad det‖ with a step length per
  point that grows ×1.5 after a decrease and halves otherwise, so each
  point settles into the basin it starts in whatever that basin's width
  (from the 0.1 rad scale of an MLP ψ down to the 0.003 rad of a sharp
  well); a fold patch too narrow for any sample is found from the skirt
  around it, where det already dips. Only decreases are accepted, so the
  result is at most the starts' det.

  The descent runs as one traced `tf.while_loop` per link (traced once per
  dtype, any number of starts or steps): eagerly, each step's nested tapes
  cost about as much as tracing them, and training calls this at every
  evaluation.

  Args:
    link: an `IRCPM`.
    starts: [K, ambient_dim] points of its manifold.
    steps: descent steps (each one det evaluation and one gradient).
    initial_step, max_step: step lengths (radians of geodesic distance).
    keep: if given, descend from only the `keep` starts of lowest det.

  Returns:
    (det [K], points [K, ambient_dim]): the lowest det each start (or each
    kept start) reached and where.
  """
  y = tf.convert_to_tensor(starts)
  search = _SEARCHES.get(link)
  if search is None:
    search = tf.function(functools.partial(_descend_det, link),
                         reduce_retracing=True)
    _SEARCHES[link] = search
  keep = -1 if keep is None else min(int(keep), int(y.shape[0]))
  return search(y, tf.constant(int(steps)),
                tf.constant(initial_step, y.dtype),
                tf.constant(max_step, y.dtype), tf.constant(keep))


# One traced search per link, dropped with the link.
_SEARCHES = weakref.WeakKeyDictionary()


def _descend_det(link, y, steps, initial_step, max_step, keep):
  """`search_min_det`'s loop; see there."""
  m = link.manifold
  if keep >= 0:
    det = link.inverse_jacobian_determinant(y)
    y = tf.gather(y, tf.math.top_k(-det, k=keep).indices)
  length = tf.fill(tf.shape(y)[:1], initial_step)
  for _ in tf.range(steps):
    tf.autograph.experimental.set_loop_options(
        shape_invariants=[(y, tf.TensorShape([None, y.shape[-1]])),
                          (length, tf.TensorShape([None]))])
    with tf.GradientTape() as tape:
      tape.watch(y)
      det = link.inverse_jacobian_determinant(y)
    g = m.proju(y, tape.gradient(det, y))
    norm = tf.norm(g, axis=-1, keepdims=True)
    moving = tf.squeeze(norm, -1) > 0.
    direction = -g / tf.where(norm > 0., norm, tf.ones_like(norm))
    trial = m.expmap(y, direction * length[:, tf.newaxis])
    trial_det = link.inverse_jacobian_determinant(trial)
    better = moving & (trial_det < det)
    y = tf.where(better[:, tf.newaxis], trial, y)
    length = tf.where(better, tf.minimum(1.5 * length, max_step),
                      0.5 * length)
  return link.inverse_jacobian_determinant(y), y
