"""The bound check of Secs. 4.1-4.3 and 5.2.

Lemma 3: if ‖grad ψ‖ < λ/2 everywhere, the minimiser of h(x, ·) lies in the
ball B_x(λ). Lemma 4: if moreover ‖Hess ψ‖ < η, with η such that the Hessian
H_c of ½d(x,·)² stays within 1 − η of the identity on that ball, then h(x, ·)
has a single critical point there and gradient descent from y = x finds the
global minimiser.

The manifold supplies the constants (`Manifold.sectional_curvature_bound`
K, `Manifold.injectivity_radius`; `Manifold.lemma4_hessian_bound` is η):

* On Tⁿ (flat, K = 0), H_c = I on the injectivity ball (radius π): η = 1,
  λ < π.
* On Sⁿ (K = 1), H_c has eigenvalues 1 and t·cot t at distance t (Sec.
  4.3): η = λ cot λ, which needs λ < π/2. For curvature <= K the Hessian
  comparison theorem gives η = λ√K cot(λ√K), λ < π/(2√K).
* On products and powers the factors' H_c are blocks, so K is the largest
  factor's and the injectivity radius the smallest: the sphere criterion
  applies whenever a sphere factor is present (e.g. the O(3) lattice
  (S²)^N), else the torus one.

With λ taken as 2·max‖grad ψ‖ (the smallest λ Lemma 3 allows), the check is
max‖Hess ψ‖ < η(λ). Note the paper's Sec. 5.2 compares max‖Hess ψ‖ with
tcg(max‖grad ψ‖) rather than tcg(2 max‖grad ψ‖); we apply Lemma 3 as
stated. The maxima are estimated on random points, so the verdict is an
empirical check, not a certificate.
"""

from typing import Callable, NamedTuple

import tensorflow as tf

from tfp_ircpm import derivatives
from tfp_ircpm.manifolds import base


class BoundReport(NamedTuple):
  """Result of `check_bounds`.

  Attributes:
    max_grad: max over the points of ‖grad ψ‖.
    max_hess: max of the operator norm of the Riemannian Hessian of ψ.
    lam: λ = 2·max_grad (Lemma 3).
    eta: the Hessian bound η(λ) (1 on tori, λ cot λ on spheres; 0 when λ is
      out of range): `Manifold.lemma4_hessian_bound`.
    guaranteed: λ inside the admissible ball and max_hess < eta.
    curved: whether the curved criterion was used (the manifold's
      sectional curvature bound K is positive, or unknown).
    num_points: how many points the maxima are taken over.
  """
  max_grad: float
  max_hess: float
  lam: float
  eta: float
  guaranteed: bool
  curved: bool
  num_points: int

  def verdict(self) -> str:
    crit = 'λ·cot λ' if self.curved else '1'
    status = ('gradient descent from y = x provably finds the infimum'
              if self.guaranteed else
              'NOT guaranteed: the solve may stop in a local minimum')
    return (f'max‖grad ψ‖ = {self.max_grad:.4f} (λ = {self.lam:.4f}), '
            f'max‖Hess ψ‖ = {self.max_hess:.4f} vs η = {crit} = '
            f'{self.eta:.4f} over {self.num_points} points: {status}.')


def _is_curved(manifold: base.Manifold) -> bool:
  """Whether Lemma 4 needs the curved criterion (K > 0 or K unknown)."""
  k = manifold.sectional_curvature_bound
  return k is None or k > 0.


def potential_derivatives(manifold: base.Manifold,
                          potential: Callable[[tf.Tensor], tf.Tensor],
                          y: tf.Tensor):
  """‖grad ψ‖ [N] and ‖Hess ψ‖ [N] (operator norm) at points y [N, ambient].

  The Riemannian Hessian is the Hessian of v ↦ ψ(exp_y(E v)) at 0, which on
  Sⁿ includes the curvature term -(y·∇ψ) I.
  """
  _, g, hess, _ = derivatives.frame_derivatives(
      manifold, lambda z: derivatives.call_potential(potential, z), y)
  eig = tf.linalg.eigvalsh(0.5 * (hess + tf.linalg.matrix_transpose(hess)))
  return tf.norm(g, axis=-1), tf.reduce_max(tf.abs(eig), axis=-1)


def check_bounds(manifold: base.Manifold,
                 potential: Callable[[tf.Tensor], tf.Tensor],
                 num_points: int = 10 ** 6,
                 batch_size: int = 50000,
                 dtype=tf.float64,
                 seed: int = 0) -> BoundReport:
  """Estimates max‖grad ψ‖ and max‖Hess ψ‖ on uniform points; applies Lemma 4.

  Args:
    manifold: the `Manifold`.
    potential: ψ.
    num_points: number of uniform points (paper: 10⁶).
    batch_size: points per batch.
    dtype: computation dtype.
    seed: sampling seed.
  """
  fn = tf.function(lambda y: potential_derivatives(manifold, potential, y),
                   reduce_retracing=True)
  max_g, max_h, done, i = 0., 0., 0, 0
  while done < num_points:
    n = min(batch_size, num_points - done)
    y = manifold.uniform(dtype).sample(n, seed=(seed, i))
    g, h = fn(y)
    max_g = max(max_g, float(tf.reduce_max(g)))
    max_h = max(max_h, float(tf.reduce_max(h)))
    done += n
    i += 1
  curved = _is_curved(manifold)
  lam = 2. * max_g
  eta = manifold.lemma4_hessian_bound(lam)
  # η > 0 exactly when λ is admissible (below the injectivity radius and,
  # for K > 0, below π/(2√K)).
  ok = eta > 0. and max_h < eta
  return BoundReport(max_grad=max_g, max_hess=max_h, lam=lam, eta=float(eta),
                     guaranteed=bool(ok), curved=curved, num_points=done)
