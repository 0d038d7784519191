"""The other stages' outputs read for the plot stage, and the arrays its figures draw.

* ``load_variance``: metrics/variance.json and, per run, the per-layer variance of its primary
  variant (sinks/<run>.json);
* ``load_trajectories``: trajectories/<run>.safetensors (their plot data: srclib.trajectories.panels)
  and what srclib.plotting's sink figures take (prepared here, so plotting imports no stage code);
* ``load_prune_metrics``, ``load_train_metrics``, ``efficiency_rows``: the prune, train and
  efficiency metrics files as the plotting functions take them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from srclib import paths
from srclib.efficiency.summary import report_rows
from srclib.files import read_json
from srclib.trajectories.store import PRIMARY_VARIANT, load_trajectory

__all__ = ["load_variance", "load_variance_units", "load_trajectories", "load_prune_metrics",
           "load_train_metrics", "efficiency_rows"]


def load_variance(root: str | Path | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(metrics/variance.json, plots) where plots mirrors the variance stage's: run ->
    {"variance_per_layer": (L,) from sinks/<run>.json (primary variant), "kind", "random_init"}."""
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


def load_variance_units(root: str | Path | None = None) -> dict[str, Any] | None:
    """metrics/units/variance.json (per-prompt sink statistics, per-head [BOS] shares), or None
    when the variance stage wrote none (older results: the sink findings are then untestable)."""
    p = paths.variance_units(root=root)
    return read_json(p) if p.is_file() else None


def load_trajectories(runs: Iterable[str], root: str | Path | None = None) -> dict[str, Any]:
    """run -> srclib.trajectories.store.Trajectory from trajectories/<run>.safetensors."""
    return {run: load_trajectory(paths.trajectory_file(run, root=root)) for run in runs}


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


def efficiency_rows(efficiency_metrics: Mapping[str, Any]) -> pd.DataFrame:
    """metrics/efficiency.json -> one row per (instance, token shape, sparse format), instances
    sorted (srclib.efficiency.summary.report_rows): what plotting.efficiency_bars draws."""
    inst = efficiency_metrics.get("instances")
    if not inst:
        raise ValueError("efficiency metrics have no 'instances' (run the efficiency stage)")
    return pd.DataFrame([r for name in sorted(inst) for r in report_rows(name, inst[name])])
