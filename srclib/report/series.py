"""DVC plot series (metrics/plots/*.csv) and the frames the sparsity figures draw.

Each is a summary of ``load_results`` (srclib.report.results) restricted to unstructured pruning
plus each dense model at sparsity 0 (method "dense", weighting "none").
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from srclib.files import write_text
from srclib.report.results import AVERAGE, PPL, summarize

__all__ = ["accuracy_series", "accuracy_errors", "perplexity_series", "variance_series", "write_series"]


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
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(df.columns))
    for row in df.itertuples(index=False):
        writer.writerow([repr(float(x)) if isinstance(x, (float, np.floating)) else x for x in row])
    return write_text(path, buf.getvalue())

