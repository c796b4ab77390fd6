"""Bijectors on manifolds."""

from tfp_ircpm.bijectors.chain import Chain
from tfp_ircpm.bijectors.ircpm import IRCPM

__all__ = ['Chain', 'IRCPM']
