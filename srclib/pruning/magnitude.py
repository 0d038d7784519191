"""Magnitude pruning (method.md 4): score |W|; unstructured threshold over the whole matrix,
N:M per row per group of M consecutive inputs. Ignores calibration inputs."""

from __future__ import annotations

import torch

from srclib.pruning.base import LayerPruner
from srclib.pruning.masks import get_pattern, select_mask

__all__ = ["MagnitudePruner", "magnitude_mask"]


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
    """True = pruned. weight (C_out, C_in)."""
    scope = "row" if get_pattern(pattern).structured else "matrix"
    return select_mask(weight.detach().float().abs(), sparsity, pattern, scope=scope)


class MagnitudePruner(LayerPruner):
    needs_inputs = False

    def _add(self, x: torch.Tensor, w: torch.Tensor | None) -> None:
        pass  # magnitude ignores activations

    def prune(self, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
        mask = magnitude_mask(self.layer.weight.detach(), sparsity, pattern)
        return self._apply(None, mask)
