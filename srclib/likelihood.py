"""Likelihoods for masked diffusion LMs: LLaDA's Monte-Carlo ELBO (method.md section 6).

For a (prefix, target) pair with L = len(target) the estimator draws, for every group of
``b = batch_size`` rows, one ``k ~ U{1..L}`` and masks in row ``j`` (j = 0..b-1)

    l_j = ((round(k + j * L / b) - 1) mod L) + 1

target tokens chosen uniformly at random among the target positions (the prefix is never
masked). The row loss is ``(L / l_j) * sum over masked positions of CE``; the estimate of
``log p(target | prefix)`` is minus the mean row loss over all ``mc_num`` rows
(``mc_num / b`` groups). This mirrors ``get_log_likelihood`` of LLaDA's ``eval_llada.py``:
``round`` is round-half-to-even (``torch.round``), evaluated on ``(k * b + j * L) / b`` in
float64 so that exact halves are exact; the random subset is the ``l_j`` positions with the
smallest of ``L`` i.i.d. uniform keys (a uniformly random subset, like ``randperm``).

Classifier-free guidance (cfg = w > 0): ``logits = u + (w + 1) * (c - u)`` where ``c`` are the
logits of the noised sequence and ``u`` those of the same sequence with the whole prefix masked
(position 0 stays when ``keep_first``).

``logits_fn`` maps token ids ``(B, T)`` to ALIGNED logits ``(B, T, V)`` (row ``i`` predicts token
``i``; a shifted model's ``Adapter.logits`` already aligns). It is called as ``logits_fn(ids)``
when every row of a forward pass has the same length and as ``logits_fn(ids, attention_mask)``
(``attention_mask`` ``(B, T)``, 1 = real token, right padding) otherwise; :func:`model_logits_fn`
builds one from a model and its adapter.

``keep_first``: position 0 is context, never masked and never scored. Shifted models (Dream,
tiny-dlm) need it: their aligned logits at position 0 predict nothing.

Perplexity on held-out windows (one definition, used by the train and the evaluate stages):
for windows ``x`` (each of length T) the scored tokens are all positions, except position 0 when
``keep_first``; the ELBO bound of each window's NLL is ``-elbo_loglikelihood(prefix=x[:1] or [],
target=the scored tokens, mc_num, batch_size=mc_num)`` (all ``mc_num`` rows stratified together)
and

    elbo_perplexity = exp( sum_windows NLL_bound / sum_windows n_scored_tokens ).

Because the ELBO bounds ``-log p`` from above, this is an upper bound (in expectation) on the
model's true perplexity. :func:`causal_perplexity` is the AR counterpart (true perplexity,
teacher forcing, tokens 1..T-1 of every window scored given the preceding ones), so with
``keep_first=True`` both score the same tokens.

Randomness: every draw comes from a ``torch.Generator``. With one shared generator the draws are
made request by request, in request order, before any forward pass, so a batched call consumes
exactly the draws that the same requests would consume one after another unbatched; with one
generator per request, results do not even depend on the order or the company of a request.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "LogitsFn",
    "model_logits_fn",
    "mask_counts",
    "elbo_loglikelihood",
    "elbo_loglikelihood_batch",
    "elbo_window_nll",
    "elbo_perplexity",
    "causal_window_nll",
    "causal_perplexity",
]

log = logging.getLogger(__name__)

LogitsFn = Callable[..., torch.Tensor]
Ids = Sequence[int] | torch.Tensor


def model_logits_fn(model: torch.nn.Module, adapter) -> LogitsFn:
    """``logits_fn`` for a loaded model: ``adapter.logits(model, ids, attention_mask)`` on the
    model's own device, without gradients."""

    device = next(model.parameters()).device

    @torch.no_grad()
    def fn(ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        return adapter.logits(model, ids.to(device), attention_mask)

    return fn


# ---- the stratified mask counts ----------------------------------------------------------------
def mask_counts(k: torch.Tensor | int, L: int, b: int) -> torch.Tensor:
    """LLaDA's stratified numbers of masked tokens: l_j = ((round(k + j*L/b) - 1) mod L) + 1.

    k: (n,) or scalar int in 1..L. Returns int64 (n, b) (or (b,) for a scalar k), each in 1..L.
    """
    if L < 1 or b < 1:
        raise ValueError(f"mask_counts needs L >= 1 and b >= 1, got L={L}, b={b}")
    k_t = torch.as_tensor(k, dtype=torch.int64)
    scalar = k_t.dim() == 0
    k_t = k_t.reshape(-1, 1)  # (n, 1)
    j = torch.arange(b, dtype=torch.int64)  # (b,)
    # (k*b + j*L) / b is exact in float64 at every half, so round-half-even is LLaDA's torch.round
    x = torch.round((k_t * b + j * L).to(torch.float64) / b).to(torch.int64)  # (n, b)
    l = ((x - 1) % L) + 1
    return l[0] if scalar else l


# ---- request plans -----------------------------------------------------------------------------
@dataclass
class _Plan:
    """The MC draws of one (prefix, target) request."""

    ids: torch.Tensor  # (T,) int64, prefix + target
    prefix_len: int
    masked: torch.Tensor  # (R, L) bool, R = mc_num rows
    weight: torch.Tensor  # (R,) float64, L / l_j


def _as_ids(x: Ids) -> torch.Tensor:
    """1-D int64 ids on the CPU (where the rows are assembled)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.int64).reshape(-1)
    return torch.as_tensor(x, dtype=torch.int64).reshape(-1)


def _check_mc(mc_num: int, batch_size: int) -> None:
    if not isinstance(mc_num, int) or mc_num < 1:
        raise ValueError(f"mc_num must be a positive int, got {mc_num!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if mc_num % batch_size:
        raise ValueError(
            f"mc_num ({mc_num}) must be a multiple of batch_size ({batch_size}): the estimator draws "
            f"mc_num / batch_size groups of batch_size stratified rows"
        )


def _plan(prefix: Ids, target: Ids, mc_num: int, b: int, keep_first: bool,
          generator: torch.Generator | None) -> _Plan:
    p, t = _as_ids(prefix), _as_ids(target)
    L = t.numel()
    if L == 0:
        raise ValueError("target must hold at least one token")
    if keep_first and p.numel() == 0:
        raise ValueError(
            "keep_first=True needs a non-empty prefix: position 0 is never masked, so it cannot "
            "be a target token (prepend BOS)"
        )
    n_iter = mc_num // b
    k = torch.randint(1, L + 1, (n_iter,), generator=generator)  # (n_iter,)
    l = mask_counts(k, L, b).reshape(-1)  # (R,)
    keys = torch.rand(mc_num, L, generator=generator)  # (R, L)
    rank = keys.argsort(dim=1).argsort(dim=1)  # (R, L) rank of each key in its row
    masked = rank < l[:, None]  # (R, L): exactly l_j uniformly random positions
    return _Plan(torch.cat([p, t]), p.numel(), masked, L / l.to(torch.float64))


def _call(logits_fn: LogitsFn, ids: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
    return logits_fn(ids) if attn is None else logits_fn(ids, attn)


def _run_plans(
    logits_fn: LogitsFn,
    plans: list[_Plan],
    *,
    mask_id: int,
    cfg: float,
    keep_first: bool,
    pad_id: int,
    forward_batch: int,
) -> list[torch.Tensor]:
    """Weighted masked-CE loss of every row of every plan: list of (R_i,) float64 tensors."""
    if cfg < 0:
        raise ValueError(f"cfg must be >= 0, got {cfg}")
    if forward_batch < 1:
        raise ValueError(f"forward_batch must be >= 1, got {forward_batch}")
    losses = [torch.zeros(pl.masked.shape[0], dtype=torch.float64) for pl in plans]
    # rows (plan, row) sorted by length, longest first: little padding, stable order
    order = sorted(range(len(plans)), key=lambda i: (-plans[i].ids.numel(), i))
    rows = [(i, r) for i in order for r in range(plans[i].masked.shape[0])]
    for s in range(0, len(rows), forward_batch):
        chunk = rows[s:s + forward_batch]
        lens = [plans[i].ids.numel() for i, _ in chunk]
        B, T = len(chunk), max(lens)
        ids = torch.full((B, T), pad_id, dtype=torch.int64)  # (B, T) clean, right padded
        is_masked = torch.zeros(B, T, dtype=torch.bool)  # (B, T)
        is_prefix = torch.zeros(B, T, dtype=torch.bool)
        for bi, (i, r) in enumerate(chunk):
            pl = plans[i]
            n, P = pl.ids.numel(), pl.prefix_len
            ids[bi, :n] = pl.ids
            is_masked[bi, P:n] = pl.masked[r]
            is_prefix[bi, int(keep_first):P] = True
        noised = torch.where(is_masked, mask_id, ids)
        padded = any(n != T for n in lens)
        attn = None
        if padded:
            attn = (torch.arange(T)[None, :] < torch.tensor(lens)[:, None]).to(torch.int64)
        x = noised
        if cfg > 0:
            uncond = torch.where(is_prefix, mask_id, noised)  # prompt fully masked
            x = torch.cat([noised, uncond])  # (2B, T)
            if attn is not None:
                attn = torch.cat([attn, attn])
        logits = _call(logits_fn, x, attn)  # (B or 2B, T, V)
        row_idx, pos_idx = is_masked.nonzero(as_tuple=True)  # (N,), (N,)
        r_d, p_d = row_idx.to(logits.device), pos_idx.to(logits.device)
        sel = logits[r_d, p_d].float()  # (N, V)
        if cfg > 0:
            un = logits[r_d + B, p_d].float()  # (N, V)
            sel = un + (cfg + 1.0) * (sel - un)
        ce = F.cross_entropy(sel, ids[row_idx, pos_idx].to(logits.device), reduction="none")  # (N,)
        per_row = torch.zeros(B, dtype=torch.float64).index_add_(0, row_idx, ce.double().cpu())
        for bi, (i, r) in enumerate(chunk):
            losses[i][r] = per_row[bi] * plans[i].weight[r]
    return losses


def _generators(generator, n: int) -> list[torch.Generator | None]:
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * n
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for {n} requests; pass one or one per request")
    return gens


# ---- public estimators -------------------------------------------------------------------------
def elbo_loglikelihood_batch(
    logits_fn: LogitsFn,
    requests: Sequence[tuple[Ids, Ids]],
    *,
    mask_id: int,
    mc_num: int = 128,
    batch_size: int = 8,
    cfg: float = 0.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    pad_id: int | None = None,
    keep_first: bool = False,
    forward_batch: int | None = None,
) -> list[float]:
    """MC-ELBO estimates of log p(target | prefix) for many (prefix, target) requests at once.

    Rows of all requests are packed into forward passes of ``forward_batch`` rows (default
    ``batch_size``; doubled inside the pass when cfg > 0), longest first, right padded with
    ``pad_id`` (default ``mask_id``) under an attention mask. ``generator``: one shared generator
    (draws made request by request, in order; identical to calling :func:`elbo_loglikelihood`
    on each request in turn) or one generator per request. Inputs are built on the CPU;
    ``logits_fn`` moves them where the model lives (see :func:`model_logits_fn`).
    """
    _check_mc(mc_num, batch_size)
    if mask_id is None:
        raise ValueError("mask_id is required (the model's [MASK] token id)")
    gens = _generators(generator, len(requests))
    plans = [_plan(p, t, mc_num, batch_size, keep_first, g) for (p, t), g in zip(requests, gens)]
    losses = _run_plans(
        logits_fn, plans, mask_id=int(mask_id), cfg=float(cfg), keep_first=keep_first,
        pad_id=int(mask_id if pad_id is None else pad_id),
        forward_batch=forward_batch or batch_size,
    )
    return [-float(lo.mean()) for lo in losses]


def elbo_loglikelihood(
    logits_fn: LogitsFn,
    prefix: Ids,
    target: Ids,
    *,
    mask_id: int,
    mc_num: int = 128,
    batch_size: int = 8,
    cfg: float = 0.0,
    generator: torch.Generator | None = None,
    keep_first: bool = False,
) -> float:
    """LLaDA's MC-ELBO estimate of log p(target | prefix): one forward pass per group of
    ``batch_size`` rows, ``mc_num / batch_size`` passes. See the module docstring."""
    return elbo_loglikelihood_batch(
        logits_fn, [(prefix, target)], mask_id=mask_id, mc_num=mc_num, batch_size=batch_size,
        cfg=cfg, generator=generator, keep_first=keep_first,
    )[0]


def _window_list(ids_windows) -> list[torch.Tensor]:
    if isinstance(ids_windows, torch.Tensor):
        if ids_windows.dim() != 2:
            raise ValueError(f"ids_windows must be (N, T), got shape {tuple(ids_windows.shape)}")
        return [w for w in ids_windows.detach().cpu().to(torch.int64)]
    return [_as_ids(w) for w in ids_windows]


def elbo_window_nll(
    logits_fn: LogitsFn,
    ids_windows: torch.Tensor | Sequence[Ids],
    *,
    mask_id: int,
    mc_num: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    keep_first: bool = False,
    batch_size: int | None = None,
    forward_batch: int = 32,
    pad_id: int | None = None,
) -> tuple[list[float], list[int]]:
    """Per-window ELBO bound on the NLL (nats) and number of scored tokens (module docstring).

    batch_size: stratification group (default ``mc_num``: all rows of a window stratified).
    """
    windows = _window_list(ids_windows)
    s = int(keep_first)
    for w in windows:
        if w.numel() <= s:
            raise ValueError(f"every window needs more than {s} token(s), got {w.numel()}")
    reqs = [(w[:s], w[s:]) for w in windows]
    ll = elbo_loglikelihood_batch(
        logits_fn, reqs, mask_id=mask_id, mc_num=mc_num, batch_size=batch_size or mc_num,
        generator=generator, pad_id=pad_id, keep_first=keep_first, forward_batch=forward_batch,
    )
    return [-x for x in ll], [w.numel() - s for w in windows]


def elbo_perplexity(
    logits_fn: LogitsFn,
    ids_windows: torch.Tensor | Sequence[Ids],
    *,
    mask_id: int,
    mc_num: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    keep_first: bool = False,
    batch_size: int | None = None,
    forward_batch: int = 32,
    pad_id: int | None = None,
) -> float:
    """exp(sum of per-window ELBO NLL bounds / number of scored tokens); see the module docstring.

    Scored tokens: every position of every window, except position 0 when ``keep_first``.
    """
    nll, n = elbo_window_nll(
        logits_fn, ids_windows, mask_id=mask_id, mc_num=mc_num, generator=generator,
        keep_first=keep_first, batch_size=batch_size, forward_batch=forward_batch, pad_id=pad_id,
    )
    return math.exp(math.fsum(nll) / sum(n))


def causal_window_nll(
    logits_fn: LogitsFn,
    ids_windows: torch.Tensor | Sequence[Ids],
    *,
    forward_batch: int = 32,
    pad_id: int = 0,
) -> tuple[list[float], list[int]]:
    """Exact teacher-forced NLL (nats) of tokens 1..T-1 of every window under a causal LM.

    ``logits_fn`` returns the causal model's own logits (row i predicts token i+1).
    """
    windows = _window_list(ids_windows)
    nll: list[float] = []
    for s in range(0, len(windows), forward_batch):
        chunk = windows[s:s + forward_batch]
        lens = [w.numel() for w in chunk]
        if min(lens) < 2:
            raise ValueError("every window needs at least 2 tokens for a causal perplexity")
        T = max(lens)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.int64)  # (B, T)
        for bi, w in enumerate(chunk):
            ids[bi, : w.numel()] = w
        attn = None
        if any(n != T for n in lens):
            attn = (torch.arange(T)[None, :] < torch.tensor(lens)[:, None]).to(torch.int64)
        logits = _call(logits_fn, ids, attn).float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
        tok = logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0].double().cpu()  # (B, T-1)
        for bi, n in enumerate(lens):
            nll.append(-float(tok[bi, : n - 1].sum()))
    return nll, [w.numel() - 1 for w in windows]


def causal_perplexity(
    logits_fn: LogitsFn,
    ids_windows: torch.Tensor | Sequence[Ids],
    *,
    forward_batch: int = 32,
    pad_id: int = 0,
) -> float:
    """True perplexity of a causal LM on tokens 1..T-1 of every window (given the preceding ones)."""
    nll, n = causal_window_nll(logits_fn, ids_windows, forward_batch=forward_batch, pad_id=pad_id)
    return math.exp(math.fsum(nll) / sum(n))
