"""Every uncertainty, test and interval the reports state (numpy / scipy only).

The unit of replication is a prompt, a window, an item or a seed: callers keep unit-level values
and compare two checkpoints on the same units (``paired=True``) where they can. Every comparison
is a :class:`Comparison`: the effect ``diff`` (always "b minus a"), its 95% interval
``[low, high]``, a two-sided ``p_value``, the number of units ``n`` and ``mde``, the smallest
detectable effect of the design. The choices, stated once:

Effect and interval (:func:`compare`)
    ``diff = mean(b) - mean(a)``. The 95% interval is a t-interval. Paired: on the per-unit
    differences ``d = b - a``, ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)`` (sd with ddof 1),
    the interval of ``scipy.stats.ttest_rel(b, a)``. Unpaired: Welch,
    ``diff +- t_{0.975, df} * se`` with ``se = sqrt(var_a/n_a + var_b/n_b)`` (ddof 1) and the
    Welch-Satterthwaite ``df``, the interval of ``scipy.stats.ttest_ind(b, a, equal_var=False)``.
    With zero spread (``se == 0``) the interval is ``[diff, diff]``.

p-value (:func:`compare`), a randomization test of the difference in means, two-sided on ``|stat|``
    Unpaired: permutation test of ``mean(b) - mean(a)`` over relabelings of the pooled units.
    Exact (every one of the ``C(n_a + n_b, n_a)`` relabelings, ``p = #{|stat*| >= |stat|} / C``,
    the observed labeling included) when ``C <= EXACT_RELABELINGS`` (20000); otherwise
    ``n_resamples`` (default 9999) random permutations from ``numpy.random.default_rng(seed)``
    and ``p = (1 + #{|stat*| >= |stat|}) / (1 + n_resamples)``. Paired: sign-flip test of
    ``mean(d)``, exact over all ``2**n`` sign patterns when ``n <= EXACT_SIGN_FLIPS`` (16), else
    ``n_resamples`` random flips with the same formula. ``>=`` allows a float tie of ``1e-9``
    times the largest absolute (centered) value, so relabelings that tie the observed statistic
    count whatever the summation order. ``diff == 0`` gives ``p = 1``. Same seed, same p.

Units ``n``
    Paired: the number of pairs. Unpaired: ``len(a) + len(b)``, the total number of units.

Smallest detectable effect ``mde`` (power 0.8, two-sided alpha 0.05)
    ``mde = (z_{0.975} + z_{0.80}) * se`` (normal quantiles, 1.960 + 0.842 = 2.802), with ``se``
    the standard error of the difference: paired ``sd(d) / sqrt(n)``, unpaired
    ``sqrt(var_a/n_a + var_b/n_b)``. The normal quantiles make it slightly optimistic for a
    handful of units (the t-test needs ``t`` quantiles). Zero spread gives ``mde = 0``.

Accuracy against chance (:func:`versus_chance`)
    ``diff = accuracy - chance``; exact two-sided binomial test
    (``scipy.stats.binomtest(k, n, chance).pvalue``); Clopper-Pearson 95% interval of the accuracy
    (``proportion_ci(method="exact")``), reported shifted by ``-chance`` so ``diff``, ``low`` and
    ``high`` share a scale; ``mde = (z_{0.975} + z_{0.80}) * sqrt(chance * (1 - chance) / n)``,
    the accuracy gain over chance detectable with power 0.8 (normal approximation, null sd).

Two checkpoints on the same items (:func:`paired_accuracy`)
    ``diff = mean(b) - mean(a)``. With ``b01 = #(a wrong, b right)`` and
    ``b10 = #(a right, b wrong)``: exact McNemar ``p = binomtest(b01, b01 + b10, 0.5).pvalue``
    (1.0 without discordant pairs). Wald interval of the paired difference in proportions,
    ``diff +- z_{0.975} * se`` with ``se = sqrt((b01 + b10) - (b01 - b10)**2 / n) / n`` (it is
    ``[0, 0]`` without discordant pairs); ``mde = (z_{0.975} + z_{0.80}) * se``, where ``se = 1/n``
    (as if one item were discordant) when no pair is discordant.

Helpers: :func:`combine_seeds` averages seeds per unit before any test (seeds > 1 are repeated
measurements of one unit, not more units); :func:`mean_se` is a mean and its standard error over
units; :func:`verdict` turns a comparison into "holds" / "opposite" / "no difference larger than
<mde>".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = ["Comparison", "compare", "versus_chance", "paired_accuracy", "combine_seeds", "mean_se",
           "verdict", "ALPHA", "POWER", "LEVEL", "EXACT_RELABELINGS", "EXACT_SIGN_FLIPS", "N_RESAMPLES"]

ALPHA = 0.05  # two-sided level of every test and of the mde
POWER = 0.80  # power at which the mde is detected
LEVEL = 0.95  # confidence level of every interval
EXACT_RELABELINGS = 20000  # unpaired: enumerate every relabeling up to this many
EXACT_SIGN_FLIPS = 16  # paired: enumerate all 2**n sign patterns up to this many pairs
N_RESAMPLES = 9999  # random permutations / sign flips beyond those sizes
_TIE = 1e-9  # float tolerance of ">=", relative to the data's largest absolute value
_CHUNK = 1 << 20  # values per batch of random resamples (bounds memory for many units)

_Z_LEVEL = float(sps.norm.ppf(1 - (1 - LEVEL) / 2))
_Z_MDE = float(sps.norm.ppf(1 - ALPHA / 2) + sps.norm.ppf(POWER))


@dataclass(frozen=True)
class Comparison:
    """Effect ``diff`` (b minus a) with its 95% interval, two-sided p, units and smallest
    detectable effect (power 0.8, alpha 0.05); ``test`` names the procedure, ``a_mean`` and
    ``b_mean`` the two sides (``diff == b_mean - a_mean``)."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    mde: float
    test: str = ""
    a_mean: float | None = None
    b_mean: float | None = None

    def significant(self, alpha: float = ALPHA) -> bool:
        """Whether the two-sided test rejects "no difference" at ``alpha`` (p < alpha)."""
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python values, ready for a metrics JSON file."""
        out = asdict(self)
        for key in ("diff", "low", "high", "p_value", "mde", "a_mean", "b_mean"):
            out[key] = None if out[key] is None else float(out[key])
        out["n"] = int(out["n"])
        return out


# ----------------------------------------------------------------------------- input checks


def _units(x: Any, name: str, min_n: int = 2) -> np.ndarray:
    """``x`` as a finite 1-D float array of at least ``min_n`` units, or a ValueError naming it."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers: {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per unit), got shape {arr.shape}")
    if len(arr) < min_n:
        raise ValueError(f"{name} needs at least {min_n} unit{'s' if min_n > 1 else ''}, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf (at unit {int(np.flatnonzero(~np.isfinite(arr))[0])})")
    return arr


