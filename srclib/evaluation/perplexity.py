"""Held-out perplexity: the first windows of the validation corpus, scored by the MC-ELBO (DLMs:
an upper bound in expectation) or exactly (causal models), on the same windows and tokens."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import torch

from srclib import likelihood
from srclib.evaluation.common import SEED, check_finite_scores, checkpoint_name, request_generator
from srclib.params import PplParams

__all__ = ["heldout_windows", "heldout_perplexity", "PERPLEXITY"]

log = logging.getLogger(__name__)


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


def _elbo_ppl(model, tok, adapter, windows, settings: PplParams, seed: int, batch_size: int):
    fn = likelihood.model_logits_fn(model, adapter)
    gens = [request_generator(seed, w.tolist()) for w in windows]
    nll, n = likelihood.elbo_window_nll(
        fn, windows, mask_id=adapter.mask_id(model), mc_num=settings.mc_num, generator=gens,
        keep_first=True, forward_batch=batch_size,
    )
    return "elbo", nll, n


def _causal_ppl(model, tok, adapter, windows, settings: PplParams, seed: int, batch_size: int):
    fn = likelihood.model_logits_fn(model, adapter)
    nll, n = likelihood.causal_window_nll(fn, windows, forward_batch=batch_size)
    return "exact", nll, n


# adapter.causal -> perplexity: DLMs an ELBO upper bound, AR models the true perplexity
PERPLEXITY: dict[bool, Callable] = {False: _elbo_ppl, True: _causal_ppl}


def heldout_perplexity(model, tokenizer, adapter, texts: Sequence[str], settings: PplParams,
                       *, seed: int = SEED, batch_size: int = 32, source: str | None = None) -> dict[str, Any]:
    """Perplexity on held-out windows: tokens 1..T-1 of each window, given token 0 (BOS).

    DLMs: exp of the MC-ELBO bound (``kind: elbo``, an upper bound in expectation); causal
    models: the true perplexity (``kind: exact``). Same windows, same scored tokens.
    ``window_nll_per_token`` / ``window_tokens``: the per-window values (the evaluate stage keeps
    them in metrics/units, out of the DVC metrics).
    Raises srclib.evaluation.common.CheckpointError naming ``source`` (default: the folder or key
    the model was loaded from) and the first non-finite tensor when a window's NLL is NaN / Inf.
    """
    windows = heldout_windows(texts, tokenizer, settings.seq_len, settings.n_windows)
    kind, nll, n = PERPLEXITY[bool(adapter.causal)](model, tokenizer, adapter, windows, settings,
                                                    seed, batch_size)
    check_finite_scores([float(x) for x in nll], model, source or checkpoint_name(model, adapter),
                        "held-out NLL of window(s)")
    total, tokens = math.fsum(nll), sum(n)
    return {
        "kind": kind,
        "ppl": math.exp(total / tokens),
        "nll_per_token": total / tokens,
        "n_windows": int(windows.shape[0]),
        "n_tokens": int(tokens),
        "seq_len": settings.seq_len,
        "mc_num": settings.mc_num if kind == "elbo" else None,
        # unit-level values (srclib.stats): nats per scored token of every window, in window order;
        # the MC-ELBO draws of a window come from a generator seeded by (seed, its tokens), so every
        # checkpoint of a model sees the same t and masks (common random numbers)
        "window_nll_per_token": [float(x) / int(k) for x, k in zip(nll, n)],
        "window_tokens": [int(k) for k in n],
    }

