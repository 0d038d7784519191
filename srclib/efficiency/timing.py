"""Measured latency of a pruned model, dense vs sparse, and the full efficiency report.

**Measured latency** of one FULL denoising step (one forward of the whole model over B x T
tokens, ``adapter.logits``) for the pruned model run densely (zeros multiplied like any other
number: no speedup, by construction) vs a copy whose prunable linears are swapped for
``CSRLinear`` (torch.sparse CSR matmul, srclib.efficiency.sparse).  The two are timed
INTERLEAVED (dense, sparse, dense, sparse, ...) after a warmup so background load hits both
alike; the report gives medians, quartiles and the median of the per-round ratios
``sparse / dense`` (> 1 means the sparse model is SLOWER).  The sparse outputs are checked
against the dense ones before timing; a mismatch raises.  The prunable linears alone are also
timed (same protocol), which shows how much of a step the pruned layers are.

``efficiency_report`` (one in-memory model + the efficiency params -> JSON-ready dict) joins
this with the FLOPs and memory accounting of srclib.efficiency.accounting and the environment
the numbers were measured in.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from srclib import devices
from srclib.efficiency.accounting import flops, layer_stats, memory, prunable_linears, storage_dtype
from srclib.efficiency.sparse import SPARSE_FORMATS, sparse_copy
from srclib.models.base import Adapter
from srclib.provenance import git_commit

if TYPE_CHECKING:
    from srclib.params import EfficiencyParams

__all__ = ["CLOCKS", "environment", "efficiency_report", "shape_key"]

log = logging.getLogger(__name__)


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
def shape_key(b: int, t: int) -> str:
    """The report's key of a (batch, tokens) shape, e.g. "8x192"."""
    return f"{b}x{t}"


