"""Figures: pure functions data -> matplotlib Figure, one visual style; ``save_figure``.

(About 750 lines, over the house limit of 400 on purpose: the one visual style and the nine
figures that share it, the sink-dynamics animation included, stay in one module, so every
notebook imports one name and a style change has one home.)

One style for every figure (``style()``: seaborn's whitegrid / paper context, DejaVu Sans, fixed
dpi and SVG hash salt), one colour per pruning method (``METHOD_COLORS``), one line style per
weighting (``WEIGHTING_STYLES``), one colour per model kind (``KIND_COLORS``: diffusion vs
autoregressive); random-init control runs are dashed. Figures are plain ``matplotlib.figure.Figure`` objects
(never registered with pyplot), so a notebook shows the one a cell returns, once; ``save_figure`` writes PNG and PDF
atomically with deterministic bytes (no software / date metadata) and the plot stage closes each figure after
saving it.

Inputs are prepared data (this module imports no stage and no report module; srclib.report
prepares what the plot stage draws):
* ``accuracy_vs_sparsity(data, models)``, ``perplexity_vs_sparsity(data, models)``: the frames of
  ``srclib.report.series.accuracy_errors`` / ``perplexity_series`` and the panel order
  (``srclib.report.results.pruned_models``);
* ``sink_variance_dlm_vs_ar(variance_metrics, variance_plots)``: metrics/variance.json and per run
  {"variance_per_layer": (L,), optional "kind", "random_init"} (the variance stage's ``plots``);
* ``trajectory_heatmaps(panels)``: run -> {"mass": (b, S, T), "kind", "random_init", "prompt_len"}
  (``srclib.trajectories.panels.heatmap_panels``);
* ``sink_dynamics_animation(panels)`` (an animation, one frame per step; ``save_animation``
  writes it as GIF and HTML): run -> ``srclib.trajectories.panels.sink_dynamics_panels`` entry;
* ``sink_position_vs_step(variance_plots, primary_variant)``: per run {"dominant": {variant: (B, S)}}
  and kind -> the variant to draw (``srclib.trajectories.store.PRIMARY_VARIANT``);
* ``layer_sparsity(prune_metrics)``: instance -> metrics/prune/<instance>.json;
* ``loss_curves(train_metrics)``: key -> train metrics with a per-step ``loss`` list, or a frame
  with columns model, step, loss;
* ``efficiency_bars(rows)``: one row per (instance, token shape, sparse format)
  (``srclib.report.loaders.efficiency_rows``);
* ``quality_vs_speedup(data)``: one row per instance and dense model with measured speedup,
  perplexity and accuracy (``srclib.report.series.tradeoff_series``).
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

from srclib.files import atomic_path

__all__ = [
    "style", "save_figure", "METHOD_COLORS", "WEIGHTING_STYLES", "KIND_COLORS", "DPI",
    "accuracy_vs_sparsity", "perplexity_vs_sparsity", "sink_variance_dlm_vs_ar", "trajectory_heatmaps",
    "sink_position_vs_step", "layer_sparsity", "loss_curves", "efficiency_bars", "quality_vs_speedup",
    "SPEEDUP_KIND_STYLES", "sink_dynamics_animation", "save_animation", "ANIMATION_FPS", "ANIMATION_DPI",
]

DPI = 150
_PALETTE = sns.color_palette("colorblind")
METHOD_COLORS = {"dense": (0.35, 0.35, 0.35), "magnitude": _PALETTE[2], "wanda": _PALETTE[0],
                 "sparsegpt": _PALETTE[1], "flap": _PALETTE[4]}
METHOD_LABELS = {"dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT",
                 "flap": "FLAP"}
WEIGHTING_STYLES = {"none": ":", "uniform": "-", "sink": "--", "stability": "-."}
WEIGHTING_LABELS = {"none": "", "uniform": "uniform", "sink": "sink-aware", "stability": "stability"}
WEIGHTING_MARKERS = {"none": "s", "uniform": "o", "sink": "^", "stability": "D"}
KIND_COLORS = {"dlm": _PALETTE[3], "ar": _PALETTE[9]}
KIND_LABELS = {"dlm": "diffusion LM", "ar": "autoregressive LM"}
INIT_STYLES = {False: "-", True: "--"}  # random-init control: dashed
PANEL_W, PANEL_H = 4.2, 3.2


def _rc() -> dict[str, Any]:
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.15)}
    rc.update({
        "font.family": "DejaVu Sans", "figure.dpi": 100, "savefig.dpi": DPI, "svg.hashsalt": "srclib",
        "axes.titleweight": "bold", "axes.titlesize": 10.5, "legend.frameon": False,
        "image.cmap": "magma", "figure.constrained_layout.use": True,
    })
    return rc


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The study's single visual style (restores the previous rcParams on exit)."""
    with matplotlib.rc_context(_rc()):
        yield


