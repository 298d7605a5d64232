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


_WRONG_LIBRARY = {}  # the Library that holds the wrong kernel, alive for the session


def test_harness_catches_a_wrong_formula(monkeypatch, seed):
    """A backend whose Bernoulli drops the softplus's log1p term must fail the comparison."""
    import fastelbo._backend as registry
    from fastelbo.ops.bernoulli_log_prob import SCHEMAS, binary_fake

    # A kernel of the Bernoulli op's schema, as a backend would register it, that drops the softplus's
    # log1p term: "cpu" is made to run it (its overload "wrong").
    def wrong_kernel(logits, x, event_dims, need_grad):
        out = (x * logits - logits.clamp(min=0)).sum(-1).float()
        return out, (x - (logits > 0).float()).float() if need_grad else logits.new_empty(0, dtype=torch.float32)

    def backward(ctx, grad_out, _):
        return ctx.saved_tensors[0] * grad_out.unsqueeze(-1), None, None, None

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])

    if not hasattr(torch.ops.fastelbo.bernoulli_log_prob, "wrong"):
        lib = _WRONG_LIBRARY.setdefault("lib", torch.library.Library("fastelbo", "FRAGMENT"))
        lib.define("bernoulli_log_prob.wrong" + SCHEMAS["bernoulli_log_prob"])
        lib.impl("bernoulli_log_prob.wrong", wrong_kernel, "CPU")
        torch.library.register_fake("fastelbo::bernoulli_log_prob.wrong", binary_fake, lib=lib)
        torch.library.register_autograd("fastelbo::bernoulli_log_prob.wrong", backward, setup_context=setup_context,
                                        lib=lib)
    monkeypatch.setitem(registry.OVERLOAD, "cpu", "wrong")
    monkeypatch.setitem(registry._MODULES, "cpu", None)
    monkeypatch.setattr(registry, "_RESOLVED", {})
    monkeypatch.setattr(registry, "_cpp_reason", lambda name: None if name == "cpu" else "not here")
    case = next(c for c in CASES if c.name == "bernoulli_log_prob")
    for dtype in (torch.float32, torch.float16):
        assert not compare(case, "cpu", dtype, seed=seed).passed
