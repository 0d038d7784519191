"""The plot stage: every table, figure and plot series from the metrics files, then the front page.

Reads (root-relative, srclib.paths): metrics/evaluate/*, metrics/prune/*, metrics/variance.json,
sinks/<run>.json, trajectories/<run>.safetensors; optional: metrics/train/<key>.json (loss
curves), metrics/efficiency.json (efficiency bars and finding; with structured instances the
quality-vs-speedup figure and series): skipped with a log line when absent. Before anything is
read, every one of those metrics files is checked against the params in use (what it records under
``provenance.params``, srclib.report.freshness): one written under other params (a partial rerun
after a params change) stops the stage naming each stale file, the setting that differs and the
command that refreshes it; nothing is written.
Writes reports/tables/<name>.{md,html,tex} (main_<model>, structured_<model> for models with
structured instances, dense_models, sink_variance), reports/figures/<stem>.{png,pdf},
metrics/plots/{accuracy_vs_sparsity,variance_per_layer}.csv (and quality_vs_speedup.csv with
structured instances and efficiency metrics) and reports/index.html; the sink dynamics across
steps as an animation, reports/figures/sink_dynamics.{gif,html} (one frame per step, trained runs,
DLMs beside their AR contrasts; the static trajectory_heatmaps figure stays for print).
"""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from srclib import paths, plotting
from srclib.files import read_json
from srclib.params import Params, refuse_instance
from srclib.provenance import git_commit
from srclib.report import findings as findings_
from srclib.report import freshness
from srclib.report import loaders, render, results, series, tables
from srclib.report.index import build_index
from srclib.trajectories import panels
from srclib.trajectories.store import PRIMARY_VARIANT

__all__ = ["run", "PlotResult", "Gallery", "Animation", "HEATMAP_PROMPTS", "ANIMATION_STEM", "ANIMATION_PROMPT",
           "ANIMATION_FRAMES"]

log = logging.getLogger(__name__)

HEATMAP_PROMPTS = 2  # prompts (rows) shown in the trajectory heatmaps
ANIMATION_STEM = "sink_dynamics"  # reports/figures/<stem>.gif and .html
ANIMATION_PROMPT = 0  # the prompt whose trajectory the animation shows
ANIMATION_FRAMES = 64  # at most this many frames (steps; longer trajectories are subsampled)


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


class Animation:
    """The sink-dynamics animation: shows the GIF inline in a notebook (base64, so the rendered
    HTML report is self-contained); ``gif`` and ``html`` are the written files."""

    def __init__(self, gif: Path, html: Path) -> None:
        self.gif, self.html = Path(gif), Path(html)

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.gif.read_bytes()).decode("ascii")
        return (f'<figure style="margin:0 0 1.5em 0"><img style="max-width:100%" src="data:image/gif;base64,{data}" '
                f'alt="{html.escape(self.gif.stem)}"><figcaption>{html.escape(self.gif.name)} (interactive player: '
                f"{html.escape(self.html.name)})</figcaption></figure>")


@dataclass
class PlotResult:
    """What the plot notebook shows. tables: name -> table frame; markdown: every table as
    markdown; figures: stem -> PNG (shows inline); series: name -> CSV path; index: the front page;
    skipped: what was not drawn and why; findings: the paper's claims with the measured answers;
    interpretation: those findings as markdown; animation: the sink dynamics (shows the GIF inline)."""

    results: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    markdown: str
    figures: Gallery
    series: dict[str, Path]
    index: Path
    skipped: list[str] = field(default_factory=list)
    findings: list[findings_.Finding] = field(default_factory=list)
    interpretation: str = ""
    animation: Animation | None = None


def _save(gallery: Gallery, out_dir: Path, stem: str, fig) -> None:
    try:
        gallery[stem] = plotting.save_figure(fig, stem, out_dir)["png"]
    finally:
        plt.close(fig)  # the Gallery shows the saved PNG; an open figure would show twice


