"""fastelbo.gaussian_latent: the reparameterized sample of q(z|x) = N(mu, sigma^2) with log q, log p
and the analytic KL, in one pass.

    z     = mu + sigma eps,  eps ~ N(0, I) drawn in-kernel from (seed, sample, row, dim) (docs/RNG.md)
    log q = sum_d [-eps^2/2 - log sigma - log(2 pi)/2]            (exact at that z)
    log p = sum_d [-((z - mu_p)/sigma_p)^2/2 - log sigma_p - log(2 pi)/2]   (N(0, I) without a prior)
    KL    = sum_d [(sigma/sigma_p)^2 - 1 - 2 log(sigma/sigma_p) + ((mu - mu_p)/sigma_p)^2] / 2
    sigma = exp(s/2) ("logvar"), exp(s) ("log_std"), softplus(s) ("softplus"), exp(5 tanh(s/5)) ("soft_log_std")
    stl:  log q keeps its value, its gradient flows through z only (d log q/d z = -eps/sigma).

Everything this op is, in one place: the public function (argument checks, then the backend's
kernel), its torch op schemas (`fastelbo::gaussian_latent` and its backward kernel; the C++
kernels are the default overload, Triton's the `.triton` overload), its fakes for torch.compile,
its reference implementation (the oracle, and backend "reference"), and its gradient rules (the
Triton overload's Python autograd; the C++ op's autograd is csrc/binding/autograd.cpp; the
second order, recomputed by the reference under autograd, for both).
"""
from __future__ import annotations

import functools
import math

import torch

from .. import _backend
from .. import _validate as V
from .._backend import OVERLOAD, resolve
from .._dtypes import compute_dtype
from .._types import Latent, TracedLatent
from ..rng import draw_seed, normal_noise
from . import _checks
from ._event_dims import OpEventDims, check_event_dims, layout_for
from ._autograd import PARAM_CODES, PARAM_NAMES, differentiating, like_or_empty, reference_vjp
from . import _cpp_calls
from ._cpp_calls import kernel, runs_eagerly
from ._math import HALF_LOG_2PI, gaussian_kl_per_dim, sigma_and_log_sigma

