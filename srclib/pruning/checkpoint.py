"""Pruned checkpoints: ``run_prune`` loads a model, calibrates, prunes and saves atomically.

``run_prune`` writes (structured runs, ``spec.run.structure`` set: ``structure.safetensors`` with the kept
units and compensation biases and ``structure.csv`` per block instead of the masks and sparsity table;
the model itself is compact, i.e. physically smaller, where the family can load per-block shapes)
* ``out_dir/``: the pruned model (``save_pretrained`` safetensors + config), the srclib marker
  (``srclib.models.base.write_marker``: adapter key + the PruneSpec), the tokenizer,
  ``masks.safetensors`` (uint8, 1 = pruned, one tensor per layer) and ``sparsity.csv``;
  reloadable with ``srclib.models.load(out_dir)``;
* ``metrics_path``: deterministic JSON (no wall-clock values: byte-identical across reruns);
* ``timing_path`` (optional, not for DVC tracking): seconds per phase and peak memory.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srclib.pruning import calibration as cal
from srclib import devices, models, paths
from srclib.files import atomic_outputs, sha256_file, sha256_folder, write_json, write_text
from srclib.models.base import MASKS_FILE, write_marker
from srclib.params import PruneSpec
from srclib.provenance import provenance
from srclib.pruning.core import PruneReport, prune_model
from srclib.pruning.plan import RunPlan, resolve
from srclib.pruning.structured_core import StructuredReport, prune_structured

__all__ = ["PruneRun", "run_prune", "save_masks", "load_masks", "sparsity_csv"]

log = logging.getLogger(__name__)

SPARSITY_FILE = "sparsity.csv"


@dataclass
class PruneRun:
    """What ``run_prune`` returns: the metrics written to metrics_path, the timing (not tracked),
    the per-layer table and the full report (masks included)."""

    metrics: dict[str, Any]
    timing: dict[str, Any]
    table: list[dict[str, Any]]
    report: PruneReport | StructuredReport


def save_masks(masks: dict[str, torch.Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.to(torch.uint8).contiguous() for k, v in sorted(masks.items())}, str(path))


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Masks saved by ``run_prune`` as bool tensors (True = pruned)."""
    from safetensors.torch import load_file

    return {k: v.bool() for k, v in load_file(str(path)).items()}


def sparsity_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["layer", "rows", "cols", "target", "sparsity", "pruned"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: (repr(float(row[k])) if k in ("target", "sparsity") else row[k]) for k in cols})
    return buf.getvalue()


