"""Every op case on every available backend and dtype against the float64 reference.

For backend "reference" this measures the reference's own error in each low-precision dtype against
its float64 result (the table bound); for a fused backend, the README's half-precision rule (table bound in
float32/float64, at most twice the reference's own error plus a floor in float16/bfloat16).
"""
import pytest
import torch

from fastelbo.testing import CASES, compare
from helpers import BACKENDS, DEVICE, FLOAT_DTYPES

COMBOS = [(b, d) for b in BACKENDS for d in FLOAT_DTYPES if not (b == "reference" and d == torch.float64)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("backend,dtype", COMBOS, ids=[f"{b}-{str(d)[6:]}" for b, d in COMBOS])
def test_matches_reference(case, backend, dtype, seed):
    result = compare(case, backend, dtype, device=DEVICE, seed=seed)
    assert result.passed, f"{case.name} on {backend} in {dtype}: {result.detail}"


def test_harness_catches_a_wrong_formula(monkeypatch, seed):
    """A backend whose Bernoulli drops the softplus's log1p term must fail the comparison."""
    import types

    import fastelbo._backend as registry
    from fastelbo.reference_backend import ops

    wrong = types.ModuleType("wrong_backend")
    for name in ops.__all__:
        setattr(wrong, name, getattr(ops, name))
    wrong.bernoulli = lambda logits, x, event_dims: (x * logits - logits.clamp(min=0)).sum(-1).float()
    monkeypatch.setitem(registry._MODULES, "cpu", "wrong_backend")
    monkeypatch.setattr(registry, "LOADED", types.ModuleType("empty"))
    monkeypatch.setattr(registry, "_RESOLVED", {})
    monkeypatch.setattr(registry, "_cpp_reason", lambda name: None if name == "cpu" else "not here")
    monkeypatch.setitem(__import__("sys").modules, "wrong_backend", wrong)
    case = next(c for c in CASES if c.name == "bernoulli_log_prob")
    for dtype in (torch.float32, torch.float16):
        assert not compare(case, "cpu", dtype, seed=seed).passed
