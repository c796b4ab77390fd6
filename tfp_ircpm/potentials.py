"""Potentials ψ: M → R, the dual functions of the c-transform (Eq. 2).

A potential is any callable mapping points [..., ambient_dim] to values [...].
`MLP` is the paper's parametrisation (Sec. 5): a softplus MLP on smooth
features of the point, with its output divided by a constant (1/20 in the
paper) so that ‖grad ψ‖ and ‖Hess ψ‖ start small, as Lemmas 3-4 require.
"""

import math
from typing import Callable, Optional, Sequence

import tensorflow as tf

from tfp_ircpm.manifolds import base


@tf.custom_gradient
def softplus(x: tf.Tensor) -> tf.Tensor:
  """softplus with an explicit sigmoid derivative.

  Mathematically identical to `tf.nn.softplus`. Under XLA, TF's registered
  SoftplusGrad makes nested-tape log-det gradients recompile on every call;
  spelling the derivative out as sigmoid (itself smooth, so higher-order tapes
  work) avoids that.
  """

  def grad(dy):
    return dy * tf.sigmoid(x)

  return tf.nn.softplus(x), grad


class MLP(tf.Module):
  """ψ(x) = output_scale · W_L σ(... σ(W_1 embed(x) + b_1) ...).

  The output layer has no bias: a constant shift of ψ leaves the map
  unchanged (f depends on ψ only through its gradient), so such a bias would
  never receive a gradient.

  `embed` is the manifold's smooth embedding: the point itself on S^n,
  (cos θ, sin θ) on T^n (so ψ is smooth and 2π-periodic), concatenations on
  products.

  Weights are drawn with standard deviation 1/√fan_in. Glorot on a 3-wide
  unit-norm input leaves the pre-activations tiny, the softplus nearly linear
  on the sphere, and training crawls.

  Args:
    manifold: the `Manifold` ψ is defined on.
    hidden_units: widths of the hidden layers (paper: (32, 32) on T², (128,
      128) on S²).
    output_scale: the constant the output is multiplied by (paper: 1/20).
    activation: elementwise non-linearity; must be C² for log-det gradients.
    dtype: variable dtype (arithmetic follows the input's dtype).
    seed: integer seed for the initialisation.
  """

  def __init__(self,
               manifold: base.Manifold,
               hidden_units: Sequence[int] = (32, 32),
               output_scale: float = 1. / 20.,
               activation: Callable[[tf.Tensor], tf.Tensor] = softplus,
               dtype=tf.float32,
               seed: Optional[int] = None,
               name: str = 'mlp_potential'):
    super().__init__(name=name)
    self.manifold = manifold
    self.output_scale = float(output_scale)
    self.activation = activation
    self.hidden_units = tuple(int(h) for h in hidden_units)
    self._dtype = tf.as_dtype(dtype)
    sizes = (manifold.embed_dim,) + self.hidden_units + (1,)
    rng = tf.random.Generator.from_seed(seed) if seed is not None else (
        tf.random.Generator.from_non_deterministic_state())
    self.weights = []
    self.biases = []
    with self.name_scope:
      for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal([fan_in, fan_out], dtype=self._dtype) / math.sqrt(fan_in)
        self.weights.append(tf.Variable(w, name=f'w{i}'))
        if i < len(sizes) - 2:
          b = rng.normal([fan_out], dtype=self._dtype) * 0.1
          self.biases.append(tf.Variable(b, name=f'b{i}'))

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    """ψ(x): points [..., ambient_dim] → values [...].

    Arithmetic runs in the dtype of x (variables are cast), so a float32
    network evaluated on float64 points is a float64 computation.
    """
    dtype = x.dtype
    h = self.manifold.embed(x)
    batch_shape = tf.shape(h)[:-1]
    h = tf.reshape(h, [-1, self.manifold.embed_dim])
    for w, b in zip(self.weights[:-1], self.biases):
      h = self.activation(tf.matmul(h, tf.cast(w, dtype)) + tf.cast(b, dtype))
    out = tf.matmul(h, tf.cast(self.weights[-1], dtype))[:, 0]
    out = out * tf.constant(self.output_scale, dtype)
    return tf.reshape(out, batch_shape)