def _figure(nrows: int, ncols: int, *, w: float = PANEL_W, h: float = PANEL_H, **kw: Any):
    # a plain Figure, not pyplot's: nothing is auto-shown or left open; a notebook displays the
    # returned figure as its cell's value (IPython's inline formatter), exactly once
    fig = Figure(figsize=(w * ncols, h * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Figure, stem: str, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<stem>.png`` (dpi DPI) and ``<stem>.pdf`` into out_dir, atomically, with no
    creation date or software metadata: saving the same figure twice gives identical bytes."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stem):
        raise ValueError(f"stem must be a plain file stem (letters, digits, _ . -), got {stem!r}")
    out_dir = Path(out_dir)
    written = {}
    with style():
        for ext, meta in (("png", {"Software": None}),
                          ("pdf", {"Creator": None, "Producer": None, "CreationDate": None})):
            path = out_dir / f"{stem}.{ext}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=DPI, metadata=meta)
            written[ext] = path
    return written


# =================================================================================================
# accuracy / perplexity vs sparsity
# =================================================================================================
def _series_label(method: str, weighting: str) -> str:
    w = WEIGHTING_LABELS[weighting]
    return f"{METHOD_LABELS[method]} ({w})" if w else METHOD_LABELS[method]


def _vs_sparsity(data: pd.DataFrame, order: list[str], y: str, yerr: str, ylabel: str, title: str,
                 log: bool) -> Figure:
    models = [m for m in order if m in set(data.loc[data["method"] != "dense", "model"])]
    if not models:
        raise ValueError("no pruned instances in the results: nothing to plot against sparsity")
    with style():
        fig, axes = _figure(1, len(models), sharey=False)
        for ax, model in zip(axes[0], models):
            d = data[data["model"] == model]
            dense = d[d["method"] == "dense"]
            dense_y = float(dense[y].iloc[0]) if len(dense) else float("nan")
            if math.isfinite(dense_y):
                ax.axhline(dense_y, color=METHOD_COLORS["dense"], ls=":", lw=1.2, label="Dense")
            for (method, weighting), g in d[d["method"] != "dense"].groupby(["method", "weighting"], sort=False):
                g = g.sort_values("sparsity")
                xs = 100.0 * g["sparsity"].to_numpy(dtype=float)
                ys = g[y].to_numpy(dtype=float)
                err = g[yerr].fillna(0.0).to_numpy(dtype=float)
                if math.isfinite(dense_y):  # every curve starts at the dense model
                    xs, ys, err = np.r_[0.0, xs], np.r_[dense_y, ys], np.r_[0.0, err]
                ax.errorbar(xs, ys, yerr=err, color=METHOD_COLORS[method], ls=WEIGHTING_STYLES[weighting],
                            marker=WEIGHTING_MARKERS[weighting], ms=4, lw=1.5, capsize=2,
                            label=_series_label(method, weighting))
            ax.set_title(f"{model}")
            ax.set_xlabel("sparsity (% of prunable weights removed)")
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
            ax.set_xlim(left=-2)
        # every panel gets its own legend: models are pruned with different method sets
        for ax in axes[0]:
            _sorted_legend(ax)
        fig.suptitle(title)
    return fig


def _sorted_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7.5, loc="best")


def accuracy_vs_sparsity(data: pd.DataFrame, models: list[str]) -> Figure:
    """Average task accuracy vs sparsity (unstructured), one panel per pruned model (in the order
    of ``models``); each line starts at the dense model; error bars: spread over seeds, else
    lm-eval's stderr. data: columns sparsity, accuracy, accuracy_u, method, weighting, model."""
    return _vs_sparsity(data, list(models), "accuracy", "accuracy_u", "average accuracy (%)",
                        "Accuracy vs sparsity (colour: method, line: weighting)", log=False)


def perplexity_vs_sparsity(data: pd.DataFrame, models: list[str]) -> Figure:
    """Held-out perplexity vs sparsity (log scale), as accuracy_vs_sparsity. DLMs: the MC-ELBO
    upper bound; causal models: exact perplexity. data: columns sparsity, ppl, ppl_u, ppl_kind,
    method, weighting, model."""
    kinds = sorted(set(data["ppl_kind"].dropna()))
    return _vs_sparsity(data, list(models), "ppl", "ppl_u", "held-out perplexity (log scale)",
                        f"Perplexity vs sparsity ({', '.join(kinds)})", log=True)


# =================================================================================================
# sinks: variance, trajectories, dominant position
# =================================================================================================
def _run_kind(run: str, variance_metrics: Mapping[str, Any] | None, plots: Mapping[str, Any]) -> tuple[str, bool]:
    """(kind "dlm" | "ar", random_init) of a run, from variance.json's runs or the plot entry."""
    info = (variance_metrics or {}).get("runs", {}).get(run)
    if info is not None and "kind_is_dlm" in info:
        return ("dlm" if info["kind_is_dlm"] else "ar"), bool(info.get("random_init"))
    p = plots.get(run, {})
    if "kind" in p:
        return p["kind"], bool(p.get("random_init"))
    dom = p.get("dominant", {})
    if dom:
        return ("dlm" if "full" in dom else "ar"), run.endswith("-randinit")
    raise ValueError(f"run {run!r}: cannot tell its kind (no variance metrics entry, no 'kind')")


def _run_order(runs, kinds) -> list[str]:
    return sorted(runs, key=lambda r: (kinds[r][0] != "dlm", kinds[r][1], r))


def sink_variance_dlm_vs_ar(variance_metrics: Mapping[str, Any],
                            variance_plots: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Left: per-layer normalised dominant-sink variance Var[p]/T^2 vs relative depth, one line
    per run (colour: DLM / AR; dashed: random-init control). Right: the global variance per run
    (mean +- std over prompts, from metrics/variance.json)."""
    runs = sorted(set(variance_plots) | set(variance_metrics.get("runs", {})))
    if not runs:
        raise ValueError("no runs to plot (empty variance metrics and plots)")
    kinds = {r: _run_kind(r, variance_metrics, variance_plots) for r in runs}
    order = _run_order(runs, kinds)
    with style():
        fig, axes = _figure(1, 2, w=5.0)
        ax = axes[0][0]
        for run in order:
            if run not in variance_plots or "variance_per_layer" not in variance_plots[run]:
                continue
            v = np.asarray(variance_plots[run]["variance_per_layer"], dtype=float)
            depth = np.arange(len(v)) / max(1, len(v) - 1)
            kind, rnd = kinds[run]
            ax.plot(depth, v, color=KIND_COLORS[kind], ls=INIT_STYLES[rnd], marker="o", ms=3,
                    lw=1.6 if not rnd else 1.1, label=run)
        ax.set_xlabel("layer (relative depth: 0 = first, 1 = last)")
        ax.set_ylabel("Var$_\\tau$[p] / T$^2$ (unitless)")
        ax.set_title("Per layer")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7.5)
        ax = axes[0][1]
        runs_m = [r for r in order if r in variance_metrics.get("runs", {})]
        ys = [float(variance_metrics["runs"][r]["variance"]) for r in runs_m]
        es = [float(variance_metrics["runs"][r].get("variance_std", 0.0)) for r in runs_m]
        bars = ax.bar(range(len(runs_m)), ys, yerr=es, capsize=3,
                      color=[KIND_COLORS[kinds[r][0]] for r in runs_m], edgecolor="0.2", lw=0.6)
        for bar, r in zip(bars, runs_m):
            if kinds[r][1]:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
        ax.set_xticks(range(len(runs_m)), runs_m, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("collected run")
        ax.set_ylabel("Var$_\\tau$[p] / T$^2$ (unitless)")
        ax.set_title("Global attention mass (± std over prompts)")
        ax.set_ylim(bottom=0)
        ax.legend(handles=[Line2D([], [], color=KIND_COLORS[k], lw=6, label=KIND_LABELS[k]) for k in ("dlm", "ar")]
                  + [Line2D([], [], color="0.5", lw=0, marker="s", ms=8, alpha=0.6, label="random init (hatched)")],
                  fontsize=7.5, loc="best")
        fig.suptitle("Dominant-sink positional variance: diffusion vs autoregressive")
    return fig


def _primary_dominant(entry: Mapping[str, Any], primary_variant: Mapping[str, str]) -> np.ndarray:
    dom = entry["dominant"]
    names = [v for v in primary_variant.values() if v in dom]
    if len(names) != 1:
        raise ValueError(f"dominant positions hold variants {sorted(dom)}; expected exactly one of "
                         f"{sorted(primary_variant.values())}")
    return np.asarray(dom[names[0]])  # (B, S)


def sink_position_vs_step(variance_plots: Mapping[str, Mapping[str, Any]], primary_variant: Mapping[str, str],
                          prompt: int = 0, variance_metrics: Mapping[str, Any] | None = None) -> Figure:
    """Dominant sink position (argmax of the global attention mass) at every step, one panel per
    run: every prompt faint, prompt ``prompt`` bold. A flat line at 0 is a BOS sink.
    primary_variant: kind -> the variant drawn (srclib.trajectories.store.PRIMARY_VARIANT)."""
    runs = sorted(variance_plots)
    if not runs:
        raise ValueError("no runs to plot")
    kinds = {r: _run_kind(r, variance_metrics, variance_plots) for r in runs}
    order = _run_order(runs, kinds)
    rows_by_kind = {k: [r for r in order if kinds[r][0] == k] for k in KIND_COLORS}
    rows_by_kind = {k: v for k, v in rows_by_kind.items() if v}  # one row per kind: DLM above AR
    ncols = max(len(v) for v in rows_by_kind.values())
    with style():
        fig, axes = _figure(len(rows_by_kind), ncols, w=3.8, h=2.9, sharey=True)
        for ax_row, runs_k in zip(axes, rows_by_kind.values()):
            for j, ax in enumerate(ax_row):
                if j >= len(runs_k):
                    ax.set_visible(False)
                    continue
                run = runs_k[j]
                dom = _primary_dominant(variance_plots[run], primary_variant)  # (B, S)
                if not 0 <= prompt < dom.shape[0]:
                    raise ValueError(f"prompt must be in [0, {dom.shape[0]}) for run {run!r}, got {prompt}")
                kind, rnd = kinds[run]
                steps = np.arange(dom.shape[1] + 1)  # step tau's value held until tau + 1
                held = np.concatenate([dom, dom[:, -1:]], axis=1)  # (B, S + 1)
                for b in range(dom.shape[0]):
                    ax.step(steps, held[b], where="post", color=KIND_COLORS[kind], alpha=0.15, lw=0.8)
                ax.step(steps, held[prompt], where="post", color=KIND_COLORS[kind], lw=1.8, ls=INIT_STYLES[rnd])
                if "prompt_len" in variance_plots[run]:
                    ax.axhline(variance_plots[run]["prompt_len"] - 0.5, color="0.4", lw=0.8, ls=":")
                ax.set_title(f"{run} ({kind.upper()})")
                ax.set_xlabel("step (denoising / decoding)")
        fig.supylabel("dominant key position (token index)")
        fig.suptitle(f"Where the dominant sink sits (bold: prompt {prompt}; dotted: end of prompt)")
    return fig


def trajectory_heatmaps(panels: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Step x key-position heatmaps of the global attention mass (primary variant, summed over
    layers), each step normalised to its share x number of keys (1 = uniform; log colour scale).
    Columns: runs (diffusion first, beside autoregressive); rows: the prompts of the panels.
    AR keys that do not exist yet at a step (NaN) are blank. panels: run -> {"mass": (b, S, T),
    "kind", "random_init", "prompt_len"} (srclib.trajectories.panels.heatmap_panels)."""
    if not panels:
        raise ValueError("no trajectories to plot")
    kinds = {r: (p["kind"], bool(p["random_init"])) for r, p in panels.items()}
    order = _run_order(list(panels), kinds)
    data = {run: np.asarray(panels[run]["mass"], dtype=float) for run in order}  # (b, S, T)
    rows = min(d.shape[0] for d in data.values())
    vmax = max(4.0, max(float(np.nanmax(d)) for d in data.values()))
    norm_c = LogNorm(vmin=0.25, vmax=vmax, clip=True)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.92")  # keys that do not exist yet: light grey
    with style():
        fig, axes = _figure(rows, len(order), w=3.6, h=2.8)
        img = None
        for j, run in enumerate(order):
            P = int(panels[run]["prompt_len"])
            for b in range(rows):
                ax = axes[b][j]
                img = ax.imshow(data[run][b], aspect="auto", origin="lower", interpolation="nearest",
                                cmap=cmap, norm=norm_c)
                ax.axvline(P - 0.5, color="white", lw=0.8, ls="--")
                ax.grid(False)
                if b == 0:
                    ax.set_title(f"{run} ({kinds[run][0].upper()})")
                if j == 0:
                    ax.set_ylabel(f"prompt {b}")
        ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128) if t <= vmax]
        cbar = fig.colorbar(img, ax=axes, shrink=0.8, ticks=ticks, format="%g",
                            label="mass share × number of keys (1 = uniform, log scale)")
        cbar.ax.minorticks_off()
        fig.supxlabel("key position (token index)")
        fig.supylabel("step (denoising / decoding)")
        fig.suptitle("Global attention mass per step (dashed: end of prompt)")
    return fig


