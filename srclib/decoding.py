"""Greedy autoregressive decoding with a KV cache, for the AR sink trajectories (method.md 2).

Works for any causal model whose forward accepts ``input_ids``, ``past_key_values`` and
``use_cache=True`` and returns ``logits`` plus ``past_key_values``: TinyLM (a list of (k, v)
per layer) and transformers' causal LMs (a ``Cache`` object) alike; the cache is opaque here.

Step structure (so that every decoding step has exactly ONE query, the newest token):
  prefill   one forward over prompt positions 0 .. P-2 (skipped when P = 1); ``on_prefill``;
  step tau  one forward of the single token at position P-1+tau over the cache (keys 0 .. P-1+tau);
            its logits give token P+tau (greedy argmax); ``on_step``.
A recorder wrapping the call in ``srclib.attention.record_mass`` therefore sees, at step tau, the
attention of the newest query over all keys so far; and because attention is causal the attention
rows of earlier queries never change, so the full-prefix column mass after step tau is the prefill
mass plus the sum of the newest-query masses of steps 0 .. tau.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import torch

__all__ = ["greedy_decode", "forward_with_cache"]

log = logging.getLogger(__name__)


def _cache_kwarg(model) -> str:
    """transformers >= 5 names the cache argument ``cache``; TinyLM and older code ``past_key_values``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def forward_with_cache(model, ids: torch.Tensor, past: Any = None) -> tuple[torch.Tensor, Any]:
    """One cached forward: (logits (B, T, V), new cache). The shim for TinyLM and HF causal LMs."""
    out = model(input_ids=ids, use_cache=True, **{_cache_kwarg(model): past})
    logits = out.logits if hasattr(out, "logits") else out[0]
    new_past = None
    if isinstance(out, dict):  # transformers' ModelOutput is an OrderedDict
        new_past = out.get("cache", out.get("past_key_values"))
    if new_past is None:
        new_past = getattr(out, "past_key_values", None)
    if new_past is None:
        raise TypeError(
            f"{type(model).__name__} returned no cache with use_cache=True: greedy_decode "
            f"needs a model with a KV cache"
        )
    return logits, new_past


@torch.no_grad()
def greedy_decode(
    model,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    on_step: Callable[[int, torch.Tensor, dict[str, Any]], None] | None = None,
    eos_id: int | None = None,
    on_prefill: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Greedy decoding with a KV cache. prompt_ids (B, P), P >= 1 -> (B, P + n) ids, n <= max_new_tokens.

    on_prefill(prefix_ids (B, P-1)) is called after the prefill forward (not called when P = 1).
    on_step(step, ids, info) is called once per decoding step, after its forward: ``ids`` (B, P+step)
    are the keys the newest query (position P-1+step) attended to; info: ``query_pos`` (int),
    ``next_token`` ((B,) the greedy token for position P+step), ``x`` (ids after appending it).
    eos_id: a row that produced eos keeps producing eos; decoding stops when every row has.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must be (B, P) with P >= 1, got shape {tuple(prompt_ids.shape)}")
    B, P = prompt_ids.shape
    ids = prompt_ids
    past = None
    if P > 1:
        _, past = forward_with_cache(model, ids[:, :-1])
        if on_prefill is not None:
            on_prefill(ids[:, :-1].clone())
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        logits, past = forward_with_cache(model, ids[:, -1:], past)  # (B, 1, V)
        nxt = logits[:, -1].argmax(dim=-1)  # (B,)
        if eos_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, int(eos_id)), nxt)
        seen = ids
        ids = torch.cat([ids, nxt[:, None]], dim=1)  # (B, P + step + 1)
        if on_step is not None:
            on_step(step, seen, dict(query_pos=P - 1 + step, next_token=nxt.clone(), x=ids))
        if eos_id is not None:
            finished |= nxt == int(eos_id)
            if bool(finished.all()):
                break
    return ids
