"""The per-layer pruner contract (SparseGPT's object): ``add_batch`` -> ``prune`` -> ``free``.

A pruner wraps ONE nn.Linear. ``add_batch(x, token_weight)`` receives the linear's inputs of one
calibration forward, x (B, T, C_in) (B sequences = B calibration passes) or (N, C_in) (one pass),
and optional token weights (B, T) or (N,) in [0, 1]; ``prune(sparsity, pattern)`` zeroes weights
in place and returns the bool mask (True = pruned); ``free`` drops the statistics.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["LayerPruner", "flatten_inputs"]


def flatten_inputs(
    x: torch.Tensor, token_weight: torch.Tensor | None, in_features: int, name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate one batch of linear inputs; return x as (B, T, C) float32 and weights (B, T).

    A 2-D input (N, C) is one pass: it becomes (1, N, C). Raises ValueError naming the layer on a
    wrong width, a weight shape that does not match, weights outside [0, 1], or non-finite inputs.
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
        if token_weight is not None and token_weight.dim() == 1:
            token_weight = token_weight.unsqueeze(0)
    if x.dim() != 3 or x.shape[-1] != in_features:
        raise ValueError(
            f"layer {name!r}: inputs must be (B, T, {in_features}) or (N, {in_features}), "
            f"got shape {tuple(x.shape)}"
        )
    x = x.detach().float()  # (B, T, C); finiteness is checked on each pruner's reduced statistic
    if token_weight is not None:
        token_weight = token_weight.detach().to(device=x.device, dtype=torch.float32)
        if tuple(token_weight.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"layer {name!r}: token_weight shape {tuple(token_weight.shape)} does not match the "
                f"inputs' (B, T) = {tuple(x.shape[:2])}"
            )
        if not bool(((token_weight >= 0) & (token_weight <= 1)).all()):
            raise ValueError(f"layer {name!r}: token_weight must lie in [0, 1] (and be finite)")
    return x, token_weight


class LayerPruner:
    """Base class. Subclasses set ``needs_inputs`` and implement ``_add`` and ``prune``."""

    needs_inputs: ClassVar[bool] = True

    def __init__(self, layer: nn.Linear, name: str = "", **options: Any):
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer {name!r}: pruners wrap nn.Linear, got {type(layer).__name__}")
        self.layer = layer
        self.name = name
        self.rows, self.columns = layer.weight.shape
        self.n_passes = 0  # calibration passes (sequences) seen
        self.n_tokens = 0

    def add_batch(self, x: torch.Tensor, token_weight: torch.Tensor | None = None) -> None:
        x, w = flatten_inputs(x, token_weight, self.columns, self.name)
        self._add(x, w)  # raises (statistics untouched) on non-finite inputs
        self.n_passes += x.shape[0]
        self.n_tokens += x.shape[0] * x.shape[1]

    def _add(self, x: torch.Tensor, w: torch.Tensor | None) -> None:  # x (B, T, C), w (B, T)
        raise NotImplementedError

    def prune(self, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
        raise NotImplementedError

    def free(self) -> None:
        pass

    def _check_finite(self, stat: torch.Tensor) -> None:
        """NaN/inf inputs propagate into every sum of squares: one cheap check per batch."""
        if not bool(torch.isfinite(stat).all()):
            raise ValueError(
                f"layer {self.name!r}: calibration inputs contain NaN or inf (or overflow float32)"
            )

    def _apply(self, new_weight: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """Zero the pruned weights in place (after writing ``new_weight``, if given); return the mask."""
        with torch.no_grad():
            w = self.layer.weight
            if new_weight is not None:
                w.copy_(new_weight.to(device=w.device, dtype=w.dtype))
            w.masked_fill_(mask.to(w.device), 0)
        return mask
