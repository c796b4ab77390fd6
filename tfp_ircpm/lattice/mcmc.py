"""Checkerboard heat-bath MCMC for the lattice O(n) models, in TensorFlow.

The reference sampler for `xy_model` / `o3_model`. For u = −β Σ_⟨ij⟩ sᵢ·sⱼ
the conditional of one spin given the rest is p(sᵢ | ·) ∝ exp(hᵢ·sᵢ),
hᵢ = β Σ_{j ~ i} sⱼ (sum over the four neighbours, with multiplicity): von
Mises with mean arg hᵢ and concentration |hᵢ| for XY, von Mises-Fisher with
mean hᵢ/|hᵢ| for O(3). Sites of one checkerboard colour share no bond
(L even), so each half-sweep samples all of them exactly and jointly: a
Gibbs sampler, many independent chains at once.

Every function takes the target (a `LatticeTarget`), whose `lattice`
supplies the neighbours, the colouring and the spins ⇄ points conversion.
Observables per configuration are the target's `energy_per_site` and
|M|²/L² (M = Σ sᵢ), whose mean is the susceptibility χ.
"""

from typing import Dict

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm.lattice import lattice as lattice_lib

tfd = tfp.distributions


def local_field(target, spins: tf.Tensor) -> tf.Tensor:
  """hᵢ = β Σ_{j ~ i} sⱼ for spins [C, L, L, n] → [C, L, L, n]."""
  total = lattice_lib.lattice_of(target).neighbour_sum(spins, trailing=1)
  return tf.constant(target.beta, spins.dtype) * total


def _conditional_sample(field: tf.Tensor, seed) -> tf.Tensor:
  """s ~ ∝ exp(h·s) on S^{n-1} for fields [..., n]: returns unit spins."""
  dtype = field.dtype
  norm = tf.norm(field, axis=-1)
  # κ = 0 is the uniform law; a floor keeps the samplers' arithmetic finite.
  kappa = tf.maximum(norm, tf.constant(1e-6, dtype))
  if field.shape[-1] == 2:
    theta = tfd.VonMises(tf.atan2(field[..., 1], field[..., 0]),
                         kappa).sample(seed=seed)
    return tf.stack([tf.cos(theta), tf.sin(theta)], -1)
  safe = tf.where(norm[..., None] > 1e-6, field,
                  tf.constant([0., 0., 1.], dtype))
  mean = safe / tf.norm(safe, axis=-1, keepdims=True)
  return tfd.VonMisesFisher(mean, kappa).sample(seed=seed)


def sweep(target, spins: tf.Tensor, seed) -> tf.Tensor:
  """One heat-bath sweep (both colours) of spins [C, L, L, n]."""
  lattice = lattice_lib.lattice_of(target)
  if lattice.size % 2:
    raise ValueError('The checkerboard heat bath needs an even lattice size, '
                     f'got L = {lattice.size}.')
  even = tf.constant(lattice.checkerboard)[None, :, :, None]
  seeds = tfp.random.split_seed(seed, n=2)
  for colour, s in zip((even, ~even), tf.unstack(seeds)):
    new = _conditional_sample(local_field(target, spins), s)
    spins = tf.where(colour, new, spins)
  return spins


def to_points(target, spins: tf.Tensor) -> tf.Tensor:
  """Spins [C, L, L, n] → manifold points [C, ambient_dim]."""
  return lattice_lib.lattice_of(target).points(spins)


def heat_bath(target, num_chains: int = 64, num_sweeps: int = 2000,
              burn_in: int = 200, seed: int = 0,
              dtype=tf.float64, samples_every: int = 0
              ) -> Dict[str, np.ndarray]:
  """Runs `num_chains` chains from uniform spins; observables after burn-in.

  Args:
    target: a `LatticeTarget` (β and its `lattice`).
    num_chains: independent chains.
    num_sweeps: sweeps per chain, burn-in included.
    burn_in: sweeps left out of the observables.
    seed: integer or stateless seed.
    dtype: of the spins.
    samples_every: if > 0, also keep the points of every chain after every
      this many sweeps past burn-in (e.g. training data for maximum
      likelihood); 0 keeps none.

  Returns:
    dict with `energy_per_site` and `m2_per_site` (|M|²/L²), each
    [num_sweeps − burn_in, num_chains] numpy arrays, and `final` points
    [num_chains, ambient_dim]; with `samples_every`, also `samples`
    [kept sweeps · num_chains, ambient_dim] (sweep-major).
  """
  if burn_in >= num_sweeps:
    raise ValueError('burn_in must be smaller than num_sweeps.')
  if samples_every < 0:
    raise ValueError(f'samples_every must be >= 0, got {samples_every}.')
  lattice = lattice_lib.lattice_of(target)
  l, n = lattice.size, lattice.spin_dim
  init_seed, run_seed = tfp.random.split_seed(seed, n=2)
  spins = tf.math.l2_normalize(
      tf.random.stateless_normal([num_chains, l, l, n], init_seed, dtype=dtype),
      axis=-1)

  @tf.function
  def step(spins, s):
    spins = sweep(target, spins, s)
    x = to_points(target, spins)
    m = tf.reduce_sum(spins, axis=[1, 2])
    return (spins, target.energy_per_site(x),
            tf.reduce_sum(m * m, -1) / float(lattice.num_sites))

  seeds = tfp.random.split_seed(run_seed, n=num_sweeps)
  energies, m2s, samples = [], [], []
  for i in range(num_sweeps):
    spins, e, m2 = step(spins, seeds[i])
    if i >= burn_in:
      energies.append(e.numpy())
      m2s.append(m2.numpy())
      if samples_every and (i + 1 - burn_in) % samples_every == 0:
        samples.append(to_points(target, spins).numpy())
  out = dict(energy_per_site=np.stack(energies), m2_per_site=np.stack(m2s),
             final=to_points(target, spins).numpy())
  if samples_every:
    out['samples'] = np.concatenate(samples, 0)
  return out


def summarize(values: np.ndarray) -> Dict[str, float]:
  """Mean and standard error of [sweeps, chains] samples (chains independent:
  the error is the spread of the per-chain means)."""
  chain_means = values.mean(axis=0)
  return dict(mean=float(chain_means.mean()),
              stderr=float(chain_means.std(ddof=1)
                           / np.sqrt(len(chain_means))))


__all__ = ['heat_bath', 'local_field', 'summarize', 'sweep', 'to_points']
