"""The paper's claims, each answered with an effect, its 95% CI, p, n and the smallest effect the
design detects (mde), and one verdict.

One list of ``Finding`` serves the front page (reports/index.html), the README's results block
and the plot notebook's interpretation, so the three always say the same thing. Every number
comes from the metrics files and their unit-level values: metrics/variance.json and
metrics/units/variance.json (per prompt sink statistics, per head [BOS] shares), the evaluate
results with metrics/units/evaluate/ (srclib.report.inference: paired tests on the same windows
and items) and metrics/efficiency.json.

Verdicts (``VERDICTS``): "holds" (the effect the claim predicts, p < ALPHA), "opposite" (the
other direction, p < ALPHA), "no difference larger than <mde>" (neither; the mde says what the
design could have seen), "untestable here" with the reason (the dense model is at chance on the
task, the model has no sink, the unit values are missing). A finding's verdict summarises its
lines: holds / opposite when its testable lines agree, mixed when they disagree.

Sinks (method.md 1-2): a run "has a sink" when its dominant key's strength (its mass share over
the uniform share, per prompt) is above its random-init twin's at p < ALPHA (paired on the
prompts); "a stable AR sink" additionally needs the dominant key at position 0 on >= 0.9 of the
steps on a statistic causal counting cannot bias (the newest query's mass) while the twin's is
<= 0.1, or the twin has no sink at all (its dominant key within 10% of the uniform share: a
random-init SmolLM2 puts the argmax of its nearly flat rows on position 0 on ~0.2 of the steps). Sink motion
compares a DLM that has a sink against the AR models with a stable sink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from srclib import stats
from srclib.report import inference
from srclib.report.results import AVERAGE, METHOD_LABELS, PPL, TASK_LABELS, method_label, pruned_models, units_of
from srclib.report.tables import fmt_value, main_table_cells, structured_table_cells

__all__ = ["Finding", "VERDICTS", "sink_presence", "sink_motion", "bos_sinks", "sink_vs_uniform",
           "structured_sink_vs_uniform", "efficiency", "findings", "findings_markdown"]

VARIANCE_DIGITS = 4  # Var[p]/T^2 as in the sink variance table
VALUE_DIGITS = 1  # accuracy (%) and perplexity as in the main table
STABLE_P0, TWIN_P0 = 0.9, 0.1  # "stable AR sink": p0 >= 0.9 with the twin's p0 <= 0.1 ...
FLAT_STRENGTH = 1.1  # ... or the twin's dominant key within 10% of the uniform share (no sink at all)
UNTESTABLE = "untestable here"
VERDICTS = ("holds", "opposite", "no difference larger than <mde>", UNTESTABLE)
PRIMARY_VARIANT = {True: "full", False: "newest"}  # kind_is_dlm -> the paper's (bias-free) variant


@dataclass(frozen=True)
class Finding:
    """key: stable id; claim: what the paper says; lines: the measured answer (plain text, one
    comparison a line); verdict: short words (VERDICTS, or mixed / not measured); values:
    label -> (mean, u) of every number shown (u NaN when there is none); tests: label -> the
    comparison's fields (diff, low, high, p_value, n, mde) of every test a line states."""

    key: str
    claim: str
    lines: list[str]
    verdict: str
    values: dict[str, tuple[float, float]] = field(default_factory=dict)
    tests: dict[str, dict[str, float]] = field(default_factory=dict)


def _fields(c: stats.Comparison) -> dict[str, float]:
    return {"diff": float(c.diff), "low": float(c.low), "high": float(c.high), "p_value": float(c.p_value),
            "n": int(c.n), "mde": float(c.mde)}


def _summary_verdict(verdicts: Sequence[str]) -> str:
    """holds / opposite when every testable line that differs agrees, mixed when they disagree, no
    difference when none differs, untestable when no line is testable."""
    testable = [v for v in verdicts if not v.startswith(UNTESTABLE)]
    if not verdicts:
        return "not measured"
    if not testable:
        return UNTESTABLE
    holds, opposite = "holds" in testable, "opposite" in testable
    if holds and opposite:
        return "mixed"
    if holds:
        return "holds"
    if opposite:
        return "opposite"
    return "no difference larger than the stated mde"