# =================================================================================================
# sink dynamics: one frame per denoising / decoding step (an animation)
# =================================================================================================
ANIMATION_FPS = 5  # frames (steps) per second (GIF frame times are whole centiseconds: 200 ms)
ANIMATION_DPI = 72  # GIF and HTML frames: 64 steps of a 3-model figure stay under ~3 MB
ANIMATION_ID = "sink_dynamics"  # the HTML player's element id (matplotlib draws a random one)
_MASKED_COLOR = "0.78"  # DLM keys still [MASK] at the step
# the HTML player's buttons: matplotlib draws them with Font Awesome icons from a CDN; these glyphs
# (DejaVu / system fonts) keep the page self-contained and working offline
_PLAYER_ICONS = {"fa-minus": "&minus;", "fa-fast-backward": "|&#9664;&#9664;", "fa-step-backward": "|&#9664;",
                 "fa-play fa-flip-horizontal": "&#9664;", "fa-pause": "&#10074;&#10074;", "fa-play": "&#9654;",
                 "fa-step-forward": "&#9654;|", "fa-fast-forward": "&#9654;&#9654;|", "fa-plus": "+"}


def _animation_cells(panels: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[bool], dict]:
    """(columns: models, DLMs first; rows: trained then random-init, those present; (row, col) -> run).
    A run whose model already has a run in its row (e.g. a random-weight model beside its
    random-init twin) gets a column of its own."""
    kinds = {r: (p["kind"], bool(p["random_init"])) for r, p in panels.items()}
    models: dict[str, str] = {}
    cells: dict[tuple[bool, str], str] = {}
    for run in sorted(panels):
        model, rnd = str(panels[run]["model"]), kinds[run][1]
        if (rnd, model) in cells:
            model = run
        cells[(rnd, model)] = run
        models.setdefault(model, kinds[run][0])
    cols = sorted(models, key=lambda m: (models[m] != "dlm", m))
    rows = [rnd for rnd in (False, True) if any(k[0] == rnd for k in cells)]
    return cols, rows, {(i, j): cells[(rnd, m)] for i, rnd in enumerate(rows) for j, m in enumerate(cols)
                        if (rnd, m) in cells}


