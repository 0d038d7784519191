"""``DiffusionLM``: the lm-eval ``LM`` for masked diffusion LMs, registered as ``srclib-dlm``.

Built from any registered model key or srclib checkpoint folder (``srclib.models.load``).
``loglikelihood``: LLaDA's MC-ELBO (:mod:`srclib.likelihood`), batched ACROSS requests;
``loglikelihood_rolling``: the ELBO over lm-eval's rolling windows; ``generate_until``:
:func:`srclib.diffusion.generate`, cut at the first stop string. Causal models are evaluated by
lm-eval's own ``hf`` model instead (:mod:`srclib.evaluation.ar`).

``model_args`` (``--model_args`` of lm-eval's CLI): ``pretrained`` (model key or checkpoint
folder), ``mc_num`` (MC samples per request, default 128), ``mc_batch`` (stratification group of
the estimator, LLaDA's ``batch_size``; default ``mc_num``), ``cfg`` (default 0), ``steps``,
``gen_length``, ``block_length``, ``remasking``, ``temperature`` (generation; defaults
:func:`srclib.evaluation.common.default_sampler`: params.yaml's evaluate.sampler), ``seed``,
``add_bos_token``, ``max_length``, ``device``,
``batch_size``; ``mc_adaptive`` (default false: LLaDA's estimator, mc_num rows per request),
``mc_group``, ``mc_min``, ``mc_z``, ``mc_rank``: common random numbers across the choices of one item and
sequential stopping (:meth:`DiffusionLM.score_items`). :func:`check_model_args` checks names,
types and ranges without loading anything (``python -m srclib.evaluation`` runs it before lm-eval
indexes its tasks; ``create_from_arg_obj`` runs it too), :func:`check_pretrained` the model key or
checkpoint folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lm_eval.models  # noqa: F401  lm-eval's own models enter the registry (lazily) before ours
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from srclib import devices, likelihood, paths
from srclib.evaluation import distributed
from srclib.evaluation.common import (SEED, default_sampler, check_finite_scores, check_finite_weights,
                                     check_pruned_folder, checkpoint_name, model_max_length,
                                     request_generator)
from srclib.params import REMASKING, SamplerParams
from srclib.schema import ParamsError, build

__all__ = ["DiffusionLM", "NAME", "dlm_lm", "cut_generation", "MODEL_ARGS", "ModelArgsError",
           "check_model_args", "check_pretrained", "request_items", "MC_GROUP", "MC_MIN", "MC_Z"]

log = logging.getLogger(__name__)

NAME = "srclib-dlm"  # the name lm-eval's registry knows DiffusionLM by


# ---- construction helpers ---------------------------------------------------------------------
def _as_bool(x: Any) -> bool | None:
    if x is None or isinstance(x, bool):
        return x
    s = str(x).strip().lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    raise ValueError(f"expected a boolean, got {x!r}")


def _loaded(pretrained, model, tokenizer, adapter) -> tuple[torch.nn.Module, Any, Any]:
    """(model, tokenizer, adapter) from a key / folder or from loaded objects, checked."""
    if (pretrained is None) == (model is None):
        raise ValueError("pass exactly one of pretrained=<model key or folder> or model=<module>")
    if pretrained is not None:
        from srclib.models import load

        model, tokenizer, adapter = load(str(pretrained))
        where = f"model_args pretrained={str(pretrained)!r}"
        if Path(pretrained).is_dir():  # finite weights, and a pruned folder's weights agree with its masks
            check_pruned_folder(model, pretrained, where)
        else:
            check_finite_weights(model, where)
    if adapter is None or tokenizer is None:
        raise ValueError("srclib-dlm needs the model's adapter and tokenizer (the checkpoint "
                         "folder has no tokenizer.json?)")
    if adapter.causal:
        raise ValueError(f"model {adapter.key!r} is causal: evaluate it with lm-eval's 'hf' "
                         f"model (srclib.evaluation.harness.make_lm picks it)")
    return model, tokenizer, adapter


def _add_bos(tokenizer, add_bos_token: bool | str | None) -> bool:
    """Whether contexts start with BOS: as asked, else when the tokenizer has one."""
    bos = getattr(tokenizer, "bos_token_id", None)
    add = _as_bool(add_bos_token)
    add = (bos is not None) if add is None else add
    if add and bos is None:
        raise ValueError("add_bos_token=True but the tokenizer has no BOS token")
    return add


# ---- model_args: names, types and ranges, checked before anything loads ------------------------
class ModelArgsError(ValueError):
    """A srclib-dlm model_arg is unknown, ill-typed, out of range or names no usable checkpoint;
    the message names the argument, the value and what is allowed."""


# Sequential MC-ELBO (mc_adaptive=true): rows per step (the stratification group), rows before
# the first stop, the margin in standard errors. See DiffusionLM.score_items.
MC_GROUP, MC_MIN, MC_Z = 4, 8, 3.0
# the rankings whose leader must be resolved before an item stops: lm-eval's acc (raw
# log-likelihoods), acc_norm (divided by the choice's length), or both (today's rule)
MC_RANKS = ("all", "acc", "acc_norm")

# DiffusionLM's model_args (its keyword arguments other than loaded objects): name -> (type,
# what is allowed, starting with the type's word: the message of a wrong type). The ranges are
# checked by each rule's one home: SamplerParams (steps, gen_length, block_length, temperature,
# remasking; cfg as cfg_scale), likelihood._check_mc (mc_num, mc_batch), _at_least_one (batch_size,
# max_length), devices.resolve + torch.device (device), _as_bool (add_bos_token); the defaults are
# DiffusionLM.__init__'s.
MODEL_ARGS: dict[str, tuple[type, str]] = {
    "pretrained": (str, "a registered model key or a srclib checkpoint folder"),
    "mc_num": (int, "an integer >= 1 (MC samples per request)"),
    "mc_batch": (int, "an integer >= 1 dividing mc_num (default: mc_num)"),
    "batch_size": (int, "an integer >= 1 (noised rows per forward pass)"),
    "cfg": (float, "a number >= 0"),
    "steps": (int, "an integer >= 1, a multiple of gen_length / block_length"),
    "gen_length": (int, "an integer >= 1, a multiple of block_length"),
    "block_length": (int, "an integer >= 1"),
    "temperature": (float, "a number >= 0"),
    "remasking": (str, f"one of {', '.join(REMASKING)}"),
    "device": (str, "cpu, cuda, cuda:<n>, mps or auto"),
    "seed": (int, "an integer"),
    "add_bos_token": (bool, "true or false"),
    "max_length": (int, "an integer >= 1 (default: the model's context length)"),
    "max_batch_size": (object, "anything (lm-eval passes it; unused)"),
    "mc_adaptive": (bool, "true or false (default false: mc_num rows for every request)"),
    "mc_group": (int, f"an integer >= 1 dividing mc_num (rows drawn per step; default {MC_GROUP})"),
    "mc_min": (int, f"an integer, a multiple of mc_group, mc_group <= mc_min <= mc_num (default {MC_MIN})"),
    "mc_z": (float, f"a number > 0 (standard errors of margin; default {MC_Z})"),
    "mc_rank": (str, f"one of {', '.join(MC_RANKS)} (the rankings that must resolve; default all: "
                     "acc and acc_norm; use the metric the task reports)"),
}
ADAPTIVE_ARGS = ("mc_group", "mc_min", "mc_z", "mc_rank")
_INT_TEXT = re.compile(r"[+-]?\d+")


def _at_least_one(where: str, value: int) -> None:
    if value < 1:
        raise ModelArgsError(f"{where}={value!r}: must be >= 1")


def _typed(name: str, value: Any, where: str) -> Any:
    """``value`` as MODEL_ARGS[name]'s type. lm-eval's parsers give "-1" as -1.0, "abc" as a
    string and its --batch_size as a string: an integral float or an integer string becomes an
    int, an int or a number string a float; anything else is refused."""
    tp, allowed = MODEL_ARGS[name]
    if value is None or tp is object:
        return value
    if tp is bool:
        with contextlib.suppress(ValueError):
            return _as_bool(value)
    elif tp is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            return int(value)
    elif tp is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
    elif tp is str and isinstance(value, (str, os.PathLike)):
        return str(value)
    raise ModelArgsError(f"{where}={value!r}: must be {allowed}")


def check_model_args(args: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """srclib-dlm's model_args checked and typed before anything loads: an unknown name, a wrong
    type or an out-of-range value raises ModelArgsError naming the argument ("model_args X", or
    "--X" for a value that came from ``defaults``), the value and what is allowed.

    ``defaults`` (lm-eval's --batch_size / --device / --max_batch_size) fill in what ``args``
    does not set, as lm-eval hands them to ``create_from_arg_obj``. ``pretrained`` is required;
    what it names is :func:`check_pretrained`'s. Returns {name: typed value}.
    """
    given = {k: v for k, v in (defaults or {}).items() if v is not None}
    merged = {**given, **dict(args)}

    def where(name: str) -> str:
        return f"model_args {name}" if name in args else f"--{name}"

    unknown = sorted(set(merged) - set(MODEL_ARGS))
    if unknown:
        raise ModelArgsError(f"{where(unknown[0])}: unknown argument of {NAME}; allowed: "
                             f"{', '.join(sorted(MODEL_ARGS))}")
    if merged.get("pretrained") in (None, ""):
        raise ModelArgsError(f"model_args pretrained: missing; {NAME} needs "
                             f"pretrained=<{MODEL_ARGS['pretrained'][1]}>")
    out = {k: _typed(k, v, where(k)) for k, v in merged.items()}
    init = inspect.signature(DiffusionLM.__init__).parameters  # the defaults

    sampler_default = dataclasses.asdict(default_sampler())  # the sampler's one home: params.yaml

    def value(name: str) -> Any:
        if out.get(name) is not None:
            return out[name]
        return init[name].default if init[name].default is not None else sampler_default.get(name)

    sampler = {k: value(k) for k in ("gen_length", "steps", "block_length", "temperature", "remasking")}
    try:
        build(SamplerParams, {**sampler, "cfg_scale": value("cfg")}, "model_args")
    except ParamsError as exc:
        raise ModelArgsError(str(exc).replace("model_args.cfg_scale", "model_args.cfg")
                             .replace("model_args.", "model_args ")) from None
    mc_num = value("mc_num")
    mc_batch = out.get("mc_batch") or mc_num
    try:
        likelihood._check_mc(mc_num, mc_batch)
    except ValueError as exc:
        raise ModelArgsError(f"model_args mc_num={mc_num!r}, mc_batch={mc_batch!r}: {exc} "
                             f"(mc_batch is the estimator's batch_size)") from None
    for name in ("batch_size", "max_length"):
        if out.get(name) is not None:
            _at_least_one(where(name), out[name])
    _check_adaptive(out, mc_num, where)
    if out.get("device") is not None:
        try:
            torch.device(devices.resolve(out["device"]))
        except (RuntimeError, ValueError):
            raise ModelArgsError(f"{where('device')}={out['device']!r}: not a torch device; "
                                 f"allowed: {MODEL_ARGS['device'][1]}") from None
    return out


def _check_adaptive(out: Mapping[str, Any], mc_num: int, where: Callable[[str], str]) -> None:
    """mc_adaptive's settings: only with mc_adaptive=true; mc_group divides mc_num, mc_min a
    multiple of mc_group within mc_group..mc_num, mc_z > 0."""
    if not out.get("mc_adaptive"):
        given = [k for k in ADAPTIVE_ARGS if out.get(k) is not None]
        if given:
            raise ModelArgsError(f"{where(given[0])}={out[given[0]]!r}: only used with "
                                 f"mc_adaptive=true (allowed: true or false; default false)")
        return
    group = out.get("mc_group") or MC_GROUP
    low = out.get("mc_min") or max(MC_MIN // group, 1) * group
    z = MC_Z if out.get("mc_z") is None else out["mc_z"]
    if group < 1 or mc_num % group:
        raise ModelArgsError(f"{where('mc_group')}={group!r}: must be {MODEL_ARGS['mc_group'][1]} "
                             f"(mc_num={mc_num})")
    if low % group or not group <= low <= mc_num:
        raise ModelArgsError(f"{where('mc_min')}={low!r}: must be {MODEL_ARGS['mc_min'][1]} "
                             f"(mc_group={group}, mc_num={mc_num})")
    if not (z > 0 and z != float("inf")):
        raise ModelArgsError(f"{where('mc_z')}={z!r}: must be {MODEL_ARGS['mc_z'][1]} and finite")
    if out.get("mc_rank") is not None and out["mc_rank"] not in MC_RANKS:
        raise ModelArgsError(f"{where('mc_rank')}={out['mc_rank']!r}: must be {MODEL_ARGS['mc_rank'][1]}")


def check_pretrained(pretrained: str, root: str | os.PathLike | None = None) -> None:
    """Refuse, naming ``pretrained``, what srclib-dlm cannot load: a path that does not exist, a
    folder without a readable srclib marker or whose marker names an unregistered model, an
    unregistered key, a causal model, a registered local-only model (no hub source) whose
    models/<key> folder is not built, a local checkpoint folder without a (loadable) tokenizer.
    A path that does not exist is refused before the model registry (and so transformers) is
    imported."""
    src = Path(pretrained).expanduser()
    if ("/" in pretrained or os.sep in pretrained or pretrained.startswith((".", "~"))) \
            and not src.is_dir():
        what = "is a file, not a checkpoint folder" if src.exists() else "does not exist"
        raise ModelArgsError(f"model_args pretrained={pretrained!r}: {what}; allowed: "
                             f"{MODEL_ARGS['pretrained'][1]}")
    from srclib.models import MODELS
    from srclib.models.base import read_marker

    if src.is_dir():
        try:
            key = read_marker(src).get("key")
        except (OSError, ValueError) as exc:  # no marker, or a marker that is not JSON
            raise ModelArgsError(f"model_args pretrained={pretrained!r}: {exc}") from None
        if key not in MODELS:
            raise ModelArgsError(f"model_args pretrained={pretrained!r}: its marker names model "
                                 f"{key!r}, which is not registered; registered: {sorted(MODELS)}")
    elif pretrained in MODELS:
        key = pretrained
        folder = paths.model_dir(key, None if root is None else Path(root))
        local_only = not MODELS[key].source or Path(MODELS[key].source) == paths.MODELS / key
        if local_only and not folder.is_dir():
            raise ModelArgsError(f"model_args pretrained={pretrained!r}: its checkpoint {folder} is "
                                 f"not built yet (`dvc repro` builds it)")
    else:
        raise ModelArgsError(f"model_args pretrained={pretrained!r}: neither a folder nor a "
                             f"registered model; allowed: a checkpoint folder or one of {sorted(MODELS)}")
    if MODELS[key].causal:
        raise ModelArgsError(f"model_args pretrained={pretrained!r}: model {key!r} is causal; {NAME} "
                             f"evaluates diffusion LMs (use lm-eval's 'hf' model)")
    folder = src if src.is_dir() else paths.model_dir(key, None if root is None else Path(root))
    if folder.is_dir():  # a local checkpoint loads its own tokenizer: named here, not after lm-eval's task index
        try:
            tok = MODELS[key].folder_tokenizer(folder)
        except Exception as exc:  # tokenizers / transformers raise plain Exceptions on a corrupt file
            raise ModelArgsError(f"model_args pretrained={pretrained!r}: the tokenizer in {folder} does not "
                                 f"load ({type(exc).__name__}: {exc}); rerun the stage that wrote the "
                                 f"folder") from None
        if tok is None:
            raise ModelArgsError(f"model_args pretrained={pretrained!r}: the checkpoint folder {folder} holds "
                                 f"no tokenizer (tokenizer.json); {NAME} needs the one the model was trained "
                                 f"with: rerun the stage that wrote the folder, or copy the tokenizer files "
                                 f"into it")


# ---- request helpers ------------------------------------------------------------------------------
def _longest_first_chunks(pairs: Sequence[tuple[list[int], list[int]]], per_chunk: int) -> list[list[int]]:
    """Indices of ``pairs``, longest first, in chunks of ``per_chunk`` (similar lengths pack well)."""
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    return [order[s:s + per_chunk] for s in range(0, len(order), per_chunk)]


def _rolling_pairs(strings: Sequence[str], encode: Callable, prefix: int,
                   max_seq: int) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """lm-eval's disjoint rolling windows of each string: (context, target) pairs and the index
    of the string each pair belongs to."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    pairs, owner = [], []
    for r, string in enumerate(strings):
        tokens = encode(string, add_special_tokens=False)
        for w in get_rolling_token_windows(tokens, prefix_token=prefix, max_seq_len=max_seq,
                                           context_len=1):
            c, t = make_disjoint_window(w)
            pairs.append((list(c), list(t)))
            owner.append(r)
    return pairs, owner


def request_items(instances: Sequence[Any] | None, contexts: Sequence[str]) -> list[list[int]]:
    """Requests of one loglikelihood call grouped into the items whose choices lm-eval ranks.

    With lm-eval's Instances (``task_name``, ``doc_id``): the requests of one document of one task
    (lm-eval's process_results takes the argmax over exactly these), in request order; a document
    whose requests do not all share one context string (``acc_mutual_info``'s unconditional
    requests, multiple-input tasks such as winogrande) becomes one item per request (scored by the
    full estimator). Without them (requests not built by lm-eval's evaluator): runs of
    consecutive requests with the same context string (lm-eval builds one request per choice, the
    choices of a document one after another). Returns lists of request indices, every index once.
    """
    keyed = (instances is not None and len(instances) == len(contexts)
             and all(getattr(r, "task_name", None) is not None and getattr(r, "doc_id", None) is not None
                     for r in instances))
    if not keyed:
        items: list[list[int]] = []
        for i, c in enumerate(contexts):
            if items and contexts[items[-1][-1]] == c and items[-1][-1] == i - 1:
                items[-1].append(i)
            else:
                items.append([i])
        return items
    by_doc: dict[tuple, list[int]] = {}
    for i, r in enumerate(instances):
        by_doc.setdefault((r.task_name, r.doc_id), []).append(i)
    out = []
    for idx in by_doc.values():
        if len({contexts[i] for i in idx}) == 1:
            out.append(idx)
        else:
            out.extend([i] for i in idx)
    return out


def _stop_strings(request, temperature: float) -> list[str]:
    """A generate_until request's stop strings (sampling kwargs are ignored: logged)."""
    kwargs = dict(request.args[1] or {})
    until = kwargs.get("until") or []
    if kwargs.get("do_sample") or kwargs.get("temperature", 0.0):
        log.warning("generate_until: sampling kwargs are ignored; the sampler uses "
                    "temperature=%s", temperature)
    return [until] if isinstance(until, str) else list(until)


def _same_length_batches(prompts: Sequence[list[int]], rows: int) -> list[tuple[int, list[int]]]:
    """(prompt length, indices) batches of at most ``rows`` prompts of equal length, shortest first."""
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    return [(L, idx[s:s + rows]) for L, idx in sorted(by_len.items()) for s in range(0, len(idx), rows)]


def cut_generation(tokenizer, gen_ids: list[int], until: Sequence[str]) -> str:
    """Generated ids -> text: cut at the first EOS token, then at the first occurrence of any stop
    string; special tokens dropped."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos in gen_ids:
        gen_ids = gen_ids[: gen_ids.index(eos)]
    text = tokenizer.decode(list(gen_ids), skip_special_tokens=False)
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    text = text[:cut]
    for special in getattr(tokenizer, "all_special_tokens", []):
        if special:
            text = text.replace(special, "")
    return text


@register_model(NAME)
class DiffusionLM(TemplateLM):
    """lm-eval model for masked diffusion LMs (any registered DLM or srclib checkpoint folder).

    Build from a key/folder (``DiffusionLM(pretrained="models/tiny-dlm", mc_num=8)``, what the
    CLI does) or from loaded objects (``DiffusionLM(model=m, tokenizer=t, adapter=a)``).

    batch_size: noised rows per forward pass (rows of many requests are packed together).
    mc_num / mc_batch / cfg: the MC-ELBO (srclib.likelihood); changeable per task via
    :meth:`configure`; ``cfg`` is also the sampler's ``cfg_scale``. Every request gets its own
    generator seeded by (seed, its token ids).
    add_bos_token: prepend BOS to every context (default: when the tokenizer has one; the
    study's tiny models are trained on BOS-led windows). Shifted models (adapter.shift) never
    mask position 0 (``keep_first``).
    ``is_greedy`` is always False (LLaDA's default ``is_check_greedy=False``; no metric of the
    study uses it).

    Several processes (``accelerate launch`` / ``torchrun``; :mod:`srclib.evaluation.distributed`):
    rank and world size come from torch.distributed's process group (started here, gloo on CPU,
    nccl on CUDA, when the launcher's RANK / WORLD_SIZE say so), a CUDA device becomes
    ``cuda:<LOCAL_RANK>``, and lm-eval gives each rank every world_size-th document. Each call
    then merges the ranks' requests back into one process's list (:func:`distributed.global_order`),
    batches them exactly as one process does and scores every world_size-th batch
    (loglikelihood, loglikelihood_rolling, generate_until alike); the ranks exchange the results.
    Per-request values are one process's bit for bit: the same batches, the same per-request
    (and per-batch, for generation) generators. With one process none of this runs.
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
        steps: int | None = None,  # the generation sampler: params.yaml's evaluate.sampler when not given
        gen_length: int | None = None,
        block_length: int | None = None,
        temperature: float | None = None,
        remasking: str | None = None,
        device: str | torch.device | None = None,
        seed: int = SEED,
        add_bos_token: bool | str | None = None,
        max_length: int | None = None,
        max_batch_size: Any = None,  # lm-eval passes it; unused
        mc_adaptive: bool | str = False,
        mc_group: int | None = None,
        mc_min: int | None = None,
        mc_z: float | None = None,
        mc_rank: str | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            raise TypeError(f"srclib-dlm got unknown model_args {sorted(unused)}")
        model, tokenizer, adapter = _loaded(pretrained, model, tokenizer, adapter)
        self._device = devices.for_model(device, model)
        self._group = distributed.setup(self._device)  # None in one process: nothing changes
        self._instances = None  # lm-eval's Instances of the current loglikelihood call (several processes)
        if self._group is not None:
            self._device = self._group.device
            self._rank, self._world_size = self._group.rank, self._group.world_size
            log.info("srclib-dlm: rank %d of %d on %s", self._rank, self._world_size, self._device)
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.mask_id = adapter.mask_id(model)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        _at_least_one("batch_size", self.batch_size)
        d = default_sampler()
        self.sampler = SamplerParams(
            gen_length=int(d.gen_length if gen_length is None else gen_length),
            steps=int(d.steps if steps is None else steps),
            block_length=int(d.block_length if block_length is None else block_length),
            temperature=float(d.temperature if temperature is None else temperature),
            cfg_scale=float(cfg), remasking=str(d.remasking if remasking is None else remasking))
        self.configure(mc_num=int(mc_num), mc_batch=None if mc_batch is None else int(mc_batch),
                       cfg=float(cfg), mc_adaptive=_as_bool(mc_adaptive), mc_group=mc_group,
                       mc_min=mc_min, mc_z=mc_z, mc_rank=mc_rank)
        if self.mc_adaptive and self._group is not None:
            raise ValueError(f"model_args mc_adaptive=true is not supported with sharded evaluation "
                             f"(world size {self._world_size}): run one process, or mc_adaptive=false")
        self.add_bos_token = _add_bos(tokenizer, add_bos_token)
        self._max_length = int(max_length) if max_length else model_max_length(model)
        self._logits_fn = likelihood.model_logits_fn(self.model, adapter)
        self._generate_fn: Callable | None = None  # srclib.diffusion.generate, resolved lazily
        self._truncated = 0

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's --batch_size/--device fill in what --model_args does not set; every value is
        checked (:func:`check_model_args`) before the model loads."""
        return cls(**check_model_args(arg_dict, additional_config))

    # ---- settings ------------------------------------------------------------------------------
    def configure(self, *, mc_num: int | None = None, mc_batch: int | None = None,
                  cfg: float | None = None, mc_adaptive: bool | None = None, mc_group: int | None = None,
                  mc_min: int | None = None, mc_z: float | None = None, mc_rank: str | None = None) -> None:
        """Change the estimator settings (the harness does this per task); ``cfg`` is also the
        sampler's ``cfg_scale``. The sequential settings (``mc_adaptive``, ``mc_group``,
        ``mc_min``, ``mc_z``) keep their values when not given; with ``mc_adaptive``, a task whose
        ``mc_num`` the group does not divide or that is below ``mc_min`` (e.g. MMLU's mc_num 1) is
        scored by the full estimator (logged)."""
        mc_num = self.__dict__.get("mc_num") if mc_num is None else mc_num
        cfg = self.__dict__.get("cfg", 0.0) if cfg is None else cfg
        likelihood._check_mc(mc_num, mc_batch or mc_num)
        if cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {cfg}")
        self.mc_num, self.mc_batch, self.cfg = mc_num, mc_batch or mc_num, float(cfg)
        self.sampler = dataclasses.replace(self.sampler, cfg_scale=self.cfg)
        d = self.__dict__
        adaptive = d.get("mc_adaptive", False) if mc_adaptive is None else bool(mc_adaptive)
        if not adaptive:
            given = {k: v for k, v in (("mc_group", mc_group), ("mc_min", mc_min), ("mc_z", mc_z),
                                       ("mc_rank", mc_rank)) if v is not None}
            if given:
                raise ValueError(f"{', '.join(given)} only apply with mc_adaptive=true")
            self.mc_adaptive, self.mc_group, self.mc_min, self.mc_z, self.mc_rank = False, None, None, None, None
            return
        group = int(mc_group if mc_group is not None else d.get("mc_group") or MC_GROUP)
        low = mc_min if mc_min is not None else d.get("mc_min") or max(MC_MIN // group, 1) * group
        z = float(mc_z if mc_z is not None else d.get("mc_z") or MC_Z)
        if group < 1 or int(low) % group or int(low) < group:
            raise ValueError(f"mc_group={group} must be >= 1 and mc_min={low} a multiple of it")
        if not (z > 0 and z != float("inf")):
            raise ValueError(f"mc_z must be a finite number > 0, got {z}")
        rank = str(mc_rank if mc_rank is not None else d.get("mc_rank") or "all")
        if rank not in MC_RANKS:
            raise ValueError(f"mc_rank must be one of {', '.join(MC_RANKS)}, got {rank!r}")
        self.mc_adaptive, self.mc_group, self.mc_min, self.mc_z, self.mc_rank = True, group, int(low), z, rank
        if mc_num % group or mc_num < self.mc_min:
            log.warning("mc_adaptive: mc_num=%d is not a multiple of mc_group=%d or is below "
                        "mc_min=%d: this task is scored by the full estimator", mc_num, group, self.mc_min)

    @property
    def _adaptive_now(self) -> bool:
        """Whether loglikelihood requests are scored sequentially under the current settings."""
        return bool(self.mc_adaptive) and self.mc_num % self.mc_group == 0 and self.mc_num >= self.mc_min

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

    # ---- several processes: what lm-eval's evaluator calls when world_size > 1 --------------------
    def all_gather(self, tensor):
        return super().all_gather(tensor) if self._group is None else self._group.all_gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        return super().gather_object(obj, dst) if self._group is None else self._group.gather_object(obj, dst)

    def barrier(self) -> None:
        if self._group is not None:
            self._group.barrier()

    def _merged(self, requests, payloads) -> tuple[list, list[int]] | None:
        """Every rank's requests in one process's order (payloads) and this rank's indices there;
        None in one process, or when the requests carry no lm-eval keys (then each rank scores
        its own)."""
        if self._group is None:
            return None
        return distributed.global_order(self._group, requests, payloads)

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

    def _fitted(self, pairs) -> list[tuple[list[int], list[int]]]:
        pairs = [self._fit(list(c), list(t)) for c, t in pairs]
        if self._truncated:
            log.warning("%d request(s) longer than max_length %s: contexts left-truncated",
                        self._truncated, self._max_length)
            self._truncated = 0
        return pairs

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "ELBO",
              disable_tqdm: bool = False, *, shared: bool = False) -> list[float]:
        """MC-ELBO log-likelihoods of (context ids, continuation ids) pairs, batched across pairs.

        ``shared``: ``pairs`` are the same on every rank of several processes (a call's merged
        requests): each rank scores every world_size-th batch and the ranks exchange the scores."""
        pairs = self._fitted(pairs)
        out = [0.0] * len(pairs)
        guided = 2 if self.cfg > 0 else 1  # cfg doubles the rows: conditional + unconditional
        per_chunk = max(1, (self.batch_size * 8) // (self.mc_num * guided))  # ~8 forwards a call
        chunks = _longest_first_chunks(pairs, per_chunk)
        group = self._group if shared else None
        if group is not None:
            chunks = chunks[group.rank::group.world_size]
        for idx in tqdm(chunks, desc=desc, disable=disable_tqdm or None):
            reqs = [pairs[i] for i in idx]
            ll = likelihood.elbo_loglikelihood_batch(
                self._logits_fn, reqs, mask_id=self.mask_id, mc_num=self.mc_num,
                batch_size=self.mc_batch, cfg=self.cfg,
                generator=[request_generator(self.seed, c, t) for c, t in reqs],
                pad_id=self.mask_id, keep_first=self.keep_first,
                forward_batch=max(1, self.batch_size // guided),
            )
            for i, v in zip(idx, ll):
                out[i] = v
        if group is not None:  # every rank gets every score: the finiteness check fails on all ranks alike
            for part in group.all_gather_object([(i, out[i]) for idx in chunks for i in idx]):
                for i, v in part:
                    out[i] = v
        # NaN / Inf logits give NaN scores, and lm-eval's argmax would still give an accuracy
        check_finite_scores(out, self.model, checkpoint_name(self.model, self.adapter),
                            f"{desc}: score of request(s)")
        return out

    def score_items(self, pairs: Sequence[tuple[list[int], list[int]]], items: Sequence[Sequence[int]],
                    lengths: Sequence[float] | None = None, desc: str = "ELBO (sequential)",
                    disable_tqdm: bool = False) -> tuple[list[float], list[int]]:
        """MC-ELBO log-likelihoods of ``pairs`` grouped into ``items`` (lists of indices: the
        choices lm-eval ranks, :func:`request_items`), scored sequentially (mc_adaptive): the
        distinct pairs of an item of two or more share common random numbers, drawn from one
        generator seeded by (seed, the item's pairs), and get ``mc_group`` rows at a time until
        the leader's margin over every other choice exceeds ``mc_z`` standard errors, in the
        rankings ``mc_rank`` names: the raw values (acc), the values divided by ``lengths`` (the
        choices' character lengths: acc_norm), or both (all; without lengths: the raw ones),
        after at least ``mc_min`` and at most ``mc_num`` rows
        (:func:`srclib.likelihood.elbo_rank_adaptive`). Identical pairs get one value. Items of
        one distinct pair are scored by :meth:`score`, bit for bit as with mc_adaptive=false.
        Returns (values, rows used per request)."""
        pairs = self._fitted(pairs)
        out = [0.0] * len(pairs)
        rows = [self.mc_num] * len(pairs)
        single, multi = [], []  # indices scored by the full estimator; (distinct pairs, members)
        for idx in items:
            distinct: dict[tuple, list[int]] = {}
            for i in idx:
                distinct.setdefault((tuple(pairs[i][0]), tuple(pairs[i][1])), []).append(i)
            if len(distinct) < 2:
                single.extend(idx)
            else:
                multi.append(list(distinct.values()))
        if single:
            for i, v in zip(single, self.score([pairs[i] for i in single], desc=desc,
                                               disable_tqdm=disable_tqdm)):
                out[i] = v
        guided = 2 if self.cfg > 0 else 1
        per_chunk = max(1, (self.batch_size * 64) // (self.mc_group * guided * 4))  # items per chunk
        order = sorted(range(len(multi)), key=lambda q: -max(len(pairs[m[0]][0]) + len(pairs[m[0]][1])
                                                              for m in multi[q]))
        for s in tqdm(range(0, len(order), per_chunk), desc=desc, disable=disable_tqdm or None):
            chunk = [multi[q] for q in order[s:s + per_chunk]]
            reqs = [[pairs[m[0]] for m in members] for members in chunk]
            scales = None
            if lengths is not None and self.mc_rank != "acc":
                scales = [[[1.0 / max(float(lengths[m[0]]), 1.0) for m in members]] for members in chunk]
            values, used = likelihood.elbo_rank_adaptive(
                self._logits_fn, reqs, mask_id=self.mask_id, mc_num=self.mc_num, mc_min=self.mc_min,
                mc_group=self.mc_group, z=self.mc_z, cfg=self.cfg,
                generators=[request_generator(self.seed, [-1], *(x for c, t in r for x in (c, t)))
                            for r in reqs],
                pad_id=self.mask_id, keep_first=self.keep_first,
                forward_batch=max(1, self.batch_size // guided), scales=scales,
                raw=self.mc_rank != "acc_norm" or scales is None)
            for members, vals, n in zip(chunk, values, used):
                for m, v in zip(members, vals):
                    for i in m:
                        out[i], rows[i] = v, n
        check_finite_scores(out, self.model, checkpoint_name(self.model, self.adapter),
                            f"{desc}: score of request(s)")
        return out, rows

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if self._group is None and not self._adaptive_now:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        self._instances = requests  # their lm-eval keys: the sharded merge, the items of mc_adaptive
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or self.rank != 0)
        finally:
            self._instances = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw: Any):
        pairs = [(c, t) for _, c, t in requests]
        merged = self._merged(self._instances, pairs)
        if merged is None and self._adaptive_now:
            conts = [str(args[1]) for args, _, _ in requests]
            items = request_items(self._instances, [str(args[0]) for args, _, _ in requests])
            scores, _ = self.score_items(pairs, items, [len(c.lstrip()) for c in conts],
                                         desc="loglikelihood (sequential MC-ELBO)",
                                         disable_tqdm=disable_tqdm)
        elif merged is None:
            scores = self.score(pairs, desc="loglikelihood (MC-ELBO)", disable_tqdm=disable_tqdm)
        else:
            every, own = merged
            every_score = self.score(every, desc="loglikelihood (MC-ELBO)",
                                     disable_tqdm=disable_tqdm or self.rank != 0, shared=True)
            scores = [every_score[j] for j in own]
        res = []
        for (args, _, _), s in zip(requests, scores):
            self.cache_hook.add_partial("loglikelihood", args, (s, False))
            res.append((s, False))
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        strings = [req.args[0] for req in requests]
        merged = self._merged(requests, strings)
        if merged is not None:  # several processes: every rank's strings, one process's order
            strings, own = merged
            disable_tqdm = disable_tqdm or self.rank != 0
        pairs, owner = _rolling_pairs(strings, self.tok_encode,
                                      self.prefix_token_id, (self._max_length or 10**9) - 1)
        scores = self.score(pairs, desc="loglikelihood_rolling (MC-ELBO)", disable_tqdm=disable_tqdm,
                            shared=merged is not None)
        totals = [0.0] * len(strings)
        for r, s in zip(owner, scores):
            totals[r] += s
        if merged is not None:
            totals = [totals[j] for j in own]
        for req, tot in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, tot)
        return totals

    # ---- generation ----------------------------------------------------------------------------
    def _generate(self):
        if self._generate_fn is None:
            from srclib.diffusion import generate

            self._generate_fn = generate
        return self._generate_fn

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        untils = [_stop_strings(req, self.sampler.temperature) for req in requests]
        prompts = [req.args[0] for req in requests]
        merged = self._merged(requests, list(zip(prompts, untils)))
        if merged is not None:  # several processes: every rank's prompts, one process's order
            prompts, untils = [p for p, _ in merged[0]], [u for _, u in merged[0]]
            disable_tqdm = disable_tqdm or self.rank != 0
        prompts = [self.tok_encode(p) for p in prompts]
        rows = max(1, self.batch_size // (2 if self.cfg > 0 else 1))
        batches = _same_length_batches(prompts, rows)
        if merged is not None:  # one process's batches, every world_size-th of them here
            batches = batches[self._group.rank::self._group.world_size]
        out: list[str] = [""] * len(prompts)
        generate = self._generate()
        done: list[tuple[int, str]] = []
        for L, idx in tqdm(batches, desc="generate_until (diffusion)", disable=disable_tqdm or None):
            ids = torch.tensor([prompts[i] for i in idx], dtype=torch.long, device=self._device)  # (B, L)
            x = generate(self.model, ids, **self.sampler.sampler_kwargs(), mask_id=self.mask_id,
                         adapter=self.adapter,
                         generator=request_generator(self.seed, *(prompts[i] for i in idx)))
            for row, i in enumerate(idx):  # x: (B, L + gen_length)
                out[i] = cut_generation(self.tokenizer, x[row, L:].tolist(), untils[i])
                done.append((i, out[i]))
        if merged is not None:  # the ranks exchange their texts; this rank's requests returned
            for part in self._group.all_gather_object(done):
                for i, text in part:
                    out[i] = text
            out = [out[j] for j in merged[1]]
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out


def dlm_lm(model, tokenizer, adapter, *, batch_size: int, seed: int, sampler: SamplerParams,
           device=None) -> DiffusionLM:
    """DiffusionLM for a loaded model; ``sampler.cfg_scale`` is its starting ``cfg``."""
    return DiffusionLM(model=model, tokenizer=tokenizer, adapter=adapter, batch_size=batch_size,
                       seed=seed, device=device, cfg=sampler.cfg_scale, steps=sampler.steps,
                       gen_length=sampler.gen_length, block_length=sampler.block_length,
                       temperature=sampler.temperature, remasking=sampler.remasking)