def run(P: Params, instance: str | None = None, root: str | Path | None = None) -> PlotResult:
    """Build every table, figure, plot series and reports/index.html (module docstring).

    P: the whole Params (no instances; the plot stage reads every stage's outputs, its own
    settings from ``P.plot``, and shows the params on the front page)."""
    refuse_instance("plot", instance)
    skipped: list[str] = []
    freshness.check_inputs(P, root=root)  # no table mixes runs of other params (a partial rerun)
    inputs = _read_inputs(P, root)
    df = inputs.results
    tabs = _write_tables(inputs, P, root)
    markdown = "\n".join(f"### {name}\n\n{render.table_markdown(t)}" for name, t in tabs.items())
    series_paths = _write_main_series(inputs, root)

    gallery, out_dir = Gallery(), paths.figures_dir(root=root)
    animation = _draw_sink_figures(gallery, out_dir, inputs, P)
    eff_path = paths.efficiency_metrics(root=root)
    eff_rows = _draw_optional_figures(gallery, out_dir, inputs, P, eff_path, skipped, root)
    _draw_tradeoff(gallery, out_dir, df, eff_rows, P, eff_path, series_paths, skipped, root)
    for s in skipped:
        log.info("skipped %s", s)

    found = findings_.findings(df, P, inputs.var_metrics, eff_rows, variance_units=inputs.var_units)
    headline = {"sink_variance": tabs["sink_variance"], **{k: v for k, v in tabs.items() if k != "sink_variance"}}
    index = build_index(root, P, git_commit(root, mark_dirty=True) or "unknown", findings=found,
                        tables=headline, results=df)
    return PlotResult(results=df, tables=tabs, markdown=markdown, figures=gallery, series=series_paths, index=index,
                      skipped=skipped, findings=found, interpretation=findings_.findings_markdown(found),
                      animation=animation)


@dataclass
class _Inputs:
    """What the plot stage reads: the results frame (srclib.report.results), metrics/variance.json
    and its per-run plot data (with each run's trajectory panels), the unit-level variance values,
    the trajectories and metrics/prune/*."""

    results: pd.DataFrame
    var_metrics: dict[str, Any]
    var_plots: dict[str, dict[str, Any]]
    var_units: Any
    trajs: dict[str, Any]
    prune: dict[str, dict[str, Any]]


def _read_inputs(P: Params, root: str | Path | None) -> _Inputs:
    """Every stage output the tables and figures are built from (module docstring, Reads)."""
    df = results.load_results(P, root=root)
    var_metrics, var_plots = loaders.load_variance(root=root)
    var_units = loaders.load_variance_units(root=root)
    trajs = loaders.load_trajectories(sorted(var_plots), root=root)
    for run_name, traj in trajs.items():
        var_plots[run_name].update(panels.trajectory_plot_data(traj))
    prune = loaders.load_prune_metrics(P, root=root)
    return _Inputs(results=df, var_metrics=var_metrics, var_plots=var_plots, var_units=var_units, trajs=trajs,
                   prune=prune)


def _write_tables(inputs: _Inputs, P: Params, root: str | Path | None) -> dict[str, pd.DataFrame]:
    """reports/tables/<name>.{md,html,tex}: the main, structured, comparison, dense and sink
    variance tables; returns them by name."""
    df = inputs.results
    tabs = {**tables.main_tables(df, P), **tables.structured_tables(df, P),
            **tables.comparisons_tables(df, P), "dense_models": tables.dense_table(df, P),
            "sink_variance": tables.sink_variance_table(inputs.var_metrics, inputs.var_units)}
    render.write_tables(tabs, paths.tables_dir(root=root))
    return tabs


def _write_main_series(inputs: _Inputs, root: str | Path | None) -> dict[str, Path]:
    """metrics/plots/{accuracy_vs_sparsity,variance_per_layer}.csv; returns name -> path."""
    written = {"accuracy_vs_sparsity": series.accuracy_series(inputs.results),
               "variance_per_layer": series.variance_series(inputs.var_plots)}
    return {name: series.write_series(frame, paths.plot_series(name, root=root)) for name, frame in written.items()}


