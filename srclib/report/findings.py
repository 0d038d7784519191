"""The paper's claims, each with the answer this run measured (numbers with their uncertainty).

One list of ``Finding`` serves the front page (reports/index.html), the README's results block
and the plot notebook's interpretation, so the three always say the same thing. Every number
comes from the metrics files: metrics/variance.json (sink statistics), the evaluate results
(``srclib.report.tables.main_table_cells`` and, for structured pruning, ``structured_table_cells``:
mean over seeds +- u and the noise mark) and metrics/efficiency.json (the latency finding is about
sparse formats, so it reads only the unstructured instances' rows).

Verdicts on differences follow srclib.report.results: a difference counts only beyond
NOISE_K * sqrt(u1^2 + u2^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from srclib.report.results import AVERAGE, METHOD_LABELS, NOISE_K, PPL, exceeds_noise, method_label, pruned_models
from srclib.report.tables import fmt_value, main_table_cells, structured_table_cells

__all__ = ["Finding", "sink_motion", "bos_sinks", "sink_vs_uniform", "structured_sink_vs_uniform", "efficiency",
           "findings", "findings_markdown"]

VARIANCE_DIGITS = 4  # Var[p]/T^2 as in the sink variance table
VALUE_DIGITS = 1  # accuracy (%) and perplexity as in the main table


@dataclass(frozen=True)
class Finding:
    """key: stable id; claim: what the paper says; lines: the measured answer (plain text, one
    comparison a line); verdict: short word(s); values: label -> (mean, u) of every number shown
    (u NaN when there is none)."""

    key: str
    claim: str
    lines: list[str]
    verdict: str
    values: dict[str, tuple[float, float]] = field(default_factory=dict)


def _var(st: Mapping[str, Any]) -> tuple[float, float]:
    return float(st["variance"]), float(st.get("variance_std", float("nan")))


def _v(mean: float, u: float) -> str:
    return fmt_value(mean, u, digits=VARIANCE_DIGITS)


def _runs(runs: Mapping[str, Any], dlm: bool, random_init: bool) -> list[str]:
    return sorted(r for r, st in runs.items()
                  if bool(st.get("kind_is_dlm")) == dlm and bool(st.get("random_init")) == random_init)


def _compare(d: tuple[float, float], a: tuple[float, float]) -> int:
    """+1: d above a beyond the noise, -1 below, 0 no difference."""
    diff = d[0] - a[0]
    return int(math.copysign(1, diff)) if exceeds_noise(diff, d[1], a[1]) else 0


MARK_VERDICT = {1: "sink-aware better", -1: "sink-aware worse", 0: "no difference beyond noise"}
COMPARE_TEXT = {1: "higher, beyond noise", -1: "lower, beyond noise", 0: "no difference beyond noise"}


def sink_motion(variance_metrics: Mapping[str, Any]) -> Finding:
    """DLM sinks move, AR sinks do not: each trained DLM run's normalised dominant-sink variance
    against every trained AR run and against its own random-init twin (± std over prompts)."""
    runs = variance_metrics.get("runs") or {}
    dlms, ars = _runs(runs, True, False), _runs(runs, False, False)
    values = {r: _var(runs[r]) for r in runs}
    lines, signs = [], []
    for d in dlms:
        for a in ars:
            c = _compare(values[d], values[a])
            signs.append(c)
            lines.append(f"{d} {_v(*values[d])} vs {a} (AR) {_v(*values[a])}: {COMPARE_TEXT[c]}")
        twin = f"{d}-randinit"
        if twin in runs:
            c = _compare(values[d], values[twin])
            lines.append(f"{d} {_v(*values[d])} vs its random-init twin {twin} {_v(*values[twin])}: {COMPARE_TEXT[c]}")
    verdict = ("holds" if signs and all(s == 1 for s in signs) else
               "does not hold" if signs and all(s <= 0 for s in signs) else
               "holds against some AR runs" if signs else "not measured")
    return Finding("sink-motion", "Diffusion LMs' dominant sink moves across denoising steps; an AR "
                   "model's stays put (normalised variance Var[p]/T² near 0).", lines, verdict,
                   {r: values[r] for r in runs})


def bos_sinks(variance_metrics: Mapping[str, Any], threshold: float = 0.9) -> Finding:
    """AR sinks sit on position 0: the fraction of decoding steps whose dominant key is position 0."""
    runs = variance_metrics.get("runs") or {}
    ars = _runs(runs, False, False)
    values = {r: (float(runs[r]["dominant_at_0_frac"]), float("nan")) for r in ars if "dominant_at_0_frac" in runs[r]}
    lines = [f"{r}: dominant key at position 0 on {v:.3f} of the steps" for r, (v, _) in values.items()]
    hold = [r for r, (v, _) in values.items() if v >= threshold]
    verdict = ("holds" if values and len(hold) == len(values) else
               f"holds for {', '.join(hold)} only" if hold else "does not hold" if values else "not measured")
    return Finding("bos-sinks", f"An AR model's sink sits on the first token (position 0 on at least "
                   f"{threshold:g} of the steps).", lines, verdict, values)


def _cell(cells: pd.DataFrame, method: str, weighting: str, sparsity: float, column: str):
    hit = cells[(cells["method"] == method) & (cells["weighting"] == weighting) & (cells["sparsity"] == sparsity)
                & (cells["pattern"] == "unstructured") & (cells["column"] == column)]
    return None if hit.empty else hit.iloc[0]


def _ppl_label(kind: str | None) -> str:
    return {"elbo": "ELBO perplexity", "exact": "perplexity"}.get(kind or "", "perplexity")


def sink_vs_uniform(df: pd.DataFrame, params, model: str) -> Finding:
    """Sink-aware vs uniform calibration on one model at the headline methods and sparsities
    (unstructured): held-out perplexity and average accuracy, mean ± u over seeds."""
    cells = main_table_cells(df, params, model)
    causal = bool(df.loc[df["model"] == model, "causal"].any())
    lines, marks, values = [], [], {}
    for sparsity in sorted(params.plot.headline_sparsities):
        for method in params.plot.headline_methods:
            parts = []
            for column in (PPL, AVERAGE):
                uni, sink = (_cell(cells, method, w, sparsity, column) for w in ("uniform", "sink"))
                if uni is None or sink is None:
                    continue
                label = _ppl_label(sink["ppl_kind"]) if column == PPL else "average accuracy (%)"
                name = f"{method} {sparsity:g} {column}"
                values[f"{name} uniform"] = (float(uni["mean"]), float(uni["u"]))
                values[f"{name} sink"] = (float(sink["mean"]), float(sink["u"]))
                marks.append(int(sink["mark"]))
                n = sorted({int(uni["n_seeds"]), int(sink["n_seeds"])})
                seeds = "/".join(map(str, n)) + (" seed" if n == [1] else " seeds")
                parts.append(f"{label} uniform {fmt_value(uni['mean'], uni['u'], digits=VALUE_DIGITS)} vs "
                             f"sink-aware {fmt_value(sink['mean'], sink['u'], digits=VALUE_DIGITS)} ({seeds}): "
                             f"{MARK_VERDICT[int(sink['mark'])]}")
            if parts:
                lines.append(f"{METHOD_LABELS[method]} at {100 * sparsity:g}%: " + "; ".join(parts))
    verdict = _verdict(marks)
    claim = (f"On the autoregressive {model}, whose sinks are stable, down-weighting sinks in calibration "
             "should not help." if causal else
             f"Sink-aware calibration prunes the diffusion LM {model} better than uniform calibration "
             "(paper, LLaDA-8B at 50%: Wanda 52.70 vs 53.18 average accuracy).")
    return Finding(f"sink-vs-uniform/{model}", claim, lines, verdict, values)


def _verdict(marks: list[int]) -> str:
    return ("sink-aware better" if 1 in marks and -1 not in marks else
            "sink-aware worse" if -1 in marks and 1 not in marks else
            "mixed" if marks and 1 in marks else "no difference beyond noise" if marks else "not measured")


def structured_sink_vs_uniform(df: pd.DataFrame, params, model: str) -> Finding:
    """Structured pruning (method.md 9): sink-aware vs uniform calibration at each ratio, method
    and structure: average accuracy and held-out perplexity, mean ± u over seeds, the difference
    (sink-aware minus uniform) and whether it exceeds the noise band."""
    cells = structured_table_cells(df, params, model)
    pruned = cells[cells["method"] != "dense"]
    lines, marks, values = [], [], {}
    for (sparsity, method, structure), g in pruned.groupby(["sparsity", "method", "structure"], sort=True):
        parts = []
        for column in (AVERAGE, PPL):
            pick = {w: g[(g["weighting"] == w) & (g["column"] == column)] for w in ("uniform", "sink")}
            if any(h.empty for h in pick.values()):
                continue
            uni, sink = pick["uniform"].iloc[0], pick["sink"].iloc[0]
            label = _ppl_label(sink["ppl_kind"]) if column == PPL else "average accuracy (%)"
            name = f"{method} {structure} {sparsity:g} {column}"
            values[f"{name} uniform"] = (float(uni["mean"]), float(uni["u"]))
            values[f"{name} sink"] = (float(sink["mean"]), float(sink["u"]))
            marks.append(int(sink["mark"]))
            n = sorted({int(uni["n_seeds"]), int(sink["n_seeds"])})
            seeds = "/".join(map(str, n)) + (" seed" if n == [1] else " seeds")
            parts.append(f"{label} uniform {fmt_value(uni['mean'], uni['u'], digits=VALUE_DIGITS)} vs sink-aware "
                         f"{fmt_value(sink['mean'], sink['u'], digits=VALUE_DIGITS)} (difference "
                         f"{float(sink['diff']):+.{VALUE_DIGITS}f}, {seeds}): {MARK_VERDICT[int(sink['mark'])]}")
        if parts:
            lines.append(f"{method_label(method, g['pattern'].iloc[0])} ({structure}) at ratio {100 * sparsity:g}%: "
                         + "; ".join(parts))
    claim = (f"Sink-aware calibration also helps structured pruning (heads and MLP channels removed) of {model} "
             "(paper, LLaDA-8B, 4-task average accuracy: Baseline 60.4 vs sink-aware 61.7 at ratio 0.3, "
             "45.9 vs 48.5 at 0.5).")
    return Finding(f"structured-sink-vs-uniform/{model}", claim, lines, _verdict(marks), values)


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
             efficiency_rows: pd.DataFrame | None = None) -> list[Finding]:
    """Every finding, in the order the front page shows them."""
    out = [sink_motion(variance_metrics), bos_sinks(variance_metrics)]
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
    out.append(f"± is the std over prompts (sink statistics) or over calibration seeds (lm-eval's "
               f"stderr for a single seed); a difference counts beyond {NOISE_K:g}·sqrt(u₁² + u₂²).")
    return "\n".join(out) + "\n"
