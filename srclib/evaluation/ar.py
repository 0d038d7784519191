"""Causal (AR) models in lm-eval: its own ``hf`` model (``HFLM``), prepending BOS as DiffusionLM
does and decoding greedily with a KV cache (srclib.decoding) for models without ``generate``."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from tqdm.auto import tqdm

from srclib import devices
from srclib.decoding import forward_with_cache
from srclib.evaluation.common import check_finite_scores, checkpoint_name, model_max_length
from srclib.params import SamplerParams

__all__ = ["ar_lm", "shared_context_loglikelihoods"]


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
            pad = self.tokenizer.pad_token_id
            return _padded_batch(encs, pad if pad is not None else self.eot_token_id, padding_side)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            """HFLM's log-likelihoods, refused when not finite (NaN logits would still rank).

            Requests that share their context tokens (the choices of one multiple-choice item)
            are scored with one forward of the context and one batched forward of the
            continuations over its KV cache (:func:`shared_context_loglikelihoods`): the same
            numbers as HFLM's one row per request, up to float rounding, at about 1/k of the
            context's cost for k choices. The rest (single requests, rows HFLM truncates, models
            without a cache) go through HFLM unchanged."""
            shared = _shared_context_groups(requests, self.max_length)
            res: list = [None] * len(requests)
            if shared and _has_cache(self.model):
                _score_shared_contexts(self, requests, shared, res, disable_tqdm)
            rest = [i for i, r in enumerate(res) if r is None]
            if rest:
                out = super()._loglikelihood_tokens([requests[i] for i in rest], disable_tqdm=disable_tqdm,
                                                    override_bs=override_bs)
                for i, answer in zip(rest, out, strict=True):
                    res[i] = answer
            check_finite_scores([ll for ll, _ in res], self.model, checkpoint_name(self.model),
                                "exact log-likelihood of request(s)")
            return res

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            if hasattr(self.model, "generate"):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            return _greedy_generate(self.model, context, max_length, generation_kwargs.get("attention_mask"),
                                    self.tokenizer.eos_token_id)

    return SrclibHFLM


def _padded_batch(encs: list[list[int]], pad: int, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids padded with ``pad`` on ``padding_side`` ("left" or else right) and their 0/1
    attention mask, T the longest encoding."""
    width = max(len(e) for e in encs)
    ids = torch.full((len(encs), width), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(encs), width), dtype=torch.long)
    for i, e in enumerate(encs):
        if padding_side == "left":
            ids[i, width - len(e):], mask[i, width - len(e):] = torch.tensor(e), 1
        else:
            ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    return ids, mask


def _shared_context_groups(requests, max_length: int) -> list[list[int]]:
    """Indices of the lm-eval requests (key, context tokens, continuation tokens) that share their
    context, per context with more than one request, where no row exceeds ``max_length`` + 1 tokens."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (_, ctx, _cont) in enumerate(requests):
        groups.setdefault(tuple(ctx), []).append(i)
    return [idx for ctx, idx in groups.items()
            if len(idx) > 1 and all(len(ctx) + len(requests[i][2]) <= max_length + 1 for i in idx)]


def _score_shared_contexts(lm, requests, shared: list[list[int]], res: list, disable_tqdm: bool) -> None:
    """Fills ``res[i]`` for the requests of each ``shared`` group: one forward of the context, one batched
    forward of the continuations over its KV cache (shared_context_loglikelihoods); ``lm``: the HFLM."""
    for idx in tqdm(shared, disable=disable_tqdm or lm.rank != 0,
                    desc="Scoring choices over a shared context"):
        ctx = requests[idx[0]][1]
        answers = shared_context_loglikelihoods(
            lm.model, ctx, [requests[i][2] for i in idx], device=lm.device,
            softmax_dtype=getattr(lm, "softmax_dtype", None) or torch.float32)
        for i, answer in zip(idx, answers):
            res[i] = answer
            if requests[i][0] is not None:
                lm.cache_hook.add_partial("loglikelihood", requests[i][0], answer)


def _greedy_generate(model, context: torch.Tensor, max_length, attn: torch.Tensor | None,
                     eos: int | None) -> torch.Tensor:
    """Greedy KV-cache continuations (srclib.decoding) of the (B, T) ``context`` rows up to ``max_length``
    tokens, one row at a time (its left padding dropped), right-padded with ``eos`` (or 0)."""
    from srclib.decoding import greedy_decode

    new = max(1, int(max_length) - context.shape[1])
    rows = []
    for i in range(context.shape[0]):  # one row at a time: no left padding inside
        real = context[i] if attn is None else context[i][attn[i].bool()]
        out = greedy_decode(model, real[None], max_new_tokens=new, eos_id=eos)
        rows.append(torch.cat([context[i], out[0, real.numel():]]))
    width = max(r.numel() for r in rows)
    pad = eos if eos is not None else 0
    return torch.stack([torch.cat([r, r.new_full((width - r.numel(),), pad)]) for r in rows])


def _has_cache(model) -> bool:
    """Whether ``model``'s forward takes a KV cache (TinyLM, transformers' causal LMs)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "use_cache" in params and ("past_key_values" in params or "cache" in params)


