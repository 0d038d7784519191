"""The plot stage's numbers: evaluate metrics files read into frames, and their summaries.

Inputs are the metrics files the other stages write (srclib.paths spells every path):
``metrics/evaluate/<instance>.json`` (the evaluate stage): ``tasks`` -> {task: {"metrics": {name:
value}, "stderr": {name: value}, ...}} and ``ppl`` -> {"kind": "elbo" | "exact", "ppl": value, ...}
or null. Dense models are evaluated under their model key (``evaluate.dense``), pruned ones under
their instance name (``prune.instances``).

Each configuration's value is the mean over its calibration seeds (restricted to ``plot.seeds``)
+- an uncertainty u (``summarize``). Where the evaluate stage kept unit-level values
(metrics/units/evaluate/<instance>.json; ``load_results`` puts them in ``df.attrs["units"]``), u
is the standard error over the units (items, windows) of the seed-averaged unit values, and every
difference is tested on those units, paired (srclib.report.inference). Without unit values
(results written before they existed): one seed: u = lm-eval's stderr (the average: sqrt(sum_t
se_t^2) / n_tasks), several seeds: u = the standard error over seeds; no test, no mark.

Structured pruning (method.md 9): an instance with ``structure`` (uniform | adaptive) gets pattern
``structured-<structure>`` here, so every grouping by CONFIG_COLUMNS keeps it apart from the
unstructured rows of the same method, weighting and sparsity (its sparsity is the target ratio:
the removed share of the blocks' linear parameters). ``is_structured`` tells the patterns apart;
``method_label`` names the structured methods as the literature does (Magnitude-sp, Wanda-sp, FLAP).

Primary metric per task: the first of ``PRIMARY_METRICS`` that every result file of the task
reports: ``acc_norm`` where lm-eval gives it (ARC-E, ARC-C, PIQA, HellaSwag, SciQ, OpenBookQA),
else ``acc`` (WinoGrande, MMLU), ``exact_match`` (strict-match, then flexible-extract) for GSM8K.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from srclib import paths
from srclib.files import read_json
from srclib.report import inference

__all__ = [
    "PRIMARY_METRICS", "TASK_LABELS", "METHOD_LABELS", "WEIGHTING_LABELS", "CONFIG_COLUMNS",
    "AVERAGE", "PPL", "STRUCTURED_PREFIX", "STRUCTURED_METHOD_LABELS", "is_structured", "method_label",
    "instance_configs", "load_results", "primary_metrics", "pruned_models",
    "instance_values", "summarize", "config_instances", "units_of",
]

log = logging.getLogger(__name__)

# preference order of lm-eval metric names for a task's headline number (module docstring)
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match,strict-match", "exact_match,flexible-extract",
                   "exact_match")
TASK_LABELS = {
    "arc_easy": "ARC-E", "arc_challenge": "ARC-C", "piqa": "PIQA", "hellaswag": "HellaSwag",
    "winogrande": "WinoGrande", "openbookqa": "OBQA", "sciq": "SciQ", "mmlu": "MMLU",
    "gsm8k": "GSM8K", "continuation": "Continuation",
}
METHOD_LABELS = {"dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT",
                 "flap": "FLAP"}
# structured pruning's methods as the literature names them (FLAP: An et al., AAAI 2024)
STRUCTURED_METHOD_LABELS = {"magnitude": "Magnitude-sp", "wanda": "Wanda-sp", "flap": "FLAP"}
STRUCTURED_PREFIX = "structured-"  # pattern of a structured instance: "structured-<structure>"
WEIGHTING_LABELS = {"none": "–", "uniform": "uniform", "sink": "sink-aware", "stability": "stability"}
CONFIG_COLUMNS = ["model", "method", "weighting", "sparsity", "pattern"]
AVERAGE, PPL = "average", "ppl"  # the two derived columns of the main table
DENSE_CONFIG = {"method": "dense", "weighting": "none", "sparsity": 0.0, "pattern": "dense", "seed": 0}


def is_structured(pattern: str) -> bool:
    """Whether a results pattern is a structured instance's ("structured-uniform", ...)."""
    return isinstance(pattern, str) and pattern.startswith(STRUCTURED_PREFIX)


def method_label(method: str, pattern: str) -> str:
    """The display name of a method: METHOD_LABELS, or STRUCTURED_METHOD_LABELS for a structured
    pattern (is_structured). Raises ValueError naming the allowed methods."""
    labels = STRUCTURED_METHOD_LABELS if is_structured(pattern) else METHOD_LABELS
    if method not in labels:
        kind = "structured" if is_structured(pattern) else "unstructured"
        raise ValueError(f"method must be one of {sorted(labels)} for {kind} pattern {pattern!r}, got {method!r}")
    return labels[method]


