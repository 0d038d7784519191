"""The plot stage's data side: results tables, DVC plot series and the report index (no matplotlib).

Inputs are the metrics files the other stages write (srclib.paths spells every path):

* ``metrics/evaluate/<instance>.json`` (srclib.evaluation.run_evaluate): ``tasks`` ->
  {task: {"metrics": {name: value}, "stderr": {name: value}, ...}} and ``ppl`` ->
  {"kind": "elbo" | "exact", "ppl": value, ...} or null. Dense models are evaluated under their
  model key (``evaluate.dense``), pruned ones under their instance name (``prune.instances``).
* ``metrics/variance.json`` (run_variance: ``runs`` -> global statistics per collected run) and
  ``sinks/<run>.json`` (its full per-layer statistics); ``trajectories/<run>.safetensors``.
* ``metrics/prune/<instance>.json`` (per-layer actual sparsity), ``metrics/train/<key>.json``
  (``loss`` per step), ``metrics/efficiency.json`` (optional).

The main table (``main_table``), one per model with pruned instances:

* rows: dense, then per sparsity (ascending) and pattern (unstructured, 2:4, 4:8) each method
  (magnitude, wanda, sparsegpt) with each weighting present (uniform, sink, stability);
* columns: every task of ``evaluate.tasks`` (primary metric, see ``PRIMARY_METRICS``), their
  unweighted average, held-out perplexity;
* accuracies in percent. Each cell is the mean over the calibration seeds of the configuration
  (seeds restricted to ``plot.seeds``) +- an uncertainty u:

  - several seeds: u = sample standard deviation over seeds (ddof 1). It measures calibration
    randomness only: every seed is scored on the same items, so the benchmark's item sampling
    error is not in it;
  - one seed: u = lm-eval's stderr of the metric; for the average sqrt(sum_t se_t^2) / n_tasks
    (tasks taken as independent); a single perplexity has no u;

* a sink-aware (or stability) cell is marked when it differs from the uniform row of the same
  method, sparsity and pattern by more than ``NOISE_K`` * sqrt(u1^2 + u2^2) (``exceeds_noise``):
  "up" when it is better (higher accuracy, lower perplexity), "down" when worse; a difference
  inside that band is reported as no difference (unmarked), and so is any comparison where an
  uncertainty is missing.

Primary metric per task: the first of ``PRIMARY_METRICS`` that every result file of the task
reports: ``acc_norm`` where lm-eval gives it (ARC-E, ARC-C, PIQA, HellaSwag, SciQ, OpenBookQA),
else ``acc`` (WinoGrande, MMLU), ``exact_match`` (strict-match, then flexible-extract) for GSM8K.
"""

from __future__ import annotations

import base64
import csv
import html
import io as _io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from srclib import paths
from srclib.files import read_json, write_text

__all__ = [
    "PRIMARY_METRICS", "TASK_LABELS", "NOISE_K", "CONFIG_COLUMNS",
    "load_results", "primary_metrics", "pruned_models", "instance_values", "summarize", "exceeds_noise",
    "main_table_cells", "main_table", "main_tables", "dense_table", "sink_variance_table",
    "table_markdown", "table_html", "table_latex", "latex_escape", "write_tables",
    "accuracy_series", "accuracy_errors", "perplexity_series", "variance_series", "write_series",
    "load_variance", "load_trajectories", "trajectory_plot_data", "load_prune_metrics", "load_train_metrics",
    "build_index", "git_commit", "Gallery", "run_plot",
]

log = logging.getLogger(__name__)

# preference order of lm-eval metric names for a task's headline number (module docstring)
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match,strict-match", "exact_match,flexible-extract",
                   "exact_match")
