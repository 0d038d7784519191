"""Sparse execution of a pruned model: CSR linears, a sparse copy of a model, and a magnitude
zeroing fixture for tests and benchmarks.

``sparse_copy`` swaps every prunable linear of a deep copy for ``SPARSE_FORMATS[fmt]`` (today
``CSRLinear``: torch.sparse CSR matmul); the timing module runs it beside the dense model.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable

import torch
from torch import nn

from srclib.efficiency.accounting import prunable_linears
from srclib.models.base import Adapter

__all__ = ["CSRLinear", "SPARSE_FORMATS", "sparse_copy", "zero_by_magnitude_"]


class CSRLinear(nn.Module):
    """y = x W^T + b with W stored as a torch sparse CSR tensor (C_out, C_in)."""

    def __init__(self, weight_csr: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight_csr.layout != torch.sparse_csr:
            raise ValueError(f"weight_csr must have layout torch.sparse_csr, got {weight_csr.layout}")
        self.out_features, self.in_features = weight_csr.shape
        self.register_buffer("weight", weight_csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "CSRLinear":
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            csr = linear.weight.detach().to_sparse_csr()
        return cls(csr, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, C_in)
        y = torch.sparse.mm(self.weight, x2.t()).t()  # (N, C_out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.weight._nnz()}"


SPARSE_FORMATS: dict[str, Callable[[nn.Linear], nn.Module]] = {
    "csr": CSRLinear.from_linear,
}


def sparse_copy(model: nn.Module, adapter: Adapter, fmt: str = "csr") -> nn.Module:
    """A deep copy of ``model`` whose prunable linears are replaced by ``SPARSE_FORMATS[fmt]``."""
    if fmt not in SPARSE_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(SPARSE_FORMATS)}, got {fmt!r}")
    make = SPARSE_FORMATS[fmt]
    clone = copy.deepcopy(model)
    for block in adapter.blocks(clone):
        for name, lin in list(adapter.prunable(block).items()):
            parent_name, _, leaf = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, leaf, make(lin))
    return clone.eval()


@torch.no_grad()
def zero_by_magnitude_(model: nn.Module, adapter: Adapter, sparsity: float, pattern: str = "unstructured") -> nn.Module:
    """Zero the smallest-|W| weights of every prunable linear IN PLACE (a test/benchmark fixture,
    not one of the study's pruners).

    pattern "unstructured": floor(C_in * sparsity) per output row; "2:4": the 2 smallest of every
    4 consecutive inputs (sparsity must be 0.5).  Ties: lower index first (stable sort).
    """
    if pattern not in _ZERO_PATTERNS:
        raise ValueError(f"pattern must be one of {sorted(_ZERO_PATTERNS)}, got {pattern!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    for lin in prunable_linears(model, adapter).values():
        w = lin.weight  # (C_out, C_in)
        w[_ZERO_PATTERNS[pattern](w.abs(), sparsity)] = 0
    return model


def _rowwise_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = math.floor(score.shape[1] * sparsity)
    mask = torch.zeros_like(score, dtype=torch.bool)
    order = torch.sort(score, dim=1, stable=True).indices  # (C_out, C_in)
    mask.scatter_(1, order[:, :k], True)
    return mask


def _two_four_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    if sparsity != 0.5:
        raise ValueError(f"pattern '2:4' prunes exactly half; sparsity must be 0.5, got {sparsity}")
    rows, cols = score.shape
    if cols % 4:
        raise ValueError(f"pattern '2:4' needs C_in divisible by 4, got C_in={cols}")
    g = score.reshape(rows, cols // 4, 4)  # (C_out, C_in/4, 4)
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(-1, torch.sort(g, dim=-1, stable=True).indices[..., :2], True)
    return mask.reshape(rows, cols)


_ZERO_PATTERNS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "unstructured": _rowwise_mask,
    "2:4": _two_four_mask,
}
