"""The variance stage: sink statistics of every collected run (method.md 1-2).

``run(P)`` (no instances) is :func:`sink_variance` with params ``P.variance`` and ``P.collect``.
Reads the runs that params ``collect.models`` names (``collect``: the collect params): every model's
trajectory and, when ``collect.random_init_control`` is on and the model's own weights are not
random (its trajectory's ``random_init``, from the checkpoint's marker, as the collect stage decides),
its random-init twin ``<key>-randinit``; a missing one stops the stage naming the file. Without
``collect`` it reads every ``trajectories/<model>/<run>.safetensors`` found. Runs are sorted by
name. It computes the statistics of srclib.trajectories.stats with the sink rule of ``cfg`` and
writes

* ``sinks/<run>.json``: the full nested statistics (incl. stable sinks, for the prune stage);
* ``metrics/variance.json`` (DVC metrics, scalars only): per run the primary variant's global
  statistics (means over prompts; ``*_std`` the std over prompts), ``kind_is_dlm``,
  ``random_init``, ``n_prompts``, AR ``dominant_at_0_frac_expected`` (the bias-free p0: dominant
  key at position 0 on ``prefix_expected``), and with per-head shares ``head_bos_share_max`` /
  ``head_strength_max`` (the largest mean over steps and prompts of any layer x head);
* ``metrics/units/variance.json`` (``paths.variance_units``): the unit-level values, under
  ``runs``: per run ``kind``, ``random_init``, ``model``, ``twin`` (its random-init twin's run
  name, or null), ``n_prompts``, ``per_prompt`` {variant: {stat: [B values]}} for every variant's
  global statistics (null where a prompt has no value, e.g. no step with a sink), ``heads``
  {"bos_share", "strength"}: L x H x B means over steps (null without per-head shares), and for AR
  ``offset_hist``: the fraction of steps the dominant key of the newest query's global mass is 0, 1,
  2, 3 or >= 4 tokens behind it, and at position 0 (means over prompts).

All or nothing: every trajectory is read and its statistics computed before anything is written;
then ``sinks/`` (exactly one file per run read) and both metrics files are built beside their
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
from srclib.params import CollectParams, Params, VarianceParams, as_dict, refuse_instance
from srclib.provenance import provenance
from srclib.stats import mean_se
from srclib.trajectories.stats import OFFSET_BINS, sink_statistics, statistics_table
from srclib.trajectories.store import (
    BIASED_VARIANTS,
    PRIMARY_VARIANT,
    check_trajectory_file,
    load_trajectory,
    random_init_name,
)

__all__ = ["VarianceResult", "run", "sink_variance", "collected_runs"]

EXPECTED_VARIANT = "prefix_expected"  # AR: the bias-free full-prefix variant (p0 without the key-0 bias)


@dataclass
class VarianceResult:
    """What the variance notebook shows.

    stats: run -> nested statistics (as in sinks/<run>.json); table: one row per run x variant x
    layer; main: primary variant, global, one row per run; plots: run -> {"global_mass_norm":
    (B, S, T) per-step normalised global mass of the primary variant, "dominant": {variant: (B, S)
    dominant positions}, "variance_per_layer": (L,)}; metrics: what metrics/variance.json holds;
    units: what metrics/units/variance.json holds; heads: one row per run x layer x head (mean
    BOS share and strength over steps and prompts); primary_variant: kind -> the paper's variant
    (store.PRIMARY_VARIANT); interpretation: markdown written from the metrics and units.
    """

    stats: dict[str, Any]
    table: pd.DataFrame
    main: pd.DataFrame
    plots: dict[str, dict[str, Any]]
    metrics: dict[str, Any]
    units: dict[str, Any]
    heads: pd.DataFrame
    primary_variant: dict[str, str]
    interpretation: str


def collected_runs(collect: CollectParams, root: Path | None = None) -> dict[str, Path]:
    """run -> trajectory file of exactly the runs ``collect`` produces (module docstring), sorted
    by run name; a missing or unreadable file raises naming it (header reads only)."""
    runs: dict[str, Path] = {}
    for key in collect.models:
        path = paths.trajectory_file(key, root)
        if not path.is_file():
            raise FileNotFoundError(f"trajectory of collect.models entry {key!r} not found: {path} "
                                    f"(run the collect stage: dvc repro collect@{key})")
        runs[key] = path
        if collect.random_init_control and not check_trajectory_file(path).get("random_init"):
            twin = random_init_name(key)
            tpath = paths.trajectory_file(twin, root)
            if not tpath.is_file():
                raise FileNotFoundError(
                    f"random-init twin {twin!r} of {key!r} not found: {tpath} (collect.random_init_control "
                    f"is on; rerun the collect stage: dvc repro -f collect@{key})")
            runs[twin] = tpath
    return dict(sorted(runs.items()))


def run(P: Params, instance: str | None = None, root: Path | None = None) -> VarianceResult:
    """The variance stage (no instances): :func:`sink_variance` of the runs params ``P.collect``
    names, with the sink rule of ``P.variance``."""
    refuse_instance("variance", instance)
    return sink_variance(P.variance, root=root, collect=P.collect)


def sink_variance(cfg: VarianceParams, root: Path | None = None,
                  collect: CollectParams | None = None) -> VarianceResult:
    """Sink statistics of the collected runs; see the module docstring. collect: params
    ``collect`` (its models and random_init_control choose the runs); None: every trajectory found."""
    runs = collected_runs(collect, root) if collect is not None else paths.trajectory_runs(root)
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
        summary[name] = _summary(st, traj.kind)
    units = {"runs": {name: _units(name, st, runs) for name, st in stats.items()}}
    table = statistics_table(stats)
    main = table[(table["layer"] == "global") & table["primary"]].reset_index(drop=True) if stats else table
    recorded = {"variance": as_dict(cfg)}  # the params dvc.yaml's variance stage lists (srclib.report.freshness)
    if collect is not None:
        recorded.update({"collect.models": list(collect.models),
                         "collect.random_init_control": collect.random_init_control})
    metrics = {"runs": summary, "provenance": provenance(params=recorded)}
    base = paths.ROOT if root is None else Path(root)
    with atomic_outputs() as out:
        sinks = out.dir(paths.sinks_dir(root))
        for name, st in stats.items():
            write_json(sinks / paths.sink_stats(name, base).name, st)
        write_json(out.file(paths.variance_metrics(root)), metrics)
        write_json(out.file(paths.variance_units(root)), units)
    return VarianceResult(stats=stats, table=table, main=main, plots=plots, metrics=metrics, units=units,
                          heads=heads_table(stats), primary_variant=dict(PRIMARY_VARIANT),
                          interpretation=interpretation(metrics, units))


def _summary(st: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """metrics/variance.json's scalars of one run (module docstring)."""
    g = st["variants"][PRIMARY_VARIANT[kind]]["global"]
    out = {k: v for k, v in g.items() if not isinstance(v, (list, dict))}
    out.update(kind_is_dlm=int(kind == "dlm"), random_init=int(st["meta"]["random_init"]), n_prompts=st["n_prompts"])
    if EXPECTED_VARIANT in st["variants"]:
        out["dominant_at_0_frac_expected"] = st["variants"][EXPECTED_VARIANT]["global"]["dominant_at_0_frac"]
    if st.get("heads") is not None:
        out["head_bos_share_max"] = st["heads"]["bos_share_max"]
        out["head_strength_max"] = st["heads"]["strength_max"]
    return out


