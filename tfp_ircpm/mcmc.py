"""Checkerboard heat-bath MCMC for the lattice O(n) models.

Moved to `tfp_ircpm.lattice.mcmc`; these names are the same objects.
"""

from tfp_ircpm.lattice.mcmc import heat_bath
from tfp_ircpm.lattice.mcmc import local_field
from tfp_ircpm.lattice.mcmc import summarize
from tfp_ircpm.lattice.mcmc import sweep
from tfp_ircpm.lattice.mcmc import to_points

__all__ = ['heat_bath', 'local_field', 'summarize', 'sweep', 'to_points']
