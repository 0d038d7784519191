"""Tests for srclib.sinks: known answers computed by hand / with python's math, and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import SINK, sink_rule

from srclib.sinks import (
    SINK_RULES,
    dominant_positions,
    dominant_share,
    jaccard_series,
    persistence,
    position_variance,
    sink_jaccard,
    sink_scores,
    sink_sets,
    stability_weights,
    token_weights,
)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _zscore_ref(m, alpha=5.0, kappa=2.0):
    """Independent re-derivation in plain python (population std)."""
    n = len(m)
    mean = sum(m) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in m) / n)
    return [_sigmoid(alpha * (x - mean - kappa * std)) for x in m]


# ---- sink scores -----------------------------------------------------------------------------
def test_zscore_known_answer():
    m = [10.0, 1, 1, 1, 1, 1, 1, 1]
    # by hand: mean = 2.125, population var = 70.875 / 8 = 8.859375
    std = math.sqrt(8.859375)
    expect0 = _sigmoid(5 * (10 - 2.125 - 2 * std))
    s = sink_scores(torch.tensor(m, dtype=torch.float64), **SINK)
    assert s[0].item() == pytest.approx(expect0, rel=1e-12)
    assert s[0].item() > 0.9999
    assert s[1:].max().item() < 1e-10
    assert torch.allclose(s, torch.tensor(_zscore_ref(m), dtype=torch.float64))


def test_zscore_alpha_kappa_respected():
    m = [3.0, 1.0, 0.5, 2.0, 0.25, 1.5]
    s = sink_scores(torch.tensor(m, dtype=torch.float64), **sink_rule(alpha=1.7, kappa=0.3))
    assert torch.allclose(s, torch.tensor(_zscore_ref(m, 1.7, 0.3), dtype=torch.float64))


def test_margin_known_answer():
    m = torch.tensor([4.0, 1.0, 1.0, 1.0])
    # k=0: mean of others = 1 -> 4 > 1; k>0: mean of others = 2 -> 1 > 2 is false
    assert sink_scores(m, **sink_rule(rule="margin")).tolist() == [1.0, 0.0, 0.0, 0.0]
    # eps: 4 > 1 + 2.9 holds; 4 > 1 + 3 does not (strict)
    assert sink_scores(m, **sink_rule(rule="margin", eps=2.9)).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert sink_scores(m, **sink_rule(rule="margin", eps=3.0)).tolist() == [0.0, 0.0, 0.0, 0.0]
    # two sinks: [5, 5, 1, 1]: others of k=0: 7/3 -> sink; others of k=2: 11/3 -> not
    assert sink_scores(torch.tensor([5.0, 5, 1, 1]), **sink_rule(rule="margin")).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert sink_scores(torch.tensor([7.0]), **sink_rule(rule="margin")).tolist() == [0.0]


def test_unknown_rule_names_allowed():
    with pytest.raises(ValueError, match="allowed rules.*margin.*zscore"):
        sink_scores(torch.ones(4), **sink_rule(rule="topk"))
    assert set(SINK_RULES) == {"zscore", "margin"}


def test_batched_shapes_match_rowwise():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 2, 9, generator=g)  # (L, B, T)
    for rule in SINK_RULES:
        s = sink_scores(m, **sink_rule(rule=rule))
        assert s.shape == m.shape
        for i in range(3):
            for j in range(2):
                assert torch.allclose(s[i, j], sink_scores(m[i, j], **sink_rule(rule=rule)), atol=1e-6)


def test_token_weights_is_one_minus_score():
    m = torch.tensor([[9.0, 1, 1, 1, 1, 1, 1], [1.0, 1, 1, 1, 1, 1, 8]])
    assert torch.allclose(token_weights(m, **SINK), 1 - sink_scores(m, **SINK))
    assert torch.equal(token_weights(m, **sink_rule(rule="margin")), 1 - sink_scores(m, **sink_rule(rule="margin")))


def test_planted_sink_found():
    g = torch.Generator().manual_seed(3)
    m = torch.rand(64, generator=g)  # noise in [0, 1)
    m[17] = 100.0
    for rule in SINK_RULES:
        s = sink_scores(m, **sink_rule(rule=rule))
        assert sink_sets(s).nonzero().flatten().tolist() == [17]
    assert dominant_positions(m).item() == 17


def test_uniform_mass():
    m = torch.full((12,), 3.0)
    # margin: m_k > mean of others is false everywhere -> no sink
    assert not sink_sets(sink_scores(m, **sink_rule(rule="margin"))).any()
    # zscore: std = 0, every score is exactly sigmoid(0) = 0.5 (the released code's degenerate case)
    assert torch.equal(sink_scores(m, **SINK), torch.full((12,), 0.5))


def test_single_spike_threshold_depends_on_T():
    # one spike h among T: sink under zscore(kappa=2) iff T > 5 (T = 5 sits on the threshold)
    for T, expect in [(4, False), (5, None), (6, True), (32, True)]:
        m = torch.zeros(T, dtype=torch.float64)
        m[0] = 10.0
        s0 = sink_scores(m, **SINK)[0].item()
        if expect is None:
            assert s0 == pytest.approx(0.5, abs=1e-12)
        else:
            assert (s0 > 0.5) == expect


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=2, max_size=20), st.sampled_from(sorted(SINK_RULES)))
def test_scores_properties(values, rule):
    m = torch.tensor(values, dtype=torch.float64)
    s = sink_scores(m, **sink_rule(rule=rule))
    assert ((s >= 0) & (s <= 1)).all()
    # permutation equivariance
    perm = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sink_scores(m[perm], **sink_rule(rule=rule)), s[perm])
    # monotone in the mass: a heavier key never has a lower score
    order = torch.argsort(m)
    assert (s[order].diff() >= -1e-12).all()


# ---- dominant positions, share -----------------------------------------------------------------
def test_dominant_positions_ties_lowest_index():
    m = torch.tensor([[3.0, 1.0, 3.0], [0.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    assert dominant_positions(m).tolist() == [0, 1, 0]
    assert dominant_positions(torch.tensor([0, 5, 5])).item() == 1  # integer input


def test_dominant_share():
    m = torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert dominant_share(m).tolist() == pytest.approx([0.5, 1 / 3])


# ---- variance, persistence, Jaccard ---------------------------------------------------------------
def test_position_variance_known_answers():
    assert position_variance(torch.tensor([5, 5, 5, 5]), 10).item() == 0.0
    # [0, 2, 4, 2]: mean 2, population var (4 + 0 + 4 + 0) / 4 = 2 -> 2 / 8^2
    assert position_variance(torch.tensor([0, 2, 4, 2]), 8).item() == pytest.approx(2 / 64)
    # moving sink > 0; batched over a leading dim
    v = position_variance(torch.tensor([[0, 0, 0], [0, 1, 0]]), 4)
    assert v[0].item() == 0.0 and v[1].item() == pytest.approx((2 / 9) / 16)
    with pytest.raises(ValueError, match="seq_len"):
        position_variance(torch.tensor([1, 2]), 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 50).flatmap(
    lambda T: st.tuples(st.just(T), st.lists(st.integers(0, T - 1), min_size=1, max_size=30))))
def test_position_variance_bounded(args):
    T, pos = args
    v = position_variance(torch.tensor(pos), T).item()
    assert 0.0 <= v < 0.25


def test_persistence_known_answer():
    s = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.8, 0.6, 0.2, 0.0], [0.1, 0.7, 0.4, 0.0]])  # (S=3, T=4)
    assert persistence(s).tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])


def test_jaccard_known_answer():
    # sink sets per step: {0}, {0, 1}, {}, {}, {2}
    s = torch.tensor(
        [[1.0, 0, 0], [1.0, 1, 0], [0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 1]]
    )
    assert jaccard_series(s).tolist() == pytest.approx([0.5, 0.0, 1.0, 0.0])
    assert sink_jaccard(s).item() == pytest.approx(1.5 / 4)
    # a sink that never moves -> 1.0
    assert sink_jaccard(torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0]])).item() == 1.0
    with pytest.raises(ValueError, match="2 steps"):
        sink_jaccard(torch.tensor([[1.0, 0]]))


def test_stability_weights():
    # n_t = 4 steps, T = 3: pos 0 sink at all 4 steps (stable), pos 1 at 1 of 4 (transient), pos 2 never
    s = torch.tensor([[0.9, 0.8, 0.1], [0.9, 0.2, 0.1], [0.9, 0.2, 0.1], [0.9, 0.2, 0.1]])
    w = stability_weights(s, threshold=0.75)
    assert w.tolist() == pytest.approx([1.0, 1 - 0.35, 1 - 0.1])
    # threshold 0.25: pos 1 (1/4 of the grid) is now stable too
    assert stability_weights(s, threshold=0.25).tolist() == pytest.approx([1.0, 1.0, 0.9])
    # count comparison is exact: 7 of 10 steps >= 0.7
    s10 = torch.zeros(10, 1)
    s10[:7] = 1.0
    assert stability_weights(s10, threshold=0.7).tolist() == [1.0]
    with pytest.raises(ValueError, match="threshold"):
        stability_weights(s, threshold=0.0)
    # batched (B, n_t, T): each row is its own (n_t, T) case, not pooled across the batch
    s_other = torch.tensor([[0.1, 0.9, 0.9], [0.1, 0.9, 0.2], [0.1, 0.9, 0.2], [0.1, 0.9, 0.2]])
    batched = stability_weights(torch.stack([s, s_other]), 0.75)
    assert batched.shape == (2, 3)
    assert batched[0].tolist() == pytest.approx([1.0, 1 - 0.35, 1 - 0.1])
    # s_other: pos 0 never a sink, pos 1 a sink at all 4 steps (stable), pos 2 at 1 of 4 (transient)
    assert batched[1].tolist() == pytest.approx([1 - 0.1, 1.0, 1 - 0.375])
