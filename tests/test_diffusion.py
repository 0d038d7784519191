"""Tests for srclib.diffusion: forward noising and the LLaDA sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from srclib.diffusion import mask_probability, noise

MASK = 63


def _ids(B=64, T=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, MASK, (B, T), generator=g)


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_mask_rate_within_binomial_error(t):
    x0 = _ids()
    eps = 1e-3
    noisy, mask = noise(x0, t, MASK, eps=eps, generator=torch.Generator().manual_seed(1))
    n = x0.numel()
    p = (1 - eps) * t + eps  # independent re-derivation of method.md 3
    sd = math.sqrt(n * p * (1 - p)) + 1e-9
    assert abs(mask.sum().item() - n * p) <= 5 * sd + 1
    assert (noisy[mask] == MASK).all()
    assert torch.equal(noisy[~mask], x0[~mask])


def test_mask_probability_formula():
    assert mask_probability(0.0, 1e-3) == pytest.approx(1e-3)
    assert mask_probability(1.0, 1e-3) == pytest.approx(1.0)
    assert mask_probability(0.5, 0.1) == pytest.approx(0.9 * 0.5 + 0.1)


def test_per_row_t():
    x0 = _ids(B=4, T=4000)
    t = torch.tensor([0.0, 0.25, 0.75, 1.0])
    _, mask = noise(x0, t, MASK, eps=0.0, generator=torch.Generator().manual_seed(2))
    rates = mask.float().mean(1)
    assert rates[0] == 0.0 and rates[3] == 1.0
    for r, tt in zip(rates[1:3], t[1:3]):
        sd = math.sqrt(tt * (1 - tt) / 4000)
        assert abs(r - tt) < 5 * sd


def test_keep_ends_and_keep_first():
    x0 = _ids(B=16, T=10)
    _, m = noise(x0, 1.0, MASK, keep_ends=True, generator=torch.Generator().manual_seed(0))
    assert not m[:, 0].any() and not m[:, -1].any() and m[:, 1:-1].all()
    _, m = noise(x0, 1.0, MASK, keep_first=True, generator=torch.Generator().manual_seed(0))
    assert not m[:, 0].any() and m[:, 1:].all()
    _, m = noise(x0, 1.0, MASK, generator=torch.Generator().manual_seed(0))
    assert m.all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.floats(0.0, 1.0), keep_ends=st.booleans(),
       keep_first=st.booleans())
def test_seeded_determinism_and_invariants(seed, t, keep_ends, keep_first):
    x0 = _ids(B=3, T=17)
    a = noise(x0, t, MASK, generator=torch.Generator().manual_seed(seed), keep_ends=keep_ends,
              keep_first=keep_first)
    b = noise(x0, t, MASK, generator=torch.Generator().manual_seed(seed), keep_ends=keep_ends,
              keep_first=keep_first)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    noisy, mask = a
    assert mask.dtype == torch.bool and mask.shape == x0.shape
    assert torch.equal(noisy, torch.where(mask, torch.full_like(x0, MASK), x0))
    if keep_ends or keep_first:
        assert not mask[:, 0].any()
    if keep_ends:
        assert not mask[:, -1].any()


def test_noise_rejects_bad_input():
    x0 = _ids(B=2, T=5)
    with pytest.raises(ValueError, match="t must"):
        noise(x0, 1.5, MASK)
    with pytest.raises(ValueError, match="shape"):
        noise(x0, torch.tensor([0.1, 0.2, 0.3]), MASK)
    with pytest.raises(ValueError, match="x0"):
        noise(x0[0], 0.5, MASK)
