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
