"""The "cuda" backend: fused CUDA C++ kernels (csrc/cuda/) for CUDA tensors, launched on the
current stream."""
from . import _build
from .backend import Backend, bind

_reason = _build.cuda_library()
if _reason is not None:
    raise ImportError(f"fastelbo's CUDA library is unavailable: {_reason}")

NAME = "cuda"

__all__ = ["latent", "kl", "bernoulli", "gaussian", "continuous_bernoulli", "categorical", "elbo"]

bind(Backend("cuda"), globals())
