"""Hostile inputs (the README's "Bad input" promises): hypothesis builds calls to every public op with random shapes
(empty batches, D = 1, odd sizes, extra leading dims), dtypes (the four float dtypes, mixed, and
integer / bool / complex where a float is needed), strides (permuted, stepped, stride-0 expanded,
offset views), devices (the suite's, meta), shape mistakes, wrong argument types and option
strings, NaN / inf, and the extreme values the README promises finite results for.

Every call, on the reference and on each fused backend, must end in exactly one of:
  * a ValueError or TypeError whose message names the offending argument, of the type the
    reference raises for the same call (and a call the strategy knows is wrong must raise);
  * results that match the reference on the same input values, forward and backward (random
    cotangents), by fastelbo.testing's rule (truth: the reference in float64; the tolerance
    table; HALF_FACTOR times the reference's own error for float16 / bfloat16 and for the promised
    extremes; see _judge), with NaN where the reference has NaN and finite results wherever the README
    promises them.
Either way no input changes (every byte of its storage). Any other exception is a failure.

Examples are small so the Triton interpreter gets through its share. A failure prints the
example; hypothesis replays it from its database (.hypothesis/) on the next run. For a longer
hunt: FASTELBO_HOSTILE_EXAMPLES (default 300 per op test) and FASTELBO_HOSTILE_FEW_EXAMPLES
(default 150, for Triton in its interpreter and the validation-mode and meta tests).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Callable

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")  # the test extra has it; a bare machine skips this file
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastelbo as fe
from fastelbo._types import Latent
from fastelbo.testing import HALF_FACTOR, HALF_FLOOR, TOLERANCES, _default_generator, _violation
from helpers import DEVICE, FUSED_BACKENDS, PARAMS

HALF_DTYPES = (torch.float16, torch.bfloat16)
PRECISION = (torch.bfloat16, torch.float16, torch.float32, torch.float64)  # coarsest first
NOT_FLOAT = (torch.int64, torch.int32, torch.bool, torch.complex64)
OTHER_DEVICES = ("meta",) + (("cpu",) if DEVICE != "cpu" else ())
LIKELIHOODS = ("bernoulli_log_prob", "continuous_bernoulli_log_prob", "gaussian_log_prob", "categorical_log_prob")

# Without a GPU the Triton kernels run in its interpreter (about 0.1 s a launch): fewer, tiny examples.
INTERPRETED = {"triton"} if DEVICE == "cpu" else set()
BACKENDS = ["reference"] + [name for name in FUSED_BACKENDS if name not in INTERPRETED]
SLOW_BACKENDS = [name for name in FUSED_BACKENDS if name in INTERPRETED]

# NaN / inf inputs make the Triton interpreter's numpy arithmetic warn; the results are what is judged.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

_SETTINGS = dict(deadline=None, derandomize=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
many = settings(max_examples=int(os.environ.get("FASTELBO_HOSTILE_EXAMPLES", 300)), **_SETTINGS)
few = settings(max_examples=int(os.environ.get("FASTELBO_HOSTILE_FEW_EXAMPLES", 150)), **_SETTINGS)


# ---- a call, its tensors by name, and what it must do ----

@dataclasses.dataclass(frozen=True)
class T:
    """The input tensor `name` in a call's arguments (resolved for each run)."""

    name: str


@dataclasses.dataclass(frozen=True)
class Gen:
    """A fresh torch.Generator seeded with `seed` on the call's device, for each run."""

    seed: int


RUN_BACKEND = object()  # the backend the run is for


@dataclasses.dataclass
class Case:
    op: str
    kwargs: dict                  # arguments (T / Gen markers for tensors and generators)
    tensors: dict                 # name -> input tensor (a float leaf may require grad)
    dtype: torch.dtype            # the precision the results are judged in
    bad: tuple = ()               # an argument error must name one of these; () = a valid call
    bad_values: tuple = ()        # arguments holding NaN / inf / values outside the support
    extreme: bool = False         # the promised extreme values: finite results promised
    finite: bool = True           # no NaN / inf in, no target out of range: finite results promised
    nonfinite: bool = False       # NaN / inf in a float input
    outside_unit: bool = False    # finite unit data (a Bernoulli x) outside [0, 1]
    backend_arg: object = RUN_BACKEND
    default_seed: int | None = None  # noise from the default generator, in this state
    cotangent_seed: int = 0       # the random cotangents of the backward pass
    run: Callable | None = None   # run(kwargs, backend) -> outputs; default: the op with backend=

    def call(self, tensors: dict, backend: str) -> tuple:
        kwargs = _resolve(self.kwargs, tensors)
        backend = backend if self.backend_arg is RUN_BACKEND else self.backend_arg
        if self.default_seed is None:
            return _call(self, kwargs, backend)
        with _default_generator(torch.Generator(DEVICE).manual_seed(self.default_seed)):
            return _call(self, kwargs, backend)

    @property
    def conditioned(self) -> bool:
        """Whether the float64 reference on the same inputs is a truth the table can hold any
        run to. Not for the promised extremes (the float32 rounding of their inputs alone moves the result
        more: e.g. IWAE weights of log-weights near -1e6), nor for values outside the support
        (unit data outside [0, 1], unvalidated, below float64: a Bernoulli x of 247 makes terms x l
        of thousands that cancel to a log-density near 1, which the float32 reference itself misses
        by several times the table), nor for the estimator pipeline in float16 / bfloat16 (its
        log-likelihood comes from a user's decoder run on z in that dtype)."""
        return (not self.extreme and not (self.outside_unit and self.dtype != torch.float64)
                and not (self.op == "elbo" and self.dtype in HALF_DTYPES))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_show(v, self.tensors)}" for k, v in self.kwargs.items())
        if self.backend_arg is not RUN_BACKEND:
            args += f", backend={self.backend_arg!r}"
        flags = [f"bad={self.bad}"] * bool(self.bad) + [f"bad_values={self.bad_values}"] * bool(self.bad_values)
        flags += ["extreme"] * self.extreme + [f"default_seed={self.default_seed}"] * (self.default_seed is not None)
        return f"{self.op}({args})  [{', '.join(flags + [str(self.dtype)])}]"