def run_prune(
    *,
    model: str | Path | tuple[nn.Module, Any, Any],
    spec: PruneSpec,
    out_dir: str | Path,
    metrics_path: str | Path,
    n_samples: int,
    seq_len: int,
    seed: int,
    corpus_path: str | Path | None = None,
    calibration: cal.Calibration | None = None,
    windows_per_batch: int | None = None,
    mass_chunk_size: int | None = None,
    timing_path: str | Path | None = None,
    device: str | torch.device | None = None,
    instance: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> PruneRun:
    """Prune one model per ``spec`` and save model, masks, table, metrics (and timing).

    model: a registry key / srclib checkpoint folder (srclib.models.load), or (model, tokenizer,
    adapter). Calibration windows come from ``calibration`` if given, else from ``corpus_path``
    (required when the method needs data) with n_samples x seq_len, ``seed``, and a
    leading BOS when the tokenizer has one, batched ``windows_per_batch`` windows per forward with the
    mass recorder's query chunk ``mass_chunk_size`` (params.yaml prune.calibration.windows_per_batch,
    chunk_size; required with ``corpus_path``, a given ``calibration`` holds its own). Magnitude
    without OWL needs no calibration data.
    device, dtype: load the model with these (params.yaml ``models:`` entry; device "auto" = CUDA
    when available); an in-memory model is moved to ``device`` (default: left where it is).
    """
    net, tok, adapter, source, checkpoint = _load(model, device, dtype)
    rp = resolve(spec, dlm=adapter.mask_id(net) is not None, shift=bool(adapter.shift))  # the run's decisions, once
    calibration, calib_info = _calibration(rp, tok, source, calibration, corpus_path, n_samples, seq_len, seed,
                                           windows_per_batch, mass_chunk_size)
    if spec.run.structure is not None:
        return _save_structured(net, tok, adapter, spec, rp, calibration, out_dir, metrics_path, timing_path,
                                instance, source, calib_info, checkpoint)
    report = prune_model(net, adapter, spec, calibration, run_plan=rp)
    return _save_unstructured(net, tok, adapter, spec, rp, report, out_dir, metrics_path, timing_path, instance,
                              source, calib_info, checkpoint)


def _load(model, device, dtype) -> tuple[nn.Module, Any, Any, str, dict[str, Any] | None]:
    """(net, tokenizer, adapter, source, the loaded checkpoint's record) of run_prune's ``model``."""
    device = devices.resolve(device)
    if isinstance(model, tuple):
        net, tok, adapter = model
        source = getattr(getattr(net, "config", None), "_name_or_path", "") or "in-memory"
        if device is not None:
            net.to(device)
        return net, tok, adapter, source, None
    net, tok, adapter = models.load(model, dtype=dtype, device=device)  # None: the adapter's default
    return net, tok, adapter, str(model), input_checkpoint(model, adapter)  # what was loaded


def _calibration(rp: RunPlan, tok, source: str, calibration: cal.Calibration | None, corpus_path, n_samples: int,
                 seq_len: int, seed: int, windows_per_batch: int | None, mass_chunk_size: int | None):
    """The run's calibration windows (None when it needs no data) and their record for the metrics."""
    calib_info: dict[str, Any] = {"n_samples": n_samples, "seq_len": seq_len, "seed": seed}
    if rp.needs_data and calibration is None:
        if tok is None:
            raise ValueError(f"model {source!r} has no tokenizer; pass calibration= windows explicitly")
        if corpus_path is None:
            raise ValueError("method needs calibration data: pass corpus_path= or calibration=")
        if windows_per_batch is None or mass_chunk_size is None:
            raise ValueError("calibration windows from corpus_path need windows_per_batch= and mass_chunk_size= "
                             "(params.yaml prune.calibration.windows_per_batch, chunk_size)")
        corpus = Path(corpus_path)
        calibration = cal.build_calibration(
            tok, corpus, n_samples=n_samples, seq_len=seq_len, seed=seed,
            bos_id=getattr(tok, "bos_token_id", None), windows_per_batch=windows_per_batch,
            mass_chunk_size=mass_chunk_size, released=rp.released,
        )
        calib_info["corpus"] = paths.rel(corpus)
    if calibration is not None:
        calib_info["windows_sha256"] = _tensor_digest(calibration.windows)
        calib_info["windows_shape"] = list(calibration.windows.shape)  # recorded even when not used
    return (calibration if rp.needs_data else None), calib_info


def _save_unstructured(net, tok, adapter, spec: PruneSpec, rp: RunPlan, report: PruneReport, out_dir, metrics_path,
                       timing_path, instance, source, calib_info, checkpoint) -> PruneRun:
    """Save the pruned checkpoint, its masks and sparsity table, and the metrics (together or not at all)."""
    table = report.table()
    out_dir = Path(out_dir)
    with atomic_outputs() as out:  # checkpoint and metrics together, or neither
        tmp = out.dir(out_dir)
        net.save_pretrained(tmp)
        write_marker(tmp, key=adapter.key, pruned=spec.to_dict(), instance=instance,
                     **models.inherited_marker(adapter.key))
        if tok is not None:
            tok.save_pretrained(tmp)
        save_masks(report.masks, tmp / MASKS_FILE)
        write_text(tmp / SPARSITY_FILE, sparsity_csv(table))
        masks_sha = sha256_file(tmp / MASKS_FILE)

        n_total = sum(int(m.numel()) for m in report.masks.values())
        n_pruned = sum(int(m.sum()) for m in report.masks.values())
        metrics = _metrics(
            instance, adapter, spec, calib_info, report, source, overall=report.overall, n_prunable=n_total,
            n_pruned=n_pruned, block_sparsity=report.block_sparsity, outlier_ratios=report.outlier_ratios,
            layer_sparsity={k: float(v) for k, v in sorted(report.sparsity.items())}, masks_sha256=masks_sha,
            checkpoint=checkpoint, effective=rp.effective)  # the choices this run resolved to
        write_json(out.file(metrics_path), metrics)
    timing = _timing(net, report, instance, timing_path)
    log.info("pruned %s (%s/%s, %s, sparsity %.4f) -> %s", adapter.key, spec.run.method, spec.run.weighting,
             spec.run.pattern, report.overall, out_dir)
    return PruneRun(metrics=metrics, timing=timing, table=table, report=report)


def _metrics(instance, adapter, spec: PruneSpec, calib_info: dict[str, Any], report: PruneReport | StructuredReport,
             source: str, *, overall: float, n_prunable: int, n_pruned: int, block_sparsity: list[float],
             outlier_ratios: list[float] | None, layer_sparsity: dict[str, float],
             checkpoint: dict[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The prune metrics both kinds of run write (deterministic: no clock values); ``extra`` adds the
    run kind's own keys (masks or structure hash, the structured record)."""
    return {
        "instance": instance,
        "model": adapter.key,
        "spec": spec.to_dict(),
        "calibration": calib_info,
        "inputs": report.inputs,
        "n_passes": report.n_passes,
        "n_tokens": report.n_tokens,
        "target_sparsity": float(spec.run.sparsity),
        "overall_sparsity": float(overall),
        "n_prunable": n_prunable,
        "n_pruned": n_pruned,
        "block_sparsity": block_sparsity,
        "outlier_ratios": outlier_ratios,
        "layer_sparsity": layer_sparsity,
        **extra,
        "provenance": provenance(model_source=source, input_checkpoint=checkpoint),
    }


def _timing(net: nn.Module, report: PruneReport | StructuredReport, instance, timing_path) -> dict[str, Any]:
    """Seconds per phase, peak memory and model bytes (not a DVC output); written when a path is given."""
    model_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    timing = {"seconds": report.seconds, "cpu_seconds": report.cpu_seconds, "memory": report.memory,
              "model_bytes": int(model_bytes), "instance": instance}
    if timing_path is not None:
        write_json(timing_path, timing)
    return timing


STRUCTURE_TABLE = "structure.csv"


def structure_csv(rows: list[dict[str, Any]]) -> str:
    """Per block: kept / total KV groups, query heads, channels and the removed share."""
    buf = io.StringIO()
    cols = ["block", "kv_groups", "kv_groups_total", "query_heads", "channels", "channels_total", "removed_share"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(row[k])) if k == "removed_share" else row[k]) for k in cols})
    return buf.getvalue()


