"""The bound check (Secs. 4.1-4.3) against potentials with known derivatives."""

import math

import numpy as np
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import bounds

M = ircpm.manifolds


def test_sphere_quadratic_potential():
  """ψ = a z² on S²: max‖grad ψ‖ = a, max‖Hess ψ‖ = 2a (at the equator)."""
  a = 0.1
  r = bounds.check_bounds(M.Sphere(2), lambda y: a * y[..., 2] ** 2,
                          num_points=40000)
  np.testing.assert_allclose(r.max_grad, a, rtol=1e-3)
  np.testing.assert_allclose(r.max_hess, 2 * a, rtol=1e-3)
  np.testing.assert_allclose(r.eta, 2 * a / math.tan(2 * a), rtol=1e-3)
  assert r.curved and r.guaranteed
  assert 'provably' in r.verdict()


def test_sphere_verdict_fails_when_hessian_exceeds_tcot():
  # ψ = 0.4 z²: λ = 0.8, η = 0.8 cot 0.8 ≈ 0.778 < max‖Hess‖ = 0.8.
  r = bounds.check_bounds(M.Sphere(2), lambda y: 0.4 * y[..., 2] ** 2,
                          num_points=40000)
  assert r.max_hess > r.eta and not r.guaranteed
  assert 'NOT guaranteed' in r.verdict()


def test_torus_criterion():
  r = bounds.check_bounds(M.Torus(2), lambda y: 0.9 * tf.cos(y[..., 0]),
                          num_points=20000)
  np.testing.assert_allclose([r.max_grad, r.max_hess], [0.9, 0.9], rtol=1e-3)
  assert not r.curved and r.eta == 1. and r.guaranteed
  r = bounds.check_bounds(M.Torus(2), lambda y: 1.1 * tf.cos(y[..., 0]),
                          num_points=20000)
  assert not r.guaranteed


def test_product_uses_the_sphere_criterion():
  p = M.Product([M.Torus(1), M.Sphere(2)])
  r = bounds.check_bounds(p, lambda y: 0.1 * tf.cos(y[..., 0]) + 0.1 * y[..., 3],
                          num_points=10000)
  assert r.curved
  assert r.max_grad <= math.sqrt(0.1 ** 2 + 0.1 ** 2) + 1e-6


def test_power_of_spheres_uses_the_sphere_criterion():
  """(S²)² (the O(3) lattice manifold) with ψ = 0.4 z₁²: max‖grad ψ‖ = 0.4,
  max‖Hess ψ‖ = 0.8, λ = 0.8. The flat criterion (η = 1, λ < π) would pass;
  the sphere one (η = 0.8 cot 0.8 ≈ 0.777) fails."""
  m = M.Power(M.Sphere(2), 2)
  assert m.sectional_curvature_bound == 1.
  r = bounds.check_bounds(m, lambda y: 0.4 * y[..., 2] ** 2, num_points=20000)
  np.testing.assert_allclose([r.max_grad, r.max_hess], [0.4, 0.8], rtol=1e-3)
  np.testing.assert_allclose(r.eta, r.lam / math.tan(r.lam), rtol=1e-12)
  assert r.max_hess < 1. and r.lam < math.pi    # the flat criterion holds
  assert r.curved and not r.guaranteed
  assert 'λ·cot λ' in r.verdict() and 'NOT guaranteed' in r.verdict()
  # A small enough ψ passes the sphere criterion on the same manifold.
  r = bounds.check_bounds(m, lambda y: 0.1 * y[..., 5] ** 2, num_points=20000)
  assert r.curved and r.guaranteed


def test_power_of_circles_uses_the_torus_criterion():
  """(T¹)³ (the XY lattice manifold) with ψ = 0.9 cos θ₀: λ = 1.8 > π/2, so
  the sphere criterion would fail; the flat one (η = 1, λ < π) passes."""
  m = M.Power(M.Torus(1), 3)
  r = bounds.check_bounds(m, lambda y: 0.9 * tf.cos(y[..., 0]),
                          num_points=20000)
  np.testing.assert_allclose([r.max_grad, r.max_hess], [0.9, 0.9], rtol=1e-3)
  assert r.lam > math.pi / 2
  assert not r.curved and r.eta == 1. and r.guaranteed
  r = bounds.check_bounds(m, lambda y: 1.1 * tf.cos(y[..., 2]),
                          num_points=20000)
  assert not r.curved and not r.guaranteed


class _UnknownCurvature(M.Torus):
  """A torus that does not tell its curvature or injectivity radius."""
  sectional_curvature_bound = None
  injectivity_radius = None


def test_unknown_constants_never_certify():
  m = M.Product([M.Torus(1), _UnknownCurvature(1)])
  assert m.sectional_curvature_bound is None and m.injectivity_radius is None
  r = bounds.check_bounds(m, lambda y: 0.01 * tf.cos(y[..., 0]),
                          num_points=1000)
  assert r.curved and r.eta == 0. and not r.guaranteed
