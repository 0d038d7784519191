"""Running lm-eval: the LM for a loaded model (chosen by ``adapter.causal``), one
``lm_eval.simple_evaluate`` per task with that task's settings (params.TaskSettings), and lm-eval's
results parsed into {task: {metrics, stderr, version, n_shot, n_samples, ...}}."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from lm_eval.api.model import LM

from srclib.evaluation.ar import ar_lm
from srclib.evaluation.common import SEED, default_sampler
from srclib.evaluation.lm import dlm_lm
from srclib.evaluation.tasks import offline_task_manager
from srclib.params import SamplerParams, TaskSettings

__all__ = ["LM_FACTORIES", "MC_BATCH", "make_lm", "parse_results", "item_values", "task_record", "evaluate_lm",
           "evaluate"]

log = logging.getLogger(__name__)

# adapter.causal -> LM builder: False = masked diffusion (MC-ELBO), True = lm-eval's HFLM
LM_FACTORIES: dict[bool, Callable[..., LM]] = {False: dlm_lm, True: ar_lm}

# The MC-ELBO's stratification group (LLaDA's batch_size) of every task: None = mc_num.
MC_BATCH = None


def make_lm(model, tokenizer, adapter, *, batch_size: int = 32, seed: int = SEED,
            sampler: SamplerParams | None = None, device=None) -> LM:
    """The lm-eval LM for a loaded model, chosen by ``adapter.causal`` (:data:`LM_FACTORIES`);
    ``sampler`` (generation tasks): params.yaml's evaluate.sampler when not given."""
    sampler = default_sampler() if sampler is None else sampler
    if tokenizer is None:
        raise ValueError(f"model {adapter.key!r} was loaded without a tokenizer")
    return LM_FACTORIES[bool(adapter.causal)](model, tokenizer, adapter, batch_size=batch_size,
                                               seed=seed, sampler=sampler, device=device)


def task_record(settings: TaskSettings) -> dict[str, Any]:
    """A task's settings as the metrics record them (with the estimator's ``mc_batch``)."""
    return {**dataclasses.asdict(settings), "mc_batch": MC_BATCH}


def _metric_name(key: str) -> str:
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric},{filt}"


def _clean(v: Any) -> float | None:
    """A plain finite float, or None ("N/A", NaN, inf)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def parse_results(res: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's results -> {task or group: {metrics, stderr, version, n_shot, n_samples, ...}}."""
    out = {}
    configs = res.get("configs", {})
    for name, vals in res.get("results", {}).items():
        metrics, stderr = {}, {}
        for key, v in vals.items():
            if key == "alias" or "," not in key:
                continue
            metric = _metric_name(key)
            if metric.split(",")[0].endswith("_stderr"):
                base, _, filt = metric.partition(",")
                stderr[base[: -len("_stderr")] + (f",{filt}" if filt else "")] = _clean(v)
            else:
                metrics[metric] = _clean(v)
        entry = {
            "metrics": metrics,
            "stderr": stderr,
            "version": res.get("versions", {}).get(name),
            "n_shot": res.get("n-shot", {}).get(name),
            "is_group": name in res.get("groups", {}) or name in res.get("group_subtasks", {}),
        }
        n = res.get("n-samples", {}).get(name)
        if n:
            entry["n_samples"] = n.get("effective")
            entry["n_docs"] = n.get("original")
        if name in configs:
            c = configs[name]
            entry["eval_split"] = c.get("test_split") or c.get("validation_split")
            entry["fewshot_split"] = c.get("fewshot_split")
        out[name] = entry
    return out


def _item_value(v: Any) -> float | None:
    if isinstance(v, (list, tuple)) and len(v) == 1:  # some metrics log [value]
        v = v[0]
    return _clean(v)


