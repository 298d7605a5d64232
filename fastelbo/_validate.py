"""Argument checks shared by every public function.

Structural checks (types, dtypes, shapes, devices, option names) always run and raise
TypeError / ValueError naming the argument, before any kernel runs. Value checks (finite inputs,
x in [0, 1], targets in range) need a device sync, so they run only in validation mode:
``fastelbo.set_validation(True)`` or the environment variable ``FASTELBO_VALIDATE=1``.
"""
from __future__ import annotations

import numbers
import os
from typing import Iterable, Sequence

import torch

from ._dtypes import FLOAT_DTYPES
INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
DATA_DTYPES = FLOAT_DTYPES + (torch.bool, torch.uint8)

# Whether the value checks run (set_validation, FASTELBO_VALIDATE). Call sites read it before
# calling a value check, so a call without validation pays no function call for them.
active = os.environ.get("FASTELBO_VALIDATE", "0").strip().lower() not in ("", "0", "false", "no")


def set_validation(enabled: bool) -> None:
    """Turn the value checks (finite inputs, x in [0, 1], targets in range) on or off for the
    whole process."""
    global active
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation: enabled must be a bool, got {type(enabled).__name__}")
    active = enabled


def validation_enabled() -> bool:
    return active


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(name: str, value, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, min_dim: int = 0) -> torch.Tensor:
    """``value`` must be a tensor of one of ``dtypes`` with at least ``min_dim`` dims."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dim(s), got shape {tuple(value.shape)}")
    return value


def same_device(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {value.device}")


def choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def integer(name: str, value, minimum: int) -> int:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def real(name: str, value, minimum: float | None = None) -> float:
    """A Python number (not a tensor: reading one would sync the device)."""
    if type(value) is not float and type(value) is not int and (
            isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def broadcasts_to(name: str, value: torch.Tensor, shape: torch.Size, target_name: str) -> None:
    """``value`` must broadcast to ``shape`` without enlarging it (each of its trailing sizes 1 or
    equal to shape's)."""
    sizes = value.shape
    fits = len(sizes) <= len(shape)
    for i in range(1, len(sizes) + 1 if fits else 1):
        if sizes[-i] != 1 and sizes[-i] != shape[-i]:
            fits = False
            break
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} must broadcast to {target_name}'s shape {tuple(shape)}"
        )


def event_dims(value, limit: int, param_name: str) -> int:
    n = integer("event_dims", value, 0)
    if n > limit:
        raise ValueError(f"event_dims={n} is more than the {limit} dim(s) {param_name} has to sum over")
    return n


# ---- value checks: only in validation mode ----

def finite(name: str, value: torch.Tensor) -> None:
    if active and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")


def unit_interval(name: str, value: torch.Tensor) -> None:
    if active and value.dtype != torch.bool:
        bad = (value < 0) | (value > 1)
        if value.is_floating_point():
            bad = bad | ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(f"{name} must lie in [0, 1] (the likelihood's support)")


def index_range(name: str, value: torch.Tensor, n_classes: int) -> None:
    if active and value.numel() and bool(((value < 0) | (value >= n_classes)).any()):
        raise ValueError(f"{name} must lie in [0, {n_classes}) (the number of classes)")