def sink_dynamics_animation(panels: Mapping[str, Mapping[str, Any]], fps: float = ANIMATION_FPS):
    """The sink dynamics across steps as a ``matplotlib.animation.FuncAnimation``, one frame per
    step (save it with ``save_animation``). Columns: models, diffusion LMs first beside the
    autoregressive contrasts at the matching step; rows: trained runs, then their random-init
    controls (if any). Each run: a layer x key-position heatmap of the attention mass (share x
    number of keys, 1 = uniform, log colour; blank: keys that do not exist yet) above the global
    mass share per key position (bars; light grey: keys still [MASK]) with the sink set marked
    (triangles) and the dominant position (red star); dashed: end of the prompt, dotted: the
    uniform share. panels: run -> srclib.trajectories.panels.sink_dynamics_panels entry."""
    from matplotlib.animation import FuncAnimation

    F = _animation_frames(panels, fps)
    cols, rows, cells = _animation_cells(panels)
    vmax = max(4.0, max(float(np.nanmax(p["layers"])) for p in panels.values()))
    norm_c = LogNorm(vmin=0.25, vmax=vmax, clip=True)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.92")
    updates = []
    with style():
        fig = Figure(figsize=(3.7 * len(cols), 4.3 * len(rows) + 0.4))
        axes = fig.subplots(2 * len(rows), len(cols), squeeze=False,
                            gridspec_kw={"height_ratios": [1.0, 0.9] * len(rows)})
        img = None
        for (i, j), run in sorted(cells.items()):
            img, update = _animated_run(axes[2 * i][j], axes[2 * i + 1][j], run, panels[run], cmap, norm_c)
            updates.append(update)
            update(0)
        for (i, j) in np.ndindex(len(rows), len(cols)):
            if (i, j) not in cells:
                axes[2 * i][j].set_visible(False)
                axes[2 * i + 1][j].set_visible(False)
        fig.colorbar(img, ax=axes[0::2].ravel().tolist(), shrink=0.9, format="%g", pad=0.01,
                     ticks=[t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128) if t <= vmax],
                     label="mass share × keys\n(1 = uniform, log)").ax.minorticks_off()
        fig.suptitle("Where the attention mass sits at each step: diffusion vs autoregressive\n"
                     "(▼ sinks, ★ dominant key; bars: all layers, grey: still [MASK]; dashed: end of prompt; "
                     "dotted: uniform share)", fontsize=9.5)
        fig.draw_without_rendering()  # lay out once (constrained), then freeze: frames do not jitter
        fig.set_layout_engine("none")

    def frame(f):
        for u in updates:
            u(f)
        return []

    return FuncAnimation(fig, frame, frames=F, init_func=lambda: frame(0), interval=1000.0 / fps,
                         repeat=True, blit=False)


