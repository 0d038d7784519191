"""Every mark and finding about pruning, tested on the units both checkpoints share.

The evaluate stage keeps unit-level values beside its metrics (metrics/units/evaluate/<instance>.json,
srclib.stages.evaluate.split_units): per validation window the NLL per token (for the MC-ELBO the
same t and mask draws for every checkpoint of a model: common random numbers) and per task item
correct (1) or not (0), in doc order. Two configurations (e.g. uniform vs sink-aware Wanda at 50%)
are compared on those units, paired (srclib.stats):

* a configuration with several calibration seeds is first averaged per unit over its seeds
  (``srclib.stats.combine_seeds``): the unit of replication stays the window or the item;
* a task column with one seed on each side: exact McNemar on the discordant items
  (``srclib.stats.paired_accuracy``); otherwise (seed-averaged items, windows) a sign-flip test
  on the per-unit differences with a paired t-interval (``srclib.stats.compare(paired=True)``);
* ``average``: the items of every task pooled, each weighted so that the pooled mean is the
  unweighted mean of the task accuracies (weight N / (n_tasks * n_task)); the test runs on the
  weighted per-item values;
* ``ppl``: the test runs on NLL per token (nats); its effect is also shown as the relative change
  of perplexity exp(diff) - 1.

Accuracy effects are in percentage points. A cell is marked only when p < ALPHA in either
direction (better: higher accuracy, lower NLL); every comparison also carries its 95% CI and the
smallest effect the design detects with 80% power (``mde``). p-values are per comparison, not
corrected for the number of comparisons a table holds.

Uncertainty of a single cell (``unit_summary``): the standard error over its units of the
seed-averaged unit values (accuracy: items; perplexity: windows, by the delta method
se(ppl) = ppl * se(mean NLL)). Perplexity of several seeds: exp of the mean NLL.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from srclib import paths, stats
from srclib.files import read_json

__all__ = ["ALPHA", "load_units", "unit_matrix", "unit_summary", "test_pair", "dense_at_chance",
           "verdict_text", "UNITS_ATTR"]

ALPHA = stats.ALPHA
UNITS_ATTR = "units"  # df.attrs key of load_results' frame holding instance -> units file content
AVERAGE, PPL = "average", "ppl"  # as srclib.report.results (not imported: results imports this module)


def load_units(instances: Sequence[str], root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """instance -> metrics/units/evaluate/<instance>.json for the instances whose file exists
    (a missing file leaves that instance without tests: its cells are unmarked and its findings
    say why)."""
    out = {}
    for name in instances:
        p = paths.eval_units(name, root=root)
        if p.is_file():
            data = read_json(p)
            if not isinstance(data.get("tasks"), dict):
                raise ValueError(f"{paths.rel(p, root)}: no 'tasks' mapping; not an evaluate units file")
            out[name] = data
    return out


def _task_items(unit: Mapping[str, Any], task: str, metric: str, where: str) -> tuple[list[int], np.ndarray]:
    t = (unit.get("tasks") or {}).get(task)
    if t is None or metric not in t:
        raise KeyError(f"{where}: no per-item {metric!r} values for task {task!r}")
    vals = np.array([np.nan if v is None else float(v) for v in t[metric]], dtype=float)
    return list(t["doc_id"]), vals


def unit_matrix(units: Mapping[str, Mapping[str, Any]], instances: Sequence[str], column: str,
                tasks: Sequence[str], primary: Mapping[str, str]) -> np.ndarray | None:
    """(n_instances, n_units) unit values of ``column`` for ``instances`` (the seeds of one
    configuration, or one instance), in the one fixed unit order; None when an instance has no
    units file or lacks the column.

    column: a task (its primary metric per item, 0/1), ``average`` (every task's items pooled,
    weighted so the pooled mean is the unweighted task average) or ``ppl`` (NLL per token per
    window). Raises ValueError when two instances were scored on different units (other items,
    another window count): a paired test would be wrong.
    """
    if not instances or any(i not in units for i in instances):
        return None
    try:
        if column == PPL:
            rows = []
            for i in instances:
                p = units[i].get("ppl")
                if p is None:
                    return None
                rows.append(np.asarray(p["window_nll_per_token"], dtype=float))
            return _stack(rows, instances, column)
        cols = list(tasks) if column == AVERAGE else [column]
        blocks = []
        for task in cols:
            ids, rows = None, []
            for i in instances:
                doc, vals = _task_items(units[i], task, primary[task], i)
                if ids is not None and doc != ids:
                    raise ValueError(f"{task}: instance {i!r} was scored on other items than {instances[0]!r} "
                                     "(different limit or data?); rerun evaluate for both")
                ids = doc
                rows.append(vals)
            blocks.append(_stack(rows, instances, task))
    except KeyError:
        return None
    if column != AVERAGE:
        return blocks[0]
    total = sum(b.shape[1] for b in blocks)
    return np.concatenate([b * (total / (len(blocks) * b.shape[1])) for b in blocks], axis=1)


def _stack(rows: list[np.ndarray], instances: Sequence[str], column: str) -> np.ndarray:
    if len({r.shape for r in rows}) != 1:
        raise ValueError(f"{column}: instances {list(instances)} have different unit counts "
                         f"{[r.shape[0] for r in rows]}; a paired test needs the same units")
    return np.vstack(rows)


def unit_summary(m: np.ndarray, column: str) -> tuple[float, float, int]:
    """(value, standard error, n units) of one configuration's (n_seeds, n_units) unit values:
    accuracy in percent; perplexity exp(mean NLL) with the delta-method standard error."""
    v = stats.combine_seeds(m)
    mean, se = stats.mean_se(v)
    if column == PPL:
        ppl = math.exp(mean)
        return ppl, ppl * se, int(v.size)
    return 100.0 * mean, 100.0 * se, int(v.size)


def _is_binary(m: np.ndarray) -> bool:
    return bool(np.isin(m, (0.0, 1.0)).all())


def test_pair(ref: np.ndarray, other: np.ndarray, column: str, *, seed: int = 0) -> stats.Comparison:
    """other - ref on the same units (module docstring): McNemar for a task with one seed on each
    side, else the paired sign-flip test on the seed-averaged unit values. Accuracy effects in
    percentage points, perplexity effects in nats per token."""
    if ref.shape[1] != other.shape[1]:
        raise ValueError(f"{column}: {ref.shape[1]} vs {other.shape[1]} units; a paired test needs the same units")
    a, b = stats.combine_seeds(ref), stats.combine_seeds(other)
    if column not in (PPL, AVERAGE) and ref.shape[0] == other.shape[0] == 1 and _is_binary(ref) and _is_binary(other):
        c = stats.paired_accuracy(a, b)
    else:
        c = stats.compare(a, b, paired=True, seed=seed)
    if column == PPL:
        return c
    k = 100.0
    return stats.Comparison(diff=k * c.diff, low=k * c.low, high=k * c.high, p_value=c.p_value, n=c.n,
                            mde=k * c.mde, test=c.test)


def better_sign(column: str) -> int:
    """+1 when a higher value of the column is better (accuracy), -1 when lower is (perplexity)."""
    return -1 if column == PPL else 1


def mark(c: stats.Comparison | None, column: str) -> int:
    """+1 better / -1 worse at p < ALPHA, else 0 (no comparison: 0)."""
    if c is None or not (c.p_value < ALPHA):
        return 0
    return int(np.sign(c.diff)) * better_sign(column)


def dense_at_chance(units: Mapping[str, Mapping[str, Any]], dense: str, task: str,
                    primary: Mapping[str, str]) -> tuple[bool, str]:
    """(at chance, reason) of a dense model on one task: at chance unless its accuracy is above
    the task's chance level (recorded by the evaluate stage per task) at p < ALPHA (exact binomial)."""
    t = (units.get(dense, {}).get("tasks") or {}).get(task)
    if t is None or t.get("chance") is None:
        return False, ""
    vals = np.array([float(v) for v in t[primary[task]]])
    c = stats.versus_chance(vals, float(t["chance"]))
    if c.diff > 0 and c.p_value < ALPHA:
        return False, ""
    return True, (f"the dense {dense} is at chance on {task} (accuracy {vals.mean():.3f} vs chance "
                  f"{float(t['chance']):.3f}, p = {c.p_value:.2g}, n = {c.n})")


