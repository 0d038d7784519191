"""Pruning masks in one place (method.md 4): True = pruned.

Patterns (a registry, ``PATTERNS``):

* ``"unstructured"``: ``scope="row"`` (Wanda, SparseGPT-style per output row) prunes the
  floor(C_in * s) lowest scores of every row; ``scope="matrix"`` (magnitude, and SparseGPT's
  per-column-block choice) prunes the floor(numel * s) lowest scores of the whole matrix.
* ``"N:M"`` (``"2:4"``, ``"4:8"``): the N lowest of every M consecutive input columns of a row;
  requires sparsity == N/M and C_in % M == 0.

Ties are broken deterministically, as a STABLE ascending sort over a fixed flattening order
(row-major) would: among equal scores the lower index is pruned first (computed with kthvalue and
a cumulative count of ties, 3x faster than sorting).

``select_mask_inclusive`` is the released code's unstructured threshold (prune.fidelity: released):
``score <= sorted(score)[int(n * s)]`` prunes floor(n * s) + 1 entries (more on ties at the
threshold); magnitude applies it to the whole matrix, SparseGPT to each column block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


import torch

from srclib import choices

__all__ = ["PATTERNS", "SCOPES", "Pattern", "select_mask", "select_mask_inclusive", "validate_sparsity",
           "get_pattern"]


def validate_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Return ``sparsity`` as a float, or raise ValueError unless it lies in [0, 1)."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"{what} must lie in [0, 1), got {sparsity!r}")
    return s


def _check_score(score: torch.Tensor) -> None:
    """A score to rank: 2-D (C_out, C_in) and finite."""
    if score.dim() != 2:
        raise ValueError(f"score must be a 2-D (C_out, C_in) tensor, got shape {tuple(score.shape)}")
    if not bool(torch.isfinite(score).all()):
        raise ValueError("score contains NaN or inf; cannot rank weights")


def _lowest_k_last_dim(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k lowest entries along the last dim; on ties the lower index goes first.

    Same result as taking the first k of a stable ascending sort, in O(C) per row: everything
    below the k-th smallest value, then the lowest-index entries equal to it until k are taken.
    """
    # score: (..., C)
    C = score.shape[-1]
    if k <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if k >= C:
        return torch.ones(score.shape, dtype=torch.bool, device=score.device)
    kth = torch.kthvalue(score, k, dim=-1, keepdim=True).values  # (..., 1)
    below = score < kth  # (..., C)
    tied = score == kth
    need = k - below.sum(dim=-1, keepdim=True)  # (..., 1), >= 1
    return below | (tied & (tied.cumsum(dim=-1) <= need))


def _unstructured(score: torch.Tensor, sparsity: float, scope: str) -> torch.Tensor:
    # score: (R, C)
    if scope == "row":
        return _lowest_k_last_dim(score, int(math.floor(score.shape[1] * sparsity)))
    flat = score.reshape(1, -1)  # (1, R*C), row-major order fixes the tie-break
    return _lowest_k_last_dim(flat, int(math.floor(flat.shape[1] * sparsity))).reshape(score.shape)


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern. ``n``/``m`` are set for N:M patterns (None for unstructured)."""

    name: str
    n: int | None = None
    m: int | None = None

    @property
    def structured(self) -> bool:
        return self.m is not None

    def check(self, sparsity: float) -> float:
        s = validate_sparsity(sparsity)
        if self.structured and not math.isclose(s, self.n / self.m, rel_tol=0.0, abs_tol=1e-9):
            raise ValueError(
                f"pattern {self.name!r} prunes exactly {self.n}/{self.m} = {self.n / self.m} of every "
                f"group; sparsity must equal {self.n / self.m}, got sparsity={sparsity}"
            )
        return s

    def select(self, score: torch.Tensor, sparsity: float, scope: str = "row") -> torch.Tensor:
        """Bool mask (True = pruned) of the same shape as ``score`` (R, C)."""
        s = self.check(sparsity)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {sorted(SCOPES)}, got {scope!r}")
        _check_score(score)
        if not self.structured:
            return _unstructured(score, s, scope)
        if scope != "row":
            raise ValueError(f"pattern {self.name!r} is per row by definition; scope must be 'row', got {scope!r}")
        R, C = score.shape
        if C % self.m:
            raise ValueError(f"pattern {self.name!r} needs C_in divisible by {self.m}, got C_in={C}")
        groups = score.reshape(R, C // self.m, self.m)  # (R, C/M, M)
        return _lowest_k_last_dim(groups, self.n).reshape(R, C)


PATTERNS: dict[str, Pattern] = {  # srclib.choices.PATTERNS: name -> (N, M) or None
    name: Pattern(name) if nm is None else Pattern(name, *nm) for name, nm in choices.PATTERNS.items()
}

SCOPES: dict[str, str] = {
    "row": "the floor(C_in * s) lowest of every output row",
    "matrix": "the floor(numel * s) lowest of the whole matrix",
}


def get_pattern(pattern: str) -> Pattern:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; allowed patterns: {sorted(PATTERNS)}")
    return PATTERNS[pattern]


def select_mask(score: torch.Tensor, sparsity: float, pattern: str = "unstructured",
                scope: str = "row") -> torch.Tensor:
    """Which weights to prune (True = pruned), given a score where LOW means unimportant.

    score: (C_out, C_in). sparsity in [0, 1). pattern in PATTERNS. scope in SCOPES
    (N:M patterns are always per row). Ties: the lower (row-major) index is pruned first.
    """
    return get_pattern(pattern).select(score, sparsity, scope)


def select_mask_inclusive(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The released ``<=`` threshold over the whole score (True = pruned): every entry at or below the
    value at index floor(n * s) of the ascending sort, i.e. floor(n * s) + 1 entries plus any ties
    at that value. Sparsity 0 prunes nothing (the released main skips pruning at 0).

    score: (R, C), LOW = unimportant."""
    s = validate_sparsity(sparsity)
    _check_score(score)
    if s == 0.0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    flat = score.reshape(-1)
    k = int(flat.numel() * s)  # index into the ascending sort, as the released code (< n since s < 1)
    thresh = torch.kthvalue(flat, k + 1).values  # sorted(flat)[k]
    return score <= thresh
