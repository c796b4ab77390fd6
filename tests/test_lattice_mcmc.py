"""tfp_ircpm.lattice.mcmc: the checkerboard heat bath against exact XY and
O(3) 2×2 results; the old module tfp_ircpm.mcmc."""

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import lattice
from tfp_ircpm import targets
from tfp_ircpm.lattice import mcmc


def test_heat_bath_matches_exact_xy_two_by_two():
  target = lattice.xy_model(2, 0.9)
  points, weights = targets.torus_grid(24, 4)
  x = tf.constant(points)
  log_w = -target.energy(x).numpy()
  p = weights * np.exp(log_w - log_w.max())
  p /= p.sum()
  energy = float((p * target.energy_per_site(x).numpy()).sum())
  m = target.magnetisation(x).numpy()
  chi = float((p * (m ** 2).sum(-1)).sum() / 4)
  run = mcmc.heat_bath(target, num_chains=64, num_sweeps=250, burn_in=50,
                       seed=3, samples_every=10)
  e, c = mcmc.summarize(run['energy_per_site']), mcmc.summarize(
      run['m2_per_site'])
  assert abs(e['mean'] - energy) < 5 * e['stderr']
  assert abs(c['mean'] - chi) < 5 * c['stderr']
  assert e['stderr'] < 0.02
  # The kept points are chain states: 20 sweeps × 64 chains, the last of
  # them the final state, with the exact mean energy.
  samples = run['samples']
  assert samples.shape == (20 * 64, 4)
  np.testing.assert_array_equal(samples[-64:], run['final'])
  e_samples = target.energy_per_site(tf.constant(samples)).numpy()
  assert abs(e_samples.mean() - energy) < 5 * e['stderr'] * np.sqrt(10)
  with pytest.raises(ValueError, match='samples_every'):
    mcmc.heat_bath(target, 2, 3, 1, samples_every=-1)


def test_heat_bath_matches_exact_o3_ring():
  # L = 2 is a 4-ring with coupling K = 2β; with i_l(K) = ½∫e^{Kt}P_l(t)dt,
  # Z ∝ Σ_l (2l+1) i_l⁴ and ⟨Σ_ring s·s⟩ = ∂_K log Z.
  beta = 0.5
  k = 2 * beta
  t, w = np.polynomial.legendre.leggauss(100)
  legendre = [np.polynomial.legendre.Legendre.basis(l)(t) for l in range(25)]
  i_l = np.array([0.5 * np.sum(w * np.exp(k * t) * p) for p in legendre])
  di_l = np.array([0.5 * np.sum(w * t * np.exp(k * t) * p) for p in legendre])
  deg = 2 * np.arange(25) + 1
  ring = np.sum(deg * 4 * i_l ** 3 * di_l) / np.sum(deg * i_l ** 4)
  exact = -2. * ring / 4.          # every ring bond is two lattice bonds
  run = mcmc.heat_bath(lattice.o3_model(2, beta), num_chains=64,
                       num_sweeps=250, burn_in=50, seed=4)
  e = mcmc.summarize(run['energy_per_site'])
  assert abs(e['mean'] - exact) < 5 * e['stderr']
  with pytest.raises(ValueError, match='even'):
    mcmc.heat_bath(lattice.xy_model(3, 1.), 2, 3, 1)


def test_old_mcmc_module_is_the_lattice_heat_bath():
  for name in ('heat_bath', 'local_field', 'summarize', 'sweep', 'to_points'):
    assert getattr(ircpm.mcmc, name) is getattr(mcmc, name)
  assert lattice.heat_bath is mcmc.heat_bath
