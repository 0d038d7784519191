"""The evaluate stage: one model instance (a pruned folder or a dense model key) on lm-eval's tasks
and on held-out perplexity, written as a deterministic DVC metrics JSON (no wall-clock times:
byte-identical across runs), ``metrics/evaluate/<instance>.json``.

``run(P, instance)`` is :func:`evaluate_source` with params ``P.evaluate``, the source
``P.eval_source(instance)`` and the ``models:`` entry ``P.model_entry(instance)``."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from srclib import devices, paths
from srclib.data.corpus import read_texts
from srclib.evaluation.common import (CheckpointError, check_finite_weights, check_pruned_folder,
                                     sampler_record)
from srclib.evaluation.harness import evaluate_lm, make_lm, task_record
from srclib.evaluation.perplexity import heldout_perplexity
from srclib.files import atomic_outputs, sha256_file, write_json
from srclib.params import EvaluateParams, ModelEntry, Params, as_dict, require_instance
from srclib.provenance import git_commit, git_state, versions

__all__ = ["run", "evaluate_source", "EvaluateResult", "split_units", "check_instance"]


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, Any]  # what metrics/evaluate/<instance>.json holds
    table: Any  # pandas.DataFrame: task, metric, value, stderr, n, num_fewshot, split, group
    interpretation: str  # markdown: this instance's measured scores and perplexity


def run(P: Params, instance: str | None = None, root: str | os.PathLike | None = None) -> EvaluateResult:
    """The evaluate stage: :func:`evaluate_source` of ``instance`` (a prune instance: its folder
    pruned/<instance> under ``root``; a key of evaluate.dense: that model) with params ``P.evaluate``
    and the instance's ``models:`` entry."""
    instance = require_instance("evaluate", instance)
    source = P.eval_source(instance, root=None if root is None else Path(root))
    return evaluate_source(P.evaluate, instance, source, P.model_entry(instance), root=root)


def evaluate_source(cfg: EvaluateParams, instance: str, source: str | os.PathLike, model: ModelEntry,
                    root: str | os.PathLike | None = None) -> EvaluateResult:
    """Evaluate ``instance``, loaded from ``source`` with ``model``'s dtype and device (params.yaml
    ``models:`` entry; device "auto" = CUDA when available): lm-eval tasks (``cfg.tasks``) on the
    offline task data, held-out perplexity (``cfg.ppl``) on the validation corpus.

    Writes ``metrics/evaluate/<instance>.json`` with ``tasks`` ({task: {metrics, stderr, version,
    n_shot, n_samples, eval_split, settings}}), ``ppl`` (srclib.evaluation.perplexity; None when
    ``cfg.ppl`` is None) and ``provenance`` (git commit, package versions, checkpoint sha256,
    params, lm-eval task versions).

    Refused before anything is written (CheckpointError / DataError naming the folder or file): a
    folder whose marker names another instance (:func:`check_instance`), task data or a validation
    corpus that differs from data/raw's MANIFEST.json, NaN / Inf weights (the first such tensor), a
    pruned folder whose weights are not zero where its masks say pruned (the first such tensor),
    non-finite log-likelihoods or perplexities.
    """
    from srclib.models import register

    root = Path(root) if root is not None else paths.ROOT
    folder = Path(source) if Path(source).is_dir() else None
    if "/" not in str(source) and folder is None:  # a dense model key, not a folder:
        register({str(source): model})  # its params definition (a folder's marker names its own)
    if folder is not None:
        check_instance(folder, instance)
    data_root, corpus = _check_data(cfg, root)
    torch.manual_seed(cfg.seed)
    device = devices.resolve(model.device)
    lm_model, tok, adapter = _load_checked(source, folder, model, device)
    lm = make_lm(lm_model, tok, adapter, batch_size=cfg.batch_size, seed=cfg.seed, sampler=cfg.sampler,
                 device=device)
    task_res = evaluate_lm(lm, cfg.tasks, seed=cfg.seed, data_root=data_root) if cfg.tasks else {}
    ppl_res = None
    if cfg.ppl is not None:
        ppl_res = heldout_perplexity(lm_model, tok, adapter, read_texts(corpus, what="validation corpus"),
                                     cfg.ppl, seed=cfg.seed, batch_size=cfg.batch_size, source=str(source))
    task_res, ppl_res, units = split_units(instance, task_res, ppl_res, source)
    metrics = {
        "instance": instance,
        "model": {"key": adapter.key, "causal": bool(adapter.causal), "shift": bool(adapter.shift),
                  "lm": "hf" if adapter.causal else "srclib-dlm",
                  "likelihood": "exact" if adapter.causal else "mc-elbo"},
        "tasks": task_res,
        "ppl": ppl_res,
        "provenance": _provenance(cfg, source, adapter, model, folder, task_res, data_root, corpus, root),
    }
    units["provenance"] = {"params": metrics["provenance"]["params"],
                           "checkpoint": metrics["provenance"]["checkpoint"]}
    with atomic_outputs() as out:  # the two files are committed together, after every step that can fail
        write_json(out.file(paths.eval_units(instance, root)), units)
        write_json(out.file(paths.eval_metrics(instance, root)), metrics)
    return EvaluateResult(metrics, _table(task_res, ppl_res), interpretation(metrics, list(cfg.tasks)))


