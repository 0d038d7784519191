"""Record attention mass without editing model code (method.md 1).

``record_mass`` temporarily replaces ``torch.nn.functional.scaled_dot_product_attention`` (the
module attribute: transformers' sdpa attention, LLaDA's and Dream's remote code and TinyLM all look
it up at call time) by a wrapper that

1. under ``torch.no_grad`` recomputes softmax(q k^T * scale + mask) in float32, ``chunk_size``
   queries at a time (the caller's: params.yaml collect.chunk_size, prune.calibration.chunk_size;
   no T x T map per head is ever held), and accumulates the key mass
   m_k = sum_h sum_q A[h, q, k] of that call (optionally ``after_call(record)`` then runs and may
   raise, to end the forward before this call's attention output is computed), then
2. calls the original SDPA with the exact arguments it was given and returns its output unchanged
   (so logits are bit-identical with and without the recorder).

The scores and probabilities of every chunk are written into two buffers that live as long as the
recorder (same kernels, same values bit for bit; fresh tensors per chunk cost the CPU two large
allocations each: at T = 512 on tiny-dlm's shape the recorder went from about 1.30-1.37x to
1.15-1.23x a plain forward).

Semantics mirrored from torch's SDPA reference implementation:
- ``attn_mask`` bool (True = attend) or additive float, broadcastable to (B, H, T_q, T_k);
- ``is_causal`` is top-left aligned (query i sees keys j <= i, also when T_q != T_k);
- ``scale`` defaults to 1/sqrt(head_dim);
- GQA (K/V with fewer heads than Q, ``enable_gqa=True``): K is expanded by ``repeat_interleave``;
- ``dropout_p`` is ignored (the recorder is meant for eval mode).
A query row whose keys are all masked (e.g. a left-padding query) contributes 0 mass (SDPA
returns a zero output for it), never NaN.

Per-head shares (opt-in, ``record_mass(per_head=True)``): for every call also, per batch row and
head h, with n_h the number of the call's queries that see at least one key and M_h[k] =
sum_q A[h, q, k] the head's column mass (reduced from the same chunks, no extra T x T work),
``bos_share`` = M_h[0] / n_h and ``top_share`` = max_k M_h[k] / n_h (a head attending uniformly
over n keys has top share 1/n; 0 where n_h = 0). In an AR decoding step with a KV cache the only
query is the newest token. The per-layer masses are computed exactly as without it
(bit-identical).

Code that imported the function by name before entering the context
(``from torch.nn.functional import scaled_dot_product_attention``) is not intercepted.
The patch is process-global and not thread-safe; nested recorders each record every call.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["MassRecord", "record_mass", "key_mass", "key_mass_per_head", "head_shares"]

logger = logging.getLogger(__name__)


@dataclass
class MassRecord:
    """What ``record_mass`` collects: one (B, T_key) float32 tensor per SDPA call, in call order;
    with ``per_head``, also one (B, H) BOS share and one (B, H) top share per call."""

    chunk_size: int
    per_call: list[torch.Tensor] = field(default_factory=list)
    per_head: bool = False
    bos_per_call: list[torch.Tensor] = field(default_factory=list)
    top_per_call: list[torch.Tensor] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """Number of SDPA calls recorded (= number of layers for one forward pass)."""
        return len(self.per_call)

    @property
    def mass(self) -> torch.Tensor:
        """(L, B, T_key) float32: per-layer key mass, L = calls in forward order."""
        if not self.per_call:
            raise RuntimeError(
                "no attention call was recorded: the model did not call "
                "torch.nn.functional.scaled_dot_product_attention inside record_mass() "
                "(eager attention, or SDPA imported by name before the context was entered)"
            )
        shapes = {tuple(m.shape) for m in self.per_call}
        if len(shapes) > 1:
            raise RuntimeError(
                f"recorded calls have different (B, T_key) shapes {sorted(shapes)}; "
                "use MassRecord.per_call, or reset() between forward passes"
            )
        return torch.stack(self.per_call)  # (L, B, T_key)

    def _heads(self, calls: list[torch.Tensor]) -> torch.Tensor:
        if not self.per_head:
            raise RuntimeError("per-head shares were not recorded: use record_mass(per_head=True)")
        if not calls:
            raise RuntimeError("no attention call was recorded (see MassRecord.mass)")
        shapes = {tuple(m.shape) for m in calls}
        if len(shapes) > 1:
            raise RuntimeError(f"recorded calls have different (B, H) shapes {sorted(shapes)}; reset() between passes")
        return torch.stack(calls)  # (L, B, H)

    @property
    def bos_share(self) -> torch.Tensor:
        """(L, B, H) float32: each head's attention mass on key 0 per query (module docstring)."""
        return self._heads(self.bos_per_call)

    @property
    def top_share(self) -> torch.Tensor:
        """(L, B, H) float32: each head's largest key mass per query (1/n for uniform over n keys)."""
        return self._heads(self.top_per_call)

    def reset(self) -> None:
        """Forget everything recorded so far (e.g. between denoising steps)."""
        self.per_call.clear()
        self.bos_per_call.clear()
        self.top_per_call.clear()


