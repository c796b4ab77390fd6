"""The model families: a flow of IRCPMs (equivariant or MLP ψ) or a mean field.

Both expose `trainable_variables`, `sample_and_log_prob(n, seed, estimator)`
(float32 points, log q), `log_prob(y)` and `loss(target, n, seed, estimator)`.
"""

import math
from typing import Optional, Tuple

import tensorflow as tf
import tensorflow_probability as tfp

import tfp_ircpm as ircpm
from tfp_ircpm import lattice as lattice_lib
from tfp_ircpm import logdet
from tfp_ircpm import potentials

from .config import Config  # pylint: disable=relative-beyond-top-level

tfd = tfp.distributions
tfb = tfp.bijectors


def make_target(config: Config) -> lattice_lib.LatticeTarget:
  return lattice_lib.lattice_model(config.L, config.beta, config.model)


def mlp_width(params: int, embed_dim: int) -> int:
  """h with h² + (embed_dim + 3)h ≈ params: an MLP (h, h) of that size."""
  b = embed_dim + 3
  return max(1, int(round((-b + math.sqrt(b * b + 4 * params)) / 2)))


def num_parameters(model) -> int:
  return sum(int(v.shape.num_elements()) for v in model.trainable_variables)


class MeanField(tf.Module):
  """Independent von Mises / von Mises-Fisher sites (reparameterised)."""

  def __init__(self, target):
    super().__init__(name='mean_field')
    self.target = target
    self.lattice = target.lattice
    n = self.lattice.num_sites
    # Aligned means: the symmetry-broken mean-field solution. From random
    # means with small κ, reverse KL sits at the κ = 0 saddle (measured:
    # uniform samples after 2000 steps).
    # float64: in float32 the reparameterised vMF sample's κ-gradient is
    # NaN for the rare uniform draw that rounds w = cos(angle) to ±1
    # (measured: NaN κ after 458 steps, O(3) L = 8, β = 0.5, κ ≈ 0.2).
    if self.lattice.spin == 'xy':
      self.loc = tf.Variable(tf.zeros([n], tf.float64))
    else:
      self.loc = tf.Variable(tf.tile(tf.constant([[0., 0., 1.]], tf.float64),
                                     [n, 1]))
    self.raw_kappa = tf.Variable(tf.zeros([n], tf.float64))

  def _dist(self):
    kappa = tf.nn.softplus(self.raw_kappa)
    if self.lattice.spin == 'xy':
      return tfd.Independent(tfd.VonMises(self.loc, kappa), 1)
    mean = tf.math.l2_normalize(self.loc, -1)
    return tfd.Independent(tfd.VonMisesFisher(mean, kappa), 1)

  def sample_and_log_prob(self, n, seed, estimator=None):
    """Float32 samples [n, ambient] (as the flows'), float64 log q [n]."""
    del estimator
    d = self._dist()
    s = d.sample(n, seed=seed)
    return tf.cast(tf.reshape(s, [n, -1]), tf.float32), d.log_prob(s)

  def loss(self, target, n, seed, estimator):
    y, log_q = self.sample_and_log_prob(n, seed, estimator)
    return tf.reduce_mean(log_q + tf.cast(target.energy(y), tf.float64))

  def log_prob(self, y):
    """log q(y) [n] (float64) for points [n, ambient]."""
    y = tf.cast(y, tf.float64)
    # The distribution's event: angles [n, N] (XY), unit vectors [n, N, 3].
    site = y if self.lattice.spin == 'xy' else self.lattice.site_spins(y)
    return self._dist().log_prob(site)


def _make_base(target, config: Config):
  """(base distribution, its trainable variables) for `config.base`."""
  lattice = target.lattice
  if config.base == 'symmetric' and config.base_concentrations:
    base = lattice_lib.symmetric_mean_field_mixture(
        lattice, concentrations=list(config.base_concentrations))
    return base, list(base.trainable_variables)
  if config.base == 'symmetric':
    kappa = tfp.util.TransformedVariable(
        config.base_concentration, tfb.Softplus(), name='base_concentration')
    base = lattice_lib.SymmetricMeanField(lattice, concentration=kappa)
    return base, list(kappa.trainable_variables)
  return target.manifold.uniform(), []


