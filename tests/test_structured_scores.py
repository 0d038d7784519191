"""Known answers for the structured pruning math (srclib.pruning.structured, method.md 9):
channel statistics, channel / unit scores, bias compensation, unit costs, uniform and adaptive
selection. Expected values are literal numbers computed by hand (shown in comments) or plain
Python loops in this file, never a second call of the function under test."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from srclib.pruning.structured import (
    SP_METHODS,
    ChannelStats,
    bias_compensation,
    channel_scores,
    group_scores,
    n_remove,
    select_adaptive,
    select_uniform,
    unit_costs,
    unit_scores,
)

T, F = True, False
D = torch.float64

# 4 tokens x 3 channels; token 2 has weight 0 and huge values (it must have no influence)
X4 = torch.tensor([[1.0, 2.0, -1.0],
                   [3.0, 0.0, 2.0],
                   [100.0, -50.0, 7.0],
                   [-2.0, 4.0, 1.0]], dtype=D)
W4 = torch.tensor([1.0, 0.5, 0.0, 1.0], dtype=D)
# by hand: W = 2.5; sum w x = [0.5, 6, 1] -> mu = [0.2, 2.4, 0.4]
# F0 = (1*.8^2 + .5*2.8^2 + 1*2.2^2) / 2.5 = (.64 + 3.92 + 4.84) / 2.5 = 3.76
# F1 = (.4^2 + .5*2.4^2 + 1.6^2) / 2.5 = (.16 + 2.88 + 2.56) / 2.5 = 2.24
# F2 = (1.4^2 + .5*1.6^2 + .6^2) / 2.5 = (1.96 + 1.28 + .36) / 2.5 = 1.44
# N^2 = sum (w x)^2 = [1 + 2.25 + 4, 4 + 0 + 16, 1 + 1 + 1] = [7.25, 20, 3]
MU4, F4, N4 = [0.2, 2.4, 0.4], [3.76, 2.24, 1.44], [math.sqrt(7.25), math.sqrt(20.0), math.sqrt(3.0)]

# 2 x 3 weight: column norms [5, sqrt 5, sqrt .5], squared [25, 5, .5], mean |V| [3.5, 1.5, .5]
V2 = torch.tensor([[3.0, -1.0, 0.5],
                   [4.0, 2.0, -0.5]], dtype=D)


def _close(a: torch.Tensor, b: list[float] | torch.Tensor, tol: float = 1e-12) -> None:
    b = torch.as_tensor(b, dtype=D)
    assert a.dtype == D
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a, b)


def _stats(x: torch.Tensor, w: torch.Tensor | None = None, name: str = "blk.o_proj") -> ChannelStats:
    s = ChannelStats(x.shape[-1], name)
    s.add(x, w)
    return s


def _loop_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Plain-Python weighted mean, fluctuation and norm, straight from the definitions."""
    rows, cols = x.tolist(), w.tolist()
    total = sum(cols)
    mu, fl, nm = [], [], []
    for j in range(len(rows[0])):
        m = sum(wn * r[j] for wn, r in zip(cols, rows)) / total
        mu.append(m)
        fl.append(sum(wn * (r[j] - m) ** 2 for wn, r in zip(cols, rows)) / total)
        nm.append(math.sqrt(sum((wn * r[j]) ** 2 for wn, r in zip(cols, rows))))
    return mu, fl, nm


# ---- ChannelStats ------------------------------------------------------------------------------
def test_channel_stats_hand_values():
    s = _stats(X4, W4)
    assert s.total_weight == pytest.approx(2.5, abs=1e-15)
    assert s.n_tokens == 4
    _close(s.mean(), MU4)
    _close(s.fluctuation(), F4)
    _close(s.norm(), N4)


def test_channel_stats_match_plain_loops_on_random_weighted_data():
    x = torch.randn(37, 5, dtype=D) * 3 + 1
    w = torch.rand(37, dtype=D)
    mu, fl, nm = _loop_stats(x, w)
    s = _stats(x, w)
    _close(s.mean(), mu, 1e-10)
    _close(s.fluctuation(), fl, 1e-10)
    _close(s.norm(), nm, 1e-10)