def _as_4d(x: torch.Tensor) -> torch.Tensor:
    """Left-pad the shape with singleton dims to 4-D: (T_q, T_k) -> (1, 1, T_q, T_k) etc."""
    if x.dim() > 4:
        raise ValueError(f"attention tensors with more than 4 dims are not supported (got {tuple(x.shape)})")
    return x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))


def key_mass(
    query: torch.Tensor,  # (B, H, T_q, hd) or (B, T_q, hd)
    key: torch.Tensor,  # (B, H_kv, T_k, hd) or (B, T_k, hd)
    attn_mask: torch.Tensor | None = None,  # broadcastable to (B, H, T_q, T_k)
    is_causal: bool = False,
    scale: float | None = None,
    *,
    chunk_size: int,
) -> torch.Tensor:
    """Column sums of the softmax attention, summed over heads and queries: (B, T_k) float32.

    The softmax is computed chunk by chunk over queries in float32; rows with every key masked
    contribute 0. GQA is handled whenever H_kv divides H (as SDPA with ``enable_gqa=True``).
    """
    return _key_mass(query, key, attn_mask, is_causal, scale, chunk_size, per_head=False)[0]


class _Workspace:
    """Two flat float32 buffers reused by every chunk of every call of one recorder: the scores and
    their softmax are written into them (``out=``) instead of into fresh tensors, which on the CPU
    saves the page faults of two large allocations per chunk (same kernels, bit-identical values;
    benchmarks/attention_overhead.py). Grown on demand, per device; freed with the recorder."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, int], torch.Tensor] = {}

    def view(self, slot: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        key = (str(device), slot)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n, dtype=torch.float32, device=device)
        return buf[:n].view(shape)


def key_mass_per_head(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``key_mass`` (bit-identical) plus each head's column mass (B, H, T_k) and its number of
    queries that see at least one key (B, H) int64, from the same chunks."""
    return _key_mass(query, key, attn_mask, is_causal, scale, chunk_size, per_head=True)


