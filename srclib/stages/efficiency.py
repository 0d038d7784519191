"""The efficiency stage: FLOPs, weight memory and measured latency of pruned checkpoints.

``run(P)`` (no instances) is :func:`measure` with params ``P.efficiency`` (``cfg`` below).
Loads ``pruned/<instance>`` for every instance of ``cfg.instances`` and builds its report with
``cfg``:

* an unstructured checkpoint (zeros in its prunable linears; marker without "structure"):
  srclib.efficiency.timing.efficiency_report, the model run densely vs the sparse (CSR) format;
* a structured checkpoint (its marker has a "structure" record, form "compact"): the compact
  model (``load(folder)``) vs the dense model it was pruned from (``load(marker["key"])``, loaded
  once per key and shared by the instances of that key), srclib.efficiency.structured.
  structured_report: FLOPs of a full forward, measured speedup beside the FLOP-proportional ideal.
  A "masked" structured checkpoint (same shapes as dense, zeros) has no compact execution and is
  refused with ValueError.

Writes ONE metrics JSON atomically, ``metrics/efficiency.json`` = ``{"instances": {name: report}}``
(each report has ``checkpoint``; structured ones also the marker's ``structure`` record); a
missing checkpoint folder fails before anything is measured or written.  Latencies vary run to
run: this is the one metrics file that is not byte-stable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from srclib import paths
from srclib.efficiency.structured import structured_report
from srclib.efficiency.summary import report_rows
from srclib.efficiency.timing import efficiency_report
from srclib.files import write_json
from srclib.models import load
from srclib.models.base import read_marker
from srclib.params import EfficiencyParams, Params, as_dict, refuse_instance
from srclib.provenance import provenance

__all__ = ["EfficiencyResult", "run", "measure"]

log = logging.getLogger(__name__)


@dataclass
class EfficiencyResult:
    """table: one row per instance x token shape x format (report_rows); metrics: what
    metrics/efficiency.json holds; interpretation: markdown written from the metrics."""

    table: pd.DataFrame
    metrics: dict[str, Any]
    interpretation: str


def run(P: Params, instance: str | None = None, root: Path | None = None) -> EfficiencyResult:
    """The efficiency stage (no instances): :func:`measure` with params ``P.efficiency``."""
    refuse_instance("efficiency", instance)
    return measure(P.efficiency, root=root)


def measure(cfg: EfficiencyParams, root: Path | None = None) -> EfficiencyResult:
    """Measure every instance of ``cfg.instances``; see the module docstring."""
    folders = {name: paths.pruned_dir(name, root) for name in cfg.instances}
    missing = {n: str(p) for n, p in folders.items() if not p.is_dir()}
    if missing:
        raise FileNotFoundError(f"checkpoint folders not found for instances: {missing}")
    markers = {name: read_marker(folder) for name, folder in folders.items()}
    for name, marker in markers.items():
        form = marker.get("structure", {}).get("form", "compact")
        if form != "compact":
            raise ValueError(f"instance {name!r}: structured checkpoint of form {form!r}; the efficiency stage "
                             "times only form 'compact' (a masked model has the dense shapes)")
    reports: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    dense_models: dict[str, Any] = {}  # dense model per registry key, shared by structured instances
    for name, folder in folders.items():
        marker = markers[name]
        model, _tok, adapter = load(folder)
        if "structure" in marker:
            key = marker["key"]
            if key not in dense_models:
                log.info("efficiency: loading dense %s for structured instances", key)
                dense_models[key] = load(key)[0]
            rep = structured_report(model, dense_models[key], adapter, cfg.for_model(adapter.key))
            rep["structure"] = marker["structure"]
        else:
            rep = efficiency_report(model, adapter, cfg.for_model(adapter.key))
        rep["checkpoint"] = paths.rel(folder, root)
        reports[name] = rep
        rows.extend(report_rows(name, rep))
        del model
    metrics = {"instances": reports, "provenance": provenance(params={"efficiency": as_dict(cfg)})}
    write_json(paths.efficiency_metrics(root), metrics)
    return EfficiencyResult(table=pd.DataFrame(rows), metrics=metrics, interpretation=interpretation(metrics))


def interpretation(metrics: Mapping[str, Any]) -> str:
    """Markdown (metrics with at least one instance): per instance, the theoretical savings beside
    the measured step-time ratio (medians over the timed rounds, quartiles in brackets); for
    structured instances the measured speedup beside the FLOP-proportional ideal per shape."""
    lines = []
    for name, rep in metrics["instances"].items():
        if rep.get("kind") == "structured":
            lines += _structured_lines(name, rep)
            continue
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
    reps = list(metrics["instances"].values())
    first = reps[0]
    note = []
    if any(r.get("kind") != "structured" for r in reps):
        note.append("a sparse/dense ratio above 1 means the sparse format is slower")
    if any(r.get("kind") == "structured" for r in reps):
        note.append("a speedup is dense time / compact time (above 1: faster than dense), the ideal is "
                    "dense FLOPs / compact FLOPs of a full forward")
    lines += ["", f"Measured with the {first['settings']['clock']} clock on {first['env']['device_description']}, "
              f"{first['env']['threads']} thread(s); " + "; ".join(note) + "."]
    return "\n".join(lines)


def _structured_lines(name: str, rep: Mapping[str, Any]) -> list[str]:
    mem, model = rep["memory"], rep["model"]
    lines = [
        f"- **{name}** (structured, compact): removed {model['removed_share']:.3f} of the block linear "
        f"parameters; weight memory vs dense ({mem['dtype']}): block linears {mem['ratio']:.3f}, "
        f"whole model {mem['model_ratio']:.3f}."
    ]
    for key, lat in rep["latency"].items():
        step, sp = lat["step"], lat["speedup"]
        lines.append(
            f"  - {key}: FLOPs x{rep['flops'][key]['ratio']:.3f} of dense; step time dense {_ms(step['dense'])}, "
            f"compact {_ms(step['compact'])}: speedup x{sp['measured']:.2f} measured vs x{sp['ideal']:.2f} ideal "
            f"({sp['measured_over_ideal']:.2f} of ideal)."
        )
    return lines


def _ms(summary: Mapping[str, Any]) -> str:
    """"median ms [p25, p75]" of a timing summary."""
    return f"{1e3 * summary['median_s']:.1f} ms [{1e3 * summary['p25_s']:.1f}, {1e3 * summary['p75_s']:.1f}]"
