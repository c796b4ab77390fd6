r"""Kernel density estimates on spheres and tori: the classical baseline.

A kernel density estimate with one concentration κ, chosen by validation
likelihood, is the honest yardstick for density estimation on real data: it
shows what "good" means on a dataset before any flow is trained.

* On Sⁿ the kernel is the von Mises–Fisher density, so the estimate is
  `distributions.vmf_mixture(train, κ)` with equal weights (constants, not
  variables).
* On Tⁿ (angle coordinates) it is a product of von Mises densities,
  `tfd.Independent(tfd.VonMises(train, κ), 1)`, in a `MixtureSameFamily`.

Both are densities with respect to the manifold's volume measure (the area
of the unit sphere, the flat volume (2π)ⁿ of the torus), like every
distribution of this library, so their log-likelihoods compare directly
with a flow's.
"""

from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ircpm import distributions as distributions_lib
from tfp_ircpm import metrics
from tfp_ircpm.manifolds import base as base_lib
from tfp_ircpm.manifolds import sphere as sphere_lib
from tfp_ircpm.manifolds import torus as torus_lib

tfd = tfp.distributions

# Wide enough for data quantised at 10⁻³ degrees (κ ~ 10⁷ resolves 1 km on
# the Earth) and for nearly uniform data (κ ~ 1).
DEFAULT_CONCENTRATIONS = tuple(np.exp(np.linspace(0., np.log(1e7), 43)))


def kde(manifold: base_lib.Manifold, points, concentration: float,
        dtype=tf.float64) -> tfd.Distribution:
  """The kernel density estimate (1/N) Σ_i K_κ(·, x_i) on Sⁿ or Tⁿ.

  Args:
    manifold: a `Sphere` or a `Torus`.
    points: the kernel centres x_i, [N, ambient_dim].
    concentration: κ > 0.
    dtype: float64 by default: at κ ~ 10⁷ the exponent κ μᵀx loses about
      a nat in float32.

  Returns:
    A `MixtureSameFamily` with event shape [ambient_dim].
  """
  points = np.asarray(points, tf.as_dtype(dtype).as_numpy_dtype)
  if points.ndim != 2 or points.shape[1] != manifold.ambient_dim:
    raise ValueError(f'points must have shape [N, {manifold.ambient_dim}], '
                     f'got {points.shape}.')
  if not float(concentration) > 0.:
    raise ValueError(f'concentration must be > 0, got {concentration}.')
  n = points.shape[0]
  mixing = tfd.Categorical(logits=tf.zeros([n], dtype))
  kappa = tf.constant(concentration, dtype)
  if isinstance(manifold, sphere_lib.Sphere):
    kernel = tfd.VonMisesFisher(tf.constant(points), kappa)
  elif isinstance(manifold, torus_lib.Torus):
    kernel = tfd.Independent(
        tfd.VonMises(tf.constant(points), kappa), reinterpreted_batch_ndims=1)
  else:
    raise TypeError(f'kde supports Sphere and Torus, got {manifold!r}.')
  return distributions_lib.MixtureSameFamily(mixing, kernel,
                                             name='kde')


class TunedKDE(NamedTuple):
  """`tune` result: the estimate, its κ, and the validation NLL per κ."""
  distribution: tfd.Distribution
  concentration: float
  validation_nll: float
  grid: Sequence[float]
  grid_validation_nll: Sequence[float]


def tune(manifold: base_lib.Manifold, train_points, validation_points,
         concentrations: Optional[Sequence[float]] = None,
         dtype=tf.float64) -> TunedKDE:
  """The KDE on `train_points` whose κ minimises the validation NLL.

  Args:
    manifold: a `Sphere` or a `Torus`.
    train_points: kernel centres [N, ambient_dim].
    validation_points: [N_val, ambient_dim], used only to choose κ.
    concentrations: the grid of κ (default `DEFAULT_CONCENTRATIONS`, 1 to
      10⁷, log-spaced). The choice is reported; a κ at either end of the
      grid means the grid was too narrow.
    dtype: of the estimate.
  """
  grid = [float(k) for k in (concentrations or DEFAULT_CONCENTRATIONS)]
  scores = [metrics.batched_nll(kde(manifold, train_points, k, dtype),
                                validation_points, traced=False)
            for k in grid]
  best = int(np.nanargmin(scores))
  return TunedKDE(kde(manifold, train_points, grid[best], dtype), grid[best],
                  scores[best], grid, scores)
