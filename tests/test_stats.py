"""srclib.stats: known answers against scipy and hand-computed cases, properties on simulated data
(null rejection rate, 1/sqrt(n) interval width, power at the mde), bad inputs name the parameter."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats as sps
from hypothesis import given, settings
from hypothesis import strategies as hst

from srclib import stats
from srclib.stats import Comparison, combine_seeds, compare, mean_se, paired_accuracy, verdict, versus_chance

Z_MDE = sps.norm.ppf(0.975) + sps.norm.ppf(0.80)  # 2.8016


def _abs_mean_diff(x, y, axis):
    return np.abs(np.mean(y, axis=axis) - np.mean(x, axis=axis))


def _abs_mean_paired(x, y, axis):
    return np.abs(np.mean(y - x, axis=axis))


def _band(rate: float, reps: int, k: float = 3.5) -> float:
    return k * math.sqrt(rate * (1 - rate) / reps)


# ----------------------------------------------------------------------------- known answers: scipy


@pytest.mark.parametrize("na,nb,seed", [(5, 7, 0), (8, 8, 1), (3, 9, 2), (30, 45, 3)])
def test_welch_interval_matches_scipy(na, nb, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, na), rng.normal(0.5, 2, nb)
    c = compare(a, b, paired=False, n_resamples=99)
    ci = sps.ttest_ind(b, a, equal_var=False).confidence_interval()
    assert c.diff == pytest.approx(b.mean() - a.mean(), abs=1e-12)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high), abs=1e-10)
    assert c.n == na + nb
    assert c.mde == pytest.approx(Z_MDE * math.sqrt(a.var(ddof=1) / na + b.var(ddof=1) / nb))


@pytest.mark.parametrize("n,seed", [(3, 0), (10, 1), (25, 2)])
def test_paired_interval_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, n)
    b = a + rng.normal(0.3, 0.5, n)
    c = compare(a, b, paired=True, n_resamples=99)
    ci = sps.ttest_rel(b, a).confidence_interval()
    assert c.diff == pytest.approx(np.mean(b - a), abs=1e-12)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high), abs=1e-10)
    assert c.n == n
    assert c.mde == pytest.approx(Z_MDE * np.std(b - a, ddof=1) / math.sqrt(n))


@pytest.mark.parametrize("na,nb,seed", [(4, 6, 0), (7, 5, 1), (6, 6, 2), (2, 12, 3)])
def test_permutation_p_matches_scipy_exact(na, nb, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, na), rng.normal(0.8, 1, nb)
    assert math.comb(na + nb, na) <= stats.EXACT_RELABELINGS  # the exact regime
    ref = sps.permutation_test((a, b), _abs_mean_diff, permutation_type="independent",
                               alternative="greater", n_resamples=np.inf, vectorized=True)
    assert compare(a, b, paired=False).p_value == pytest.approx(ref.pvalue, abs=1e-12)


def test_permutation_p_with_equal_sizes_is_scipys_two_sided_test():
    # equal group sizes: the null of mean(b) - mean(a) is symmetric, so |stat| is 2 x one tail
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 6), rng.normal(1, 1, 6)
    ref = sps.permutation_test((a, b), lambda x, y, axis: np.mean(y, axis) - np.mean(x, axis),
                               permutation_type="independent", n_resamples=np.inf, vectorized=True)
    assert compare(a, b, paired=False).p_value == pytest.approx(ref.pvalue, abs=1e-12)


def test_permutation_p_with_tied_integer_data_matches_scipy():
    a, b = np.array([1, 2, 2, 3, 3]), np.array([2, 3, 4, 4])
    ref = sps.permutation_test((a, b), _abs_mean_diff, permutation_type="independent",
                               alternative="greater", n_resamples=np.inf, vectorized=True)
    assert compare(a, b, paired=False).p_value == pytest.approx(ref.pvalue, abs=1e-12)


@pytest.mark.parametrize("n,seed", [(5, 0), (11, 1), (16, 2)])
def test_sign_flip_p_matches_scipy_exact(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, n)
    b = a + rng.normal(0.4, 1, n)
    ref = sps.permutation_test((a, b), _abs_mean_paired, permutation_type="samples",
                               alternative="greater", n_resamples=np.inf, vectorized=True)
    assert compare(a, b, paired=True).p_value == pytest.approx(ref.pvalue, abs=1e-12)


@pytest.mark.parametrize("k,n,chance", [(7, 10, 0.5), (30, 100, 0.25), (0, 12, 0.1), (50, 50, 0.5)])
def test_versus_chance_matches_binomtest(k, n, chance):
    correct = np.r_[np.ones(k), np.zeros(n - k)].astype(bool)
    c = versus_chance(correct, chance)
    ref = sps.binomtest(k, n, chance)
    ci = ref.proportion_ci(confidence_level=0.95, method="exact")
    assert c.diff == pytest.approx(k / n - chance)
    assert c.p_value == pytest.approx(ref.pvalue)
    assert (c.low, c.high) == pytest.approx((ci.low - chance, ci.high - chance))
    assert c.low <= c.diff <= c.high
    assert c.n == n
    assert c.mde == pytest.approx(Z_MDE * math.sqrt(chance * (1 - chance) / n))
    assert (c.a_mean, c.b_mean) == pytest.approx((chance, k / n))


# ----------------------------------------------------------------------------- hand-computed cases


def test_paired_constant_difference():
    c = compare([1, 2, 3], [2, 3, 4], paired=True)
    # d = [1, 1, 1]: sd 0, so [1, 1]; of the 8 sign patterns only +++ and --- reach |mean| 1
    assert (c.diff, c.low, c.high, c.p_value, c.n, c.mde) == (1.0, 1.0, 1.0, 0.25, 3, 0.0)


def test_unpaired_small_case_by_hand():
    a, b = [1, 2, 3], [2, 3, 4]
    c = compare(a, b, paired=False)
    # Welch: se = sqrt(1/3 + 1/3), df = 4
    half = sps.t.ppf(0.975, 4) * math.sqrt(2 / 3)
    assert (c.diff, c.n) == (1.0, 6)
    assert (c.low, c.high) == pytest.approx((1 - half, 1 + half))
    # the 20 relabelings of the pooled units, counted by hand
    pooled = a + b
    stats_ = [abs(np.mean([pooled[i] for i in range(6) if i not in g]) - np.mean([pooled[i] for i in g]))
              for g in itertools.combinations(range(6), 3)]
    assert c.p_value == pytest.approx(sum(s >= 1 - 1e-12 for s in stats_) / 20)


def test_zero_spread_gives_exact_diff_and_no_nan():
    c = compare([1, 1, 1], [2, 2, 2], paired=False)
    # only the observed labeling and its mirror reach |diff| = 1 among C(6, 3) = 20
    assert (c.diff, c.low, c.high, c.p_value, c.mde) == (1.0, 1.0, 1.0, 0.1, 0.0)
    same = compare([3.5] * 4, [3.5] * 4, paired=False)
    assert (same.diff, same.low, same.high, same.p_value, same.mde) == (0.0, 0.0, 0.0, 1.0, 0.0)
    flat = compare([2.0] * 20, [2.0] * 20, paired=True)
    assert (flat.diff, flat.low, flat.high, flat.p_value, flat.mde) == (0.0, 0.0, 0.0, 1.0, 0.0)
    shifted = compare(np.zeros(20), np.ones(20), paired=True, n_resamples=999)
    assert shifted.p_value == pytest.approx(1 / 1000, abs=2 / 1000) and shifted.low == shifted.high == 1.0


def test_one_flat_group_uses_the_other_groups_df():
    a, b = [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0]
    c = compare(a, b, paired=False)
    half = sps.t.ppf(0.975, 2) * math.sqrt(1 / 3)  # df = n_b - 1 when var_a = 0
    assert (c.low, c.high) == pytest.approx((2 - half, 2 + half))
    assert all(math.isfinite(v) for v in (c.low, c.high, c.p_value, c.mde))


def test_mcnemar_hand_case():
    # b01 = 9 (a wrong, b right), b10 = 2 (a right, b wrong), 5 concordant
    a = [0] * 9 + [1] * 2 + [1] * 3 + [0] * 2
    b = [1] * 9 + [0] * 2 + [1] * 3 + [0] * 2
    c = paired_accuracy(a, b)
    n = 16
    assert c.p_value == pytest.approx(2 * sum(math.comb(11, k) for k in range(3)) / 2 ** 11)  # 134/2048
    assert c.diff == pytest.approx(7 / n) == np.mean(b) - np.mean(a)
    se = math.sqrt(11 - 7 ** 2 / n) / n
    assert (c.low, c.high) == pytest.approx((7 / n - 1.959964 * se, 7 / n + 1.959964 * se), rel=1e-6)
    assert c.mde == pytest.approx(Z_MDE * se)
    assert c.n == n


def test_mcnemar_without_discordant_pairs():
    c = paired_accuracy([1, 0, 1, 1], [True, False, True, True])
    assert (c.diff, c.low, c.high, c.p_value, c.n) == (0.0, 0.0, 0.0, 1.0, 4)
    assert c.mde == pytest.approx(Z_MDE / 4)  # se = 1/n: as if one item were discordant


def test_random_regime_p_formula_and_accuracy(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 8), rng.normal(0.9, 1, 8)
    d_a = rng.normal(0, 1, 12)
    d_b = d_a + rng.normal(0.5, 1, 12)
    exact_u, exact_p = compare(a, b, paired=False).p_value, compare(d_a, d_b, paired=True).p_value
    monkeypatch.setattr(stats, "EXACT_RELABELINGS", 0)
    monkeypatch.setattr(stats, "EXACT_SIGN_FLIPS", 0)
    for exact, c in ((exact_u, compare(a, b, paired=False, n_resamples=9999)),
                     (exact_p, compare(d_a, d_b, paired=True, n_resamples=9999))):
        hits = c.p_value * 10000 - 1  # p = (1 + #) / (1 + R)
        assert hits == pytest.approx(round(hits), abs=1e-6) and hits >= 0
        assert c.p_value == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 9999) + 1e-4)


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 30), rng.normal(0.3, 1, 30)
    for paired in (True, False):
        first = compare(a, b, paired=paired, seed=11, n_resamples=999)
        assert compare(a, b, paired=paired, seed=11, n_resamples=999) == first
        others = {compare(a, b, paired=paired, seed=s, n_resamples=999).p_value for s in range(5)}
        assert len(others) > 1  # the seed drives the random resamples


def test_many_units_exact_count_check_is_cheap():
    # C(20001, 1) > 20000 relabelings: random regime, but counting them must not build a huge number
    c = compare(np.arange(20000.0), [5.0, 7.0], paired=False, n_resamples=19)
    assert 0 < c.p_value <= 1 and c.n == 20002


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("paired", [True, False])
def test_null_rejection_rate_is_alpha(paired):
    rng = np.random.default_rng(100 + paired)
    reps = 400
    rejected = sum(compare(rng.normal(size=20), rng.normal(size=20), paired=paired, seed=i,
                           n_resamples=499).significant(0.05) for i in range(reps))
    assert abs(rejected / reps - 0.05) <= _band(0.05, reps)


def test_interval_width_shrinks_as_one_over_sqrt_n():
    pattern_a, pattern_b = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0, 5.0])

    def width(m: int, paired: bool) -> float:
        c = compare(np.tile(pattern_a, m), np.tile(pattern_b, m), paired=paired, n_resamples=19)
        return c.high - c.low

    for paired in (True, False):
        assert width(40, paired) / width(10, paired) == pytest.approx(0.5, rel=0.05)
    lo, hi = np.tile([0, 1], 50), np.tile([0, 1], 200)
    assert mean_se(hi)[1] / mean_se(lo)[1] == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("paired", [True, False])
def test_power_at_the_mde_is_about_080(paired):
    rng = np.random.default_rng(200 + paired)
    n, reps = 20, 300
    shift = Z_MDE * (1 / math.sqrt(n) if paired else math.sqrt(2 / n))  # the mde of the design
    hits = 0
    for i in range(reps):
        a = rng.normal(size=n)
        b = (a if paired else 0.0) + rng.normal(size=n) + shift
        hits += compare(a, b, paired=paired, seed=i, n_resamples=499).significant()
    assert 0.65 <= hits / reps <= 0.92  # z quantiles: slightly under 0.8 at n = 20


@settings(max_examples=60, deadline=None)
@given(hst.lists(hst.floats(-1e3, 1e3), min_size=2, max_size=9),
       hst.lists(hst.floats(-1e3, 1e3), min_size=2, max_size=9), hst.booleans())
def test_every_comparison_is_finite_and_consistent(a, b, paired):
    if paired:
        b = (b * len(a))[: len(a)]
    c = compare(a, b, paired=paired, n_resamples=49)
    values = (c.diff, c.low, c.high, c.p_value, c.mde)
    assert all(math.isfinite(v) for v in values)
    assert c.low <= c.diff <= c.high and 0 < c.p_value <= 1 and c.mde >= 0
    assert c.diff == pytest.approx(np.mean(b) - np.mean(a), abs=1e-9)
    assert c.n == (len(a) if paired else len(a) + len(b))


# ----------------------------------------------------------------------------- helpers


def test_combine_seeds_averages_per_unit():
    values = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])  # (n_seeds, n_units)
    np.testing.assert_array_equal(combine_seeds(values), [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(combine_seeds([[1.0, 2.0]]), [1.0, 2.0])


def test_mean_se_is_scipys_sem():
    x = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    assert mean_se(x) == pytest.approx((x.mean(), sps.sem(x)))


def test_verdict_and_comparison_helpers():
    up = Comparison(0.3, 0.1, 0.5, 0.01, 50, 0.12)
    down = Comparison(-0.3, -0.5, -0.1, 0.01, 50, 0.12)
    flat = Comparison(0.02, -0.1, 0.14, 0.6, 50, 0.1234)
    assert verdict(up) == "holds" and verdict(down) == "opposite"
    assert verdict(down, better="lower") == "holds" and verdict(up, better="lower") == "opposite"
    assert verdict(flat) == "no difference larger than 0.123"
    assert verdict(up, alpha=0.001) == "no difference larger than 0.12"
    assert up.significant() and not flat.significant()
    d = compare([1.0, 2.0, 4.0], [2.0, 3.0, 7.0], paired=True).to_dict()
    assert json.loads(json.dumps(d)) == d and set(d) >= {"diff", "low", "high", "p_value", "n", "mde"}
    assert type(d["n"]) is int and all(type(d[k]) is float for k in ("diff", "low", "high", "p_value", "mde"))
    with pytest.raises(ValueError, match="better"):
        verdict(up, better="bigger")


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("a,b,match", [
    ([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0], r"^a contains NaN"),
    ([1.0, 2.0, 3.0], [1.0, float("inf"), 3.0], r"^b contains NaN or inf"),
    ([1.0], [1.0, 2.0, 3.0], r"^a needs at least 2 units, got 1"),
    ([1.0, 2.0], [], r"^b needs at least 2 units, got 0"),
    ([[1.0, 2.0]], [1.0, 2.0], r"^a must be 1-D"),
    (["x", "y"], [1.0, 2.0], r"^a must be an array of numbers"),
])
def test_compare_bad_inputs_name_the_parameter(a, b, match):
    for paired in (False, True):
        with pytest.raises(ValueError, match=match):
            compare(a, b, paired=paired)


def test_compare_paired_needs_equal_lengths_and_positive_resamples():
    with pytest.raises(ValueError, match=r"len\(a\)=3 and len\(b\)=4"):
        compare([1, 2, 3], [1, 2, 3, 4], paired=True)
    with pytest.raises(ValueError, match="n_resamples"):
        compare([1, 2, 3], [1, 2, 3], paired=True, n_resamples=0)


@pytest.mark.parametrize("chance", [0, 1, 1.5, -0.1, float("nan"), True, "0.5"])
def test_versus_chance_rejects_a_bad_chance(chance):
    with pytest.raises(ValueError, match="^chance"):
        versus_chance([1, 0, 1], chance)


def test_accuracy_inputs_must_be_zero_one():
    with pytest.raises(ValueError, match=r"^correct must hold only 0/1"):
        versus_chance([1, 0, 2], 0.5)
    with pytest.raises(ValueError, match=r"^correct needs at least 1 unit"):
        versus_chance([], 0.5)
    with pytest.raises(ValueError, match=r"^b_correct must hold only 0/1"):
        paired_accuracy([1, 0], [1, 0.5])
    with pytest.raises(ValueError, match=r"^a_correct contains NaN"):
        paired_accuracy([1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match=r"len\(a_correct\)=2 and len\(b_correct\)=3"):
        paired_accuracy([1, 0], [1, 0, 1])


def test_helpers_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match=r"^values must be 2-D"):
        combine_seeds([1.0, 2.0])
    with pytest.raises(ValueError, match=r"^values contains NaN"):
        combine_seeds([[1.0, float("nan")]])
    with pytest.raises(ValueError, match=r"^x needs at least 2 units"):
        mean_se([1.0])


def test_imports_neither_torch_nor_pandas():
    code = "import sys, srclib.stats; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
