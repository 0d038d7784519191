"""Attention sinks: scores, token weights, dominant positions and trajectory statistics (method.md 1-2, 4).

Conventions (every function works over the LAST dimension = key positions, so (T,), (B, T),
(L, B, T), ... all work; statistics over steps take the step dimension second to last):

* sink score, rule ``"zscore"`` (released code, params.yaml's): s_k = sigmoid(alpha * (m_k - mean(m)
  - kappa * std(m))), population std.  s_k >= 0.5  <=>  m_k >= mean + kappa * std.
  Degenerate case, kept as the released code has it: an exactly constant row has std = 0, so every
  s_k = sigmoid(0) = 0.5 and (at the >= 0.5 threshold of method.md) every position counts as a
  sink.  Real attention mass is never exactly constant; near-uniform rows get the positions above
  mean + kappa * std as sinks (outliers), so read sink sets together with the mass share.
  With kappa = 2 one spike among T positions is a sink only for T > 5 (at T = 5 it sits exactly on
  the threshold).
* sink score, rule ``"margin"`` (paper figure): s_k = 1 if m_k > mean_{j != k} m_j + eps else 0.
  A single position (T = 1) is never a sink (no other position to compare with).
* token weight w_k = 1 - s_k.
* sink set: {k : s_k >= 0.5} (``SINK_THRESHOLD``).
* dominant position p = argmax_k m_k, lowest index on ties.
* normalised positional variance: Var_tau[p(tau)] / T^2 with the POPULATION variance over steps
  (divide by the number of steps S); in [0, 1/4).
* persistence of position k: the fraction of steps at which k is in the sink set, in [0, 1].
* Jaccard stability: mean over consecutive step pairs (tau, tau+1) of |A & B| / |A | B|, with
  empty-vs-empty defined as 1.0 (no sink before and after: nothing moved).  Needs >= 2 steps.
* stability weights (the paper's "prune unstable sinks", method.md 4): over a grid of timesteps
  (or steps) a position whose persistence >= threshold is a STABLE sink and keeps weight 1; every
  other position gets 1 - mean_t s_k (a transient sink is down-weighted by its average score;
  a position that is never a sink gets 1 - mean_t s_k, close to 1).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from srclib import choices

__all__ = [
    "SINK_RULES",
    "SINK_THRESHOLD",
    "sink_scores",
    "token_weights",
    "sink_sets",
    "dominant_positions",
    "dominant_share",
    "position_variance",
    "persistence",
    "jaccard_series",
    "sink_jaccard",
    "stability_weights",
]

SINK_THRESHOLD = 0.5  # sink set: {k : s_k >= 0.5} (method.md 1)


def _zscore(mass: torch.Tensor, alpha: float, kappa: float, eps: float) -> torch.Tensor:
    mean = mass.mean(dim=-1, keepdim=True)  # (..., 1)
    std = mass.std(dim=-1, keepdim=True, unbiased=False)  # population std, (..., 1)
    return torch.sigmoid(alpha * (mass - mean - kappa * std))


def _margin(mass: torch.Tensor, alpha: float, kappa: float, eps: float) -> torch.Tensor:
    T = mass.shape[-1]
    if T < 2:
        return torch.zeros_like(mass)
    others = (mass.sum(dim=-1, keepdim=True) - mass) / (T - 1)  # mean_{j != k} m_j, (..., T)
    return (mass > others + eps).to(mass.dtype)


SINK_RULES: dict[str, Callable[[torch.Tensor, float, float, float], torch.Tensor]] = {
    "zscore": _zscore,
    "margin": _margin,
}
choices.check("sink rules", SINK_RULES, choices.SINK_RULES)


def _float(mass: torch.Tensor) -> torch.Tensor:
    if not isinstance(mass, torch.Tensor):
        mass = torch.as_tensor(mass)
    return mass if mass.is_floating_point() else mass.float()


def sink_scores(
    mass: torch.Tensor, *, rule: str, alpha: float, kappa: float, eps: float
) -> torch.Tensor:
    """Soft (zscore) or hard (margin) sink score of every key position, over the last dim.

    mass: (..., T) attention mass per key.  Returns (..., T) in [0, 1], same dtype (float).
    """
    if rule not in SINK_RULES:
        raise ValueError(f"unknown sink rule {rule!r}; allowed rules: {sorted(SINK_RULES)}")
    mass = _float(mass)
    if mass.dim() == 0 or mass.shape[-1] == 0:
        raise ValueError(f"mass must have a non-empty last (key) dimension, got shape {tuple(mass.shape)}")
    return SINK_RULES[rule](mass, float(alpha), float(kappa), float(eps))


def token_weights(
    mass: torch.Tensor, *, rule: str, alpha: float, kappa: float, eps: float
) -> torch.Tensor:
    """w_k = 1 - s_k (method.md 1): the calibration weight of every token. (..., T)."""
    return 1.0 - sink_scores(mass, rule=rule, alpha=alpha, kappa=kappa, eps=eps)


def sink_sets(scores: torch.Tensor) -> torch.Tensor:
    """Boolean membership of the sink set {k : s_k >= 0.5}. (..., T) -> (..., T) bool."""
    return _float(scores) >= SINK_THRESHOLD


def dominant_positions(mass: torch.Tensor) -> torch.Tensor:
    """argmax over the last dim, the LOWEST index among ties. (..., T) -> (...) int64."""
    mass = _float(mass)
    T = mass.shape[-1]
    is_max = mass == mass.max(dim=-1, keepdim=True).values  # (..., T)
    idx = torch.arange(T, device=mass.device).expand_as(mass)
    return torch.where(is_max, idx, torch.full_like(idx, T)).min(dim=-1).values


def dominant_share(mass: torch.Tensor) -> torch.Tensor:
    """max_k m_k / sum_k m_k over the last dim; multiply by T for the ratio to the uniform share."""
    mass = _float(mass)
    return mass.max(dim=-1).values / mass.sum(dim=-1)


def position_variance(positions: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Var_tau[p(tau)] / seq_len^2, population variance over the last (step) dim. (..., S) -> (...).

    float64; 0 for a sink that never moves; < 1/4 always.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    p = torch.as_tensor(positions).to(torch.float64)
    if p.dim() == 0 or p.shape[-1] == 0:
        raise ValueError("positions must have a non-empty last (step) dimension")
    return p.var(dim=-1, unbiased=False) / float(seq_len) ** 2


def persistence(scores_over_steps: torch.Tensor) -> torch.Tensor:
    """Fraction of steps at which each position is a sink. (..., S, T) -> (..., T) in [0, 1]."""
    s = _float(scores_over_steps)
    if s.dim() < 2:
        raise ValueError(f"scores_over_steps must be (..., S, T), got shape {tuple(s.shape)}")
    return sink_sets(s).to(torch.float32).mean(dim=-2)


def jaccard_series(scores_over_steps: torch.Tensor) -> torch.Tensor:
    """Jaccard overlap of the sink sets of consecutive steps. (..., S, T) -> (..., S - 1).

    Empty vs empty is 1.0 (by definition: nothing moved).
    """
    s = _float(scores_over_steps)
    if s.dim() < 2:
        raise ValueError(f"scores_over_steps must be (..., S, T), got shape {tuple(s.shape)}")
    sets = sink_sets(s)  # (..., S, T)
    a, b = sets[..., :-1, :], sets[..., 1:, :]  # (..., S-1, T)
    inter = (a & b).sum(dim=-1).to(torch.float64)
    union = (a | b).sum(dim=-1).to(torch.float64)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def sink_jaccard(scores_over_steps: torch.Tensor) -> torch.Tensor:
    """Mean Jaccard overlap of consecutive sink sets. (..., S, T) -> (...). Needs S >= 2."""
    s = torch.as_tensor(scores_over_steps)
    if s.dim() < 2 or s.shape[-2] < 2:
        raise ValueError(f"sink_jaccard needs at least 2 steps, got shape {tuple(s.shape)}")
    return jaccard_series(s).mean(dim=-1)


def stability_weights(scores_over_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-token weight for the "stability" weighting (method.md 4). (..., n_t, T) -> (..., T).

    persistence_k = fraction of the grid at which s_k >= 0.5.  Stable sinks (persistence_k >=
    threshold) keep weight 1; every other token gets 1 - mean_t s_k.  threshold in (0, 1].
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"stability threshold must be in (0, 1], got {threshold}")
    s = _float(scores_over_t)
    if s.dim() < 2:
        raise ValueError(f"scores_over_t must be (..., n_t, T), got shape {tuple(s.shape)}")
    n_t = s.shape[-2]
    # compare integer counts, not float fractions: 7/10 >= 0.7 must hold exactly
    need = math.ceil(float(threshold) * n_t - 1e-9)
    stable = sink_sets(s).sum(dim=-2) >= need  # (..., T)
    transient = 1.0 - s.mean(dim=-2)  # (..., T)
    return torch.where(stable, torch.ones_like(transient), transient)