def _check_data(cfg: EvaluateParams, root: Path) -> tuple[Path, Path]:
    """(task data root, validation corpus), checked against the manifest before the model loads and
    minutes of lm-eval, not after (each file hashed once per process: the harness's own build of
    the task configs reuses the result)."""
    from srclib.data.manifest import check_raw_file
    from srclib.evaluation.tasks import build_task_configs

    data_root, corpus = paths.tasks_dir(root), paths.corpus_file("validation", root)
    if cfg.tasks:
        build_task_configs(list(cfg.tasks), data_root)
    if cfg.ppl is not None:
        check_raw_file(corpus)
    return data_root, corpus


def _load_checked(source: str | os.PathLike, folder: Path | None, model: ModelEntry, device):
    """(model, tokenizer, adapter) of ``source``: finite weights, and a pruned folder's weights zero
    where its masks say so; a checkpoint without a tokenizer is refused."""
    from srclib.models import load

    lm_model, tok, adapter = load(str(source), dtype=model.dtype, device=device)
    if folder is not None:
        check_pruned_folder(lm_model, folder, str(source))
    else:
        check_finite_weights(lm_model, str(source))
    if tok is None:
        raise ValueError(f"{source}: the checkpoint has no tokenizer")
    return lm_model, tok, adapter


def _provenance(cfg: EvaluateParams, source, adapter, model: ModelEntry, folder: Path | None,
                task_res: dict[str, Any], data_root: Path, corpus: Path, root: Path) -> dict[str, Any]:
    """What the evaluation ran on and with: code, packages, checkpoint, data, settings, params."""
    return {
        "git_commit": git_commit(root),
        "git": git_state(root),  # dirty flag and hash of the uncommitted difference
        "versions": versions(),
        "checkpoint": _checkpoint(source, adapter, root),
        "task_versions": {k: v["version"] for k, v in sorted(task_res.items())},
        "data_root": paths.rel(data_root, root),
        "corpus_validation_file": paths.rel(corpus, root),
        "settings": {
            "batch_size": cfg.batch_size, "seed": cfg.seed,
            "gen": sampler_record(cfg.sampler),
            "tasks": {k: task_record(v) for k, v in cfg.tasks.items()},
            "ppl": dataclasses.asdict(cfg.ppl) if cfg.ppl is not None else None,
        },
        # the params this evaluation read, by params.yaml section (srclib.report.freshness checks
        # them against the params in use before a table compares this file with others)
        "params": _params_record(cfg, adapter.key, model, folder),
    }


def _params_record(cfg: EvaluateParams, key: str, model: ModelEntry, folder: Path | None) -> dict[str, Any]:
    """``provenance.params``: the evaluate settings an evaluation reads, the model's entry and, for
    a pruned folder, the spec its marker says it was pruned with (``prune.instances.<instance>``)."""
    from srclib.models.base import read_marker

    out: dict[str, Any] = {"evaluate": cfg.read_by_an_evaluation(), f"models.{key}": as_dict(model)}
    if folder is not None:
        info = read_marker(folder)
        if info.get("pruned") is not None and info.get("instance"):
            out[f"prune.instances.{info['instance']}"] = info["pruned"]
    return out


def check_instance(folder: str | os.PathLike, instance: str) -> None:
    """Refuse a pruned folder whose marker (written by prune, ``instance``) names another instance
    than the one being evaluated: a folder copied over another would otherwise be scored under the
    wrong name. A folder whose marker records no pruning (a dense checkpoint) is not an instance's."""
    from srclib.models.base import MARKER, read_marker

    folder = Path(folder)
    info = read_marker(folder)
    if "pruned" not in info and "instance" not in info:
        return
    named = info.get("instance")
    if named != instance:
        raise CheckpointError(
            f"{folder}: evaluating instance {instance!r}, but its marker {folder / MARKER} names instance "
            f"{named!r} (a folder copied over another?); rebuild it: dvc repro prune@{instance}")


