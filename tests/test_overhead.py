"""The Python cost of one fused ELBO step, counted, not timed.

At the sizes most VAEs train at (batch 64-256, D 8-64) a step's time is the Python between the
user and the kernels. One warmed-up step (gaussian_latent + bernoulli_log_prob + elbo + mean,
forward and backward) on the `cpu` backend may make at most 30 Python function calls
(`sys.setprofile` "call" events: fastelbo's own functions and whatever of torch's Python they
reach; 222 before the op work; 26 with the analytic KL, 30 with the MC KL, 33 for IWAE with K = 4
when the bound was set at 40; 33, 37 and 37 at 9e93a05; 33, 38 and 38 with the C++ library's typed
bindings, whose choice (fastelbo/ops/_cpp_calls.py) is a Python call or two where torch.ops'
OpOverload.__call__ was one, for about 1.5 us less C++ per call; 20, 25 and 25 with the front door,
csrc/binding/front_door.cpp, which takes the latent's and the Bernoulli's calls whole in C++, when
the bound was lowered to 30). A count is stable where a time is not; the speed itself is shown by
`fastelbo bench`.
"""
import sys

import pytest
import torch

import fastelbo as fe
from helpers import BACKENDS

MAX_CALLS = 30


def _count_calls(fn) -> list[str]:
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is unavailable")
@pytest.mark.parametrize("estimator,kl", [("elbo", "analytic"), ("elbo", "mc"), ("iwae", "mc")])
def test_an_elbo_step_makes_few_python_calls(estimator, kl):
    mu = torch.randn(256, 8, requires_grad=True)
    scale = torch.randn(256, 8, requires_grad=True)
    base = torch.randn(256, 64, requires_grad=True)
    x = torch.rand(256, 64).round()
    n_samples = 4 if estimator == "iwae" else None

    def step():
        lat = fe.gaussian_latent(mu, scale, n_samples=n_samples, backend="cpu")
        log_lik = fe.bernoulli_log_prob(base + lat.z.mean(-1, keepdim=True), x, backend="cpu")
        (-fe.elbo(log_lik, lat, kl=kl, estimator=estimator).mean()).backward()

    for _ in range(3):
        step()
    calls = _count_calls(step)
    assert len(calls) <= MAX_CALLS, f"{len(calls)} Python calls in one step:\n" + "\n".join(calls)
