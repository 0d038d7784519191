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

Common random numbers and sequential stopping (opt-in; :func:`elbo_rank_adaptive`, used by
``srclib-dlm`` with ``mc_adaptive=true``): multiple-choice scoring needs only the ranking of the
choices of one item. The choices of an item then share their draws: per group of ``b`` rows one
``u ~ U(0, 1)`` (float64) gives every choice ``k = floor(u * L) + 1`` (the same quantile of
``U{1..L}``: the same ``t`` per row whatever ``L``), and per row one key vector of ``L_max``
uniforms gives choice ``i`` its masked set from the first ``L_i`` keys (:func:`crn_group`). Choices
of the same length thus get the same ``l_j`` and the same masked positions, row by row; choices of
other lengths share ``u`` (the masking ratio) and the keys of their common positions. Rows are drawn
in groups of ``b`` until the leading choice beats every other by ``z`` standard errors of the paired
row differences (:func:`leader_resolved`), at least ``mc_min`` and at most ``mc_num`` rows. The
default estimator above is untouched by this.

Randomness: every draw comes from a ``torch.Generator``. With one shared generator the draws are
made request by request, in request order, before any forward pass, so a batched call consumes
exactly the draws that the same requests would consume one after another unbatched; with one
generator per request, results do not even depend on the order or the company of a request.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "LogitsFn",
    "model_logits_fn",
    "mask_counts",
    "elbo_loglikelihood",
    "elbo_loglikelihood_batch",
    "crn_group",
    "leader_resolved",
    "elbo_rank_adaptive",
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
    counts = ((x - 1) % L) + 1
    return counts[0] if scalar else counts


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
    counts = mask_counts(k, L, b).reshape(-1)  # (R,)
    keys = torch.rand(mc_num, L, generator=generator)  # (R, L)
    rank = keys.argsort(dim=1).argsort(dim=1)  # (R, L) rank of each key in its row
    masked = rank < counts[:, None]  # (R, L): exactly l_j uniformly random positions
    return _Plan(torch.cat([p, t]), p.numel(), masked, L / counts.to(torch.float64))


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
    mc_num: int,
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
    mc_num: int,
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


# ---- common random numbers across the choices of one item, sequential stopping ------------------
def crn_group(requests: Sequence[tuple[Ids, Ids]], b: int, keep_first: bool,
              generator: torch.Generator | None) -> list[_Plan]:
    """One group of ``b`` stratified rows for every (prefix, target) request of one item, drawn with
    common random numbers (module docstring): one float64 ``u`` for the group, then one ``(b, L_max)``
    block of uniform keys; request ``i`` (target length ``L_i``) gets ``k = min(floor(u * L_i),
    L_i - 1) + 1``, ``l = mask_counts(k, L_i, b)`` and masks the ``l_j`` positions with the smallest
    of the first ``L_i`` keys of row ``j``. Same-length targets get identical masks."""
    pairs = [(_as_ids(p), _as_ids(t)) for p, t in requests]
    for p, t in pairs:
        if t.numel() == 0:
            raise ValueError("target must hold at least one token")
        if keep_first and p.numel() == 0:
            raise ValueError("keep_first=True needs a non-empty prefix (prepend BOS)")
    L_max = max(t.numel() for _, t in pairs)
    u = float(torch.rand((), dtype=torch.float64, generator=generator))
    keys = torch.rand(b, L_max, generator=generator)  # (b, L_max), shared by every request
    plans = []
    for p, t in pairs:
        L = t.numel()
        k = min(int(u * L), L - 1) + 1
        counts = mask_counts(k, L, b)  # (b,)
        rank = keys[:, :L].argsort(dim=1).argsort(dim=1)  # (b, L)
        plans.append(_Plan(torch.cat([p, t]), p.numel(), rank < counts[:, None], L / counts.to(torch.float64)))
    return plans


def leader_resolved(values: torch.Tensor, z: float,
                    scales: Sequence[Sequence[float]] | None = None, raw: bool = True) -> bool:
    """Whether the leading choice is resolved: ``values`` (n, m) float64, row r's estimate of each
    of m choices' log-likelihood (minus its weighted row loss), paired across choices (common
    random numbers). For every ranking (the raw values, and each vector of ``scales``: choice i's
    values times ``scales[s][i]``, e.g. 1 / length for lm-eval's acc_norm) the leader a (largest
    mean) must beat every other choice j with mean(d) > z * sd(d) / sqrt(n), d = v_a - v_j row by
    row (sd with n - 1; treating stratified rows as independent overstates the error: conservative).
    A difference of zero never resolves (a tie runs to the maximum); one choice is never resolved
    (its value, not a ranking, is asked for). ``raw=False`` leaves the raw ranking out (only the
    scaled ones must resolve; at least one is needed)."""
    n, m = values.shape
    rankings = ([None] if raw else []) + list(scales or [])
    if not rankings:
        raise ValueError("leader_resolved needs a ranking: raw=True or at least one vector of scales")
    if m < 2 or n < 2:
        return False
    for s in rankings:
        v = values if s is None else values * torch.as_tensor(s, dtype=torch.float64)[None, :]
        a = int(v.mean(0).argmax())
        d = v[:, a:a + 1] - v  # (n, m)
        mean, se = d.mean(0), d.std(0) / math.sqrt(n)
        others = torch.arange(m) != a
        if not bool(((mean > z * se) & (mean > 0))[others].all()):
            return False
    return True