def _animation_frames(panels: Mapping[str, Mapping[str, Any]], fps: float) -> int:
    """The number of frames every run of ``panels`` shares; raises on no runs, fps <= 0 or runs of
    different lengths."""
    if not panels:
        raise ValueError("no trajectories to animate")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    n_frames = {len(p["steps"]) for p in panels.values()}
    if len(n_frames) != 1:
        raise ValueError(f"every run needs the same number of frames, got {sorted(n_frames)}")
    return n_frames.pop()


def _animated_run(ax_h, ax_b, run: str, p: Mapping[str, Any], cmap, norm_c):
    """One run's two axes of the animation: the layer x key heatmap (``ax_h``) above the mass-share
    bars with the sink and dominant markers (``ax_b``). Returns (the heatmap image, update(frame))."""
    layers = np.asarray(p["layers"], dtype=float)  # (F, L, T)
    share = 100.0 * np.nan_to_num(np.asarray(p["share"], dtype=float))  # (F, T) %
    masked = np.asarray(p["masked"], dtype=bool)
    sinks, dom = np.asarray(p["sinks"], dtype=bool), np.asarray(p["dominant"])
    steps, n_keys = np.asarray(p["steps"]), np.asarray(p["n_keys"])
    _, L, T = layers.shape
    edges = np.arange(T + 1) - 0.5
    P = int(p["prompt_len"])
    img = ax_h.imshow(layers[0], aspect="auto", origin="lower", interpolation="nearest", cmap=cmap,
                      norm=norm_c, extent=(-0.5, T - 0.5, -0.5, L - 0.5))
    ax_h.grid(False)
    ax_h.set_ylabel("layer")
    ax_h.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    ax_h.tick_params(labelbottom=False)
    color = KIND_COLORS[p["kind"]]
    done = ax_b.stairs(np.where(masked[0], 0.0, share[0]), edges, fill=True, color=color, lw=0)
    todo = ax_b.stairs(np.where(masked[0], share[0], 0.0), edges, fill=True, color=_MASKED_COLOR, lw=0)
    top = 1.25 * max(float(share.max()), 1e-9)
    uniform = ax_b.axhline(100.0 / n_keys[0], color="0.3", ls=":", lw=0.9)
    sink_pts = ax_b.scatter([], [], marker="v", s=16, color="0.1", zorder=3, clip_on=False)
    dom_pt = ax_b.scatter([], [], marker="*", s=60, color="#d62728", edgecolors="0.1", linewidths=0.4,
                          zorder=4, clip_on=False)
    for ax in (ax_h, ax_b):
        ax.axvline(P - 0.5, color="white" if ax is ax_h else "0.4", lw=0.8, ls="--")
        ax.set_xlim(-0.5, T - 0.5)
    ax_b.set_ylim(0, top)
    ax_b.set_xlabel("key position (token index)")
    ax_b.set_ylabel("share of mass (%)")
    ax_b.grid(axis="x", visible=False)
    label = f"{run} ({p['kind'].upper()}{', random init' if p['random_init'] else ''})"
    title = ax_h.set_title(label)
    n_steps = int(p["n_steps"])

    def update(f):
        img.set_data(layers[f])
        done.set_data(np.where(masked[f], 0.0, share[f]))
        todo.set_data(np.where(masked[f], share[f], 0.0))
        uniform.set_ydata([100.0 / n_keys[f]] * 2)
        ks = np.flatnonzero(sinks[f])
        sink_pts.set_offsets(np.column_stack([ks, share[f, ks] + 0.05 * top]) if len(ks)
                             else np.empty((0, 2)))
        dom_pt.set_offsets([[dom[f], share[f, dom[f]] + 0.13 * top]])
        title.set_text(f"{label}\nstep {int(steps[f]) + 1} of {n_steps}")

    return img, update


