"""The lattice example: IRCPM flows for the XY and O(3) models.

Trains one flow (or a mean field) by reverse KL and reports the *exact* ESS
(exact log-dets at evaluation; training uses the estimator chosen by
--estimator, 'auto' being the stochastic Hutchinson + CG log-det on tori
above 16 dimensions), an importance-sampling KL estimate, and the energy
per site and susceptibility χ = ⟨|M|²⟩/L² from the flow (raw and
reweighted) and from a heat-bath MCMC run on the same lattice. --psi picks
the model:

* equivariant: a stack of IRCPMs with `tfp_ircpm.lattice.LatticeConvPotential`
  (invariant under the global symmetry and lattice translations);
* mlp: the same stack with non-equivariant `potentials.MLP` ψ of about the
  same parameter count;
* meanfield: independent von Mises (XY) / von Mises-Fisher (O(3)) sites.

Modules:

* `config`: `Config`, one field per flag, and its consistency check;
* `models`: the target, `Flow`, `MeanField`, `build_model`;
* `evaluate`: exact weights, ESS, KL and observables on q's and p's samples;
* `run`: one run from a `Config` to its result JSON;
* `summary`: the markdown table of result JSONs;
* `main`: the flags and `main` (the only reader of FLAGS).

Run as

  python examples/lattice.py --model=xy --L=8 --beta=0.9 --steps=500

or, from the repository root, `python -m examples.lattice ...` (same flags).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
