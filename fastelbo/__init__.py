"""fastelbo: the evidence lower bound of VAEs in fused kernels, as differentiable PyTorch ops."""
from ._backend import backends, set_backend, use_backend
from ._types import ELBOOutput, Latent
from ._validate import set_validation, validation_enabled
from .classic import reparameterize, vae_loss
from .functional import (
    bernoulli_log_prob,
    categorical_log_prob,
    continuous_bernoulli_log_prob,
    discretized_logistic_mixture_log_prob,
    elbo,
    gaussian_kl,
    gaussian_latent,
    gaussian_log_prob,
    linear_bernoulli_log_prob,
    linear_gaussian_log_prob,
)
from .module import ELBO
from . import reference  # noqa: E402  (needs the names above)
from . import integrations  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "gaussian_latent", "gaussian_kl", "bernoulli_log_prob", "gaussian_log_prob",
    "continuous_bernoulli_log_prob", "categorical_log_prob", "discretized_logistic_mixture_log_prob", "elbo",
    "linear_bernoulli_log_prob",
    "linear_gaussian_log_prob", "ELBO", "ELBOOutput",
    "Latent", "reparameterize", "vae_loss", "backends", "set_backend", "use_backend",
    "set_validation", "validation_enabled", "reference", "integrations",
]
