"""What a pruned model's prunable layers cost in theory: FLOPs and weight memory.

* **Theoretical compute** of the prunable layers (every nn.Linear the adapter calls prunable,
  method.md 4): a forward of N tokens through a linear with ``nnz`` nonzero weights costs
  ``2 * nnz * N`` FLOPs (one multiply + one add per weight and token; biases ignored).  Dense:
  ``2 * C_out * C_in * N``.  Attention scores, norms, embeddings and the LM head are not pruned
  and are not counted here (``model.other_params`` of the report says how big the unpruned rest is).
* **Weight memory** of the prunable layers, in a chosen storage dtype (default bfloat16, the dtype
  the 8B models are served in):

  - dense: ``numel * itemsize``;
  - CSR (unstructured): ``nnz * itemsize`` values + ``nnz * idx`` column indices +
    ``(C_out + 1) * idx`` row pointers, for int64 (torch's default) and int32 indices;
  - 2:4 semi-structured, torch's CUTLASS layout (``torch.sparse._semi_structured_conversions.
    sparse_semi_structured_from_dense_cutlass``, used by ``to_sparse_semi_structured``): the kept
    values, a dense ``(C_out, C_in / 2)`` tensor, plus metadata: two 2-bit indices per group of 4
    (4 bits), four groups packed in one int16, i.e. an int16 ``(C_out, C_in / 16)`` tensor.  So
    ``bytes = numel / 2 * itemsize + numel / 8`` (2 bits of metadata per kept value);
    for 16-bit values that is 9/16 = 0.5625 of dense.  Only reported when every prunable matrix
    keeps at most 2 of every 4 consecutive inputs and the dtype has a 2:4 layout
    (``SEMI_STRUCTURED_LAYOUTS``).  torch's kernels also constrain shapes: its CUTLASS backend
    needs C_out % 32 == 0 and C_in % 64 == 0, its cuSPARSELt backend (the default) C_out % 16 == 0
    and C_in % 16 == 0 (per layer: ``cutlass_2to4_shape_ok``, ``cusparselt_2to4_shape_ok``).
    cuSPARSELt packs values and metadata into one opaque buffer; benchmarks/gpu_semistructured.py
    reports its real size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from srclib.models.base import Adapter

__all__ = [
    "DTYPES",
    "INDEX_DTYPES",
    "SEMI_STRUCTURED_LAYOUTS",
    "SemiStructuredLayout",
    "LayerStats",
    "storage_dtype",
    "prunable_linears",
    "layer_stats",
    "keeps_n_of_m",
    "csr_bytes",
    "semi_structured_bytes",
    "flops",
    "memory",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

INDEX_DTYPES: dict[str, int] = {"int64": 8, "int32": 4}  # CSR index dtype -> bytes per index


@dataclass(frozen=True)
class SemiStructuredLayout:
    """torch's CUTLASS 2:4 layout for one value dtype (see the module docstring)."""

    meta_bytes: int  # bytes of one metadata element (int16 for 16-bit values)
    cols_per_meta: int  # dense input columns described by one metadata element
    cutlass_min: tuple[int, int]  # torch's CUTLASS kernels need C_out, C_in multiples of these
    cusparselt_min: tuple[int, int]  # ... and its cuSPARSELt kernels these


