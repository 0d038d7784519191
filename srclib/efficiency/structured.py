"""Efficiency of structured (compact) checkpoints: FLOPs of a full forward and measured speedup.

Structured pruning (method.md 9) removes whole KV groups and MLP intermediate channels; the compact
form stores every affected linear as a smaller DENSE matrix, so the model's cost falls on any
device without sparse kernels.  This module reports, for a compact model beside the dense model it
was pruned from:

* **FLOPs of one full forward** over B x T tokens (one denoising step), ``forward_flops``:

  - linears: ``2 * C_out * C_in * B * T`` for every nn.Linear inside the transformer blocks
    (one multiply + one add per weight and token; biases ignored, as in
    srclib.efficiency.accounting);
  - attention: ``4 * B * T^2 * n_q_i * head_dim`` for block i (scores ``Q K^T``: 2 B T^2 n_q hd,
    weighted sum ``P V``: the same), with the block's query heads ``n_q_i = q.out_features /
    head_dim`` read from its q projection, so compact blocks count their own heads.  Full T x T
    attention is counted for causal models too (what the SDPA math kernel computes);
  - LM head: ``2 * d * V * B * T`` (d, V from the input embedding; tied or not);
  - norms, RoPE, softmax, activations and the embedding lookup are not counted (O(B T d)).

* **Measured latency** of one full step (``adapter.logits``) of the dense and the compact model,
  timed INTERLEAVED (dense, compact, dense, ...) after a warmup with srclib.efficiency.timing's
  protocol; the speedup ``median(dense) / median(compact)`` is reported beside the
  FLOP-proportional ideal ``F_dense / F_compact``.  The two models compute different functions by
  design, so their logits are not compared; the compact logits must be finite.

``structured_report`` returns a JSON-ready dict shaped like timing.efficiency_report's (kind
"structured", format "compact"); srclib.efficiency.summary flattens both kinds.
"""

from __future__ import annotations

import logging
import statistics
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from srclib.efficiency.accounting import storage_dtype
from srclib.efficiency.timing import (
    CLOCKS,
    _compare,
    _measurement_device,
    _num_threads,
    _summary,
    _synchronizer,
    _time_interleaved,
    environment,
    shape_key,
)
from srclib.models.base import Adapter
from srclib.models.structure import block_linears, head_layout

if TYPE_CHECKING:
    from srclib.params import EfficiencyParams

__all__ = ["forward_flops", "block_linear_params", "block_shapes", "structured_report"]

log = logging.getLogger(__name__)


def _embedding(model: nn.Module) -> nn.Embedding:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Embedding):
        raise ValueError(f"model {type(model).__name__} has no input embedding (get_input_embeddings): "
                         "forward_flops needs its vocabulary size and width")
    return emb