def _resolve(value, tensors):
    if isinstance(value, T):
        return tensors[value.name]
    if isinstance(value, Gen):
        return torch.Generator(DEVICE).manual_seed(value.seed)
    if isinstance(value, (tuple, list)):
        return type(value)(_resolve(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, tensors) for k, v in value.items()}
    return value


def _call(case: Case, kwargs: dict, backend: str) -> tuple:
    if case.run is not None:
        return tuple(case.run(kwargs, backend))
    out = getattr(fe, case.op)(**kwargs, backend=backend)
    return tuple(out) if isinstance(out, tuple) else (out,)


def _show(value, tensors) -> str:
    if isinstance(value, T):
        t = tensors[value.name]
        grad = ", grad" if t.requires_grad else ""
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() and t.device.type != "meta" else 0
        return (f"<{value.name}: {tuple(t.shape)} {str(t.dtype)[6:]} stride={t.stride()} {t.device.type}{grad}"
                + (f", {bad} non-finite" if bad else "") + ">")
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_show(v, tensors) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"ndarray{value.shape}"
    return repr(value)


# ---- drawing one case's tensors ----

# Value ranges (low, high) of the promised extremes by kind.
EXTREMES = {
    "loc": (-1e4, 1e4), "logits": (-1e4, 1e4), "noise": (-6.0, 6.0), "logvar": (-30.0, 30.0),
    ("scale", "logvar"): (-30.0, 30.0), ("scale", "log_std"): (-15.0, 15.0), ("scale", "softplus"): (-15.0, 30.0),
    ("scale", "soft_log_std"): (-60.0, 60.0),
}
PLAIN = {"loc": 2.0, "logits": 3.0, "noise": 1.0, "logvar": 1.0, "scale": 1.0}


class Builder:
    """Shapes, dtypes, layouts and mistakes come from hypothesis (and shrink); values come from
    a torch generator seeded by hypothesis, so an example replays exactly."""

    def __init__(self, draw, tiny: bool):
        self.draw, self.tiny = draw, tiny
        self.g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        self.profile = draw(st.sampled_from(["plain", "extreme", "nonfinite", "outside"]))
        self.tensors: dict[str, torch.Tensor] = {}
        self.bad_values: list[str] = []
        self.extreme = False
        self.finite = True
        self.nonfinite = False
        self.outside_unit = False

    # shapes and dtypes
    def batch(self, max_dims=3) -> tuple:
        sizes = [2, 1, 0, 3] if self.tiny else [2, 1, 3, 0, 5]
        return tuple(self.draw(st.lists(st.sampled_from(sizes), max_size=2 if self.tiny else max_dims)))

    def size(self, zero=True) -> int:
        sizes = [3, 1, 2, 4] if self.tiny else [3, 1, 2, 4, 5, 8]
        return self.draw(st.sampled_from(sizes + [0] * zero))

    def _floats(self) -> list:
        """float16 cannot hold what the promised extremes give (z = mu + sigma eps with sigma = e^15, or
        gradients near 1e20): an extreme case has none."""
        floats = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
        return [d for d in floats if d != torch.float16] if self.profile == "extreme" else floats

    def dtype(self) -> torch.dtype:
        return self.draw(st.sampled_from(self._floats()))

    def other_dtype(self, dtype) -> torch.dtype:
        """Usually `dtype`, sometimes another float dtype (mixed dtypes are allowed)."""
        return self.draw(st.sampled_from([dtype, dtype, dtype] + self._floats()))

    def broadcastable(self, shape) -> tuple:
        """A shape that broadcasts to `shape` without enlarging it: a suffix, some dims set to 1."""
        keep = self.draw(st.integers(0, len(shape)))
        suffix = list(shape[len(shape) - keep:])
        for i in range(len(suffix)):
            if self.draw(st.booleans()):
                suffix[i] = 1
        return tuple(suffix)

    # values
    def _uniform(self, shape, low, high) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=self.g, dtype=torch.float64)

    def _values(self, shape, kind, dtype) -> torch.Tensor:
        if kind != "unit" and dtype in (torch.bool, torch.uint8):  # data of the Gaussian: small counts
            return torch.randint(0, 2 if dtype == torch.bool else 4, shape, generator=self.g).to(dtype)
        if kind == "unit":
            if dtype in (torch.bool, torch.uint8):
                low, high = (0, 2) if self.profile != "outside" or dtype == torch.bool else (0, 256)
                return torch.randint(low, high, shape, generator=self.g).to(dtype)
            values = self._uniform(shape, -0.5, 1.5) if self.profile == "outside" else self._uniform(shape, 0.0, 1.0)
            binary = (values > 0.5).to(torch.float64)
            return torch.where(self._uniform(shape, 0, 1) < 0.5, binary, values)
        extremes = EXTREMES.get(kind)
        if self.profile == "extreme" and extremes is not None:
            low, high = extremes
            u = self._uniform(shape, 0, 1)
            return torch.where(u < 0.25, low, torch.where(u < 0.5, high, self._uniform(shape, low, high)))
        plain = PLAIN[kind if isinstance(kind, str) else kind[0]]
        if isinstance(kind, tuple):
            return self._uniform(shape, -1.5 * plain, plain)
        return torch.randn(shape, generator=self.g, dtype=torch.float64) * plain

    def _sprinkle(self, values: torch.Tensor) -> torch.Tensor:
        """NaN, inf or -inf in one to three places."""
        flat = values.reshape(-1).clone()
        for _ in range(self.draw(st.integers(1, 3))):
            index = int(torch.randint(0, flat.numel(), (), generator=self.g))
            flat[index] = self.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return flat.view(values.shape)

    def _make(self, kind, dtype):
        def make(shape):
            values = self._values(tuple(shape), kind, dtype)
            sprinkle = self.profile == "nonfinite" and values.is_floating_point() and values.numel()
            if sprinkle and self.draw(st.booleans()):
                values = self._sprinkle(values)
            return values.to(dtype).to(DEVICE)

        return make

    def _layout(self, make, shape) -> torch.Tensor:
        """A tensor of `shape` in a drawn memory layout (values made in the base's shape)."""
        n = len(shape)
        kind = self.draw(st.sampled_from(["contiguous", "permuted", "stepped", "expanded", "offset"]))
        if kind == "permuted" and n >= 2:
            perm = self.draw(st.permutations(range(n)))
            return make([shape[p] for p in perm]).permute([perm.index(i) for i in range(n)])
        if kind == "stepped" and n >= 1:
            dim, step = self.draw(st.integers(0, n - 1)), self.draw(st.sampled_from([2, 3]))
            index = [slice(None)] * n
            index[dim] = slice(None, None, step)
            return make([s * step if i == dim else s for i, s in enumerate(shape)])[tuple(index)]
        if kind == "expanded" and any(s > 1 for s in shape):
            dims = self.draw(st.sets(st.sampled_from([i for i, s in enumerate(shape) if s > 1]), min_size=1))
            return make([1 if i in dims else s for i, s in enumerate(shape)]).expand(shape)
        if kind == "offset":
            numel, extra = math.prod(shape), self.draw(st.integers(1, 3))
            return make([numel + extra])[extra:].view(shape)
        return make(shape)

    def tensor(self, name, shape, dtype, kind, grad="maybe", argument=None) -> T:
        """Add input `name` of `shape` (values of `kind`) in a drawn layout; return its marker.
        grad: "maybe", "always" or "never" a leaf that requires grad. argument: the public
        argument its bad values reach (default: name)."""
        t = self._layout(self._make(kind, dtype), tuple(shape))
        if t.is_floating_point() and (grad == "always" or (grad == "maybe" and self.draw(st.booleans()))):
            t = t.detach().requires_grad_(True)
        unit = kind == "unit" and dtype != torch.bool
        if self._flag(name if argument is None else argument, t.detach(), unit, lambda v: (v < 0) | (v > 1)) and unit:
            self.outside_unit |= bool(((t.detach() < 0) | (t.detach() > 1)).any())  # (NaN compares false)
        if self.profile == "extreme" and kind in EXTREMES:
            self.extreme = True
        self.tensors[name] = t
        return T(name)

    def index(self, name, shape, n_classes, dtype) -> T:
        """Integer targets in [0, C); with the "outside" profile, some outside (NaN results)."""
        def make(base_shape):
            t = torch.randint(0, n_classes, tuple(base_shape), generator=self.g)
            if self.profile == "outside" and t.numel():
                wrong = [n_classes, n_classes + 7] + [-1] * (dtype != torch.uint8)
                t.view(-1)[int(torch.randint(0, t.numel(), (), generator=self.g))] = self.draw(st.sampled_from(wrong))
            return t.to(dtype).to(DEVICE)

        t = self._layout(make, tuple(shape))
        if self._flag(name, t, True, lambda v: (v < 0) | (v >= n_classes)):
            self.finite = False  # NaN is the documented result for a target out of range
        self.tensors[name] = t
        return T(name)

    def _flag(self, argument, t, check_support, outside) -> bool:
        """Record NaN / inf (and values outside the support) as bad values of `argument`."""
        bad = False
        if t.numel() and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad, self.finite, self.nonfinite = True, False, True
        if t.numel() and check_support and bool(outside(t).any()):
            bad = True
        if bad and argument not in self.bad_values:
            self.bad_values.append(argument)
        return bad

    def case(self, op, kwargs, dtype, **fields) -> Case:
        return Case(op, kwargs, self.tensors, dtype, bad_values=tuple(self.bad_values), extreme=self.extreme,
                    finite=self.finite, nonfinite=self.nonfinite, outside_unit=self.outside_unit,
                    cotangent_seed=self.draw(st.integers(0, 2**31 - 1)), **fields)

    # mistakes
    def wrong_type(self, tensor: T):
        """Something that is not a tensor where a tensor is needed (its values as a list or array)."""
        t = self.tensors[tensor.name].detach().float().cpu()
        return self.draw(st.sampled_from([t.tolist(), t.numpy(), 0.5, None, "tensor"]))

    def wrong_dtype(self, tensor: T, dtypes=NOT_FLOAT) -> None:
        t = self.tensors[tensor.name]
        self.tensors[tensor.name] = t.detach().to(self.draw(st.sampled_from(dtypes)))

    def other_device(self, tensor: T) -> None:
        self.tensors[tensor.name] = self.tensors[tensor.name].detach().to(self.draw(st.sampled_from(OTHER_DEVICES)))