def test_channel_stats_streaming_equals_one_batch():
    x = torch.randn(2, 6, 4, dtype=D)  # (B, T, C)
    w = torch.rand(2, 6, dtype=D)
    one = _stats(x, w)
    two = ChannelStats(4, "l")
    two.add(x[:1], w[:1])  # (1, T, C)
    two.add(x[1], w[1])  # (T, C) with (T,) weights
    assert two.n_tokens == one.n_tokens == 12
    assert two.total_weight == pytest.approx(one.total_weight, rel=1e-15)
    for a, b in ((two.mean(), one.mean()), (two.fluctuation(), one.fluctuation()), (two.norm(), one.norm())):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_uniform_equals_all_ones_weights():
    x = torch.randn(9, 3, dtype=D)
    a, b = _stats(x, None), _stats(x, torch.ones(9, dtype=D))
    assert a.total_weight == b.total_weight == 9.0
    assert torch.equal(a.mean(), b.mean())
    assert torch.equal(a.fluctuation(), b.fluctuation())
    assert torch.equal(a.norm(), b.norm())
    # uniform: population variance and plain column norm
    _close(a.fluctuation(), x.var(0, unbiased=False), 1e-12)
    _close(a.norm(), x.pow(2).sum(0).sqrt(), 1e-12)


def test_zero_weight_token_has_no_influence():
    full = _stats(X4, W4)
    kept = _stats(X4[[0, 1, 3]], W4[[0, 1, 3]])
    _close(full.mean(), kept.mean())
    _close(full.fluctuation(), kept.fluctuation())
    _close(full.norm(), kept.norm())


def test_channel_stats_float64_inputs_keep_precision():
    # 1 + 1e-10 is not representable in float32 (it rounds to 1); the statistics must see it
    x = torch.tensor([[1.0 + 1e-10], [1.0 + 3e-10]], dtype=D)
    s = _stats(x)
    assert abs(float(s.mean()[0]) - (1.0 + 2e-10)) < 1e-15
    assert abs(float(s.norm()[0]) - math.sqrt((1.0 + 1e-10) ** 2 + (1.0 + 3e-10) ** 2)) < 1e-15


def test_channel_stats_rejects_bad_inputs_naming_the_layer():
    s = _stats(X4, W4, name="layers.3.mlp.down_proj")
    before = (s.mean().clone(), s.fluctuation().clone(), s.norm().clone(), s.n_tokens, s.total_weight)
    with pytest.raises(ValueError, match="layers.3.mlp.down_proj"):
        s.add(X4, torch.tensor([1.0, 1.5, 0.0, 1.0]))  # weight above 1
    with pytest.raises(ValueError, match="layers.3.mlp.down_proj"):
        s.add(X4, torch.tensor([1.0, -0.1, 0.0, 1.0]))  # weight below 0
    bad = X4.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="layers.3.mlp.down_proj.*NaN"):
        s.add(bad)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="layers.3.mlp.down_proj"):
        s.add(bad, W4)
    with pytest.raises(ValueError, match="layers.3.mlp.down_proj"):
        s.add(torch.zeros(4, 2))  # wrong width
    after = (s.mean(), s.fluctuation(), s.norm(), s.n_tokens, s.total_weight)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert torch.equal(before[2], after[2]) and before[3:] == after[3:]


def test_channel_stats_without_weight_raise():
    s = ChannelStats(3, "empty")
    with pytest.raises(ValueError, match="empty"):
        s.mean()
    with pytest.raises(ValueError, match="empty"):
        s.norm()
    s.add(X4, torch.zeros(4))
    assert s.n_tokens == 4 and s.total_weight == 0.0
    with pytest.raises(ValueError, match="total weight"):
        s.mean()
    with pytest.raises(ValueError, match="total weight"):
        s.fluctuation()
    _close(s.norm(), [0.0, 0.0, 0.0])


# ---- channel scores ------------------------------------------------------------------------------
def test_channel_scores_known_answers_weighted():
    s = _stats(X4, W4)
    _close(channel_scores("magnitude", V2, None), [5.0, math.sqrt(5.0), math.sqrt(0.5)])
    _close(channel_scores("magnitude", V2, s), [5.0, math.sqrt(5.0), math.sqrt(0.5)])
    # mean |V| * N = [3.5 sqrt 7.25, 1.5 sqrt 20, .5 sqrt 3]
    _close(channel_scores("wanda", V2, s),
           [3.5 * math.sqrt(7.25), 1.5 * math.sqrt(20.0), 0.5 * math.sqrt(3.0)])
    # F * ||V||^2 = [3.76 * 25, 2.24 * 5, 1.44 * .5]
    _close(channel_scores("flap", V2, s), [94.0, 11.2, 0.72])


