"""Masked-diffusion forward noising (method.md 3) and the LLaDA sampler (method.md 5).

``noise`` implements q(x_t | x_0): every position is independently replaced by the mask token
with probability p = (1 - eps) * t + eps.  ``generate`` is LLaDA's semi-autoregressive
low-confidence-remasking sampler, batched, with classifier-free guidance and an ``on_step`` hook
through which the trajectory recorder observes each denoising step at no extra forward cost.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

__all__ = ["noise", "mask_probability"]

log = logging.getLogger(__name__)


def mask_probability(t: float | torch.Tensor, eps: float = 1e-3) -> float | torch.Tensor:
    """p = (1 - eps) * t + eps: the per-position masking probability at time t (method.md 3)."""
    return (1.0 - eps) * t + eps


def noise(
    x0: torch.Tensor,
    t: float | torch.Tensor,
    mask_id: int,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    keep_ends: bool = False,
    keep_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-noise clean ids: each position is masked independently with p = (1-eps)*t + eps.

    x0: (B, T) token ids.  t: a float in [0, 1] or a per-row tensor (B,).
    keep_ends: the first and last positions are never masked (Dream's variant).
    keep_first: position 0 is never masked (shifted models: its logits are never read).
    Returns (noisy_ids (B, T), mask (B, T) bool, True where the mask token was placed).
    The uniform draws come from ``generator`` (on x0's device), so a seeded generator makes the
    result reproducible.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, T) token ids, got shape {tuple(x0.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    B, T = x0.shape
    if isinstance(t, torch.Tensor):
        t = t.to(device=x0.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a float or a tensor of shape (B,) = ({B},), got {tuple(t.shape)}")
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError("t must lie in [0, 1]")
        p = mask_probability(t, eps)[:, None]  # (B, 1)
    else:
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        p = float(mask_probability(float(t), eps))
    u = torch.rand((B, T), generator=generator, device=x0.device)  # (B, T)
    mask = u < p  # (B, T)
    if keep_first or keep_ends:
        mask[:, 0] = False
    if keep_ends:
        mask[:, -1] = False
    noisy = torch.where(mask, torch.full_like(x0, int(mask_id)), x0)
    return noisy, mask