NAME = "gaussian_latent"
SCHEMAS = {
    # n_samples: K >= 1 samples with a leading sample dim on z, log q and log p, or 0 for one sample
    # without it (outputs of mu's shape; eps then has mu's shape too). Outputs: z, log q, log p, KL
    # and the seed the op drew. With neither eps nor seed the CPU kernel draws the seed itself from
    # the default CPU generator, as rng.draw_seed does (no separate op per call), and returns it
    # (0-dim int64; the backward regenerates eps from it, DReG reads it); when the caller passes a
    # seed or eps, and on every other device and overload, the fifth output is an empty int64 tensor.
    # A call that draws is random although its schema is functional: never trace it into a graph
    # that merges identical calls (pass a seed there, as fe.gaussian_latent does: _seed_for_kernel).
    # event_dims: mu's last event_dims dims are the event (summed; log q, log p and the KL have mu's
    # shape without them), taken as one dim of their product: the op flattens them itself, below
    # autograd, so dim=(1, 2, 3) of an NCHW latent costs no view nodes (_on_cpp_kernels).
    "gaussian_latent": "(Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, Tensor? eps, Tensor? seed, "
                       "int param, int n_samples, bool stl, int event_dims=1) "
                       "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "gaussian_latent_backward": "(Tensor? grad_z, Tensor? grad_log_q, Tensor? grad_log_p, Tensor? grad_kl, "
                                "Tensor mu, Tensor scale, Tensor? prior_mu, Tensor? prior_scale, Tensor? eps, "
                                "Tensor? seed, int param, int n_samples, bool stl, int event_dims=1) "
                                "-> (Tensor, Tensor, Tensor, Tensor)",
    "normal_noise": "(Tensor seed, int n_samples, int n_rows, int dim, bool float64) -> Tensor",
}


# ---- the public function ----

def _check_noise(eps, generator, mu, n_samples):
    """eps (explicit noise of z's shape, a constant) or generator (on mu's device), not both."""
    if eps is not None:
        if generator is not None:
            raise ValueError("pass either eps (explicit noise) or generator, not both")
        V.tensor("eps", eps)
        if eps.requires_grad and torch.is_grad_enabled():
            raise ValueError("eps must not require grad: it is noise, z is differentiable in mu and scale "
                             "(and the prior) only; pass eps.detach()")
        z_shape = mu.shape if n_samples is None else torch.Size((n_samples, *mu.shape))
        if eps.shape != z_shape:
            raise ValueError(f"eps must have z's shape {tuple(z_shape)}, got {tuple(eps.shape)}")
        V.same_device("eps", eps, "mu", mu)
        V.finite("eps", eps)
    elif generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != mu.device.type or (
            generator.device.index is not None and mu.device.index is not None
            and generator.device.index != mu.device.index
        ):
            raise ValueError(f"generator must be on mu's device ({mu.device}), got {generator.device}")


def gaussian_latent(mu, scale, *, param="logvar", dim=-1, n_samples=None, prior=None, stl=False,
                    generator=None, eps=None, backend=None) -> Latent:
    """Sample z = mu + sigma * eps from q(z|x) = N(mu, sigma^2) and return Latent(z, log_q, log_p, kl).

    mu, scale: (..., D), scale encoding sigma by `param` ("logvar": exp(s/2), "log_std": exp(s),
    "softplus": softplus(s), "soft_log_std": exp(5 tanh(s/5)), NVAE's soft clamp). dim: the event dims (an int or a tuple; default the last), summed in
    log q, log p and the KL, which have mu's shape without them (e.g. dim=(1, 2, 3) for NCHW
    latents summed per image). n_samples=K adds a leading sample dim to z, log_q and log_p. prior:
    None for N(0, I) or (prior_mu, prior_scale) broadcastable to mu, same `param` encoding,
    differentiable. stl: "sticking the landing" gradient for log q. eps: explicit noise of z's shape
    (a constant: it must not require grad); otherwise it is drawn in-kernel from `generator`
    (default: the device's default generator).
    """
    # The common call, whole, in C++ (csrc/binding/front_door.cpp; None for any other call), outside
    # dynamo's tracing (which must not read FRONT_DOOR: it is None until the library loads). When the
    # kernel refuses the call, _check_all names the argument, as below.
    front_door = None if torch.compiler.is_dynamo_compiling() else _cpp_calls.FRONT_DOOR
    if front_door is not None and eps is None and generator is None:
        refused = None
        try:
            latent = front_door.front_gaussian_latent(mu, scale, param, dim, n_samples, prior, stl, backend)
        except Exception as error:
            refused = error
        if refused is not None:
            _check_all(mu, scale, param, n_samples, prior, stl, generator, eps)
            raise refused
        if latent is not None:
            return latent
    if (eps is None and generator is None and (stl is False or stl is True) and not V.active
            and (n_samples is None or (type(n_samples) is int and n_samples >= 1))
            and (prior is None or (type(prior) in (tuple, list) and len(prior) == 2))):
        # The common calls on the C++ kernels: they check their arguments (csrc/binding/checks.h),
        # and only when they refuse does _check_all say which argument is wrong, by its name here
        # (outside the except block: its error is not chained to the kernel's). On the CPU the
        # kernel draws its seed (after its checks: a refused call leaves the generator as it was).
        refused = None
        try:
            name = resolve(backend, mu.device)
            if OVERLOAD.get(name) == "default":
                return _on_cpp_kernels(name, mu, scale, param, dim, n_samples, prior, stl)
        except Exception as error:
            refused = error
        if refused is not None:
            _check_all(mu, scale, param, n_samples, prior, stl, generator, eps)
            raise refused
    if type(dim) is not int or dim != -1:
        layout = layout_for(mu, dim)
        if layout is not None:
            return _with_layout(layout, mu, scale, param, n_samples, prior, stl, generator, eps, backend)
    prior = _check_all(mu, scale, param, n_samples, prior, stl, generator, eps)
    return _checked(mu, scale, param, n_samples, prior, stl, generator, eps, backend)


def _on_cpp_kernels(name, mu, scale, param, dim, n_samples, prior, stl) -> TracedLatent:
    """gaussian_latent on the C++ kernels' default overload, which checks the arguments itself:
    no eps or generator, and n_samples and prior already of the right kinds."""
    layout = None if type(dim) is int and dim == -1 else layout_for(mu, dim)
    if layout is not None and not layout.trailing:  # the same call on flat views, z back in mu's dim order
        flat_prior = None if prior is None else tuple(layout.flat_prior(t) for t in prior)
        flat = _on_cpp_kernels(name, layout.flat(mu), layout.flat(scale), param, -1, n_samples, flat_prior, stl)
        return _unflat(layout, flat, n_samples)
    # The op takes trailing event dims as they are (no views): event_dims.
    prior_mu, prior_scale = (None, None) if prior is None else prior
    # (_seed_for_kernel and kernel(NAME, "default", eager=eager), written out: the step's most
    # frequent call saves two Python calls)
    eager = runs_eagerly((mu, scale, prior_mu, prior_scale))
    seed = None if eager and type(mu) in _PLAIN and mu.device.type == "cpu" else draw_seed(mu.device, None)
    op = _cpp_calls.BINDINGS.gaussian_latent if eager and _cpp_calls.BINDINGS is not None else (
        torch.ops.fastelbo.gaussian_latent.default)
    out = op(mu, scale, prior_mu, prior_scale, None, seed, PARAM_CODES[param], n_samples or 0, stl,
             1 if layout is None else len(layout.dims))
    latent = _traced(out, name, (mu, scale, param, n_samples, None if prior is None else (prior_mu, prior_scale),
                                 None, seed))
    if layout is not None:
        latent.layout, latent.inputs_flat = layout, False
    return latent


def _checked(mu, scale, param, n_samples, prior, stl, generator, eps, backend, event_dims=1) -> TracedLatent:
    """gaussian_latent after its checks (event_dims: mu's last dims summed, on the kernels)."""
    n_samples = None if n_samples is None else int(n_samples)
    name = resolve(backend, mu.device)
    if name == "reference":
        seed = None if eps is not None else draw_seed(mu.device, generator)
        out = reference(mu, scale, param, n_samples, prior, stl, eps, seed)
    else:
        overload = OVERLOAD[name]
        prior_mu, prior_scale = prior if prior is not None else (None, None)
        eager = runs_eagerly((mu, scale, prior_mu, prior_scale, eps))
        seed = None if eps is not None else (
            _seed_for_kernel(mu, generator, eager) if overload == "default" else draw_seed(mu.device, generator))
        out = kernel(NAME, overload, eager=eager)(
            mu, scale, prior_mu, prior_scale, eps, seed, PARAM_CODES[param], n_samples or 0, stl, event_dims)
    return _traced(out, name, (mu, scale, param, n_samples, prior, eps, seed))


# The tensor types whose calls the CPU kernel draws its own seed for, as the front door takes them
# (a Parameter is a plain tensor to the kernels; the subclasses that tracing wraps tensors in are not).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _seed_for_kernel(mu: torch.Tensor, generator, eager: bool):
    """The seed to pass the C++ kernels: None for a plain CPU tensor in a call that runs eagerly
    (_cpp_calls.runs_eagerly), where the kernel draws it from the default generator itself, as
    draw_seed would; drawn here for a given generator, on CUDA (the device-side seed keeps CUDA
    graphs valid), and whenever the call is being traced into a graph: under torch.compile and
    torch.export, torch.jit.trace, AOT autograd's fake tracing (mu is then a tensor subclass) and
    make_fx (which holds a torch function mode, so runs_eagerly is False even on real tensors).
    There the op's own draw would be a hidden side effect of a functional op, and a graph pass such
    as AOT autograd's common-subexpression elimination would merge two identical calls into one
    noise; torch.randint is an op those passes know to be random (tests/test_cpp_calls.py checks
    the graphs hold it)."""
    if eager and type(mu) in _PLAIN and mu.device.type == "cpu" and generator is None:
        return None
    return draw_seed(mu.device, generator)


def _with_layout(layout, mu, scale, param, n_samples, prior, stl, generator, eps, backend) -> TracedLatent:
    """The latent over event dims other than the last. Trailing ones go to the kernels' op as its
    event_dims (no views; channels-last mu not copied, csrc/binding/event_dims.h). Otherwise, and on
    the reference, the kernels run on flat views (batch..., D) of mu, scale, the prior and eps
    (_event_dims.py), z back in mu's dim order. The latent keeps the layout, for DReG."""
    prior = _check_all(mu, scale, param, n_samples, prior, stl, generator, eps)
    if layout.trailing and resolve(backend, mu.device) != "reference":
        latent = _checked(mu, scale, param, n_samples, prior, stl, generator, eps, backend, len(layout.dims))
        latent.layout, latent.inputs_flat = layout, False
        return latent
    leading = 0 if n_samples is None else 1
    flat = _checked(layout.flat(mu), layout.flat(scale), param, n_samples,
                    None if prior is None else tuple(layout.flat_prior(t) for t in prior), stl, generator,
                    None if eps is None else layout.flat(eps, leading), backend)
    return _unflat(layout, flat, n_samples)


def _unflat(layout, flat: TracedLatent, n_samples) -> TracedLatent:
    """The latent of the kernels' flat call, z back in mu's dim order; it keeps the flat
    arguments and the layout, for DReG."""
    latent = TracedLatent(layout.unflat(flat.z, 0 if n_samples is None else 1), flat.log_q, flat.log_p, flat.kl)
    latent.backend, latent.inputs, latent.layout = flat.backend, flat.inputs, layout
    return latent


def _traced(out, name: str, inputs: tuple) -> TracedLatent:
    """The Latent of an op's outputs, with the backend and the arguments (the seed the op drew in
    place of None) that DReG reads."""
    latent = tuple.__new__(TracedLatent, out[:4])  # (TracedLatent(*out[:4]) without the namedtuple's Python __new__)
    latent.backend = name
    if inputs[-1] is None and inputs[-2] is None:  # neither seed nor eps: the kernel drew the seed
        inputs = (*inputs[:-1], out[4])
    latent.inputs = inputs
    return latent


def _check_all(mu, scale, param, n_samples, prior, stl, generator, eps):
    """Every structural check of gaussian_latent's arguments (ValueError / TypeError naming the
    argument); returns the prior as a tuple."""
    _checks.posterior(mu, scale, param)
    if n_samples is not None:
        n_samples = V.integer("n_samples", n_samples, 1)
    if prior is not None:
        prior = _checks.prior(prior, mu)
    if stl is not False and stl is not True:
        V.flag("stl", stl)
    if eps is not None or generator is not None:
        _check_noise(eps, generator, mu, n_samples)
    return prior


def noise(backend: str, seed, n_samples: int, n_rows: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The latent's eps (n_samples, n_rows, dim) in `dtype` (float32 or float64) as `backend` draws it
    (bit for bit the same on every backend: docs/RNG.md)."""
    if backend == "reference":
        return normal_noise(seed, n_samples, n_rows, dim, dtype)
    return getattr(torch.ops.fastelbo.normal_noise, OVERLOAD[backend])(seed, n_samples, n_rows, dim,
                                                                      dtype == torch.float64)


# ---- the reference implementation ----

def _prior_terms(prior, param: str, dtype: torch.dtype):
    """(mu_p, sigma_p, log sigma_p) in the compute dtype, or (None, None, None) for N(0, I)."""
    if prior is None:
        return None, None, None
    prior_mu, prior_scale = prior
    prior_sigma, prior_log_sigma = sigma_and_log_sigma(prior_scale.to(dtype), param)
    return prior_mu.to(dtype), prior_sigma, prior_log_sigma


def log_prior(z: torch.Tensor, prior, param: str) -> torch.Tensor:
    """log p(z) = sum_d [ -((z - mu_p) / sigma_p)^2 / 2 - log sigma_p - log(2 pi) / 2 ]."""
    prior_mu, prior_sigma, prior_log_sigma = _prior_terms(prior, param, z.dtype)
    if prior_mu is None:
        return (-0.5 * z * z).sum(-1) - z.shape[-1] * HALF_LOG_2PI
    u = (z - prior_mu) / prior_sigma
    return (-0.5 * u * u - prior_log_sigma).sum(-1) - z.shape[-1] * HALF_LOG_2PI


def log_q_grad_z(backend, mu, scale, param, n_samples, prior, eps, seed):
    """d log q / d z = -eps / sigma (detached, z's shape), for DReG, from the latent's arguments:
    eps is the explicit noise (z's shape), or None to regenerate it from `seed` as `backend` drew it,
    in the latent's compute dtype (the prior's dtype counts, as in the forward)."""
    dtype = compute_dtype(mu, scale, *(prior or ()))
    with torch.no_grad():
        if eps is None:
            rows = mu.numel() // mu.shape[-1] if mu.shape[-1] else 0
            k = 1 if n_samples is None else n_samples
            eps = noise(backend, seed, k, rows, mu.shape[-1], dtype).view(k, *mu.shape)
            if n_samples is None:
                eps = eps[0]
        sigma, _ = sigma_and_log_sigma(scale.to(dtype), param)
        return -eps.to(dtype) / sigma


def reference(mu, scale, param, n_samples, prior, stl, eps, seed):
    """(z, log q, log p, kl) in torch ops (see the module docstring); z has the leading sample dim
    only when n_samples is given. With stl, log q keeps its value but its gradient flows only
    through z: d log q / d z = -eps / sigma (the variational parameters stopped)."""
    dtype = compute_dtype(mu, scale, *(prior or ()))
    # One cast of the prior: its log p and KL gradients then add up in the compute dtype (two casts
    # of a half prior would each round their gradient to half before autograd adds them).
    prior = None if prior is None else tuple(t.to(dtype) for t in prior)
    k = 1 if n_samples is None else n_samples
    mu_c = mu.to(dtype)
    sigma, log_sigma = sigma_and_log_sigma(scale.to(dtype), param)
    if eps is None:
        rows = mu.numel() // mu.shape[-1] if mu.shape[-1] else 0
        eps = normal_noise(seed, k, rows, mu.shape[-1], dtype).reshape(k, *mu.shape)
    elif n_samples is None:
        eps = eps.unsqueeze(0)
    eps = eps.to(dtype)

    z = mu_c + sigma * eps
    d = mu.shape[-1]
    log_q = (-0.5 * eps * eps - log_sigma).sum(-1) - d * HALF_LOG_2PI
    if stl:
        grad_z = (-eps / sigma).detach()
        log_q = log_q.detach() + ((z - z.detach()) * grad_z).sum(-1)
    log_p = log_prior(z, prior, param)
    prior_mu, prior_sigma, prior_log_sigma = _prior_terms(prior, param, dtype)
    kl = gaussian_kl_per_dim(mu_c, log_sigma, prior_mu, prior_sigma, prior_log_sigma).sum(-1)

    if n_samples is None:
        z, log_q, log_p = z[0], log_q[0], log_p[0]
    return z.to(mu.dtype), log_q, log_p, kl


# ---- fakes (output shapes for torch.compile) ----

def fake(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, event_dims=1):
    # The structural checks of the C++ kernels (csrc/binding/checks.h), which a meta tensor or a
    # traced call never reaches.
    if scale.shape != mu.shape:
        raise ValueError(f"scale must have mu's shape {tuple(mu.shape)}, got {tuple(scale.shape)}")
    for name, t in (("scale", scale), ("prior_mu", prior_mu), ("prior_scale", prior_scale), ("eps", eps)):
        if t is not None:
            V.same_device(name, t, "mu", mu)
    check_event_dims(mu.dim(), event_dims)
    dtype = compute_dtype(mu, scale, prior_mu, prior_scale)
    batch = mu.shape[:mu.dim() - event_dims]
    samples = (n_samples,) if n_samples else ()
    z = _new_like_kernels(_kernel_events(mu, event_dims), mu, (*samples, *mu.shape))
    log_q = mu.new_empty((*samples, *batch), dtype=dtype)
    draws = eps is None and seed is None and mu.device.type == "cpu"  # the CPU kernel draws its seed
    drawn = mu.new_empty(() if draws else (0,), dtype=torch.int64)
    return z, log_q, torch.empty_like(log_q), mu.new_empty(batch, dtype=dtype), drawn


def backward_fake(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps, seed, param,
                  n_samples, stl, event_dims=1):
    events = _kernel_events(mu, event_dims)
    if events is None:
        return (mu.new_empty(mu.shape), scale.new_empty(scale.shape), like_or_empty(prior_mu, mu),
                like_or_empty(prior_scale, mu))

    def prior_grad(prior):  # the kernel's contiguous flat gradient, unflattened as csrc/binding/event_dims.h does
        return like_or_empty(None, mu) if prior is None else events.prior_grad(
            prior.new_empty(events.flat_prior(prior).shape), prior)

    return (_new_like_kernels(events, mu, mu.shape), _new_like_kernels(events, mu, scale.shape),
            prior_grad(prior_mu), prior_grad(prior_scale))


def _kernel_events(mu, event_dims: int):
    """The OpEventDims of an op call whose kernels store mu's event channels-last, else None (their
    outputs are then contiguous)."""
    if event_dims == 1:
        return None
    events = OpEventDims(mu, event_dims)
    return events if events.channels > 1 else None


def _new_like_kernels(events, mu, shape) -> torch.Tensor:
    """An empty tensor of `shape` (mu's, K leading or not) with the strides the kernels give it:
    contiguous, or channels-last for _kernel_events' `events` (csrc/binding/event_dims.h)."""
    if events is None:
        return mu.new_empty(shape)
    lead = len(shape) - events.event_dims
    return events.unflat(mu.new_empty((*shape[:lead], math.prod(shape[lead:]))), shape)


def noise_fake(seed, n_samples, n_rows, dim, float64):
    return seed.new_empty((n_samples, n_rows, dim), dtype=torch.float64 if float64 else torch.float32)


FAKES = {"gaussian_latent": fake, "gaussian_latent_backward": backward_fake, "normal_noise": noise_fake}


# ---- gradients ----

def _reference_outputs(param, n_samples, stl, event_dims, mu, scale, prior_mu, prior_scale, eps, seed):
    """The op's outputs by the reference implementation (n_samples 0: no sample dim), over its last
    event_dims dims flattened in logical order (the reference's noise follows the column index)."""
    check_event_dims(mu.dim(), event_dims)
    prior = None if prior_mu is None else (prior_mu, prior_scale)
    if event_dims == 1:
        return tuple(reference(mu, scale, PARAM_NAMES[param], n_samples or None, prior, stl, eps, seed))
    events = OpEventDims(mu, event_dims, storage_order=False)
    z, log_q, log_p, kl = reference(events.flat(mu), events.flat(scale), PARAM_NAMES[param], n_samples or None,
                                    None if prior is None else tuple(events.flat_prior(t) for t in prior), stl,
                                    events.flat(eps), seed)
    return events.unflat(z, (*((n_samples,) if n_samples else ()), *mu.shape)), log_q, log_p, kl


def backward_differentiable(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps, seed,
                            param, n_samples, stl, event_dims, needs):
    """The gradients (mu, scale, prior_mu, prior_scale) for the gradients of the four outputs,
    recomputed by the reference under autograd (differentiable; None where not `needs`): the
    second-order backward (`fastelbo::gaussian_latent_backward_differentiable` for the C++ op)."""
    return tuple(reference_vjp(functools.partial(_reference_outputs, param, n_samples, stl, event_dims),
                               (mu, scale, prior_mu, prior_scale, eps, seed), tuple(needs[:4]) + (False,) * 2,
                               (grad_z, grad_log_q, grad_log_p, grad_kl))[:4])


def setup_context(ctx, inputs, output):
    mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, event_dims = inputs
    ctx.save_for_backward(mu, scale, prior_mu, prior_scale, eps, seed)  # these overloads are always given eps or seed
    ctx.options = (param, n_samples, stl, event_dims)
    ctx.set_materialize_grads(False)


def backward(ctx, grad_z, grad_log_q, grad_log_p, grad_kl, grad_seed=None):
    """The `.triton` and `.cuda_sim` overloads' autograd: its backward kernel, or the second order."""
    mu, scale, prior_mu, prior_scale, eps, seed = ctx.saved_tensors
    if differentiating():
        grads = backward_differentiable(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale,
                                        eps, seed, *ctx.options, ctx.needs_input_grad[:4])
        return (*grads, None, None, None, None, None, None)
    grads = getattr(torch.ops.fastelbo.gaussian_latent_backward, ctx.overload)(
        grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale, eps, seed, *ctx.options)
    has_prior = prior_mu is not None
    return (grads[0], grads[1], grads[2] if has_prior else None, grads[3] if has_prior else None,
            None, None, None, None, None, None)


AUTOGRAD = {"gaussian_latent": (backward, setup_context)}
SECOND_ORDER = {"gaussian_latent_backward_differentiable": backward_differentiable}
