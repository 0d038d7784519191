"""Data-parallel evaluation: the process group of a run launched by ``accelerate launch`` or
``torchrun``, the collectives lm-eval's evaluator calls on an ``LM``, and one process's request
order rebuilt from every rank's share.

lm-eval 0.4.13's evaluator, when ``lm.world_size > 1``, gives each rank the documents
``rank, rank + world_size, ...`` of every task, then calls ``lm.all_gather`` (request counts, to
pad the shorter ranks with copies of their last request), ``lm.barrier`` after each request type
and ``lm.gather_object`` (per-document metrics and logged samples, onto rank 0, which alone
returns results). :class:`Group` provides exactly those over ``torch.distributed`` (no
``accelerate.Accelerator`` needed); :func:`setup` finds or starts the group.

:func:`global_order` merges the ranks' requests back into the list that one process would have
been given (lm-eval's order: task by task, document by document, choice by choice), so an LM can
batch them exactly as one process does and score its share of those batches: per-request
values then equal one process's bit for bit (see :class:`srclib.evaluation.lm.DiffusionLM`).
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Hashable, Sequence

import torch
import torch.distributed as dist

__all__ = ["Group", "setup", "request_keys", "global_order"]

log = logging.getLogger(__name__)

# lm-eval's HFLM waits this long too: a rank may wait at a collective while another one scores
TIMEOUT = timedelta(weeks=52)


@dataclass
class Group:
    """The default process group as lm-eval's evaluator uses it. ``device``: where this rank's
    model runs (``cuda:<LOCAL_RANK>`` for a CUDA device given without an index); collectives run
    on the backend's device (CUDA for nccl, CPU otherwise) and return on the caller's."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def comm_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on every rank) concatenated along dim 0, in rank
        order; a 0-d tensor gives a (world_size,) one (as ``Accelerator.gather``)."""
        t = tensor.to(self.comm_device)
        t = t[None] if t.dim() == 0 else t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t)
        return torch.cat(parts).to(tensor.device)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` as a list on rank ``dst`` (rank order), None on the others."""
        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def setup(device: torch.device) -> Group | None:
    """The process group of a multi-process run, or None for one process (nothing is started).

    Uses ``torch.distributed``'s default group when it is initialised (by ``accelerate``, lm-eval
    or the caller); otherwise, when ``WORLD_SIZE`` > 1 (set with ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` by ``accelerate launch`` and ``torchrun``), starts one:
    nccl when ``device`` is CUDA, gloo otherwise. ``device``: where the model is to run; a CUDA
    device without an index becomes ``cuda:<LOCAL_RANK>`` (one GPU per process) and is made the
    current CUDA device."""
    started = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if started else (_env_int("WORLD_SIZE") or 1)
    if world <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    rank = dist.get_rank() if started else _env_int("RANK")
    if rank is None:
        raise RuntimeError(f"WORLD_SIZE={world} but RANK is not set: launch with `accelerate launch` "
                           f"or `torchrun`, which set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
    local = _env_int("LOCAL_RANK")
    local = rank if local is None else local
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not started:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with "
                               f"`accelerate launch` or `torchrun`")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=TIMEOUT)
        atexit.register(_destroy)
        log.info("rank %d of %d: started a %s process group", rank, world, backend)
    return Group(rank=rank, world_size=world, local_rank=local, device=device)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def request_keys(requests: Sequence[Any]) -> list[tuple] | None:
    """(task, doc_id, idx, copy) of each lm-eval ``Instance`` of one call, ``copy`` counting the
    instance's earlier occurrences in ``requests`` (lm-eval repeats an instance ``repeats`` times,
    and pads a rank's list with further copies of its last one). None when a request carries no
    task / document (not built by lm-eval's evaluator)."""
    seen: dict[int, int] = {}
    keys = []
    for req in requests:
        task, doc = getattr(req, "task_name", None), getattr(req, "doc_id", None)
        idx = getattr(req, "idx", None)
        if task is None or doc is None or idx is None:
            return None
        k = seen.get(id(req), 0)
        seen[id(req)] = k + 1
        keys.append((task, int(doc), int(idx), k))
    return keys


def _repeats(req: Any) -> int:
    return max(1, int(getattr(req, "repeats", None) or 1))


def global_order(group: Group, requests: Sequence[Any] | None, payloads: Sequence[Any]
                 ) -> tuple[list[Any], list[int]] | None:
    """The requests of one call on every rank, merged into one process's order.

    ``payloads``: what scoring needs of each of this rank's ``requests`` (token ids, a string).
    Returns (payloads of every distinct request in the order a single process would have been
    given them, and for each of this rank's requests its index there), the same on every rank; a
    padding copy (an instance beyond its ``repeats``) maps to its original. The order: tasks as
    rank 0 lists them (rank 0 holds document 0 of every task), then by document and by
    ``(idx, copy)``: lm-eval's order in one process. None (on every rank) when some rank's
    requests carry no lm-eval keys (or ``requests`` is None): the caller then scores its own
    requests only. A collective: every rank calls it once per call of the LM."""
    keys = None if requests is None or len(requests) != len(payloads) else request_keys(requests)
    mine = None if keys is None else [
        (key, _repeats(req), p) for key, req, p in zip(keys, requests, payloads)]
    everyone = group.all_gather_object(mine)
    if any(m is None for m in everyone):
        return None
    task_pos: dict[Hashable, int] = {}
    for part in everyone:
        for (task, *_), _, _ in part:
            task_pos.setdefault(task, len(task_pos))
    distinct: dict[tuple, Any] = {}
    for part in everyone:
        for key, repeats, p in part:
            if key[3] < repeats:  # not a padding copy
                distinct.setdefault(key, p)
    order = sorted(distinct, key=lambda k: (task_pos[k[0]], k[1], k[2], k[3]))
    index = {k: i for i, k in enumerate(order)}
    by_req = {(t, d, i): r for (t, d, i, _), r, _ in mine}
    own = [index[(t, d, i, c % by_req[(t, d, i)])] for t, d, i, c in keys]
    return [distinct[k] for k in order], own
