"""Manifolds: tori, spheres, their products and powers (the geoopt-style protocol)."""

from tfp_ircpm.manifolds.base import Manifold
from tfp_ircpm.manifolds.power import Power
from tfp_ircpm.manifolds.product import Product
from tfp_ircpm.manifolds.sphere import Sphere
from tfp_ircpm.manifolds.torus import Torus
from tfp_ircpm.manifolds.torus import wrap

__all__ = ['Manifold', 'Power', 'Product', 'Sphere', 'Torus', 'wrap']
