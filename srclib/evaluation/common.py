"""What the evaluation wrappers and the perplexity share: the lm-eval seed, the sampler of
generation tasks, per-request generators, a model's context length, and the checks that keep a
wrong checkpoint from giving a number (non-finite weights or scores, weights that disagree with a
pruned folder's masks)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from srclib.models.base import MASKS_FILE  # noqa: F401 (re-exported: evaluate reads it)
from srclib.params import SamplerParams

__all__ = ["SEED", "default_sampler", "request_generator", "model_max_length", "sampler_record", "MASKS_FILE",
           "CheckpointError", "checkpoint_name", "first_nonfinite", "check_finite_weights",
           "check_finite_scores", "check_masks", "check_pruned_folder"]

# lm-eval's own default seed (simple_evaluate's numpy / torch / few-shot seeds): the seed of every
# evaluation entry point that is not given one.
SEED = 1234



@functools.cache
def default_sampler() -> SamplerParams:
    """The DLM sampler of generation tasks (e.g. gsm8k) for an entry point not given one (lm-eval's
    ``srclib-dlm`` model_args, :mod:`srclib.evaluation.harness`): params.yaml's ``evaluate.sampler``,
    its one home (LLaDA's generate.py example). Its cfg_scale is replaced by each task's ``cfg``
    (DiffusionLM.configure), one guidance value for scoring and generation alike."""
    from srclib import params

    return params.load().evaluate.sampler


def request_generator(seed: int, *parts: Sequence[int]) -> torch.Generator:
    """A generator seeded by (seed, token ids): a request's MC draws do not depend on the batch,
    the order or the other tasks of a run."""
    h = hashlib.sha256(str(int(seed)).encode())
    for p in parts:
        h.update(b"|" + ",".join(map(str, p)).encode())
    return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") & (2**63 - 1))


def model_max_length(model) -> int | None:
    """The context length a model's config declares (None when it declares none)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def sampler_record(sampler: SamplerParams) -> dict[str, Any]:
    """The sampler's settings as the metrics record them: without ``cfg_scale``, which generation
    takes from each task's ``cfg`` (recorded with the task)."""
    return {k: v for k, v in dataclasses.asdict(sampler).items() if k != "cfg_scale"}


# ---- checks of what is about to be scored: a wrong checkpoint must never give a number -------------
# without importing srclib.pruning (the evaluate stage's import closure stays narrow)


class CheckpointError(ValueError):
    """A checkpoint that cannot give a true score: non-finite weights or scores, weights that
    disagree with the folder's masks, a folder whose marker names another instance. The message
    names the checkpoint and the tensor or file at fault."""


def checkpoint_name(model, adapter=None) -> str:
    """What a message calls a loaded model: the folder or hub id it was loaded from, else its key."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return str(name) or str(getattr(adapter, "key", "") or type(model).__name__)


def first_nonfinite(model) -> tuple[str, int, int] | None:
    """(name, non-finite count, numel) of the first parameter of ``model`` (in named_parameters
    order) holding NaN or Inf, or None when every parameter is finite. One pass over the weights."""
    for name, p in model.named_parameters():
        finite = torch.isfinite(p.detach())
        if not bool(finite.all()):
            return name, int(finite.numel() - finite.sum()), int(p.numel())
    return None


def check_finite_weights(model, where: str) -> None:
    """Refuse a model with NaN / Inf in any parameter (every logit downstream would be NaN and
    lm-eval's argmax would still give an accuracy), naming ``where`` and the first such tensor."""
    bad = first_nonfinite(model)
    if bad is not None:
        name, n, numel = bad
        raise CheckpointError(f"{where}: tensor {name!r} holds {n} NaN/Inf value(s) of {numel}; a "
                              f"checkpoint with non-finite weights gives no finite log-likelihood "
                              f"(rebuild it: rerun the stage that wrote it)")


def check_finite_scores(values: Sequence[float], model, where: str, what: str) -> None:
    """Refuse non-finite log-likelihoods / NLLs (``what``: e.g. "MC-ELBO log-likelihood of
    request(s)"), naming ``where``, the first offending index and the first non-finite tensor of
    ``model`` (or saying that every weight is finite: an overflow in the model's dtype)."""
    bad = [i for i, v in enumerate(values) if not math.isfinite(float(v))]
    if not bad:
        return
    t = first_nonfinite(model)
    cause = (f"first tensor with non-finite values: {t[0]!r} ({t[1]} of {t[2]})" if t is not None
             else "every weight is finite: the logits overflow in the model's dtype?")
    raise CheckpointError(f"{where}: {what} {bad[:5]} not finite ({len(bad)} of {len(values)}); {cause}")


def check_masks(model, folder: str | os.PathLike, where: str | None = None) -> int:
    """Check that ``model`` (loaded from the pruned ``folder``) is zero wherever ``folder``'s
    masks.safetensors says pruned; return the number of masked tensors checked.

    Raises CheckpointError naming the folder and the first tensor (in sorted order) that the
    masks name but the model lacks, whose shape differs, or that holds a non-zero weight at a
    pruned position (e.g. dense weights copied into a pruned folder). One tensor at a time.
    """
    from safetensors import safe_open

    folder = Path(folder)
    where = where or str(folder)
    path = folder / MASKS_FILE
    modules = dict(model.named_modules())
    with safe_open(str(path), framework="pt") as f:
        keys = sorted(f.keys())
        for key in keys:
            weight = getattr(modules.get(key), "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise CheckpointError(f"{where}: {MASKS_FILE} names layer {key!r}, which the model has "
                                      f"not (masks of another model?); rerun prune for this folder")
            mask = f.get_tensor(key)
            if tuple(mask.shape) != tuple(weight.shape):
                raise CheckpointError(f"{where}: {MASKS_FILE} mask {key!r} has shape {tuple(mask.shape)}, "
                                      f"the weight {tuple(weight.shape)}; rerun prune for this folder")
            pruned = mask.to(device=weight.device, dtype=torch.bool)
            n = int(torch.count_nonzero((weight.detach() != 0) & pruned))
            if n:
                raise CheckpointError(
                    f"{where}: tensor '{key}.weight' disagrees with {MASKS_FILE}: {n} of "
                    f"{int(pruned.sum())} weights the mask marks pruned are not zero (dense or other "
                    f"weights copied into a pruned folder?); rerun prune for this folder")
    return len(keys)


def check_pruned_folder(model, folder: str | os.PathLike, where: str | None = None) -> None:
    """A loaded checkpoint folder before it is scored: finite weights, and for an unstructured
    pruned folder (its marker has ``pruned`` and no ``structure``) weights that agree with its
    masks (:func:`check_masks`; a missing masks file is refused). Folders without a marker
    entry ``pruned`` (dense checkpoints) are checked for finiteness only."""
    from srclib.models.base import MARKER, read_marker

    folder = Path(folder)
    where = where or str(folder)
    check_finite_weights(model, where)
    if not (folder / MARKER).is_file():
        return
    info = read_marker(folder)
    if "pruned" in info and "structure" not in info:
        if not (folder / MASKS_FILE).is_file():
            raise CheckpointError(f"{where}: its marker says pruned but {MASKS_FILE} is missing, so its "
                                  f"weights cannot be checked; rerun prune for this folder")
        check_masks(model, folder, where)