# ---- strategies: one per public op family, each with its argument mistakes ----

BAD_PARAM = ["std", "LOGVAR", "", "log-var", 1, None]
BAD_BACKEND = ["gpu", "CPU", "", "torch", 3]
NOT_BOOL = [1, 0, "yes", None, np.bool_(True), torch.tensor(True)]


def _posterior(b: Builder, shape, dtype, param, prior_shapes: bool):
    mu = b.tensor("mu", shape, dtype, "loc")
    scale = b.tensor("scale", shape, b.other_dtype(dtype), ("scale", param))
    prior = None
    if prior_shapes:
        prior = tuple(b.tensor(name, b.broadcastable(shape), b.other_dtype(dtype), kind, argument="prior")
                      for name, kind in (("prior_mu", "loc"), ("prior_scale", ("scale", param))))
    return mu, scale, prior


def _posterior_mistake(b: Builder, kwargs: dict, shape, kind: str) -> tuple:
    """Make mistake `kind` in mu / scale / param / prior; the names the error must mention."""
    if kind == "tensor type":
        name = b.draw(st.sampled_from(["mu", "scale"]))
        kwargs[name] = b.wrong_type(kwargs[name])
        return (name,)
    if kind == "tensor dtype":
        name = b.draw(st.sampled_from(["mu", "scale"]))
        b.wrong_dtype(kwargs[name])
        return (name,)
    if kind == "0-dim":
        b.tensors["mu"], b.tensors["scale"] = torch.zeros((), device=DEVICE), torch.zeros((), device=DEVICE)
        return ("mu",)
    if kind == "scale shape":
        wrong = b.draw(st.sampled_from(["drop", "grow", "extra", "last"]))
        new = {"drop": shape[1:], "grow": (2, *shape), "extra": (*shape, 1),
               "last": (*shape[:-1], shape[-1] + 1)}[wrong]
        if wrong == "drop" and len(shape) == 1:
            new = (shape[0] + 1,)
        b.tensors["scale"] = torch.zeros(new, device=DEVICE)
        return ("scale",)
    if kind == "device":
        name = b.draw(st.sampled_from(["scale"] + ["prior_mu", "prior_scale"] * ("prior" in kwargs)))
        b.other_device(T(name))
        return ("prior",) if name.startswith("prior") else (name,)
    if kind == "param":
        kwargs["param"] = b.draw(st.sampled_from(BAD_PARAM))
        return ("param",)
    if kind == "prior":
        pm, ps = T("prior_mu"), T("prior_scale")
        b.tensors.setdefault("prior_mu", torch.zeros(shape[-1], device=DEVICE))
        b.tensors.setdefault("prior_scale", torch.zeros(shape[-1], device=DEVICE))
        wrong = b.draw(st.sampled_from(["not a pair", "triple", "list inside", "dtype", "shape", "enlarges"]))
        if wrong == "not a pair":
            kwargs["prior"] = b.draw(st.sampled_from([pm, (pm,), "normal", 0.0]))
        elif wrong == "triple":
            kwargs["prior"] = (pm, ps, ps)
        elif wrong == "list inside":
            kwargs["prior"] = (pm, b.wrong_type(ps))
        elif wrong == "dtype":
            kwargs["prior"] = (pm, ps)
            b.wrong_dtype(b.draw(st.sampled_from([pm, ps])))
        else:
            name = b.draw(st.sampled_from(["prior_mu", "prior_scale"]))
            new = (shape[-1] + 1 if shape[-1] else 2,) if wrong == "shape" else (2, *shape)
            b.tensors[name] = torch.zeros(new, device=DEVICE)
            kwargs["prior"] = (pm, ps)
        return ("prior",)
    raise AssertionError(kind)