# =================================================================================================
# loading the evaluation results
# =================================================================================================
def instance_configs(params) -> dict[str, dict[str, Any]]:
    """name -> {model, method, weighting, sparsity, pattern, seed} of every evaluated instance.

    A structured instance (``structure`` set) gets pattern ``structured-<structure>`` (its own
    pattern is ignored by structured pruning); sparsity is its target ratio."""
    out: dict[str, dict[str, Any]] = {}
    for key in params.evaluate.dense:
        out[key] = {"model": key, **DENSE_CONFIG}
    for name, inst in params.prune.instances.items():
        structure = getattr(inst, "structure", None)
        pattern = f"{STRUCTURED_PREFIX}{structure}" if structure else inst.pattern
        out[name] = {"model": inst.model, "method": inst.method, "weighting": inst.weighting,
                     "sparsity": float(inst.sparsity), "pattern": pattern, "seed": int(inst.seed)}
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
    ``evaluate.tasks``; see PRIMARY_METRICS), causal (the file's model.causal), file. Held-out perplexity: task
    "ppl", metric "ppl_elbo" (diffusion LMs, an upper bound) or "ppl_exact" (causal LMs), primary True.
    Raises FileNotFoundError naming every missing metrics file, ValueError naming the file and
    task when a configured task is absent or the file belongs to another model.
    """
    configs = instance_configs(params)
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
    out = pd.DataFrame(rows, columns=cols)
    out.attrs[inference.UNITS_ATTR] = inference.load_units(list(configs), root)
    out.attrs["tasks"] = tasks
    out.attrs["primary"] = primary
    return out


def units_of(df: pd.DataFrame) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """(instance -> unit values, task list, task -> primary metric) that load_results attached
    ({} when the frame has none: no tests)."""
    return (df.attrs.get(inference.UNITS_ATTR) or {}, list(df.attrs.get("tasks") or []),
            dict(df.attrs.get("primary") or {}))


def config_instances(df: pd.DataFrame, cfg: Mapping[str, Any], seeds: Sequence[int] | None = None) -> list[str]:
    """The instances of one configuration (model, method, weighting, sparsity, pattern) in seed
    order, restricted to ``seeds`` (dense rows: whatever their seed)."""
    hit = df
    for k in CONFIG_COLUMNS:
        hit = hit[hit[k] == cfg[k]]
    if seeds is not None and cfg["method"] != "dense":
        hit = hit[hit["seed"].isin(list(seeds))]
    return list(hit.drop_duplicates("instance").sort_values("seed")["instance"])


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
    units, tasks, primary = units_of(df)
    rows = []
    for key, g in vals.groupby([*CONFIG_COLUMNS, "column"], sort=True):
        v = g["value"].to_numpy(dtype=float)
        n = len(v)
        m = inference.unit_matrix(units, list(g.sort_values("seed")["instance"]), key[-1], tasks, primary)
        if m is not None:
            mean, u, _ = inference.unit_summary(m, key[-1])
            source = "units"
        elif n >= 2:
            mean, u, source = float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(n)), "seeds"
        else:
            se = float(g["stderr"].iloc[0])
            mean, u, source = float(v[0]), se, ("stderr" if math.isfinite(se) else "none")
        kinds = sorted({k for k in g["ppl_kind"] if k})
        rows.append({**dict(zip([*CONFIG_COLUMNS, "column"], key)), "mean": mean, "u": u, "n_seeds": n,
                     "source": source, "seeds": ",".join(str(s) for s in sorted(g["seed"])),
                     "ppl_kind": kinds[0] if kinds else None})
    return pd.DataFrame(rows, columns=[*CONFIG_COLUMNS, "column", "mean", "u", "n_seeds", "source", "seeds",
                                       "ppl_kind"])


def pruned_models(df: pd.DataFrame, structured: bool | None = None) -> list[str]:
    """Models with pruned instances: diffusion LMs first (the study's subject), then by name.

    structured: None: any pruned instance; False: only models with unstructured (incl. N:M)
    instances; True: only models with structured ones (is_structured)."""
    pruned = df[df["method"] != "dense"]
    if structured is not None:
        pruned = pruned[pruned["pattern"].map(is_structured) == structured]
    causal = pruned.groupby("model")["causal"].any() if "causal" in pruned else pd.Series(dtype=bool)
    return sorted(set(pruned["model"]), key=lambda m: (bool(causal.get(m, False)), m))

