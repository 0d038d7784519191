"""The variance stage: sink statistics of every collected run (method.md 1-2).

Reads every ``trajectories/<run>.safetensors`` (sorted by run name), computes the statistics of
srclib.trajectories.stats with the sink rule of ``cfg``, writes ``sinks/<run>.json`` (the full
nested statistics, incl. stable sinks, for the prune stage) and ``metrics/variance.json`` (the
primary variant's global numbers per run, DVC metrics).

All or nothing: every trajectory is read and its statistics computed before anything is written;
then ``sinks/`` (exactly one file per run read) and the metrics file are built beside their
targets and swapped in together (srclib.files.atomic_outputs). A corrupt trajectory file stops
the stage naming the file, with ``sinks/`` and the metrics untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from srclib import paths
from srclib.files import atomic_outputs, write_json
from srclib.params import VarianceParams, as_dict
from srclib.provenance import provenance
from srclib.trajectories.stats import sink_statistics, statistics_table
from srclib.trajectories.store import PRIMARY_VARIANT, check_trajectory_file, load_trajectory

__all__ = ["VarianceResult", "run"]


@dataclass
class VarianceResult:
    """What the variance notebook shows.

    stats: run -> nested statistics (as in sinks/<run>.json); table: one row per run x variant x
    layer; main: primary variant, global, one row per run; plots: run -> {"global_mass_norm":
    (B, S, T) per-step normalised global mass of the primary variant, "dominant": {variant: (B, S)
    dominant positions}, "variance_per_layer": (L,)}; metrics: what metrics/variance.json holds;
    primary_variant: kind -> the paper's variant (store.PRIMARY_VARIANT); interpretation:
    markdown written from the metrics.
    """

    stats: dict[str, Any]
    table: pd.DataFrame
    main: pd.DataFrame
    plots: dict[str, dict[str, Any]]
    metrics: dict[str, Any]
    primary_variant: dict[str, str]
    interpretation: str


def run(cfg: VarianceParams, root: Path | None = None) -> VarianceResult:
    """Sink statistics of every collected run; see the module docstring."""
    runs = paths.trajectory_runs(root)
    for path in runs.values():  # headers first: a corrupt file is named in milliseconds, not after the stats
        check_trajectory_file(path)
    stats, plots, summary = {}, {}, {}
    for name, path in runs.items():
        traj = load_trajectory(path)  # raises naming the file, before anything is written
        st, arrays = sink_statistics(traj, cfg, with_arrays=True)
        primary = PRIMARY_VARIANT[traj.kind]
        plots[name] = {
            **arrays,
            "variance_per_layer": np.array([s["variance"] for s in st["variants"][primary]["layers"]]),
        }
        stats[name] = st
        g = st["variants"][primary]["global"]
        summary[name] = {k: v for k, v in g.items() if not isinstance(v, list)}
        summary[name].update(kind_is_dlm=int(traj.kind == "dlm"), random_init=int(traj.meta["random_init"]))
    table = statistics_table(stats)
    main = table[(table["layer"] == "global") & table["primary"]].reset_index(drop=True) if stats else table
    metrics = {"runs": summary, "provenance": provenance(params={"variance": as_dict(cfg)})}
    base = paths.ROOT if root is None else Path(root)
    with atomic_outputs() as out:
        sinks = out.dir(paths.sinks_dir(root))
        for name, st in stats.items():
            write_json(sinks / paths.sink_stats(name, base).name, st)
        write_json(out.file(paths.variance_metrics(root)), metrics)
    return VarianceResult(stats=stats, table=table, main=main, plots=plots, metrics=metrics,
                          primary_variant=dict(PRIMARY_VARIANT), interpretation=interpretation(metrics, stats))


def _fmt(g: Mapping[str, Any]) -> str:
    return (f"normalised dominant-sink variance {g['variance']:.4f} ± {g['variance_std']:.4f}, "
            f"dominant mass share {g['dominant_share_x_uniform']:.2f}x uniform, "
            f"dominant at position 0 in {100 * g['dominant_at_0_frac']:.0f}% of steps")


def interpretation(metrics: Mapping[str, Any], stats: Mapping[str, Any]) -> str:
    """Markdown: each model's primary-variant statistics beside its random-init twin, and every
    DLM's variance against the AR models' (± is the std over prompts)."""
    runs = metrics["runs"]
    if not runs:
        return "No trajectories were found: run the collect stage first."
    n_prompts = {name: st["n_prompts"] for name, st in stats.items()}
    models = [r for r, g in runs.items() if not g["random_init"]]
    ar = {r: runs[r] for r in models if not runs[r]["kind_is_dlm"]}
    lines = ["Primary variant (DLM: full-sequence mass; AR: newest-query mass), global mass, "
             "mean ± std over prompts:", ""]
    for name in models:
        g = runs[name]
        kind = "DLM" if g["kind_is_dlm"] else "AR"
        lines.append(f"- **{name}** ({kind}, {n_prompts[name]} prompts): {_fmt(g)}.")
        twin = next((r for r, t in runs.items() if t["random_init"] and stats[r]["meta"]["model"] == name), None)
        if twin is not None:
            lines.append(f"  - random-init twin {twin}: {_fmt(runs[twin])}.")
    dlm = [r for r in models if runs[r]["kind_is_dlm"]]
    if dlm and ar:
        worst = max(ar, key=lambda r: ar[r]["variance"])
        lines += ["", f"Largest AR variance: {worst} {ar[worst]['variance']:.4f} ± {ar[worst]['variance_std']:.4f}."]
        for name in dlm:
            g = runs[name]
            above = g["variance"] - g["variance_std"] > ar[worst]["variance"] + ar[worst]["variance_std"]
            lines.append(
                f"- {name}: {g['variance']:.4f} ± {g['variance_std']:.4f}, "
                f"{'above' if above else 'not clearly above'} every AR model's (one std apart: "
                f"{'yes' if above else 'no'}); ratio to {worst}: "
                + (f"{g['variance'] / ar[worst]['variance']:.1f}x." if ar[worst]["variance"] > 0 else "AR variance is 0.")
            )
    return "\n".join(lines)