POSTERIOR_MISTAKES = ["tensor type", "tensor dtype", "0-dim", "scale shape", "device", "param", "prior"]


def _stl(b: Builder) -> bool:
    """stl, except with a non-finite mu or scale (or eps: see _no_stl_with_bad_noise): there the
    reference's STL surrogate for log q,
    (z - z.detach()) * (-eps / sigma), is NaN (inf - inf, or 0 * inf at sigma = 0) where the fused
    backends give log q itself, -eps^2/2 - log sigma (finite, or +inf at sigma = 0), as the
    reference does without stl. Both keep the promise (NaN in, NaN out); their NaN differ."""
    return b.draw(st.booleans()) and not {"mu", "scale"} & set(b.bad_values)


def _no_stl_with_bad_noise(b: Builder, kwargs: dict) -> None:
    """A non-finite eps makes z non-finite, and the reference's STL surrogate NaN where the fused
    backends give log q itself (see _stl): drawn after stl, it turns stl off."""
    if "eps" in b.bad_values:
        kwargs["stl"] = False


def _mistake_or_none(b: Builder, mistakes: list):
    return b.draw(st.one_of(st.none(), st.sampled_from(mistakes)))


@st.composite
def latent_cases(draw, tiny=False):
    b = Builder(draw, tiny)
    shape = (*b.batch(), b.size())
    dtype, param = b.dtype(), draw(st.sampled_from(PARAMS))
    n_samples = draw(st.sampled_from([None, 2, 1, 3] if tiny else [None, 2, 1, 3, 5]))
    mu, scale, prior = _posterior(b, shape, dtype, param, draw(st.booleans()))
    kwargs = {"mu": mu, "scale": scale, "param": param}
    if draw(st.booleans()):
        kwargs["n_samples"] = draw(st.sampled_from([n_samples, np.int64(n_samples)])) if n_samples else None
    else:
        n_samples = None
    if prior is not None:
        kwargs["prior"] = prior
    kwargs["stl"] = _stl(b)
    z_shape = shape if n_samples is None else (n_samples, *shape)
    noise, default_seed = draw(st.sampled_from(["eps", "generator", "default"])), None
    if noise == "eps":
        kwargs["eps"] = b.tensor("eps", z_shape, b.other_dtype(dtype), "noise", grad="never")
    elif noise == "generator":
        kwargs["generator"] = Gen(draw(st.integers(0, 2**31 - 1)))
    else:
        default_seed = draw(st.integers(0, 2**31 - 1))
    _no_stl_with_bad_noise(b, kwargs)
    bad, backend_arg = (), RUN_BACKEND
    mistake = _mistake_or_none(b, POSTERIOR_MISTAKES + ["n_samples", "stl", "eps", "generator", "backend"])
    if mistake in POSTERIOR_MISTAKES:
        bad = _posterior_mistake(b, kwargs, shape, mistake)
    elif mistake == "n_samples":
        kwargs["n_samples"] = draw(st.sampled_from([0, -1, 2.0, True, "2", torch.tensor(2)]))
        bad = ("n_samples",)
    elif mistake == "stl":
        kwargs["stl"] = draw(st.sampled_from(NOT_BOOL))
        bad = ("stl",)
    elif mistake == "eps":
        kwargs.pop("generator", None)
        wrong = draw(st.sampled_from(["no K", "wrong K", "extra dim", "dtype", "device", "with generator",
                                      "requires grad"]))
        eps_shape = {"no K": shape if n_samples else (2, *shape), "wrong K": ((n_samples or 1) + 1, *shape),
                     "extra dim": (*z_shape, 1)}.get(wrong, z_shape)
        kwargs["eps"] = b.tensor("eps", eps_shape, dtype, "noise", grad="never")
        if wrong == "dtype":
            b.wrong_dtype(kwargs["eps"])
        elif wrong == "device":
            b.other_device(kwargs["eps"])
        elif wrong == "with generator":
            kwargs["generator"] = Gen(0)
        elif wrong == "requires grad":
            b.tensors["eps"] = b.tensors["eps"].detach().requires_grad_(True)
        bad = ("eps",)
    elif mistake == "generator":
        kwargs.pop("eps", None)
        kwargs["generator"] = draw(st.sampled_from([0, "cpu", np.random.default_rng(0)]))
        bad = ("generator",)
    elif mistake == "backend":
        backend_arg, bad = draw(st.sampled_from(BAD_BACKEND)), ("backend",)
    return b.case("gaussian_latent", kwargs, _coarsest(b, "mu", "scale", "prior_mu", "prior_scale"), bad=bad,
                  backend_arg=backend_arg, default_seed=default_seed)