def forward_flops(model: nn.Module, adapter: Adapter, batch: int, tokens: int) -> dict[str, int]:
    """FLOPs of one full forward of ``model`` over ``batch`` x ``tokens`` token ids.

    Returns {"linears": 2 * sum of block-linear weights * B*T, "attention": sum over blocks of
    4 * B * T^2 * n_q_i * head_dim, "head": 2 * d * V * B*T, "total": their sum} (integers, FLOPs;
    see the module docstring).  head_dim comes from srclib.models.structure.head_layout; a block
    whose q projection is not a whole number of heads raises ValueError.
    """
    if batch < 1 or tokens < 1:
        raise ValueError(f"batch and tokens must be >= 1, got batch={batch}, tokens={tokens}")
    n = batch * tokens
    hd = head_layout(adapter, model).head_dim
    lin = att = 0
    for i, block in enumerate(adapter.blocks(model)):
        lin += sum(2 * m.weight.numel() * n for m in block.modules() if isinstance(m, nn.Linear))
        q_out = block_linears(adapter, block)["q"].out_features
        if q_out % hd:
            raise ValueError(f"block {i}: q projection has {q_out} outputs, not a multiple of head_dim {hd}")
        att += 4 * batch * tokens**2 * (q_out // hd) * hd
    emb = _embedding(model)
    head = 2 * emb.embedding_dim * emb.num_embeddings * n
    return {"linears": lin, "attention": att, "head": head, "total": lin + att + head}


def block_linear_params(model: nn.Module, adapter: Adapter) -> int:
    """Weights of every nn.Linear inside the transformer blocks (biases excluded: method.md 9's
    ratio denominator)."""
    return sum(m.weight.numel() for block in adapter.blocks(model)
               for m in block.modules() if isinstance(m, nn.Linear))


def block_shapes(model: nn.Module, adapter: Adapter) -> dict[str, list[int]]:
    """Per block: query heads, KV groups and MLP intermediate channels, read from the linears'
    shapes (q rows / head_dim, k rows / head_dim, gate rows)."""
    hd = head_layout(adapter, model).head_dim
    out: dict[str, list[int]] = {"query_heads": [], "kv_groups": [], "intermediate": []}
    for block in adapter.blocks(model):
        lins = block_linears(adapter, block)
        out["query_heads"].append(lins["q"].out_features // hd)
        out["kv_groups"].append(lins["k"].out_features // hd)
        out["intermediate"].append(lins["gate"].out_features)
    return out


def _param_bytes(model: nn.Module, item: int) -> int:
    # unique parameters (tied embeddings count once), in the storage dtype
    return sum(p.numel() for p in model.parameters()) * item


@torch.inference_mode()
def structured_report(
    compact: nn.Module,
    dense: nn.Module,
    adapter: Adapter,
    cfg: EfficiencyParams,
    *,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """FLOPs, weight memory and measured step latency of a ``compact`` structured model vs the
    ``dense`` model it was pruned from (same adapter, same vocabulary and number of blocks).

    cfg: the efficiency params (token_shapes: (batch, tokens) of the timed steps; repeats/warmup:
    timed and untimed rounds, interleaved dense/compact; threads: torch.set_num_threads during the
    measurement, restored afterwards; clock: "wall" or "process" (timing.CLOCKS; "process" is
    refused on a non-CPU device); memory_dtype: the storage dtype of the memory figures); its
    ``instances`` are not read here.  device: both models are moved there in place (default: where
    ``compact``'s parameters are), eval mode.  seed: the random token ids.

    Returns {"kind": "structured", "env", "settings", "model", "blocks", "flops", "memory",
    "latency"}: flops[shape] = {"dense", "pruned", "ratio", "dense_parts", "pruned_parts"} (FLOPs
    of one full forward); memory = block-linear weight bytes ("dense_bytes", "compact_bytes",
    "ratio") and all-parameter bytes ("dense_model_bytes", "compact_model_bytes", "model_ratio");
    latency[shape]["step"] holds the dense/compact timing summaries (seconds),
    "compact_over_dense" (ratios of step times) and tokens/s; latency[shape]["speedup"] = {"measured":
    median dense / median compact, "ideal": F_dense / F_compact, "measured_over_ideal"}.
    Raises RuntimeError when the compact logits are not finite.
    """
    shapes = [(int(b), int(t)) for b, t in cfg.token_shapes]
    device = _measurement_device(compact, cfg.clock, device)
    vocab = _checked_same_family(compact, dense, adapter)
    compact = compact.to(device).eval()
    dense = dense.to(device).eval()

    with _num_threads(cfg.threads):
        report = _static_report(compact, dense, adapter, cfg, shapes, device, seed)
        gen = torch.Generator().manual_seed(seed)
        sync = _synchronizer(device)
        for b, t in tqdm(shapes, desc="efficiency (structured): token shapes", disable=None):
            key = shape_key(b, t)
            f_d, f_c = forward_flops(dense, adapter, b, t), forward_flops(compact, adapter, b, t)
            report["flops"][key] = {"dense": f_d["total"], "pruned": f_c["total"],
                                    "ratio": f_c["total"] / f_d["total"], "dense_parts": f_d, "pruned_parts": f_c}
            ids = torch.randint(0, vocab, (b, t), generator=gen).to(device)  # (B, T)
            report["latency"][key] = _timed_shape(compact, dense, adapter, cfg, ids, key, sync,
                                                  ideal=f_d["total"] / f_c["total"])
        report["env"]["loadavg_1m_after"] = environment(device)["loadavg_1m"]
    return report


def _static_report(compact: nn.Module, dense: nn.Module, adapter: Adapter, cfg: EfficiencyParams,
                   shapes: list[tuple[int, int]], device, seed: int) -> dict[str, Any]:
    """The report's parts that need no timing: environment, settings, parameter counts, block shapes
    and weight memory; ``flops`` and ``latency`` empty, filled per token shape."""
    item = torch.tensor([], dtype=storage_dtype(cfg.memory_dtype)).element_size()
    lin_c, lin_d = block_linear_params(compact, adapter), block_linear_params(dense, adapter)
    total_c = sum(p.numel() for p in compact.parameters())
    total_d = sum(p.numel() for p in dense.parameters())
    return {
        "kind": "structured",
        "env": environment(device),
        "settings": {
            "token_shapes": [list(s) for s in shapes], "repeats": cfg.repeats, "warmup": cfg.warmup,
            "memory_dtype": cfg.memory_dtype, "formats": ["compact"], "seed": seed, "clock": cfg.clock,
            "model_dtype": str(next(compact.parameters()).dtype).replace("torch.", ""),
        },
        "model": _model_counts(adapter, lin_c, lin_d, total_c, total_d),
        "blocks": {"compact": block_shapes(compact, adapter), "dense": block_shapes(dense, adapter)},
        "flops": {},
        "memory": {
            "dtype": cfg.memory_dtype,
            "dense_bytes": lin_d * item,
            "compact_bytes": lin_c * item,
            "ratio": lin_c / lin_d,
            "dense_model_bytes": _param_bytes(dense, item),
            "compact_model_bytes": _param_bytes(compact, item),
            "model_ratio": total_c / total_d,
        },
        "latency": {},
    }


def _timed_shape(compact: nn.Module, dense: nn.Module, adapter: Adapter, cfg: EfficiencyParams, ids: torch.Tensor,
                 key: str, sync, ideal: float) -> dict[str, Any]:
    """Dense and compact step times on ``ids``, interleaved, with the measured and ideal speedups."""
    _check_finite_logits(compact, adapter, ids, key)
    step = {"dense": lambda: adapter.logits(dense, ids), "compact": lambda: adapter.logits(compact, ids)}
    times = _time_interleaved(step, cfg.repeats, cfg.warmup, sync, CLOCKS[cfg.clock])
    entry = _latency_entry(times, *ids.shape, ideal=ideal)
    log.info("efficiency (structured) %s %s: speedup x%.2f measured, x%.2f ideal",
             adapter.key, key, entry["speedup"]["measured"], entry["speedup"]["ideal"])
    return entry


def _checked_same_family(compact: nn.Module, dense: nn.Module, adapter: Adapter) -> int:
    """The vocabulary size both models share; raises when their number of blocks or vocabulary differ."""
    n_c, n_d = len(adapter.blocks(compact)), len(adapter.blocks(dense))
    v_c, v_d = _embedding(compact).num_embeddings, _embedding(dense).num_embeddings
    if (n_c, v_c) != (n_d, v_d):
        raise ValueError(f"compact and dense must be the same family and size: compact has {n_c} blocks and "
                         f"vocabulary {v_c}, dense {n_d} blocks and vocabulary {v_d}")
    return v_d


def _model_counts(adapter: Adapter, lin_c: int, lin_d: int, total_c: int, total_d: int) -> dict[str, Any]:
    """The report's "model" entry: parameter counts of the compact and the dense model."""
    removed = 1.0 - lin_c / lin_d
    return {
        "key": adapter.key,
        "total_params": total_c,
        "dense_total_params": total_d,
        "block_linear_params": {"compact": lin_c, "dense": lin_d},
        "removed_share": removed,
        "prunable_sparsity": removed,
    }


def _check_finite_logits(compact: nn.Module, adapter: Adapter, ids: torch.Tensor, key: str) -> None:
    """Raises RuntimeError when the compact model's logits on ``ids`` (B, T) are not all finite."""
    out = adapter.logits(compact, ids)  # (B, T, V)
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"compact model {adapter.key!r} gives non-finite logits at {key}; "
                           "refusing to time a broken computation")


def _latency_entry(times: dict[str, list[float]], b: int, t: int, ideal: float) -> dict[str, Any]:
    """latency[shape]: the dense/compact step summaries, their ratios, tokens/s and the measured vs
    ``ideal`` (FLOP-proportional) speedup."""
    entry: dict[str, Any] = {"batch": b, "tokens": t}
    entry["step"] = {name: _summary(ts) for name, ts in times.items()}
    entry["step"]["compact_over_dense"] = _compare(times, "dense", "compact")
    entry["step"]["throughput_tokens_per_s"] = {
        name: b * t / statistics.median(ts) for name, ts in times.items()
    }
    measured = statistics.median(times["dense"]) / statistics.median(times["compact"])
    entry["speedup"] = {"measured": measured, "ideal": ideal, "measured_over_ideal": measured / ideal}
    return entry
