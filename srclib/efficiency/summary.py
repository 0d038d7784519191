"""Flat table rows of efficiency reports (what the notebook and the report show).

Both kinds of report flatten to the same columns: "unstructured" (timing.efficiency_report: a
zeroed model run densely vs a sparse format) and "structured" (structured.structured_report: the
compact model vs the dense one it was pruned from, format "compact").  A column that does not
apply to a kind is NaN.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["report_rows"]

NAN = math.nan


def report_rows(name: str, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat table rows (one per token shape and format) from one report of either kind.

    step_sparse_over_dense: median step time of the sparse/compact model over the dense one's
    (> 1: slower); measured_speedup = 1 / step_sparse_over_dense; ideal_speedup (structured only):
    dense FLOPs / compact FLOPs of a full forward; measured_over_ideal = their ratio.
    """
    if report.get("kind", "unstructured") == "structured":
        return _structured_rows(name, report)
    rows = []
    mem = report["memory"]
    for key, lat in report["latency"].items():
        for fmt in report["settings"]["formats"]:
            ratio = lat["step"][f"{fmt}_over_dense"]["ratio_of_medians"]
            rows.append({
                "instance": name,
                "kind": "unstructured",
                "shape": key,
                "format": fmt,
                "sparsity": report["model"]["prunable_sparsity"],
                "keeps_2_of_4": report["model"]["keeps_2_of_4"],
                "flops_ratio": report["flops"][key]["ratio"],
                "mem_csr_int32_ratio": mem["csr_int32_ratio"],
                "mem_csr_int64_ratio": mem["csr_int64_ratio"],
                "mem_2to4_ratio": mem["semi_structured_2to4_ratio"],
                "mem_compact_ratio": NAN,
                "dense_step_ms": 1e3 * lat["step"]["dense"]["median_s"],
                "sparse_step_ms": 1e3 * lat["step"][fmt]["median_s"],
                "step_sparse_over_dense": ratio,
                "linears_sparse_over_dense": lat["linears"][f"{fmt}_over_dense"]["ratio_of_medians"],
                "dense_tokens_per_s": lat["step"]["throughput_tokens_per_s"]["dense"],
                "sparse_tokens_per_s": lat["step"]["throughput_tokens_per_s"][fmt],
                "ideal_speedup": NAN,
                "measured_speedup": 1.0 / ratio,
                "measured_over_ideal": NAN,
            })
    return rows


def _structured_rows(name: str, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    mem, model = report["memory"], report["model"]
    for key, lat in report["latency"].items():
        step, speed = lat["step"], lat["speedup"]
        ratio = step["compact_over_dense"]["ratio_of_medians"]
        rows.append({
            "instance": name,
            "kind": "structured",
            "shape": key,
            "format": "compact",
            "sparsity": model["prunable_sparsity"],
            "keeps_2_of_4": model.get("keeps_2_of_4", NAN),
            "flops_ratio": report["flops"][key]["ratio"],
            "mem_csr_int32_ratio": mem.get("csr_int32_ratio", NAN),
            "mem_csr_int64_ratio": mem.get("csr_int64_ratio", NAN),
            "mem_2to4_ratio": mem.get("semi_structured_2to4_ratio", NAN),
            "mem_compact_ratio": mem.get("ratio", NAN),
            "dense_step_ms": 1e3 * step["dense"]["median_s"],
            "sparse_step_ms": 1e3 * step["compact"]["median_s"],
            "step_sparse_over_dense": ratio,
            "linears_sparse_over_dense": NAN,  # the structured report times whole steps only
            "dense_tokens_per_s": step["throughput_tokens_per_s"]["dense"],
            "sparse_tokens_per_s": step["throughput_tokens_per_s"]["compact"],
            "ideal_speedup": speed["ideal"],
            "measured_speedup": 1.0 / ratio,
            "measured_over_ideal": speed["measured_over_ideal"],
        })
    return rows