def _repeat_cache(past: Any, n: int) -> Any:
    """A KV cache of batch 1 repeated to batch ``n``: TinyLM's list of (k, v) per layer or a
    transformers ``Cache`` (its own ``batch_repeat_interleave``, in place)."""
    if isinstance(past, (list, tuple)):
        return [tuple(t.expand(n, *t.shape[1:]) for t in layer) for layer in past]
    if hasattr(past, "batch_repeat_interleave"):
        past.batch_repeat_interleave(n)
        return past
    raise TypeError(f"cannot repeat a KV cache of type {type(past).__name__}")


@torch.no_grad()
def shared_context_loglikelihoods(model, context: Sequence[int], continuations: Sequence[Sequence[int]], *,
                                  device=None, softmax_dtype=torch.float32) -> list[tuple[float, bool]]:
    """(log p(continuation | context), greedy) for each continuation, as HFLM computes them, with
    the context run once: a forward of ``context`` gives the cache and the logits that predict
    each continuation's first token; one forward of every continuation but its last token over
    the repeated cache (right-padded: causal attention keeps a row's pads out of its own
    positions) gives the rest. ``context`` and every continuation are non-empty."""
    if not context or not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("shared_context_loglikelihoods needs a non-empty context and continuations")
    device = device if device is not None else next(model.parameters()).device
    ctx = torch.tensor([list(context)], dtype=torch.long, device=device)  # (1, C)
    logits0, past = forward_with_cache(model, ctx)
    first = F.log_softmax(logits0[:, -1], dim=-1, dtype=softmax_dtype)[0]  # (V,)
    width = max(len(c) for c in continuations) - 1
    rest = None
    if width > 0:
        pad = continuations[0][0]
        rows = torch.tensor([list(c[:-1]) + [pad] * (width - len(c) + 1) for c in continuations],
                            dtype=torch.long, device=device)  # (k, width)
        logits, _ = forward_with_cache(model, rows, _repeat_cache(past, len(continuations)))
        rest = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)  # (k, width, V)
    out = []
    for j, cont in enumerate(continuations):
        lp = first[None] if rest is None else torch.cat([first[None], rest[j, : len(cont) - 1]])  # (n, V)
        target = torch.tensor(list(cont), dtype=torch.long, device=lp.device)
        greedy = bool((lp.argmax(-1) == target).all())
        out.append((float(lp.gather(1, target[:, None]).sum()), greedy))
    return out


def ar_lm(model, tokenizer, adapter, *, batch_size: int, seed: int, sampler: SamplerParams,
          device=None) -> LM:
    """lm-eval's HFLM (with the additions above) for a loaded causal model. ``seed`` and
    ``sampler`` are the DLM's settings: HFLM decodes greedily and draws nothing."""
    if device is not None:
        model = model.to(devices.for_model(device, model))
    bos = getattr(tokenizer, "bos_token_id", None)
    return _hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                         add_bos_token=bos is not None, max_length=model_max_length(model))
