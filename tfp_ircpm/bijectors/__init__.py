"""Bijectors on manifolds."""

from tfp_ircpm.bijectors.ircpm import IRCPM

__all__ = ['IRCPM']
