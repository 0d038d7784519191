"""Optimisation of the tiny models: AdamW(0.9, 0.95) with weight decay on matrices only (not on
norm gains), gradient-norm clipping, linear warmup then cosine decay to ``min_lr``.

The schedule is params' ``Schedule`` (``train.ar`` / ``train.dlm``); weight decay and the clip are
``train.weight_decay`` / ``train.grad_clip``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from srclib.notebook import Progress
from srclib.params import Schedule

__all__ = ["lr_at", "optimizer", "train_loop"]


def lr_at(step: int, s: Schedule) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` at ``steps``."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    span = max(1, s.steps - s.warmup)
    progress = min(1.0, (step - s.warmup) / span)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + math.cos(math.pi * progress))


def optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW(0.9, 0.95); ``weight_decay`` on parameters of 2+ dimensions only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )


def train_loop(model: torch.nn.Module, s: Schedule, loss_fn: Callable[[int], torch.Tensor], desc: str, *,
               weight_decay: float, grad_clip: float) -> dict[str, Any]:
    """``s.steps`` optimizer steps on ``loss_fn(step)``; returns {"loss": [per step], "train_time_s",
    "step_time_s", "train_cpu_s", "threads"}. Leaves the model in eval mode.

    Progress lines (srclib.notebook.Progress, ``train <desc>``): the step, the mean loss of the steps
    since the last line, the learning rate, the time so far and an ETA."""
    opt = optimizer(model, s.lr, weight_decay)
    model.train()
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    since, n_since = 0.0, 0  # the losses since the last progress line
    with Progress(f"train {desc}", s.steps) as bar:
        for step in range(s.steps):
            lr = lr_at(step, s)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{desc}: non-finite loss {value} at step {step}")
            losses.append(value)
            since, n_since = since + value, n_since + 1
            if bar.update(loss=since / n_since, lr=lr):
                since, n_since = 0.0, 0
    model.eval()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # process CPU seconds: a load-independent companion of the wall time (all threads summed)
    return {"loss": losses, "train_time_s": wall, "step_time_s": wall / s.steps, "train_cpu_s": cpu,
            "threads": torch.get_num_threads()}