def item_values(samples: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Per-item values of one task from lm-eval's logged samples, in ``doc_id`` order.

    samples: ``results["samples"][task]`` (one record per document and filter); metrics: the
    task's metric names as parse_results gives them (``acc``, ``acc_norm``, ``exact_match,strict-match``).
    Returns {"doc_id": [ids ascending], metric: [value per doc]} (1.0 / 0.0 for correct / wrong).
    The same documents in the same order for every checkpoint: the unit of a paired test.
    Raises ValueError when a document is logged twice for one filter or a metric is missing.
    """
    by_metric: dict[str, dict[int, float | None]] = {}
    for m in metrics:
        base, _, filt = m.partition(",")
        filt = filt or "none"
        rows: dict[int, float | None] = {}
        for rec in samples:
            if rec.get("filter", "none") != filt or base not in rec:
                continue
            doc = int(rec["doc_id"])
            if doc in rows:
                raise ValueError(f"lm-eval logged document {doc} twice for metric {m!r}")
            rows[doc] = _item_value(rec[base])
        if rows:
            by_metric[m] = rows
    if not by_metric:
        return {"doc_id": []}
    ids = sorted(next(iter(by_metric.values())))
    out: dict[str, Any] = {"doc_id": ids}
    for m, rows in by_metric.items():
        if sorted(rows) != ids:
            raise ValueError(f"metric {m!r} was logged for other documents than {next(iter(by_metric))!r}")
        out[m] = [rows[i] for i in ids]
    return out


@contextlib.contextmanager
def _without_env_info() -> Iterator[None]:
    """simple_evaluate runs torch's collect_env (a `pip list` subprocess, ~2 s) on every call to
    fill results fields we never read (our provenance is our own); skip it for our calls only."""
    import lm_eval.evaluator as ev

    original = ev.add_env_info
    ev.add_env_info = lambda results: None
    try:
        yield
    finally:
        ev.add_env_info = original

def evaluate_lm(
    lm: LM,
    tasks: Mapping[str, TaskSettings],
    *,
    seed: int = SEED,
    data_root: str | os.PathLike | None = None,
    task_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run each task with ``lm_eval.simple_evaluate`` on an LM instance; per-task settings.

    Returns {task or group name: {metrics, stderr, version, n_shot, n_samples, n_docs,
    eval_split, fewshot_split, settings, items}}, groups (e.g. ``mmlu``) and their members included;
    ``items`` (tasks only, not groups): the per-document values of ``item_values`` (the evaluate
    stage moves them to metrics/units).
    cfg / mc_num are ignored for AR models (exact log-likelihoods). In a sharded run
    (srclib.evaluation.distributed) only rank 0 gets results; the other ranks return {}.
    """
    import lm_eval

    if not tasks:
        raise ValueError("no tasks given")
    out: dict[str, dict[str, Any]] = {}
    with offline_task_manager(list(tasks), data_root, task_overrides) as tm:
        for name, spec in tasks.items():
            if hasattr(lm, "configure"):
                lm.configure(mc_num=spec.mc_num, mc_batch=MC_BATCH, cfg=spec.cfg)
            log.info("evaluating %s (%s)", name, spec)
            with _without_env_info():
                res = lm_eval.simple_evaluate(
                    model=lm, tasks=[name], num_fewshot=spec.num_fewshot, limit=spec.limit,
                    task_manager=tm, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed, log_samples=True,
                )
            if res is None:  # a rank other than 0 of a sharded run: rank 0 holds the gathered results
                continue
            samples = res.get("samples") or {}
            for k, v in parse_results(res).items():
                v["settings"] = task_record(spec)
                if k in samples:
                    v["items"] = item_values(samples[k], list(v["metrics"]))
                out[k] = v
    return out


def evaluate(
    model_key_or_dir: str | os.PathLike,
    tasks: Mapping[str, TaskSettings],
    *,
    batch_size: int = 32,
    seed: int = SEED,
    data_root: str | os.PathLike | None = None,
    sampler: SamplerParams | None = None,
    device: str | torch.device | None = None,
    task_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Load a model (key or checkpoint folder) and evaluate it on lm-eval tasks (see evaluate_lm).

    The LM is ``srclib-dlm`` for diffusion models and lm-eval's ``hf`` for causal ones.
    """
    from srclib.models import load

    model, tok, adapter = load(str(model_key_or_dir))
    lm = make_lm(model, tok, adapter, batch_size=batch_size, seed=seed, sampler=sampler, device=device)
    return evaluate_lm(lm, tasks, seed=seed, data_root=data_root, task_overrides=task_overrides)