def _units(name: str, st: Mapping[str, Any], runs: Mapping[str, Path]) -> dict[str, Any]:
    """metrics/units/variance.json's entry of one run (module docstring)."""
    meta = st["meta"]
    twin = random_init_name(name)
    out: dict[str, Any] = {
        "kind": meta["kind"], "random_init": bool(meta["random_init"]), "model": meta.get("model", name),
        "twin": twin if not meta["random_init"] and twin in runs else None, "n_prompts": st["n_prompts"],
        "per_prompt": {v: d["global"]["per_prompt"] for v, d in st["variants"].items()},
        "heads": None if st.get("heads") is None else {k: st["heads"][k] for k in ("bos_share", "strength")},
    }
    if meta["kind"] == "ar":
        g = st["variants"][PRIMARY_VARIANT["ar"]]["global"]
        keys = ("offset_frac_0", "offset_frac_1", "offset_frac_2", "offset_frac_3", "offset_frac_ge4")
        out["offset_hist"] = {**{b: g[k] for b, k in zip(OFFSET_BINS, keys)}, "at_pos0": g["dominant_at_0_frac"]}
    return out


def heads_table(stats: Mapping[str, Any]) -> pd.DataFrame:
    """One row per run x layer x head: mean over steps and prompts of the BOS share and the
    strength (top share x keys, 1 = uniform); runs without per-head shares have no rows."""
    rows = []
    for name, st in stats.items():
        h = st.get("heads")
        if h is None:
            continue
        for layer, (bl, sl) in enumerate(zip(h["bos_share_mean"], h["strength_mean"])):
            for head, (b, s) in enumerate(zip(bl, sl)):
                rows.append({"run": name, "kind": st["meta"]["kind"], "random_init": bool(st["meta"]["random_init"]),
                             "layer": layer, "head": head, "bos_share": b, "strength": s})
    return pd.DataFrame(rows, columns=["run", "kind", "random_init", "layer", "head", "bos_share", "strength"])


# ---- interpretation ----------------------------------------------------------------------------
def _mse(values: list[Any] | None) -> tuple[float, float | None, int]:
    """(mean, standard error or None for < 2 values, n) over the prompts that have a value."""
    x = [float(v) for v in (values or []) if v is not None]
    if not x:
        return float("nan"), None, 0
    if len(x) < 2:
        return x[0], None, 1
    m, se = mean_se(x)
    return m, se, len(x)


def _pm(values: list[Any] | None, digits: int, scale: float = 1.0) -> str:
    m, se, n = _mse(values)
    if n == 0:
        return "n/a"
    return f"{scale * m:.{digits}f}" + (f" ± {scale * se:.{digits}f}" if se is not None else "")


