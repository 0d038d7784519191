"""Tests for srclib.diffusion: forward noising and the LLaDA sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from types import SimpleNamespace

from torch import nn

from helpers import GREEDY, NOISE_EPS, greedy  # tests/ is on sys.path

from srclib.diffusion import generate, mask_probability, noise, num_transfer_tokens, sample_tokens
from srclib.models.tiny import TinyLM, test_config

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
    _, m = noise(x0, 1.0, MASK, eps=NOISE_EPS, keep_ends=True, generator=torch.Generator().manual_seed(0))
    assert not m[:, 0].any() and not m[:, -1].any() and m[:, 1:-1].all()
    _, m = noise(x0, 1.0, MASK, eps=NOISE_EPS, keep_first=True, generator=torch.Generator().manual_seed(0))
    assert not m[:, 0].any() and m[:, 1:].all()
    _, m = noise(x0, 1.0, MASK, eps=NOISE_EPS, generator=torch.Generator().manual_seed(0))
    assert m.all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.floats(0.0, 1.0), keep_ends=st.booleans(),
       keep_first=st.booleans())
def test_seeded_determinism_and_invariants(seed, t, keep_ends, keep_first):
    x0 = _ids(B=3, T=17)
    a = noise(x0, t, MASK, eps=NOISE_EPS, generator=torch.Generator().manual_seed(seed), keep_ends=keep_ends,
              keep_first=keep_first)
    b = noise(x0, t, MASK, eps=NOISE_EPS, generator=torch.Generator().manual_seed(seed), keep_ends=keep_ends,
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
        noise(x0, 1.5, MASK, eps=NOISE_EPS)
    with pytest.raises(ValueError, match="shape"):
        noise(x0, torch.tensor([0.1, 0.2, 0.3]), MASK, eps=NOISE_EPS)
    with pytest.raises(ValueError, match="x0"):
        noise(x0[0], 0.5, MASK, eps=NOISE_EPS)


# ---------------------------------------------------------------------------------------------
# sampler helpers
# ---------------------------------------------------------------------------------------------
def test_num_transfer_tokens_known_answers():
    # LLaDA: M // s each, the first M % s steps one more
    assert num_transfer_tokens(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert num_transfer_tokens(torch.tensor([8, 3, 0]), 4).tolist() == [[2, 2, 2, 2], [1, 1, 1, 0],
                                                                        [0, 0, 0, 0]]
    assert num_transfer_tokens(torch.tensor([5]), 1).tolist() == [[5]]


def test_gumbel_max_samples_softmax():
    # at temperature 1, argmax(exp(l) / (-log U)) = argmax(l + Gumbel) ~ softmax(l)
    probs = torch.tensor([1 / 6, 2 / 6, 3 / 6])
    n = 20000
    logits = probs.log().expand(1, n, 3)
    x = sample_tokens(logits, 1.0, torch.Generator().manual_seed(0))[0]
    freq = torch.bincount(x, minlength=3).double() / n
    sd = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() < 5 * sd).all()
    # temperature 0 is plain argmax; seeded sampling reproducible
    assert sample_tokens(logits[:, :4], 0.0).tolist() == [[2, 2, 2, 2]]
    a = sample_tokens(logits, 0.7, torch.Generator().manual_seed(5))
    assert torch.equal(a, sample_tokens(logits, 0.7, torch.Generator().manual_seed(5)))


# ---------------------------------------------------------------------------------------------
# sampler on TinyLMs
# ---------------------------------------------------------------------------------------------
def _tiny(shift: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = test_config(causal=False, shift=shift)
    return TinyLM(cfg).eval(), cfg


def _no_mask_logits(model, shift):
    """Aligned logits with the mask token forbidden (a random-init model may predict it)."""

    def fn(ids):
        out = model(input_ids=ids).logits  # (B, T, V)
        if shift:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        out = out.clone()
        out[..., MASK] = float("-inf")
        return out

    return fn


def _prompt(B=2, P=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(3, MASK, (B, P), generator=g)
    p[:, 0] = 0  # BOS
    return p


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("G,L,steps,expected", [
    (12, 6, 4, [3, 3, 3, 3]),        # 2 blocks, 2 steps each, 6 masked -> 3 + 3
    (10, 5, 4, [3, 2, 3, 2]),        # 5 masked over 2 steps -> 3, 2 (first takes the extra)
    (8, 8, 3, [3, 3, 2]),            # one block
    (6, 2, 6, [1, 1, 1, 1, 1, 1]),   # 3 blocks, one token per step
])
def test_sampler_invariants(shift, G, L, steps, expected):
    model, _ = _tiny(shift)
    prompt = _prompt()
    P = prompt.shape[1]
    trace = []

    def on_step(step, ids, info):
        trace.append((step, ids, info))

    out = generate(model, prompt, steps=steps, gen_length=G, block_length=L, mask_id=MASK,
                   shift=shift, logits_fn=_no_mask_logits(model, shift), on_step=on_step, **GREEDY)
    assert out.shape == (2, P + G)
    assert torch.equal(out[:, :P], prompt)
    assert not (out == MASK).any()  # no mask left
    assert [t[0] for t in trace] == list(range(steps))
    per_block = steps // (G // L)
    prev = torch.cat([prompt, torch.full((2, G), MASK)], dim=1)
    for step, ids, info in trace:
        assert torch.equal(ids, prev)  # on_step sees the ids the forward saw
        x = info["x"]
        # committed tokens never change
        done = prev != MASK
        assert torch.equal(x[done], prev[done])
        newly = (prev == MASK) & (x != MASK)
        assert torch.equal(newly, info["committed"])
        assert newly.sum(1).tolist() == [expected[step]] * 2  # per-step commit counts
        b = step // per_block
        assert info["block"] == b and info["step_in_block"] == step % per_block
        cols = newly.any(0).nonzero().flatten()
        assert ((cols >= P + b * L) & (cols < P + (b + 1) * L)).all()  # only inside the current block
        prev = x
    assert torch.equal(prev, out)


def test_sampler_low_confidence_commit_order():
    """Stub logits: confidence rises with position; one token per step -> committed right to left."""
    V, P, G = 6, 2, 4

    def logits_fn(ids):
        B, T = ids.shape
        logits = torch.zeros(B, T, V)
        logits[:, :, 1] = torch.arange(T, dtype=torch.float32)  # softmax peak grows with position
        return logits

    order = []
    generate(None, torch.zeros(1, P, dtype=torch.long), steps=G, gen_length=G, block_length=G,
             mask_id=5, logits_fn=logits_fn, **GREEDY,
             on_step=lambda s, ids, info: order.append(info["committed"][0].nonzero().item()))
    assert order == [5, 4, 3, 2]


def test_sampler_ties_break_to_lowest_position():
    def logits_fn(ids):
        return torch.zeros(ids.shape[0], ids.shape[1], 4)  # all confidences equal

    order = []
    generate(None, torch.zeros(1, 1, dtype=torch.long), steps=3, gen_length=3, block_length=3,
             mask_id=3, logits_fn=logits_fn, **GREEDY,
             on_step=lambda s, ids, info: order.append(info["committed"][0].nonzero().item()))
    assert order == [1, 2, 3]


@pytest.mark.parametrize("shift", [False, True])
def test_cfg_formula_on_stub(shift):
    """c and u are known; the committed tokens must be argmax(u + (w+1)(c-u)), computed by hand."""
    V, MID, P, G = 5, 4, 3, 4
    c_row = torch.tensor([0.0, 1.0, 0.9, 0.0, -9.0])  # conditional argmax: 1
    u_row = torch.tensor([0.0, 1.0, 0.0, 0.3, -9.0])  # unconditional
    # w = 1: u + 2(c - u) = [0, 1, 1.8, -0.3, -9] -> 2; w = 0.05: [0, 1, .945, -.015, -9] -> 1
    seen = []

    def logits_fn(ids):
        seen.append(ids.clone())
        prompt_masked = (ids[:, 1:P] == MID).all(dim=1)  # (B',) unconditional rows
        out = torch.where(prompt_masked[:, None, None], u_row, c_row)
        return out.expand(ids.shape[0], ids.shape[1], V).clone()

    prompt = torch.tensor([[0, 1, 2]])
    for w, tok in [(0.0, 1), (0.05, 1), (1.0, 2)]:
        seen.clear()
        out = generate(None, prompt, steps=G, gen_length=G, block_length=G, mask_id=MID, **greedy(cfg_scale=w),
                       shift=shift, logits_fn=logits_fn)
        assert out[0, P:].tolist() == [tok] * G
        if w > 0:
            both = seen[0]
            assert both.shape == (2, P + G)  # one forward, conditional rows first
            assert torch.equal(both[0, :P], prompt[0])
            assert (both[1, 1:P] == MID).all()
            assert both[1, 0].item() == (0 if shift else MID)  # shifted: position 0 never masked
        else:
            assert seen[0].shape == (1, P + G)


class _ShiftProbe(nn.Module):
    """Output at position i is one-hot on token (i % 4) + 10: tells which output a position reads."""

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, 64)
        logits[:, torch.arange(T), torch.arange(T) % 4 + 10] = 5.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("shift", [False, True])
def test_shift_reads_previous_output(shift):
    P, G = 3, 6
    out = generate(_ShiftProbe(), torch.zeros(1, P, dtype=torch.long), steps=G, gen_length=G,
                   block_length=G, mask_id=MASK, shift=shift, **GREEDY)
    src = torch.arange(P, P + G) - (1 if shift else 0)  # the output that predicts each position
    assert out[0, P:].tolist() == (src % 4 + 10).tolist()


def test_shift_via_adapter():
    from srclib.models.base import Adapter

    ad = Adapter(key="probe", causal=False, shift=True, blocks_path="")
    out = generate(_ShiftProbe(), torch.zeros(1, 2, dtype=torch.long), steps=2, gen_length=2,
                   block_length=2, mask_id=MASK, adapter=ad, **GREEDY)
    assert out[0, 2:].tolist() == [11, 12]
    with pytest.raises(ValueError, match="contradicts"):
        generate(_ShiftProbe(), torch.zeros(1, 2, dtype=torch.long), steps=2, gen_length=2,
                 block_length=2, mask_id=MASK, adapter=ad, shift=False, **GREEDY)


def test_temperature_zero_deterministic_and_seeded_sampling():
    model, _ = _tiny(False)
    prompt = _prompt()
    fn = _no_mask_logits(model, False)
    kw = dict(steps=4, gen_length=8, block_length=4, mask_id=MASK, logits_fn=fn, **GREEDY)
    a, b = generate(model, prompt, **kw), generate(model, prompt, **kw)
    assert torch.equal(a, b)
    hot = dict(kw, temperature=1.0)
    s1 = generate(model, prompt, generator=torch.Generator().manual_seed(1), **hot)
    s1b = generate(model, prompt, generator=torch.Generator().manual_seed(1), **hot)
    s2 = generate(model, prompt, generator=torch.Generator().manual_seed(2), **hot)
    assert torch.equal(s1, s1b) and not torch.equal(s1, s2)


def test_random_remasking_seeded():
    model, _ = _tiny(False)
    prompt = _prompt(B=1)
    fn = _no_mask_logits(model, False)

    def order(seed):
        seq = []
        generate(model, prompt, steps=8, gen_length=8, block_length=8, mask_id=MASK, logits_fn=fn,
                 **greedy(remasking="random"), generator=torch.Generator().manual_seed(seed),
                 on_step=lambda s, ids, info: seq.append(info["committed"][0].nonzero().item()))
        return seq

    a, b = order(3), order(3)
    assert a == b and sorted(a) == list(range(5, 13))
    assert any(order(s) != a for s in (4, 5, 6))


def test_sampler_validation_errors():
    p = _prompt()
    kw = dict(mask_id=MASK, logits_fn=lambda ids: torch.zeros(*ids.shape, 64), **GREEDY)
    with pytest.raises(ValueError, match=r"gen_length \(10\).*block_length \(4\)"):
        generate(None, p, steps=4, gen_length=10, block_length=4, **kw)
    with pytest.raises(ValueError, match=r"steps \(5\).*gen_length/block_length = 2"):
        generate(None, p, steps=5, gen_length=8, block_length=4, **kw)
    with pytest.raises(ValueError, match=r"sampler.remasking = 'topk': must be one of \['low_confidence'"):
        generate(None, p, steps=4, gen_length=8, block_length=4, **dict(kw, remasking="topk"))
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate(None, p[:, :0], steps=4, gen_length=8, block_length=4, shift=True, **kw)
    with pytest.raises(ValueError, match=r"sampler.steps = 0: must be >= 1"):
        generate(None, p, steps=0, gen_length=8, block_length=4, **kw)
    with pytest.raises(ValueError, match=r"sampler.temperature = -1.0: must be >= 0"):
        generate(None, p, steps=4, gen_length=8, block_length=4, **dict(kw, temperature=-1.0))
