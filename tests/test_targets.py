"""Targets: energies, symmetries and quadrature normalisers."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfp_ircpm import targets

I0_1 = 1.2660658777520082      # modified Bessel I₀(1)


def test_u1_normaliser_closed_form_and_symmetry():
  t = targets.torus_u1()
  # ∫∫ exp(-sin 2(θ₁-θ₂)) = 2π · 2π I₀(1)
  np.testing.assert_allclose(t.log_normalizer,
                             math.log(4 * math.pi ** 2 * I0_1), rtol=1e-12)
  x = t.manifold.uniform(tf.float64).sample(100, seed=1)
  for c in [0.4, 3.0]:
    np.testing.assert_allclose(t.energy(x + c), t.energy(x), atol=1e-12)


def test_u2_normaliser_closed_form_and_modes():
  t = targets.torus_u2()
  # Each bump integrates to (2π I₀(1))²; the mixture of three sums them.
  np.testing.assert_allclose(t.log_normalizer,
                             math.log(3 * (2 * math.pi * I0_1) ** 2),
                             rtol=1e-12)
  # The φ's are where the density peaks.
  phi = tf.constant(targets._U2_PHI, tf.float64)
  offsets = tf.constant([[0.3, 0.], [0., 0.3], [-0.3, 0.], [0., -0.3]],
                        tf.float64)
  for p in tf.unstack(phi):
    around = t.log_prob(p + offsets)
    assert np.all(t.log_prob(p[None]).numpy() > around.numpy())


def test_u3_has_eight_modes_and_converged_normaliser():
  t = targets.torus_u3()
  # The 512² midpoint rule against a 2048² one: both spectrally accurate.
  pts, w = targets.torus_grid(2048)
  ref = np.log(np.sum(w * np.exp(-t.energy(tf.constant(pts)).numpy())))
  np.testing.assert_allclose(t.log_normalizer, ref, rtol=1e-12)
  n = 400      # contains the modes (multiples of π/4) exactly: no ties
  g = np.arange(n) * 2 * math.pi / n
  a, b = np.meshgrid(g, g, indexing='ij')
  lp = t.log_prob(tf.constant(np.stack([a, b], -1))).numpy()
  is_max = np.ones_like(lp, bool)
  for da in (-1, 0, 1):
    for db in (-1, 0, 1):
      if da or db:
        is_max &= lp > np.roll(np.roll(lp, da, 0), db, 1)
  assert is_max.sum() == 8


def test_sphere_target_normaliser_and_modes():
  t = targets.sphere_four_modes()
  mus = targets.sphere_modes()
  np.testing.assert_allclose(np.linalg.norm(mus, axis=-1), 1., atol=1e-12)
  # Modes are > 60° apart, so Z ≈ 4 · 4π sinh(10)/10 to a few 1e-4.
  np.testing.assert_allclose(
      t.log_normalizer, math.log(16 * math.pi * math.sinh(10.) / 10.),
      atol=1e-3)
  # The Gauss-Legendre grid integrates the normalised density to 1.
  pts, w = targets.sphere_grid(200, 400)
  total = np.sum(w * np.exp(t.log_prob(tf.constant(pts)).numpy()))
  np.testing.assert_allclose(total, 1., atol=1e-10)
  lp_modes = t.log_prob(tf.constant(mus)).numpy()
  assert np.all(lp_modes > np.max(t.log_prob(tf.constant(pts)).numpy()) - 1e-3)


@pytest.mark.parametrize('name', sorted(targets.TARGETS))
def test_float32_and_batch_shapes(name):
  t = targets.TARGETS[name]()
  x = t.manifold.uniform(tf.float32).sample([3, 4], seed=2)
  lp = t.log_prob(x)
  assert lp.shape == (3, 4) and lp.dtype == tf.float32
  np.testing.assert_allclose(
      lp, t.log_prob(tf.cast(x, tf.float64)).numpy(), rtol=1e-5, atol=1e-5)


def test_xy_vorticity_finds_a_vortex_pair_and_sums_to_zero():
  l = 8
  t = targets.xy_model(l, 0.9)
  r, c = np.meshgrid(np.arange(l), np.arange(l), indexing='ij')
  # A vortex at the centre of plaquette (2, 2), an antivortex at (2, 5).
  theta = (np.arctan2(r - 2.5, c - 2.5) - np.arctan2(r - 2.5, c - 5.5))
  w = t.vorticity(tf.constant((theta % (2 * np.pi)).reshape(1, -1))).numpy()
  expected = np.zeros((1, l, l))
  expected[0, 2, 2], expected[0, 2, 5] = 1., -1.
  np.testing.assert_array_equal(w, expected)
  assert float(t.vortex_count(tf.constant(theta.reshape(1, -1)))[0]) == 2.
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 2 * np.pi, (50, l * l))
  w = t.vorticity(tf.constant(x)).numpy()
  np.testing.assert_array_equal(w.sum((1, 2)), 0.)        # the torus
  assert np.abs(w).sum() > 50                               # random: many
  np.testing.assert_array_equal(t.vorticity(tf.constant(x + 1.3)), w)
  np.testing.assert_array_equal(t.vortex_count(tf.zeros([2, l * l])), 0.)
  with pytest.raises(ValueError, match='XY'):
    targets.o3_model(2, 1.).vorticity(tf.zeros([1, 12]))


def test_correlated_pairs_log_normalizer_is_the_quadrature_over_the_torus():
  """(n/2) log Z₂ against a 32⁴-point trapezoid rule on T⁴ (spectrally
  accurate for this smooth periodic integrand), and Σ over pairs."""
  t4 = targets.torus_correlated_pairs(4)
  direct = targets.Target(t4.manifold, t4.energy,
                          lambda: targets.torus_grid(32, 4), 'direct')
  assert t4.log_normalizer == pytest.approx(direct.log_normalizer, abs=1e-9)
  t2 = targets.torus_correlated_pairs(2)
  assert t4.log_normalizer == pytest.approx(2 * t2.log_normalizer, abs=1e-12)
  x = tf.constant(np.random.default_rng(0).uniform(0, 2 * np.pi, (5, 4)))
  np.testing.assert_allclose(t4.energy(x),
                             t2.energy(x[:, :2]) + t2.energy(x[:, 2:]))
  # Strongly correlated: θ_a − θ_b concentrates near π/2.
  pts, w = targets.torus_grid(128, 2)
  p = w * np.exp(t2.log_prob(tf.constant(pts)).numpy())
  assert np.sum(p) == pytest.approx(1., abs=1e-9)
  assert np.sum(p * np.cos(pts[:, 0] - pts[:, 1] - np.pi / 2)) > 0.7
  with pytest.raises(ValueError, match='even'):
    targets.torus_correlated_pairs(3)
