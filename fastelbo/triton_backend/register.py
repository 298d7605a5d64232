"""The Triton kernels as the `.triton` overload of each fastelbo op: the same op names and schemas
as the C++ kernels (fastelbo/ops/<name>.py: SCHEMAS), these launchers as their kernels (CUDA
tensors, or CPU tensors under TRITON_INTERPRET=1), and each op's fakes and autograd rules
(FAKES, AUTOGRAD; fastelbo/ops/_overloads.py). Choosing backend "triton" makes the public
functions call torch.ops.fastelbo.<name>.triton instead of torch.ops.fastelbo.<name>.default.
"""
from __future__ import annotations

import torch

from ..ops._overloads import define as define_overload
from . import dmol, estimators, latent, likelihoods, rng

KERNELS = {
    "gaussian_latent": latent.gaussian_latent,
    "gaussian_latent_backward": latent.gaussian_latent_backward,
    "normal_noise": rng.normal_noise_op,
    "gaussian_kl": latent.gaussian_kl,
    "gaussian_kl_backward": latent.gaussian_kl_backward,
    "bernoulli_log_prob": likelihoods.bernoulli_log_prob,
    "continuous_bernoulli_log_prob": likelihoods.continuous_bernoulli_log_prob,
    "gaussian_log_prob": likelihoods.gaussian_log_prob,
    "gaussian_log_prob_backward": likelihoods.gaussian_log_prob_backward,
    "categorical_log_prob": likelihoods.categorical_log_prob,
    "discretized_logistic_mixture_log_prob": dmol.discretized_logistic_mixture_log_prob,
    "elbo": estimators.elbo,
}

LIBRARY = define_overload("triton", KERNELS, ("CUDA", "CPU"))