def test_channel_scores_known_answers_uniform():
    # x = [[1, 2, -1], [3, 0, 2]]: mu = [2, 1, .5], F = [1, 1, 2.25], N = [sqrt 10, 2, sqrt 5]
    s = _stats(X4[:2], None)
    _close(channel_scores("wanda", V2, s), [3.5 * math.sqrt(10.0), 3.0, 0.5 * math.sqrt(5.0)])
    _close(channel_scores("flap", V2, s), [25.0, 5.0, 1.125])


def test_uniform_scores_reproduce_published_metrics():
    x = torch.randn(64, 8, dtype=D) * torch.linspace(0.5, 3.0, 8, dtype=D) + torch.linspace(-1, 1, 8, dtype=D)
    v = torch.randn(5, 8, dtype=D)
    s = _stats(x, None)
    # Wanda-sp: (|W| * sqrt(sum_n x_nj^2)).mean(0); the FLAP reference's WIFN divides by N first
    wanda = channel_scores("wanda", v, s)
    _close(wanda, (v.abs() * x.pow(2).sum(0).sqrt()).mean(0), 1e-12)
    reference = (v.abs() * (x.pow(2).sum(0) / x.shape[0]).sqrt().reshape(1, -1)).mean(0)
    assert torch.equal(torch.argsort(wanda), torch.argsort(reference))
    _close(wanda / math.sqrt(x.shape[0]), reference, 1e-12)
    # FLAP (WIFV): fluc_inp * W.pow(2).sum(0), fluc_inp the population variance over tokens
    _close(channel_scores("flap", v, s), x.var(0, unbiased=False) * v.pow(2).sum(0), 1e-11)


def test_channel_scores_validation():
    s = _stats(X4, W4)
    with pytest.raises(ValueError, match="magnitude.*wanda.*flap"):
        channel_scores("sparsegpt", V2, s)
    with pytest.raises(ValueError, match="2 input channels but stats has 3"):
        channel_scores("wanda", V2[:, :2], s)
    with pytest.raises(ValueError, match="stats is None"):
        channel_scores("flap", V2, None)
    assert SP_METHODS == ("magnitude", "wanda", "flap")


# ---- unit scores ---------------------------------------------------------------------------------
def test_group_scores_sum_and_flap_squares():
    sc = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D)
    _close(group_scores("magnitude", sc, 2), [3.0, 7.0])
    _close(group_scores("wanda", sc, 2), [3.0, 7.0])
    _close(group_scores("flap", sc, 2), [1.0 + 4.0, 9.0 + 16.0])
    _close(group_scores("flap", sc, 1), [1.0, 2.0, 3.0, 4.0])  # MLP channels: plain scores
    _close(group_scores("wanda", sc, 4), [10.0])
    with pytest.raises(ValueError, match="unit_size=3"):
        group_scores("wanda", sc, 3)
    with pytest.raises(ValueError, match="unit_size"):
        group_scores("wanda", sc, 0)


def test_unit_scores_known_answers_and_composition():
    # one unit of all 3 channels; flap sums squares: 94^2 + 11.2^2 + .72^2
    _close(unit_scores("flap", V2, X4, W4, unit_size=3), [94.0**2 + 11.2**2 + 0.72**2], 1e-12)
    _close(unit_scores("wanda", V2, X4, W4, unit_size=3),
           [3.5 * math.sqrt(7.25) + 1.5 * math.sqrt(20.0) + 0.5 * math.sqrt(3.0)])
    _close(unit_scores("flap", V2, X4, W4), [94.0, 11.2, 0.72])
    _close(unit_scores("magnitude", V2, None, unit_size=3), [5.0 + math.sqrt(5.0) + math.sqrt(0.5)])
    # composition on (B, T, C) inputs with (B, T) weights
    x, w, v = torch.randn(2, 5, 4, dtype=D), torch.rand(2, 5, dtype=D), torch.randn(3, 4, dtype=D)
    for method in SP_METHODS:
        expect = group_scores(method, channel_scores(method, v, _stats(x, w)), 2)
        _close(unit_scores(method, v, x, w, unit_size=2), expect, 1e-12)
    with pytest.raises(ValueError, match="x is None"):
        unit_scores("wanda", V2, None)


