"""Certified potentials: the derivative bounds are valid upper bounds."""

import pytest
import tensorflow as tf

import tfp_ircpm as ircpm
from tfp_ircpm import bounds

M = ircpm.manifolds


@pytest.mark.parametrize('manifold', [M.Sphere(2), M.Torus(2),
                                      M.Product([M.Torus(1), M.Sphere(2)])],
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


@pytest.mark.parametrize('manifold', [M.Sphere(2), M.Torus(2)], ids=repr)
def test_certified_potential_meets_lemma4_for_any_weights(manifold):
  psi = ircpm.potentials.MLP(manifold, (32, 32), output_scale=1.,
                             certified=True, seed=0, dtype=tf.float64)
  for factor in [1., 10., 100.]:        # blow the weights up
    for w in psi.weights:
      w.assign(w * factor)
    r = bounds.check_bounds(manifold, psi, num_points=20000)
    g_target, h_target = ircpm.potentials.certified_targets(manifold)
    assert r.max_grad <= g_target and r.max_hess <= h_target
    assert r.guaranteed
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