@st.composite
def kl_cases(draw, tiny=False):
    b = Builder(draw, tiny)
    shape = (*b.batch(), b.size())
    dtype, param = b.dtype(), draw(st.sampled_from(PARAMS))
    mu, scale, prior = _posterior(b, shape, dtype, param, draw(st.booleans()))
    kwargs = {"mu": mu, "scale": scale, "param": param, "per_dim": draw(st.booleans())}
    if prior is not None:
        kwargs["prior"] = prior
    bad, backend_arg = (), RUN_BACKEND
    mistake = _mistake_or_none(b, POSTERIOR_MISTAKES + ["per_dim", "backend"])
    if mistake in POSTERIOR_MISTAKES:
        bad = _posterior_mistake(b, kwargs, shape, mistake)
    elif mistake == "per_dim":
        kwargs["per_dim"], bad = draw(st.sampled_from(NOT_BOOL)), ("per_dim",)
    elif mistake == "backend":
        backend_arg, bad = draw(st.sampled_from(BAD_BACKEND)), ("backend",)
    return b.case("gaussian_kl", kwargs, _coarsest(b, "mu", "scale", "prior_mu", "prior_scale"), bad=bad,
                  backend_arg=backend_arg)


@st.composite
def likelihood_cases(draw, tiny=False):
    b = Builder(draw, tiny)
    op = draw(st.sampled_from(LIKELIHOODS))
    categorical = op == "categorical_log_prob"
    batch = b.batch(max_dims=2 if categorical else 3)
    event = tuple(b.size() for _ in range(draw(st.integers(0, 2))))
    n_classes = b.size(zero=False) if categorical else None
    shape = (*batch, *event) + ((n_classes,) if categorical else ())
    data_shape = b.broadcastable((*batch, *event))
    dtype = b.dtype()
    param_name, data_name = {"gaussian_log_prob": ("mean", "x"), "categorical_log_prob": ("logits", "target")}.get(
        op, ("logits", "x"))
    params = b.tensor(param_name, shape, dtype, "loc" if op == "gaussian_log_prob" else "logits", grad="always")
    if categorical:
        index_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.int8, torch.int16]))
        data = b.index("target", data_shape, n_classes, index_dtype)
    elif op == "gaussian_log_prob":
        data = b.tensor("x", data_shape, draw(st.sampled_from([b.other_dtype(dtype), torch.bool, torch.uint8])), "loc")
    else:
        data_dtype = draw(st.sampled_from([dtype, b.other_dtype(dtype), torch.bool, torch.uint8]))
        data = b.tensor("x", data_shape, data_dtype, "unit")
    kwargs = {param_name: params, data_name: data}
    if len(event) != 1 or draw(st.booleans()):
        kwargs["event_dims"] = len(event)
    if op == "gaussian_log_prob":
        logvar = draw(st.sampled_from(["default", "number", "numpy", "tensor"]))
        if logvar in ("number", "numpy"):
            low, high = EXTREMES["logvar"] if b.profile == "extreme" else (-2.0, 2.0)
            value = draw(st.sampled_from([low, high, 0.0, 0.5 * (low + high) + 0.3]))
            kwargs["logvar"] = value if logvar == "number" else np.float32(value)
        elif logvar == "tensor":
            kwargs["logvar"] = b.tensor("logvar", b.broadcastable(shape), b.other_dtype(dtype), "logvar")
    mistakes = ["param type", "param dtype", "data type", "data dtype", "data shape", "device", "event_dims", "backend"]
    mistakes += {"gaussian_log_prob": ["logvar"], "categorical_log_prob": ["no classes", "0-dim logits"]}.get(op, [])
    mistake = _mistake_or_none(b, mistakes)
    bad, backend_arg = (), RUN_BACKEND
    if mistake == "param type":
        kwargs[param_name], bad = b.wrong_type(params), (param_name,)
    elif mistake == "param dtype":
        b.wrong_dtype(params)
        bad = (param_name,)
    elif mistake == "data type":
        kwargs[data_name], bad = b.wrong_type(data), (data_name,)
    elif mistake == "data dtype":
        if categorical:
            b.wrong_dtype(data, (torch.float32, torch.bool, torch.complex64))  # a target is an integer
        else:
            b.wrong_dtype(data, (torch.int64, torch.int32, torch.complex64))  # x is float, bool or uint8
        bad = (data_name,)
    elif mistake == "data shape":
        target = shape[:-1] if categorical else shape
        grow = draw(st.booleans()) or not target  # an extra leading dim (even of size 1) enlarges the result
        if grow:
            new = (draw(st.sampled_from([2, 1])), *target)
        else:
            new = (*target[:-1], target[-1] + (1 if target[-1] else 2))
        b.tensors[data_name] = b.tensors[data_name].detach().new_zeros(new)
        bad = (data_name,)
    elif mistake == "device":
        name = draw(st.sampled_from([data_name] + ["logvar"] * ("logvar" in b.tensors and "logvar" in kwargs)))
        b.other_device(T(name))
        bad = (name,)
    elif mistake == "event_dims":
        limit = len(shape) - categorical
        kwargs["event_dims"] = draw(st.sampled_from([limit + 1, limit + 3, -1, 1.0, True, "1", None]))
        bad = ("event_dims",)
    elif mistake == "logvar":
        wrong = draw(st.sampled_from(["type", "non-finite", "dtype", "shape"]))
        if wrong == "type":
            kwargs["logvar"] = draw(st.sampled_from(["0", None, [0.0], torch.zeros(1).numpy()]))
        elif wrong == "non-finite":
            kwargs["logvar"] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        else:
            b.tensors["logvar"] = torch.zeros((2, *shape) if wrong == "shape" else (), device=DEVICE)
            if wrong == "dtype":
                b.wrong_dtype(T("logvar"))
            kwargs["logvar"] = T("logvar")
        bad = ("logvar",)
    elif mistake == "no classes":
        b.tensors["logits"] = torch.zeros((*shape[:-1], 0), device=DEVICE)
        bad = ("logits",)
    elif mistake == "0-dim logits":
        b.tensors["logits"] = torch.zeros((), device=DEVICE)
        bad = ("logits",)
    elif mistake == "backend":
        backend_arg, bad = draw(st.sampled_from(BAD_BACKEND)), ("backend",)
    return b.case(op, kwargs, _coarsest(b, param_name, "logvar"), bad=bad, backend_arg=backend_arg)