def split_units(instance: str, tasks: Mapping[str, Any], ppl: Mapping[str, Any] | None,
                source: str | os.PathLike = "") -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Move the unit-level values out of the task and perplexity records (DVC metrics stay scalar).

    Returns (tasks without ``items``, ppl without its per-window lists, units) with units =
    {"instance", "tasks": {task: {"doc_id": [...], metric: [per item], "chance": accuracy of a random
    guess (srclib.evaluation.tasks.CHANCE; None when unknown)}}, "ppl": {"kind",
    "window_nll_per_token": [...], "window_tokens": [...]} | None}: metrics/units/evaluate/<instance>.json.
    Raises ValueError naming the checkpoint when a perplexity or a log-likelihood-based score is not
    finite (NaN weights give NaN logits: never a number in a report).
    """
    import math

    from srclib.evaluation.tasks import CHANCE

    tasks_out = {k: {kk: vv for kk, vv in v.items() if kk != "items"} for k, v in tasks.items()}
    # per item values with the task's chance accuracy (srclib.report.inference tests the dense model against it)
    items = {k: {**v["items"], "chance": CHANCE.get(k)} for k, v in tasks.items() if "items" in v}
    ppl_out, ppl_units = None, None
    if ppl is not None:
        per = list(ppl.get("window_nll_per_token", []))
        bad = [i for i, x in enumerate(per) if not math.isfinite(x)]
        if bad or not math.isfinite(float(ppl["ppl"])):
            raise ValueError(f"{source or instance}: held-out NLL is not finite in window(s) {bad[:5]} "
                             "(NaN / Inf weights or logits?)")
        ppl_out = {k: v for k, v in ppl.items() if k not in ("window_nll_per_token", "window_tokens")}
        ppl_units = {"kind": ppl["kind"], "window_nll_per_token": per,
                     "window_tokens": list(ppl.get("window_tokens", []))}
    return tasks_out, ppl_out, {"instance": instance, "tasks": items, "ppl": ppl_units}


def _checkpoint(source: str | os.PathLike, adapter, root: Path) -> dict[str, Any]:
    """Key, source (repo-relative), revision and safetensors sha256 of what was evaluated."""
    src = Path(source)
    folder = src if src.is_dir() else None
    if folder is None and adapter.source and (root / adapter.source).is_dir():
        folder = root / adapter.source
    info: dict[str, Any] = {"key": adapter.key, "source": paths.rel(folder, root) if folder else str(source),
                            "revision": adapter.revision}
    if folder is not None:
        info["sha256"] = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    return info


def _table(tasks: Mapping[str, Mapping[str, Any]], ppl: Mapping[str, Any] | None):
    import pandas as pd

    rows = []
    for name, t in tasks.items():
        for metric, value in t["metrics"].items():
            rows.append({"task": name, "metric": metric, "value": value,
                         "stderr": t["stderr"].get(metric), "n": t.get("n_samples"),
                         "num_fewshot": t.get("n_shot"), "split": t.get("eval_split"),
                         "group": t.get("is_group", False)})
    if ppl is not None:
        rows.append({"task": "heldout", "metric": f"ppl ({ppl['kind']})", "value": ppl["ppl"],
                     "stderr": None, "n": ppl["n_windows"], "num_fewshot": None,
                     "split": "corpus/validation", "group": False})
    return pd.DataFrame(rows)


def _score(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} ± {stderr:.3f}" if stderr is not None else f"{value:.3f} (no stderr)"


def interpretation(metrics: Mapping[str, Any], tasks: list[str]) -> str:
    """Markdown stating this instance's measured scores (± lm-eval's stderr) on the requested
    tasks and its held-out perplexity, read from the metrics just written."""
    m = metrics["model"]
    how = "exact log-likelihoods" if m["causal"] else "MC-ELBO log-likelihoods"
    lines = [f"**{metrics['instance']}** (model `{m['key']}`, lm-eval model `{m['lm']}`, {how}):", ""]
    for name in tasks:
        t = metrics["tasks"][name]
        shots = f"{t['n_shot']}-shot" if t.get("n_shot") is not None else "shots n/a"
        scores = ", ".join(f"{k} {_score(v, t['stderr'].get(k))}" for k, v in t["metrics"].items())
        lines.append(f"- {name} (n={t.get('n_samples')}, {shots}, split {t.get('eval_split')}): "
                     f"{scores or 'no metrics'}")
    p = metrics["ppl"]
    if p is not None:
        kind = ("ELBO perplexity (an upper bound, %d MC samples per window)" % p["mc_num"]
                if p["kind"] == "elbo" else "perplexity (exact)")
        lines.append(f"- held-out {kind}: {p['ppl']:.2f} (NLL {p['nll_per_token']:.3f} per token "
                     f"over {p['n_tokens']} tokens in {p['n_windows']} windows of {p['seq_len']})")
    if len(lines) == 2:
        lines.append("- no tasks and no perplexity were requested")
    return "\n".join(lines)
