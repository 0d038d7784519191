"""Inputs written under the params in use, or a refusal naming those that were not.

Every stage records in its metrics file the params it was run with (``provenance.params``, the
sections its dvc.yaml stage lists under ``params:``; the prune metrics also as ``spec``). An
aggregating stage (plot) reads the metrics of many runs; after a params change and a partial
rerun (e.g. one instance through ``python -m srclib.run``) some of them may come from the old
params, and a table would silently compare two settings. ``check_inputs`` compares, for every
metrics file plot reads, what the file records with what the params in use give, and raises
``StaleInputs`` naming each stale file, the first setting that differs (recorded vs now) and the
command that refreshes it.

A file records sections ``{"<section>": value}`` (e.g. ``"evaluate"``, ``"models.tiny-dlm"``,
``"prune.instances.<name>"``). Each section the params give for the file is compared with the
file's, when the file records it; the file's primary section (its stage's own settings) must be
recorded. Files written by srclib before the sections existed: the evaluate metrics' flat
``provenance.params`` is read as its ``evaluate`` section. A file with no ``provenance`` at all
(hand-made fixtures, not a stage's output) is not checked; it is logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from srclib import paths
from srclib.files import read_json
from srclib.params import EvaluateParams
from srclib.schema import as_dict

__all__ = ["StaleInputs", "Stale", "differences", "evaluate_sections", "variance_sections", "prune_sections",
           "stale_inputs", "check_inputs"]

log = logging.getLogger(__name__)


class StaleInputs(ValueError):
    """Metrics files written under other params than those in use (see ``Stale``)."""

    def __init__(self, stale: list["Stale"]):
        self.stale = stale
        lines = [f"{len(stale)} input(s) were written under other params than those in use; rerun them "
                 f"(or restore the params they were run with):"]
        lines += [f"- {s}" for s in stale]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Stale:
    """One stale file: where, the first differing setting, its recorded and current values, the fix."""

    file: str
    setting: str
    recorded: Any
    current: Any
    rerun: str

    def __str__(self) -> str:
        if self.recorded is _ABSENT:
            what = f"records no {self.setting!r} (written by an older srclib)"
        else:
            what = f"{self.setting} = {_short(self.recorded)} when it was written, {_short(self.current)} now"
        return f"{self.file}: {what}; rerun: {self.rerun}"


_ABSENT = object()


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, so a dataclass field and its JSON record compare equal."""
    return json.loads(json.dumps(as_dict(value), sort_keys=True))


def differences(recorded: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Every (dotted setting, recorded value, current value) that differs, depth first in key order;
    a key missing on one side differs with ``None`` there."""
    recorded, current = _plain(recorded), _plain(current)
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(recorded) | set(current)):
            out += differences(recorded.get(key), current.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if recorded == current else [(prefix, recorded, current)]


def evaluate_sections(P, instance: str) -> dict[str, Any]:
    """What an evaluation of ``instance`` depends on: the evaluate settings it reads, its model's
    entry and, for a prune instance, the spec its checkpoint was pruned with."""
    model = P.prune.instances[instance].model if instance in P.prune.instances else instance
    out = {"evaluate": P.evaluate.read_by_an_evaluation(), f"models.{model}": as_dict(P.models[model])}
    if instance in P.prune.instances:
        out[f"prune.instances.{instance}"] = P.prune.spec(instance).to_dict()
    return out


def prune_sections(P, instance: str) -> dict[str, Any]:
    """What a prune run of ``instance`` depends on: its spec (with every prune setting it reads)."""
    return {f"prune.instances.{instance}": P.prune.spec(instance).to_dict()}


def variance_sections(P) -> dict[str, Any]:
    """What the variance stage depends on: its sink rule and the runs collect names."""
    return {"variance": as_dict(P.variance), "collect.models": list(P.collect.models),
            "collect.random_init_control": P.collect.random_init_control}


def _recorded(doc: Mapping[str, Any], kind: str, instance: str | None) -> dict[str, Any] | None:
    """The sections a metrics file records (module docstring); None without provenance."""
    prov = doc.get("provenance")
    if not isinstance(prov, Mapping):
        return None
    rec = dict(prov.get("params") or {})
    if kind == "evaluate" and rec and "evaluate" not in rec:  # older files: the evaluate section, flat
        rec = {"evaluate": {k: rec[k] for k in EvaluateParams.READ_BY_AN_EVALUATION if k in rec}}
    if kind == "prune" and "spec" in doc:
        rec.setdefault(f"prune.instances.{instance}", doc["spec"])
    return rec


def _check(doc: Mapping[str, Any], where: str, kind: str, expected: Mapping[str, Any], primary: str,
           rerun: str, instance: str | None = None) -> Stale | None:
    rec = _recorded(doc, kind, instance)
    if rec is None:
        log.warning("%s records no provenance: not checked against the params in use", where)
        return None
    if primary not in rec:
        return Stale(where, primary, _ABSENT, None, rerun)
    for section, value in expected.items():
        if section not in rec:
            continue
        diff = differences(rec[section], value, section)
        if diff:
            return Stale(where, *diff[0], rerun)
    return None


def stale_inputs(P, root: str | Path | None = None) -> list[Stale]:
    """Every metrics file the plot stage reads that was written under other params (module
    docstring): metrics/evaluate/<instance>.json, metrics/prune/<instance>.json,
    metrics/variance.json, and when present metrics/train/<key>.json and metrics/efficiency.json.
    Missing files are not this function's business (the loaders name them)."""
    out: list[Stale] = []

    def check(path: Path, kind: str, expected, primary, rerun, instance=None) -> None:
        if path.is_file():
            s = _check(read_json(path), paths.rel(path, root), kind, expected, primary, rerun, instance)
            if s is not None:
                out.append(s)

    for name in [*P.evaluate.dense, *P.prune.instances]:
        check(paths.eval_metrics(name, root), "evaluate", evaluate_sections(P, name), "evaluate",
              f"dvc repro evaluate@{name}" if name in P.prune.instances else f"dvc repro evaluate_dense@{name}")
    for name in P.prune.instances:
        check(paths.prune_metrics(name, root), "prune", prune_sections(P, name), f"prune.instances.{name}",
              f"dvc repro prune@{name}", instance=name)
    check(paths.variance_metrics(root), "variance", variance_sections(P), "variance", "dvc repro variance")
    for key in P.models:
        check(paths.train_metrics(key, root), "train", {"train": as_dict(P.train)}, "train", "dvc repro train")
    check(paths.efficiency_metrics(root), "efficiency", {"efficiency": as_dict(P.efficiency)}, "efficiency",
          "dvc repro efficiency")
    return out


def check_inputs(P, root: str | Path | None = None) -> None:
    """Raise ``StaleInputs`` naming every stale input (``stale_inputs``); return when none is."""
    stale = stale_inputs(P, root)
    if stale:
        raise StaleInputs(stale)
