"""Evaluation: exact importance weights on q's samples and on the target's.

`evaluate` draws from the model with exact log-dets and reports the ESS,
an importance-sampling log Z and KL(q‖p), and the energy per site, the
susceptibility χ and (XY) the vortex count, raw and reweighted, with
bootstrap errors. `evaluate_on_target_samples` adds KL(p‖q) and a bridge
log Z from heat-bath points.
"""

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import training


def vortex_count(target, y) -> np.ndarray:
  """Vortices per configuration [n] (XY), or zeros (O(3) has none)."""
  if target.spin != 'xy':
    return np.zeros(int(tf.shape(y)[0]))
  return target.vortex_count(y).numpy()


def _ess(log_w) -> float:
  return float(training.ess_from_log_weights(tf.constant(log_w, tf.float64)))


def bootstrap_errors(lw, energy, m2, resamples=200) -> Dict[str, float]:
  """Bootstrap standard errors of the ESS and the reweighted e and χ.

  The ESS of a few thousand weights, and every self-normalised estimate,
  moves by several percent between sample sets (measured: 54–64% for one
  flow); the spread over resamples of the same set says by how much.
  """
  rng = np.random.default_rng(0)
  w = np.exp(lw - lw.max())
  stats = []
  for _ in range(resamples):
    i = rng.integers(0, len(w), len(w))
    wi = w[i] / w[i].sum()
    stats.append((_ess(lw[i]), (wi * energy[i]).sum(), (wi * m2[i]).sum()))
  sd = np.std(np.array(stats), axis=0, ddof=1)
  return dict(ess_err=float(sd[0]), energy_reweighted_err=float(sd[1]),
              chi_reweighted_err=float(sd[2]))


def evaluate(model, target, num_samples: int, seed, batch_size: int
             ) -> Tuple[Dict[str, float], np.ndarray]:
  """Exact log-weights and observables on `num_samples` model samples.

  Returns (metrics dict, the finite log-weights log p̃ − log q [n]).
  """
  fn = tf.function(lambda s: model.sample_and_log_prob(batch_size, s,
                                                       'exact'))
  seeds = tfp.random.split_seed(seed, n=-(-num_samples // batch_size))
  log_w, energy, m2, vortices = [], [], [], []
  for s in tf.unstack(seeds):
    y, log_q = fn(s)
    log_w.append(-target.energy(y).numpy().astype(np.float64)
                 - log_q.numpy().astype(np.float64))
    energy.append(target.energy_per_site(y).numpy())
    m = target.magnetisation(y).numpy()
    m2.append((m ** 2).sum(-1) / target.num_sites)
    vortices.append(vortex_count(target, y))
  log_w = np.concatenate(log_w)[:num_samples]
  energy = np.concatenate(energy)[:num_samples]
  m2 = np.concatenate(m2)[:num_samples]
  vortices = np.concatenate(vortices)[:num_samples]
  finite = np.isfinite(log_w)
  out = dict(nonfinite=int((~finite).sum()))
  if not finite.any():
    nan = float('nan')
    out.update(ess=nan, log_z_is=nan, kl_is=nan, energy_flow=nan,
               energy_reweighted=nan, chi_flow=nan, chi_reweighted=nan)
    return out, log_w[finite]
  if not finite.all():
    out.update(ess=float('nan'))
    log_w, energy, m2 = log_w[finite], energy[finite], m2[finite]
    vortices = vortices[finite]
  else:
    out['ess'] = _ess(log_w)
  lw = log_w - log_w.max()
  w = np.exp(lw)
  log_z = float(log_w.max() + np.log(w.mean()))
  w = w / w.sum()
  # Heavy weight tails show here first: one sample carrying most of the
  # mass makes the ESS (and every reweighted value) rest on that sample.
  out['max_weight'] = float(w.max())
  out.update(log_z_is=log_z, kl_is=log_z - float(log_w.mean()),
             energy_flow=float(energy.mean()),
             energy_reweighted=float((w * energy).sum()),
             chi_flow=float(m2.mean()), chi_reweighted=float((w * m2).sum()))
  if target.spin == 'xy':
    out.update(vortices_flow=float(vortices.mean()),
               vortices_reweighted=float((w * vortices).sum()))
  out.update(bootstrap_errors(lw, energy, m2))
  return out, log_w


def evaluate_on_target_samples(model, target, points, log_w_q,
                               batch_size: int) -> Dict[str, object]:
  """KL(p‖q) and a bridge log Z from heat-bath points (samples of p).

  The ESS measured on q's samples misses regions where p has mass and q
  has almost none (they show up only as rare huge weights), so it can be
  far too high on a few thousand samples. KL(p‖q) = mean_p log w − log Z
  sees them, and bounds the ESS: ESS → 1/E_p[w/Z] <= exp(−KL(p‖q)).
  log Z is `training.bridge_log_normalizer` of both sets of weights.
  """
  log_prob = tf.function(model.log_prob)
  log_q = np.concatenate([
      log_prob(tf.constant(points[i:i + batch_size])).numpy()
      for i in range(0, len(points), batch_size)]).astype(np.float64)
  log_w_p = -target.energy(tf.constant(points)).numpy().astype(
      np.float64) - log_q
  finite = np.isfinite(log_w_p)
  out = dict(target_points=len(points), target_nonfinite=int((~finite).sum()))
  if not finite.all() or not len(log_w_q):
    return out
  log_z = training.bridge_log_normalizer(log_w_q, log_w_p)
  kl_pq = float(log_w_p.mean()) - log_z
  out.update(log_z_bridge=log_z, kl_pq=kl_pq,
             kl_qp=log_z - float(log_w_q.mean()),
             ess_bound=float(np.exp(-kl_pq)))
  if target.spin == 'xy':
    # KL(p‖q) = Σ_k P(k vortices) · mean_{p, k} (log w − log Z): which
    # topological sectors q under-weights.
    counts = vortex_count(target, tf.constant(points))
    out['kl_pq_by_vortex_count'] = {
        str(int(k)): [float((counts == k).mean()),
                      float(log_w_p[counts == k].mean() - log_z)]
        for k in np.unique(counts)}
  return out