class Flow:
  """A stack of IRCPMs over the uniform or symmetric base, sampled matrix-free.

  Args:
    target: the `LatticeTarget` (its lattice sizes ψ and the base).
    config: the run's configuration (ψ family, layers, base, loss weights).
  """

  def __init__(self, target, config: Config):
    self.config = config
    m = target.manifold
    base, base_variables = _make_base(target, config)
    self.psis = []
    for i in range(config.layers):
      conv = potentials.LatticeConvPotential(
          target.lattice, hidden_units=(config.hidden, config.hidden),
          output_scale=config.output_scale, seed=config.seed + i,
          bond_term=config.bond_term, pair_term=config.pair_term)
      if config.spin_wave and i == 0:
        conv.pair_weights.assign(potentials.spin_wave_pair_weights(
            target.lattice, config.beta, config.base_concentration))
      if config.psi == 'equivariant':
        self.psis.append(conv)
      else:
        width = mlp_width(conv.num_parameters, m.embed_dim)
        self.psis.append(potentials.MLP(m, (width, width),
                                        output_scale=config.output_scale,
                                        seed=config.seed + i))
    self.bijectors = [ircpm.IRCPM(m, p, tolerance=config.tolerance)
                      for p in self.psis]
    self.q = tfd.TransformedDistribution(
        base, ircpm.bijectors.Chain(list(reversed(self.bijectors))))
    self.base = base
    self.data: Optional[tf.Tensor] = None   # heat-bath points, forward KL
    self.trainable_variables = base_variables + [
        v for p in self.psis for v in p.trainable_variables]

  def base_concentration(self):
    """κ of the symmetric base (a list for the mixture), or None."""
    if self.config.base != 'symmetric':
      return None
    kappa = (self.base.components_distribution
             if self.config.base_concentrations else self.base).concentration
    return tf.convert_to_tensor(kappa).numpy().tolist()

  def sample_and_log_prob(self, n, seed, estimator='exact'):
    return logdet.sample_and_log_prob(self.q, n, seed, estimator)

  def log_prob(self, y):
    """Exact log q(y) [n]: closed-form inverses, no solve."""
    return self.q.log_prob(y)

  def forward_kl(self, n, seed, estimator):
    """−mean log q on n points drawn from `self.data` (up to a constant,
    KL(p‖q)); stochastic log-dets (`logdet.log_prob_surrogate`) when
    `estimator` is."""
    index_seed, probe_seed = tfp.random.split_seed(seed)
    index = tf.random.stateless_uniform([n], index_seed, 0,
                                        tf.shape(self.data)[0], tf.int32)
    batch = tf.gather(self.data, index)
    if estimator == 'stochastic':
      return -tf.reduce_mean(logdet.log_prob_surrogate(self.q, batch,
                                                       probe_seed))
    return -tf.reduce_mean(self.q.log_prob(batch))

  def loss(self, target, n, seed, estimator):
    """Reverse KL (log-dets per `estimator`) + the λ_min guard, plus the
    forward KL on heat-bath data when `config.forward_kl_weight` > 0."""
    config = self.config
    forward = 0.
    if self.data is not None:
      seed, data_seed = tfp.random.split_seed(seed)
      forward = config.forward_kl_weight * self.forward_kl(n, data_seed,
                                                           estimator)
    y, log_q, points, ok = logdet.sample_and_log_prob(
        self.q, n, seed, estimator, return_layer_points=True,
        return_converged=True)
    # Points whose solve failed are dropped (their gradients would be NaN);
    # evaluation counts them.
    terms = tf.where(ok, log_q + target.energy(y), 0.)
    kl = tf.reduce_sum(terms) / tf.maximum(
        tf.reduce_sum(tf.cast(ok, terms.dtype)), 1.)
    if not config.barrier_weight:
      return kl + forward
    points = [tf.where(ok[:, None], p, tf.stop_gradient(p)) for p in points]
    penalty = logdet.min_eigenvalue_penalty(
        self.bijectors, points, floor=config.barrier_floor, iterations=20,
        seed=seed)
    return kl + forward + config.barrier_weight * target.num_sites * penalty

  def min_eigenvalues(self, n, seed, chunk=25):
    """Exact min eigenvalue of J = I + Hess ψ per layer at n samples, [layers].

    Samples whose solve did not converge (NaN under the default policy) are
    left out; `evaluate` counts them as non-finite weights. J is built
    `chunk` points at a time (at L = 16 a pfor Hessian of 200 points was
    killed at 20 GB).
    """
    _, _, points, ok = tf.function(
        lambda s: logdet.sample_and_log_prob(
            self.q, n, s, 'exact', return_layer_points=True,
            return_converged=True))(seed)
    eig = tf.function(lambda b, y: tf.reduce_min(
        tf.linalg.eigvalsh(b.intrinsic_inverse_jacobian(y)), axis=-1))
    out = []
    for layer, y in zip(self.bijectors, points):
      y = tf.boolean_mask(y, ok)
      out.append(min(float(tf.reduce_min(eig(layer, y[i:i + chunk])))
                     for i in range(0, int(tf.shape(y)[0]), chunk)))
    return out


def build_model(target, config: Config) -> Tuple[object, str]:
  """(model, the training log-det estimator actually used)."""
  if not config.is_flow:
    return MeanField(target), 'n/a'
  model = Flow(target, config)
  estimator = ('stochastic' if logdet.uses_stochastic(model.q,
                                                      config.estimator)
               else 'exact')
  return model, estimator