@torch.inference_mode()
def efficiency_report(
    model: nn.Module,
    adapter: Adapter,
    cfg: EfficiencyParams,
    *,
    device: torch.device | str | None = None,
    formats: Sequence[str] = ("csr",),
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """FLOPs, weight memory and measured step latency of ``model`` (already pruned: zeros in its
    prunable linears) run densely vs with each sparse format in ``formats``.

    cfg: the efficiency params (token_shapes: (batch, tokens) of the timed denoising steps;
    repeats/warmup: timed rounds and untimed warmup rounds, interleaved dense/sparse; threads:
    torch.set_num_threads during the measurement, restored afterwards; clock: "wall" or
    "process" (see CLOCKS), "process" is refused on a non-CPU device; memory_dtype: the dtype the
    weight memory is reported in, one of accounting.DTYPES); its ``instances`` are not read here.
    model: moved to ``device`` in place when given (default: where its parameters are), eval mode.
    atol/rtol: the sparse-vs-dense logits check; seed: the random token ids and linear inputs.
    Returns a JSON-serialisable dict (see the module docstring).
    """
    shapes = [(int(b), int(t)) for b, t in cfg.token_shapes]
    mem_dtype, device = _checked_settings(model, formats, cfg.memory_dtype, cfg.clock, device)
    model = model.to(device).eval()

    with _num_threads(cfg.threads):
        stats = layer_stats(model, adapter)
        report: dict[str, Any] = {
            "env": environment(device),
            "settings": {
                "token_shapes": [list(s) for s in shapes], "repeats": cfg.repeats, "warmup": cfg.warmup,
                "memory_dtype": cfg.memory_dtype, "formats": list(formats), "atol": atol, "rtol": rtol,
                "seed": seed, "clock": cfg.clock,
                "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            },
            "model": _model_counts(model, adapter, stats),
            "layers": [asdict(s) for s in stats],
            "flops": {shape_key(b, t): flops(stats, b * t) for b, t in shapes},
            "memory": memory(stats, mem_dtype),
            "latency": {},
        }
        sparse_models = {fmt: sparse_copy(model, adapter, fmt) for fmt in formats}
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab = emb.num_embeddings if emb is not None else int(model.config.vocab_size)
        gen = torch.Generator().manual_seed(seed)
        timing: _Timing = functools.partial(
            _time_interleaved, repeats=cfg.repeats, warmup=cfg.warmup, sync=_synchronizer(device),
            clock=CLOCKS[cfg.clock])
        dense_lins = prunable_linears(model, adapter)
        sparse_lins = {fmt: _swapped_layers(m, adapter, dense_lins) for fmt, m in sparse_models.items()}
        for b, t in tqdm(shapes, desc="efficiency: token shapes", disable=None):
            ids = torch.randint(0, vocab, (b, t), generator=gen).to(device)  # (B, T)
            entry = _shape_entry(model, sparse_models, adapter, ids, dense_lins, sparse_lins, timing, gen,
                                 atol, rtol)
            report["latency"][shape_key(b, t)] = entry
            log.info("efficiency %s %dx%d: %s", adapter.key, b, t,
                     {f: round(entry["step"][f"{f}_over_dense"]["ratio_of_medians"], 3) for f in formats})
        report["env"]["loadavg_1m_after"] = environment(device)["loadavg_1m"]
    return report


def _shape_entry(model, sparse_models, adapter, ids: torch.Tensor, dense_lins, sparse_lins, timing: _Timing,
                 gen: torch.Generator, atol: float, rtol: float) -> dict[str, Any]:
    """latency[shape]: sparse-vs-dense logits check, whole-step times, and the prunable linears
    alone on random inputs of their width (drawn from ``gen`` after the ids)."""
    b, t = (int(n) for n in ids.shape)
    device = ids.device
    entry: dict[str, Any] = {"batch": b, "tokens": t}
    entry.update(_sparse_logits_diffs(model, sparse_models, adapter, ids, atol, rtol))
    entry["step"], step_times = _step_latency(model, sparse_models, adapter, ids, timing)
    xs = {name: torch.randn(b * t, lin.in_features, generator=gen).to(device, lin.weight.dtype)
          for name, lin in dense_lins.items()}  # (N, C_in) each
    entry["linears"] = _linears_latency(dense_lins, sparse_lins, xs, timing, step_times["dense"])
    return entry


def _checked_settings(
    model: nn.Module, formats: Sequence[str], memory_dtype: str, clock: str, device: torch.device | str | None,
) -> tuple[torch.dtype, torch.device]:
    """The weight-memory storage dtype and the device of the measurement; raises on a setting out of range."""
    for fmt in formats:
        if fmt not in SPARSE_FORMATS:
            raise ValueError(f"formats entries must be among {sorted(SPARSE_FORMATS)}, got {fmt!r}")
    mem_dtype = storage_dtype(memory_dtype)
    return mem_dtype, _measurement_device(model, clock, device)


def _measurement_device(model: nn.Module, clock: str, device: torch.device | str | None) -> torch.device:
    """``device`` (default: where ``model``'s parameters are); raises on an unknown clock or on the
    "process" clock off the CPU."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    device = torch.device(device) if device is not None else devices.of(model)
    if clock == "process" and device.type != "cpu":
        raise ValueError(f"clock='process' measures CPU time only; use clock='wall' on {device}")
    return device


@contextlib.contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    """torch.set_num_threads(threads) for the block, the previous count restored afterwards."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)


def _model_counts(model: nn.Module, adapter: Adapter, stats: Sequence[Any]) -> dict[str, Any]:
    """The report's "model" entry: parameter counts, nonzeros and sparsity of the prunable linears."""
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(s.numel for s in stats)
    nnz = sum(s.nnz for s in stats)
    return {
        "key": adapter.key,
        "total_params": total,
        "prunable_params": prunable,
        "other_params": total - prunable,
        "prunable_nonzero": nnz,
        "prunable_sparsity": 1.0 - nnz / prunable,
        "keeps_2_of_4": all(s.keeps_2_of_4 for s in stats),
        "n_prunable_linears": len(stats),
    }


# the interleaved-timing protocol of one report: fns -> seconds per call of each (rounds, warmup, sync and clock bound)
_Timing = Callable[[Mapping[str, Callable[[], Any]]], dict[str, list[float]]]


def _sparse_logits_diffs(
    model: nn.Module, sparse_models: Mapping[str, nn.Module], adapter: Adapter, ids: torch.Tensor,
    atol: float, rtol: float,
) -> dict[str, float]:
    """``{fmt}_max_abs_diff`` of each sparse model's logits vs the dense ones on ``ids`` (B, T); raises
    when they are not allclose."""
    b, t = ids.shape
    ref = adapter.logits(model, ids)  # (B, T, V)
    diffs: dict[str, float] = {}
    for fmt, sm in sparse_models.items():
        out = adapter.logits(sm, ids)  # (B, T, V)
        diff = float((out - ref).abs().max())
        ok = bool(torch.allclose(out, ref, atol=atol, rtol=rtol))
        diffs[f"{fmt}_max_abs_diff"] = diff
        if not ok:
            raise RuntimeError(
                f"{fmt} model logits differ from the dense model at {b}x{t}: max |diff| = "
                f"{diff:.3g} (atol={atol}, rtol={rtol}); refusing to time a wrong computation"
            )
    return diffs


def _step_latency(
    model: nn.Module, sparse_models: Mapping[str, nn.Module], adapter: Adapter, ids: torch.Tensor, timing: _Timing,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The "step" entry of one shape (one full denoising step: the model forward over B x T tokens) and
    its raw times."""
    b, t = ids.shape
    step = {"dense": lambda: adapter.logits(model, ids)}
    step.update({fmt: (lambda sm=sm: adapter.logits(sm, ids)) for fmt, sm in sparse_models.items()})
    times = timing(step)
    entry: dict[str, Any] = {name: _summary(ts) for name, ts in times.items()}
    entry["throughput_tokens_per_s"] = {name: b * t / statistics.median(ts) for name, ts in times.items()}
    for fmt in sparse_models:
        entry[f"{fmt}_over_dense"] = _compare(times, "dense", fmt)
    return entry, times


def _linears_latency(
    dense_lins: Mapping[str, nn.Module], sparse_lins: Mapping[str, Mapping[str, nn.Module]],
    xs: Mapping[str, torch.Tensor], timing: _Timing, dense_step_times: Sequence[float],
) -> dict[str, Any]:
    """The "linears" entry of one shape: the prunable linears alone on the inputs ``xs`` (N, C_in) each."""
    lin_fns = {"dense": lambda: [lin(xs[n]) for n, lin in dense_lins.items()]}
    lin_fns.update({fmt: (lambda L=L: [lin(xs[n]) for n, lin in L.items()]) for fmt, L in sparse_lins.items()})
    ltimes = timing(lin_fns)
    entry: dict[str, Any] = {name: _summary(ts) for name, ts in ltimes.items()}
    for fmt in sparse_lins:
        entry[f"{fmt}_over_dense"] = _compare(ltimes, "dense", fmt)
    entry["dense_share_of_step"] = statistics.median(ltimes["dense"]) / statistics.median(dense_step_times)
    return entry


def _swapped_layers(model: nn.Module, adapter: Adapter, names: Iterable[str]) -> dict[str, nn.Module]:
    """The modules of a sparse copy at the dense model's prunable names ("blocks.<i>.<name>")."""
    blocks = adapter.blocks(model)
    out: dict[str, nn.Module] = {}
    for full in names:
        _, i, name = full.split(".", 2)
        out[full] = blocks[int(i)].get_submodule(name)
    return out

