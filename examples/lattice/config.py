"""The run's configuration: one field per command-line flag, same names."""

import dataclasses
from typing import Optional, Tuple


class ConfigError(ValueError):
  """A configuration that asks for something the run cannot do."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run reads; `main.py` builds it from the flags.

  The fields are the flags of `python examples/lattice.py` (see `--help`
  for each one's meaning); the defaults are the flags' defaults.
  """

  model: str = 'xy'                      # 'xy' | 'o3'
  L: int = 8                             # pylint: disable=invalid-name
  beta: float = 0.9
  steps: int = 500
  psi: str = 'equivariant'               # 'equivariant' | 'mlp' | 'meanfield'
  layers: int = 2
  hidden: int = 16
  bond_term: bool = False
  pair_term: bool = False
  base: str = 'uniform'                  # 'uniform' | 'symmetric'
  base_concentration: float = 2.
  base_concentrations: Tuple[float, ...] = ()
  spin_wave: bool = False
  forward_kl_weight: float = 0.
  data_sweeps: int = 2000
  output_scale: float = 0.1
  batch_size: int = 64
  learning_rate: float = 1e-3
  estimator: str = 'auto'
  barrier_weight: float = 10.
  barrier_floor: float = 0.5
  tolerance: Optional[float] = None
  eval_samples: int = 2000
  eval_batch: int = 250
  mcmc_sweeps: int = 2000
  mcmc_chains: int = 64
  jit_compile: bool = False
  seed: int = 0
  output_dir: str = 'results/lattice'
  checkpoint: Optional[str] = None
  restore: Optional[str] = None

  def __post_init__(self):
    object.__setattr__(self, 'base_concentrations',
                       tuple(float(k) for k in self.base_concentrations))

  @property
  def is_flow(self) -> bool:
    return self.psi != 'meanfield'

  def check(self) -> None:
    """Raises `ConfigError` for combinations that cannot run as asked."""
    if self.spin_wave and not (self.psi == 'equivariant' and self.pair_term
                               and self.base == 'symmetric'):
      # The kernel is the first conv ψ's pair term, tuned to the symmetric
      # base's κ: without all three there is nothing to start, and ignoring
      # the flag would report a run that did not happen.
      raise ConfigError('--spin_wave needs --psi=equivariant, --pair_term '
                        'and --base=symmetric.')
    if self.restore and not self.is_flow:
      raise ConfigError('--restore is for flows (--psi).')
    if self.forward_kl_weight and self.steps and not self.is_flow:
      raise ConfigError('--forward_kl_weight needs a flow (--psi).')

  def result_name(self) -> str:
    """The result JSON's file name."""
    return f'{self.model}_L{self.L}_b{self.beta:g}_{self.psi}.json'