# ---- bias compensation ---------------------------------------------------------------------------
def test_bias_compensation_known_answer():
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mu = torch.tensor([0.5, -1.0, 2.0])
    b = bias_compensation(w, mu, torch.tensor([T, F, F]))  # [2*-1 + 3*2, 5*-1 + 6*2]
    assert b.dtype == torch.float32
    assert torch.equal(b, torch.tensor([4.0, 7.0]))
    assert torch.equal(bias_compensation(w, mu, torch.tensor([T, T, T])), torch.zeros(2))
    with pytest.raises(ValueError, match="keep"):
        bias_compensation(w, mu, torch.tensor([1, 0, 0]))


@pytest.mark.parametrize("weighted", [False, True])
def test_bias_compensation_keeps_the_mean_output(weighted):
    x = torch.randn(50, 6, dtype=D) + torch.arange(6, dtype=D)
    tw = torch.rand(50, dtype=D) if weighted else None
    v = torch.randn(4, 6, dtype=D)
    keep = torch.tensor([T, F, T, F, F, T])
    b = bias_compensation(v, _stats(x, tw).mean(), keep).double()
    w = [1.0] * 50 if tw is None else tw.tolist()
    full = [sum(wn * float(v[i] @ x[n]) for n, wn in enumerate(w)) / sum(w) for i in range(4)]
    pruned = [sum(wn * float(v[i, keep] @ x[n, keep]) for n, wn in enumerate(w)) / sum(w) + float(b[i])
              for i in range(4)]
    assert pruned == pytest.approx(full, rel=1e-5, abs=1e-5)
    without = [p - float(bi) for p, bi in zip(pruned, b)]
    assert without != pytest.approx(full, rel=1e-3, abs=1e-3)  # the bias is doing the work


# ---- costs -----------------------------------------------------------------------------------------
def test_unit_costs():
    assert unit_costs(64, 16, 1) == (4 * 64 * 16, 3 * 64)  # MHA head 4 d hd, channel 3 d
    # SmolLM2-135M: d 576, hd 64, 9 query / 3 KV heads -> n_rep 3
    head, chan = unit_costs(576, 64, 3)
    assert (head, chan) == (294912, 1728)
    # 3 groups = q (576x576) + k, v (576x192 each) + o (576x576)
    assert 3 * head == 576 * 576 + 2 * 576 * 192 + 576 * 576
    with pytest.raises(ValueError, match="n_rep"):
        unit_costs(576, 64, 0)


# ---- uniform selection ---------------------------------------------------------------------------
def test_n_remove():
    assert n_remove(4, 0.5) == 2
    assert n_remove(3, 0.3) == 1  # round(0.9)
    assert n_remove(2, 0.99) == 1  # round(1.98) = 2, never all
    assert n_remove(5, 0.5) == 2  # round half to even: 2.5 -> 2
    assert n_remove(7, 0.5) == 4  # 3.5 -> 4
    assert n_remove(10, 0.0) == 0
    assert n_remove(1, 0.9) == 0
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            n_remove(4, bad)


def test_select_uniform_counts_lowest_and_ties():
    heads = [torch.tensor([0.3, 0.1, 0.4, 0.2]), torch.tensor([1.0, 1.0, 1.0, 1.0])]
    chans = [torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 0.0]), torch.tensor([2.0, 2.0, 1.0, 1.0, 3.0, 3.0])]
    kh, kc = select_uniform(heads, chans, 0.5)
    assert [k.tolist() for k in kh] == [[T, F, T, F], [F, F, T, T]]  # ties: lower index first
    assert [k.tolist() for k in kc] == [[T, F, T, F, T, F], [F, T, F, F, T, T]]
    assert all(k.dtype == torch.bool for k in kh + kc)
    kh, kc = select_uniform([torch.tensor([3.0, 1.0, 2.0])], [torch.tensor([0.5, 0.2])], 0.3)
    assert kh[0].tolist() == [T, F, T]  # 3 units at .3 -> 1
    assert kc[0].tolist() == [T, F]  # 2 units at .3 -> round(.6) = 1
    kh, kc = select_uniform([torch.tensor([2.0, 1.0])], [torch.tensor([1.0, 2.0])], 0.99)
    assert kh[0].tolist() == [T, F] and kc[0].tolist() == [F, T]  # never all
    kh, kc = select_uniform([torch.tensor([2.0, 1.0])], [torch.tensor([1.0, 2.0])], 0.0)
    assert kh[0].all() and kc[0].all()
    with pytest.raises(ValueError, match="same blocks"):
        select_uniform(heads, chans[:1], 0.5)
    with pytest.raises(ValueError, match="ratio"):
        select_uniform(heads, chans, 1.0)


