"""The Triton noise kernels against the pure-PyTorch statement of docs/RNG.md: the same Philox
words bit for bit, the same eps to float rounding (under TRITON_INTERPRET=1 without a GPU)."""
import pytest
import torch

from fastelbo import rng
from helpers import DEVICE, generator, needs_triton

pytestmark = needs_triton


def test_philox_words_match_bit_for_bit(seed):
    from fastelbo.triton_backend.rng import philox_words

    g = generator(seed, DEVICE)
    n = 200
    counter = torch.randint(0, 2**32, (4, n), generator=g, device=DEVICE, dtype=torch.int64)
    key = torch.randint(0, 2**32, (2, n), generator=g, device=DEVICE, dtype=torch.int64)
    counter[:, 0], key[:, 0] = 0, 0  # the known-answer vector
    counter[:, 1], key[:, 1] = 0xFFFFFFFF, 0xFFFFFFFF
    want = torch.stack(rng.philox4x32_10(tuple(counter), tuple(key)))
    got = philox_words(counter, key)
    assert torch.equal(got, want)
    assert [hex(int(w)) for w in got[:, 0]] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


@pytest.mark.parametrize("n_samples,n_rows,dim", [(1, 5, 1), (3, 7, 13), (2, 33, 4), (1, 3, 260)])
def test_noise_matches_the_reference_scheme(n_samples, n_rows, dim, seed):
    from fastelbo.triton_backend.rng import normal_noise

    s = rng.draw_seed(torch.device(DEVICE), generator(seed, DEVICE))
    want = rng.normal_noise(s, n_samples, n_rows, dim)
    got = normal_noise(s, n_samples, n_rows, dim)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)



def test_float64_noise_matches_the_reference_scheme(seed):
    """float64 noise comes from the same words, with Box-Muller in float64: equal to rounding."""
    from fastelbo.triton_backend.rng import normal_noise

    s = rng.draw_seed(torch.device(DEVICE), generator(seed, DEVICE))
    want = rng.normal_noise(s, 2, 9, 7, torch.float64)
    got = normal_noise(s, 2, 9, 7, torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(want.float(), rng.normal_noise(s, 2, 9, 7), rtol=2e-6, atol=2e-6)