def head_shares(head_mass: torch.Tensor, n_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BOS share, top share), each (B, H): key 0's and the largest key's column mass per query
    (0 for a head without queries). head_mass (B, H, T_k), n_queries (B, H)."""
    n = n_queries.to(head_mass.dtype)
    safe = n.clamp_min(1)
    bos = torch.where(n > 0, head_mass[..., 0] / safe, torch.zeros_like(n))
    top = torch.where(n > 0, head_mass.max(dim=-1).values / safe, torch.zeros_like(n))
    return bos, top


def _key_mass(query, key, attn_mask, is_causal, scale, chunk_size, per_head: bool,
              work: _Workspace | None = None):
    """(total (B, T_k), head mass (B, H, T_k) or None, queries per head (B, H) or None); ``work``:
    buffers for the scores and probabilities (``_Workspace``), else fresh tensors per chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if query.dim() not in (3, 4) or key.dim() != query.dim():
        raise ValueError(
            f"query/key must both be 3-D (B, T, hd) or 4-D (B, H, T, hd); got {tuple(query.shape)} "
            f"and {tuple(key.shape)}"
        )
    with torch.no_grad():
        q = _as_4d(query.detach()).float()  # (B, H, T_q, hd)
        k = _as_4d(key.detach()).float()  # (B, H_kv, T_k, hd)
        H, Hkv = q.shape[1], k.shape[1]
        if Hkv != H:
            if H % Hkv:
                raise ValueError(f"query heads ({H}) must be a multiple of key heads ({Hkv})")
            k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, T_k, hd)
        Tq, Tk = q.shape[-2], k.shape[-2]
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        mask = None
        if attn_mask is not None:
            mask = _as_4d(attn_mask.detach())  # (B|1, H|1, T_q|1, T_k|1)
            if mask.dtype != torch.bool:
                mask = mask.float()
        kt = k.transpose(-1, -2)  # (B, H, hd, T_k)
        batch = torch.broadcast_shapes(q.shape[:1], k.shape[:1], mask.shape[:1] if mask is not None else (1,))
        total = torch.zeros(batch[0], Tk, dtype=torch.float32, device=q.device)  # (B, T_k)
        heads = torch.zeros(batch[0], H, Tk, dtype=torch.float32, device=q.device) if per_head else None
        nq = torch.zeros(batch[0], H, dtype=torch.long, device=q.device) if per_head else None
        kpos = torch.arange(Tk, device=q.device)
        for start in range(0, Tq, chunk_size):
            stop = min(start + chunk_size, Tq)
            # causal (top-left aligned): queries start..stop-1 see keys 0..stop-1 only
            kend = min(Tk, stop) if is_causal else Tk
            qc = q[:, :, start:stop] * scale
            if work is None:
                s = torch.matmul(qc, kt[..., :kend])  # (B, H, c, kend), fresh
            else:
                shape = torch.broadcast_shapes(qc.shape[:-1], kt.shape[:-2] + (1,)) + (kend,)
                s = torch.matmul(qc, kt[..., :kend], out=work.view(0, shape, q.device))
            if is_causal:
                qpos = torch.arange(start, stop, device=q.device)
                s.masked_fill_(kpos[None, :kend] > qpos[:, None], float("-inf"))
            if mask is not None:
                m = mask[:, :, start:stop] if mask.shape[-2] == Tq else mask
                m = m[..., :kend] if m.shape[-1] == Tk else m
                if torch.broadcast_shapes(s.shape, m.shape) != s.shape:  # mask has the larger batch
                    s = s.expand(torch.broadcast_shapes(s.shape, m.shape)).clone()
                if m.dtype == torch.bool:
                    s.masked_fill_(~m, float("-inf"))
                else:
                    s.add_(m)
            # (B, H, c, kend); a row with every key masked is NaN
            p = torch.softmax(s, dim=-1) if work is None else torch.softmax(s, -1, out=work.view(1, s.shape, q.device))
            # sum over heads and queries; only a mask can empty a row (causal rows always see key 0)
            total[:, :kend] += p.nansum(dim=(1, 2)) if mask is not None else p.sum(dim=(1, 2))
            if per_head:  # same chunk, reduced over queries only: (B, H, kend)
                red = torch.nansum if mask is not None else torch.sum
                heads[:, :, :kend] += red(p, dim=2)
                nq += (red(p, dim=-1) > 0.5).sum(dim=-1)  # rows that see a key sum to 1, empty rows 0
            del s, p
        return total, heads, nq


def _make_wrapper(original: Callable, record: MassRecord,
                  after_call: Callable[[MassRecord], None] | None = None) -> Callable:
    work = _Workspace()  # lives as long as the recorder

    def scaled_dot_product_attention(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
        enable_gqa=False, **kwargs,
    ):
        total, heads, nq = _key_mass(query, key, attn_mask, bool(is_causal), scale, record.chunk_size,
                                     per_head=record.per_head, work=work)
        record.per_call.append(total)
        if record.per_head:
            bos, top = head_shares(heads, nq)
            record.bos_per_call.append(bos)
            record.top_per_call.append(top)
        if after_call is not None:
            after_call(record)  # may raise: then this call's attention output is never computed
        extra = dict(kwargs)
        if enable_gqa:
            extra["enable_gqa"] = True
        return original(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=scale, **extra,
        )

    scaled_dot_product_attention.__wrapped__ = original  # type: ignore[attr-defined]
    return scaled_dot_product_attention


@contextlib.contextmanager
def record_mass(
    chunk_size: int, per_head: bool = False,
    after_call: Callable[[MassRecord], None] | None = None,
) -> Iterator[MassRecord]:
    """Record per-call attention key mass while the context is open; ``per_head``: also each
    head's BOS and top share per call (module docstring). ``after_call(record)`` runs after each
    call's mass is recorded and before its attention output is computed; an exception it raises
    propagates out of the model's forward (the record keeps what was recorded), e.g. to end a
    forward once the last needed layer's mass is in (srclib.pruning.calibration.record_pass_mass).

    >>> with record_mass(chunk_size=256) as rec:  # doctest: +SKIP
    ...     model(ids)
    >>> rec.mass.shape                      # (L, B, T_key) float32  # doctest: +SKIP
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    record = MassRecord(chunk_size=chunk_size, per_head=bool(per_head))
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _make_wrapper(original, record, after_call)
    try:
        yield record
    finally:
        F.scaled_dot_product_attention = original
