"""DVC plot series (metrics/plots/*.csv) and the frames the sparsity figures draw.

The sparsity series are summaries of ``load_results`` (srclib.report.results) restricted to
unstructured pruning plus each dense model at sparsity 0 (method "dense", weighting "none").
``tradeoff_series`` joins each efficiency-measured instance's own quality (one seed, no
averaging) with its measured speedup: what the quality-vs-speedup figure draws.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from srclib.files import write_text
from srclib.report.results import AVERAGE, PPL, instance_values, is_structured, summarize

__all__ = ["accuracy_series", "accuracy_errors", "perplexity_series", "variance_series", "tradeoff_series",
           "TRADEOFF_COLUMNS", "speedup_kind", "write_series"]

log = logging.getLogger(__name__)


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


TRADEOFF_COLUMNS = ["instance", "model", "method", "weighting", "sparsity", "pattern", "kind", "measured_speedup",
                    "ideal_speedup", "ppl", "average"]
KIND_ORDER = ("dense", "unstructured", "2:4", "4:8", "structured")


def speedup_kind(pattern: str) -> str:
    """The tradeoff figure's point kind of a results pattern: "structured" for any structured
    pattern (is_structured), else the pattern itself ("dense", "unstructured", "2:4", ...)."""
    return "structured" if is_structured(pattern) else pattern


def _shape_tokens(shape: str) -> int:
    """B * T of a shape key "BxT" (srclib.efficiency.timing.shape_key)."""
    try:
        b, t = (int(x) for x in str(shape).split("x"))
    except ValueError:
        raise ValueError(f"efficiency shape must look like '<batch>x<tokens>', got {shape!r}") from None
    return b * t


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _speedups(rows: pd.DataFrame, structured: bool) -> tuple[float, float]:
    """(measured, ideal) speedup over dense of one instance at one shape. Rows: its efficiency rows
    (one per format). Structured: the "compact" row's measured_speedup / ideal_speedup;
    otherwise the "csr" row: 1 / step_sparse_over_dense (ideal NaN)."""
    fmt = "compact" if structured else "csr"
    hit = rows[rows["format"] == fmt]
    if hit.empty:
        raise ValueError(f"instance {rows['instance'].iloc[0]!r}: no {fmt!r} efficiency row at shape "
                         f"{rows['shape'].iloc[0]!r} (formats: {sorted(set(rows['format']))})")
    r = hit.iloc[0]
    if structured:
        measured = float(r["measured_speedup"]) if _finite(r.get("measured_speedup")) else float("nan")
        ideal = float(r["ideal_speedup"]) if _finite(r.get("ideal_speedup")) else float("nan")
        return measured, ideal
    ratio = r["step_sparse_over_dense"]
    return (1.0 / float(ratio) if _finite(ratio) and float(ratio) > 0 else float("nan")), float("nan")


def tradeoff_series(df: pd.DataFrame, eff_rows: pd.DataFrame, params, shape: str | None = None) -> pd.DataFrame:
    """Quality vs measured speedup: one row per evaluated instance present in ``eff_rows``, plus
    the dense model of each such model (speedup 1.0, ideal 1.0).

    df: load_results output; eff_rows: srclib.report.loaders.efficiency_rows (columns instance,
    shape, format, step_sparse_over_dense, and measured_speedup / ideal_speedup for structured
    instances); params: unused but for symmetry with the tables (kept for the stage's call);
    shape: the token shape key "BxT" to read; default, per instance, the largest B * T it was
    measured at (efficiency.model_token_shapes may time a large model at fewer tokens).
    measured_speedup: dense time / pruned time of a full denoising step (structured: the compact
    model's ``measured``; unstructured and N:M: 1 / the CSR step-time ratio); ideal_speedup: the
    FLOP-proportional speedup of a structured instance, NaN otherwise. ppl: the instance's
    held-out perplexity (DLM: MC-ELBO bound); average: its mean task accuracy (%). Columns:
    TRADEOFF_COLUMNS; rows ordered by model, kind, method, weighting, sparsity, instance."""
    del params
    if eff_rows is None or len(eff_rows) == 0:
        raise ValueError("no efficiency rows (no instances in metrics/efficiency.json)")
    shapes = sorted(set(eff_rows["shape"]), key=lambda k: (_shape_tokens(k), str(k)))
    if shape is None:
        largest = {name: max(g["shape"], key=lambda k: (_shape_tokens(k), str(k)))
                   for name, g in eff_rows.groupby("instance", sort=True)}
        at = eff_rows[[largest[n] == k for n, k in zip(eff_rows["instance"], eff_rows["shape"])]]
    elif shape not in shapes:
        raise ValueError(f"shape must be one of the measured token shapes {shapes}, got {shape!r}")
    else:
        at = eff_rows[eff_rows["shape"] == shape]
    vals = instance_values(df)
    score = {(r.instance, r.column): float(r.value) for r in vals.itertuples()}
    configs = vals.drop_duplicates("instance").set_index("instance")
    missing = sorted(set(at["instance"]) - set(configs.index))
    if missing:
        log.warning("tradeoff: %d efficiency instance(s) without evaluate results left out: %s", len(missing), missing)
    out = []
    for name, g in at.groupby("instance", sort=True):
        if name not in configs.index:
            continue
        c = configs.loc[name]
        measured, ideal = _speedups(g, is_structured(c["pattern"]))
        out.append({"instance": name, "model": c["model"], "method": c["method"], "weighting": c["weighting"],
                    "sparsity": float(c["sparsity"]), "pattern": c["pattern"], "kind": speedup_kind(c["pattern"]),
                    "measured_speedup": measured, "ideal_speedup": ideal})
    for model in sorted({r["model"] for r in out}):
        dense = configs[(configs["model"] == model) & (configs["method"] == "dense")]
        if dense.empty:
            log.warning("tradeoff: no dense evaluate results for model %r: no dense point", model)
            continue
        out.append({"instance": dense.index[0], "model": model, "method": "dense", "weighting": "none",
                    "sparsity": 0.0, "pattern": "dense", "kind": "dense", "measured_speedup": 1.0,
                    "ideal_speedup": 1.0})
    for r in out:
        r["ppl"] = score.get((r["instance"], PPL), float("nan"))
        r["average"] = score.get((r["instance"], AVERAGE), float("nan"))
    frame = pd.DataFrame(out, columns=TRADEOFF_COLUMNS)
    frame["_k"] = [KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER) for k in frame["kind"]]
    frame = frame.sort_values(["model", "_k", "method", "weighting", "sparsity", "instance"], kind="mergesort")
    return frame.drop(columns="_k").reset_index(drop=True)


def write_series(df: pd.DataFrame, path: str | Path) -> Path:
    """A CSV (comma, '\\n', floats as repr) written atomically and deterministically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(df.columns))
    for row in df.itertuples(index=False):
        writer.writerow([repr(float(x)) if isinstance(x, (float, np.floating)) else x for x in row])
    return write_text(path, buf.getvalue())

