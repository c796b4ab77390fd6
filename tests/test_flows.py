"""flows: building stacks of IRCPMs (`make_flow`) and walking them (`flow_layers`).

Proven here:

* `share=True` is one IRCPM (one ψ, one set of variables) applied L times,
  so q's bijector is f∘…∘f; `share=False` gives L distinct ψ with distinct
  values; a list of potentials is used layer by layer, one IRCPM per distinct
  ψ, and a list of the wrong length, or L < 1, raises;
* `flow_layers(q)` returns (base, layers) in application order: composing
  the layers' forward maps on base samples reproduces q.bijector.forward and
  q.sample with the same seed, while the reversed order does not; nested
  `Chain`s are flattened in order;
* anything that is not a flow of IRCPMs raises `NotAFlowError`, which is a
  TypeError and a ValueError;
* a flow over a plain `tfd.VonMisesFisher` base has a density that
  integrates to 1 on S² within 1e-4 (Fibonacci quadrature, 4000 points),
  while the same density without its log-det, or with the log-det's sign
  flipped, misses by more than 3e-4: the quadrature sees the log-det;
* `zero_output=True` starts at the identity (q = base exactly); `certified`
  and `**ircpm_kwargs` reach every layer; certified + zero_output on S²
  starts finite, with certificate scale 1.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from conftest import fibonacci_sphere

tfd = tfp.distributions
tfb = tfp.bijectors
M = ircpm.manifolds
flows = ircpm.flows

S2 = M.Sphere(2)


def _flow(num_layers=3, **kwargs):
  kwargs.setdefault('hidden_units', (8, 8))
  kwargs.setdefault('output_scale', 0.2)
  kwargs.setdefault('dtype', tf.float64)
  return ircpm.make_flow(S2, num_layers, **kwargs)


def _compose(layers, x):
  for layer in layers:
    x = layer.forward(x)
  return x


@pytest.fixture(scope='module')
def vmf_flow():
  """Two distinct IRCPMs over a plain tfd.VonMisesFisher base (float64).

  Gradient-descent solves: they trace in a third of a Newton solve's time.
  """
  base = tfd.VonMisesFisher(tf.constant([0., 0.6, 0.8], tf.float64),
                            tf.constant(3., tf.float64))
  return ircpm.make_flow(S2, 2, base=base, hidden_units=(8, 8),
                         output_scale=0.1, dtype=tf.float64, seed=4,
                         method='gradient')


def test_share_true_is_one_ircpm_applied_num_layers_times():
  q = _flow(3, share=True)
  base, layers = ircpm.flow_layers(q)
  assert base is q.distribution
  assert len(layers) == 3 and all(layer is layers[0] for layer in layers)
  assert len(flows.distinct(layers)) == 1
  # One ψ's variables, once.
  assert len(q.trainable_variables) == len(
      layers[0].potential.trainable_variables)
  # q's bijector is f∘f∘f, seen through the closed-form inverse (no solve):
  # q.bijector.inverse = f⁻¹∘f⁻¹∘f⁻¹.
  y = S2.uniform(tf.float64).sample(16, seed=(1, 2))
  f = layers[0]
  expected = f.inverse(f.inverse(f.inverse(tf.identity(y))))
  np.testing.assert_allclose(q.bijector.inverse(y).numpy(), expected.numpy(),
                             atol=1e-13)
  # Three applications are not one: the composition is really L-fold.
  once = f.inverse(tf.identity(y))
  assert np.max(S2.dist(expected, once).numpy()) > 1e-3


def test_share_false_gives_num_layers_distinct_potentials():
  q = _flow(3, share=False, seed=2)
  _, layers = ircpm.flow_layers(q)
  assert len(layers) == 3 and len(flows.distinct(layers)) == 3
  psis = [layer.potential for layer in layers]
  assert len({id(p) for p in psis}) == 3
  assert len(q.trainable_variables) == 3 * len(psis[0].trainable_variables)
  # Seeded 1000·seed + k: different networks, not copies.
  y = S2.uniform(tf.float64).sample(64, seed=(3, 4))
  values = [p(y).numpy() for p in psis]
  for i in range(3):
    for j in range(i):
      assert np.max(np.abs(values[i] - values[j])) > 1e-2


def test_flow_layers_are_in_application_order(vmf_flow):
  q = vmf_flow
  base, layers = ircpm.flow_layers(q)
  assert len(flows.distinct(layers)) == 2
  x = base.sample(16, seed=(5, 6))
  y = _compose(layers, x)
  np.testing.assert_allclose(q.bijector.forward(tf.identity(x)).numpy(),
                             y.numpy(), atol=1e-12)
  # q.sample pushes the base sample with the same seed through that order.
  np.testing.assert_allclose(q.sample(16, seed=(5, 6)).numpy(), y.numpy(),
                             atol=1e-12)
  # The order matters for these layers, so the checks above can fail.
  y_reversed = _compose(layers[::-1], tf.identity(x))
  assert np.max(S2.dist(y, y_reversed).numpy()) > 1e-4
  # The inverse undoes them in the opposite order.
  x_back = tf.identity(y)
  for layer in layers[::-1]:
    x_back = layer.inverse(x_back)
  np.testing.assert_allclose(x_back.numpy(), x.numpy(), atol=1e-9)


def test_a_list_of_potentials_is_used_layer_by_layer():
  mlp = lambda s: ircpm.potentials.MLP(S2, (8,), output_scale=0.1, seed=s,
                                       dtype=tf.float64)
  a, b = mlp(1), mlp(2)
  q = ircpm.make_flow(S2, 3, potential=[a, b, a], dtype=tf.float64)
  _, layers = ircpm.flow_layers(q)
  assert [id(layer.potential) for layer in layers] == [id(a), id(b), id(a)]
  assert layers[0] is layers[2] and layers[0] is not layers[1]
  distinct = flows.distinct(layers)
  assert len(distinct) == 2
  assert distinct[0] is layers[0] and distinct[1] is layers[1]
  # One callable is shared by every layer.
  q1 = ircpm.make_flow(S2, 2, potential=a, dtype=tf.float64)
  _, layers1 = ircpm.flow_layers(q1)
  assert layers1[0] is layers1[1] and layers1[0].potential is a
  with pytest.raises(ValueError, match='2 potentials for 3 layers'):
    ircpm.make_flow(S2, 3, potential=[a, b])
  with pytest.raises(ValueError, match='num_layers'):
    ircpm.make_flow(S2, 0)


def test_ircpm_kwargs_and_certified_reach_every_layer():
  q = _flow(2, method='gradient', tolerance=1e-7, certified=True)
  _, layers = ircpm.flow_layers(q)
  assert len(flows.distinct(layers)) == 2
  assert all(layer.method == 'gradient' for layer in layers)
  assert all(layer.tolerance == 1e-7 for layer in layers)
  assert all(layer.potential.certified for layer in layers)
  y = S2.uniform(tf.float64).sample(8, seed=(1, 3))
  assert all(np.all(np.isfinite(layer.potential(y).numpy()))
             for layer in layers)


def test_zero_output_starts_at_the_identity():
  q = _flow(1, zero_output=True)
  _, layers = ircpm.flow_layers(q)
  y = S2.uniform(tf.float64).sample(16, seed=(9, 10))
  np.testing.assert_array_equal(layers[0].potential(y).numpy(), 0.)
  # ψ = 0: f⁻¹ is the identity with log-det 0, so q is its base.
  np.testing.assert_allclose(q.bijector.inverse(y).numpy(), y.numpy(),
                             atol=1e-15)
  np.testing.assert_allclose(q.log_prob(y).numpy(),
                             np.full(16, -math.log(4. * math.pi)), atol=1e-13)


def test_certified_zero_output_flow_starts_finite_at_the_identity():
  """ψ ≡ 0 has derivative bounds 0; the certificate's scale is then 1 (the
  limit of its formula), not atan(0/0)/0, and training can leave it."""
  q = _flow(1, certified=True, zero_output=True)
  y = S2.uniform(tf.float64).sample(4, seed=(2, 3))
  psi = ircpm.flow_layers(q)[1][0].potential
  with tf.GradientTape() as tape:
    value = psi(y)
    scale = psi.certified_scale()
  grads = tape.gradient(scale + tf.reduce_sum(value), psi.trainable_variables)
  assert np.all(value.numpy() == 0.) and float(scale) == 1.
  assert all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None)
  np.testing.assert_allclose(q.log_prob(y).numpy(),
                             np.full(4, -math.log(4. * math.pi)), atol=1e-13)


def test_nested_chains_are_flattened_in_application_order():
  a, b, c = (ircpm.IRCPM(S2, ircpm.potentials.MLP(S2, (4,), seed=s,
                                                  dtype=tf.float64))
             for s in range(3))
  chain = ircpm.bijectors.Chain([ircpm.bijectors.Chain([c, b]), a])
  q = tfd.TransformedDistribution(S2.uniform(tf.float64), chain)
  assert flows.is_transformed(q)
  _, layers = ircpm.flow_layers(q)
  assert layers[0] is a and layers[1] is b and layers[2] is c
  only = flows.bijector_layers(a)
  assert len(only) == 1 and only[0] is a


@pytest.mark.parametrize('not_a_flow', ['vmf', 'scale', 'bijector'])
def test_flow_layers_of_a_non_flow_raises(not_a_flow):
  mu = tf.constant([0., 0., 1.], tf.float64)
  if not_a_flow == 'vmf':
    obj = tfd.VonMisesFisher(mu, tf.constant(2., tf.float64))
  elif not_a_flow == 'scale':
    obj = tfd.TransformedDistribution(tfd.Normal(0., 1.), tfb.Scale(2.))
  else:
    obj = ircpm.IRCPM(S2, ircpm.potentials.MLP(S2, (4,), seed=0,
                                               dtype=tf.float64))
  assert issubclass(flows.NotAFlowError, TypeError)
  assert issubclass(flows.NotAFlowError, ValueError)
  for expected in (flows.NotAFlowError, TypeError, ValueError):
    with pytest.raises(expected):
      ircpm.flow_layers(obj)
  assert flows.is_transformed(obj) == (not_a_flow == 'scale')


def test_flow_over_a_von_mises_fisher_base_integrates_to_one(vmf_flow):
  q = vmf_flow
  base = q.distribution
  assert type(base) is tfd.VonMisesFisher        # TFP's own, not a subclass
  pts = tf.constant(fibonacci_sphere(4000))
  log_q = q.log_prob(pts).numpy()
  log_base = base.log_prob(pts).numpy()
  area = 4. * math.pi
  # The quadrature is accurate on the base itself (its error here: 1e-5), ...
  assert abs(area * np.mean(np.exp(log_base)) - 1.) < 5e-5
  # ... the flow changes the density, ...
  assert np.max(np.abs(log_q - log_base)) > 0.05
  # ... and q still integrates to 1.
  tol = 1e-4
  assert abs(area * np.mean(np.exp(log_q)) - 1.) < tol
  # Without the log-det, or with its sign flipped, it would not (5e-4 and
  # 2e-3 here): the check sees the log-det.
  x = q.bijector.inverse(tf.identity(pts))
  ildj = q.bijector.inverse_log_det_jacobian(tf.identity(pts),
                                             event_ndims=1).numpy()
  log_base_x = base.log_prob(x).numpy()
  np.testing.assert_allclose(log_base_x + ildj, log_q, atol=1e-10)
  assert abs(area * np.mean(np.exp(log_base_x)) - 1.) > 3. * tol
  assert abs(area * np.mean(np.exp(log_base_x - ildj)) - 1.) > 3. * tol
