"""MC-ELBO estimator (method.md 6): known answers, unbiasedness, CFG, batching invariance."""

from __future__ import annotations

import dataclasses
import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from srclib.likelihood import (
    causal_perplexity,
    causal_window_nll,
    elbo_loglikelihood,
    elbo_loglikelihood_batch,
    elbo_perplexity,
    elbo_window_nll,
    mask_counts,
    model_logits_fn,
)
from srclib.models import get_adapter
from srclib.models.tiny import TinyLM, test_config

MASK = 63
V = 64


# ---- stubs ---------------------------------------------------------------------------------------
def table_fn(table: torch.Tensor):
    """Context-independent model: position i always gets logits table[i] (whatever the input)."""

    def fn(ids, attention_mask=None):
        B, T = ids.shape
        return table[:T].unsqueeze(0).expand(B, T, table.shape[-1]).clone()

    return fn


def exact_logp(table: torch.Tensor, prefix_len: int, target: list[int]) -> float:
    lp = torch.log_softmax(table.double(), dim=-1)
    return sum(float(lp[prefix_len + i, t]) for i, t in enumerate(target))


def llada_round(x: Fraction) -> int:
    return round(x)  # Python's round on a Fraction: exact, half to even (== torch.round)


# ---- the stratified counts -----------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(L=st.integers(1, 300), b=st.integers(1, 64), data=st.data())
def test_mask_counts_match_exact_rational_formula(L, b, data):
    k = data.draw(st.integers(1, L))
    got = mask_counts(k, L, b).tolist()
    want = [((llada_round(Fraction(k) + Fraction(j * L, b)) - 1) % L) + 1 for j in range(b)]
    assert got == want
    assert all(1 <= x <= L for x in got)


def test_mask_counts_known_values():
    # L=10, b=4, k=3: 3, 5.5->6, 8, 10.5->10
    assert mask_counts(3, 10, 4).tolist() == [3, 6, 8, 10]
    # wrap-around: k=9: 9, 11.5->12->2, 14->4, 16.5->16->6
    assert mask_counts(9, 10, 4).tolist() == [9, 2, 4, 6]
    assert mask_counts(torch.tensor([3, 9]), 10, 4).shape == (2, 4)


# ---- errors --------------------------------------------------------------------------------------
def test_mc_num_not_multiple_of_batch_size_names_both():
    fn = table_fn(torch.zeros(8, V))
    with pytest.raises(ValueError, match=r"mc_num \(10\).*batch_size \(4\)"):
        elbo_loglikelihood(fn, [1, 2], [3], mask_id=MASK, mc_num=10, batch_size=4)


@pytest.mark.parametrize("kw, msg", [
    (dict(mc_num=0), "mc_num"),
    (dict(batch_size=0), "batch_size"),
    (dict(cfg=-1.0), "cfg"),
])
def test_bad_arguments(kw, msg):
    fn = table_fn(torch.zeros(8, V))
    args = dict(mask_id=MASK, mc_num=4, batch_size=2) | kw
    with pytest.raises(ValueError, match=msg):
        elbo_loglikelihood(fn, [1], [2], **args)


def test_empty_target_and_keep_first_without_prefix():
    fn = table_fn(torch.zeros(8, V))
    with pytest.raises(ValueError, match="target"):
        elbo_loglikelihood(fn, [1], [], mask_id=MASK, mc_num=2, batch_size=2)
    with pytest.raises(ValueError, match="keep_first"):
        elbo_loglikelihood(fn, [], [1, 2], mask_id=MASK, mc_num=2, batch_size=2, keep_first=True)


# ---- known answers -------------------------------------------------------------------------------
def test_single_token_target_is_exact_with_mc_num_1():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(6, V, generator=g)
    fn = table_fn(table)
    got = elbo_loglikelihood(fn, [5, 6, 7], [11], mask_id=MASK, mc_num=1, batch_size=1, generator=g)
    assert got == pytest.approx(exact_logp(table, 3, [11]), abs=1e-5)


