"""Command line: the flags, the `Config` they make, and `main`.

Only this module reads FLAGS; everything below `main` takes a `Config`.
"""

import dataclasses

from absl import app
from absl import flags

from tfp_ircpm import logdet

# pylint: disable=relative-beyond-top-level
from . import run as run_lib
from . import summary
from .config import Config
from .config import ConfigError
# pylint: enable=relative-beyond-top-level

flags.DEFINE_enum('model', 'xy', ['xy', 'o3'], 'Lattice model.')
flags.DEFINE_integer('L', 8, 'Lattice size (L×L, periodic).')
flags.DEFINE_float('beta', 0.9, 'Inverse temperature β.')
flags.DEFINE_integer('steps', 500, 'Adam steps.')
flags.DEFINE_enum('psi', 'equivariant', ['equivariant', 'mlp', 'meanfield'],
                  'Potential / model family.')
flags.DEFINE_integer('layers', 2, 'IRCPMs in the stack (each its own ψ).')
flags.DEFINE_integer('hidden', 16, 'Channels of the two conv layers.')
flags.DEFINE_bool('bond_term', False, 'Equivariant ψ also gets a learnable '
                  'linear term in the bond features (contains αu; see '
                  'tfp_ircpm.lattice.LatticeConvPotential).')
flags.DEFINE_bool('pair_term', False, 'Equivariant ψ also gets a learnable '
                  'all-pairs coupling Σ W(rᵢ − rⱼ) sᵢ·sⱼ of unlimited range '
                  '(see tfp_ircpm.lattice.LatticeConvPotential).')
flags.DEFINE_enum('base', 'uniform', ['uniform', 'symmetric'],
                  'Flow base: the uniform measure, or '
                  'tfp_ircpm.lattice.SymmetricMeanField (i.i.d. von '
                  'Mises(-Fisher) sites about a uniformly random common '
                  'direction; κ is trained with the flow).')
flags.DEFINE_float('base_concentration', 2., 'Initial κ of --base=symmetric '
                   '(and the κ of the --spin_wave kernel).')
flags.DEFINE_list('base_concentrations', [], 'If given, --base=symmetric is '
                  'tfp_ircpm.lattice.symmetric_mean_field_mixture with these '
                  'initial κ_k (equal weights), e.g. 0.9,1.3,1.7,2.1,2.5.')
flags.DEFINE_bool('spin_wave', False, 'Start the first IRCPM\'s pair kernel '
                  'at tfp_ircpm.lattice.spin_wave_pair_weights(L, β, κ) '
                  '(needs --pair_term and --base=symmetric).')
flags.DEFINE_float('forward_kl_weight', 0., 'If > 0, the loss adds this '
                   'times the negative log-likelihood of heat-bath samples '
                   '(forward KL, mass-covering: "training by example" as '
                   'well as by energy). 0: reverse KL only.')
flags.DEFINE_integer('data_sweeps', 2000, 'Heat-bath sweeps for the '
                     'forward-KL data (--mcmc_chains chains, every 10th '
                     'sweep after 200 kept; seed --seed + 1).')
flags.DEFINE_float('output_scale', 0.1, 'ψ output scale.')
flags.DEFINE_integer('batch_size', 64, 'Samples per step.')
flags.DEFINE_float('learning_rate', 1e-3, 'Initial Adam rate (cosine decay).')
flags.DEFINE_enum('estimator', 'auto', list(logdet.ESTIMATORS),
                  'Training log-det estimator.')
flags.DEFINE_float('barrier_weight', 10., 'Weight (per site) of the '
                   'logdet.min_eigenvalue_penalty guard on the Riemannian '
                   'Hessian H of h(x, ·) (I + Hess psi on tori).')
flags.DEFINE_float('barrier_floor', 0.5, 'Floor on λ_min(H).')
flags.DEFINE_float('tolerance', None, 'Solve tolerance on ‖grad h‖ (default '
                   'solvers.default_tolerance: 1e-5 in float32).')
flags.DEFINE_integer('eval_samples', 2000, 'Samples for the exact ESS.')
flags.DEFINE_integer('eval_batch', 250, 'Evaluation batch size.')
flags.DEFINE_integer('mcmc_sweeps', 2000, 'Heat-bath sweeps (0: no MCMC).')
flags.DEFINE_integer('mcmc_chains', 64, 'Heat-bath chains.')
flags.DEFINE_bool('jit_compile', False, 'Compile the training step with XLA.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('output_dir', 'results/lattice', 'Where to write JSON.')
flags.DEFINE_string('checkpoint', None, 'If set, save the trained variables '
                    '(tf.train.Checkpoint) under this prefix.')
flags.DEFINE_string('restore', None, 'If set, start from the variables saved '
                    'by --checkpoint under this prefix (same model flags); '
                    'with --steps=0 the run only evaluates, e.g. on fresh '
                    'samples with another --seed.')
flags.DEFINE_bool('summarize', False, 'Only print the markdown table of every '
                  'result JSON under --output_dir (searched recursively).')
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
  """The `Config` of the parsed flags (one field per flag but --summarize)."""
  values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)}
  values['base_concentrations'] = tuple(
      float(k) for k in values['base_concentrations'])
  return Config(**values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.summarize:
    print(summary.summarize(FLAGS.output_dir))
    return
  config = config_from_flags()
  try:
    config.check()
  except ConfigError as e:
    raise app.UsageError(str(e)) from e
  run_lib.run(config)


def run_app():
  app.run(main)