def _direction_verdict(c: stats.Comparison, expect: int, unit: str, digits: int) -> str:
    """holds (sign(diff) == expect at p < ALPHA), opposite, or no difference larger than the mde."""
    if c.p_value < inference.ALPHA and c.diff != 0:
        return "holds" if int(np.sign(c.diff)) == expect else "opposite"
    return f"no difference larger than {c.mde:.{digits}f}{unit}"


def _ctext(c: stats.Comparison, digits: int, unit: str = "", what: str = "prompts") -> str:
    return (f"Δ {c.diff:+.{digits}f}{unit} [{c.low:+.{digits}f}, {c.high:+.{digits}f}], p = {c.p_value:.2g}, "
            f"n = {c.n} {what}, mde {c.mde:.{digits}f}")


# =================================================================================================
# sinks
# =================================================================================================
def _unit_runs(units: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((units or {}).get("runs") or {})


def _per_prompt(urun: Mapping[str, Any], stat: str, variant: str | None = None) -> np.ndarray | None:
    pp = urun.get("per_prompt") or {}
    v = variant or PRIMARY_VARIANT[urun.get("kind") == "dlm"]
    vals = (pp.get(v) or {}).get(stat)
    return None if vals is None else np.asarray(vals, dtype=float)


def _twin(name: str, runs: Mapping[str, Any], uruns: Mapping[str, Any]) -> str | None:
    t = (uruns.get(name) or {}).get("twin") or f"{name}-randinit"
    return t if t in runs or t in uruns else None


def _pair(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape


def _compare(a: np.ndarray, b: np.ndarray) -> stats.Comparison:
    return stats.compare(a, b, paired=_pair(a, b))


def sink_presence(variance_metrics: Mapping[str, Any], units: Mapping[str, Any] | None
                  ) -> tuple[dict[str, tuple[bool, str]], dict[str, stats.Comparison]]:
    """run -> (has a sink, the line saying why) for every trained run, and the strength tests:
    the dominant key's strength (mass share over the uniform share) per prompt against its
    random-init twin's, paired on the prompts (module docstring)."""
    runs = variance_metrics.get("runs") or {}
    uruns = _unit_runs(units)
    out, tests = {}, {}
    for r in sorted(runs):
        if runs[r].get("random_init"):
            continue
        twin = _twin(r, runs, uruns)
        s = _per_prompt(uruns.get(r, {}), "dominant_share_x_uniform")
        t = _per_prompt(uruns.get(twin, {}), "dominant_share_x_uniform") if twin else None
        if s is None or t is None or min(s.size, t.size) < 2:
            out[r] = (False, f"{r}: no per-prompt strengths of the run and a random-init twin "
                      "(rerun collect with random_init_control and the variance stage): sink untestable")
            continue
        c = _compare(t, s)
        tests[r] = c
        has = c.diff > 0 and c.p_value < inference.ALPHA
        out[r] = (has, f"{r}: strength (top share × T) {s.mean():.2f} vs its random-init twin {twin} "
                       f"{t.mean():.2f}, {_ctext(c, 2)}: {'has a sink' if has else 'no sink beyond its twin'}")
    return out, tests


def _p0(urun: Mapping[str, Any], run: Mapping[str, Any], variant: str) -> float | None:
    v = _per_prompt(urun, "dominant_at_0_frac", variant)
    if v is not None and v.size:
        return float(v.mean())
    return float(run["dominant_at_0_frac"]) if "dominant_at_0_frac" in run and variant == "newest" else None


def _stable_ar(name: str, runs, uruns) -> tuple[bool, str]:
    twin = _twin(name, runs, uruns)
    p0 = _p0(uruns.get(name, {}), runs[name], "newest")
    tp0 = _p0(uruns.get(twin, {}), runs.get(twin, {}), "newest") if twin else None
    if p0 is None or tp0 is None:
        return False, f"{name}: no bias-free p0 of the run and its twin"
    tstrength = float((runs.get(twin) or {}).get("dominant_share_x_uniform", float("nan")))
    flat = tstrength <= FLAT_STRENGTH  # the twin's dominant key holds no more than uniform mass: its argmax is noise
    ok = p0 >= STABLE_P0 and (tp0 <= TWIN_P0 or flat)
    extra = ""
    pe = _p0(uruns.get(name, {}), runs[name], "prefix_expected")
    if pe is not None:
        extra = f" (full-prefix mass over its causal expectation: {pe:.3f})"
    twin_text = f"random-init twin {tp0:.3f}"
    if tp0 > TWIN_P0 and flat:
        twin_text += f" (its strength {tstrength:.2f}× uniform: the argmax of a flat row, not a sink)"
    return ok, (f"{name}: dominant key at position 0 on {p0:.3f} of the steps (newest-query mass){extra}, "
                f"{twin_text}: {'a stable [BOS] sink' if ok else 'no stable [BOS] sink'} "
                f"(needs >= {STABLE_P0:g} with the twin <= {TWIN_P0:g} or flat)")


def _head_line(name: str, uruns: Mapping[str, Any]) -> str | None:
    heads = (uruns.get(name) or {}).get("heads") or {}
    if "bos_share" not in heads:
        return None
    share = np.asarray(heads["bos_share"], dtype=float)  # (L, H, B)
    if share.ndim != 3 or share.size == 0:
        return None
    m = share.mean(-1)
    li, hi = np.unravel_index(int(np.argmax(m)), m.shape)
    return (f"{name}: [BOS] share per head {m.min():.3f}-{m.max():.3f} (largest: layer {li} head {hi})")


def bos_sinks(variance_metrics: Mapping[str, Any], units: Mapping[str, Any] | None = None) -> Finding:
    """AR sinks sit on position 0, on a bias-free statistic and beyond the random-init twin."""
    runs = variance_metrics.get("runs") or {}
    uruns = _unit_runs(units)
    ars = [r for r in sorted(runs) if not runs[r].get("kind_is_dlm") and not runs[r].get("random_init")]
    lines, verdicts, values = [], [], {}
    for r in ars:
        ok, line = _stable_ar(r, runs, uruns)
        lines.append(line)
        h = _head_line(r, uruns)
        if h:
            lines.append(h)
        verdicts.append("holds" if ok else "opposite")
        values[r] = (float(runs[r].get("dominant_at_0_frac", float("nan"))), float("nan"))
    held = [r for r, v in zip(ars, verdicts) if v == "holds"]
    verdict = ("holds" if ars and len(held) == len(ars) else f"holds for {', '.join(held)} only" if held
               else "does not hold" if ars else "not measured")
    return Finding("bos-sinks", f"An AR model's sink sits on the first token (position 0 on at least "
                   f"{STABLE_P0:g} of the steps, its random-init twin on at most {TWIN_P0:g}).", lines, verdict, values)


def sink_motion(variance_metrics: Mapping[str, Any], units: Mapping[str, Any] | None = None) -> Finding:
    """DLM sinks move, AR sinks do not: each trained DLM with a sink against every AR model with a
    stable sink (per-prompt normalised variance, paired on the prompts), and against its twin."""
    runs = variance_metrics.get("runs") or {}
    uruns = _unit_runs(units)
    presence, ptests = sink_presence(variance_metrics, units)
    dlms = [r for r in sorted(runs) if runs[r].get("kind_is_dlm") and not runs[r].get("random_init")]
    ars = [r for r in sorted(runs) if not runs[r].get("kind_is_dlm") and not runs[r].get("random_init")]
    stable = [a for a in ars if _stable_ar(a, runs, uruns)[0] and presence.get(a, (False,))[0]]
    lines, verdicts, values, tests = [], [], {}, {}
    for r in runs:
        v = _per_prompt(uruns.get(r, {}), "variance")
        values[r] = (float(runs[r]["variance"]), stats.mean_se(v)[1] if v is not None and v.size >= 2 else float("nan"))
    for d in dlms:
        has, why = presence.get(d, (False, f"{d}: no sink test"))
        lines.append(why)
        vd = _per_prompt(uruns.get(d, {}), "variance")
        if not has or vd is None:
            lines.append(f"{d} vs AR: {UNTESTABLE} ({d} has no sink beyond its random-init twin)")
            verdicts.append(UNTESTABLE)
            continue
        for a in ars:
            va = _per_prompt(uruns.get(a, {}), "variance")
            if a not in stable or va is None:
                lines.append(f"{d} vs {a} (AR): {UNTESTABLE} ({a} has no stable [BOS] sink)")
                continue
            c = _compare(va, vd)
            tests[f"{d} vs {a}"] = _fields(c)
            verdict = _direction_verdict(c, +1, "", VARIANCE_DIGITS)
            verdicts.append(verdict)
            lines.append(f"{d} {_v(*values[d])} vs {a} (AR) {_v(*values[a])}, Var[p]/T²: "
                         f"{_ctext(c, VARIANCE_DIGITS)}: {verdict}")
        if not stable:
            lines.append(f"{d} vs AR: {UNTESTABLE} (no AR model has a stable [BOS] sink)")
            verdicts.append(UNTESTABLE)
        twin = _twin(d, runs, uruns)
        vt = _per_prompt(uruns.get(twin, {}), "variance") if twin else None
        if vt is not None:
            c = _compare(vt, vd)
            tests[f"{d} vs {twin}"] = _fields(c)
            lines.append(f"context: {d} vs its random-init twin {twin}, Var[p]/T²: {_ctext(c, VARIANCE_DIGITS)}")
    for r, c in ptests.items():
        tests[f"{r} strength vs twin"] = _fields(c)
    return Finding("sink-motion", "Diffusion LMs' dominant sink moves across denoising steps; an AR "
                   "model's stays put (normalised variance Var[p]/T², DLM above AR).", lines,
                   _summary_verdict(verdicts), values, tests)


def _v(mean: float, u: float) -> str:
    return fmt_value(mean, u, digits=VARIANCE_DIGITS)


# =================================================================================================
# pruning: sink-aware vs uniform calibration, paired on the same windows and items
# =================================================================================================
def _ppl_label(kind: str | None) -> str:
    return {"elbo": "ELBO perplexity", "exact": "perplexity"}.get(kind or "", "perplexity")


def _column_name(col: str, kind: str | None) -> str:
    if col == PPL:
        return _ppl_label(kind)
    if col == AVERAGE:
        return "average accuracy (%)"
    return f"{TASK_LABELS.get(col, col)} accuracy (%)"


def _chance_reasons(df: pd.DataFrame, model: str) -> dict[str, str]:
    """task -> why it is untestable for this model (its dense model at chance); tasks above chance absent."""
    units, tasks, primary = units_of(df)
    out = {}
    for t in tasks:
        at, why = inference.dense_at_chance(units, model, t, primary)
        if at:
            out[t] = why
    if tasks and len(out) == len(tasks):
        out[AVERAGE] = f"the dense {model} is at chance on every task"
    return out


def _cell_line(uni: pd.Series, sink: pd.Series, column: str, untestable: Mapping[str, str]) -> tuple[str, str]:
    """One comparison's text and verdict."""
    label = _column_name(column, sink.get("ppl_kind"))
    n = sorted({int(uni["n_seeds"]), int(sink["n_seeds"])})
    seeds = "/".join(map(str, n)) + (" seed" if n == [1] else " seeds")
    head = (f"{label} uniform {fmt_value(uni['mean'], uni['u'], digits=VALUE_DIGITS)} vs sink-aware "
            f"{fmt_value(sink['mean'], sink['u'], digits=VALUE_DIGITS)} ({seeds})")
    if column in untestable:
        return f"{head}: {UNTESTABLE} ({untestable[column]})", UNTESTABLE
    if not isinstance(sink.get("test"), str) or not sink.get("test"):
        return f"{head}: {UNTESTABLE} (no unit-level values: rerun evaluate)", UNTESTABLE
    c = stats.Comparison(diff=float(sink["effect"]), low=float(sink["low"]), high=float(sink["high"]),
                         p_value=float(sink["p_value"]), n=int(sink["n_units"]), mde=float(sink["mde"]))
    verdict = inference.verdict_text(c, column)
    return f"{head}: {inference.comparison_text(c, column)}: {verdict}", verdict


def _pair_lines(g: pd.DataFrame, columns: Sequence[str], untestable, values, tests,
                name) -> tuple[list[str], list[str]]:
    parts, verdicts = [], []
    for column in columns:
        pick = {w: g[(g["weighting"] == w) & (g["column"] == column)] for w in ("uniform", "sink")}
        if any(h.empty for h in pick.values()):
            continue
        uni, sink = pick["uniform"].iloc[0], pick["sink"].iloc[0]
        text, verdict = _cell_line(uni, sink, column, untestable)
        parts.append(text)
        verdicts.append(verdict)
        values[f"{name} {column} uniform"] = (float(uni["mean"]), float(uni["u"]))
        values[f"{name} {column} sink"] = (float(sink["mean"]), float(sink["u"]))
        if verdict != UNTESTABLE and not verdict.startswith(UNTESTABLE):
            tests[f"{name} {column}"] = {"diff": float(sink["effect"]), "low": float(sink["low"]),
                                         "high": float(sink["high"]), "p_value": float(sink["p_value"]),
                                         "n": int(sink["n_units"]), "mde": float(sink["mde"])}
    return parts, verdicts


def _columns(params) -> list[str]:
    return [PPL, *params.evaluate.tasks, AVERAGE]


def sink_vs_uniform(df: pd.DataFrame, params, model: str) -> Finding:
    """Sink-aware vs uniform calibration on one model at the headline methods and sparsities
    (unstructured): perplexity and every task, paired on the same windows / items."""
    cells = main_table_cells(df, params, model)
    causal = bool(df.loc[df["model"] == model, "causal"].any())
    untestable = _chance_reasons(df, model)
    lines, verdicts, values, tests = [], [], {}, {}
    for sparsity in sorted(params.plot.headline_sparsities):
        for method in params.plot.headline_methods:
            g = cells[(cells["method"] == method) & (cells["sparsity"] == sparsity)
                      & (cells["pattern"] == "unstructured")]
            parts, v = _pair_lines(g, _columns(params), untestable, values, tests, f"{method} {sparsity:g}")
            if parts:
                lines.append(f"{METHOD_LABELS[method]} at {100 * sparsity:g}%: " + "; ".join(parts))
                verdicts += v
    claim = (f"On the autoregressive {model}, whose sinks are stable, down-weighting sinks in calibration "
             "should not help." if causal else
             f"Sink-aware calibration prunes the diffusion LM {model} better than uniform calibration "
             "(paper, LLaDA-8B at 50%: Wanda 52.70 vs 53.18 average accuracy).")
    return Finding(f"sink-vs-uniform/{model}", claim, lines, _summary_verdict(verdicts), values, tests)


def structured_sink_vs_uniform(df: pd.DataFrame, params, model: str) -> Finding:
    """Structured pruning (method.md 9): sink-aware vs uniform calibration at each ratio, method
    and structure, paired on the same windows / items."""
    cells = structured_table_cells(df, params, model)
    pruned = cells[cells["method"] != "dense"]
    untestable = _chance_reasons(df, model)
    lines, verdicts, values, tests = [], [], {}, {}
    for (sparsity, method, structure), g in pruned.groupby(["sparsity", "method", "structure"], sort=True):
        parts, v = _pair_lines(g, _columns(params), untestable, values, tests, f"{method} {structure} {sparsity:g}")
        if parts:
            lines.append(f"{method_label(method, g['pattern'].iloc[0])} ({structure}) at ratio {100 * sparsity:g}%: "
                         + "; ".join(parts))
            verdicts += v
    claim = (f"Sink-aware calibration also helps structured pruning (heads and MLP channels removed) of {model} "
             "(paper, LLaDA-8B, 4-task average accuracy: Baseline 60.4 vs sink-aware 61.7 at ratio 0.3, "
             "45.9 vs 48.5 at 0.5).")
    return Finding(f"structured-sink-vs-uniform/{model}", claim, lines, _summary_verdict(verdicts), values, tests)


# =================================================================================================
# efficiency
# =================================================================================================
def _unstructured_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Efficiency rows of sparse formats only (structured instances' compact rows left out)."""
    keep = rows["format"] != "compact" if "format" in rows else pd.Series(True, index=rows.index)
    if "kind" in rows:
        keep &= rows["kind"] != "structured"
    return rows[keep]


def efficiency(rows: pd.DataFrame) -> Finding:
    """Measured step latency of the sparse format relative to dense, over every instance and shape
    (unstructured and N:M instances only: structured ones have no sparse format)."""
    rows = _unstructured_rows(rows)
    if rows.empty:
        raise ValueError("no efficiency rows of a sparse format (only structured instances were measured)")
    r = rows["step_sparse_over_dense"].astype(float)
    values = {f"{x.instance} {x.format} {x.shape}": (float(x.step_sparse_over_dense), float("nan"))
              for x in rows.itertuples()}
    lines = [f"{x.instance} ({x.format}, tokens {x.shape}): step time {float(x.step_sparse_over_dense):.2f}× dense"
             for x in rows.itertuples()]
    verdict = "faster" if (r < 1).all() else "slower" if (r > 1).all() else "mixed"
    return Finding("efficiency", "Pruned (sparse) weights make a denoising step faster on this machine.",
                   lines, {"faster": "holds", "slower": "does not hold (slower than dense)",
                           "mixed": "mixed"}[verdict], values)


def findings(df: pd.DataFrame, params, variance_metrics: Mapping[str, Any],
             efficiency_rows: pd.DataFrame | None = None, variance_units: Mapping[str, Any] | None = None
             ) -> list[Finding]:
    """Every finding, in the order the front page shows them. variance_units: metrics/units/variance.json."""
    out = [sink_motion(variance_metrics, variance_units), bos_sinks(variance_metrics, variance_units)]
    out += [sink_vs_uniform(df, params, m) for m in pruned_models(df, structured=False)]
    out += [structured_sink_vs_uniform(df, params, m) for m in pruned_models(df, structured=True)]
    if efficiency_rows is not None and len(_unstructured_rows(efficiency_rows)):
        out.append(efficiency(efficiency_rows))
    return out


def findings_markdown(items: Sequence[Finding]) -> str:
    """A markdown list: the claim in bold, the verdict, one sub-item per measured comparison."""
    out = []
    for f in items:
        out.append(f"- **{f.claim}** Measured: *{f.verdict}*.")
        out += [f"  - {line}" for line in f.lines]
    out.append("")
    out.append(f"± is a standard error over independent units (prompts, validation windows, task items; "
               f"seeds averaged per unit first). Δ: the second minus the first, with its 95% CI; p: two-sided "
               f"(paired sign-flip / McNemar on the same units, p < {inference.ALPHA:g} counts, not corrected "
               f"for the number of comparisons); mde: the smallest difference the design detects with 80% power. "
               f"Untestable: the dense model is at chance on the task, or the model has no sink.")
    return "\n".join(out) + "\n"


_ = math  # (kept for callers formatting NaN)
