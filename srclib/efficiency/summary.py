"""Flat table rows of efficiency reports (what the notebook and the report show)."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["report_rows"]


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