# Only the dtypes for which torch stores a 2:4 (not 1:2) pattern. float32 is absent on purpose:
# torch's CUTLASS float32 path is 1:2 sparsity, a stricter pattern than the study's 2:4.
SEMI_STRUCTURED_LAYOUTS: dict[torch.dtype, SemiStructuredLayout] = {
    torch.float16: SemiStructuredLayout(meta_bytes=2, cols_per_meta=16, cutlass_min=(32, 64), cusparselt_min=(16, 16)),
    torch.bfloat16: SemiStructuredLayout(meta_bytes=2, cols_per_meta=16, cutlass_min=(32, 64), cusparselt_min=(16, 16)),
}


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``memory_dtype`` name (one of DTYPES)."""
    if name not in DTYPES:
        raise ValueError(f"memory_dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


# ---- layer inventory ------------------------------------------------------------------------------
def prunable_linears(model: nn.Module, adapter: Adapter) -> dict[str, nn.Linear]:
    """Every prunable linear as ``{"blocks.<i>.<name>": module}`` in block order."""
    out: dict[str, nn.Linear] = {}
    for i, block in enumerate(adapter.blocks(model)):
        for name, lin in adapter.prunable(block).items():
            out[f"blocks.{i}.{name}"] = lin
    if not out:
        raise ValueError(f"model {adapter.key!r} has no prunable linears (adapter.prunable found none)")
    return out


def keeps_n_of_m(weight: torch.Tensor, keep: int = 2, m: int = 4) -> bool:
    """True when every row keeps at most ``keep`` nonzeros in each group of ``m`` consecutive inputs.

    weight: (C_out, C_in); False when C_in is not a multiple of m.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (C_out, C_in), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % m:
        return False
    groups = (weight != 0).reshape(rows, cols // m, m)  # (C_out, C_in/m, m)
    return bool((groups.sum(-1) <= keep).all())


@dataclass(frozen=True)
class LayerStats:
    name: str
    out_features: int
    in_features: int
    numel: int
    nnz: int
    sparsity: float
    keeps_2_of_4: bool
    cutlass_2to4_shape_ok: bool  # C_out % 32 == 0 and C_in % 64 == 0 (16-bit values)
    cusparselt_2to4_shape_ok: bool  # C_out % 16 == 0 and C_in % 16 == 0 (16-bit values)
    has_bias: bool


def layer_stats(model: nn.Module, adapter: Adapter) -> list[LayerStats]:
    """Shape, nonzero count and pattern of every prunable linear."""
    lay16 = SEMI_STRUCTURED_LAYOUTS[torch.bfloat16]
    stats = []
    for name, lin in prunable_linears(model, adapter).items():
        w = lin.weight.detach()  # (C_out, C_in)
        rows, cols = w.shape
        nnz = int(torch.count_nonzero(w))
        stats.append(LayerStats(
            name=name, out_features=rows, in_features=cols, numel=w.numel(), nnz=nnz,
            sparsity=1.0 - nnz / w.numel(), keeps_2_of_4=keeps_n_of_m(w, 2, 4),
            cutlass_2to4_shape_ok=(rows % lay16.cutlass_min[0] == 0 and cols % lay16.cutlass_min[1] == 0),
            cusparselt_2to4_shape_ok=(rows % lay16.cusparselt_min[0] == 0 and cols % lay16.cusparselt_min[1] == 0),
            has_bias=lin.bias is not None,
        ))
    return stats


# ---- compute and memory formulas -----------------------------------------------------------------
def flops(stats: Sequence[LayerStats], tokens: int) -> dict[str, float]:
    """FLOPs of the prunable linears for one forward of ``tokens`` tokens: 2 * weights * tokens."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    dense = 2 * sum(s.numel for s in stats) * tokens
    nonzero = 2 * sum(s.nnz for s in stats) * tokens
    return {"tokens": tokens, "dense": dense, "nonzero": nonzero, "ratio": nonzero / dense}


def csr_bytes(rows: int, nnz: int, value_bytes: int, index_bytes: int) -> int:
    """CSR storage: nnz values + nnz column indices + (rows + 1) row pointers."""
    return nnz * value_bytes + nnz * index_bytes + (rows + 1) * index_bytes


def semi_structured_bytes(rows: int, cols: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes of a 2:4 matrix in torch's CUTLASS layout: values (rows, cols/2) + metadata.

    Metadata: int16 (rows, cols/16) for 16-bit values, i.e. 2 bits per kept value.
    """
    if dtype not in SEMI_STRUCTURED_LAYOUTS:
        raise ValueError(
            f"no 2:4 semi-structured layout for {dtype}; allowed: {sorted(map(str, SEMI_STRUCTURED_LAYOUTS))}"
        )
    lay = SEMI_STRUCTURED_LAYOUTS[dtype]
    if cols % lay.cols_per_meta:
        raise ValueError(f"2:4 layout needs C_in divisible by {lay.cols_per_meta}, got C_in={cols}")
    values = rows * (cols // 2) * torch.tensor([], dtype=dtype).element_size()
    meta = rows * (cols // lay.cols_per_meta) * lay.meta_bytes
    return {"values": values, "metadata": meta, "total": values + meta}


def memory(stats: Sequence[LayerStats], dtype: torch.dtype) -> dict[str, Any]:
    """Weight bytes of the prunable linears: dense, CSR (int64/int32 indices), 2:4 if it applies."""
    item = torch.tensor([], dtype=dtype).element_size()
    dense = sum(s.numel * item for s in stats)
    out: dict[str, Any] = {"dtype": str(dtype).replace("torch.", ""), "dense_bytes": dense}
    for idx_name, idx_bytes in INDEX_DTYPES.items():
        b = sum(csr_bytes(s.out_features, s.nnz, item, idx_bytes) for s in stats)
        out[f"csr_{idx_name}_bytes"] = b
        out[f"csr_{idx_name}_ratio"] = b / dense
    reason = None
    if dtype not in SEMI_STRUCTURED_LAYOUTS:
        reason = f"no 2:4 layout for {out['dtype']} (allowed: float16, bfloat16)"
    elif not all(s.keeps_2_of_4 for s in stats):
        reason = "not every prunable matrix keeps <= 2 of every 4 consecutive inputs"
    elif any(s.in_features % SEMI_STRUCTURED_LAYOUTS[dtype].cols_per_meta for s in stats):
        reason = f"some C_in is not a multiple of {SEMI_STRUCTURED_LAYOUTS[dtype].cols_per_meta} (metadata word)"
    if reason is None:
        b = sum(semi_structured_bytes(s.out_features, s.in_features, dtype)["total"] for s in stats)
        out["semi_structured_2to4_bytes"] = b
        out["semi_structured_2to4_ratio"] = b / dense
    else:
        out["semi_structured_2to4_bytes"] = None
        out["semi_structured_2to4_ratio"] = None
    out["semi_structured_2to4_note"] = reason or "torch CUTLASS layout: numel/2 values + numel/8 bytes metadata"
    return out