def _layer_shares(adapter: Any, report: StructuredReport) -> dict[str, float]:
    """Removed share of every block linear (heads for q/k/v/o, channels for gate/up/down)."""
    out = {}
    for b in report.blocks:
        heads = 1.0 - b["kv_groups"] / b["kv_groups_total"]
        chans = 1.0 - b["channels"] / b["channels_total"]
        for role, name in sorted(adapter.roles.items()):
            out[f"{adapter.blocks_path}.{b['block']}.{name}"] = heads if role in ("q", "k", "v", "o") else chans
    return dict(sorted(out.items()))


def _save_structured(net, tok, adapter, spec: PruneSpec, rp: RunPlan, calibration, out_dir, metrics_path,
                     timing_path, instance, source, calib_info, checkpoint=None) -> PruneRun:
    """Structured pruning: prune, save the (compact or masked) checkpoint, write metrics."""
    from srclib.models import structure as st

    report = prune_structured(net, adapter, spec, calibration, run_plan=rp)
    effective = rp.effective
    out_dir = Path(out_dir)
    with atomic_outputs() as out:  # checkpoint and metrics together, or neither
        tmp = out.dir(out_dir)
        net.save_pretrained(tmp)
        write_marker(tmp, key=adapter.key, pruned=spec.to_dict(), instance=instance, structure=report.record,
                     **models.inherited_marker(adapter.key))
        if tok is not None:
            tok.save_pretrained(tmp)
        st.save_structure(tmp, report.structure)
        write_text(tmp / STRUCTURE_TABLE, structure_csv(report.blocks))
        structure_sha = sha256_file(tmp / st.STRUCTURE_FILE)
        layers = _layer_shares(adapter, report)
        metrics = _metrics(
            instance, adapter, spec, calib_info, report, source, overall=report.achieved,
            n_prunable=report.total_params, n_pruned=report.removed_params,
            block_sparsity=[float(b["removed_share"]) for b in report.blocks], outlier_ratios=None,
            layer_sparsity=layers, structure_sha256=structure_sha, checkpoint=checkpoint, effective=effective,
            structured={
                "structure": spec.run.structure,
                "form": report.record["form"],
                "bias_compensation": bool(rp.compensate),
                "target_ratio": float(spec.run.sparsity),
                "achieved_ratio": float(report.achieved),
                "removed_params": report.removed_params,
                "total_params": report.total_params,
                "layout": {"n_heads": report.layout.n_heads, "n_kv_heads": report.layout.n_kv_heads,
                           "head_dim": report.layout.head_dim},
                "blocks": report.blocks,
                "record": report.record,
            })
        write_json(out.file(metrics_path), metrics)
    timing = _timing(net, report, instance, timing_path)
    log.info("pruned %s structurally (%s/%s, %s, removed %.4f of block linear params) -> %s", adapter.key,
             spec.run.method, spec.run.weighting, spec.run.structure, report.achieved, out_dir)
    return PruneRun(metrics=metrics, timing=timing, table=report.table(), report=report)


def _tensor_digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def input_checkpoint(model: str | Path, adapter: Any) -> dict[str, Any]:
    """The checkpoint ``models.load(model)`` read, for the prune metrics' provenance: a folder
    (``model`` itself, or the registry entry's default: models/<key>, or the folder an HF entry was
    fetched into) -> {"source": its repository-relative path, "sha256": srclib.files.sha256_folder};
    a hub model not on disk -> {"source": "<hub id>@<revision>", "sha256": None}."""
    if isinstance(model, str) and model in models.MODELS:  # as models.load resolves a key
        default = getattr(adapter, "default_source", None)  # HF entries: models/<key> once fetched, else the hub id
        where = default() if default is not None else paths.model_dir(adapter.key)
        folder = where if isinstance(where, Path) else None
    else:
        folder = Path(model)
    if folder is not None and folder.is_dir():
        return {"source": paths.rel(folder), "sha256": sha256_folder(folder)}
    return {"source": f"{adapter.source}@{adapter.revision or 'main'}", "sha256": None}
