"""Potentials: the paper's parametrisations and their symmetries."""

import functools
import math
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfp_ircpm as ircpm
from tfp_ircpm import targets

M = ircpm.manifolds
P = ircpm.potentials


def test_parameter_counts_match_table1():
  torus = M.Torus(2)
  # The paper's 1249 includes an output bias that cannot affect the flow.
  assert P.MLP(torus, (32, 32)).num_parameters == 1248
  assert P.EnergyPotential(torus, targets._u1).num_parameters == 1
  assert P.EnergyPotential(torus, targets._u1,
                           quadratic=True).num_parameters == 4


def test_invariant_mlp_gives_an_equivariant_flow():
  torus = M.Torus(2)
  psi = P.InvariantMLP(torus, P.diagonal_shift_features, 2, (16, 16),
                       output_scale=0.3, seed=1, dtype=tf.float64)
  x = torus.uniform(tf.float64).sample(64, seed=2)
  np.testing.assert_allclose(psi(x + 1.3), psi(x), atol=1e-12)
  bij = ircpm.IRCPM(torus, psi)
  lhs = bij.forward(torus.projx(x + 1.3))
  rhs = torus.projx(bij.forward(tf.identity(x)) + 1.3)
  assert np.max(torus.dist(lhs, rhs).numpy()) < 1e-10


def test_energy_potential_matches_its_formula():
  torus = M.Torus(2)
  u = targets._u3
  psi = P.EnergyPotential(torus, u, quadratic=True, alpha=0.2,
                          dtype=tf.float64)
  psi.m_entries.assign([0.1, -0.05, 0.2])       # M = [[.1, -.05], [-.05, .2]]
  x = torus.uniform(tf.float64).sample(16, seed=3).numpy()
  a, b = x[:, 0], x[:, 1]
  grad = np.stack([2.8 * np.cos(2 * a) * np.sin(2 * b),
                   2.8 * np.sin(2 * a) * np.cos(2 * b)], -1)
  m = np.array([[0.1, -0.05], [-0.05, 0.2]])
  expected = 0.2 * u(tf.constant(x)).numpy() + np.einsum('ni,ij,nj->n', grad,
                                                         m, grad)
  np.testing.assert_allclose(psi(tf.constant(x)), expected, rtol=1e-12)


def test_energy_potential_solves_inside_the_paused_tape_graph():
  """ψ uses a derivative of u; the solve builds it with tapes paused."""
  torus = M.Torus(2)
  psi = P.EnergyPotential(torus, targets._u2, quadratic=True, alpha=0.3,
                          dtype=tf.float64)
  psi.m_entries.assign([0.05, 0.02, -0.03])
  bij = ircpm.IRCPM(torus, psi, validate_args=True)
  x = torus.uniform(tf.float64).sample(32, seed=4)
  y = bij.forward(x)
  assert np.max(torus.dist(x, bij.inverse(tf.identity(y))).numpy()) < 1e-10
  assert np.max(torus.dist(x, y).numpy()) > 1e-2
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.sin(bij.forward(x + 0.)))
  grads = tape.gradient(loss, psi.trainable_variables)
  assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_energy_potential_on_the_sphere_is_frame_free():
  sphere = M.Sphere(2)
  psi = P.EnergyPotential(sphere, targets._u_s2, quadratic=True,
                          dtype=tf.float64)
  assert psi.num_parameters == 1 + 6
  psi.m_entries.assign(np.arange(6) * 0.01)
  # No tangent frame is involved, so ψ is continuous across the equator,
  # where Sphere.tangent_frame switches its reference pole.
  eps = 1e-7
  x = tf.constant([[math.sqrt(1 - eps ** 2), 0., eps],
                   [math.sqrt(1 - eps ** 2), 0., -eps]], tf.float64)
  v = psi(x).numpy()
  assert abs(v[0] - v[1]) < 1e-5


# -- Non-smooth potentials ------------------------------------------------------


def test_mlp_warns_about_a_non_smooth_activation():
  torus = M.Torus(2)
  for act, name in [(tf.nn.relu, 'relu'), (tf.nn.elu, 'elu'),
                    (functools.partial(tf.nn.leaky_relu, alpha=0.1),
                     'leaky_relu'), (tf.abs, 'abs')]:
    with pytest.warns(UserWarning, match=f"'{name}' is not twice"):
      psi = P.MLP(torus, (8,), activation=act)
    assert P.nonsmooth_activations(psi) == [name]
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    for act in [P.softplus, tf.nn.softplus, tf.tanh, tf.sigmoid, tf.nn.silu,
                tf.nn.gelu]:
      assert P.nonsmooth_activations(P.MLP(torus, (8,), activation=act)) == []
    assert P.nonsmooth_activations(
        P.InvariantMLP(torus, P.diagonal_shift_features, 2, (8,))) == []


def test_nonsmooth_activations_of_keras_models():
  layers = tf_keras.layers

  def seq(*hidden):
    return tf_keras.Sequential([tf_keras.Input((4,)), *hidden,
                                layers.Dense(1)])

  assert P.nonsmooth_activations(seq(layers.Dense(8, activation='relu'))) == [
      'relu']
  assert P.nonsmooth_activations(seq(layers.Dense(8), layers.ReLU())) == [
      'relu']
  assert P.nonsmooth_activations(seq(layers.Dense(8), layers.LeakyReLU(),
                                     layers.Activation('selu'))) == [
                                         'leaky_relu', 'selu']
  assert P.nonsmooth_activations(seq(layers.Dense(8), layers.ELU())) == ['elu']
  assert P.nonsmooth_activations(
      seq(layers.Dense(8, activation=tf_keras.activations.hard_sigmoid))) == [
          'hard_sigmoid']
  # Nested models, Sequential inside functional.
  inner = tf_keras.Sequential([layers.Dense(8, activation='elu')])
  inp = tf_keras.Input((4,))
  out = layers.Dense(1)(inner(layers.Dense(8, activation='tanh')(inp)))
  assert P.nonsmooth_activations(tf_keras.Model(inp, out)) == ['elu']
  # Smooth ones.
  for act in ['softplus', 'tanh', 'sigmoid', 'swish', 'gelu', 'exponential',
              'linear', 'mish', tf.nn.silu]:
    assert P.nonsmooth_activations(
        seq(layers.Dense(8, activation=act), layers.Activation(act))) == [], act


def test_nonsmooth_activations_cannot_see_into_functions():
  assert P.nonsmooth_activations(lambda y: tf.nn.relu(y[..., 0])) == []
  assert P.nonsmooth_activations(targets._u1) == []
  lattice = P.LatticeConvPotential(2, 'xy', (4,))
  assert P.nonsmooth_activations(lattice) == []