# ---- adaptive selection --------------------------------------------------------------------------
def _adaptive(method, attn, mlp, unit_size, hc, cc, ratio):
    a = [torch.tensor(t, dtype=D) for t in attn]
    m = [torch.tensor(t, dtype=D) for t in mlp]
    kh, kc, removed, total = select_adaptive(method, a, m, unit_size, hc, cc, ratio)
    return [k.tolist() for k in kh], [k.tolist() for k in kc], removed, total


def test_select_adaptive_hand_built_two_blocks():
    # unit_size 2, head cost 4, channel cost 1. Standardised (std with n - 1):
    #   block 0 attn [0, 0, 2, 2]: z = [-a, -a, a, a], a = 1 / sqrt(4/3) = .866 -> heads [-.866, .866]
    #   block 1 attn [1, 3, 3, 1]: z = [-b, b, b, -b] -> heads [0, 0] exactly
    #   block 0 mlp [1, 2, 3] (mean 2, std 1): [-1, 0, 1]; block 1 mlp [30, 10, 20]: [1, -1, 0]
    # total = 4 heads * 4 + 6 channels = 22; ratio .5 -> target 11. Ascending, ties heads first:
    #   ch b0#0 (1), ch b1#1 (2), head b0#0 (6), head b1#0 (10), head b1#1 skipped (block 1's last
    #   head), ch b0#1 (11 >= 11: stop). Channels first at the tie 0 would remove ch b0#1, ch b1#2
    #   and then head b1#0 (12).
    kh, kc, removed, total = _adaptive("wanda", [[0, 0, 2, 2], [1, 3, 3, 1]], [[1, 2, 3], [30, 10, 20]],
                                       2, 4, 1, 0.5)
    assert (removed, total) == (11, 22)
    assert kh == [[F, T], [F, T]]
    assert kc == [[F, F, T], [T, F, T]]


def test_select_adaptive_constant_block_and_tie_order():
    # block 0 is constant (std 0 counts as 1): every z is 0. Block 1: attn [0, 0, 2, 2] -> heads
    # [-.866, .866]; mlp [1, 2, 3] -> [-1, 0, 1]. Head cost 2, channel cost 1, total 14, target 7.
    # Ascending, ties heads, then block, then index: ch b1#0 (1), head b1#0 (3), head b0#0 (5),
    # head b0#1 skipped (last head), ch b0#0 (6), ch b0#1 (7: stop); ch b1#1 (also 0) stays.
    kh, kc, removed, total = _adaptive("magnitude", [[2, 2, 2, 2], [0, 0, 2, 2]], [[1, 1, 1], [1, 2, 3]],
                                       2, 2, 1, 0.5)
    assert (removed, total) == (7, 14)
    assert kh == [[F, T], [F, T]]
    assert kc == [[F, F, T], [F, T, T]]


def test_select_adaptive_std_is_unbiased():
    # attn [0, 2], unit 1: z = -+.7071 (n - 1) or -+1 (n). mlp [0, 1, 4]: mean 5/3, sum of squared
    # deviations 26/3; channel 0: z = -(5/3) / sqrt(13/3) = -.8006 (n - 1) or -.9806 (n).
    # One unit goes (costs 1, total 5, ratio .2): channel 0 with std n - 1 (head 0 with std n).
    kh, kc, removed, total = _adaptive("magnitude", [[0, 2]], [[0, 1, 4]], 1, 1, 1, 0.2)
    assert (kh, kc, removed, total) == ([[T, T]], [[F, T, T]], 1, 5)


def test_select_adaptive_flap_squares_attention_scores():
    # attn [0, 3, 2, 2], unit 2: plain head means 1.5 < 2 (head 0 lowest); squared [0, 9, 4, 4]:
    # head means 4.5 > 4 (head 1 lowest). The single MLP channel is protected. Costs 1, total 3,
    # ratio .3 -> one head goes.
    assert _adaptive("wanda", [[0, 3, 2, 2]], [[5]], 2, 1, 1, 0.3)[:2] == ([[F, T]], [[T]])
    assert _adaptive("flap", [[0, 3, 2, 2]], [[5]], 2, 1, 1, 0.3)[:2] == ([[T, F]], [[T]])