def _elbo_run(latent_kwargs, decoder, elbo_kwargs, plain_latent=False):
    """The estimator pipeline: a latent, a user's decoder log p(x|z) = <z, w> + offset, fe.elbo."""

    def run(kwargs, backend):
        with fe.use_backend(backend):
            latent = fe.gaussian_latent(**{k: kwargs[k] for k in latent_kwargs})
            if plain_latent:
                latent = Latent(*latent)
            w, offset = kwargs["w"], kwargs["offset"]
            log_lik = decoder(latent, w, offset)
            if isinstance(log_lik, tuple):  # the decoder replaced the latent (a mistake)
                latent, log_lik = log_lik
            return (fe.elbo(log_lik, latent, **{k: kwargs[k] for k in elbo_kwargs}),)

    return run


def _linear_decoder(latent, w, offset):
    return (latent.z.to(offset.dtype) * w.to(offset.dtype)).sum(-1) + offset


@st.composite
def elbo_cases(draw, tiny=False):
    b = Builder(draw, tiny)
    shape = (*b.batch(max_dims=2), b.size())
    dtype, param = b.dtype(), draw(st.sampled_from(PARAMS))
    n_samples = draw(st.sampled_from([None, 2, 1, 3] if tiny else [None, 2, 1, 4]))
    estimator = draw(st.sampled_from(["elbo", "iwae", "dreg"]))
    kl = draw(st.sampled_from(["mc", "analytic"])) if estimator == "elbo" else "mc"
    beta = draw(st.sampled_from([1.0, 0.0, 0.5, 2.5, 1])) if estimator == "elbo" else draw(st.sampled_from([1.0, 1]))
    profile = b.profile
    b.profile = "plain" if profile == "extreme" else profile  # the latent's extremes are latent_cases'
    mu, scale, prior = _posterior(b, shape, dtype, param, draw(st.booleans()))
    z_shape = shape if n_samples is None else (n_samples, *shape)
    kwargs = {"mu": mu, "scale": scale, "param": param, "n_samples": n_samples, "stl": _stl(b)}
    if prior is not None:
        kwargs["prior"] = prior
    if draw(st.booleans()):
        kwargs["eps"] = b.tensor("eps", z_shape, dtype, "noise", grad="never")
    else:
        kwargs["generator"] = Gen(draw(st.integers(0, 2**31 - 1)))
    _no_stl_with_bad_noise(b, kwargs)
    b.profile = profile
    latent_names = list(kwargs)
    ll_dtype = b.other_dtype(dtype)
    b.tensor("w", shape[-1:], ll_dtype, "noise", argument="log_lik")
    offset = b.tensor("offset", z_shape[:-1], ll_dtype, "noise", argument="log_lik")
    if not math.prod(z_shape[:-1]):  # an empty batch: no log-likelihood holds w's bad values
        b.bad_values = [n for n in b.bad_values if n != "log_lik"]
    if b.profile == "extreme":
        # IWAE log-weights down to -1e6: each log-likelihood near 0 or near -1e6.
        far = torch.rand(z_shape[:-1], generator=b.g) < 0.5
        offset_values = torch.where(far.to(DEVICE), -1e6, b.tensors["offset"].detach()).to(ll_dtype)
        b.tensors["offset"] = offset_values.requires_grad_(True)
    kwargs.update(w=T("w"), offset=offset, kl=kl, estimator=estimator, beta=beta)
    elbo_names = ["kl", "estimator", "beta"]
    decoder, plain_latent = _linear_decoder, False
    mistake = _mistake_or_none(b, ["log_lik shape", "log_lik dtype", "log_lik type", "log_lik device", "latent",
                                   "kl", "estimator", "beta", "iwae beta", "iwae analytic", "plain latent"])
    bad = ()
    if mistake == "log_lik shape":
        decoder, bad = (lambda latent, w, offset: _linear_decoder(latent, w, offset)[..., None]), ("log_lik",)
    elif mistake == "log_lik dtype":
        decoder, bad = (lambda latent, w, offset: _linear_decoder(latent, w, offset).long()), ("log_lik",)
    elif mistake == "log_lik type":
        decoder, bad = (lambda latent, w, offset: _linear_decoder(latent, w, offset).tolist()), ("log_lik",)
    elif mistake == "log_lik device":
        decoder, bad = (lambda latent, w, offset: _linear_decoder(latent, w, offset).detach().to("meta")), ("log_lik",)
    elif mistake == "latent":
        decoder, bad = (lambda latent, w, offset: (tuple(latent), _linear_decoder(latent, w, offset))), ("latent",)
    elif mistake == "kl":
        kwargs["kl"], bad = draw(st.sampled_from(["exact", "MC", None, 1])), ("kl",)
    elif mistake == "estimator":
        kwargs["estimator"], bad = draw(st.sampled_from(["vimco", "IWAE", None, 0])), ("estimator",)
    elif mistake == "beta":
        kwargs["beta"] = draw(st.sampled_from([-1.0, -1e-9, math.nan, math.inf, True, "1", torch.tensor(1.0), None]))
        bad = ("beta",)
    elif mistake == "iwae beta":
        kwargs.update(estimator=draw(st.sampled_from(["iwae", "dreg"])), kl="mc",
                      beta=draw(st.sampled_from([0.5, 0.0, 2.0])))
        bad = ("beta",)
    elif mistake == "iwae analytic":
        kwargs.update(estimator=draw(st.sampled_from(["iwae", "dreg"])), kl="analytic", beta=1.0)
        bad = ("kl",)
    elif mistake == "plain latent":
        kwargs.update(estimator="dreg", kl="mc", beta=1.0)
        plain_latent, bad = True, ("latent",)
    return b.case("elbo", kwargs, _coarsest(b, "mu", "scale", "prior_mu", "prior_scale", "w", "offset"), bad=bad,
                  run=_elbo_run(latent_names, decoder, elbo_names, plain_latent))


def _coarsest(b: Builder, *names) -> torch.dtype:
    """The coarsest float dtype among the named inputs present: the precision results are judged in."""
    dtypes = [b.tensors[n].dtype for n in names if n in b.tensors and b.tensors[n].is_floating_point()]
    return min(dtypes, key=PRECISION.index) if dtypes else torch.float32