def elbo_rank_adaptive(
    logits_fn: LogitsFn,
    items: Sequence[Sequence[tuple[Ids, Ids]]],
    *,
    mask_id: int,
    mc_num: int,
    mc_min: int,
    mc_group: int,
    z: float,
    cfg: float = 0.0,
    generators: Sequence[torch.Generator | None] | None = None,
    pad_id: int | None = None,
    keep_first: bool = False,
    forward_batch: int = 32,
    scales: Sequence[Sequence[Sequence[float]] | None] | None = None,
    record: list | None = None,
    raw: bool = True,
) -> tuple[list[list[float]], list[int]]:
    """Sequential MC-ELBO for ranking: the requests of each item (its choices) share common random
    numbers (:func:`crn_group`, one generator per item, drawn group after group, so an item's
    first n rows do not depend on when it stops or on the other items); after every group of
    ``mc_group`` rows (the stratification group) an item with at least ``mc_min`` rows stops when
    :func:`leader_resolved` (``z``, the item's ``scales``, ``raw``: whether the raw ranking
    must resolve too), and at ``mc_num`` rows in any case.
    Active items' rows are packed into forward passes of ``forward_batch`` rows.

    Returns (per item, each request's estimate: minus the mean row loss over the rows used) and
    the rows used per item (the same for all its requests). ``record``: when a list, each item's
    (rows used, m) float64 row values are appended to it (benchmarks replay the stopping rule)."""
    gens = _checked_adaptive(items, mc_num, mc_min, mc_group, z, generators)
    rows: list[list[torch.Tensor]] = [[] for _ in items]  # per item: (mc_group, m) value blocks
    used = [0] * len(items)
    active = list(range(len(items)))
    while active:
        values = _group_values(logits_fn, items, active, gens, mask_id=mask_id, mc_group=mc_group, cfg=cfg,
                               pad_id=pad_id, keep_first=keep_first, forward_batch=forward_batch)
        still = []
        for i, v in zip(active, values):
            rows[i].append(v)  # (mc_group, m)
            used[i] += mc_group
            if used[i] >= mc_num:
                continue
            item_scales = None if scales is None else scales[i]
            if used[i] >= mc_min and leader_resolved(torch.cat(rows[i]), z, item_scales,
                                                     raw=raw or not item_scales):
                continue
            still.append(i)
        active = still
    blocks = [torch.cat(r) for r in rows]  # (used_i, m_i)
    if record is not None:
        record.extend(blocks)
    return [[float(x) for x in b.mean(0)] for b in blocks], used


def _checked_adaptive(
    items: Sequence[Sequence[tuple[Ids, Ids]]], mc_num: int, mc_min: int, mc_group: int, z: float,
    generators: Sequence[torch.Generator | None] | None,
) -> list[torch.Generator | None]:
    """One generator (or None) per item; raises on MC settings or items elbo_rank_adaptive refuses."""
    _check_mc(mc_num, mc_group)
    if not isinstance(mc_min, int) or mc_min < 1 or mc_min % mc_group or mc_min > mc_num:
        raise ValueError(f"mc_min must be a multiple of mc_group ({mc_group}) in {mc_group}..{mc_num}, "
                         f"got {mc_min!r}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z!r}")
    gens = list(generators) if generators is not None else [None] * len(items)
    if len(gens) != len(items):
        raise ValueError(f"got {len(gens)} generators for {len(items)} items")
    for it in items:
        if len(it) == 0:
            raise ValueError("an item needs at least one request")
    return gens


def _group_values(
    logits_fn: LogitsFn, items: Sequence[Sequence[tuple[Ids, Ids]]], active: Sequence[int],
    gens: Sequence[torch.Generator | None], *, mask_id: int, mc_group: int, cfg: float, pad_id: int | None,
    keep_first: bool, forward_batch: int,
) -> list[torch.Tensor]:
    """The next ``mc_group`` rows of each active item (drawn in ``active`` order, one generator per item,
    common random numbers across its requests), scored in packed forwards: per item a (mc_group, m)
    block of row values (minus the row losses)."""
    plans, owner = [], []
    for i in active:
        ps = crn_group(items[i], mc_group, keep_first, gens[i])
        plans += ps
        owner.append(len(ps))
    losses = _run_plans(logits_fn, plans, mask_id=int(mask_id), cfg=float(cfg),
                        keep_first=keep_first, pad_id=int(mask_id if pad_id is None else pad_id),
                        forward_batch=forward_batch)
    values, s = [], 0
    for m in owner:
        values.append(-torch.stack(losses[s:s + m], dim=1))  # (mc_group, m)
        s += m
    return values


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


def elbo_perplexity(logits_fn: LogitsFn, ids_windows: torch.Tensor | Sequence[Ids], **options: Any) -> float:
    """exp(sum of per-window ELBO NLL bounds / number of scored tokens); see the module docstring.

    options: the keywords of :func:`elbo_window_nll` (mask_id, mc_num, generator, keep_first,
    batch_size, forward_batch, pad_id), passed on unchanged.
    Scored tokens: every position of every window, except position 0 when ``keep_first``.
    """
    nll, n = elbo_window_nll(logits_fn, ids_windows, **options)
    return math.exp(math.fsum(nll) / sum(n))


# the same parameters as elbo_window_nll, declared once there (help() and inspect show them)
elbo_perplexity.__signature__ = inspect.signature(elbo_window_nll).replace(return_annotation="float")


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
