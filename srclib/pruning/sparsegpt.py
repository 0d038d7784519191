"""SparseGPT (Frantar & Alistarh 2023; method.md 4), following IST-DASLab's ``fasterprune``.

Hessian: H = (2/N) sum_n X_n^T diag(w_n^2) X_n, N = number of calibration passes (sequences),
as the reference counts it (the scale does not change the result: dampening is relative).
Algorithm (``sparsegpt_prune``), all in float32:

1. dead inputs (H_jj == 0): H_jj := 1, W[:, j] := 0;
2. damp = percdamp * mean(diag H); H += damp * I;
3. Hinv := upper Cholesky factor of H^-1 (Cholesky of H, cholesky_inverse, Cholesky upper);
4. for each block of ``blocksize`` columns: unstructured -> the mask is chosen over the WHOLE
   block (rows x block columns) by the score W1^2 / diag(Hinv1)^2 on the block's current
   (already updated) weights; N:M -> at every M-th column, the N lowest scores of each row among
   the next M columns; then column by column: zero the pruned entries, err = (w - q) / Hinv_ii,
   update the remaining columns of the block with err * Hinv[i, i:]; finally propagate the
   block's error to all later columns with Err1 @ Hinv[block, later].

One deliberate difference from the reference: the reference's unstructured block threshold is
``score <= sorted[int(numel * s)]``, which prunes int(numel * s) + 1 entries per block (more on
ties); here exactly floor(numel * s) per block are pruned (stable tie-break by index), so the
layer sparsity is exactly the target wherever blocksize * C_out * s is an integer. ``inclusive=True``
(prune.fidelity: released) restores the reference's rule (srclib.pruning.masks.select_mask_inclusive).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from srclib.pruning.base import LayerPruner
from srclib.pruning.masks import get_pattern, select_mask, select_mask_inclusive

__all__ = ["SparseGPTPruner", "sparsegpt_prune"]


def _hinv_upper(hessian: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1; H is modified in place (dampened)."""
    damp = percdamp * torch.mean(torch.diag(hessian))
    idx = torch.arange(hessian.shape[0], device=hessian.device)
    hessian[idx, idx] += damp
    L, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise ValueError(
            f"layer {name!r}: the Hessian is not positive definite after dampening "
            f"(percdamp={percdamp}, damp={float(damp):.3g}; Cholesky failed at column {int(info) - 1}); "
            f"use more calibration data or a larger percdamp"
        )
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0:
        raise ValueError(
            f"layer {name!r}: the inverse Hessian is numerically not positive definite "
            f"(percdamp={percdamp}); use more calibration data or a larger percdamp"
        )
    return U


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: str = "unstructured",
    *,
    blocksize: int,
    percdamp: float,
    name: str = "",
    inclusive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (C_out, C_in) given the layer Hessian (C_in, C_in).

    inclusive: unstructured blocks use the reference's ``score <= sorted[int(numel * s)]`` (one entry
    more per block, more on ties) instead of exactly floor(numel * s).

    Returns (new_weight float32 (C_out, C_in), mask bool (C_out, C_in), True = pruned).
    Pruned entries of new_weight are exactly 0; kept entries carry the OBS update.
    """
    pat = get_pattern(pattern)
    s = pat.check(sparsity)
    if not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if pat.structured and blocksize % pat.m:
        raise ValueError(f"blocksize ({blocksize}) must be a multiple of M={pat.m} for pattern {pattern!r}")
    if not percdamp >= 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp!r}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"layer {name!r}: hessian must be ({cols}, {cols}), got {tuple(hessian.shape)}")
    if pat.structured and cols % pat.m:
        raise ValueError(f"layer {name!r}: pattern {pattern!r} needs C_in divisible by {pat.m}, got {cols}")
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError(f"layer {name!r}: the Hessian contains NaN or inf")

    W = weight.detach().float().clone()  # (C_out, C_in)
    H = hessian.detach().float().clone()  # (C_in, C_in)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hinv = _hinv_upper(H, percdamp, name)  # (C_in, C_in) upper triangular
    del H
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()  # (C_out, count)
        Err1 = torch.zeros_like(W1)  # (C_out, count)
        Hinv1 = Hinv[i1:i2, i1:i2]  # (count, count)
        d1 = torch.diag(Hinv1)  # (count,)
        if pat.structured:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        elif inclusive:
            mask1 = select_mask_inclusive(W1 ** 2 / d1[None, :] ** 2, s)
        else:
            mask1 = select_mask(W1 ** 2 / d1[None, :] ** 2, s, "unstructured", scope="matrix")
        # err_i = (w_i - q_i) / d_i = w_i * pruned_i / d_i: one multiplier per entry
        scale1 = mask1.to(W1.dtype) / d1[None, :]  # (C_out, count)
        for i in range(count):
            if pat.structured and i % pat.m == 0:
                group = W1[:, i:i + pat.m] ** 2 / d1[None, i:i + pat.m] ** 2  # (C_out, M)
                g = select_mask(group, s, pattern, scope="row")
                mask1[:, i:i + pat.m] = g
                scale1[:, i:i + pat.m] = g.to(W1.dtype) / d1[None, i:i + pat.m]
            err = torch.mul(W1[:, i], scale1[:, i], out=Err1[:, i])  # (C_out,)
            # OBS update of this and the remaining block columns; column i becomes q_i
            # (kept entries: err = 0, unchanged exactly; pruned entries are zeroed below)
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1.0)
        W[:, i1:i2] = W1.masked_fill_(mask1, 0.0)
        mask[:, i1:i2] = mask1
        W[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1.0)
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"layer {name!r}: SparseGPT produced non-finite weights")
    return W, mask


class SparseGPTPruner(LayerPruner):
    def __init__(self, layer: nn.Linear, name: str = "", *, blocksize: int, percdamp: float,
                 inclusive: bool = False, **options: Any):
        super().__init__(layer, name)
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.inclusive = bool(inclusive)
        # running sum of X^T diag(w^2) X, float32 (method.md 4; the reference keeps H in float32)
        self.xtx = torch.zeros(self.columns, self.columns, dtype=torch.float32, device=layer.weight.device)

    def _add(self, x: torch.Tensor, w: torch.Tensor | None) -> None:
        xw = x if w is None else x * w.unsqueeze(-1)  # (B, T, C)
        xw = xw.reshape(-1, self.columns)  # (B*T, C)
        self._check_finite(xw.square().sum(dim=0))  # (C,): NaN/inf anywhere shows here
        self.xtx.addmm_(xw.t(), xw)

    def hessian(self) -> torch.Tensor:
        """H = (2/N) sum X^T diag(w^2) X, N = number of passes. (C_in, C_in) float32."""
        if self.n_passes == 0:
            raise RuntimeError(f"layer {self.name!r}: SparseGPT needs calibration inputs; none were added")
        return self.xtx * (2.0 / self.n_passes)

    def prune(self, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
        new_w, mask = sparsegpt_prune(
            self.layer.weight, self.hessian(), sparsity, pattern,
            blocksize=self.blocksize, percdamp=self.percdamp, name=self.name, inclusive=self.inclusive,
        )
        return self._apply(new_w, mask)

    def free(self) -> None:
        self.xtx = None  # type: ignore[assignment]