def _correct(x: Any, name: str) -> np.ndarray:
    """``x`` as a 1-D int array of 0/1 (bools allowed) with at least one item."""
    arr = _units(x, name, min_n=1)
    if not np.isin(arr, (0.0, 1.0)).all():
        bad = arr[~np.isin(arr, (0.0, 1.0))][0]
        raise ValueError(f"{name} must hold only 0/1 (or bool) values, got {bad!r}")
    return arr.astype(np.int64)


def _n_resamples(n_resamples: int) -> int:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    return int(n_resamples)


# ----------------------------------------------------------------------------- randomization tests


def _p_value(null_abs: np.ndarray, obs_abs: float, tie: float, exact: bool) -> float:
    """Two-sided p from ``|stat*|``: exact ``#/C`` (the observed one is among them) or
    ``(1 + #) / (1 + R)`` for R random resamples."""
    hits = int(np.count_nonzero(null_abs >= obs_abs - tie))
    return hits / len(null_abs) if exact else (1 + hits) / (1 + len(null_abs))


def _subset_sums_exact(x: np.ndarray, k: int) -> np.ndarray:
    """Sum of ``x`` over every k-subset of its units.  # (C(N, k),)"""
    idx = np.array(list(itertools.combinations(range(len(x)), k)), dtype=np.intp)  # (C, k)
    return x[idx].sum(axis=1)


