"""Lattice-equivariant potentials ψ and the spin-wave pair kernel.

`LatticeConvPotential` is invariant under the global symmetry and lattice
translations, so an IRCPM with it is equivariant under both (Lemma 1);
`spin_wave_pair_weights` starts its all-pairs term at the Gaussian
spin-wave map over `SymmetricMeanField`.
"""

import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfp_ircpm import potentials as potentials_lib
from tfp_ircpm.lattice import lattice as lattice_lib

softplus = potentials_lib.softplus


class LatticeConvPotential(tf.Module):
  """ψ = output_scale · Σ_sites CNN(bond features), for L×L periodic lattices.

  The features at site i are functions of the bonds to its right and lower
  neighbours j: (cos, sin)(θᵢ − θⱼ) for XY spins (`spin='xy'`, points are
  angles [..., L²]) or sᵢ·sⱼ for O(3) spins (`spin='o3'`, points are unit
  vectors [..., 3L²]). They are invariant under the global symmetry (U(1)
  shifts θ ↦ θ + c, resp. rotations s ↦ Rs). The network is `len(hidden_units)`
  circular 3×3 convolutions with softplus and a 1×1 read-out, summed over
  sites, so ψ is also invariant under lattice translations. Both groups act
  by isometries, hence the IRCPM is equivariant under them (Lemma 1).

  Convolutions are sums of `tf.roll`ed matmuls rather than `tf.nn.conv2d`:
  rolls give the periodic boundary directly, and every derivative order is
  plain matmuls (log-det gradients need third derivatives of ψ).

  Args:
    lattice_size: L, or the `Lattice` itself (whose spin is then used).
    spin: 'xy' or 'o3' (default 'xy'; with a `Lattice`, omit it or agree).
    hidden_units: channels of the 3×3 convolution layers.
    output_scale: multiplies ψ; keeps ‖Hess ψ‖ small at initialisation.
    dtype: variable dtype (arithmetic follows the input's dtype).
    seed: integer seed for the initialisation.
    certified: (XY only) multiply ψ by `certified_scale()`, which keeps
      ‖Hess ψ‖ <= 0.98 for every value of the parameters, so J_{f⁻¹} =
      I + Hess ψ stays positive definite: f is a diffeomorphism of T^{L²}
      (the gradient map of the strictly convex ½|y|² + ψ, commuting with
      2πZ^{L²}) and the Newton-CG solve sees condition numbers <= 99.
    bond_term: add Σ_sites wᵀφᵢ, a learnable linear function of the bond
      features φᵢ (started at w = 0). It contains the energy itself, e.g.
      −u/β = Σ_⟨ij⟩ cos(θᵢ − θⱼ) for XY: the paper's αu family of Sec. 3.3,
      which Lemma 2 suggests as the leading term of ψ (on a uniform base
      log det(I + α Hess u) = −2αu + O(α²)), with the network as correction.
    pair_term: add Σ_{i,j} W(rᵢ − rⱼ) sᵢ·sⱼ, a learnable coupling of *every*
      pair of spins (sᵢ = (cos θᵢ, sin θᵢ) for XY) through a periodic kernel
      W [L, L] of the displacement (started at 0; W(0) is unused, sᵢ·sᵢ = 1).
      Invariant under both groups, like the network, but of unlimited range:
      the network sees 1 + len(hidden_units) sites each way, while the
      target's long-wavelength modes (spin waves; their variance ∝
      1/(β λ_k) for Laplacian eigenvalues λ_k) couple the whole lattice. In
      the spin-wave regime Hess ψ of this term is a circulant, so each layer
      can set the contraction of every Fourier mode k on its own (Ŵ(k)).
  """

  _OFFSETS = tuple((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1))

  def __init__(self,
               lattice_size,
               spin: Optional[str] = None,
               hidden_units: Sequence[int] = (16, 16),
               output_scale: float = 0.1,
               dtype=tf.float32,
               seed: Optional[int] = None,
               certified: bool = False,
               bond_term: bool = False,
               pair_term: bool = False,
               name: str = 'lattice_conv_potential'):
    super().__init__(name=name)
    self.lattice = lattice_lib.as_lattice(lattice_size, spin)
    spin = self.lattice.spin
    if certified and spin != 'xy':
      raise ValueError('certified=True is implemented for XY spins only.')
    self.certified = bool(certified)
    self.lattice_size = self.lattice.size
    self.spin = spin
    self.output_scale = float(output_scale)
    self.hidden_units = tuple(int(h) for h in hidden_units)
    self._dtype = tf.as_dtype(dtype)
    in_channels = 4 if spin == 'xy' else 2
    rng = tf.random.Generator.from_seed(seed) if seed is not None else (
        tf.random.Generator.from_non_deterministic_state())
    self.kernels, self.biases = [], []
    sizes = (in_channels,) + self.hidden_units
    with self.name_scope:
      for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        fan_in = 9 * c_in
        k = rng.normal([9, c_in, c_out], dtype=self._dtype) / math.sqrt(fan_in)
        self.kernels.append(tf.Variable(k, name=f'kernel{i}'))
        self.biases.append(tf.Variable(
            rng.normal([c_out], dtype=self._dtype) * 0.1, name=f'bias{i}'))
      readout = rng.normal([sizes[-1]], dtype=self._dtype) / math.sqrt(
          sizes[-1])
      self.readout = tf.Variable(readout, name='readout')
      self.bond_weights = (tf.Variable(tf.zeros([in_channels], self._dtype),
                                       name='bond_weights')
                           if bond_term else None)
      self.pair_weights = (tf.Variable(tf.zeros([self.lattice_size] * 2,
                                                self._dtype),
                                       name='pair_weights')
                           if pair_term else None)
    # C[i, j] = W(rᵢ − rⱼ) is a gather of W: index of each pair's displacement.
    self._pair_index = self.lattice.displacement_index

  @property
  def num_parameters(self) -> int:
    return sum(int(v.shape.num_elements()) for v in self.trainable_variables)

  @property
  def ambient_dim(self) -> int:
    return self.lattice.ambient_dim

  def features(self, x: tf.Tensor) -> tf.Tensor:
    """Invariant bond features [N, L, L, C] for points [N, ambient_dim].

    XY: (cos, sin) of the bond angles to the right, then to the lower
    neighbour (C = 4); O(3): the right and lower bonds' sᵢ·sⱼ (C = 2).
    """
    x = tf.reshape(x, [-1, self.ambient_dim])
    if self.spin == 'xy':
      d = self.lattice.bond_angles(x)
      dx, dy = d[..., 0], d[..., 1]
      return tf.stack([tf.cos(dx), tf.sin(dx), tf.cos(dy), tf.sin(dy)], -1)
    return self.lattice.bond_cosines(x)

  def hessian_bound(self) -> tf.Tensor:
    """An upper bound on ‖Hess ψ‖ over T^{L²} (XY, before certification).

    As `MLP.certified_scale`, with the convolutions as structured matrices
    C_k = Σ_o S_o ⊗ K_{k,o} (S_o the lattice shifts), so ‖C_k‖ <= Σ_o ‖K_{k,o}‖
    and entrywise sensitivities are translation invariant: a_L = s|r|,
    a_{k-1} = Σ_o |K_{k,o}| a_k per channel. The features are (cos, sin) of
    the bond differences Dθ, ‖D‖² <= 8 (the lattice Laplacian's top
    eigenvalue), and Σ_m g_m ∇²φ(D_mθ) <= 4 (‖a_0^x‖ + ‖a_0^y‖) with a_0^x
    the (cos, sin) pair of the x-bonds. Hence
      ‖Hess ψ‖ <= Σ_k ¼ max(a_k) ‖C_k‖² j_{k-1}² + 4 (‖a_0^x‖ + ‖a_0^y‖),
    j_0 = √8, j_k = ‖C_k‖ j_{k-1}.
    """
    if self.spin != 'xy':
      raise ValueError('hessian_bound is implemented for XY spins only.')
    norms = [tf.reduce_sum(tf.linalg.svd(k, compute_uv=False)[:, 0])
             for k in self.kernels]
    sens = [None] * (len(self.kernels) + 1)
    sens[-1] = self.output_scale * tf.abs(self.readout)
    for k in range(len(self.kernels), 0, -1):
      sens[k - 1] = tf.reduce_sum(
          tf.linalg.matvec(tf.abs(self.kernels[k - 1]), sens[k]), axis=0)
    jac_sq = [tf.constant(8., self._dtype)]
    for norm in norms:
      jac_sq.append(tf.square(norm) * jac_sq[-1])
    a_0 = sens[0]
    if self.bond_weights is not None:      # the linear term adds to ∂ψ/∂φ
      a_0 = a_0 + tf.abs(self.bond_weights)
    bound = 4. * (tf.norm(a_0[:2]) + tf.norm(a_0[2:]))
    if self.pair_weights is not None:
      # Σ_ij W_ij cos(θᵢ − θⱼ) has Hessian entries 2S_kl cos(θ_k − θ_l) off the
      # diagonal and minus their row sums on it (S = sym W), so by
      # Gershgorin ‖·‖ <= 4 max_k Σ_l |S_kl| <= 4 Σ_{r≠0} |W(r)|.
      bound += 4. * tf.reduce_sum(tf.abs(self._pair_kernel(self._dtype)))
    for k, norm in enumerate(norms, start=1):
      bound += 0.25 * tf.reduce_max(sens[k]) * tf.square(norm) * jac_sq[k - 1]
    return bound

  def certified_scale(self) -> tf.Tensor:
    """min(1, 0.98 / hessian_bound()): ψ times it has ‖Hess ψ‖ <= 0.98."""
    return tf.minimum(tf.ones([], self._dtype), 0.98 / self.hessian_bound())

  def _pair_kernel(self, dtype) -> tf.Tensor:
    """W [L²] with W(0) = 0 (it would only add a constant)."""
    w = tf.reshape(tf.cast(self.pair_weights, dtype), [-1])
    return tf.concat([tf.zeros([1], dtype), w[1:]], 0)

  def _pair_energy(self, x: tf.Tensor) -> tf.Tensor:
    """Σ_{i,j} W(rᵢ − rⱼ) sᵢ·sⱼ for points [N, ambient_dim] → [N]."""
    s = self.lattice.site_spins(x)                   # [N, L², n]
    coupling = tf.gather(self._pair_kernel(x.dtype), self._pair_index)
    return tf.einsum('nia,ij,nja->n', s, coupling, s)

  def _conv(self, h: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    out = 0.
    for k, (a, b) in enumerate(self._OFFSETS):
      shifted = tf.roll(h, shift=[a, b], axis=[1, 2])
      out += tf.einsum('nijc,cd->nijd', shifted, kernel[k])
    return out

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    """ψ(x): points [..., ambient_dim] → [...] (in x's dtype)."""
    dtype = x.dtype
    batch_shape = tf.shape(x)[:-1]
    h = features = self.features(tf.reshape(x, [-1, self.ambient_dim]))
    for kernel, bias in zip(self.kernels, self.biases):
      h = softplus(self._conv(h, tf.cast(kernel, dtype)) + tf.cast(bias, dtype))
    per_site = tf.linalg.matvec(h, tf.cast(self.readout, dtype))
    out = tf.reduce_sum(per_site, axis=[1, 2]) * tf.constant(
        self.output_scale, dtype)
    if self.bond_weights is not None:
      out += tf.reduce_sum(tf.linalg.matvec(
          features, tf.cast(self.bond_weights, dtype)), axis=[1, 2])
    if self.pair_weights is not None:
      out += self._pair_energy(tf.reshape(x, [-1, self.ambient_dim]))
    if self.certified:
      out = out * tf.cast(self.certified_scale(), dtype)
    return tf.reshape(out, batch_shape)


def spin_wave_pair_weights(lattice_size, beta: float,
                           concentration: float, scale: float = 1.
                           ) -> np.ndarray:
  """Pair kernel W [L, L] whose IRCPM maps site noise to spin waves.

  For `LatticeConvPotential(pair_term=True)` over `SymmetricMeanField(κ)`:
  the kernel with which one IRCPM turns the base's i.i.d. site fluctuations
  (variance ≈ 1/κ about the common direction) into the Gaussian spin-wave
  approximation of the target, u ≈ (β/2) θᵀΔθ (Δ the lattice Laplacian;
  O(3) has two such transverse fields per site).

  Near the aligned state the pair term ψ = Σ_{i≠j} W(rᵢ − rⱼ) sᵢ·sⱼ has
  Hess ψ = 2(S − diag(S1)), S the circulant of W, so J_{f⁻¹} = I + Hess ψ
  has eigenvalues 1 + 2(Ŵ(k) − Ŵ(0)) on the Fourier modes k, and
  y = J⁻¹x has covariance J⁻²/κ. Matching (βΔ)⁻¹ on every k ≠ 0 needs
  J(k) = √(βλ_k/κ), λ_k = Σ_axes 4 sin²(k_a/2); the zero mode (the global
  direction, which the base already draws uniformly) keeps J = 1, and
  Ŵ's mean is fixed by W(0) = 0. `scale` interpolates: J(k) = 1 +
  scale (√(βλ_k/κ) − 1) (0: identity map).

  The map is contracting on modes with βλ_k > κ and expanding on the rest;
  its λ_min(J) at the aligned state is min(1, 1 + scale(√(βλ_min/κ) − 1)),
  λ_min = 4 sin²(π/L), which must stay above the guard's floor.

  Args:
    lattice_size: L, or a `Lattice`.
    beta: β of the target.
    concentration: κ of the base.
    scale: interpolation to the identity (0).

  Returns:
    W [L, L] (float64), with W(0) = 0 and W(r) = W(−r).
  """
  lam = lattice_lib.as_lattice(lattice_size).laplacian_eigenvalues()
  target = np.sqrt(beta * lam / concentration)
  target[0, 0] = 1.
  w_hat = (scale * (target - 1.)) / 2.
  w_hat -= w_hat.mean()
  w = np.real(np.fft.ifft2(w_hat))
  w[0, 0] = 0.
  return w


__all__ = ['LatticeConvPotential', 'spin_wave_pair_weights']