def _random_blocks(n_blocks: int, heads: int, unit: int, inter: int, gen: torch.Generator):
    attn = [torch.rand(heads * unit, generator=gen, dtype=D) * (i + 1) for i in range(n_blocks)]
    mlp = [torch.rand(inter, generator=gen, dtype=D) * 10 ** i for i in range(n_blocks)]
    return attn, mlp


@pytest.mark.parametrize("method", SP_METHODS)
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 0.7])
def test_select_adaptive_reaches_target_within_one_unit(method, ratio):
    gen = torch.Generator().manual_seed(7)
    attn, mlp = _random_blocks(4, 6, 8, 40, gen)
    hc, cc = unit_costs(16, 8, 2)  # (512, 48)
    kh, kc, removed, total = select_adaptive(method, attn, mlp, 8, hc, cc, ratio)
    assert total == 4 * (6 * hc + 40 * cc)
    assert removed == sum(int((~k).sum()) * hc for k in kh) + sum(int((~k).sum()) * cc for k in kc)
    target = ratio * total
    assert target <= removed < target + max(hc, cc)
    assert all(k.shape == (6,) for k in kh) and all(k.shape == (40,) for k in kc)
    assert all(k.any() for k in kh + kc)


def test_select_adaptive_never_empties_a_block(caplog):
    # ratio .99 cannot be reached: everything but each block's last head and channel goes, and the
    # survivor is the block's highest-scoring unit
    gen = torch.Generator().manual_seed(3)
    attn, mlp = _random_blocks(3, 4, 2, 5, gen)
    attn[1] = attn[1] * 1e-6  # block 1's raw scores are by far the lowest
    with caplog.at_level(logging.WARNING, logger="srclib.pruning.structured"):
        kh, kc, removed, total = select_adaptive("wanda", attn, mlp, 2, 10, 3, 0.99)
    assert "target" in caplog.text
    for i in range(3):
        heads = attn[i].reshape(4, 2).mean(1)
        assert kh[i].tolist() == [j == int(torch.argmax(heads)) for j in range(4)]
        assert kc[i].tolist() == [j == int(torch.argmax(mlp[i])) for j in range(5)]
    assert removed == 3 * (3 * 10 + 4 * 3) and total == 3 * (4 * 10 + 5 * 3)


@pytest.mark.parametrize("method", SP_METHODS)
def test_select_adaptive_block_scale_is_irrelevant(method):
    gen = torch.Generator().manual_seed(11)
    attn, mlp = _random_blocks(3, 4, 4, 12, gen)
    base = select_adaptive(method, attn, mlp, 4, 20, 3, 0.4)
    attn[1], mlp[1] = attn[1] * 100, mlp[1] * 100
    scaled = select_adaptive(method, attn, mlp, 4, 20, 3, 0.4)
    for a, b in zip(base[0] + base[1], scaled[0] + scaled[1]):
        assert torch.equal(a, b)
    assert base[2:] == scaled[2:]
    # not a trivial selection: some heads and channels of several blocks go
    assert sum(int((~k).sum()) for k in base[0]) > 0 and sum(int((~k).sum()) for k in base[1]) > 0


def test_select_adaptive_validation():
    a, m = [torch.rand(4, dtype=D)], [torch.rand(3, dtype=D)]
    with pytest.raises(ValueError, match="ratio"):
        select_adaptive("flap", a, m, 2, 4, 1, 1.0)
    with pytest.raises(ValueError, match="unit_size"):
        select_adaptive("flap", a, m, 0, 4, 1, 0.5)
    with pytest.raises(ValueError, match="divisible by unit_size=3"):
        select_adaptive("flap", a, m, 3, 4, 1, 0.5)
    with pytest.raises(ValueError, match="same blocks"):
        select_adaptive("flap", a, m + m, 2, 4, 1, 0.5)
    with pytest.raises(ValueError, match="magnitude.*wanda.*flap"):
        select_adaptive("owl", a, m, 2, 4, 1, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        select_adaptive("flap", [torch.tensor([0.0, float("nan")])], m, 1, 4, 1, 0.5)
