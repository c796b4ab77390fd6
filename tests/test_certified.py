"""Certified potentials: the derivative bounds are valid upper bounds."""

import math

import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import bounds

M = ircpm.manifolds


@pytest.mark.parametrize('manifold', [M.Sphere(2), M.Torus(2),
                                      M.Product([M.Torus(1), M.Sphere(2)]),
                                      M.Power(M.Sphere(2), 2),
                                      M.Power(M.Torus(1), 3)],
                         ids=repr)
@pytest.mark.parametrize('scale', [0.05, 3.0])
def test_bounds_dominate_measured_derivatives(manifold, scale):
  for seed in range(3):
    psi = ircpm.potentials.MLP(manifold, (32, 32), output_scale=scale,
                               seed=seed, dtype=tf.float64)
    g_bound, h_bound = psi.derivative_bounds()
    g, h = bounds.potential_derivatives(
        manifold, psi, manifold.uniform(tf.float64).sample(20000, seed=seed))
    assert float(tf.reduce_max(g)) <= float(g_bound)
    assert float(tf.reduce_max(h)) <= float(h_bound)
    # ...and not absurdly so at init (the looseness is documented).
    assert float(h_bound) < 500 * float(tf.reduce_max(h))


@pytest.mark.parametrize('manifold,radius', [
    (M.Sphere(2), None), (M.Sphere(2), 0.5), (M.Torus(2), None),
    (M.Product([M.Torus(1), M.Sphere(2)]), None),
    (M.Power(M.Sphere(2), 2), None), (M.Power(M.Sphere(2), 2), 0.5),
    (M.Power(M.Torus(1), 3), None)], ids=repr)
def test_certified_potential_meets_lemma4_for_any_weights(manifold, radius):
  psi = ircpm.potentials.MLP(manifold, (32, 32), output_scale=1.,
                             certified=True, certified_radius=radius, seed=0,
                             dtype=tf.float64)
  targets = ircpm.potentials.certified_targets(manifold, radius)
  for factor in [1., 10., 100.]:        # blow the weights up
    for w in psi.weights:
      w.assign(w * factor)
    r = bounds.check_bounds(manifold, psi, num_points=20000)
    if targets is not None:
      assert r.max_grad <= targets[0] and r.max_hess <= targets[1]
    assert r.guaranteed, r.verdict()
  # Uncertified, the same weights break the bounds.
  raw = ircpm.potentials.MLP(manifold, (32, 32), output_scale=1., seed=0,
                             dtype=tf.float64)
  for w_raw, w in zip(raw.weights, psi.weights):
    w_raw.assign(w)
  for b_raw, b in zip(raw.biases, psi.biases):
    b_raw.assign(b)
  assert not bounds.check_bounds(manifold, raw, num_points=20000).guaranteed


def test_certified_needs_softplus_and_a_valid_radius():
  with pytest.raises(ValueError, match='softplus'):
    ircpm.potentials.MLP(M.Sphere(2), certified=True, activation=tf.tanh)
  with pytest.raises(ValueError, match='radius'):
    ircpm.potentials.MLP(M.Sphere(2), certified=True, certified_radius=2.)


def test_adaptive_radius_is_the_largest_admissible_scale():
  """On spheres c = 0.98 atan(2G/H)/(2G): cG = 0.98 λ/2, cH = 0.98 λ cot λ
  for λ = atan(2G/H), so both bounds of Sec. 4.3 bind at once."""
  psi = ircpm.potentials.MLP(M.Sphere(2), (16, 16), output_scale=5.,
                             certified=True, seed=1, dtype=tf.float64)
  g, h = [float(v) for v in psi.derivative_bounds()]
  c = float(psi.certified_scale())
  lam = math.atan(2. * g / h)
  assert c < 1.
  assert c * g == pytest.approx(0.98 * lam / 2., rel=1e-12)
  assert c * h == pytest.approx(0.98 * lam / math.tan(lam), rel=1e-12)
  # c / 0.98 is the supremum of admissible scales: 1% above it, no λ in
  # (0, π/2) satisfies both bounds; 1% below it, λ = atan(2G/H) does.
  lams = [k * (math.pi / 2) / 2000 for k in range(1, 2000)]
  ok = lambda s: any(s * g < l / 2. and s * h < l / math.tan(l) for l in lams)
  assert not ok(1.01 * c / 0.98)
  assert ok(0.99 * c / 0.98)


def test_power_targets_are_the_factors():
  """Power(M, k) and Product([M] * k) certify with M's constants."""
  for factor in [M.Sphere(2), M.Torus(1)]:
    for radius in [0.5, 1.2]:
      t = ircpm.potentials.certified_targets(M.Power(factor, 3), radius)
      assert t == ircpm.potentials.certified_targets(factor, radius)
      assert t == ircpm.potentials.certified_targets(
          M.Product([factor] * 3), radius)
  assert ircpm.potentials.certified_targets(M.Power(M.Sphere(2), 2)) is None
  assert ircpm.potentials.certified_targets(M.Power(M.Torus(1), 2)) == (
      pytest.approx(0.98 * 0.98 * math.pi / 2), 0.98)
  with pytest.raises(ValueError, match='radius'):
    ircpm.potentials.certified_targets(M.Power(M.Sphere(2), 2), 1.6)
  with pytest.raises(ValueError, match='radius'):
    ircpm.potentials.certified_targets(M.Power(M.Torus(1), 2), 3.2)


def test_sphere_and_torus_numbers_are_unchanged():
  """The Lemma 4 targets written out for the unit sphere and the torus."""
  lam = 0.5
  g, h = ircpm.potentials.certified_targets(M.Sphere(2), lam)
  assert g == pytest.approx(0.98 * lam / 2, rel=1e-15)
  assert h == pytest.approx(0.98 * lam / math.tan(lam), rel=1e-15)
  g, h = ircpm.potentials.certified_targets(M.Torus(2))
  assert g == pytest.approx(0.98 * 0.98 * math.pi / 2, rel=1e-15)
  assert h == pytest.approx(0.98, rel=1e-15)


def test_manifold_without_constants_is_refused():
  class Opaque(M.Torus):
    embed_derivative_bounds = None
  with pytest.raises(ValueError, match='No certified bounds'):
    ircpm.potentials.MLP(Opaque(2), certified=True)
  with pytest.raises(ValueError, match='No certified bounds'):
    ircpm.potentials.MLP(Opaque(2)).derivative_bounds()
