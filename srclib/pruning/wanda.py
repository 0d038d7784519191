"""Wanda (method.md 4): S_ij = |W_ij| * ||X_:,j||_2, pruned per output row.

Two ways to accumulate the column norm over calibration passes (a "pass" is one calibration
sequence: one window, or one window noised at one t), a registry ``ACCUMULATIONS``:

* ``"total"`` (uniform Wanda, original paper and released code): the norm over ALL calibration
  tokens, ||X_:,j||_2 = sqrt(sum_p sum_t (w_pt x_ptj)^2).
* ``"per_pass"`` (the released sink-aware Wanda): the SUM over passes of per-pass norms,
  sum_p sqrt(sum_t (w_pt x_ptj)^2).

With all token weights 1 the two differ in general (sum of norms >= norm of the concatenation);
each accumulation with weights 1 is bit-identical to itself without weights.
Statistics are accumulated in float64 (order-robust); scores are float32.

``ignore_pattern`` (prune.fidelity: released, sink-aware Wanda): the released ``prune_sink`` prunes
the floor(C_in * s) lowest of every row whatever the N:M pattern asked for.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from srclib import choices
from srclib.pruning.base import LayerPruner
from srclib.pruning.masks import get_pattern, select_mask

__all__ = ["ACCUMULATIONS", "WandaPruner", "wanda_score", "pass_sumsq"]


def wanda_score(weight: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """|W| * col_norm broadcast over rows. weight (C_out, C_in), col_norm (C_in,) -> (C_out, C_in)."""
    if col_norm.shape != (weight.shape[-1],):
        raise ValueError(f"col_norm must have shape ({weight.shape[-1]},), got {tuple(col_norm.shape)}")
    return weight.detach().float().abs() * col_norm.to(device=weight.device, dtype=torch.float32)[None, :]


def pass_sumsq(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Per-pass weighted squared column norms: sum_t (w_t x_tj)^2. x (B, T, C), w (B, T) -> (B, C)."""
    xw = x if w is None else x * w.unsqueeze(-1)  # (B, T, C)
    return (xw * xw).sum(dim=1)  # (B, C)


def _total_add(stat: torch.Tensor, sumsq: torch.Tensor) -> None:
    stat += sumsq.sum(dim=0).double()


def _per_pass_add(stat: torch.Tensor, sumsq: torch.Tensor) -> None:
    stat += sumsq.sqrt().sum(dim=0).double()


# name -> (add per-pass sums of squares (B, C) into the (C,) statistic, statistic -> column norm)
ACCUMULATIONS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], None],
                               Callable[[torch.Tensor], torch.Tensor]]] = {
    "total": (_total_add, torch.sqrt),
    "per_pass": (_per_pass_add, lambda stat: stat),
}
choices.check("Wanda accumulations", ACCUMULATIONS, choices.ACCUMULATIONS)


class WandaPruner(LayerPruner):
    def __init__(self, layer: nn.Linear, name: str = "", accumulation: str = "total",
                 ignore_pattern: bool = False, **options: Any):
        super().__init__(layer, name)
        self.ignore_pattern = bool(ignore_pattern)
        if accumulation not in ACCUMULATIONS:
            raise ValueError(
                f"unknown Wanda accumulation {accumulation!r}; allowed: {sorted(ACCUMULATIONS)}"
            )
        self.accumulation = accumulation
        self._add_fn, self._norm_fn = ACCUMULATIONS[accumulation]
        self.stat = torch.zeros(self.columns, dtype=torch.float64, device=layer.weight.device)

    def _add(self, x: torch.Tensor, w: torch.Tensor | None) -> None:
        sumsq = pass_sumsq(x, w)  # (B, C)
        self._check_finite(sumsq)
        self._add_fn(self.stat, sumsq)

    def col_norm(self) -> torch.Tensor:
        """(C_in,) float32 column norms under the chosen accumulation."""
        if self.n_passes == 0:
            raise RuntimeError(f"layer {self.name!r}: Wanda needs calibration inputs; none were added")
        return self._norm_fn(self.stat).float()

    def score(self) -> torch.Tensor:
        return wanda_score(self.layer.weight, self.col_norm())

    def prune(self, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
        if self.ignore_pattern:
            get_pattern(pattern).check(sparsity)  # the run's pattern is still a valid one
            pattern = "unstructured"
        mask = select_mask(self.score(), sparsity, pattern, scope="row")
        return self._apply(None, mask)

    def free(self) -> None:
        self.stat = None  # type: ignore[assignment]