def _gif_writer():
    from matplotlib.animation import PillowWriter

    class GifWriter(PillowWriter):
        """PillowWriter that names the format (the atomic temporary file has no .gif suffix)."""

        def finish(self):
            self._frames[0].save(self.outfile, format="GIF", save_all=True, append_images=self._frames[1:],
                                 duration=int(1000 / self.fps), loop=0)

    return GifWriter


def save_animation(anim, stem: str, out_dir: str | Path, fps: float = ANIMATION_FPS,
                   dpi: int = ANIMATION_DPI) -> dict[str, Path]:
    """Write ``<stem>.gif`` (Pillow, looping) and ``<stem>.html`` (matplotlib's JavaScript player:
    play, pause, step, slider; its CDN icon font replaced by plain glyphs, so the page is
    self-contained) into out_dir, atomically, one frame per frame of ``anim``. Deterministic
    bytes: the GIF holds no timestamps, the HTML frames are PNGs without dates and the player's
    element id is fixed (``ANIMATION_ID``), so saving the same animation twice gives identical
    files."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stem):
        raise ValueError(f"stem must be a plain file stem (letters, digits, _ . -), got {stem!r}")
    out_dir = Path(out_dir)
    written = {}
    with style(), matplotlib.rc_context({"savefig.dpi": dpi}):
        path = out_dir / f"{stem}.gif"
        with atomic_path(path) as tmp:
            anim.save(str(tmp), writer=_gif_writer()(fps=fps), dpi=dpi)
        written["gif"] = path
        player = anim.to_jshtml(fps=fps, default_mode="loop")
        found = re.search(r'id="_anim_img([0-9a-f]{32})"', player)
        if found is None:
            raise RuntimeError("matplotlib's HTML player changed: no _anim_img<uuid> element found")
        player = player.replace(found.group(1), ANIMATION_ID)
        player = re.sub(r'<link rel="stylesheet"\s*href="[^"]*font-awesome[^"]*">\s*', "", player)
        player = re.sub(r'<i class="fa ([a-z -]+)"></i>', lambda m: _PLAYER_ICONS.get(m.group(1), m.group(0)), player)
        path = out_dir / f"{stem}.html"
        with atomic_path(path) as tmp:
            Path(tmp).write_text(f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                                 f"<title>{stem}</title>\n</head>\n<body>\n{player}\n</body>\n</html>\n")
        written["html"] = path
    return written


# =================================================================================================
# pruning, training, efficiency
# =================================================================================================
_BLOCK = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _block_index(layer: str) -> int:
    m = _BLOCK.search(layer)
    if m is None:
        raise ValueError(f"layer name {layer!r} has no block index (expected a dotted path like ...blocks.3.q_proj)")
    return int(m.group(1))


def layer_sparsity(prune_metrics: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Actual sparsity of every prunable linear (dots) and its block mean (line) vs block index,
    one panel per model; the lowest seed of each configuration. OWL shows as non-flat lines;
    without OWL every line sits on its target. Structured instances (a "structured" entry or
    spec.structure) are left out."""
    if not prune_metrics:
        raise ValueError("no prune metrics to plot")
    recs = []
    for name, m in prune_metrics.items():
        spec = m["spec"]
        if m.get("structured") or spec.get("structure"):
            continue  # structured pruning removes whole units: no per-linear mask sparsity to draw
        recs.append({"name": name, "model": m["model"], "method": spec["method"], "weighting": spec["weighting"],
                     "sparsity": float(spec["sparsity"]), "pattern": spec["pattern"],
                     "seed": int(m.get("calibration", {}).get("seed", 0)), "metrics": m})
    if not recs:
        raise ValueError("no unstructured prune metrics to plot (every instance is structured)")
    frame = pd.DataFrame(recs).sort_values(["model", "method", "weighting", "sparsity", "pattern", "seed", "name"])
    frame = frame.drop_duplicates(["model", "method", "weighting", "sparsity", "pattern"], keep="first")
    models = sorted(set(frame["model"]))
    with style():
        fig, axes = _figure(1, len(models), w=5.0)
        for ax, model in zip(axes[0], models):
            for r in frame[frame["model"] == model].itertuples():
                per = pd.Series(r.metrics["layer_sparsity"], dtype=float)
                blocks = np.array([_block_index(k) for k in per.index])
                mean = per.groupby(blocks).mean()
                color = METHOD_COLORS[r.method]
                ax.scatter(blocks, per.to_numpy(), s=6, color=color, alpha=0.35, lw=0)
                ax.plot(mean.index, mean.to_numpy(), color=color, ls=WEIGHTING_STYLES[r.weighting], lw=1.2,
                        marker=WEIGHTING_MARKERS[r.weighting], ms=3)
            ax.set_title(model)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("transformer block")
            ax.set_ylabel("fraction of weights pruned")
            ax.set_ylim(0, 1)
        handles = [Line2D([], [], color=METHOD_COLORS[k], lw=2, label=METHOD_LABELS[k])
                   for k in sorted(set(frame["method"]), key=list(METHOD_COLORS).index)]
        handles += [Line2D([], [], color="0.3", ls=WEIGHTING_STYLES[w], marker=WEIGHTING_MARKERS[w],
                           label=WEIGHTING_LABELS[w])
                    for w in ("uniform", "sink", "stability")]
        axes[0][-1].legend(handles=handles, fontsize=7.5, loc="lower right")
        fig.suptitle("Per-layer sparsity (dots: each linear; line: block mean)")
    return fig


