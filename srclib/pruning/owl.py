"""OWL: outlier-weighted layer-wise sparsity (Yin et al. 2023, luuyin/OWL ``prune_wanda_outlier``).

Per transformer block l, the outlier ratio D_l is the fraction of the block's Wanda scores
(all its prunable linears pooled) that exceed M times their mean. Then

    r_l = 2 * lambda * (D_l - min D) / (max D - min D)
    s_l = s - (r_l - mean(r))

so blocks with more outliers are pruned less, s_l lies in [s - 2*lambda, s + 2*lambda] around the target, and
mean_l s_l = s exactly (blocks have the same size in every supported model, so the overall sparsity
is the target). If every block has the same ratio, every block gets s.
"""

from __future__ import annotations

from typing import Sequence

import torch

from srclib.pruning.masks import validate_sparsity

__all__ = ["outlier_ratio", "owl_sparsities"]


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Fraction of all entries of ``scores`` (pooled) greater than m * their mean."""
    if not m > 0:
        raise ValueError(f"owl_m must be > 0, got {m!r}")
    if not scores:
        raise ValueError("outlier_ratio needs at least one score matrix")
    flat = torch.cat([s.detach().float().reshape(-1) for s in scores])  # (sum numel,)
    return float((flat > flat.mean() * m).double().mean())


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios D (method above). Raises if one leaves [0, 1)."""
    s = validate_sparsity(sparsity)
    if not 0 <= lam < 1:
        raise ValueError(f"owl_lambda must lie in [0, 1), got {lam!r}")
    d = torch.tensor([float(r) for r in ratios], dtype=torch.float64)  # (L,)
    if d.numel() == 0:
        raise ValueError("owl_sparsities needs at least one block")
    span = float(d.max() - d.min())
    if span == 0.0:
        return [s] * d.numel()
    r = (d - d.min()) / span * (2.0 * lam)  # (L,) in [0, 2 lambda]
    out = s - (r - r.mean())
    bad = [(i, float(v)) for i, v in enumerate(out) if not 0.0 <= float(v) < 1.0]
    if bad:
        raise ValueError(
            f"OWL gives block sparsities outside [0, 1) for blocks {bad} (sparsity={s}, owl_lambda={lam}); "
            f"lower owl_lambda"
        )
    return [float(v) for v in out]