def _draw_sink_figures(gallery: Gallery, out_dir: Path, inputs: _Inputs, P: Params) -> Animation:
    """The accuracy and perplexity vs sparsity figures, the sink figures (variance DLM vs AR,
    trajectory heatmaps, sink position vs step) and the sink-dynamics animation, which it returns."""
    df, var_plots, trajs = inputs.results, inputs.var_plots, inputs.trajs
    models = results.pruned_models(df)
    _save(gallery, out_dir, "accuracy_vs_sparsity", plotting.accuracy_vs_sparsity(series.accuracy_errors(df), models))
    _save(gallery, out_dir, "perplexity_vs_sparsity",
          plotting.perplexity_vs_sparsity(series.perplexity_series(df), models))
    _save(gallery, out_dir, "sink_variance_dlm_vs_ar", plotting.sink_variance_dlm_vs_ar(inputs.var_metrics, var_plots))
    # trained runs only; a study of random-weight models only (e.g. a new model built from its config)
    # draws those, labelled random-init, rather than no figure
    trained = {r: t for r, t in trajs.items() if not var_plots[r]["random_init"]} or dict(trajs)
    _save(gallery, out_dir, "trajectory_heatmaps",
          plotting.trajectory_heatmaps(panels.heatmap_panels(trained, n_prompts=HEATMAP_PROMPTS)))
    sink = P.variance  # the variance stage's sink rule marks the sinks in every frame
    dynamics = panels.sink_dynamics_panels(trained, rule=sink.rule, alpha=sink.alpha, kappa=sink.kappa, eps=sink.eps,
                                           prompt=ANIMATION_PROMPT, max_frames=ANIMATION_FRAMES)
    animation = Animation(**plotting.save_animation(plotting.sink_dynamics_animation(dynamics), ANIMATION_STEM,
                                                    out_dir))
    _save(gallery, out_dir, "sink_position_vs_step", plotting.sink_position_vs_step(var_plots, PRIMARY_VARIANT))
    return animation


def _draw_optional_figures(gallery: Gallery, out_dir: Path, inputs: _Inputs, P: Params, eff_path: Path,
                           skipped: list[str], root: str | Path | None) -> list[dict[str, Any]] | None:
    """The figures whose inputs may be absent (layer sparsity, loss curves, efficiency bars), each
    skipped with its reason in ``skipped``; returns the efficiency rows (None without
    metrics/efficiency.json)."""
    if any(not (m.get("structured") or m["spec"].get("structure")) for m in inputs.prune.values()):
        _save(gallery, out_dir, "layer_sparsity", plotting.layer_sparsity(inputs.prune))
    else:
        skipped.append("layer_sparsity: every prune instance is structured (no per-linear mask sparsity)")
    train = loaders.load_train_metrics(P.models, root=root)
    if any("loss" in m for m in train.values()):
        _save(gallery, out_dir, "loss_curves", plotting.loss_curves(train))
    else:
        skipped.append("loss_curves: no metrics/train/<key>.json with a 'loss' curve")
    eff_rows = None
    if eff_path.is_file():
        eff_rows = loaders.efficiency_rows(read_json(eff_path))
        _save(gallery, out_dir, "efficiency_bars", plotting.efficiency_bars(eff_rows))
    else:
        skipped.append(f"efficiency_bars: {paths.rel(eff_path, root)} not found (run the efficiency stage)")
    return eff_rows


def _draw_tradeoff(gallery: Gallery, out_dir: Path, df: pd.DataFrame, eff_rows: Any, P: Params, eff_path: Path,
                   series_paths: dict[str, Path], skipped: list[str], root: str | Path | None) -> None:
    """The quality-vs-speedup figure and metrics/plots/quality_vs_speedup.csv (added to
    ``series_paths``; header only when there is nothing to draw, the reason in ``skipped``)."""
    has_structured = bool(df["pattern"].map(results.is_structured).any())
    if eff_rows is None:
        skipped.append(f"quality_vs_speedup: {paths.rel(eff_path, root)} not found (run the efficiency stage)")
    elif not has_structured:
        skipped.append("quality_vs_speedup: no structured prune instance")
    else:
        tradeoff = series.tradeoff_series(df, eff_rows, P)
        if (tradeoff["kind"] != "dense").any():
            series_paths["quality_vs_speedup"] = series.write_series(
                tradeoff, paths.plot_series("quality_vs_speedup", root=root))
            _save(gallery, out_dir, "quality_vs_speedup", plotting.quality_vs_speedup(tradeoff))
        else:
            skipped.append("quality_vs_speedup: no evaluated instance in metrics/efficiency.json")
    if "quality_vs_speedup" not in series_paths:  # dvc.yaml declares the series: write it (header only)
        series_paths["quality_vs_speedup"] = series.write_series(
            pd.DataFrame(columns=series.TRADEOFF_COLUMNS), paths.plot_series("quality_vs_speedup", root=root))