def _loss_frame(train_metrics: Any) -> pd.DataFrame:
    if isinstance(train_metrics, pd.DataFrame):
        missing = {"model", "step", "loss"} - set(train_metrics.columns)
        if missing:
            raise ValueError(f"loss curve frame needs columns model, step, loss; missing {sorted(missing)}")
        return train_metrics[["model", "step", "loss"]]
    rows = []
    for key, m in sorted(train_metrics.items()):
        for i, v in enumerate((m or {}).get("loss") or []):
            rows.append({"model": key, "step": i + 1, "loss": float(v)})
    if not rows:
        raise ValueError("no loss curves: no entry has a 'loss' list")
    return pd.DataFrame(rows)


def loss_curves(train_metrics: Any, smooth: int = 20) -> Figure:
    """Training loss per optimizer step, one panel per model (objectives differ: next-token CE
    vs 1/t-weighted masked CE, so no shared axis): raw (faint) and a centred moving average over
    ``smooth`` steps. train_metrics: key -> {"loss": [...]} or a frame (model, step, loss)."""
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    df = _loss_frame(train_metrics)
    models = sorted(set(df["model"]))
    colors = dict(zip(models, _PALETTE))
    with style():
        fig, axes = _figure(1, len(models))
        for ax, model in zip(axes[0], models):
            d = df[df["model"] == model].sort_values("step")
            ax.plot(d["step"], d["loss"], color=colors[model], alpha=0.3, lw=0.8, label="per step")
            ax.plot(d["step"], d["loss"].rolling(smooth, center=True, min_periods=1).mean(), color=colors[model],
                    lw=1.8, label=f"moving average ({smooth})")
            ax.set_title(model)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("training loss (nats / token)")
            ax.legend(fontsize=7.5)
        fig.suptitle("Training loss")
    return fig


def _grouped_bars(ax, names: list[str], series: list[tuple[str, list[float], Any]], ylabel: str,
                  title: str) -> None:
    """One group of bars per pruned instance, one bar per (label, values, colour) series, and the
    dense reference at 1."""
    width = 0.8 / max(1, len(series))
    for i, (label, vals, color) in enumerate(series):
        ax.bar(np.arange(len(names)) + (i - (len(series) - 1) / 2) * width, vals, width, label=label,
               color=color, edgecolor="0.2", lw=0.5)
    ax.axhline(1.0, color="0.3", ls=":", lw=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("pruned instance")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7.5)


def efficiency_bars(rows: pd.DataFrame) -> Figure:
    """Per instance, ratio to the dense model (1 = dense): theoretical FLOPs and weight memory
    (CSR int32 / int64, 2:4 where the masks allow it), and the measured full-step latency of the
    sparse format for every token shape (> 1: slower than dense). rows: one per (instance, shape,
    format) with the ratio columns (srclib.report.loaders.efficiency_rows)."""
    if rows is None or len(rows) == 0:
        raise ValueError("no efficiency rows (no instances in metrics/efficiency.json)")
    names = sorted(set(rows["instance"]))
    static = {"FLOPs": "flops_ratio", "memory CSR int32": "mem_csr_int32_ratio",
              "memory CSR int64": "mem_csr_int64_ratio", "memory 2:4": "mem_2to4_ratio"}
    first = rows.drop_duplicates("instance").set_index("instance")
    theory = [(label, [float(first.loc[n, col]) if n in first.index and not pd.isna(first.loc[n, col]) else 0.0
                       for n in names], _PALETTE[i]) for i, (label, col) in enumerate(static.items())]
    keys = sorted(set(zip(rows["shape"], rows["format"])))
    measured = []
    for i, (shape, fmt) in enumerate(keys):
        sub = rows[(rows["shape"] == shape) & (rows["format"] == fmt)].set_index("instance")
        measured.append((f"{fmt}, tokens {shape}",
                         [float(sub.loc[n, "step_sparse_over_dense"]) if n in sub.index else 0.0 for n in names],
                         _PALETTE[(i + 4) % len(_PALETTE)]))
    with style():
        fig, axes = _figure(1, 2, w=5.2)
        _grouped_bars(axes[0][0], names, theory, "ratio to dense (×); 0 = not applicable",
                      "Compute and weight memory (theory)")
        _grouped_bars(axes[0][1], names, measured, "step time sparse / dense (×, median)",
                      "Measured latency (> 1: slower)")
        fig.suptitle("Efficiency of the pruned models")
    return fig


# =================================================================================================
# quality vs speedup (structured vs unstructured pruning)
# =================================================================================================
# point kind -> (colour, marker, label); weighting: uniform hollow, sink-aware filled
SPEEDUP_KIND_STYLES = {
    "unstructured": (_PALETTE[0], "o", "unstructured (CSR)"),
    "2:4": (_PALETTE[1], "s", "2:4 (CSR)"),
    "4:8": (_PALETTE[5], "D", "4:8 (CSR)"),
    "structured": (_PALETTE[2], "^", "structured (compact)"),
}
_FILLED = {"uniform": False, "sink": True, "stability": True}
_DENSE_STAR = {"color": "0.1", "marker": "*", "s": 140}


