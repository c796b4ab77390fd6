"""tfp_ircpm: Implicit Riemannian Concave Potential Maps for TFP.

Rezende & Racanière (2021), arXiv 2110.01288.
"""

from tfp_ircpm import backup
from tfp_ircpm import bijectors
from tfp_ircpm import bounds
from tfp_ircpm import data
from tfp_ircpm import density
from tfp_ircpm import derivatives
from tfp_ircpm import diagnostics
from tfp_ircpm import distribute
from tfp_ircpm import distributions
from tfp_ircpm import export
from tfp_ircpm import flows
from tfp_ircpm import kde
from tfp_ircpm import keras
from tfp_ircpm import lattice
from tfp_ircpm import logdet
from tfp_ircpm import losses
from tfp_ircpm import manifolds
from tfp_ircpm import matrix_free
from tfp_ircpm import mcmc
from tfp_ircpm import metrics
from tfp_ircpm import potentials
from tfp_ircpm import solvers
from tfp_ircpm import targets
from tfp_ircpm import tolerances
from tfp_ircpm import training
from tfp_ircpm.bijectors import Chain
from tfp_ircpm.bijectors import IRCPM
from tfp_ircpm.flows import flow_layers
from tfp_ircpm.flows import make_flow
from tfp_ircpm.manifolds import Power
from tfp_ircpm.manifolds import Product
from tfp_ircpm.manifolds import Sphere
from tfp_ircpm.manifolds import Torus

import importlib.metadata as _metadata  # pylint: disable=g-import-not-at-top
try:
  __version__ = _metadata.version('tfp_ircpm')  # from pyproject.toml
except _metadata.PackageNotFoundError:  # a source tree that is not installed
  __version__ = '0+unknown'
del _metadata

__all__ = ['Chain', 'IRCPM', 'Power', 'Product', 'Sphere', 'Torus',
           'backup', 'bijectors', 'bounds', 'data', 'density', 'derivatives',
           'diagnostics', 'distribute', 'distributions', 'export',
           'flow_layers', 'flows', 'kde', 'keras', 'lattice', 'logdet',
           'losses', 'make_flow', 'manifolds', 'matrix_free', 'mcmc',
           'metrics', 'potentials', 'solvers', 'targets', 'tolerances',
           'training']