TASK_LABELS = {
    "arc_easy": "ARC-E", "arc_challenge": "ARC-C", "piqa": "PIQA", "hellaswag": "HellaSwag",
    "winogrande": "WinoGrande", "openbookqa": "OBQA", "sciq": "SciQ", "mmlu": "MMLU",
    "gsm8k": "GSM8K",
}
METHOD_LABELS = {"dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
WEIGHTING_LABELS = {"none": "–", "uniform": "uniform", "sink": "sink-aware", "stability": "stability"}
METHOD_ORDER = ("dense", "magnitude", "wanda", "sparsegpt")
WEIGHTING_ORDER = ("none", "uniform", "sink", "stability")
PATTERN_ORDER = ("dense", "unstructured", "2:4", "4:8")
NOISE_K = 2.0  # a difference counts when |diff| > NOISE_K * sqrt(u1^2 + u2^2)
CONFIG_COLUMNS = ["model", "method", "weighting", "sparsity", "pattern"]
AVERAGE, PPL = "average", "ppl"  # the two derived columns of the main table
DENSE_CONFIG = {"method": "dense", "weighting": "none", "sparsity": 0.0, "pattern": "dense", "seed": 0}
MARK_TEXT = {1: " ↑", -1: " ↓", 0: ""}
PPL_KIND_TEXT = {"elbo": "MC-ELBO upper bound (diffusion LM)", "exact": "exact (causal LM)"}


# =================================================================================================
# loading the evaluation results
# =================================================================================================
def _instance_configs(params) -> dict[str, dict[str, Any]]:
    """name -> {model, method, weighting, sparsity, pattern, seed} of every evaluated instance."""
    out: dict[str, dict[str, Any]] = {}
    for key in params.evaluate.dense:
        out[key] = {"model": key, **DENSE_CONFIG}
    for name, inst in params.prune.instances.items():
        out[name] = {"model": inst.model, "method": inst.method, "weighting": inst.weighting,
                     "sparsity": float(inst.sparsity), "pattern": inst.pattern, "seed": int(inst.seed)}
    return out


def primary_metrics(files: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, str]:
    """task -> the first name of PRIMARY_METRICS that every file reports for it (with a value).

    files: file label -> evaluate metrics JSON. Raises naming the task if no candidate is common.
    """
    out = {}
    for task in tasks:
        common = None
        for data in files.values():
            have = {m for m, v in data["tasks"][task]["metrics"].items() if v is not None}
            common = have if common is None else common & have
        pick = next((m for m in PRIMARY_METRICS if m in (common or set())), None)
        if pick is None:
            raise ValueError(
                f"task {task!r}: no metric among {list(PRIMARY_METRICS)} is reported (with a value) "
                f"by every evaluate metrics file; reported in common: {sorted(common or [])}"
            )
        out[task] = pick
    return out


def load_results(params, root: str | Path | None = None) -> pd.DataFrame:
    """Every evaluated instance's results, one row per (instance, task, metric), with its config.

    Columns: instance, model, method, weighting, sparsity, pattern, seed (dense models: method
    "dense", weighting "none", sparsity 0, pattern "dense", seed 0), task, metric, value, stderr
    (raw lm-eval numbers: fractions), primary (the task's primary metric of a task in
    ``evaluate.tasks``; see PRIMARY_METRICS), causal (the file's model.causal), file. Held-out perplexity: task "ppl", metric
    "ppl_elbo" (diffusion LMs, an upper bound) or "ppl_exact" (causal LMs), primary True.
    Raises FileNotFoundError naming every missing metrics file, ValueError naming the file and
    task when a configured task is absent or the file belongs to another model.
    """
    configs = _instance_configs(params)
    tasks = list(params.evaluate.tasks)
    files = {name: paths.eval_metrics(name, root=root) for name in configs}
    missing = [paths.rel(p, root) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"evaluate metrics missing for {len(missing)} instance(s) (run the evaluate stage): "
            + ", ".join(missing)
        )
    data = {name: read_json(p) for name, p in files.items()}
    for name, d in data.items():
        where = paths.rel(files[name], root)
        if not isinstance(d.get("tasks"), dict):
            raise ValueError(f"{where}: no 'tasks' mapping; not an evaluate metrics file")
        key = (d.get("model") or {}).get("key")
        if key is not None and key != configs[name]["model"]:
            raise ValueError(f"{where}: evaluated model {key!r}, but params say instance {name!r} "
                             f"is model {configs[name]['model']!r} (stale file? rerun evaluate)")
        absent = [t for t in tasks if t not in d["tasks"]]
        if absent:
            raise ValueError(f"{where}: no results for task(s) {absent} of evaluate.tasks "
                             f"(has {sorted(d['tasks'])}); rerun the evaluate stage")
    primary = primary_metrics({paths.rel(files[n], root): d for n, d in data.items()}, tasks)
    rows = []
    for name, d in data.items():
        base = {"instance": name, **configs[name], "causal": bool((d.get("model") or {}).get("causal", False)),
                "file": paths.rel(files[name], root)}
        for task, res in sorted(d["tasks"].items()):
            for metric, value in sorted(res["metrics"].items()):
                err = res.get("stderr", {}).get(metric)
                rows.append({**base, "task": task, "metric": metric,
                             "value": float("nan") if value is None else float(value),
                             "stderr": float("nan") if err is None else float(err),
                             "primary": primary.get(task) == metric})
        ppl = d.get("ppl")
        if ppl is not None:
            rows.append({**base, "task": PPL, "metric": f"ppl_{ppl['kind']}", "value": float(ppl["ppl"]),
                         "stderr": float("nan"), "primary": True})
    cols = ["instance", "model", "method", "weighting", "sparsity", "pattern", "seed", "causal", "task", "metric",
            "value", "stderr", "primary", "file"]
    return pd.DataFrame(rows, columns=cols)


# =================================================================================================
# per-instance values and per-configuration summaries
# =================================================================================================
def instance_values(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (instance, column): the task columns (primary metric, percent), ``average``
    (their unweighted mean; stderr sqrt(sum se^2) / n) and ``ppl`` (stderr NaN).

    Columns: instance, model, method, weighting, sparsity, pattern, seed, column, value, stderr,
    ppl_kind (ppl rows only).
    """
    prim = df[df["primary"]]
    keys = ["instance", *CONFIG_COLUMNS, "seed"]
    acc = prim[prim["task"] != PPL]
    rows = []
    for key, g in acc.groupby(keys, sort=True):
        rec = dict(zip(keys, key))
        for _, r in g.iterrows():
            rows.append({**rec, "column": r["task"], "value": 100.0 * r["value"],
                         "stderr": 100.0 * r["stderr"], "ppl_kind": None})
        se = 100.0 * g["stderr"].to_numpy()
        rows.append({**rec, "column": AVERAGE, "value": float(np.mean(100.0 * g["value"].to_numpy())),
                     "stderr": float(math.sqrt(np.sum(se**2)) / len(se)), "ppl_kind": None})
    for _, r in prim[prim["task"] == PPL].iterrows():
        rows.append({**{k: r[k] for k in keys}, "column": PPL, "value": r["value"],
                     "stderr": float("nan"), "ppl_kind": r["metric"].removeprefix("ppl_")})
    return pd.DataFrame(rows, columns=[*keys, "column", "value", "stderr", "ppl_kind"])


def summarize(df: pd.DataFrame, seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Per configuration and column: mean over seeds +- u (module docstring).

    df: load_results output. seeds: calibration seeds to aggregate over (dense rows are kept
    whatever their seed); None: all. Columns: model, method, weighting, sparsity, pattern,
    column, mean, u (NaN when unknown), n_seeds, source ("seeds" | "stderr" | "none"), seeds
    (comma-separated), ppl_kind.
    """
    vals = instance_values(df)
    if seeds is not None:
        keep = (vals["method"] == "dense") | vals["seed"].isin(list(seeds))
        dropped = sorted(set(vals.loc[~keep, "instance"]))
        if dropped:
            log.warning("ignoring %d instance(s) whose seed is not in plot.seeds %s: %s",
                        len(dropped), list(seeds), dropped)
        vals = vals[keep]
    rows = []
    for key, g in vals.groupby([*CONFIG_COLUMNS, "column"], sort=True):
        v = g["value"].to_numpy(dtype=float)
        n = len(v)
        if n >= 2:
            mean, u, source = float(np.mean(v)), float(np.std(v, ddof=1)), "seeds"
        else:
            se = float(g["stderr"].iloc[0])
            mean, u, source = float(v[0]), se, ("stderr" if math.isfinite(se) else "none")
        kinds = sorted({k for k in g["ppl_kind"] if k})
        rows.append({**dict(zip([*CONFIG_COLUMNS, "column"], key)), "mean": mean, "u": u, "n_seeds": n,
                     "source": source, "seeds": ",".join(str(s) for s in sorted(g["seed"])),
                     "ppl_kind": kinds[0] if kinds else None})
    return pd.DataFrame(rows, columns=[*CONFIG_COLUMNS, "column", "mean", "u", "n_seeds", "source", "seeds",
                                       "ppl_kind"])


def exceeds_noise(diff: float, u1: float | None, u2: float | None, k: float = NOISE_K) -> bool:
    """|diff| > k * sqrt(u1^2 + u2^2); False when an uncertainty is unknown (None / NaN)."""
    if u1 is None or u2 is None or not (math.isfinite(u1) and math.isfinite(u2)):
        return False
    return abs(diff) > k * math.sqrt(u1 * u1 + u2 * u2)


def _row_order(cfg: Mapping[str, Any]) -> tuple:
    return (cfg["method"] != "dense", float(cfg["sparsity"]), PATTERN_ORDER.index(cfg["pattern"]),
            METHOD_ORDER.index(cfg["method"]), WEIGHTING_ORDER.index(cfg["weighting"]))


def main_table_cells(df: pd.DataFrame, params, model: str) -> pd.DataFrame:
    """The numbers behind ``main_table``: summarize() for one model, rows in table order, with
    ``row`` (0, 1, ...), ``diff`` (minus the uniform row of the same method/sparsity/pattern,
    NaN where there is none) and ``mark`` (+1 better / -1 worse beyond the noise, else 0)."""
    s = summarize(df[df["model"] == model], seeds=params.plot.seeds)
    if s.empty:
        raise ValueError(f"no evaluate results for model {model!r}; models with results: "
                         f"{sorted(set(df['model']))}")
    cfgs = s[["method", "weighting", "sparsity", "pattern"]].drop_duplicates().to_dict("records")
    cfgs.sort(key=_row_order)
    order = {tuple(c.values()): i for i, c in enumerate(cfgs)}
    s = s.copy()
    s["row"] = [order[(r.method, r.weighting, r.sparsity, r.pattern)] for r in s.itertuples()]
    ref = s[s["weighting"] == "uniform"].set_index(["method", "sparsity", "pattern", "column"])
    diffs, marks = [], []
    for r in s.itertuples():
        key = (r.method, r.sparsity, r.pattern, r.column)
        if r.weighting in ("none", "uniform") or key not in ref.index:
            diffs.append(float("nan"))
            marks.append(0)
            continue
        u0 = ref.loc[key]
        diff = r.mean - float(u0["mean"])
        diffs.append(diff)
        better = -diff if r.column == PPL else diff
        marks.append(int(np.sign(better)) if exceeds_noise(diff, r.u, float(u0["u"])) else 0)
    s["diff"], s["mark"] = diffs, marks
    _warn_headline_seeds(s, params, model)
    return s.sort_values(["row", "column"]).reset_index(drop=True)


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


def _fmt(mean: float, u: float, mark: int = 0, digits: int = 1) -> str:
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


def _uncertainty_notes(k: float = NOISE_K) -> list[str]:
    return [
        "Seeds > 1: mean ± sample standard deviation (ddof 1) over calibration seeds. The spread "
        "covers calibration randomness only: every seed is scored on the same items, so the "
        "benchmark's item-sampling error is not included.",
        "Seeds = 1: ± lm-eval's standard error; Avg ± sqrt(Σ se²)/n_tasks (tasks taken as "
        "independent); a single perplexity has no uncertainty.",
        f"↑ / ↓: sink-aware (or stability) better / worse than the uniform row of the same method, "
        f"sparsity and pattern by more than {k:g}·sqrt(u₁² + u₂²) (better: higher accuracy, lower "
        f"perplexity). Unmarked differences are inside the noise: no difference.",
    ]


def main_table(df: pd.DataFrame, params, model: str | None = None) -> pd.DataFrame:
    """The paper-style table for one model as display strings (module docstring for its rules).

    model: default the only model with pruned instances in ``df``. Columns: Method, Weighting,
    Sparsity, Pattern, Seeds, one per task (TASK_LABELS), Avg, PPL. ``table.attrs`` holds
    ``caption`` and ``footnotes`` (write_tables renders them).
    """
    if model is None:
        pruned = sorted(set(df.loc[df["method"] != "dense", "model"]))
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
            row[_column_label(col)] = "–" if r is None else _fmt(r.mean, r.u, r.mark)
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


def pruned_models(df: pd.DataFrame) -> list[str]:
    """Models with pruned instances: diffusion LMs first (the study's subject), then by name."""
    pruned = df[df["method"] != "dense"]
    causal = pruned.groupby("model")["causal"].any() if "causal" in pruned else pd.Series(dtype=bool)
    return sorted(set(pruned["model"]), key=lambda m: (bool(causal.get(m, False)), m))


def main_tables(df: pd.DataFrame, params) -> dict[str, pd.DataFrame]:
    """``main_<model>`` -> main_table for every model with pruned instances (pruned_models order)."""
    return {f"main_{m}": main_table(df, params, m) for m in pruned_models(df)}


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
            row[_column_label(col)] = "–" if r is None else _fmt(r.mean, r.u)
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
    "dominant_share_x_uniform": ("top share × T", 2), "sinks_per_step": ("sinks/step", 2),
}


def sink_variance_table(variance_metrics: Mapping[str, Any]) -> pd.DataFrame:
    """metrics/variance.json -> one row per collected run: kind, random init, the global
    statistics of its primary variant (mean ± std over prompts where the file gives a std)."""
    runs = variance_metrics.get("runs")
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("variance metrics have no 'runs' (run the variance stage)")
    rows = []
    order = sorted(runs, key=lambda r: (not runs[r].get("kind_is_dlm"), bool(runs[r].get("random_init")), r))
    for run in order:
        st = runs[run]
        row = {"Run": run, "Kind": "DLM" if st.get("kind_is_dlm") else "AR",
               "Init": "random" if st.get("random_init") else "trained"}
        for key, (label, digits) in VARIANCE_COLUMNS.items():
            if key in st:
                row[label] = _fmt(float(st[key]), float(st.get(f"{key}_std", float("nan"))), digits=digits)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["caption"] = ("Dominant-sink statistics over the decoding / denoising trajectory "
                              "(global attention mass, the paper's variant per kind).")
    table.attrs["footnotes"] = [
        "Var[p]/T²: variance over steps of the dominant key position p, over the squared sequence "
        "length (mean ± std over prompts). Jaccard: mean overlap of consecutive sink sets. "
        "p = 0: fraction of steps whose dominant key is position 0. top share × T: dominant key's "
        "mass share over the uniform share 1/T.",
        "Random-init runs are the same architectures untrained: the baseline a 'moving sink' "
        "must beat.",
    ]
    return table


# =================================================================================================
# rendering tables (markdown, HTML, LaTeX), deterministic
# =================================================================================================
def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: pd.DataFrame) -> str:
    """A GitHub-style pipe table with the caption above and the footnotes below."""
    cols = [str(c) for c in table.columns]
    out = []
    if table.attrs.get("caption"):
        out += [f"**{table.attrs['caption']}**", ""]
    out.append("| " + " | ".join(_md_cell(c) for c in cols) + " |")
    out.append("|" + "|".join(" --- " for _ in cols) + "|")
    for row in table.itertuples(index=False):
        out.append("| " + " | ".join(_md_cell(x) for x in row) + " |")
    notes = table.attrs.get("footnotes") or []
    if notes:
        out.append("")
        out += [f"{i}. {_md_cell(n)}" for i, n in enumerate(notes, 1)]
    return "\n".join(out) + "\n"


