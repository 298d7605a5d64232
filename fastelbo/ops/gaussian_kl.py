"""fastelbo.gaussian_kl: the analytic KL(N(mu, sigma^2) || prior), per dim or summed over D.

    KL_d = [(sigma/sigma_p)^2 - 1 - 2 log(sigma/sigma_p) + ((mu - mu_p)/sigma_p)^2] / 2
         = (e^(2r) - 1 - 2r)/2 + delta^2/2,  r = log sigma - log sigma_p, delta = (mu - mu_p)/sigma_p
    (sigma_p = 1, mu_p = 0 without a prior; sigma encoded by `param` as in gaussian_latent)

The public function, the schemas of `fastelbo::gaussian_kl` and its backward kernel, the fakes,
the reference, and the gradient rules (Triton's Python autograd; the second order by the
reference under autograd), as for every op (see fastelbo/ops/__init__.py).
"""
from __future__ import annotations

import torch

from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype
from . import _checks
from ._event_dims import OpEventDims, layout_for
from ._autograd import PARAM_CODES, PARAM_NAMES, differentiating, like_or_empty, reference_vjp
from ._cpp_calls import kernel
from ._math import gaussian_kl_per_dim, sigma_and_log_sigma
from .gaussian_latent import _prior_terms

NAME = "gaussian_kl"
SCHEMAS = {
    "gaussian_kl": "(Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, int param, bool per_dim) "
                   "-> Tensor",
    "gaussian_kl_backward": "(Tensor grad, Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, "
                            "int param, bool per_dim) -> (Tensor, Tensor, Tensor, Tensor)",
}


def gaussian_kl(mu, scale, *, param="logvar", dim=-1, prior=None, per_dim=False, backend=None) -> torch.Tensor:
    """Analytic KL(N(mu, sigma^2) || prior) summed over the event dims `dim` (default the last):
    mu's shape without them, or mu's shape with per_dim."""
    layout = layout_for(mu, dim) if type(dim) is not int or dim != -1 else None
    _checks.posterior(mu, scale, param)
    if prior is not None:
        prior = _checks.prior(prior, mu)
    if per_dim is not False and per_dim is not True:
        V.flag("per_dim", per_dim)
    events = OpEventDims(mu, len(layout.dims)) if layout is not None and layout.trailing else None
    if events is not None and events.channels > 1:
        # channels-last: the event flattened in storage order, a view (the KL is a sum: any order)
        flat_prior = None if prior is None else tuple(events.flat_prior(t) for t in prior)
        kl = gaussian_kl(events.flat(mu), events.flat(scale), param=param, prior=flat_prior, per_dim=per_dim,
                         backend=backend)
        return events.unflat(kl, mu.shape) if per_dim else kl
    if layout is not None:  # the kernels on flat views (batch..., D) (_event_dims.py)
        flat_prior = None if prior is None else tuple(layout.flat_prior(t) for t in prior)
        kl = gaussian_kl(layout.flat(mu), layout.flat(scale), param=param, prior=flat_prior, per_dim=per_dim,
                         backend=backend)
        return layout.unflat(kl) if per_dim else kl
    name = resolve(backend, mu.device)
    if name == "reference":
        return reference(mu, scale, param, prior, per_dim)
    prior_mu, prior_scale = prior if prior is not None else (None, None)
    return kernel(NAME, OVERLOAD[name], (mu, scale, prior_mu, prior_scale))(mu, scale, prior_mu, prior_scale,
                                                                            PARAM_CODES[param], per_dim)


def reference(mu, scale, param, prior, per_dim):
    """Analytic KL(N(mu, sigma^2) || prior), per dim or summed over the last dim."""
    dtype = compute_dtype(mu, scale, *(prior or ()))
    _, log_sigma = sigma_and_log_sigma(scale.to(dtype), param)
    prior_mu, prior_sigma, prior_log_sigma = _prior_terms(prior, param, dtype)
    per = gaussian_kl_per_dim(mu.to(dtype), log_sigma, prior_mu, prior_sigma, prior_log_sigma)
    return per if per_dim else per.sum(-1)


def fake(mu, scale, prior_mu, prior_scale, param, per_dim):
    dtype = compute_dtype(mu, scale, prior_mu, prior_scale)
    return mu.new_empty(mu.shape if per_dim else mu.shape[:-1], dtype=dtype)


def backward_fake(grad, mu, scale, prior_mu, prior_scale, param, per_dim):
    return (mu.new_empty(mu.shape), scale.new_empty(scale.shape), like_or_empty(prior_mu, mu),
            like_or_empty(prior_scale, mu))


FAKES = {"gaussian_kl": fake, "gaussian_kl_backward": backward_fake}


def backward_differentiable(grad, mu, scale, prior_mu, prior_scale, param, per_dim, needs):
    """The gradients (mu, scale, prior_mu, prior_scale), recomputed by the reference under autograd
    (differentiable; None where not `needs`): the second-order backward."""
    def forward(mu, scale, prior_mu, prior_scale):
        prior = None if prior_mu is None else (prior_mu, prior_scale)
        return (reference(mu, scale, PARAM_NAMES[param], prior, per_dim),)

    return tuple(reference_vjp(forward, (mu, scale, prior_mu, prior_scale), tuple(needs[:4]), (grad,)))


def setup_context(ctx, inputs, output):
    mu, scale, prior_mu, prior_scale, param, per_dim = inputs
    ctx.save_for_backward(mu, scale, prior_mu, prior_scale)
    ctx.options = (param, per_dim)


def backward(ctx, grad):
    """The `.triton` and `.cuda_sim` overloads' autograd: its backward kernel, or the second order."""
    mu, scale, prior_mu, prior_scale = ctx.saved_tensors
    if differentiating():
        return (*backward_differentiable(grad, mu, scale, prior_mu, prior_scale, *ctx.options,
                                         ctx.needs_input_grad[:4]), None, None)
    grads = getattr(torch.ops.fastelbo.gaussian_kl_backward, ctx.overload)(grad, mu, scale, prior_mu, prior_scale, *ctx.options)
    has_prior = prior_mu is not None
    return grads[0], grads[1], grads[2] if has_prior else None, grads[3] if has_prior else None, None, None


AUTOGRAD = {"gaussian_kl": (backward, setup_context)}
SECOND_ORDER = {"gaussian_kl_backward_differentiable": backward_differentiable}
