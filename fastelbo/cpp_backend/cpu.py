"""The "cpu" backend: fused C++ kernels for CPU tensors (csrc/cpu/), vectorized with ATen's
Vectorized and multi-threaded with at::parallel_for."""
from .backend import Backend, bind

NAME = "cpu"

__all__ = ["latent", "kl", "bernoulli", "gaussian", "continuous_bernoulli", "categorical", "elbo"]

bind(Backend("cpu"), globals())
