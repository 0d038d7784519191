"""select_mask: known answers, hypothesis properties (exact counts, valid N:M, ordering), errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from srclib.pruning.masks import PATTERNS, select_mask
from srclib.pruning.magnitude import MagnitudePruner
from srclib.pruning.wanda import WandaPruner


# ---- known answers ---------------------------------------------------------------------------
def test_unstructured_row_known_answer():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0],
                          [0.5, 0.7, 0.1, 0.9]])
    expect = torch.tensor([[False, True, False, True],
                           [True, False, True, False]])
    assert torch.equal(select_mask(score, 0.5, "unstructured"), expect)
    # floor(4 * 0.3) = 1 per row
    expect1 = torch.tensor([[False, True, False, False],
                            [False, False, True, False]])
    assert torch.equal(select_mask(score, 0.3, "unstructured"), expect1)


def test_unstructured_matrix_known_answer():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0],
                          [0.5, 0.7, 0.1, 0.9]])
    # floor(8 * 0.5) = 4 lowest of the matrix: 0.1, 0.5, 0.7, 0.9 (all in row 1)
    expect = torch.tensor([[False, False, False, False],
                           [True, True, True, True]])
    assert torch.equal(select_mask(score, 0.5, "unstructured", scope="matrix"), expect)


def test_two_four_known_answer():
    score = torch.tensor([[1.0, 5.0, 2.0, 7.0, 9.0, 8.0, 0.0, 3.0]])
    expect = torch.tensor([[True, False, True, False, False, False, True, True]])
    assert torch.equal(select_mask(score, 0.5, "2:4"), expect)
    # 4:8 over the single group of 8: lowest four are 0, 1, 2, 3 at columns 6, 0, 2, 7
    assert torch.equal(select_mask(score, 0.5, "4:8"), expect)


def test_ties_break_toward_lower_index():
    score = torch.ones(2, 4)
    assert torch.equal(select_mask(score, 0.5), torch.tensor([[True, True, False, False]] * 2))
    assert torch.equal(select_mask(score, 0.25, scope="matrix"),
                       torch.tensor([[True, True, False, False], [False, False, False, False]]))
    assert torch.equal(select_mask(torch.ones(1, 8), 0.5, "2:4"),
                       torch.tensor([[True, True, False, False, True, True, False, False]]))


# ---- properties --------------------------------------------------------------------------------
scores_st = st.integers(1, 6).flatmap(
    lambda r: st.integers(1, 4).flatmap(
        lambda g: st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=r * g * 8, max_size=r * g * 8)
        .map(lambda v: torch.tensor(v, dtype=torch.float32).reshape(r, g * 8))
    )
)


@settings(max_examples=60, deadline=None)
@given(score=scores_st, s=st.floats(0.0, 0.99))
def test_row_counts_and_order(score, s):
    mask = select_mask(score, s)
    k = math.floor(score.shape[1] * s)
    assert (mask.sum(dim=1) == k).all()
    for r in range(score.shape[0]):
        pruned, kept = score[r][mask[r]], score[r][~mask[r]]
        if len(pruned) and len(kept):
            assert pruned.max() <= kept.min()


@settings(max_examples=60, deadline=None)
@given(score=scores_st, s=st.floats(0.0, 0.99))
def test_matrix_counts_and_order(score, s):
    mask = select_mask(score, s, scope="matrix")
    assert int(mask.sum()) == math.floor(score.numel() * s)
    if mask.any() and (~mask).any():
        assert score[mask].max() <= score[~mask].min()


@settings(max_examples=60, deadline=None)
@given(score=scores_st, pattern=st.sampled_from(["2:4", "4:8"]))
def test_nm_valid(score, pattern):
    pat = PATTERNS[pattern]
    mask = select_mask(score, pat.n / pat.m, pattern)
    groups = mask.reshape(score.shape[0], -1, pat.m)
    assert (groups.sum(dim=-1) == pat.n).all()
    sg = score.reshape(score.shape[0], -1, pat.m)
    assert (torch.where(groups, sg, -torch.inf).amax(-1) <= torch.where(~groups, sg, torch.inf).amin(-1)).all()


@settings(max_examples=30, deadline=None)
@given(score=scores_st, s=st.floats(0.0, 0.99), cls=st.sampled_from([MagnitudePruner, WandaPruner]))
def test_pruners_zero_pruned_and_keep_the_rest(score, s, cls):
    lin = torch.nn.Linear(score.shape[1], score.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(score)
    before = lin.weight.detach().clone()
    p = cls(lin, "layer")
    p.add_batch(torch.randn(2, 3, score.shape[1]))
    mask = p.prune(s, "unstructured")
    assert (lin.weight[mask] == 0).all()
    assert torch.equal(lin.weight[~mask], before[~mask])


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
        select_mask(torch.rand(2, 8), bad)


def test_nm_requires_matching_sparsity():
    with pytest.raises(ValueError, match=r"2:4.*sparsity=0\.3"):
        select_mask(torch.rand(2, 8), 0.3, "2:4")


def test_unknown_pattern_lists_allowed():
    with pytest.raises(ValueError, match=r"3:5.*'2:4'.*'4:8'.*'unstructured'"):
        select_mask(torch.rand(2, 8), 0.5, "3:5")


def test_unknown_scope_and_non_finite_scores():
    with pytest.raises(ValueError, match="scope"):
        select_mask(torch.rand(2, 8), 0.5, scope="column")
    with pytest.raises(ValueError, match="NaN"):
        select_mask(torch.tensor([[1.0, float("nan")]]), 0.5)
    with pytest.raises(ValueError, match="divisible by 4"):
        select_mask(torch.rand(2, 6), 0.5, "2:4")
