"""Efficiency: what a pruned model actually buys (FLOPs, weight memory, measured latency).

Three questions, answered separately and never mixed up:

* **Theoretical compute** of the prunable layers (every nn.Linear the adapter calls prunable,
  method.md 4): a forward of N tokens through a linear with ``nnz`` nonzero weights costs
  ``2 * nnz * N`` FLOPs (one multiply + one add per weight and token; biases ignored).  Dense:
  ``2 * C_out * C_in * N``.  Attention scores, norms, embeddings and the LM head are not pruned
  and are not counted here (``model.other_params`` says how big the unpruned rest is).
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
* **Measured latency** of one FULL denoising step (one forward of the whole model over B x T
  tokens, ``adapter.logits``) for the pruned model run densely (zeros multiplied like any other
  number: no speedup, by construction) vs a copy whose prunable linears are swapped for
  ``CSRLinear`` (torch.sparse CSR matmul).  The two are timed INTERLEAVED (dense, sparse, dense,
  sparse, ...) after a warmup so background load hits both alike; the report gives medians,
  quartiles and the median of the per-round ratios ``sparse / dense`` (> 1 means the sparse
  model is SLOWER).  The sparse outputs are checked against the dense ones before timing;
  a mismatch raises.  The prunable linears alone are also timed (same protocol), which shows
  how much of a step the pruned layers are.

Public API: ``efficiency_report`` (one in-memory model -> JSON-ready dict), ``run_efficiency``
(checkpoint folders -> metrics JSON written atomically + a DataFrame), plus the building blocks
(``layer_stats``, ``csr_bytes``, ``semi_structured_bytes``, ``keeps_n_of_m``, ``CSRLinear``,
``sparse_copy``, ``zero_by_magnitude_``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from srclib import paths
from srclib.files import write_json
from srclib.models.base import Adapter
from srclib.provenance import git_commit

__all__ = [
    "DTYPES",
    "SEMI_STRUCTURED_LAYOUTS",
    "SPARSE_FORMATS",
    "CLOCKS",
    "LayerStats",
    "SemiStructuredLayout",
    "CSRLinear",
    "prunable_linears",
    "layer_stats",
    "keeps_n_of_m",
    "csr_bytes",
    "semi_structured_bytes",
    "flops",
    "memory",
    "sparse_copy",
    "zero_by_magnitude_",
    "environment",
    "efficiency_report",
    "run_efficiency",
    "report_rows",
]

log = logging.getLogger(__name__)

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


def _dtype(name: str) -> torch.dtype:
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


# ---- sparse execution ---------------------------------------------------------------------------
class CSRLinear(nn.Module):
    """y = x W^T + b with W stored as a torch sparse CSR tensor (C_out, C_in)."""

    def __init__(self, weight_csr: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight_csr.layout != torch.sparse_csr:
            raise ValueError(f"weight_csr must have layout torch.sparse_csr, got {weight_csr.layout}")
        self.out_features, self.in_features = weight_csr.shape
        self.register_buffer("weight", weight_csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "CSRLinear":
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            csr = linear.weight.detach().to_sparse_csr()
        return cls(csr, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, C_in)
        y = torch.sparse.mm(self.weight, x2.t()).t()  # (N, C_out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.weight._nnz()}"


SPARSE_FORMATS: dict[str, Callable[[nn.Linear], nn.Module]] = {
    "csr": CSRLinear.from_linear,
}


def sparse_copy(model: nn.Module, adapter: Adapter, fmt: str = "csr") -> nn.Module:
    """A deep copy of ``model`` whose prunable linears are replaced by ``SPARSE_FORMATS[fmt]``."""
    if fmt not in SPARSE_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(SPARSE_FORMATS)}, got {fmt!r}")
    make = SPARSE_FORMATS[fmt]
    clone = copy.deepcopy(model)
    for block in adapter.blocks(clone):
        for name, lin in list(adapter.prunable(block).items()):
            parent_name, _, leaf = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, leaf, make(lin))
    return clone.eval()


@torch.no_grad()
def zero_by_magnitude_(model: nn.Module, adapter: Adapter, sparsity: float, pattern: str = "unstructured") -> nn.Module:
    """Zero the smallest-|W| weights of every prunable linear IN PLACE (a test/benchmark fixture,
    not one of the study's pruners).

    pattern "unstructured": floor(C_in * sparsity) per output row; "2:4": the 2 smallest of every
    4 consecutive inputs (sparsity must be 0.5).  Ties: lower index first (stable sort).
    """
    if pattern not in _ZERO_PATTERNS:
        raise ValueError(f"pattern must be one of {sorted(_ZERO_PATTERNS)}, got {pattern!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    for lin in prunable_linears(model, adapter).values():
        w = lin.weight  # (C_out, C_in)
        w[_ZERO_PATTERNS[pattern](w.abs(), sparsity)] = 0
    return model


def _rowwise_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = math.floor(score.shape[1] * sparsity)
    mask = torch.zeros_like(score, dtype=torch.bool)
    order = torch.sort(score, dim=1, stable=True).indices  # (C_out, C_in)
    mask.scatter_(1, order[:, :k], True)
    return mask


def _two_four_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    if sparsity != 0.5:
        raise ValueError(f"pattern '2:4' prunes exactly half; sparsity must be 0.5, got {sparsity}")
    rows, cols = score.shape
    if cols % 4:
        raise ValueError(f"pattern '2:4' needs C_in divisible by 4, got C_in={cols}")
    g = score.reshape(rows, cols // 4, 4)  # (C_out, C_in/4, 4)
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(-1, torch.sort(g, dim=-1, stable=True).indices[..., :2], True)
    return mask.reshape(rows, cols)


_ZERO_PATTERNS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "unstructured": _rowwise_mask,
    "2:4": _two_four_mask,
}


# ---- timing ---------------------------------------------------------------------------------------
def _synchronizer(device: torch.device) -> Callable[[], None]:
    mod = getattr(torch, device.type, None)
    sync = getattr(mod, "synchronize", None)
    return (lambda: sync(device)) if sync is not None else (lambda: None)


# "wall": elapsed time (what a user waits; needs an otherwise idle machine).
# "process": CPU seconds this process consumed (time.process_time). On a shared, oversubscribed
# CPU it is far less sensitive to other processes than wall time; with threads=1 it is the compute
# cost of the forward. Meaningless for GPU work (the GPU's time is not CPU time).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}


def _time_interleaved(
    fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each fn, measured round-robin (one call of each per round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = clock()
            fn()
            sync()
            times[name].append(clock() - t0)
    return times


def _summary(ts: Sequence[float]) -> dict[str, float]:
    q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else [ts[0]] * 3
    return {"median_s": statistics.median(ts), "p25_s": q[0], "p75_s": q[2], "min_s": min(ts), "n": len(ts)}


def _compare(times: dict[str, list[float]], base: str, other: str) -> dict[str, float]:
    b, o = times[base], times[other]
    return {
        "ratio_of_medians": statistics.median(o) / statistics.median(b),
        "median_of_round_ratios": statistics.median(x / y for x, y in zip(o, b)),
    }


# ---- environment --------------------------------------------------------------------------------
def _describe_cpu(device: torch.device) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return (platform.processor() or platform.machine()) + f" ({os.cpu_count()} logical cores)"


def _describe_cuda(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


_DEVICE_DESCRIBERS: dict[str, Callable[[torch.device], str]] = {"cpu": _describe_cpu, "cuda": _describe_cuda}




def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where the numbers were measured: device, torch version, threads, load, git commit."""
    device = torch.device(device)
    describe = _DEVICE_DESCRIBERS.get(device.type, lambda d: str(d))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "device": str(device),
        "device_description": describe(device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "loadavg_1m": None if load is None else round(load[0], 2),
        "git_commit": git_commit(),
    }


# ---- the report -----------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _shape_key(b: int, t: int) -> str:
    return f"{b}x{t}"


def _check_shapes(token_shapes: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    shapes = []
    for s in token_shapes:
        if len(s) != 2 or int(s[0]) < 1 or int(s[1]) < 1:
            raise ValueError(f"token_shapes entries must be (batch >= 1, tokens >= 1), got {s!r}")
        shapes.append((int(s[0]), int(s[1])))
    if not shapes:
        raise ValueError("token_shapes must list at least one (batch, tokens) shape")
    return shapes


@torch.inference_mode()
def efficiency_report(
    model: nn.Module,
    adapter: Adapter,
    *,
    token_shapes: Sequence[Sequence[int]] = ((1, 192), (8, 192)),
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | str | None = None,
    threads: int | None = None,
    memory_dtype: str = "bfloat16",
    formats: Sequence[str] = ("csr",),
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
    clock: str = "wall",
) -> dict[str, Any]:
    """FLOPs, weight memory and measured step latency of ``model`` (already pruned: zeros in its
    prunable linears) run densely vs with each sparse format in ``formats``.

    model: moved to ``device`` in place when given (default: where its parameters are), eval mode.
    token_shapes: (batch, tokens) of the timed denoising steps. repeats/warmup: timed rounds and
    untimed warmup rounds (interleaved dense/sparse). threads: torch.set_num_threads during the
    measurement (default: the current setting), restored afterwards. memory_dtype: dtype the
    weight memory is reported in (one of DTYPES). atol/rtol: the sparse-vs-dense logits check.
    clock: "wall" or "process" (see CLOCKS); "process" is refused on a non-CPU device.
    Returns a JSON-serialisable dict (see the module docstring).
    """
    shapes = _check_shapes(token_shapes)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for fmt in formats:
        if fmt not in SPARSE_FORMATS:
            raise ValueError(f"formats entries must be among {sorted(SPARSE_FORMATS)}, got {fmt!r}")
    mem_dtype = _dtype(memory_dtype)
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    if clock == "process" and device.type != "cpu":
        raise ValueError(f"clock='process' measures CPU time only; use clock='wall' on {device}")
    timer = CLOCKS[clock]
    model = model.to(device).eval()

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads if threads is not None else old_threads)
    try:
        stats = layer_stats(model, adapter)
        total = sum(p.numel() for p in model.parameters())
        prunable = sum(s.numel for s in stats)
        nnz = sum(s.nnz for s in stats)
        report: dict[str, Any] = {
            "env": environment(device),
            "settings": {
                "token_shapes": [list(s) for s in shapes], "repeats": repeats, "warmup": warmup,
                "memory_dtype": memory_dtype, "formats": list(formats), "atol": atol, "rtol": rtol,
                "seed": seed, "clock": clock, "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            },
            "model": {
                "key": adapter.key,
                "total_params": total,
                "prunable_params": prunable,
                "other_params": total - prunable,
                "prunable_nonzero": nnz,
                "prunable_sparsity": 1.0 - nnz / prunable,
                "keeps_2_of_4": all(s.keeps_2_of_4 for s in stats),
                "n_prunable_linears": len(stats),
            },
            "layers": [asdict(s) for s in stats],
            "flops": {_shape_key(b, t): flops(stats, b * t) for b, t in shapes},
            "memory": memory(stats, mem_dtype),
            "latency": {},
        }
        sparse_models = {fmt: sparse_copy(model, adapter, fmt) for fmt in formats}
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab = emb.num_embeddings if emb is not None else int(model.config.vocab_size)
        gen = torch.Generator().manual_seed(seed)
        sync = _synchronizer(device)
        dense_lins = prunable_linears(model, adapter)
        sparse_lins = {fmt: _swapped_layers(m, adapter, dense_lins) for fmt, m in sparse_models.items()}
        for b, t in tqdm(shapes, desc="efficiency: token shapes", disable=None):
            ids = torch.randint(0, vocab, (b, t), generator=gen).to(device)  # (B, T)
            ref = adapter.logits(model, ids)  # (B, T, V)
            entry: dict[str, Any] = {"batch": b, "tokens": t}
            for fmt, sm in sparse_models.items():
                out = adapter.logits(sm, ids)  # (B, T, V)
                diff = float((out - ref).abs().max())
                ok = bool(torch.allclose(out, ref, atol=atol, rtol=rtol))
                entry[f"{fmt}_max_abs_diff"] = diff
                if not ok:
                    raise RuntimeError(
                        f"{fmt} model logits differ from the dense model at {b}x{t}: max |diff| = "
                        f"{diff:.3g} (atol={atol}, rtol={rtol}); refusing to time a wrong computation"
                    )
            # one full denoising step: the model forward over B x T tokens
            step = {"dense": lambda: adapter.logits(model, ids)}
            step.update({fmt: (lambda sm=sm: adapter.logits(sm, ids)) for fmt, sm in sparse_models.items()})
            times = _time_interleaved(step, repeats, warmup, sync, timer)
            entry["step"] = {name: _summary(ts) for name, ts in times.items()}
            entry["step"]["throughput_tokens_per_s"] = {
                name: b * t / statistics.median(ts) for name, ts in times.items()
            }
            for fmt in formats:
                entry["step"][f"{fmt}_over_dense"] = _compare(times, "dense", fmt)
            # the prunable linears alone, on inputs of the right width
            xs = {name: torch.randn(b * t, lin.in_features, generator=gen).to(device, lin.weight.dtype)
                  for name, lin in dense_lins.items()}  # (N, C_in) each
            lin_fns = {"dense": lambda: [lin(xs[n]) for n, lin in dense_lins.items()]}
            lin_fns.update({fmt: (lambda L=L: [lin(xs[n]) for n, lin in L.items()]) for fmt, L in sparse_lins.items()})
            ltimes = _time_interleaved(lin_fns, repeats, warmup, sync, timer)
            entry["linears"] = {name: _summary(ts) for name, ts in ltimes.items()}
            for fmt in formats:
                entry["linears"][f"{fmt}_over_dense"] = _compare(ltimes, "dense", fmt)
            entry["linears"]["dense_share_of_step"] = (
                statistics.median(ltimes["dense"]) / statistics.median(times["dense"])
            )
            report["latency"][_shape_key(b, t)] = entry
            log.info("efficiency %s %dx%d: %s", adapter.key, b, t,
                     {f: round(entry["step"][f"{f}_over_dense"]["ratio_of_medians"], 3) for f in formats})
        report["env"]["loadavg_1m_after"] = environment(device)["loadavg_1m"]
    finally:
        torch.set_num_threads(old_threads)
    return report


def _swapped_layers(model: nn.Module, adapter: Adapter, names: Iterable[str]) -> dict[str, nn.Module]:
    """The modules of a sparse copy at the dense model's prunable names ("blocks.<i>.<name>")."""
    blocks = adapter.blocks(model)
    out: dict[str, nn.Module] = {}
    for full in names:
        _, i, name = full.split(".", 2)
        out[full] = blocks[int(i)].get_submodule(name)
    return out


# ---- the stage ------------------------------------------------------------------------------------
def report_rows(name: str, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat table rows (one per token shape and sparse format) from one report."""
    rows = []
    mem = report["memory"]
    for key, lat in report["latency"].items():
        for fmt in report["settings"]["formats"]:
            rows.append({
                "instance": name,
                "shape": key,
                "format": fmt,
                "sparsity": report["model"]["prunable_sparsity"],
                "keeps_2_of_4": report["model"]["keeps_2_of_4"],
                "flops_ratio": report["flops"][key]["ratio"],
                "mem_csr_int32_ratio": mem["csr_int32_ratio"],
                "mem_csr_int64_ratio": mem["csr_int64_ratio"],
                "mem_2to4_ratio": mem["semi_structured_2to4_ratio"],
                "dense_step_ms": 1e3 * lat["step"]["dense"]["median_s"],
                "sparse_step_ms": 1e3 * lat["step"][fmt]["median_s"],
                "step_sparse_over_dense": lat["step"][f"{fmt}_over_dense"]["ratio_of_medians"],
                "linears_sparse_over_dense": lat["linears"][f"{fmt}_over_dense"]["ratio_of_medians"],
                "dense_tokens_per_s": lat["step"]["throughput_tokens_per_s"]["dense"],
                "sparse_tokens_per_s": lat["step"]["throughput_tokens_per_s"][fmt],
            })
    return rows


def run_efficiency(
    *,
    instances: Mapping[str, str | Path],
    token_shapes: Sequence[Sequence[int]] = ((1, 192), (8, 192)),
    repeats: int = 20,
    metrics_path: str | Path,
    warmup: int = 3,
    device: str | None = None,
    threads: int | None = None,
    memory_dtype: str = "bfloat16",
    formats: Sequence[str] = ("csr",),
    clock: str = "wall",
):
    """The efficiency stage: load each checkpoint folder, build its report, write ONE metrics JSON
    atomically (``{"instances": {name: report}}``) and return a pandas DataFrame (``report_rows``)."""
    import pandas as pd

    from srclib.models import load

    if not instances:
        raise ValueError("instances must map at least one name to a checkpoint folder")
    _check_shapes(token_shapes)
    missing = {n: str(p) for n, p in instances.items() if not Path(p).is_dir()}
    if missing:
        raise FileNotFoundError(f"checkpoint folders not found for instances: {missing}")
    reports: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name, folder in instances.items():
        model, _tok, adapter = load(folder)
        rep = efficiency_report(
            model, adapter, token_shapes=token_shapes, repeats=repeats, warmup=warmup, device=device,
            threads=threads, memory_dtype=memory_dtype, formats=formats, clock=clock,
        )
        rep["checkpoint"] = paths.rel(folder)
        reports[name] = rep
        rows.extend(report_rows(name, rep))
        del model
    write_json(metrics_path, {"instances": reports})
    return pd.DataFrame(rows)