def all_cases(tiny=False):
    return st.one_of(latent_cases(tiny), kl_cases(tiny), likelihood_cases(tiny), elbo_cases(tiny))


# ---- running a case and judging it ----

ALLOWED_ERRORS = (ValueError, TypeError)


@dataclasses.dataclass
class Outcome:
    error: Exception | None = None
    outputs: list | None = None
    grads: list | None = None


def _attempt(case: Case, tensors: dict, backend: str) -> Outcome:
    """Run the call forward (a ValueError / TypeError is an outcome) and backward (no error allowed)."""
    try:
        outputs = case.call(tensors, backend)
    except ALLOWED_ERRORS as error:
        return Outcome(error=error)
    except Exception as error:  # noqa: BLE001 -- anything else breaks the contract
        message = f"{backend}: {type(error).__name__} instead of a ValueError / TypeError: {error}"
        raise AssertionError(message) from error
    names = [n for n, t in tensors.items() if t.requires_grad]
    g = torch.Generator().manual_seed(case.cotangent_seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype).to(o.device) for o in outputs]
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    grads = []
    if pairs and names:
        try:
            grads = torch.autograd.grad([o for o, _ in pairs], [tensors[n] for n in names], [c for _, c in pairs],
                                        allow_unused=True)
        except Exception as error:  # noqa: BLE001
            raise AssertionError(f"{backend}: backward raised {type(error).__name__}: {error}") from error
        grads = [torch.zeros_like(tensors[n]) if gr is None else gr for n, gr in zip(names, grads)]
    return Outcome(outputs=[o.detach() for o in outputs], grads=list(grads))


def _storage_bytes(t: torch.Tensor):
    """Every byte of t's storage (so a write outside t's view is seen too), or None on meta."""
    if t.device.type == "meta":
        return None
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def _snapshot(tensors: dict) -> dict:
    return {n: (_storage_bytes(t), t.shape, t.stride(), t.storage_offset(), t.dtype, t.requires_grad, t.grad is None)
            for n, t in tensors.items()}


def _assert_unmodified(tensors: dict, before: dict, case: Case) -> None:
    for name, t in tensors.items():
        data, *meta = before[name]
        now = (t.shape, t.stride(), t.storage_offset(), t.dtype, t.requires_grad, t.grad is None)
        assert list(now) == meta, f"input {name!r} changed its metadata or .grad: {meta} -> {now}\n{case}"
        assert data is None or torch.equal(_storage_bytes(t), data), f"input {name!r} was modified\n{case}"


def _upcast(tensors: dict) -> dict:
    """The same input values in float64 (integer / bool tensors as they are)."""
    out = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            t = t.detach().to(torch.float64).requires_grad_(t.requires_grad)
        out[name] = t
    return out


def _tolerance(dtype, phase, truth):
    tol = TOLERANCES[dtype][phase]
    return tol.atol + tol.rtol * truth.abs()


def _judge(label: str, actual: list, truth: list, ref: list, case: Case, backend: str, phase: str,
           indeterminate: list | None = None) -> None:
    """fastelbo.testing.compare's rule in the coarser of the case's dtype and the result's (a
    float16 x gets a float16 gradient), and a float32 / float64 result of half inputs (a
    log-density) at least to the table of the precision it was computed in: its own dtype's, but
    float32's for a float64 result (half inputs compute in float32, so an elbo of a float64
    log-likelihood and a float16 latent holds float32 rounding). Where the case is not well conditioned
    (Case.conditioned), a fused backend may also err by HALF_FACTOR times the reference's own
    error plus HALF_FLOOR, and the reference is judged only on its NaN / inf placement.

    NaN must sit exactly where the reference has it, except in gradients of non-finite inputs:
    there a NaN of the reference's autograd (0 * inf, inf / inf at an infinite input) says nothing
    of the limit a kernel may compute, so only the reference's finite gradients are judged. Where
    the truth overflows the result's dtype (a float16 gradient summed over many elements), the
    result must be that infinity. `indeterminate` (given only where the reference's forward holds
    a NaN: log p of a zero variance at the mean's distance) marks, per gradient, the elements of a
    broadcast input that are themselves non-finite: there an infinite reference gradient may be
    NaN. A broadcast logvar's gradient sums terms like g_i d_i^2 exp(-logvar), which the
    reference's autograd factors as exp(-logvar) * sum(g_i d_i^2) = inf and a kernel sums per
    element as inf - inf = NaN; both evaluate an indeterminate form of an undefined loss."""
    assert len(actual) == len(truth), f"{label}: {len(actual)} results, the reference has {len(truth)}\n{case}"
    for i, (a, t, r) in enumerate(zip(actual, truth, ref)):
        dtype = min(case.dtype, a.dtype, key=PRECISION.index)
        assert a.shape == r.shape and a.dtype == r.dtype, (
            f"{label}[{i}]: {tuple(a.shape)} {a.dtype}, the reference gives {tuple(r.shape)} {r.dtype}\n{case}")
        t64, r64 = t.to(torch.float64), r.to(torch.float64)
        rounded = t64.to(a.dtype).to(torch.float64)
        overflow = torch.isfinite(t64) & torch.isinf(rounded)
        assert torch.equal(a[overflow].to(torch.float64), rounded[overflow]), (
            f"{label}[{i}] on {backend}: {a[overflow].tolist()} where the truth overflows {a.dtype} to "
            f"{rounded[overflow].tolist()}\n{case}")
        known = ~overflow
        if phase == "bwd" and case.nonfinite:
            known &= ~torch.isnan(t64)
            if indeterminate is not None:
                known &= ~(indeterminate[i] & torch.isinf(t64) & torch.isnan(a))
        a, t64, r64 = a[known], t64[known], r64[known]
        ref_error = float((r64 - t64).abs().nan_to_num(0.0).max()) if t64.numel() else 0.0
        own_error = HALF_FACTOR * ref_error + HALF_FLOOR[phase]
        if backend == "reference":
            allowed = _tolerance(dtype, phase, t64) if case.conditioned else math.inf
        elif dtype in HALF_DTYPES:
            own_table = _tolerance(min(a.dtype, torch.float32, key=PRECISION.index), phase, t64)
            allowed = own_error if a.dtype in HALF_DTYPES else torch.clamp(own_table, min=own_error)
        else:
            allowed = _tolerance(dtype, phase, t64)
            allowed = allowed if case.conditioned else torch.clamp(allowed, min=own_error)
        error, ratio = _violation(a, t64, allowed)
        nan_a, nan_t = torch.isnan(a), torch.isnan(t64)
        assert torch.equal(nan_a, nan_t), (
            f"{label}[{i}] on {backend}: NaN at {nan_a.nonzero().tolist()}, the reference has NaN at "
            f"{nan_t.nonzero().tolist()}\n{case}")
        assert ratio <= 1.0, (
            f"{label}[{i}] on {backend}: max error {error:.3g} is {ratio:.3g} times the allowed "
            f"({dtype}, {phase})\n{case}")
        if case.finite:
            assert bool(torch.isfinite(a).all()), f"{label}[{i}] on {backend}: non-finite for finite inputs\n{case}"