def _fmt(u: Mapping[str, Any], kind: str) -> str:
    pp = u["per_prompt"][PRIMARY_VARIANT[kind]]
    _, _, n_sink = _mse(pp["variance_sink_steps"])
    return (f"normalised dominant-sink variance {_pm(pp['variance'], 4)}; steps with a sink "
            f"{_pm(pp['sink_step_frac'], 0, 100)}%, variance over those steps {_pm(pp['variance_sink_steps'], 4)}"
            f" ({n_sink} prompts with a sink step); BOS share of the mass {_pm(pp['bos_share'], 3)}; "
            f"strength (dominant share x keys, 1 = uniform) {_pm(pp['dominant_share_x_uniform'], 2)}; "
            f"dominant at position 0 in {_pm(pp['dominant_at_0_frac'], 0, 100)}% of steps")


def _ar_extra(u: Mapping[str, Any]) -> str:
    pp = u["per_prompt"]
    off = u["offset_hist"]
    hist = ", ".join(f"{b}: {100 * off[b]:.0f}%" for b in OFFSET_BINS)
    return (f"dominant key at position 0 on the bias-free full-prefix mass (`{EXPECTED_VARIANT}`) "
            f"{_pm(pp[EXPECTED_VARIANT]['dominant_at_0_frac'], 0, 100)}% of steps (the biased `prefix_raw` "
            f"gives {_pm(pp['prefix_raw']['dominant_at_0_frac'], 0, 100)}%: every query sees key 0, not "
            f"evidence); newest query's dominant key behind the query by {hist}")


def _heads_line(m: Mapping[str, Any]) -> str:
    if "head_bos_share_max" not in m:
        return ""
    return (f"; per head (means over steps and prompts): largest BOS share {m['head_bos_share_max']:.3f}, "
            f"largest strength {m['head_strength_max']:.2f}")


def interpretation(metrics: Mapping[str, Any], units: Mapping[str, Any]) -> str:
    """Markdown: each model's primary-variant statistics (mean ± standard error over prompts) beside
    its random-init twin, and every DLM's variance against the AR models'."""
    runs, u = metrics["runs"], units["runs"]
    if not runs:
        return "No trajectories were found: run the collect stage first."
    twins = {u[r]["twin"] for r in runs} - {None}
    models = [r for r in runs if r not in twins]  # every run but the twins shown under their model
    lines = ["Primary variant (DLM: full-sequence mass; AR: newest-query mass), global mass, "
             "mean ± standard error over prompts (n prompts per run). A step has a sink when its sink set "
             f"(s_k >= 0.5) is non-empty. AR `{'`, `'.join(BIASED_VARIANTS)}` (causal column sums) are biased "
             f"towards key 0 by construction and are not evidence of a sink; `{EXPECTED_VARIANT}` divides by "
             "the uniform-attention expectation.", ""]
    for name in models:
        kind = u[name]["kind"]
        label = "DLM" if kind == "dlm" else "AR"
        rnd = ", random weights" if u[name]["random_init"] else ""
        extra = f"; {_ar_extra(u[name])}" if kind == "ar" else ""
        lines.append(f"- **{name}** ({label}{rnd}, {u[name]['n_prompts']} prompts): {_fmt(u[name], kind)}"
                     f"{extra}{_heads_line(runs[name])}.")
        twin = u[name]["twin"]
        if twin is not None:
            textra = f"; {_ar_extra(u[twin])}" if kind == "ar" else ""
            lines.append(f"  - random-init twin {twin} ({u[twin]['n_prompts']} prompts): {_fmt(u[twin], kind)}"
                         f"{textra}{_heads_line(runs[twin])}.")
    trained = [r for r in models if not u[r]["random_init"]]
    ar = [r for r in trained if u[r]["kind"] == "ar"]
    dlm = [r for r in trained if u[r]["kind"] == "dlm"]
    if dlm and ar:
        var = {r: _mse(u[r]["per_prompt"][PRIMARY_VARIANT[u[r]["kind"]]]["variance"]) for r in ar + dlm}
        worst = max(ar, key=lambda r: var[r][0])
        wm, wse, _ = var[worst]
        lines += ["", f"Largest AR variance: {worst} "
                      f"{_pm(u[worst]['per_prompt'][PRIMARY_VARIANT['ar']]['variance'], 4)}."]
        for name in dlm:
            m, se, _ = var[name]
            above = se is not None and wse is not None and m - 2 * se > wm + 2 * wse
            ratio = f"{m / wm:.1f}x" if wm > 0 else "AR variance is 0"
            lines.append(
                f"- {name}: {_pm(u[name]['per_prompt'][PRIMARY_VARIANT['dlm']]['variance'], 4)}, "
                f"{'above' if above else 'not clearly above'} every AR model's (mean ± 2 SE intervals "
                f"{'disjoint' if above else 'overlap or undefined'}); ratio to {worst}: {ratio}."
            )
    return "\n".join(lines)