@pytest.mark.parametrize("shift", [False, True])
def test_single_token_exact_on_tiny_model(shift):
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=False, shift=shift)).eval()
    adapter = get_adapter("tiny-dlm")
    adapter = dataclasses.replace(adapter, shift=shift)
    prefix, target = [0, 5, 9, 17], [23]
    got = elbo_loglikelihood(model_logits_fn(model, adapter), prefix, target, mask_id=MASK,
                             mc_num=1, batch_size=1, keep_first=shift)
    # independent: raw model output on the masked sequence, read at i (or i-1 when shifted)
    with torch.no_grad():
        raw = model(input_ids=torch.tensor([prefix + [MASK]])).logits[0]  # (T, V)
    row = raw[len(prefix) - 1] if shift else raw[len(prefix)]
    assert got == pytest.approx(float(torch.log_softmax(row.double(), -1)[23]), abs=1e-5)


def test_cfg_formula_on_stub():
    g = torch.Generator().manual_seed(1)
    c, u = torch.randn(V, generator=g), torch.randn(V, generator=g)

    def fn(ids, attention_mask=None):  # conditional iff the prefix (position 1) is visible
        B, T = ids.shape
        out = torch.empty(B, T, V)
        for r in range(B):
            out[r] = u if ids[r, 1] == MASK else c
        return out

    w = 0.5
    got = elbo_loglikelihood(fn, [0, 4], [9], mask_id=MASK, mc_num=1, batch_size=1, cfg=w,
                             keep_first=True)
    want = torch.log_softmax((u + (w + 1) * (c - u)).double(), -1)[9]
    assert got == pytest.approx(float(want), abs=1e-5)
    # cfg = 0 reads only the conditional logits
    got0 = elbo_loglikelihood(fn, [0, 4], [9], mask_id=MASK, mc_num=1, batch_size=1, cfg=0.0)
    assert got0 == pytest.approx(float(torch.log_softmax(c.double(), -1)[9]), abs=1e-5)


def test_cfg_unconditional_copy_masks_whole_prefix_but_keeps_first():
    seen = []

    def fn(ids, attention_mask=None):
        seen.append(ids.clone())
        return torch.zeros(*ids.shape, V)

    elbo_loglikelihood(fn, [0, 4, 5], [9, 10], mask_id=MASK, mc_num=2, batch_size=2, cfg=1.0,
                       keep_first=True)
    x = seen[0]  # (2B, T): conditional rows then unconditional rows
    assert x.shape == (4, 5)
    assert (x[:2, :3] == torch.tensor([0, 4, 5])).all()  # prefix intact in the conditional copy
    assert (x[2:, 0] == 0).all() and (x[2:, 1:3] == MASK).all()  # prompt masked, BOS kept
    assert torch.equal(x[2:, 3:], x[:2, 3:])  # same noised target in both copies


# ---- unbiasedness ---------------------------------------------------------------------------------
def test_unbiased_for_context_independent_model():
    g = torch.Generator().manual_seed(2)
    table = 2.0 * torch.randn(12, V, generator=g)
    fn = table_fn(table)
    prefix, target = [1, 2, 3], [10, 20, 30, 40, 50, 7, 8]
    exact = exact_logp(table, len(prefix), target)
    est = torch.tensor([
        elbo_loglikelihood(fn, prefix, target, mask_id=MASK, mc_num=8, batch_size=4, generator=g)
        for _ in range(400)
    ], dtype=torch.float64)
    se = float(est.std() / math.sqrt(est.numel()))
    assert abs(float(est.mean()) - exact) < 4 * se + 1e-6


def _context_dependent_fn(table: torch.Tensor, bump: torch.Tensor, prefix_len: int):
    """Logits at target position i get + bump[i] * (number of masked target positions before i)."""

    def fn(ids, attention_mask=None):
        B, T = ids.shape
        m = (ids == MASK)[:, prefix_len:].double()  # (B, L)
        before = torch.cumsum(m, dim=1) - m  # (B, L)
        out = table[:T].double().unsqueeze(0).repeat(B, 1, 1)  # (B, T, V)
        out[:, prefix_len:] += before[..., None] * bump[None, : T - prefix_len]
        return out.float()

    return fn


