"""The prune stage: one ``prune.instances`` entry -> pruned/<instance>/ and its metrics.

``run(P, instance)`` resolves the instance (params ``prune``) into its PruneSpec, loads the model
with its ``models:`` entry (``P.model_entry(instance)``: dtype, device), calibrates on
``prune.calibration.corpus``, prunes and saves the checkpoint, the metrics (byte-stable) and the
timing (not a DVC output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srclib import paths
from srclib.models import register
from srclib.params import Params, require_instance
from srclib.pruning.checkpoint import PruneRun, run_prune

__all__ = ["PruneResult", "run", "interpretation"]


@dataclass
class PruneResult:
    """What the notebook shows: the run (metrics, timing, per-layer table) and its reading."""

    run: PruneRun
    interpretation: str

    @property
    def metrics(self) -> dict[str, Any]:
        return self.run.metrics

    @property
    def table(self) -> list[dict[str, Any]]:
        return self.run.table

    @property
    def timing(self) -> dict[str, Any]:
        return self.run.timing


def run(P: Params, instance: str | None = None, root: Path | None = None) -> PruneResult:
    """Prune ``instance`` of ``P.prune.instances`` with the model loaded as its ``models:`` entry
    (``P.model_entry(instance)``) says."""
    instance = require_instance("prune", instance)
    model = P.model_entry(instance)
    cfg = P.prune
    inst = cfg.instance(instance)
    register({inst.model: model})  # a model defined in params.yaml: its adapter from the entry
    res = run_prune(
        model=inst.model, spec=cfg.spec(instance), instance=instance,
        out_dir=paths.pruned_dir(instance, root), metrics_path=paths.prune_metrics(instance, root),
        n_samples=cfg.calibration.n_samples, seq_len=cfg.calibration.seq_len, seed=inst.seed,
        windows_per_batch=cfg.calibration.windows_per_batch, mass_chunk_size=cfg.calibration.chunk_size,
        corpus_path=(paths.ROOT if root is None else Path(root)) / cfg.calibration.corpus,
        timing_path=paths.prune_timing(instance, root), dtype=model.dtype, device=model.device,
    )
    return PruneResult(run=res, interpretation=interpretation(res.metrics))


def interpretation(m: dict[str, Any]) -> str:
    """The measured outcome of one prune run, from its metrics."""
    layers = m["layer_sparsity"]
    lo, hi = min(layers.values()), max(layers.values())
    spec = m["spec"]
    if spec.get("structure"):
        return _structured_interpretation(m)
    if m["inputs"] == "none":
        data = "no calibration data (magnitude scores use the weights alone)"
    else:
        data = (f"{m['n_passes']:,} {m['inputs']} calibration passes ({m['n_tokens']:,} tokens) "
                f"from {m['calibration']['n_samples']} windows of {m['calibration']['seq_len']} tokens")
    return (
        f"**Measured.** {spec['method']} with {spec['weighting']} weighting ({spec['pattern']}) pruned "
        f"{m['n_pruned']:,} of {m['n_prunable']:,} prunable weights of {m['model']}: overall sparsity "
        f"{m['overall_sparsity']:.4f} for a target of {m['target_sparsity']:.4f}; per layer from "
        f"{lo:.4f} to {hi:.4f} over {len(layers)} linears. Statistics: {data}.{_choices(m)}"
    )


def _choices(m: dict[str, Any]) -> str:
    """The resolved fidelity choices (metrics ``effective``), when they are not srclib's defaults."""
    e = m.get("effective")
    if not e or (e["fidelity"] == "corrected" and e.get("noise") in (None, "grid")):
        return ""
    parts = [f"{e['windows']} calibration windows"]
    if e.get("noise"):
        parts.append(f"{e['noise']} noise "
                     f"({'first and last position kept' if e['noise_keep_ends'] else 'ends maskable'})")
    if e.get("mask_pattern") and e["mask_pattern"] != m["spec"].get("pattern"):
        parts.append(f"{e['mask_pattern']} masks for the {m['spec']['pattern']} instance")
    if e.get("threshold") == "inclusive":
        parts.append("the released `<=` threshold (one entry more per matrix / SparseGPT block)")
    return f" Fidelity {e['fidelity']}: " + "; ".join(parts) + "."


def _data(m: dict[str, Any]) -> str:
    if m["inputs"] == "none":
        return "no calibration data (magnitude scores use the weights alone)"
    return (f"{m['n_passes']:,} {m['inputs']} calibration passes ({m['n_tokens']:,} tokens) "
            f"from {m['calibration']['n_samples']} windows of {m['calibration']['seq_len']} tokens")


def _structured_interpretation(m: dict[str, Any]) -> str:
    s, spec = m["structured"], m["spec"]
    blocks = s["blocks"]
    heads = ", ".join(f"{b['kv_groups']}/{b['kv_groups_total']}" for b in blocks)
    chans = ", ".join(f"{b['channels']}/{b['channels_total']}" for b in blocks)
    label = {"magnitude": "magnitude-sp", "wanda": "Wanda-sp", "flap": "FLAP"}[spec["method"]]
    return (
        f"**Measured.** {label} with {spec['weighting']} weighting ({s['structure']} structure, bias "
        f"compensation {'on' if s['bias_compensation'] else 'off'}) removed {s['removed_params']:,} of "
        f"{s['total_params']:,} block linear parameters of {m['model']}: ratio {s['achieved_ratio']:.4f} for a "
        f"target of {s['target_ratio']:.4f}. KV groups kept per block: {heads}; MLP channels kept per block: "
        f"{chans}. Saved in the {s['form']} form. Statistics: {_data(m)}.{_choices(m)}"
    )
