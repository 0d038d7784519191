"""The collect stage: one sink trajectory per model and per random-init twin (method.md 2).

One DVC stage instance per model (``collect@<key>``, dvc.yaml foreach over ``collect.models``):
reads the prompts (data/raw/prompts.jsonl), loads the model with its ``models:`` entry (dtype,
device), records its trajectory (srclib.trajectories.record) and, with ``cfg.random_init_control``,
that of its random-init twin (run ``<key>-randinit``); writes ``trajectories/<key>/<run>.safetensors``
and ``metrics/collect/<key>.json`` (no paths, no clock values: the file is byte-stable across
reruns). The variance and plot stages aggregate every model's folder. The run's labels (DLM / AR,
trained / random init) come from the checkpoint's own marker (srclib.models.labels), not its name.

All or nothing: the trajectories are written into a temporary folder beside their target and swapped
in, together with the metrics file, only after every requested model is collected
(srclib.files.atomic_outputs); a failure leaves the previous outputs as they were. The prompts file
is checked against data/raw's manifest first (srclib.data.manifest).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from srclib import devices, paths
from srclib.data.manifest import check_raw_file
from srclib.files import atomic_outputs, sha256_file, write_json
from srclib.notebook import phase
from srclib.params import CollectParams, ModelEntry, Params, as_dict
from srclib.provenance import provenance
from srclib.trajectories.panels import heatmap_panels
from srclib.trajectories.record import collect_trajectory, random_init_twin, read_prompts
from srclib.trajectories.store import Trajectory, load_trajectory, random_init_name, save_trajectory

__all__ = ["CollectResult", "run", "collect_models"]

log = logging.getLogger(__name__)

HEATMAP_PROMPTS = 2  # prompts per run drawn in the notebook's step x position heatmaps

Loader = Callable[..., tuple[Any, Any, Any]]  # (key, dtype=...) -> (model, tokenizer, adapter)


@dataclass
class CollectResult:
    """What the collect notebook shows.

    runs: run -> summary (model, kind, random_init, n_prompts, n_steps, n_layers, seq_len,
    has_bos, seconds, sha256, path); samples: decoded prompt/output of the first prompts of each
    run; metrics: model -> what metrics/collect/<model>.json holds; trajectories: run -> the trajectory as stored
    (read back from its file); heatmaps: run -> the panel srclib.plotting.trajectory_heatmaps
    draws (first HEATMAP_PROMPTS prompts); interpretation: markdown written from the metrics.
    """

    runs: dict[str, dict[str, Any]]
    samples: pd.DataFrame
    metrics: dict[str, Any]  # model -> what metrics/collect/<model>.json holds
    trajectories: dict[str, Trajectory]
    heatmaps: dict[str, dict[str, Any]]
    interpretation: str


def run(P: Params, instance: str | None = None, root: Path | None = None) -> CollectResult:
    """The collect stage: :func:`collect_models` with params ``P.collect`` and ``P.models``, for
    ``instance`` (a key of collect.models; None or "": every model)."""
    return collect_models(P.collect, P.models, root=root, model=instance or None)


def collect_models(
    cfg: CollectParams,
    models: Mapping[str, ModelEntry],
    root: Path | None = None,
    loader: Loader | None = None,
    model: str | None = None,
) -> CollectResult:
    """Collect ``model`` (one collect instance; None: every model of ``cfg.models``) and its
    random-init twin; see the module docstring.

    models: params.yaml's ``models:`` entries by key (models defined there are registered with
    srclib.models). loader(key, dtype=...) -> (model, tokenizer, adapter), default
    srclib.models.load (tests pass in-memory models; then labels come from the adapter, or from
    ``labeller(key, adapter)`` when the loader has that attribute).
    """
    if model is not None and model not in cfg.models:
        raise ValueError(f"collect instance {model!r}: not in collect.models {list(cfg.models)}")
    keys = [model] if model is not None else list(cfg.models)
    if loader is None:
        from srclib.models import labels, load, register

        register({k: models[k] for k in keys})
        loader = load
        labeller = lambda key, adapter: labels(key, paths.model_dir(key, root))  # noqa: E731
    else:
        labeller = getattr(loader, "labeller", None) or (lambda key, adapter: {"random_init": False})
    prompts = paths.prompts_file(root)
    if prompts.is_file():  # a missing file is reported by read_prompts
        check_raw_file(prompts)
    texts = read_prompts(prompts)
    settings = {k: v for k, v in as_dict(cfg).items() if k != "models"}
    all_runs: dict[str, Any] = {}
    samples: list[dict[str, str]] = []
    metrics_by_model: dict[str, Any] = {}
    with atomic_outputs() as out:
        for key in keys:
            staged = out.dir(paths.trajectory_dir(key, root))
            runs, smp = _collect_model(cfg, key, models[key], loader, labeller, texts, staged, root)
            # DVC metrics must be byte-identical across runs: no paths, no wall-clock seconds
            metrics = {"runs": {r: {k: v for k, v in d.items() if k not in ("path", "seconds")}
                                for r, d in runs.items()},
                       "provenance": provenance(params={"collect": settings, f"models.{key}": as_dict(models[key])})}
            write_json(out.file(paths.collect_metrics(key, root)), metrics)
            all_runs.update(runs)
            samples += smp
            metrics_by_model[key] = metrics
    trajectories = {name: load_trajectory(d["path"]) for name, d in all_runs.items()}
    merged = {"runs": {r: d for m in metrics_by_model.values() for r, d in m["runs"].items()}}
    return CollectResult(runs=all_runs, samples=pd.DataFrame(samples), metrics=metrics_by_model,
                         trajectories=trajectories, heatmaps=heatmap_panels(trajectories, n_prompts=HEATMAP_PROMPTS),
                         interpretation=interpretation(merged, trajectories))


def _collect_model(cfg: CollectParams, key: str, entry: ModelEntry, loader: Loader, labeller: Callable,
                   texts: list[str], staged: Path, root: Path | None) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Collect one model (and its random-init twin) into the folder ``staged`` (swapped onto
    trajectories/<key>/ by the caller); each run's summary records its final path."""
    runs: dict[str, Any] = {}
    samples = []
    with phase(f"collect {key}: load ({entry.dtype}, {entry.device})"):
        model, tok, adapter = loader(key, dtype=getattr(torch, entry.dtype))
    model = model.to(devices.resolve(entry.device))
    label = labeller(key, adapter)
    targets = [(key, model, bool(label["random_init"]))]
    if cfg.random_init_control and label["random_init"]:
        log.info("%s: its checkpoint's weights are random (marker); no random-init twin collected", key)
    elif cfg.random_init_control:
        targets.append((random_init_name(key), random_init_twin(model, cfg.seed), True))
    for name, m, rnd in targets:
        t0 = time.perf_counter()
        with phase(f"collect {name}: run {len(runs) + 1}/{len(targets)}, {cfg.n_prompts} prompts"):
            traj = collect_trajectory(m, adapter, tok, texts, cfg, run_name=name, random_init=rnd)
        seconds = time.perf_counter() - t0
        final = paths.trajectory_file(name, root)
        written = save_trajectory(traj, staged / final.name)
        S, L, B, T = traj.shape
        runs[name] = dict(model=key, kind=traj.kind, random_init=rnd, n_prompts=B, n_steps=S, n_layers=L,
                          seq_len=T, has_bos=traj.meta["has_bos"], seconds=round(seconds, 3),
                          sha256=sha256_file(written), path=str(final))
        log.info("collected %s: %d steps x %d layers x %d prompts in %.1f s", name, S, L, B, seconds)
        if tok is not None:
            P = traj.prompt_ids.shape[1]
            for b in range(min(B, 3)):
                samples.append(dict(run=name, prompt=tok.decode(traj.final_ids[b, :P].tolist()),
                                    output=tok.decode(traj.final_ids[b, P:].tolist())))
    del model
    return runs, samples