def verdict_text(c: stats.Comparison, column: str, digits: int = 1) -> str:
    """holds / opposite / no difference larger than <mde> (p < ALPHA in the better / worse direction)."""
    m = mark(c, column)
    unit = " nats/token" if column == PPL else " points"
    if m > 0:
        return "holds"
    if m < 0:
        return "opposite"
    d = 3 if column == PPL else digits
    return f"no difference larger than {c.mde:.{d}f}{unit}"


def comparison_text(c: stats.Comparison, column: str) -> str:
    """effect [95% CI], p, n, mde in the column's units (perplexity: nats/token and the relative change)."""
    if column == PPL:
        rel = (f" (perplexity {100 * math.expm1(c.diff):+.1f}% "
               f"[{100 * math.expm1(c.low):+.1f}, {100 * math.expm1(c.high):+.1f}])")
        return (f"Δ NLL {c.diff:+.4f} nats/token [{c.low:+.4f}, {c.high:+.4f}]{rel}, p = {c.p_value:.2g}, "
                f"n = {c.n} windows, mde {c.mde:.4f}")
    return (f"Δ {c.diff:+.1f} points [{c.low:+.1f}, {c.high:+.1f}], p = {c.p_value:.2g}, n = {c.n} items, "
            f"mde {c.mde:.1f}")