def _enumerated_expectation(fn, prefix, target, b):
    """E[estimator] by enumeration: k uniform on 1..L, subsets uniform of size l_j (independent)."""
    L, P = len(target), len(prefix)
    ids = torch.tensor(prefix + target)
    total = 0.0
    for k in range(1, L + 1):
        rows = []
        for j in range(b):
            n = ((llada_round(Fraction(k) + Fraction(j * L, b)) - 1) % L) + 1
            subsets = list(itertools.combinations(range(L), n))
            acc = 0.0
            for S in subsets:
                x = ids.clone()
                x[[P + i for i in S]] = MASK
                lp = torch.log_softmax(fn(x[None])[0].double(), -1)
                acc += (L / n) * -sum(float(lp[P + i, target[i]]) for i in S)
            rows.append(acc / len(subsets))
        total += sum(rows) / b
    return -total / L


def test_matches_enumerated_expectation_for_context_dependent_model():
    g = torch.Generator().manual_seed(3)
    prefix, target = [1, 2], [10, 20, 30, 40]
    table = torch.randn(6, V, generator=g)
    bump = 1.5 * torch.randn(4, V, generator=g)
    fn = _context_dependent_fn(table, bump, len(prefix))
    b = 4  # L/b = 1: no halves; the exact answer differs from the context-free one
    want = _enumerated_expectation(fn, prefix, target, b)
    est = torch.tensor([
        elbo_loglikelihood(fn, prefix, target, mask_id=MASK, mc_num=b, batch_size=b, generator=g)
        for _ in range(600)
    ], dtype=torch.float64)
    se = float(est.std() / math.sqrt(est.numel()))
    assert abs(float(est.mean()) - want) < 4 * se + 1e-6
    # and the test has power: the model really depends on the mask pattern
    assert abs(want - exact_logp(table, len(prefix), target)) > 10 * se


def test_each_row_masks_exactly_l_j_target_tokens_never_the_prefix():
    seen = []

    def fn(ids, attention_mask=None):
        seen.append(ids.clone())
        return torch.zeros(*ids.shape, V)

    g = torch.Generator().manual_seed(4)
    prefix, target = [1, 2, 3], list(range(10, 20))
    elbo_loglikelihood(fn, prefix, target, mask_id=MASK, mc_num=8, batch_size=4, generator=g)
    g2 = torch.Generator().manual_seed(4)
    ks = torch.randint(1, 11, (2,), generator=g2).tolist()  # the estimator's k draws
    for it, x in enumerate(seen):
        assert (x[:, :3] == torch.tensor(prefix)).all()
        counts = (x[:, 3:] == MASK).sum(1).tolist()
        assert counts == mask_counts(ks[it], 10, 4).tolist()


# ---- batching / padding invariance ----------------------------------------------------------------
def _tiny(shift=True, seed=0):
    torch.manual_seed(seed)
    model = TinyLM(test_config(causal=False, shift=shift)).eval()
    adapter = get_adapter("tiny-dlm")
    return model, dataclasses.replace(adapter, shift=shift)


@pytest.mark.parametrize("cfg", [0.0, 0.5])
def test_batched_equals_sequential_with_same_draws(cfg):
    model, adapter = _tiny()
    fn = model_logits_fn(model, adapter)
    reqs = [([0, 5, 6], [7, 8]), ([0, 9], [10, 11, 12, 13, 14]), ([0, 3, 4, 5, 6, 7], [8]),
            ([0, 1], [2, 3, 4])]
    kw = dict(mask_id=MASK, mc_num=4, batch_size=2, cfg=cfg, keep_first=True)
    g = torch.Generator().manual_seed(5)
    seq = [elbo_loglikelihood(fn, p, t, generator=g, **kw) for p, t in reqs]
    for fb in (1, 3, 16):
        g = torch.Generator().manual_seed(5)
        bat = elbo_loglikelihood_batch(fn, reqs, generator=g, forward_batch=fb, pad_id=2, **kw)
        assert bat == pytest.approx(seq, abs=1e-4)


