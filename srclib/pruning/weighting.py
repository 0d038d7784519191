"""The weighting axis (method.md 4): how each calibration token counts in a pruner's statistics.

``WEIGHTINGS = {"uniform", "sink", "stability"}``. A weighting maps soft sink scores
s (W, n_t, T) -- W windows, each seen at n_t noise levels (n_t = 1 for an AR model), computed from
the GLOBAL attention mass m = sum over layers of every pass (srclib.sinks.sink_scores) -- to token
weights in [0, 1]:

* per pass (the calibration passes ARE the scored passes: noised DLM passes, or clean AR passes):
  (W, n_t, T);
* per clean window (DLM calibrated on clean windows, weights from its noised passes; the released
  sink-aware SparseGPT): (W, 1, T).

uniform: 1 everywhere. sink: per pass 1 - s (the released sink-aware Wanda), per clean window
1 - mean_t s (the released sink-aware SparseGPT). stability ("prune unstable sinks"): a position
that is a sink (s >= 0.5) in at least ``threshold`` of its window's t-grid is a STABLE sink and
keeps weight 1; every other position gets per pass 1 - s, per clean window 1 - mean_t s
(= srclib.sinks.stability_weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from srclib import choices, sinks

__all__ = ["WEIGHTINGS", "Weighting", "stable_sinks", "get_weighting"]


def stable_sinks(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Stable-sink positions of each window. scores (W, n_t, T) -> (W, T) bool.

    Same count rule as srclib.sinks.stability_weights: #{t : s_t >= 0.5} >= ceil(threshold * n_t).
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"stability_threshold must be in (0, 1], got {threshold}")
    need = math.ceil(float(threshold) * scores.shape[-2] - 1e-9)
    return sinks.sink_sets(scores).sum(dim=-2) >= need


def _uniform(scores: torch.Tensor, per_pass: bool, threshold: float) -> torch.Tensor:
    shape = scores.shape if per_pass else (scores.shape[0], 1, scores.shape[-1])
    return torch.ones(shape, dtype=torch.float32, device=scores.device)


def _sink(scores: torch.Tensor, per_pass: bool, threshold: float) -> torch.Tensor:
    return 1.0 - (scores if per_pass else scores.mean(dim=1, keepdim=True))


def _stability(scores: torch.Tensor, per_pass: bool, threshold: float) -> torch.Tensor:
    if not per_pass:
        return sinks.stability_weights(scores, threshold).unsqueeze(1)  # (W, 1, T)
    stable = stable_sinks(scores, threshold).unsqueeze(1)  # (W, 1, T)
    return torch.where(stable, torch.ones_like(scores), 1.0 - scores)  # (W, n_t, T)


@dataclass(frozen=True)
class Weighting:
    name: str
    needs_mass: bool
    fn: Callable[[torch.Tensor, bool, float], torch.Tensor]

    def __call__(self, scores: torch.Tensor, per_pass: bool, threshold: float) -> torch.Tensor:
        """scores (W, n_t, T) in [0, 1] -> float32 weights (W, n_t, T) or (W, 1, T) in [0, 1]."""
        if scores.dim() != 3:
            raise ValueError(f"scores must be (windows, n_t, T), got shape {tuple(scores.shape)}")
        return self.fn(scores.float(), per_pass, threshold).float().clamp_(0.0, 1.0)


WEIGHTINGS: dict[str, Weighting] = {
    "uniform": Weighting("uniform", False, _uniform),
    "sink": Weighting("sink", True, _sink),
    "stability": Weighting("stability", True, _stability),
}
choices.check("weightings", WEIGHTINGS, choices.WEIGHTINGS)


def get_weighting(name: str) -> Weighting:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; allowed weightings: {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name]