def _names(argument: str, message: str) -> bool:
    """Whether `message` names `argument` as a word ("x", not the x of "expected")."""
    return re.search(rf"(?<![\w.]){re.escape(argument)}(?!\w)", message) is not None


def _indeterminate(case: Case, truth: Outcome) -> list | None:
    """Per gradient (the inputs that require grad, in _attempt's order): the non-finite elements of
    an input broadcast against a larger one (its gradient a sum), where the reference's forward
    holds a NaN; None otherwise (see _judge)."""
    if not any(bool(torch.isnan(out).any()) for out in truth.outputs):
        return None
    largest = max((t.numel() for t in case.tensors.values() if t.is_floating_point()), default=0)
    return [~torch.isfinite(t.detach()) if t.numel() < largest else torch.zeros(t.shape, dtype=torch.bool)
            for t in case.tensors.values() if t.requires_grad]


def check(case: Case, backend: str) -> None:
    """The property (module docstring) for one case on one backend."""
    before = _snapshot(case.tensors)
    ref = _attempt(case, case.tensors, "reference")
    got = ref if backend == "reference" else _attempt(case, case.tensors, backend)
    _assert_unmodified(case.tensors, before, case)
    names = case.bad + (case.bad_values if fe.validation_enabled() else ())
    for who, outcome in (("reference", ref), (backend, got)):
        if outcome.error is not None:
            message = str(outcome.error)
            assert names, f"{who} rejected a valid call: {type(outcome.error).__name__}: {message}\n{case}"
            assert any(_names(n, message) for n in names), (
                f"{who}: the message does not name {' or '.join(names)}: {message!r}\n{case}")
        elif names:
            assert False, f"{who} accepted a call that must raise (naming {' or '.join(names)})\n{case}"
    event(f"{case.op}: {'error' if ref.error is not None else 'result'}")
    if ref.error is not None:
        assert type(got.error) is type(ref.error), (
            f"{backend} raised {type(got.error).__name__}, the reference {type(ref.error).__name__}\n{case}")
        return
    truth = _attempt(case, _upcast(case.tensors), "reference")
    assert truth.error is None, f"the reference rejects the float64 copy: {truth.error}\n{case}"
    _judge("outputs", got.outputs, truth.outputs, ref.outputs, case, backend, "fwd")
    _judge("gradients", got.grads, truth.grads, ref.grads, case, backend, "bwd", _indeterminate(case, truth))


# ---- the tests ----

@pytest.mark.parametrize("backend", BACKENDS)
@many
@given(case=latent_cases())
def test_gaussian_latent(backend, case):
    check(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@many
@given(case=kl_cases())
def test_gaussian_kl(backend, case):
    check(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@many
@given(case=likelihood_cases())
# A CI run's find: a zero variance (logvar -inf) broadcast over two means; the loss is NaN and the
# logvar gradient's limit is an indeterminate form (_judge's `undefined`).
@example(case=Case(
    op="gaussian_log_prob", kwargs={"mean": T("mean"), "x": T("x"), "event_dims": 0, "logvar": T("logvar")},
    tensors={"mean": torch.tensor([3.0820, -0.5869], device=DEVICE, requires_grad=True),
             "x": torch.tensor(True, device=DEVICE),
             "logvar": torch.tensor(-math.inf, device=DEVICE, requires_grad=True)},
    dtype=torch.float32, bad_values=("logvar",), finite=False, nonfinite=True))
def test_likelihoods(backend, case):
    check(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@many
@given(case=elbo_cases())
def test_elbo(backend, case):
    check(case, backend)


@pytest.mark.parametrize("backend", SLOW_BACKENDS)
@few
@given(case=all_cases(tiny=True))
def test_interpreted_backend(backend, case):
    """The interpreted backends (Triton without a GPU): fewer, tiny examples of every op."""
    check(case, backend)


@pytest.mark.parametrize("backend", BACKENDS + SLOW_BACKENDS)
@few
@given(case=all_cases(tiny=True))
def test_validation_mode(backend, case):
    """With validation on, NaN / inf and values outside the support are a ValueError naming the
    argument that holds them; everything else behaves as with validation off."""
    fe.set_validation(True)
    try:
        check(case, backend)
    finally:
        fe.set_validation(False)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@few
@given(case=all_cases(tiny=True))
def test_meta_tensors(backend, case):
    """On meta tensors a fused backend raises a ValueError naming the backend (or runs); the
    reference runs and gives the shapes and dtypes it gives on real tensors."""
    if case.bad:
        return
    on_device = _attempt(case, case.tensors, "reference")
    meta = dataclasses.replace(case, tensors={n: t.detach().to("meta").requires_grad_(t.requires_grad)
                                              for n, t in case.tensors.items()},
                               kwargs={k: (None if isinstance(v, Gen) else v) for k, v in case.kwargs.items()})
    for who in ("reference", backend):
        try:
            outputs = meta.call(meta.tensors, who)
        except ALLOWED_ERRORS as error:
            assert who != "reference" and "backend" in str(error), f"{who} on meta: {error!r}\n{case}"
            continue
        shapes = [(o.shape, o.dtype) for o in outputs]
        assert shapes == [(o.shape, o.dtype) for o in on_device.outputs], f"{who} on meta: {shapes}\n{case}"