HTML_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;font-size:14px}"
    "th,td{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}"
    "th{border-bottom:2px solid #444}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}"
    "caption{caption-side:top;font-weight:bold;text-align:left;margin-bottom:.5em}"
    "ol.notes{font-size:12px;color:#444;max-width:60em}"
)


def _html_table(table: pd.DataFrame) -> str:
    e = html.escape
    out = ["<table>"]
    if table.attrs.get("caption"):
        out.append(f"<caption>{e(table.attrs['caption'])}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in table.columns) + "</tr></thead>")
    out.append("<tbody>")
    for row in table.itertuples(index=False):
        out.append("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in row) + "</tr>")
    out.append("</tbody></table>")
    notes = table.attrs.get("footnotes") or []
    if notes:
        out.append('<ol class="notes">' + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ol>")
    return "\n".join(out)


def table_html(table: pd.DataFrame, title: str) -> str:
    """A complete, self-contained HTML page holding the table and its footnotes."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
        + _html_table(table) + "\n</body>\n</html>\n"
    )


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
LATEX_UNICODE = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "–": "--", "×": r"$\times$",
                 "Σ": r"$\Sigma$", "²": r"\textsuperscript{2}", "₁": r"$_1$", "₂": r"$_2$", "·": r"$\cdot$"}


def latex_escape(text: Any) -> str:
    out = []
    for ch in str(text):
        out.append(LATEX_SPECIAL.get(ch) or LATEX_UNICODE.get(ch) or ch)
    return "".join(out)


def table_latex(table: pd.DataFrame, label: str) -> str:
    """A booktabs ``table`` float (needs \\usepackage{booktabs}); footnotes below the tabular."""
    n = len(table.columns)
    align = "ll" + "r" * (n - 2) if n >= 2 else "l" * n
    out = ["% generated by srclib.report; needs \\usepackage{booktabs}",
           "\\begin{table}[t]", "\\centering", "\\small"]
    if table.attrs.get("caption"):
        out.append(f"\\caption{{{latex_escape(table.attrs['caption'])}}}")
    out.append(f"\\label{{tab:{latex_escape(label)}}}")
    out += [f"\\begin{{tabular}}{{{align}}}", "\\toprule",
            " & ".join(latex_escape(c) for c in table.columns) + " \\\\", "\\midrule"]
    for row in table.itertuples(index=False):
        out.append(" & ".join(latex_escape(x) for x in row) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    for i, note in enumerate(table.attrs.get("footnotes") or [], 1):
        out.append(f"\\par\\footnotesize ({i}) {latex_escape(note)}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


TABLE_FORMATS: dict[str, Callable[[pd.DataFrame, str], str]] = {
    "md": lambda t, name: table_markdown(t),
    "html": table_html,
    "tex": table_latex,
}


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Write every table as <name>.md, <name>.html, <name>.tex into out_dir, each atomically and
    byte-deterministic (no timestamps). Returns the written paths, sorted."""
    out_dir = Path(out_dir)
    written = []
    for name, table in sorted(tables.items()):
        for ext, render in TABLE_FORMATS.items():
            written.append(write_text(out_dir / f"{name}.{ext}", render(table, name)))
    return sorted(written)


# =================================================================================================
# DVC plot series
# =================================================================================================
def accuracy_series(df: pd.DataFrame) -> pd.DataFrame:
    """Average accuracy (percent, mean over seeds of the unweighted task mean) per model, method,
    weighting and sparsity; unstructured pruning plus each dense model at sparsity 0 (method
    "dense", weighting "none"). Columns: sparsity, accuracy, method, weighting, model."""
    s = summarize(df)
    s = s[(s["column"] == AVERAGE) & s["pattern"].isin(["dense", "unstructured"])]
    out = s.rename(columns={"mean": "accuracy"})[["sparsity", "accuracy", "method", "weighting", "model"]]
    return _sorted_series(out, ["model", "method", "weighting", "sparsity"])


def perplexity_series(df: pd.DataFrame) -> pd.DataFrame:
    """Like accuracy_series for held-out perplexity. Columns: sparsity, ppl, ppl_u, n_seeds,
    ppl_kind, method, weighting, model."""
    s = summarize(df)
    s = s[(s["column"] == PPL) & s["pattern"].isin(["dense", "unstructured"])]
    out = s.rename(columns={"mean": "ppl", "u": "ppl_u"})[
        ["sparsity", "ppl", "ppl_u", "n_seeds", "ppl_kind", "method", "weighting", "model"]]
    return _sorted_series(out, ["model", "method", "weighting", "sparsity"])


def accuracy_errors(df: pd.DataFrame) -> pd.DataFrame:
    """accuracy_series plus ``accuracy_u`` (its uncertainty) and ``n_seeds`` (for error bars)."""
    s = summarize(df)
    s = s[(s["column"] == AVERAGE) & s["pattern"].isin(["dense", "unstructured"])]
    out = s.rename(columns={"mean": "accuracy", "u": "accuracy_u"})[
        ["sparsity", "accuracy", "accuracy_u", "n_seeds", "method", "weighting", "model"]]
    return _sorted_series(out, ["model", "method", "weighting", "sparsity"])


def _sorted_series(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return df.sort_values(by, kind="mergesort").reset_index(drop=True)


def variance_series(variance_plots: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per-layer normalised dominant-sink variance of every run. variance_plots: run ->
    {"variance_per_layer": (L,)} (run_variance's ``plots`` or load_variance's). Columns: layer,
    variance, model (the run name, e.g. ``tiny-dlm-randinit``)."""
    rows = []
    for run in sorted(variance_plots):
        for layer, v in enumerate(np.asarray(variance_plots[run]["variance_per_layer"], dtype=float)):
            rows.append({"layer": layer, "variance": float(v), "model": run})
    return pd.DataFrame(rows, columns=["layer", "variance", "model"])


def write_series(df: pd.DataFrame, path: str | Path) -> Path:
    """A CSV (comma, '\\n', floats as repr) written atomically and deterministically."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(df.columns))
    for row in df.itertuples(index=False):
        writer.writerow([repr(float(x)) if isinstance(x, (float, np.floating)) else x for x in row])
    return write_text(path, buf.getvalue())


# =================================================================================================
# loading the other stages' outputs
# =================================================================================================
def load_variance(root: str | Path | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(metrics/variance.json, plots) where plots mirrors run_variance's: run ->
    {"variance_per_layer": (L,) from sinks/<run>.json (primary variant), "kind", "random_init"}."""
    from srclib.trajectories import PRIMARY_VARIANT

    metrics = read_json(paths.variance_metrics(root=root))
    runs = metrics.get("runs") or {}
    if not runs:
        raise ValueError(f"{paths.variance_metrics(root=root)}: no runs (run the variance stage)")
    plots = {}
    for run in sorted(runs):
        st = read_json(paths.sink_stats(run, root=root))
        kind = st["meta"]["kind"]
        layers = st["variants"][PRIMARY_VARIANT[kind]]["layers"]
        plots[run] = {"variance_per_layer": np.array([float(s["variance"]) for s in layers]),
                      "kind": kind, "random_init": bool(st["meta"].get("random_init"))}
    return metrics, plots


def load_trajectories(runs: Iterable[str], root: str | Path | None = None) -> dict[str, Any]:
    """run -> srclib.trajectories.Trajectory from trajectories/<run>.safetensors."""
    from srclib.trajectories import load_trajectory

    return {run: load_trajectory(paths.trajectory_file(run, root=root)) for run in runs}


def trajectory_plot_data(traj) -> dict[str, Any]:
    """What run_variance's ``plots`` hold for one trajectory, from the trajectory alone:
    {"global_mass_norm": (B, S, T) per-step normalised global mass of the primary variant (zero at
    keys that do not exist yet), "dominant": {primary variant: (B, S) dominant key positions over
    the keys that exist (ties: lowest index)}, "prompt_len": P}."""
    import torch

    from srclib.sinks import dominant_positions
    from srclib.trajectories import PRIMARY_VARIANT

    variant = PRIMARY_VARIANT[traj.kind]
    gm = traj.variants()[variant].sum(1)  # (S, B, T)
    S, B, _ = gm.shape
    dom = torch.zeros(S, B, dtype=torch.long)
    for s in range(S):
        dom[s] = dominant_positions(gm[s, :, : int(traj.valid_len[s])])  # (B,)
    norm = (gm / gm.sum(-1, keepdim=True).clamp_min(1e-30)).permute(1, 0, 2)  # (B, S, T)
    return {"global_mass_norm": norm.numpy(), "dominant": {variant: dom.T.numpy()},
            "prompt_len": int(traj.prompt_ids.shape[1])}


def load_prune_metrics(params, root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """instance -> metrics/prune/<instance>.json for every prune instance; missing files: one
    FileNotFoundError naming them all."""
    files = {name: paths.prune_metrics(name, root=root) for name in params.prune.instances}
    missing = [paths.rel(p, root) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"prune metrics missing (run the prune stage): {', '.join(missing)}")
    return {name: read_json(p) for name, p in files.items()}


def load_train_metrics(keys: Iterable[str], root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """key -> metrics/train/<key>.json for the keys whose file exists (other models are not trained)."""
    return {k: read_json(paths.train_metrics(k, root=root)) for k in keys
            if paths.train_metrics(k, root=root).is_file()}


# =================================================================================================
# the index page
# =================================================================================================
def git_commit(root: str | Path | None = None) -> str:
    """HEAD's commit hash (+ " (uncommitted changes)" when tracked files differ), or "unknown"."""
    from srclib.provenance import git_commit as _commit

    return _commit(root, mark_dirty=True) or "unknown"


def _params_text(params) -> str:
    if isinstance(params, str):
        return params
    if isinstance(params, Mapping):
        data = dict(params)
    else:
        from srclib.params import as_dict

        data = as_dict(params)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)


INDEX_STYLE = (
    "body{font-family:sans-serif;margin:2em auto;max-width:70em;color:#222;line-height:1.4}"
    "h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}"
    "figure{display:inline-block;margin:0 1.5em 1.5em 0;vertical-align:top}"
    "figure img{max-width:32em;border:1px solid #ddd}figcaption{font-size:.9em}"
    "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"
    "code{background:#f6f6f6;padding:0 .2em}"
)


def build_index(root: str | Path | None, params, commit: str) -> Path:
    """Write reports/index.html: links to every rendered notebook (reports/html/**/*.html, the
    plot stage's own report always listed), every figure (reports/figures/*.png shown with
    <img>, its PDF linked), every table (reports/tables/*), the params (YAML in a <pre>) and the
    git commit. Relative links only, sorted listings, no timestamps; written atomically."""
    index = paths.index_html(root=root)
    base = index.parent
    e = html.escape

    def link(p: Path) -> str:
        return Path(p).relative_to(base).as_posix()

    html_root = paths.report_html("plot", "plot", root=root).parent.parent  # reports/html
    notebooks = set(html_root.glob("**/*.html")) if html_root.is_dir() else set()
    notebooks.add(paths.report_html("plot", "plot", root=root))  # rendered after the plot notebook
    figures = sorted(paths.figures_dir(root=root).glob("*.png"))
    tables = sorted(p for p in paths.tables_dir(root=root).glob("*") if p.is_file() and not p.name.startswith("."))

    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>Sink-aware pruning study: report index</title>",
           f"<style>{INDEX_STYLE}</style>", "</head>", "<body>",
           "<h1>Sink-aware pruning study: report index</h1>",
           f"<p>Built from commit <code>{e(commit)}</code> with the parameters below. Every number "
           "comes from a metrics file written by srclib; <code>dvc repro</code> rebuilds this page.</p>",
           '<h2 id="stages">Stage reports</h2>', "<ul>"]
    by_stage: dict[str, list[Path]] = {}
    for p in sorted(notebooks):
        by_stage.setdefault(p.parent.name, []).append(p)
    stage_order = list(paths.STAGE_NOTEBOOKS)
    for stage in sorted(by_stage, key=lambda s: (stage_order.index(s) if s in stage_order else len(stage_order), s)):
        items = ", ".join(f'<a href="{e(link(p))}">{e(p.stem)}</a>' for p in by_stage[stage])
        out.append(f"<li><strong>{e(stage)}</strong>: {items}</li>")
    out += ["</ul>", '<h2 id="tables">Tables</h2>', "<ul>"]
    by_table: dict[str, list[Path]] = {}
    for p in tables:
        by_table.setdefault(p.stem, []).append(p)
    for stem, files in sorted(by_table.items()):
        items = " ".join(f'<a href="{e(link(p))}">{e(p.suffix.lstrip(".") or p.name)}</a>' for p in files)
        out.append(f"<li>{e(stem)}: {items}</li>")
    out += ["</ul>", '<h2 id="figures">Figures</h2>', "<div>"]
    for p in figures:
        pdf = p.with_suffix(".pdf")
        extra = f' (<a href="{e(link(pdf))}">PDF</a>)' if pdf.is_file() else ""
        out.append(f'<figure><a href="{e(link(p))}"><img src="{e(link(p))}" alt="{e(p.stem)}"></a>'
                   f"<figcaption>{e(p.stem)}{extra}</figcaption></figure>")
    out += ["</div>", '<h2 id="params">Parameters (params.yaml)</h2>',
            f"<pre>{e(_params_text(params))}</pre>", "</body>", "</html>"]
    return write_text(index, "\n".join(out) + "\n")


# =================================================================================================
# the stage
# =================================================================================================
class Gallery(dict):
    """stem -> PNG path; shows the images inline in a notebook (base64, so the rendered HTML
    report is self-contained)."""

    def _repr_html_(self) -> str:
        parts = []
        for stem, png in self.items():
            data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
            parts.append(f'<figure style="margin:0 0 1.5em 0"><img style="max-width:100%" '
                         f'src="data:image/png;base64,{data}" alt="{html.escape(stem)}">'
                         f"<figcaption>{html.escape(stem)}</figcaption></figure>")
        return "\n".join(parts)


@dataclass
class _Figures:
    out_dir: Path
    gallery: Gallery

    def save(self, stem: str, fig) -> None:
        import matplotlib.pyplot as plt

        from srclib.plotting import save_figure

        try:
            self.gallery[stem] = save_figure(fig, stem, self.out_dir)["png"]
        finally:
            plt.close(fig)  # the Gallery shows the saved PNG; an open figure would show twice


def run_plot(*, params, root: str | Path | None = None, heatmap_prompts: int = 2) -> dict[str, Any]:
    """The plot stage: every table, figure and plot series from the metrics files, then the index.

    Reads (root-relative, srclib.paths): metrics/evaluate/*, metrics/prune/*, metrics/variance.json,
    sinks/<run>.json, trajectories/<run>.safetensors; optional: metrics/train/<key>.json (loss
    curves), metrics/efficiency.json (efficiency bars): skipped with a log line when absent.
    Writes reports/tables/<name>.{md,html,tex}, reports/figures/<stem>.{png,pdf},
    metrics/plots/{accuracy_vs_sparsity,variance_per_layer}.csv and reports/index.html.
    heatmap_prompts: prompts (rows) shown in the trajectory heatmaps.
    Returns {"results": load_results frame, "tables": {name: DataFrame}, "markdown": the main
    tables as markdown, "figures": Gallery (stem -> PNG path), "series": {name: path},
    "index": path, "skipped": [what was not drawn and why]}.
    """
    from srclib import plotting

    if heatmap_prompts < 1:
        raise ValueError(f"heatmap_prompts must be >= 1, got {heatmap_prompts}")
    skipped: list[str] = []
    df = load_results(params, root=root)
    var_metrics, var_plots = load_variance(root=root)
    trajs = load_trajectories(sorted(var_plots), root=root)
    for run, traj in trajs.items():
        var_plots[run].update(trajectory_plot_data(traj))
    prune = load_prune_metrics(params, root=root)

    tables = {**main_tables(df, params), "dense_models": dense_table(df, params),
              "sink_variance": sink_variance_table(var_metrics)}
    write_tables(tables, paths.tables_dir(root=root))
    markdown = "\n".join(f"### {name}\n\n{table_markdown(t)}" for name, t in tables.items())

    series = {"accuracy_vs_sparsity": write_series(accuracy_series(df), paths.plot_series("accuracy_vs_sparsity", root=root)),
              "variance_per_layer": write_series(variance_series(var_plots), paths.plot_series("variance_per_layer", root=root))}

    figs = _Figures(paths.figures_dir(root=root), Gallery())
    figs.save("accuracy_vs_sparsity", plotting.accuracy_vs_sparsity(df))
    figs.save("perplexity_vs_sparsity", plotting.perplexity_vs_sparsity(df))
    figs.save("sink_variance_dlm_vs_ar", plotting.sink_variance_dlm_vs_ar(var_metrics, var_plots))
    trained = {r: t for r, t in trajs.items() if not var_plots[r]["random_init"]}
    figs.save("trajectory_heatmaps", plotting.trajectory_heatmaps(trained, n_prompts=heatmap_prompts))
    figs.save("sink_position_vs_step", plotting.sink_position_vs_step(var_plots))
    figs.save("layer_sparsity", plotting.layer_sparsity(prune))
    train = load_train_metrics(params.models, root=root)
    if any("loss" in m for m in train.values()):
        figs.save("loss_curves", plotting.loss_curves(train))
    else:
        skipped.append("loss_curves: no metrics/train/<key>.json with a 'loss' curve")
    eff_path = paths.efficiency_metrics(root=root)
    if eff_path.is_file():
        figs.save("efficiency_bars", plotting.efficiency_bars(read_json(eff_path)))
    else:
        skipped.append(f"efficiency_bars: {paths.rel(eff_path, root)} not found (efficiency is not a DVC stage)")
    for s in skipped:
        log.info("skipped %s", s)
    index = build_index(root, params, git_commit(root))
    return {"results": df, "tables": tables, "markdown": markdown, "figures": figs.gallery,
            "series": series, "index": index, "skipped": skipped}
