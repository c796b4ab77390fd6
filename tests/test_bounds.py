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
