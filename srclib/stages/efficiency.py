"""The efficiency stage: FLOPs, weight memory and measured latency of pruned checkpoints.

Loads ``pruned/<instance>`` for every instance of ``cfg.instances``, builds its report
(srclib.efficiency.timing.efficiency_report with ``cfg``) and writes ONE metrics JSON atomically,
``metrics/efficiency.json`` = ``{"instances": {name: report}}``; a missing checkpoint folder fails
before anything is measured or written.  Latencies vary run to run: this is the one metrics file
that is not byte-stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from srclib import paths
from srclib.efficiency.summary import report_rows
from srclib.efficiency.timing import efficiency_report
from srclib.files import write_json
from srclib.models import load
from srclib.params import EfficiencyParams

__all__ = ["EfficiencyResult", "run"]


@dataclass
class EfficiencyResult:
    """table: one row per instance x token shape x sparse format (report_rows); metrics: what
    metrics/efficiency.json holds; interpretation: markdown written from the metrics."""

    table: pd.DataFrame
    metrics: dict[str, Any]
    interpretation: str


def run(cfg: EfficiencyParams, root: Path | None = None) -> EfficiencyResult:
    """Measure every instance of ``cfg.instances``; see the module docstring."""
    folders = {name: paths.pruned_dir(name, root) for name in cfg.instances}
    missing = {n: str(p) for n, p in folders.items() if not p.is_dir()}
    if missing:
        raise FileNotFoundError(f"checkpoint folders not found for instances: {missing}")
    reports: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name, folder in folders.items():
        model, _tok, adapter = load(folder)
        rep = efficiency_report(model, adapter, cfg)
        rep["checkpoint"] = paths.rel(folder, root)
        reports[name] = rep
        rows.extend(report_rows(name, rep))
        del model
    metrics = {"instances": reports}
    write_json(paths.efficiency_metrics(root), metrics)
    return EfficiencyResult(table=pd.DataFrame(rows), metrics=metrics, interpretation=interpretation(metrics))


def interpretation(metrics: Mapping[str, Any]) -> str:
    """Markdown (metrics with at least one instance): per instance, the theoretical savings beside the measured step-time ratio
    (medians over the timed rounds, quartiles in brackets)."""
    lines = []
    for name, rep in metrics["instances"].items():
        mem, model = rep["memory"], rep["model"]
        two_four = (f"{mem['semi_structured_2to4_ratio']:.3f}" if mem["semi_structured_2to4_ratio"] is not None
                    else "n/a")
        lines.append(
            f"- **{name}**: prunable sparsity {model['prunable_sparsity']:.3f}; weight memory vs dense "
            f"({mem['dtype']}): CSR int32 {mem['csr_int32_ratio']:.3f}, CSR int64 {mem['csr_int64_ratio']:.3f}, "
            f"2:4 {two_four}."
        )
        for key, lat in rep["latency"].items():
            dense = lat["step"]["dense"]
            for fmt in rep["settings"]["formats"]:
                sparse, cmp = lat["step"][fmt], lat["step"][f"{fmt}_over_dense"]
                lines.append(
                    f"  - {key}: FLOPs x{rep['flops'][key]['ratio']:.3f} of dense; measured step time dense "
                    f"{_ms(dense)}, {fmt} {_ms(sparse)}: {fmt}/dense {cmp['ratio_of_medians']:.2f} "
                    f"(median of per-round ratios {cmp['median_of_round_ratios']:.2f}), "
                    f"{'slower' if cmp['ratio_of_medians'] > 1 else 'faster'} than dense."
                )
    first = next(iter(metrics["instances"].values()))
    lines += ["", f"Measured with the {first['settings']['clock']} clock on {first['env']['device_description']}, "
              f"{first['env']['threads']} thread(s); a ratio above 1 means the sparse format is slower."]
    return "\n".join(lines)

def _ms(summary: Mapping[str, Any]) -> str:
    """"median ms [p25, p75]" of a timing summary."""
    return f"{1e3 * summary['median_s']:.1f} ms [{1e3 * summary['p25_s']:.1f}, {1e3 * summary['p75_s']:.1f}]"