def _kind_style(kind: str) -> tuple[Any, str, str]:
    if kind not in SPEEDUP_KIND_STYLES:
        raise ValueError(f"kind must be 'dense' or one of {sorted(SPEEDUP_KIND_STYLES)}, got {kind!r}")
    return SPEEDUP_KIND_STYLES[kind]


def quality_vs_speedup(data: pd.DataFrame) -> Figure:
    """Quality against measured speedup over the dense model, one row of two panels per model.

    x: measured speedup (dense step time / pruned step time, log2 axis; 1 = dense speed, dotted
    vertical line); left panel y: held-out perplexity (log scale, lower is better; DLMs: the
    MC-ELBO bound); right panel y: average task accuracy (%). Colour and marker: point kind
    (unstructured, 2:4, 4:8: CSR kernels; structured: the compact dense model); fill: weighting
    (uniform hollow, sink-aware filled, stability filled light); the dense model: a black star at
    1. Structured points also show their FLOP-proportional ideal speedup as a small x at the
    same height. One scatter collection per (kind, weighting) group (gid "points"), one for the
    dense star (gid "dense") and one for the ideal marks (gid "ideal"); NaN values are not drawn.
    data: columns model, kind, weighting, measured_speedup, ideal_speedup, ppl, average
    (srclib.report.series.tradeoff_series)."""
    need = {"model", "kind", "weighting", "measured_speedup", "ideal_speedup", "ppl", "average"}
    missing = sorted(need - set(data.columns))
    if missing:
        raise ValueError(f"data needs columns {sorted(need)}; missing {missing}")
    if not (data["kind"] != "dense").any():
        raise ValueError("no pruned instances with a measured speedup: nothing to plot")
    models = sorted(set(data.loc[data["kind"] != "dense", "model"]))
    panels = (("ppl", "held-out perplexity (log; lower: better)", True),
              ("average", "average accuracy (%)", False))
    with style():
        fig, axes = _figure(len(models), 2, w=4.6, h=3.4)
        for row, model in zip(axes, models):
            d = data[data["model"] == model]
            for ax, (col, ylabel, log) in zip(row, panels):
                _speedup_panel(ax, d, col, ylabel, log, model)
        axes[0][-1].legend(handles=_speedup_legend(set(data["kind"])), fontsize=7, loc="best")
        fig.suptitle("Quality vs measured speedup (structured vs unstructured pruning)")
    return fig


def _speedup_panel(ax, d: pd.DataFrame, col: str, ylabel: str, log: bool, model: str) -> None:
    """One panel of quality_vs_speedup: ``col`` of one model's rows ``d`` against the measured speedup
    (one scatter per (kind, weighting) group, the structured ideal marks, the dense star)."""
    ax.axvline(1.0, color="0.4", ls=":", lw=1.0, label="dense speed")
    for (kind, weighting), g in d[d["kind"] != "dense"].groupby(["kind", "weighting"], sort=True):
        color, marker, _ = _kind_style(kind)
        g = g[np.isfinite(g["measured_speedup"].astype(float)) & np.isfinite(g[col].astype(float))]
        if g.empty:
            continue
        filled = _FILLED.get(weighting, True)
        ax.scatter(g["measured_speedup"].astype(float), g[col].astype(float), s=36, marker=marker,
                   edgecolors=[color], linewidths=1.3, zorder=3, gid="points",
                   facecolors=[color] if filled else "none",
                   alpha=0.55 if weighting == "stability" else 1.0)
    st = d[(d["kind"] == "structured") & np.isfinite(d["ideal_speedup"].astype(float))
           & np.isfinite(d[col].astype(float))]
    if len(st):
        ax.scatter(st["ideal_speedup"].astype(float), st[col].astype(float), marker="x", s=16,
                   color=SPEEDUP_KIND_STYLES["structured"][0], linewidths=0.9, zorder=2, gid="ideal")
    dense = d[(d["kind"] == "dense") & np.isfinite(d[col].astype(float))]
    if len(dense):
        ax.scatter(dense["measured_speedup"].astype(float), dense[col].astype(float), zorder=4,
                   gid="dense", **_DENSE_STAR)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.margins(x=0.12, y=0.1)
    if log:
        ax.set_yscale("log")
        for axis_set in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_set(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.set_xlabel("measured speedup over dense (×, log₂ axis)")
    ax.set_ylabel(ylabel)
    ax.set_title(model)


def _speedup_legend(present: set) -> list:
    """quality_vs_speedup's legend handles for the point kinds ``present``."""
    handles = [Line2D([], [], ls="", **{k: v for k, v in _DENSE_STAR.items() if k != "s"}, ms=11, label="dense")]
    handles += [Line2D([], [], ls="", color=c, marker=m, ms=7, label=label)
                for k, (c, m, label) in SPEEDUP_KIND_STYLES.items() if k in present]
    handles += [Line2D([], [], ls="", marker="o", ms=7, color="0.3", markerfacecolor="none",
                       label="uniform calibration"),
                Line2D([], [], ls="", marker="o", ms=7, color="0.3", label="sink-aware calibration")]
    if "structured" in present:
        handles.append(Line2D([], [], ls="", marker="x", ms=5, color=SPEEDUP_KIND_STYLES["structured"][0],
                              label="structured: ideal (FLOPs) speedup"))
    handles.append(Line2D([], [], color="0.4", ls=":", lw=1.0, label="dense speed"))
    return handles
