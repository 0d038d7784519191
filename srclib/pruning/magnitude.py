"""Magnitude pruning (method.md 4): score |W|; unstructured threshold over the whole matrix,
N:M per row per group of M consecutive inputs. Ignores calibration inputs.

``inclusive`` (prune.fidelity: released): the released unstructured threshold ``|W| <= sorted[int(n s)]``,
which prunes floor(n s) + 1 entries of the matrix (srclib.pruning.masks.select_mask_inclusive);
N:M is the same either way (the released code takes the N lowest of each group too)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from srclib.pruning.base import LayerPruner
from srclib.pruning.masks import get_pattern, select_mask, select_mask_inclusive

__all__ = ["MagnitudePruner", "magnitude_mask"]


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: str = "unstructured",
                   inclusive: bool = False) -> torch.Tensor:
    """True = pruned. weight (C_out, C_in)."""
    score = weight.detach().float().abs()
    if get_pattern(pattern).structured:
        return select_mask(score, sparsity, pattern, scope="row")
    if inclusive:
        return select_mask_inclusive(score, sparsity)
    return select_mask(score, sparsity, pattern, scope="matrix")


class MagnitudePruner(LayerPruner):
    needs_inputs = False

    def __init__(self, layer: nn.Linear, name: str = "", inclusive: bool = False, **options: Any):
        super().__init__(layer, name)
        self.inclusive = bool(inclusive)

    def _add(self, x: torch.Tensor, w: torch.Tensor | None) -> None:
        pass  # magnitude ignores activations

    def prune(self, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
        mask = magnitude_mask(self.layer.weight.detach(), sparsity, pattern, inclusive=self.inclusive)
        return self._apply(None, mask)
