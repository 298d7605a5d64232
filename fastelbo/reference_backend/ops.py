"""The reference backend: the implementation functions every backend module exposes.

Arguments arrive checked and normalized by fastelbo.functional (see its docstrings).
"""
from ..rng import normal_noise as noise
from .estimators import elbo
from .latent import kl, latent
from .likelihoods import bernoulli, categorical, continuous_bernoulli, gaussian

__all__ = ["latent", "noise", "kl", "bernoulli", "gaussian", "continuous_bernoulli", "categorical", "elbo"]
