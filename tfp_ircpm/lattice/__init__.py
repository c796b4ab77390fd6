"""Lattice spin models: geometry, targets, potentials, bases, heat bath.

* `lattice`: `Lattice(size, spin)` (the periodic L×L lattice: sites,
  neighbours, bonds, spins ⇄ points, the symmetry action) and `Sites`
  (N spins without geometry); `spin` is 'xy' (angles on T^N) or 'o3'
  (unit vectors on (S²)^N).
* `targets`: `LatticeTarget`, `xy_model(L, β)`, `o3_model(L, β)`.
* `potentials`: `LatticeConvPotential` (invariant under the global symmetry
  and lattice translations) and `spin_wave_pair_weights`.
* `bases`: `SymmetricMeanField`, `symmetric_mean_field_mixture` and the
  special functions of their normalisers.
* `mcmc`: the checkerboard heat-bath MCMC reference sampler (`heat_bath`,
  `sweep`, `summarize`).

The same names stay importable from `tfp_ircpm.targets`,
`tfp_ircpm.potentials`, `tfp_ircpm.distributions` and `tfp_ircpm.mcmc`.
"""

from tfp_ircpm.lattice import bases
from tfp_ircpm.lattice import lattice
from tfp_ircpm.lattice import mcmc
from tfp_ircpm.lattice import potentials
from tfp_ircpm.lattice import targets
from tfp_ircpm.lattice.bases import log_bessel_i0
from tfp_ircpm.lattice.bases import log_sinh
from tfp_ircpm.lattice.bases import log_sinhc
from tfp_ircpm.lattice.bases import symmetric_mean_field_mixture
from tfp_ircpm.lattice.bases import SymmetricMeanField
from tfp_ircpm.lattice.lattice import canonical_spin
from tfp_ircpm.lattice.lattice import Lattice
from tfp_ircpm.lattice.lattice import Sites
from tfp_ircpm.lattice.lattice import SPINS
from tfp_ircpm.lattice.mcmc import heat_bath
from tfp_ircpm.lattice.potentials import LatticeConvPotential
from tfp_ircpm.lattice.potentials import spin_wave_pair_weights
from tfp_ircpm.lattice.targets import lattice_model
from tfp_ircpm.lattice.targets import LatticeTarget
from tfp_ircpm.lattice.targets import o3_model
from tfp_ircpm.lattice.targets import xy_model

__all__ = ['Lattice', 'LatticeConvPotential', 'LatticeTarget', 'SPINS',
           'Sites', 'SymmetricMeanField', 'bases', 'canonical_spin',
           'heat_bath', 'lattice', 'lattice_model', 'log_bessel_i0',
           'log_sinh', 'log_sinhc', 'mcmc', 'o3_model', 'potentials',
           'spin_wave_pair_weights', 'symmetric_mean_field_mixture',
           'targets', 'xy_model']