def _subset_sums_random(x: np.ndarray, k: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of ``x`` over the first k units of ``n_resamples`` random permutations.  # (R,)"""
    out = np.empty(n_resamples)
    step = max(1, _CHUNK // len(x))
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        perm = rng.permuted(np.broadcast_to(x, (rows, len(x))), axis=1)  # (rows, N)
        out[start:start + rows] = perm[:, :k].sum(axis=1)
    return out


def _comb_at_most(n: int, k: int, limit: int) -> bool:
    """Whether C(n, k) <= limit, for k <= n / 2, without computing a huge C(n, k)."""
    c = 1
    for i in range(1, k + 1):
        c = c * (n - k + i) // i  # C(n - k + i, i): grows with i
        if c > limit:
            return False
    return True


def _permutation_p(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> float:
    """Two-sided permutation p of ``mean(b) - mean(a)`` (module docstring)."""
    pooled = np.concatenate([a, b])
    x = pooled - pooled.mean()  # centered: sum 0, so |diff*| = |sum of one group| * N / (n_a n_b)
    k = min(len(a), len(b))  # enumerate (or sample) the smaller group
    scale = len(x) / (len(a) * len(b))
    observed = abs(b.mean() - a.mean())
    tie = _TIE * float(np.abs(x).max())
    exact = _comb_at_most(len(x), k, EXACT_RELABELINGS)
    if exact:
        sums = _subset_sums_exact(x, k)
    else:
        sums = _subset_sums_random(x, k, n_resamples, np.random.default_rng(seed))
    return _p_value(np.abs(sums) * scale, observed, tie, exact)


def _sign_flip_p(d: np.ndarray, n_resamples: int, seed: int) -> float:
    """Two-sided sign-flip p of ``mean(d)`` (module docstring)."""
    n = len(d)
    observed = abs(d.mean())
    tie = _TIE * float(np.abs(d).max())
    exact = n <= EXACT_SIGN_FLIPS
    if exact:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1  # (2**n, n)
        null = np.abs((1 - 2 * bits) @ d) / n
        return _p_value(null, observed, tie, exact)
    rng = np.random.default_rng(seed)
    null = np.empty(n_resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        signs = 1 - 2 * rng.integers(0, 2, size=(rows, n), dtype=np.int8)  # (rows, n)
        null[start:start + rows] = np.abs(signs @ d) / n
    return _p_value(null, observed, tie, exact)


# ----------------------------------------------------------------------------- intervals


def _t_interval(diff: float, se: float, df: float) -> tuple[float, float]:
    """``diff +- t_{0.975, df} * se``; ``[diff, diff]`` when se is 0."""
    if se == 0:
        return diff, diff
    half = float(sps.t.ppf(1 - (1 - LEVEL) / 2, df)) * se
    return diff - half, diff + half


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch standard error of ``mean(b) - mean(a)`` and its Welch-Satterthwaite df."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 0.0, float(len(a) + len(b) - 2)  # no spread: the interval is [diff, diff] anyway
    r = va / (va + vb)  # df = (va + vb)**2 / (va**2/(n_a-1) + vb**2/(n_b-1)), without underflow
    return math.sqrt(va + vb), 1.0 / (r ** 2 / (len(a) - 1) + (1 - r) ** 2 / (len(b) - 1))


# ----------------------------------------------------------------------------- public API


def compare(a: Any, b: Any, *, paired: bool, seed: int = 0, n_resamples: int = N_RESAMPLES) -> Comparison:
    """Difference of means ``mean(b) - mean(a)`` over units, with a 95% t-interval (paired: on
    the differences, df n-1; unpaired: Welch, Welch-Satterthwaite df), a two-sided randomization
    p (paired: sign flips of the differences; unpaired: permutations of the labels; exact when
    small, else ``n_resamples`` draws from ``default_rng(seed)``, ``p = (1 + #) / (1 + R)``),
    ``n`` (pairs, or ``len(a) + len(b)`` unpaired) and ``mde = 2.802 * se``
    (power 0.8, alpha 0.05). Details in the module docstring.

    Raises ValueError naming ``a`` or ``b`` for fewer than 2 units or non-finite values, and
    for ``paired=True`` with unequal lengths.
    """
    a, b = _units(a, "a"), _units(b, "b")
    n_resamples = _n_resamples(n_resamples)
    diff = float(b.mean() - a.mean())
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired=True needs equal lengths, got len(a)={len(a)} and len(b)={len(b)}")
        d = b - a
        diff = float(d.mean())
        se, df, n = float(d.std(ddof=1)) / math.sqrt(len(d)), float(len(d) - 1), len(d)
        p, test = _sign_flip_p(d, n_resamples, seed), "paired t-interval, sign-flip test"
    else:
        (se, df), n = _welch(a, b), len(a) + len(b)
        p, test = _permutation_p(a, b, n_resamples, seed), "Welch t-interval, permutation test"
    low, high = _t_interval(diff, se, df)
    return Comparison(diff, low, high, p, n, _Z_MDE * se, test, float(a.mean()), float(b.mean()))


def versus_chance(correct: Any, chance: float) -> Comparison:
    """Accuracy of 0/1 ``correct`` against ``chance``: ``diff = accuracy - chance``, exact
    two-sided binomial p, Clopper-Pearson 95% interval of the accuracy shifted by ``-chance``,
    ``mde = 2.802 * sqrt(chance (1 - chance) / n)``.

    Raises ValueError for ``chance`` outside (0, 1) and for ``correct`` not 0/1 or empty.
    """
    if not (isinstance(chance, (int, float, np.integer, np.floating)) and 0 < chance < 1):
        raise ValueError(f"chance must be a number in (0, 1), got {chance!r}")
    chance = float(chance)
    x = _correct(correct, "correct")
    k, n = int(x.sum()), len(x)
    res = sps.binomtest(k, n, chance)
    ci = res.proportion_ci(confidence_level=LEVEL, method="exact")
    accuracy = k / n
    return Comparison(accuracy - chance, float(ci.low) - chance, float(ci.high) - chance, float(res.pvalue), n,
                      _Z_MDE * math.sqrt(chance * (1 - chance) / n), "exact binomial, Clopper-Pearson",
                      chance, accuracy)


def paired_accuracy(a_correct: Any, b_correct: Any) -> Comparison:
    """Two checkpoints scored 0/1 on the same items: ``diff = mean(b) - mean(a)``, exact McNemar
    p on the discordant pairs, Wald 95% interval of the paired difference, ``n`` items,
    ``mde = 2.802 * se`` (``se = 1/n`` without discordant pairs).

    Raises ValueError naming ``a_correct``/``b_correct`` for values not 0/1, no items or
    unequal lengths.
    """
    a, b = _correct(a_correct, "a_correct"), _correct(b_correct, "b_correct")
    if len(a) != len(b):
        raise ValueError(f"a_correct and b_correct must score the same items, got len(a_correct)={len(a)} "
                         f"and len(b_correct)={len(b)}")
    n = len(a)
    b01, b10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    diff = (b01 - b10) / n
    p = float(sps.binomtest(b01, b01 + b10, 0.5).pvalue) if b01 + b10 else 1.0
    se = math.sqrt(max(0.0, (b01 + b10) - (b01 - b10) ** 2 / n)) / n
    half = _Z_LEVEL * se
    mde = _Z_MDE * (se if b01 + b10 else 1 / n)
    return Comparison(diff, diff - half, diff + half, p, n, mde, "exact McNemar, Wald interval",
                      float(a.mean()), float(b.mean()))


def combine_seeds(values: Any) -> np.ndarray:
    """Mean over seeds per unit: ``values`` (n_seeds, n_units) -> (n_units,). Seeds are repeated
    measurements of the same unit, so they are averaged before testing, never pooled as units.

    Raises ValueError naming ``values`` unless it is a finite 2-D array with at least one seed.
    """
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"values must be an array of numbers: {err}") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"values must be 2-D (n_seeds, n_units), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("values contains NaN or inf")
    return arr.mean(axis=0)  # (n_units,)


def mean_se(x: Any) -> tuple[float, float]:
    """Mean over units and its standard error ``sd(x, ddof=1) / sqrt(n)``.

    Raises ValueError naming ``x`` for fewer than 2 units or non-finite values.
    """
    arr = _units(x, "x")
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(len(arr)))


_DIRECTION = {"higher": 1.0, "lower": -1.0}  # the sign of diff (b - a) that the claim expects


def verdict(c: Comparison, *, better: str = "higher", alpha: float = ALPHA) -> str:
    """What ``c`` says about the claim "b is ``better``" (``"higher"``: diff > 0 expected;
    ``"lower"``: diff < 0, e.g. perplexity): ``"holds"`` when significant (p < alpha) in the
    expected direction, ``"opposite"`` when significant the other way, otherwise
    ``"no difference larger than {mde:.3g}"``.
    """
    if better not in _DIRECTION:
        raise ValueError(f"better must be one of {sorted(_DIRECTION)}, got {better!r}")
    if c.significant(alpha) and c.diff != 0:
        return "holds" if c.diff * _DIRECTION[better] > 0 else "opposite"
    return f"no difference larger than {c.mde:.3g}"
