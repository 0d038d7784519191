"""The paper-style tables as frames of display strings: main and structured (one per pruned model), dense,
sink variance.

The main table (``main_table``), one per model with pruned instances:

* rows: dense, then per sparsity (ascending) and pattern (unstructured, 2:4, 4:8) each method
  (magnitude, wanda, sparsegpt) with each weighting present (uniform, sink, stability);
* columns: every task of ``evaluate.tasks`` (primary metric, see srclib.report.results), their
  unweighted average, held-out perplexity;
* accuracies in percent; each cell is the mean over seeds +- u (srclib.report.results.summarize);
* a sink-aware (or stability) cell is marked when it differs from the uniform row of the same
  method, sparsity and pattern at p < 0.05, paired on the same items / windows
  (srclib.report.inference): "up" when it is better (higher accuracy, lower perplexity), "down"
  when worse; unmarked otherwise (``comparisons_table`` lists every test's effect, CI, p and mde).

Structured instances (pattern ``structured-<structure>``, srclib.report.results.is_structured) are
left out of the main and sink-vs-uniform tables; ``structured_table`` is theirs, in the layout of
the paper's structured table (released README): rows per ratio, method and structure, and for
every task the Baseline (uniform calibration) and sink-aware cells side by side.

``table.attrs`` holds each table's ``caption`` and ``footnotes`` (srclib.report.render writes them).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from srclib.choices import STRUCTURES
from srclib.report import inference
from srclib.stats import Comparison, mean_se
from srclib.report.results import (AVERAGE, METHOD_LABELS, PPL, STRUCTURED_PREFIX, TASK_LABELS,
                                   WEIGHTING_LABELS, config_instances, is_structured, method_label, pruned_models,
                                   summarize, units_of)

__all__ = ["METHOD_ORDER", "WEIGHTING_ORDER", "PATTERN_ORDER", "STRUCTURE_ORDER", "main_table_cells", "main_table",
           "main_tables", "structured_table_cells", "structured_table", "structured_tables", "dense_table",
           "sink_variance_table", "sink_vs_uniform_table", "efficiency_table", "fmt_value", "comparisons_table",
           "comparisons_tables"]

log = logging.getLogger(__name__)

METHOD_ORDER = ("dense", "magnitude", "wanda", "sparsegpt", "flap")
WEIGHTING_ORDER = ("none", "uniform", "sink", "stability")
STRUCTURE_ORDER = STRUCTURES  # structured pruning's allocation: per block, or FLAP's global (method.md 9)
# structured patterns last: the main tables leave them out, the index grid sorts its columns by this
PATTERN_ORDER = ("dense", "unstructured", "2:4", "4:8", *(f"{STRUCTURED_PREFIX}{x}" for x in STRUCTURE_ORDER))
MARK_TEXT = {1: " ↑", -1: " ↓", 0: ""}
PPL_KIND_TEXT = {"elbo": "MC-ELBO upper bound (diffusion LM)", "exact": "exact (causal LM)"}


def _row_order(cfg: Mapping[str, Any]) -> tuple:
    return (cfg["method"] != "dense", float(cfg["sparsity"]), PATTERN_ORDER.index(cfg["pattern"]),
            METHOD_ORDER.index(cfg["method"]), WEIGHTING_ORDER.index(cfg["weighting"]))


def main_table_cells(df: pd.DataFrame, params, model: str) -> pd.DataFrame:
    """The numbers behind ``main_table``: summarize() for one model, rows in table order, with
    ``row`` (0, 1, ...), ``diff`` (minus the uniform row of the same method/sparsity/pattern,
    NaN where there is none) and ``mark`` (+1 better / -1 worse beyond the noise, else 0).
    Structured instances are left out (structured_table_cells has them)."""
    s = _model_summary(df, params, model)
    s = s[~s["pattern"].map(is_structured)]
    cfgs = s[["method", "weighting", "sparsity", "pattern"]].drop_duplicates().to_dict("records")
    cfgs.sort(key=_row_order)
    order = {tuple(c.values()): i for i, c in enumerate(cfgs)}
    s = s.copy()
    s["row"] = [order[(r.method, r.weighting, r.sparsity, r.pattern)] for r in s.itertuples()]
    s = _with_marks(s, df)
    _warn_headline_seeds(s, params, model)
    return s.sort_values(["row", "column"]).reset_index(drop=True)


def _model_summary(df: pd.DataFrame, params, model: str) -> pd.DataFrame:
    s = summarize(df[df["model"] == model], seeds=params.plot.seeds)
    if s.empty:
        raise ValueError(f"no evaluate results for model {model!r}; models with results: "
                         f"{sorted(set(df['model']))}")
    return s


COMPARISON_FIELDS = ("p_value", "low", "high", "mde", "n_units", "test")


def _common_seeds(a: str, b: str) -> list[int]:
    """The calibration seeds two configurations share (comma-separated lists), or all of each when
    they share none."""
    sa, sb = ({int(x) for x in v.split(",") if x != ""} for v in (a, b))
    return sorted(sa & sb) or sorted(sa | sb)


def _with_marks(s: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """s (summarize rows) with ``diff`` (minus the uniform row of the same method, sparsity,
    pattern and column; NaN where there is none, and for the uniform / dense rows themselves),
    the paired test of the two on their shared units and calibration seeds
    (srclib.report.inference.test_pair: ``p_value``,
    ``low``, ``high``, ``mde``, ``n_units``, ``test``; NaN / "" without unit values) and ``mark``
    (+1 better / -1 worse at p < ALPHA, else 0; lower perplexity is better). ``diff`` is in the
    cell's display units (points, perplexity); the test's effect (points, nats/token) is in the
    comparison fields."""
    units, tasks, primary = units_of(df)
    ref = s[s["weighting"] == "uniform"].set_index(["method", "sparsity", "pattern", "column"])
    rows = []
    for r in s.itertuples():
        key = (r.method, r.sparsity, r.pattern, r.column)
        rec: dict[str, Any] = {"diff": float("nan"), "mark": 0, **{f: float("nan") for f in COMPARISON_FIELDS}}
        rec["test"] = ""
        if r.weighting not in ("none", "uniform") and key in ref.index:
            u0 = ref.loc[key]
            rec["diff"] = r.mean - float(u0["mean"])
            cfg = {"model": r.model, "method": r.method, "sparsity": r.sparsity, "pattern": r.pattern}
            common = _common_seeds(str(u0["seeds"]), str(r.seeds))  # paired on the calibration seeds too
            a = inference.unit_matrix(units, config_instances(df, {**cfg, "weighting": "uniform"}, common),
                                      r.column, tasks, primary)
            b = inference.unit_matrix(units, config_instances(df, {**cfg, "weighting": r.weighting}, common),
                                      r.column, tasks, primary)
            if a is not None and b is not None:
                c = inference.test_pair(a, b, r.column)
                rec.update(p_value=c.p_value, low=c.low, high=c.high, mde=c.mde, n_units=c.n, test=c.test,
                           mark=inference.mark(c, r.column), effect=c.diff)
        rows.append(rec)
    extra = pd.DataFrame(rows, index=s.index)
    s = s.copy()
    for col in ["diff", "mark", "effect", *COMPARISON_FIELDS]:
        s[col] = extra[col] if col in extra else float("nan")
    s["mark"] = s["mark"].fillna(0).astype(int)
    return s


def _warn_headline_seeds(cells: pd.DataFrame, params, model: str) -> None:
    want = sorted(params.plot.seeds)
    head = cells[cells["method"].isin(params.plot.headline_methods)
                 & cells["sparsity"].isin(params.plot.headline_sparsities)
                 & cells["weighting"].isin(["uniform", "sink"]) & (cells["pattern"] == "unstructured")]
    for r in head.drop_duplicates(["method", "weighting", "sparsity"]).itertuples():
        have = sorted(int(x) for x in r.seeds.split(","))
        if have != want:
            log.warning("%s: headline row %s/%s at %.2f has seeds %s, plot.seeds asks for %s",
                        model, r.method, r.weighting, r.sparsity, have, want)


def fmt_value(mean: float, u: float, mark: int = 0, digits: int = 1) -> str:
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    if math.isfinite(u):
        text += f" ± {u:.{digits}f}"
    return text + MARK_TEXT[mark]


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


DERIVED_LABELS = {AVERAGE: "Avg", PPL: "PPL"}


def _column_label(col: str) -> str:
    return DERIVED_LABELS.get(col) or TASK_LABELS.get(col, col)


def _task_columns(params) -> list[str]:
    return list(params.evaluate.tasks)


def _ppl_note(kinds: Iterable[str]) -> str:
    kinds = sorted(set(k for k in kinds if k))
    return ("PPL: held-out perplexity on the validation corpus windows, "
            + "; ".join(PPL_KIND_TEXT.get(k, k) for k in kinds) + "." if kinds else
            "PPL: not evaluated.")


def _uncertainty_notes() -> list[str]:
    return [
        "± : standard error over the units both checkpoints share (task items; perplexity: validation "
        "windows, delta method), of the unit values averaged over calibration seeds (Seeds > 1). "
        "Without unit values (older results): lm-eval's stderr for one seed, the standard error over "
        "seeds for several.",
        f"↑ / ↓: sink-aware (or stability) better / worse than the uniform row of the same method, "
        f"sparsity and pattern, paired on the same items / windows at p < {inference.ALPHA:g} "
        "(McNemar for one seed each, else a sign-flip test on the seed-averaged units; perplexity tested "
        "on NLL per token; better: higher accuracy, lower perplexity). Unmarked: no difference larger than "
        "the design detects (the effects, CIs, p-values and minimal detectable effects are in "
        "reports/tables/comparisons_<model>.md).",
    ]


def main_table(df: pd.DataFrame, params, model: str | None = None) -> pd.DataFrame:
    """The paper-style table for one model as display strings (module docstring for its rules).

    model: default the only model with pruned instances in ``df``. Columns: Method, Weighting,
    Sparsity, Pattern, Seeds, one per task (TASK_LABELS), Avg, PPL. ``table.attrs`` holds
    ``caption`` and ``footnotes`` (write_tables renders them).
    """
    if model is None:
        pruned = sorted(pruned_models(df, structured=False))
        if len(pruned) != 1:
            raise ValueError(f"model must be given: results hold pruned instances of {pruned}")
        model = pruned[0]
    cells = main_table_cells(df, params, model)
    tasks = _task_columns(params)
    rows = []
    for _, g in cells.groupby("row", sort=True):
        first = g.iloc[0]
        by_col = {r.column: r for r in g.itertuples()}
        row = {
            "Method": METHOD_LABELS[first["method"]],
            "Weighting": WEIGHTING_LABELS[first["weighting"]],
            "Sparsity": _pct(first["sparsity"]),
            "Pattern": "–" if first["pattern"] == "dense" else first["pattern"],
            "Seeds": str(int(first["n_seeds"])),
        }
        for col in [*tasks, AVERAGE, PPL]:
            r = by_col.get(col)
            row[_column_label(col)] = "–" if r is None else fmt_value(r.mean, r.u, r.mark)
        rows.append(row)
    table = pd.DataFrame(rows)
    prim = df[df["primary"] & (df["model"] == model) & (df["task"] != PPL)]
    metric_of = dict(zip(prim["task"], prim["metric"]))
    table.attrs["caption"] = (f"{model}: accuracy (%) after pruning, {len(tasks)} tasks, mean ± uncertainty; "
                              f"rows ordered by sparsity, pattern, method, weighting.")
    table.attrs["footnotes"] = [
        "Metric per task: " + ", ".join(f"{TASK_LABELS.get(t, t)} {metric_of.get(t, '?')}" for t in tasks)
        + " (acc_norm where lm-eval gives it, else acc). Avg: unweighted mean of the task columns.",
        _ppl_note(cells.loc[cells["column"] == PPL, "ppl_kind"]),
        *_uncertainty_notes(),
    ]
    return table


def main_tables(df: pd.DataFrame, params) -> dict[str, pd.DataFrame]:
    """``main_<model>`` -> main_table for every model with unstructured (incl. N:M) pruned
    instances (pruned_models order); structured instances have structured_tables."""
    return {f"main_{m}": main_table(df, params, m) for m in pruned_models(df, structured=False)}


# =================================================================================================
# structured pruning (method.md 9): the paper's second table
# =================================================================================================
STRUCTURED_WEIGHTINGS = {"uniform": "base", "sink": "sink", "stability": "stability"}  # weighting -> header


def structured_table_cells(df: pd.DataFrame, params, model: str) -> pd.DataFrame:
    """The numbers behind ``structured_table``: summarize() (seeds: params.plot.seeds) of the
    model's dense row and structured instances, with ``structure`` (uniform | adaptive; None for
    dense), ``row`` (0 = dense, then per ratio ascending, method in METHOD_ORDER, structure in
    STRUCTURE_ORDER), ``diff`` (minus the uniform-calibration cell of the same method, ratio and
    structure) and ``mark`` (+1 better / -1 worse beyond the noise, else 0)."""
    s = _model_summary(df, params, model)
    s = s[s["pattern"].map(is_structured) | (s["method"] == "dense")].copy()
    s["structure"] = [p.removeprefix(STRUCTURED_PREFIX) if is_structured(p) else None for p in s["pattern"]]
    for col, order in (("method", METHOD_ORDER), ("weighting", WEIGHTING_ORDER)):
        bad = sorted(set(s[col]) - set(order))
        if bad:
            raise ValueError(f"{model}: structured {col} {bad} not among {list(order)}")
    bad = sorted(set(s["structure"].dropna()) - set(STRUCTURE_ORDER))
    if bad:
        raise ValueError(f"{model}: structure {bad} not among {list(STRUCTURE_ORDER)}")
    def key(r) -> tuple:
        return (r.method != "dense", r.sparsity, METHOD_ORDER.index(r.method),
                STRUCTURE_ORDER.index(r.structure) if is_structured(r.pattern) else -1)

    order = {k: i for i, k in enumerate(sorted({key(r) for r in s.itertuples()}))}
    s["row"] = [order[key(r)] for r in s.itertuples()]
    s = _with_marks(s, df)
    return s.sort_values(["row", "column", "weighting"]).reset_index(drop=True)


def structured_table(df: pd.DataFrame, params, model: str) -> pd.DataFrame:
    """The paper's structured-pruning table for one model, as display strings.

    Rows: the dense model, then per ratio (ascending), method (Magnitude-sp, Wanda-sp, FLAP) and
    structure (uniform, adaptive). Columns: Method, Structure, Ratio, Seeds, then for every task
    of ``evaluate.tasks``, Avg and PPL: "<col> base" (uniform calibration, the paper's Baseline)
    and "<col> sink" (sink-aware), plus "<col> stability" when a stability row exists. Cells:
    mean ± u over seeds (results.summarize); a sink / stability cell is marked ↑ / ↓ beyond the
    noise against the base cell of its row (as in main_table). The dense row fills the base cells.
    """
    cells = structured_table_cells(df, params, model)
    if not (cells["method"] != "dense").any():
        raise ValueError(f"model {model!r} has no structured instances with evaluate results")
    weightings = [w for w in STRUCTURED_WEIGHTINGS if w in set(cells["weighting"]) or w in ("uniform", "sink")]
    cols = [*_task_columns(params), AVERAGE, PPL]
    rows = []
    for _, g in cells.groupby("row", sort=True):
        first = g.iloc[0]
        dense = first["method"] == "dense"
        row = {"Method": METHOD_LABELS["dense"] if dense else method_label(first["method"], first["pattern"]),
               "Structure": "–" if dense else first["structure"], "Ratio": _pct(first["sparsity"]),
               "Seeds": "/".join(str(n) for n in sorted(set(g["n_seeds"].astype(int))))}
        by_cell = {(r.weighting, r.column): r for r in g.itertuples()}
        for col in cols:
            for w in weightings:
                r = by_cell.get(("none" if dense and w == "uniform" else w, col))
                row[f"{_column_label(col)} {STRUCTURED_WEIGHTINGS[w]}"] = (
                    "–" if r is None else fmt_value(r.mean, r.u, int(r.mark)))
        rows.append(row)
    table = pd.DataFrame(rows)
    prim = df[df["primary"] & (df["model"] == model) & (df["task"] != PPL)]
    metric_of = dict(zip(prim["task"], prim["metric"]))
    table.attrs["caption"] = (f"{model}: structured pruning (attention heads / KV groups and MLP channels "
                              f"removed), accuracy (%) per task, Baseline (uniform calibration) vs sink-aware, "
                              f"mean ± uncertainty.")
    table.attrs["footnotes"] = [
        "Ratio: the target share of the blocks' linear-layer parameters removed (embeddings and LM head "
        "excluded); the achieved ratios are in metrics/prune/<instance>.json (structured.achieved_ratio).",
        "Magnitude-sp: column norms; Wanda-sp: mean |W| × the input's weighted norm; FLAP: fluctuation "
        "× squared column norm, bias-compensated by default (An et al., AAAI 2024). Structure uniform: every "
        "block removes the same fraction of its heads and channels; adaptive: FLAP's global ranking of "
        "standardised scores.",
        "base: uniform token weights in calibration (the paper's Baseline); sink: sink-aware weights.",
        "Metric per task: " + ", ".join(f"{TASK_LABELS.get(t, t)} {metric_of.get(t, '?')}"
                                        for t in _task_columns(params))
        + ". Avg: unweighted mean of the task columns.",
        _ppl_note(cells.loc[cells["column"] == PPL, "ppl_kind"]),
        *_uncertainty_notes(),
    ]
    return table


def structured_tables(df: pd.DataFrame, params) -> dict[str, pd.DataFrame]:
    """``structured_<model>`` -> structured_table for every model with structured instances."""
    return {f"structured_{m}": structured_table(df, params, m) for m in pruned_models(df, structured=True)}


def dense_table(df: pd.DataFrame, params) -> pd.DataFrame:
    """The dense models side by side (same columns as main_table, one row per model)."""
    dense = df[df["method"] == "dense"]
    s = summarize(dense)
    tasks = _task_columns(params)
    rows = []
    for model in params.evaluate.dense:
        g = s[s["model"] == model]
        by_col = {r.column: r for r in g.itertuples()}
        row = {"Model": model}
        for col in [*tasks, AVERAGE, PPL]:
            r = by_col.get(col)
            row[_column_label(col)] = "–" if r is None else fmt_value(r.mean, r.u)
        ppl = by_col.get(PPL)
        row["PPL kind"] = ppl.ppl_kind if ppl is not None else "–"
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["caption"] = "Dense models: accuracy (%) ± lm-eval stderr, held-out perplexity."
    table.attrs["footnotes"] = [_ppl_note(s.loc[s["column"] == PPL, "ppl_kind"]),
                                "Avg ± sqrt(Σ se²)/n_tasks."]
    return table


VARIANCE_COLUMNS = {  # variance.json run statistic -> (label, digits)
    "variance": ("Var[p]/T²", 4), "jaccard": ("Jaccard", 3), "dominant_at_0_frac": ("p = 0 (frac.)", 3),
    "dominant_share_x_uniform": ("top share × T", 2), "bos_share": ("[BOS] share", 3),
    "sink_step_frac": ("steps with a sink", 3), "sinks_per_step": ("sinks/step", 2),
}
PRIMARY = {True: "full", False: "newest"}  # kind_is_dlm -> the paper's (bias-free) variant


def _se_over_prompts(units: Mapping[str, Any] | None, run: str, dlm: bool, key: str) -> float:
    """Standard error over prompts of one statistic (NaN without unit values)."""
    urun = ((units or {}).get("runs") or {}).get(run) or {}
    vals = ((urun.get("per_prompt") or {}).get(PRIMARY[dlm]) or {}).get(key)
    v = np.array([x for x in (vals or []) if x is not None], dtype=float)
    return mean_se(v)[1] if v.size >= 2 else float("nan")


def sink_variance_table(variance_metrics: Mapping[str, Any], units: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """metrics/variance.json -> one row per collected run: kind, random init, the global
    statistics of its primary variant, ± the standard error over prompts (metrics/units/variance.json;
    without it: no ±)."""
    runs = variance_metrics.get("runs")
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("variance metrics have no 'runs' (run the variance stage)")
    rows = []
    order = sorted(runs, key=lambda r: (not runs[r].get("kind_is_dlm"), bool(runs[r].get("random_init")), r))
    for run in order:
        st = runs[run]
        dlm = bool(st.get("kind_is_dlm"))
        row = {"Run": run, "Kind": "DLM" if dlm else "AR", "Init": "random" if st.get("random_init") else "trained"}
        for key, (label, digits) in VARIANCE_COLUMNS.items():
            if key in st:
                row[label] = fmt_value(float(st[key]), _se_over_prompts(units, run, dlm, key), digits=digits)
        if "dominant_at_0_frac_expected" in st:
            row["p = 0, prefix / causal expectation"] = fmt_value(
                float(st["dominant_at_0_frac_expected"]), float("nan"), digits=3)
        rows.append(row)
    table = pd.DataFrame(rows).fillna("–")
    table.attrs["caption"] = ("Dominant-sink statistics over the decoding / denoising trajectory "
                              "(global attention mass, the paper's variant per kind: DLM all queries, AR the "
                              "newest query), mean ± standard error over prompts.")
    table.attrs["footnotes"] = [
        "Var[p]/T²: variance over steps of the dominant key position p, over the squared sequence "
        "length. Jaccard: mean overlap of consecutive sink sets. "
        "p = 0: fraction of steps whose dominant key is position 0. top share × T: dominant key's "
        "mass share over the uniform share 1/T (the sink's strength). [BOS] share: mass on position 0 over "
        "the total. Steps with a sink: share of steps whose sink set is non-empty.",
        "p = 0, prefix / causal expectation (AR): the full-prefix column mass divided by its expectation "
        "under uniform causal attention (sum over q >= k of 1/(q+1)), so key 0 is not favoured merely for "
        "being seen by every query; the raw causal column sums are not evidence of a sink.",
        "Random-init runs are the same architectures untrained: the baseline a sink (strength) and a "
        "'moving sink' must beat. ± is the standard error over prompts (srclib.stats).",
    ]
    return table


def sink_vs_uniform_table(df: pd.DataFrame, params, model: str) -> pd.DataFrame:
    """The headline comparison for one model: per headline sparsity and method (unstructured), the
    dense row, then uniform vs sink-aware perplexity and average accuracy, mean ± u, marked
    beyond the noise as in main_table."""
    cells = main_table_cells(df, params, model)

    def cell(method: str, weighting: str, sparsity: float, column: str) -> str:
        hit = cells[(cells["method"] == method) & (cells["weighting"] == weighting) & (cells["sparsity"] == sparsity)
                    & (cells["column"] == column) & cells["pattern"].isin(["dense", "unstructured"])]
        return "–" if hit.empty else fmt_value(hit.iloc[0]["mean"], hit.iloc[0]["u"], int(hit.iloc[0]["mark"]))

    rows = [{"Method": METHOD_LABELS["dense"], "Sparsity": "0%", "Seeds": "1",
             "PPL uniform": cell("dense", "none", 0.0, PPL), "PPL sink-aware": "–",
             "Avg uniform": cell("dense", "none", 0.0, AVERAGE), "Avg sink-aware": "–"}]
    for sparsity in sorted(params.plot.headline_sparsities):
        for method in params.plot.headline_methods:
            pair = cells[(cells["method"] == method) & (cells["sparsity"] == sparsity)
                         & (cells["pattern"] == "unstructured") & cells["weighting"].isin(["uniform", "sink"])]
            if set(pair["weighting"]) != {"uniform", "sink"}:
                continue
            seeds = "/".join(str(n) for n in sorted(set(pair["n_seeds"].astype(int))))
            rows.append({"Method": METHOD_LABELS[method], "Sparsity": _pct(sparsity), "Seeds": seeds,
                         **{f"{label} {wl}": cell(method, w, sparsity, col)
                            for label, col in (("PPL", PPL), ("Avg", AVERAGE))
                            for w, wl in (("uniform", "uniform"), ("sink", "sink-aware"))}})
    table = pd.DataFrame(rows)[["Method", "Sparsity", "Seeds", "PPL uniform", "PPL sink-aware", "Avg uniform",
                                "Avg sink-aware"]]
    kinds = cells.loc[cells["column"] == PPL, "ppl_kind"]
    table.attrs["caption"] = f"{model}: sink-aware vs uniform calibration (unstructured), mean ± uncertainty."
    table.attrs["footnotes"] = [_ppl_note(kinds), "Avg: average task accuracy (%).", *_uncertainty_notes()]
    return table


EFFICIENCY_COLUMNS = {  # efficiency row column -> (label, digits)
    "flops_ratio": ("FLOPs ×", 3), "mem_csr_int32_ratio": ("memory CSR int32 ×", 3),
    "mem_2to4_ratio": ("memory 2:4 ×", 4), "mem_compact_ratio": ("memory compact ×", 3),
    "step_sparse_over_dense": ("step time pruned/dense ×", 2), "measured_speedup": ("speedup measured", 2),
    "ideal_speedup": ("speedup ideal", 2), "measured_over_ideal": ("measured/ideal", 2),
}


def efficiency_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (instance, sparse format, token shape) of srclib.report.loaders.efficiency_rows:
    ratios to the dense model (theoretical FLOPs and weight memory, measured median step time)."""
    out = []
    for r in rows.itertuples():
        rec = {"Instance": r.instance, "Format": r.format, "Tokens": r.shape}
        for col, (label, digits) in EFFICIENCY_COLUMNS.items():
            v = getattr(r, col, None)
            rec[label] = ("–" if v is None or (isinstance(v, float) and not math.isfinite(v))
                          else f"{float(v):.{digits}f}")
        out.append(rec)
    table = pd.DataFrame(out)
    table.attrs["caption"] = "Efficiency of the pruned models relative to dense (metrics/efficiency.json)."
    table.attrs["footnotes"] = ["FLOPs and memory: theory from the masks (unstructured, 2:4: csr format) or "
                                "the compact shapes (structured: compact format); step time: measured median "
                                "ratio (> 1: slower than dense); ideal speedup: dense / pruned FLOPs of one "
                                "full forward (structured only)."]
    return table


def comparisons_table(df: pd.DataFrame, params, model: str) -> pd.DataFrame:
    """Every paired test behind the marks of one model's main and structured tables: per
    (method, structure, sparsity, pattern, weighting vs uniform, column) the effect (points; NLL:
    nats per token), its 95% CI, p, the unit count and the minimal detectable effect (80% power,
    alpha 0.05), and the verdict (srclib.report.inference)."""
    frames = []
    if (df[(df["model"] == model) & (df["method"] != "dense")]["pattern"].map(lambda p: not is_structured(p))).any():
        frames.append(main_table_cells(df, params, model).assign(structure="–"))
    if (df[(df["model"] == model)]["pattern"].map(is_structured)).any():
        frames.append(structured_table_cells(df, params, model))
    rows = []
    for cells in frames:
        tested = cells[cells["test"].fillna("").astype(str) != ""]
        for r in tested.itertuples():
            c = Comparison(diff=float(r.effect), low=float(r.low), high=float(r.high), p_value=float(r.p_value),
                           n=int(r.n_units), mde=float(r.mde))
            unit = "nats/token" if r.column == PPL else "points"
            rows.append({"Method": method_label(r.method, r.pattern), "Structure": r.structure or "–",
                         "Sparsity": _pct(r.sparsity), "Pattern": r.pattern, "Weighting": WEIGHTING_LABELS[r.weighting],
                         "Column": _column_label(r.column), "Seeds": str(int(r.n_seeds)),
                         "Effect": f"{c.diff:+.4f}" if r.column == PPL else f"{c.diff:+.1f}",
                         "95% CI": (f"[{c.low:+.4f}, {c.high:+.4f}]" if r.column == PPL
                                    else f"[{c.low:+.1f}, {c.high:+.1f}]"),
                         "p": f"{c.p_value:.2g}", "n": str(c.n),
                         "mde": f"{c.mde:.4f}" if r.column == PPL else f"{c.mde:.1f}", "Unit": unit,
                         "Test": str(r.test), "Verdict": inference.verdict_text(c, r.column)})
    table = pd.DataFrame(rows, columns=["Method", "Structure", "Sparsity", "Pattern", "Weighting", "Column", "Seeds",
                                        "Effect", "95% CI", "p", "n", "mde", "Unit", "Test", "Verdict"])
    table.attrs["caption"] = (f"{model}: every sink-aware (or stability) cell against the uniform cell of its "
                              "row, paired on the same items / windows.")
    table.attrs["footnotes"] = [
        "Effect: second minus first (sink-aware minus uniform), accuracy in percentage points, perplexity "
        "as NLL per token (nats; negative = lower perplexity = better). 95% CI: paired t-interval (Wald for "
        "McNemar). p: two-sided, exact McNemar for one seed each, else a sign-flip test on the seed-averaged "
        "units; not corrected for the number of rows.",
        "mde: the smallest effect this design detects with 80% power at alpha 0.05. Verdict: holds (better "
        "at p < 0.05), opposite (worse at p < 0.05) or no difference larger than the mde.",
    ]
    return table


def comparisons_tables(df: pd.DataFrame, params) -> dict[str, pd.DataFrame]:
    """``comparisons_<model>`` -> comparisons_table for every model with pruned instances."""
    return {f"comparisons_{m}": comparisons_table(df, params, m) for m in pruned_models(df)}
