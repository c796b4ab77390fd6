"""check_diffeomorphism: passes on valid maps, catches folded ones."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import diagnostics
from conftest import MANIFOLDS
from conftest import fd_intrinsic_jacobian
from conftest import make_bijector

tfb = tfp.bijectors
M = ircpm.manifolds


@pytest.mark.parametrize('name', ['T2', 'S2', 'S3', 'T1xS2'])
def test_signed_determinant_matches_finite_differences(name):
  """Sign and size of det J_{f⁻¹} between oriented frames, including across
  the sphere's frame switch (points on both sides of the equator)."""
  m = MANIFOLDS[name]()
  bij = make_bijector(m, scale=0.8, seed=5)
  y = m.uniform(tf.float64).sample(64, seed=3)
  jac = fd_intrinsic_jacobian(m, bij.inverse, y, 1e-6)
  x = bij.inverse(y)
  orient = (m.frame_orientation(x) * m.frame_orientation(y)).numpy()
  np.testing.assert_allclose(bij.inverse_jacobian_determinant(y),
                             np.linalg.det(jac) * orient, rtol=1e-6)


def test_frame_orientation_is_the_sign_of_the_oriented_frame():
  s = M.Sphere(2)
  x = s.uniform(tf.float64).sample(500, seed=1)
  full = tf.concat([s.tangent_frame(x), x[..., None]], axis=-1)
  np.testing.assert_array_equal(np.sign(np.linalg.det(full.numpy())),
                                s.frame_orientation(x).numpy())


def test_valid_stack_passes():
  s = M.Sphere(2)
  b = make_bijector(s, scale=0.3, seed=3, dtype=tf.float32)
  r = diagnostics.check_diffeomorphism(tfb.Chain([b, b]), num_points=5000,
                                       points=s.uniform().sample(100, seed=2),
                                       bound_points=5000)
  assert r.passed and r.min_det_uniform > 0 and r.min_det_points > 0
  assert r.max_roundtrip_error < 1e-4 and r.all_converged
  assert len(r.bounds) == 1 and r.bounds[0].guaranteed
  assert 'PASSED' in r.summary()


def test_folded_torus_map_fails():
  """ψ = 3 cos θ: f⁻¹(y) = y − 3 sin y folds (derivative 1 − 3 cos y < 0)."""
  t = M.Torus(1)
  bad = ircpm.IRCPM(t, lambda y: 3. * tf.cos(y[..., 0]),
                    nonconvergence='ignore')
  r = diagnostics.check_diffeomorphism(bad, num_points=2000,
                                       dtype=tf.float64)
  np.testing.assert_allclose(r.min_det_uniform, -2., atol=1e-3)
  assert not r.passed and 'FAILED' in r.summary()


def test_collapsed_sphere_map_fails():
  """A narrow deep well: the solve from y = x stops in the wrong basin, f is
  not a bijection, the round trip breaks and det J_{f⁻¹} goes negative."""
  s = M.Sphere(2)
  bad = ircpm.IRCPM(s, lambda y: -0.8 * tf.exp(8. * (y[..., 2] - 1.)),
                    nonconvergence='ignore')
  r = diagnostics.check_diffeomorphism(bad, num_points=5000,
                                       dtype=tf.float64)
  assert r.min_det_uniform < 0 and r.max_roundtrip_error > 0.1
  assert not r.passed


def test_rejects_other_bijectors():
  with pytest.raises(TypeError, match='IRCPM'):
    diagnostics.check_diffeomorphism(tfb.Exp())


@pytest.mark.parametrize('share', [0.55, 0.62])
def test_search_finds_a_fold_narrower_than_the_samples(share):
  # Two wells of κ = 10⁴ at ±√(3/κ) from p: their concave skirts add up at
  # p along the axis between them. By symmetry p is a critical point of
  # det J_{f⁻¹}, its minimum; at share 0.62 det(p) < 0 on a patch of
  # ~0.003 rad that 2000 uniform points and the skirt rings both miss.
  from tfp_ircpm import density, potentials
  m = ircpm.manifolds.Sphere(2)
  kappa = 1e4
  rho = np.sqrt(3. / kappa)
  centres = np.array([[np.sin(rho), 0., np.cos(rho)],
                      [-np.sin(rho), 0., np.cos(rho)]])
  psi = potentials.Wells(m, centres, concentration=kappa, curvature=share,
                         bound='well', min_concentration=10.,
                         dtype=tf.float64)
  q = ircpm.make_flow(m, 1, potential=[psi], dtype=tf.float64)
  link = ircpm.flows.bijector_layers(q.bijector)[0]
  p = tf.constant([[0., 0., 1.]], tf.float64)
  det_p = float(link.inverse_jacobian_determinant(p)[0])
  rings = density.skirt_points([psi], 16, (1, 2))
  ring_min = float(tf.reduce_min(link.inverse_jacobian_determinant(rings)))
  assert ring_min > max(det_p + 0.03, 0.)  # the samples alone miss it

  det, y = diagnostics.search_min_det(link, rings, steps=30)
  best = int(tf.argmin(det))
  np.testing.assert_allclose(float(det[best]), det_p, atol=1e-9)
  assert float(m.dist(y[best:best + 1], p)[0]) < 1e-4
  assert np.all(det.numpy() <= link.inverse_jacobian_determinant(
      rings).numpy() + 1e-12)             # only decreases are accepted

  plain = diagnostics.check_diffeomorphism(q.bijector, num_points=2000,
                                           points=rings, seed=0)
  searched = diagnostics.check_diffeomorphism(
      q.bijector, num_points=2000, points=rings, search_steps=30, seed=0)
  assert plain.passed and plain.min_det_search is None
  np.testing.assert_allclose(searched.min_det_search, det_p, atol=1e-9)
  assert searched.passed == (det_p > 0.)
  assert ('searched' in searched.summary()) and (
      ('FAILED' in searched.summary()) == (det_p < 0.))