def test_per_request_generators_make_results_order_independent():
    model, adapter = _tiny()
    fn = model_logits_fn(model, adapter)
    reqs = [([0, 5, 6], [7, 8]), ([0, 9], [10, 11, 12, 13, 14]), ([0, 3], [8])]
    kw = dict(mask_id=MASK, mc_num=4, batch_size=4, keep_first=True, forward_batch=8)
    gens = lambda order: [torch.Generator().manual_seed(100 + i) for i in order]  # noqa: E731
    a = elbo_loglikelihood_batch(fn, reqs, generator=gens([0, 1, 2]), **kw)
    b = elbo_loglikelihood_batch(fn, reqs[::-1], generator=gens([2, 1, 0]), **kw)
    assert a == pytest.approx(b[::-1], abs=1e-4)
    with pytest.raises(ValueError, match="generators"):
        elbo_loglikelihood_batch(fn, reqs, generator=gens([0, 1]), **kw)


# ---- perplexity -----------------------------------------------------------------------------------
def test_elbo_perplexity_context_independent_and_keep_first():
    g = torch.Generator().manual_seed(6)
    table = torch.randn(8, V, generator=g)
    table[0] = -50.0  # position 0 would be ruinous if it were scored
    table[0, 0] = 0.0
    windows = torch.randint(3, 60, (6, 8), generator=g)
    windows[:, 0] = 1  # not the likely token at position 0
    lp = torch.log_softmax(table.double(), -1)
    exact_nll = -sum(float(lp[i, w[i]]) for w in windows for i in range(1, 8))
    exact = math.exp(exact_nll / (6 * 7))
    ests = [elbo_perplexity(table_fn(table), windows, mask_id=MASK, mc_num=8, generator=g,
                            keep_first=True) for _ in range(30)]
    logs = torch.tensor([math.log(x) for x in ests], dtype=torch.float64)
    se = float(logs.std() / math.sqrt(len(ests)))
    assert abs(float(logs.mean()) - math.log(exact)) < 4 * se + 1e-6
    nll, n = elbo_window_nll(table_fn(table), windows, mask_id=MASK, mc_num=8, generator=g,
                             keep_first=False)
    assert n == [8] * 6 and min(nll) > 40  # position 0 scored: huge


def test_elbo_perplexity_mc_num_1_single_token_windows_is_exact():
    table = torch.randn(4, V, generator=torch.Generator().manual_seed(7))
    windows = [[0, 5], [0, 9], [0, 11]]
    lp = torch.log_softmax(table.double(), -1)
    want = math.exp(-sum(float(lp[1, w[1]]) for w in windows) / 3)
    got = elbo_perplexity(table_fn(table), windows, mask_id=MASK, mc_num=1, keep_first=True)
    assert got == pytest.approx(want, rel=1e-5)


def test_causal_perplexity_matches_prefix_by_prefix_forward():
    torch.manual_seed(8)
    model = TinyLM(test_config(causal=True, shift=False)).eval()
    adapter = get_adapter("tiny-ar")
    fn = model_logits_fn(model, adapter)
    windows = [[0, 5, 9, 11, 3], [0, 7, 8]]  # ragged: padded inside
    nll, n = causal_window_nll(fn, windows, pad_id=2)
    want = []
    with torch.no_grad():
        for w in windows:
            s = 0.0
            for i in range(1, len(w)):
                out = model(input_ids=torch.tensor([w[:i]])).logits[0, -1]
                s -= float(torch.log_softmax(out.double(), -1)[w[i]])
            want.append(s)
    assert n == [4, 2]
    assert nll == pytest.approx(want, abs=1e-4)
    ppl = causal_perplexity(fn, windows, pad_id=2)
    assert ppl == pytest.approx(math.exp(sum(want) / 6), rel=1e-5)


def test_tensor_windows_shape_checked():
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        elbo_perplexity(table_fn(torch.zeros(4, V)), torch.zeros(4, dtype=torch.long),
                        mask_id=MASK, mc_num=1)