def _head_clause(traj: Trajectory) -> str:
    """'; the head with the largest BOS share ...' from the per-head shares (empty if not recorded)."""
    if traj.head_bos_share is None:
        return ""
    bos = traj.head_bos_share.double().mean(dim=(0, 3))  # (L, H): mean over steps and prompts
    flat = int(bos.flatten().argmax())
    layer, head = divmod(flat, bos.shape[1])
    return (f"; the head with the largest share of its attention on position 0 is layer {layer} head {head}, "
            f"{float(bos.flatten()[flat]):.3f} (mean over steps and prompts)")


def interpretation(metrics: Mapping[str, Any], trajectories: Mapping[str, Trajectory]) -> str:
    """Markdown: what was collected, per run, and where the global attention mass pooled (the
    position holding the largest share of the primary variant's global mass, averaged over steps
    and prompts, as a multiple of the uniform share), and the head with the largest BOS share."""
    lines = [f"Collected {len(metrics['runs'])} runs "
             f"({sum(not d['random_init'] for d in metrics['runs'].values())} models and their "
             f"random-init twins):", ""]
    for name, d in metrics["runs"].items():
        traj = trajectories[name]
        gm = traj.mass.sum(1).double()  # (S, B, T) global mass of the stored (primary) variant
        share = gm / gm.sum(-1, keepdim=True).clamp_min(1e-30)  # (S, B, T)
        mean_share = share.mean((0, 1))  # (T,)
        top = int(mean_share.argmax())
        uniform = float((1.0 / traj.valid_len.double()).mean())
        lines.append(
            f"- **{name}** ({d['kind'].upper()}{', random init' if d['random_init'] else ''}): "
            f"{d['n_steps']} steps x {d['n_layers']} layers x {d['n_prompts']} prompts, T = {d['seq_len']}, "
            f"BOS at position 0: {'yes' if d['has_bos'] else 'no'}; the largest mean share of global "
            f"mass sits at position {top}, {float(mean_share[top]):.3f} of the step's mass "
            f"({float(mean_share[top]) / uniform:.1f}x the uniform share){_head_clause(traj)}."
        )
    lines += ["", "The variance stage turns these trajectories into the sink-movement statistics."]
    return "\n".join(lines)
