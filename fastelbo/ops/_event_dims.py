"""A latent's event dims (`dim=` of gaussian_latent and gaussian_kl) brought last and flattened into
one, D = their product, so that the kernels, which sum over the last dim of (batch..., D) rows,
serve any event dims: NCHW latents summed per image (dim=(1, 2, 3)), per channel group
(dim=(2, 3)), or vectors along the channels (dim=1).

    flat(t)   = t.permute(batch dims, event dims).reshape(batch sizes..., D)
    unflat(t) = the inverse, back to mu's dim order

Both are views whenever the event dims, taken in mu's order, are one strided run (NCHW with
dim=(1, 2, 3) or (2, 3); NCHW and channels-last with dim=1, whose permuted batch dims the kernels
address through their strides): no copy. Otherwise reshape copies (channels-last with
dim=(1, 2, 3): its (C, H, W) are not one run in that order); the README says which layouts are
copy-free. The noise of element (row, d) is then that of its batch index and its index d in the
event dims taken in mu's order (docs/RNG.md): the same for every layout of the same tensor.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Optional

import torch


def _index(d):
    """d as an int if it is one (int, numpy integer, 0-dim integer tensor), not a bool; else None."""
    if isinstance(d, bool):
        return None
    try:
        return operator.index(d)
    except TypeError:
        return None


def dim_list(dim) -> list[int]:
    """`dim` (an int or a non-empty tuple / list of ints) as a list, checked for its type and for
    repeats (not for range: that needs mu); a TypeError / ValueError naming `dim` otherwise."""
    dims = [dim] if _index(dim) is not None else dim
    if not isinstance(dims, (tuple, list)) or not dims or any(_index(d) is None for d in dims):
        raise TypeError(f"dim must be an int or a non-empty tuple of ints, got {dim!r}")
    dims = [_index(d) for d in dims]
    if len(set(dims)) != len(dims):  # (a dim named once as d and once as d - ndim: event_dims sees it)
        raise ValueError(f"dim has repeated dims: {dim!r}")
    return dims


def event_dims(dim, ndim: int) -> tuple[int, ...]:
    """`dim` (an int or a tuple of ints) as sorted non-negative dims of an ndim-dim tensor; a
    ValueError / TypeError naming `dim` otherwise."""
    dims = dim_list(dim)
    normalized = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"dim {d} is out of range for mu with {ndim} dim(s)")
        normalized.append(d % ndim)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"dim has repeated dims: {dim!r}")
    return tuple(sorted(normalized))


class EventLayout:
    """The permutation and flattening of one latent's event dims (see the module docstring)."""

    def __init__(self, shape: torch.Size, dims: tuple[int, ...]):
        ndim = len(shape)
        self.shape = tuple(shape)
        self.dims = dims
        self.batch = tuple(i for i in range(ndim) if i not in dims)
        self.perm = self.batch + dims
        self.inverse = tuple(sorted(range(ndim), key=self.perm.__getitem__))
        self.batch_shape = tuple(shape[i] for i in self.batch)
        self.event_shape = tuple(shape[i] for i in dims)
        self.size = math.prod(self.event_shape)
        self.trailing = self.perm == tuple(range(ndim))  # the event dims are mu's last: no permute

    def flat(self, t: torch.Tensor, leading: int = 0) -> torch.Tensor:
        """t of mu's shape (after `leading` extra dims, e.g. the samples) as (leading..., batch..., D)."""
        if self.trailing:  # one flatten (the fewer ops, the fewer autograd nodes per layer)
            return t.flatten(leading + len(self.batch))
        t = t.permute(*range(leading), *(leading + p for p in self.perm))
        return t.reshape(*t.shape[:leading + len(self.batch)], self.size)

    def unflat(self, t: torch.Tensor, leading: int = 0) -> torch.Tensor:
        """The inverse of flat: (leading..., batch..., D) back to mu's dim order."""
        t = t.unflatten(-1, self.event_shape)
        return t if self.trailing else t.permute(*range(leading), *(leading + p for p in self.inverse))

    def flat_prior(self, t: torch.Tensor) -> torch.Tensor:
        """A prior tensor broadcastable to mu as a tensor broadcastable to flat(mu): its event dims
        expanded (a view; reshape copies at most its own batch size times D), its batch dims as
        they are (1 or mu's), so the kernel broadcasts it over the rows."""
        ndim = len(self.perm)
        if t.dim() < ndim:
            t = t.reshape((1,) * (ndim - t.dim()) + tuple(t.shape))
        sizes = [t.shape[i] if i in self.batch else n for i, n in enumerate(self.shape)]
        return self.flat(t if list(t.shape) == sizes else t.expand(sizes))

    def prior_grad(self, grad: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """The gradient of `prior` from a gradient of its flat_prior: back in mu's dim order, summed
        over what flat_prior expanded."""
        return self.unflat(grad).sum_to_size(prior.shape)

    def expand_rows(self, t: torch.Tensor, leading: int = 0) -> torch.Tensor:
        """A per-row tensor (leading..., batch...) broadcastable against unflat tensors: 1s at the
        event dims."""
        t = t.reshape(*t.shape, *(1,) * len(self.dims))
        return t.permute(*range(leading), *(leading + p for p in self.inverse))


def batch_shape(mu: torch.Tensor, dim) -> torch.Size:
    """mu's shape without the event dims `dim` (checked)."""
    dims = event_dims(dim, mu.dim())
    return torch.Size(n for i, n in enumerate(mu.shape) if i not in dims)


def layout_for(mu: torch.Tensor, dim) -> EventLayout | None:
    """The layout of `dim` for mu, or None when the event dim is already mu's last (the kernels'
    own layout: nothing to do). Cached per (shape, dim): a hierarchical VAE asks for the same few
    layouts at every layer of every step."""
    if type(dim) is int and dim == -1:
        return None
    if not isinstance(mu, torch.Tensor) or mu.dim() == 0 or not mu.is_floating_point():
        return None  # the op's own checks reject mu (before they would look at dim)
    if isinstance(dim, list):
        dim = tuple(dim)
    if torch.compiler.is_compiling():  # traced once: no cache (dynamo would trace through it, and warn)
        return _layout(tuple(mu.shape), dim)
    if type(dim) is int or (type(dim) is tuple and _INT_ONLY.issuperset(map(type, dim))):
        return _cached_layout(tuple(mu.shape), dim)  # (not 1.0 or True: equal to 1 as dict keys)
    return _layout(tuple(mu.shape), dim)  # event_dims names what is wrong


def _layout(shape: tuple, dim) -> EventLayout | None:
    dims = event_dims(dim, len(shape))
    return None if dims == (len(shape) - 1,) else EventLayout(torch.Size(shape), dims)


_cached_layout = functools.lru_cache(maxsize=256)(_layout)
_INT_ONLY = frozenset((int,))  # a dim tuple's element types (bool is not int here)


def check_event_dims(ndim: int, event_dims: int, op: str = "fastelbo.gaussian_latent") -> None:
    """The latent op's `event_dims` argument in [1, ndim] (mu's dims), else a ValueError naming it."""
    if not 1 <= event_dims <= ndim:
        raise ValueError(f"{op}: event_dims must be in [1, {ndim}] for mu with {ndim} dim(s), got {event_dims}")


def _one_run(sizes, strides) -> bool:
    """Whether dims of these sizes and strides flatten into one strided run (a view): each dim's
    stride is the next one's stride times its size, dims of size 1 aside (as ATen's computeStride)."""
    if any(n == 0 for n in sizes):
        return True
    inner = None
    for n, st in zip(reversed(sizes), reversed(strides)):
        if n == 1:
            continue
        if inner is not None and st != inner:
            return False
        inner = st * n
    return True


def stored_channels(mu: torch.Tensor, event_dims: int) -> int:
    """C = mu's first event dim when mu stores its last event_dims dims channels-last ((C, H, W)
    not one run, (H, W, C) one run), else 1: csrc/binding/event_dims.h's Flattening.channels."""
    if event_dims < 2 or mu.numel() == 0:  # (no elements: every flatten is a view, as computeStride says)
        return 1
    first = mu.dim() - event_dims
    sizes, strides = tuple(mu.shape[first:]), tuple(mu.stride()[first:])
    if sizes[0] < 2 or _one_run(sizes, strides):
        return 1
    return sizes[0] if _one_run(sizes[1:] + sizes[:1], strides[1:] + strides[:1]) else 1


class OpEventDims:
    """The latent op's last `event_dims` dims as one dim, in the order its kernels take them, as
    csrc/binding/event_dims.h does in C++ (for the Triton launcher, and for the fakes' strides):
    flatten(-event_dims), or for a channels-last mu (`channels` = C > 1) movedim(-event_dims, -1)
    then flatten, a view whose column s C + c holds logical element d = c S + s: the kernels draw
    that column's noise at d, and z and the gradients come back channels-last. storage_order=False:
    always the logical flatten (the reference, whose noise follows the column index)."""

    def __init__(self, mu: torch.Tensor, event_dims: int, storage_order: bool = True):
        self.event_dims = event_dims
        self.mu_shape = tuple(mu.shape)
        self.channels = stored_channels(mu, event_dims) if storage_order else 1

    def flat(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """t (mu's event dims last, anything before them) with its event dims as one."""
        if t is None:
            return None
        first = t.dim() - self.event_dims
        return t.flatten(first) if self.channels == 1 else t.movedim(first, -1).flatten(first)

    def unflat(self, t: torch.Tensor, shape) -> torch.Tensor:
        """The inverse of flat: t (..., D) back to `shape` (channels-last strides when channels > 1)."""
        if self.channels == 1:
            return t.reshape(shape)
        first = len(shape) - self.event_dims
        return t.reshape(*shape[:first], *shape[first + 1:], shape[first]).movedim(-1, first)

    def _prior_sizes(self, prior: torch.Tensor) -> tuple:
        ndim, lead = len(self.mu_shape), len(self.mu_shape) - prior.dim()
        return tuple(self.mu_shape[i] if i >= ndim - self.event_dims else (1 if i < lead else prior.shape[i - lead])
                     for i in range(ndim))

    def flat_prior(self, prior: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The prior broadcast against mu over the event dims only, flat: broadcastable to flat(mu)."""
        if prior is None or tuple(prior.shape) == self.mu_shape:
            return self.flat(prior)
        sizes = self._prior_sizes(prior)
        return self.flat(prior.reshape((1,) * (len(sizes) - prior.dim()) + tuple(prior.shape)).expand(sizes))

    def prior_grad(self, grad: torch.Tensor, prior: Optional[torch.Tensor]) -> torch.Tensor:
        """The gradient of `prior` from a gradient of its flat_prior."""
        if prior is None:
            return grad
        if tuple(prior.shape) == self.mu_shape:
            return self.unflat(grad, self.mu_shape)
        return self.unflat(grad, self._prior_sizes(prior)).sum_to_size(prior.shape)
