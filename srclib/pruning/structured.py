"""Structured pruning math (method.md 9): channel statistics, channel / unit scores, selection.

Pure tensor code (no model, no adapter, no params). The units are MLP intermediate channels and
attention heads (with GQA: KV groups, one KV head with its n_rep query heads). Scores are computed
on the INPUT channels of the block's output linears (o_proj, down_proj), weight V (d_out, C_in),
from calibration inputs x_n (n over all tokens) with token weights w_n in [0, 1]:

* ``ChannelStats``: W = sum_n w_n, mu_j = sum_n w_n x_nj / W, F_j = sum_n w_n (x_nj - mu_j)^2 / W,
  N_j = sqrt(sum_n (w_n x_nj)^2); accumulated in float64 on the inputs' device.
* ``channel_scores``: magnitude-sp ||V_:,j||_2; Wanda-sp mean_i |V_ij| N_j; FLAP (WIFV)
  F_j ||V_:,j||_2^2. With uniform weights these are the reference metrics (CASIA-IVA-Lab/FLAP,
  lib/prune.py) up to one constant factor per layer (the reference divides by sample counts).
* ``group_scores`` / ``unit_scores``: a unit's score is the sum of its channels' scores; FLAP
  units of more than one channel (heads) sum the SQUARES (the reference squares the attention metric).
* ``select_uniform``: every block removes ``n_remove`` of its heads and of its channels.
* ``select_adaptive``: FLAP's AL-AM, a global, cost-weighted selection on standardised scores.
* ``bias_compensation``: FLAP's bias b = V[:, R] mu_R for the removed input channels R.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from srclib import choices
from srclib.pruning.base import flatten_inputs

__all__ = [
    "SP_METHODS",
    "ChannelStats",
    "channel_scores",
    "group_scores",
    "unit_scores",
    "bias_compensation",
    "unit_costs",
    "n_remove",
    "select_uniform",
    "select_adaptive",
]

log = logging.getLogger(__name__)

# ("magnitude", "wanda", "flap"): magnitude-sp, Wanda-sp, FLAP (WIFV metric); named once, in choices
SP_METHODS: tuple[str, ...] = choices.SP_METHODS


# ---- validation helpers --------------------------------------------------------------------------
def _check_method(method: str) -> None:
    if method not in SP_METHODS:
        raise ValueError(f"unknown structured pruning method {method!r}; allowed: {list(SP_METHODS)}")


def _check_ratio(ratio: float) -> None:
    if not (0.0 <= float(ratio) < 1.0):
        raise ValueError(f"ratio must lie in [0, 1), got {ratio!r}")


def _check_unit_size(unit_size: int) -> None:
    if int(unit_size) != unit_size or unit_size < 1:
        raise ValueError(f"unit_size must be an integer >= 1, got {unit_size!r}")


def _check_vector(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dim() != 1:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 1-D tensor, got {shape}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


# ---- statistics ----------------------------------------------------------------------------------
class ChannelStats:
    """Streaming weighted statistics of one linear's input channels (method.md 9).

    W = sum_n w_n, mean mu_j = sum_n w_n x_nj / W, fluctuation F_j = sum_n w_n (x_nj - mu_j)^2 / W,
    weighted norm N_j = sqrt(sum_n (w_n x_nj)^2); w = 1 when token_weight is None. Accumulated in
    float64 on the device of the first batch: total weight W, sum w x, sum w x^2, sum (w x)^2 (each
    (C,)) and the token count. Adding batches one by one equals adding their concatenation.
    """

    def __init__(self, columns: int, name: str = "") -> None:
        if int(columns) != columns or columns < 1:
            raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
        self.columns = int(columns)
        self.name = name
        self.n_tokens: int = 0
        self._weight = 0.0  # W, a python float (float64)
        self._sums: Tensor | None = None  # (3, C) float64: sum w x, sum w x^2, sum (w x)^2

    @property
    def total_weight(self) -> float:
        """W = sum_n w_n over every token added (float; = n_tokens when unweighted)."""
        return self._weight

    def add(self, x: Tensor, token_weight: Tensor | None = None) -> None:
        """Add one batch: x (B, T, C) or (N, C); token_weight (B, T) / (N,) in [0, 1] or None.

        Raises ValueError naming the layer on a wrong shape, weights outside [0, 1] or non-finite
        inputs; the statistics are then untouched.
        """
        xv, _ = flatten_inputs(x, token_weight, self.columns, self.name)  # validation, (B, T, C)
        n = xv.shape[0] * xv.shape[1]
        # float64 from the caller's tensors (flatten_inputs returns float32 copies)
        x64 = x.detach().reshape(n, self.columns).to(torch.float64)  # (N, C)
        if not bool(torch.isfinite(x64).all()):
            raise ValueError(f"layer {self.name!r}: calibration inputs contain NaN or inf")
        if token_weight is None:
            w64 = torch.ones(n, dtype=torch.float64, device=x64.device)
        else:
            w64 = token_weight.detach().reshape(n).to(device=x64.device, dtype=torch.float64)
        wx = w64[:, None] * x64  # (N, C)
        batch = torch.stack([wx.sum(0), (wx * x64).sum(0), (wx * wx).sum(0)])  # (3, C)
        if not bool(torch.isfinite(batch).all()):
            raise ValueError(f"layer {self.name!r}: calibration input statistics overflow float64")
        if self._sums is None:
            self._sums = batch
        else:
            self._sums += batch.to(self._sums.device)
        self._weight += float(w64.sum())
        self.n_tokens += n

    def _require(self, what: str) -> Tensor:
        if self._sums is None or self._weight <= 0.0:
            raise ValueError(
                f"layer {self.name!r}: the {what} needs a positive total token weight; "
                f"got {self.n_tokens} tokens with total weight {self._weight}"
            )
        return self._sums

    def mean(self) -> Tensor:
        """(C,) float64 weighted mean mu_j. ValueError if no tokens or all weights are 0."""
        return self._require("mean")[0] / self._weight

    def fluctuation(self) -> Tensor:
        """(C,) float64 weighted population variance F_j = s2 / W - mu_j^2, clamped at >= 0."""
        sums = self._require("fluctuation")
        mu = sums[0] / self._weight
        return (sums[1] / self._weight - mu * mu).clamp_min(0.0)

    def norm(self) -> Tensor:
        """(C,) float64 weighted norm N_j = sqrt(sum_n (w_n x_nj)^2). ValueError before any add."""
        if self._sums is None:
            raise ValueError(f"layer {self.name!r}: the norm needs calibration inputs; none were added")
        return self._sums[2].sqrt()


# ---- scores ----------------------------------------------------------------------------------------
def channel_scores(method: str, weight: Tensor, stats: ChannelStats | None) -> Tensor:
    """(C_in,) float64 scores of a linear's INPUT channels, on the weight's device.

    weight (d_out, C_in) of o_proj / down_proj. magnitude: ||V_:,j||_2 (stats may be None);
    wanda: mean_i |V_ij| * N_j; flap (WIFV): F_j * ||V_:,j||_2^2.
    """
    _check_method(method)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(
            f"weight must be a 2-D (d_out, C_in) tensor, got {getattr(weight, 'shape', weight)!r}"
        )
    v = weight.detach().to(torch.float64)  # (d_out, C_in)
    if method == "magnitude":
        return v.pow(2).sum(0).sqrt()
    if stats is None:
        raise ValueError(f"method {method!r} needs calibration statistics; stats is None")
    if stats.columns != v.shape[1]:
        raise ValueError(
            f"layer {stats.name!r}: weight has {v.shape[1]} input channels but stats has {stats.columns}"
        )
    if method == "wanda":
        return (v.abs() * stats.norm().to(v.device)[None, :]).mean(0)
    return stats.fluctuation().to(v.device) * v.pow(2).sum(0)  # flap


def group_scores(method: str, scores: Tensor, unit_size: int) -> Tensor:
    """(C,) channel scores -> (C // unit_size,) unit scores; unit u = channels [u*s, (u+1)*s).

    A unit's score is the sum of its channels' scores; FLAP with unit_size > 1 (heads / KV groups)
    sums the squares of its channels' scores. Same dtype and device as ``scores``.
    """
    _check_method(method)
    _check_unit_size(unit_size)
    if scores.dim() != 1 or scores.shape[0] % unit_size != 0:
        raise ValueError(
            f"scores must be 1-D with a length divisible by unit_size={unit_size}, got {tuple(scores.shape)}"
        )
    grouped = scores.reshape(-1, unit_size)  # (n_units, unit_size)
    if method == "flap" and unit_size > 1:
        grouped = grouped * grouped
    return grouped.sum(1)


def unit_scores(
    method: str,
    weight: Tensor,
    x: Tensor | None,
    token_weight: Tensor | None = None,
    unit_size: int = 1,
) -> Tensor:
    """(C_in // unit_size,) float64 = group_scores(method, channel_scores(method, weight, stats of x)).

    x (N, C_in) or (B, T, C_in): all calibration inputs; token_weight (N,) / (B, T) in [0, 1] or
    None. magnitude ignores x (may be None); wanda / flap with x None raise ValueError.
    """
    _check_method(method)
    stats = None
    if method != "magnitude":
        if x is None:
            raise ValueError(f"method {method!r} needs calibration inputs; x is None")
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError(
                f"weight must be a 2-D (d_out, C_in) tensor, got {getattr(weight, 'shape', weight)!r}"
            )
        stats = ChannelStats(weight.shape[1])
        stats.add(x, token_weight)
    return group_scores(method, channel_scores(method, weight, stats), unit_size)


def bias_compensation(weight: Tensor, x_mean: Tensor, keep: Tensor) -> Tensor:
    """(d_out,) float32 bias W[:, ~keep] @ x_mean[~keep] (computed in float64, on weight's device).

    weight (d_out, C_in), x_mean (C_in,) the (weighted) input mean, keep bool (C_in,) True = kept.
    Added as the pruned layer's bias, the mean output on the calibration data is unchanged.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (d_out, C_in), got {tuple(weight.shape)}")
    c = weight.shape[1]
    if tuple(x_mean.shape) != (c,):
        raise ValueError(f"x_mean must have shape ({c},), got {tuple(x_mean.shape)}")
    if keep.dtype != torch.bool or tuple(keep.shape) != (c,):
        raise ValueError(
            f"keep must be a bool tensor of shape ({c},), got {keep.dtype} {tuple(keep.shape)}"
        )
    removed = ~keep.to(weight.device)
    v = weight.detach().to(torch.float64)[:, removed]  # (d_out, |R|)
    mu = x_mean.detach().to(device=weight.device, dtype=torch.float64)[removed]  # (|R|,)
    return (v @ mu).float()


# ---- costs and selection -------------------------------------------------------------------------
def unit_costs(hidden: int, head_dim: int, n_rep: int) -> tuple[int, int]:
    """(head-unit cost, channel cost) in parameters of the block's linears.

    An MLP channel: 3 d (a row of gate and up, a column of down). A head unit: its rows of q, k, v
    and columns of o: MHA (n_rep == 1) 4 d hd; a GQA KV group 2 d n_rep hd (q rows, o columns)
    + 2 d hd (one k and one v head).
    """
    for arg, val in (("hidden", hidden), ("head_dim", head_dim), ("n_rep", n_rep)):
        if int(val) != val or val < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {val!r}")
    return 2 * hidden * n_rep * head_dim + 2 * hidden * head_dim, 3 * hidden


def n_remove(n_units: int, ratio: float) -> int:
    """Units to remove: round(ratio * n_units) (python round, half to even), clipped to
    [0, n_units - 1], so a block never loses all of its units."""
    _check_ratio(ratio)
    if int(n_units) != n_units or n_units < 1:
        raise ValueError(f"n_units must be an integer >= 1, got {n_units!r}")
    return max(0, min(int(round(ratio * n_units)), int(n_units) - 1))


def _lowest_keep(scores: Tensor, k: int) -> Tensor:
    """bool keep mask (n,) removing the k lowest scores; ties: the lower index is removed first."""
    order = torch.sort(scores.detach().double().cpu(), stable=True).indices
    keep = torch.ones(scores.shape[0], dtype=torch.bool)
    keep[order[:k]] = False
    return keep.to(scores.device)


def select_uniform(
    head_scores: list[Tensor], channel_scores: list[Tensor], ratio: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Uniform structure: every block removes n_remove(n, ratio) of its heads and of its channels.

    head_scores[i] (n_units_i,) and channel_scores[i] (I_i,) are block i's unit scores. The lowest
    scores go (ties: the lower index first). Returns bool keep masks (True = kept) per block,
    heads then channels, each on its scores' device.
    """
    _check_ratio(ratio)
    if len(head_scores) != len(channel_scores):
        raise ValueError(
            f"head_scores and channel_scores must list the same blocks, got {len(head_scores)} and "
            f"{len(channel_scores)}"
        )
    keep_heads, keep_channels = [], []
    for i, (h, c) in enumerate(zip(head_scores, channel_scores)):
        _check_vector(f"head_scores[{i}]", h)
        _check_vector(f"channel_scores[{i}]", c)
        keep_heads.append(_lowest_keep(h, n_remove(h.shape[0], ratio)))
        keep_channels.append(_lowest_keep(c, n_remove(c.shape[0], ratio)))
    return keep_heads, keep_channels


def _standardise(s: Tensor) -> Tensor:
    """(s - mean) / std over the vector; std is torch.std's default (unbiased, n - 1), as the FLAP
    reference; std == 0 (or a single element) counts as 1."""
    std = float(s.std()) if s.numel() > 1 else 0.0
    return (s - s.mean()) / (std if std > 0.0 else 1.0)


def select_adaptive(
    method: str,
    attn_channel_scores: list[Tensor],
    mlp_channel_scores: list[Tensor],
    unit_size: int,
    head_cost: int,
    channel_cost: int,
    ratio: float,
) -> tuple[list[Tensor], list[Tensor], int, int]:
    """FLAP's adaptive structure (AL-AM, method.md 9): a global selection weighted by cost.

    attn_channel_scores[i] (C_o,): block i's o_proj input channel scores (``channel_scores``);
    FLAP squares them here first (the reference squares the attention metric). Each block's
    attention channel scores are standardised (s - mean) / std over that block's C_o channels
    (std unbiased, n - 1, as the reference's torch.std; std == 0 counts as 1); a head unit's score
    is the mean of its unit_size standardised channel scores (unit u = channels [u*s, (u+1)*s)).
    mlp_channel_scores[i] (I_i,) (down_proj input channel scores) are standardised within the
    block likewise. Every unit of every block is pooled and sorted ascending; ties: heads before
    channels, then the lower block, then the lower index. Units are removed in that order while
    removed_cost < target = ratio * total_cost, skipping any unit whose removal would leave its
    block with no head or no channel; total_cost = sum_i (n_heads_i head_cost + I_i channel_cost).
    So removed_cost >= target (unless only protected units remain) and exceeds it by less than
    one unit's cost.

    Returns (keep_heads, keep_channels, removed_cost, total_cost): bool keep masks (True = kept)
    per block, (C_o_i // unit_size,) and (I_i,), on their scores' devices; costs in parameters.
    """
    _check_adaptive(method, attn_channel_scores, mlp_channel_scores, unit_size, head_cost, channel_cost, ratio)
    head_z, chan_z = _standardised_units(method, attn_channel_scores, mlp_channel_scores, unit_size)

    n_blocks = len(head_z)
    total_cost = sum(h.shape[0] * head_cost + c.shape[0] * channel_cost
                     for h, c in zip(head_z, chan_z))
    target = ratio * total_cost

    keep = [[torch.ones(h.shape[0], dtype=torch.bool) for h in head_z],
            [torch.ones(c.shape[0], dtype=torch.bool) for c in chan_z]]
    left = [[h.shape[0] for h in head_z], [c.shape[0] for c in chan_z]]
    cost = (head_cost, channel_cost)
    removed_cost = 0
    for k, b, j in _pooled_order(head_z, chan_z):
        if removed_cost >= target:
            break
        if left[k][b] <= 1:  # never empty a block's attention or MLP
            continue
        keep[k][b][j] = False
        left[k][b] -= 1
        removed_cost += cost[k]
    if removed_cost < target:
        log.warning(
            "adaptive selection reached only %d of the target %.0f parameters: every remaining unit "
            "is its block's last head or channel", removed_cost, target
        )
    log.info(
        "adaptive selection: removed %d of %d block-linear parameters (%.4f; target ratio %.4f) "
        "over %d blocks", removed_cost, total_cost, removed_cost / total_cost, ratio, n_blocks
    )
    keep_heads = [kh.to(a.device) for kh, a in zip(keep[0], attn_channel_scores)]
    keep_channels = [kc.to(m.device) for kc, m in zip(keep[1], mlp_channel_scores)]
    return keep_heads, keep_channels, int(removed_cost), int(total_cost)


def _check_adaptive(
    method: str, attn_channel_scores: list[Tensor], mlp_channel_scores: list[Tensor], unit_size: int,
    head_cost: int, channel_cost: int, ratio: float,
) -> None:
    """Raises ValueError on select_adaptive arguments out of range or score lists of different blocks."""
    _check_method(method)
    _check_ratio(ratio)
    _check_unit_size(unit_size)
    for arg, val in (("head_cost", head_cost), ("channel_cost", channel_cost)):
        if int(val) != val or val < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {val!r}")
    if len(attn_channel_scores) != len(mlp_channel_scores):
        raise ValueError(
            f"attn_channel_scores and mlp_channel_scores must list the same blocks, got "
            f"{len(attn_channel_scores)} and {len(mlp_channel_scores)}"
        )
    if not attn_channel_scores:
        raise ValueError("select_adaptive needs at least one block; got empty score lists")


def _standardised_units(
    method: str, attn_channel_scores: list[Tensor], mlp_channel_scores: list[Tensor], unit_size: int,
) -> tuple[list[Tensor], list[Tensor]]:
    """Per block: the head units' scores (n_heads_i,) (mean of the standardised, for FLAP squared,
    attention channel scores of each unit) and the standardised MLP channel scores (I_i,), float64 cpu."""
    head_z: list[Tensor] = []  # per block (n_heads_i,) float64 cpu
    chan_z: list[Tensor] = []  # per block (I_i,) float64 cpu
    for i, (a, m) in enumerate(zip(attn_channel_scores, mlp_channel_scores)):
        _check_vector(f"attn_channel_scores[{i}]", a)
        _check_vector(f"mlp_channel_scores[{i}]", m)
        if a.shape[0] % unit_size != 0:
            raise ValueError(
                f"attn_channel_scores[{i}] has {a.shape[0]} channels, not divisible by unit_size={unit_size}"
            )
        a64 = a.detach().double().cpu()
        if method == "flap":
            a64 = a64 * a64
        head_z.append(_standardise(a64).reshape(-1, unit_size).mean(1))
        chan_z.append(_standardise(m.detach().double().cpu()))
    return head_z, chan_z


def _pooled_order(head_z: list[Tensor], chan_z: list[Tensor]) -> list[tuple[int, int, int]]:
    """Every unit as (kind: 0 head / 1 channel, block, index), in ascending score order; ties: heads
    before channels, then the lower block, then the lower index."""
    # pool in tie order (heads before channels, then block, then index); a stable sort keeps it
    scores = torch.cat(head_z + chan_z)
    kind = torch.cat([torch.zeros(h.shape[0], dtype=torch.long) for h in head_z]
                     + [torch.ones(c.shape[0], dtype=torch.long) for c in chan_z])
    block = torch.cat([torch.full((h.shape[0],), i, dtype=torch.long) for i, h in enumerate(head_z)]
                      + [torch.full((c.shape[0],), i, dtype=torch.long) for i, c in enumerate(chan_z)])
    index = torch.cat([torch.arange(h.shape[0]) for h in head_z]
                      + [torch.arange(c.shape[0]) for c in chan_z])
    order = torch.sort(scores, stable=True).indices
    return list(zip(kind[order].tolist(), block[order].tolist(), index[order].tolist()))
