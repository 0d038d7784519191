"""``prune_structured``: remove whole attention heads (KV groups) and MLP channels (method.md 9).

Order of work, sharing the unstructured pruners' calibration machinery (srclib.pruning.core):
1. passes: noised passes on the t-grid for a DLM, clean windows for an AR model; token weights
   (the weighting axis) from the attention mass recorded in the same forward that yields the
   linears' inputs (srclib.pruning.core._prepare);
2. statistics of the inputs of o_proj and down_proj (srclib.pruning.structured.ChannelStats:
   weighted mean, fluctuation and norm per input channel);
   - one-shot (FLAP, magnitude-sp, every adaptive structure): all passes through the DENSE model,
     then every block is scored and units are selected at once;
   - sequential (Wanda-sp with the uniform structure): block i+1 sees the pruned block i;
   magnitude-sp without bias compensation needs no data;
3. selection: ``uniform`` removes the same share of each block's KV groups and channels,
   ``adaptive`` is FLAP's global AL-AM allocation with parameter costs;
4. the model is pruned in the masked form (zeroed rows / columns plus the compensation bias) while
   calibrating, and made compact (smaller linears) at the end when the family can load per-block
   shapes (``adapter.structured_form``); both forms compute the same function.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from srclib.pruning import calibration as cal
from srclib import devices
from srclib.models import structure as st
from srclib.params import PruneSpec
from srclib.pruning.plan import RunPlan
from srclib.pruning import structured as sp
from srclib.pruning.core import _Clock, _adapter_forward, _prepare, _resolved
from srclib.pruning.memory import PeakMemory

__all__ = ["StructuredReport", "prune_structured", "ROLES_SCORED"]

log = logging.getLogger(__name__)

ROLES_SCORED = ("o", "down")  # the linears whose inputs are scored: heads via o, channels via down


@dataclass
class StructuredReport:
    """What ``prune_structured`` did. ``structure`` holds the kept units and compensation biases."""

    structure: st.Structure
    record: dict[str, Any]  # st.structure_record(...): form, kept units per block
    layout: st.HeadLayout
    target: float  # the ratio asked for: removed share of the blocks' linear parameters
    achieved: float  # the removed share reached
    removed_params: int
    total_params: int
    blocks: list[dict[str, Any]]  # per block: kept / total KV groups, query heads, channels, removed share
    inputs: str  # "noised" | "clean" | "none"
    n_passes: int
    n_tokens: int
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        return [dict(b) for b in self.blocks]


def _scored(adapter: Any, block: nn.Module) -> dict[str, nn.Linear]:
    lins = st.block_linears(adapter, block)
    return {r: lins[r] for r in ROLES_SCORED}


def _block_scores(spec: PruneSpec, lins: dict[str, nn.Linear], stats: dict[str, sp.ChannelStats | None]):
    """(attention channel scores (C_o,), MLP channel scores (I,)) of one block, float64."""
    o = sp.channel_scores(spec.run.method, lins["o"].weight.detach(), stats["o"])
    down = sp.channel_scores(spec.run.method, lins["down"].weight.detach(), stats["down"])
    return o, down


def _biases(i: int, lins: dict[str, nn.Linear], stats: dict[str, sp.ChannelStats | None],
            keep_heads: torch.Tensor, keep_channels: torch.Tensor, unit_size: int) -> dict[str, torch.Tensor]:
    """FLAP's compensation for the removed inputs of block i's o and down (method.md 9)."""
    keep_o = keep_heads.repeat_interleave(unit_size)
    out = {}
    for role, keep in (("o", keep_o), ("down", keep_channels)):
        s = stats[role]
        w = lins[role].weight.detach()
        out[f"{i}.{role}"] = sp.bias_compensation(w, s.mean().to(w.device), keep.to(w.device)).float().cpu()
    return out


def _full(n_blocks: int, heads: list[int], channels: list[int]):
    return ([torch.ones(h, dtype=torch.bool) for h in heads], [torch.ones(c, dtype=torch.bool) for c in channels])


@dataclass
class _Units:
    """The prunable units of a model: KV groups (heads) and MLP channels per block, and their costs."""

    layout: st.HeadLayout
    unit_size: int  # o_proj input columns per KV group
    head_cost: int
    channel_cost: int
    n_heads: list[int]
    n_channels: list[int]

    @classmethod
    def of(cls, model: nn.Module, adapter: Any, blocks: nn.ModuleList) -> "_Units":
        layout = st.head_layout(adapter, model)
        unit_size = layout.n_rep * layout.head_dim
        hidden = int(_scored(adapter, blocks[0])["o"].out_features)
        head_cost, channel_cost = sp.unit_costs(hidden, layout.head_dim, layout.n_rep)
        return cls(layout, unit_size, head_cost, channel_cost,
                   [int(_scored(adapter, b)["o"].in_features) // unit_size for b in blocks],
                   [int(_scored(adapter, b)["down"].in_features) for b in blocks])


def _select_one_shot(model, adapter, spec: PruneSpec, rp: RunPlan, blocks, units: _Units, calibration, batches,
                     weight_fn, clock: _Clock):
    """Every block's statistics on the dense model (none for magnitude-sp without compensation),
    then the selection of all blocks at once; the model is left in the masked form.
    Returns (keep_heads, keep_channels, biases)."""
    needs_data = rp.needs_data
    stats: dict[int, dict[str, sp.ChannelStats | None]] = {
        i: ({r: sp.ChannelStats(int(lin.in_features), f"{adapter.blocks_path}.{i}.{r}")
             for r, lin in _scored(adapter, b).items()} if needs_data else {r: None for r in ROLES_SCORED})
        for i, b in enumerate(blocks)}
    if needs_data:
        linears = {f"{i}.{r}": lin for i, b in enumerate(blocks) for r, lin in _scored(adapter, b).items()}

        def feed(name: str, x: torch.Tensor, w: torch.Tensor | None) -> None:
            i, r = name.split(".")
            stats[int(i)][r].add(x, w)

        with clock("calibration"):
            cal.run_one_shot(model, blocks, linears, batches, feed, weight_fn=weight_fn,
                             chunk_size=calibration.mass_chunk_size, desc="structured statistics",
                             forward=_adapter_forward(model, adapter))
    bias: dict[str, torch.Tensor] = {}
    with clock("prune"):
        lins = [_scored(adapter, b) for b in blocks]
        scores = [_block_scores(spec, lins[i], stats[i]) for i in range(len(blocks))]
        if spec.run.structure == "uniform":
            keep_heads, keep_channels = sp.select_uniform(
                [sp.group_scores(spec.run.method, o, units.unit_size) for o, _ in scores],
                [d for _, d in scores], spec.run.sparsity)
        else:
            keep_heads, keep_channels, _, _ = sp.select_adaptive(
                spec.run.method, [o for o, _ in scores], [d for _, d in scores], units.unit_size, units.head_cost,
                units.channel_cost, spec.run.sparsity)
        keep_heads = [k.cpu() for k in keep_heads]
        keep_channels = [k.cpu() for k in keep_channels]
        if rp.compensate:
            for i in range(len(blocks)):
                bias.update(_biases(i, lins[i], stats[i], keep_heads[i], keep_channels[i], units.unit_size))
        st.apply_masked(model, adapter, st.Structure(keep_heads, keep_channels, dict(bias)))
    return keep_heads, keep_channels, bias


def _select_sequential(model, adapter, spec: PruneSpec, rp: RunPlan, blocks, units: _Units, calibration, batches,
                       weight_fn, clock: _Clock):
    """Wanda-sp with the uniform structure: block i is scored and masked before block i+1 sees its
    outputs. Returns (keep_heads, keep_channels, biases)."""
    keep_heads, keep_channels = _full(len(blocks), units.n_heads, units.n_channels)
    bias: dict[str, torch.Tensor] = {}
    current: dict[str, sp.ChannelStats] = {}

    def start_block(i: int):
        current.clear()
        current.update({r: sp.ChannelStats(int(lin.in_features), f"{adapter.blocks_path}.{i}.{r}")
                        for r, lin in _scored(adapter, blocks[i]).items()})
        return lambda r, x, w: current[r].add(x, w)

    def finish_block(i: int) -> None:
        with clock("prune"):
            lins = _scored(adapter, blocks[i])
            o, down = _block_scores(spec, lins, current)
            kh, kc = sp.select_uniform([sp.group_scores(spec.run.method, o, units.unit_size)], [down],
                                       spec.run.sparsity)
            keep_heads[i], keep_channels[i] = kh[0].cpu(), kc[0].cpu()
            b = (_biases(i, lins, current, keep_heads[i], keep_channels[i], units.unit_size)
                 if rp.compensate else {})
            bias.update(b)
            heads, chans = _full(len(blocks), units.n_heads, units.n_channels)
            heads[i], chans[i] = keep_heads[i], keep_channels[i]
            st.apply_masked(model, adapter, st.Structure(heads, chans, b))
        current.clear()

    w0, c0 = clock.wall["prune"], clock.cpu["prune"]
    with clock("calibration"):
        cal.run_sequential(model, blocks, lambda blk: _scored(adapter, blk), batches, start_block,
                           finish_block, weight_fn=weight_fn, chunk_size=calibration.mass_chunk_size,
                           forward=_adapter_forward(model, adapter))
    clock.discount("calibration", "prune", w0, c0)
    return keep_heads, keep_channels, bias


def _block_shares(units: _Units, keep_heads, keep_channels) -> list[dict[str, Any]]:
    """Per block: kept / total KV groups, query heads, channels, and the removed parameter share."""
    out = []
    for i, (nh, nc) in enumerate(zip(units.n_heads, units.n_channels)):
        kh, kc = int(keep_heads[i].sum()), int(keep_channels[i].sum())
        rem = (nh - kh) * units.head_cost + (nc - kc) * units.channel_cost
        out.append({
            "block": i, "kv_groups": kh, "kv_groups_total": nh, "query_heads": kh * units.layout.n_rep,
            "channels": kc, "channels_total": nc,
            "removed_share": rem / (nh * units.head_cost + nc * units.channel_cost),
        })
    return out


def prune_structured(
    model: nn.Module, adapter: Any, spec: PruneSpec, calibration: cal.Calibration | None = None,
    run_plan: RunPlan | None = None,
) -> StructuredReport:
    """Prune ``model`` structurally in place per ``spec`` (spec.run.structure set); see the module
    docstring. ``run_plan``: the spec's decisions on this model, if the caller resolved them."""
    if spec.run.structure is None:
        raise ValueError("prune_structured needs spec.run.structure ('uniform' or 'adaptive'), got None")
    clock = _Clock()
    blocks = adapter.blocks(model)
    units = _Units.of(model, adapter, blocks)
    mask_id, rp = _resolved(model, adapter, spec, calibration, run_plan,
                            lambda rp: f"structured {spec.run.method!r} (bias compensation {rp.compensate})")
    inputs, batches, weight_fn = "none", [], None
    with PeakMemory(devices.of(model)) as mem:
        if rp.needs_data:
            inputs, batches, weight_fn = _prepare(model, adapter, spec, rp, calibration, mask_id, blocks, clock)
        select = _select_one_shot if rp.one_shot or not rp.needs_data else _select_sequential
        keep_heads, keep_channels, bias = select(model, adapter, spec, rp, blocks, units, calibration, batches,
                                                 weight_fn, clock)
        structure = st.Structure(keep_heads, keep_channels, dict(sorted(bias.items())))
        form = getattr(adapter, "structured_form", "compact")
        with clock("compact"):
            if form == "compact":  # the biases are in the masked linears already: slice, add nothing
                st.apply_compact(model, adapter, st.Structure(keep_heads, keep_channels, {}))

    removed = sum(int((~k).sum()) * units.head_cost for k in keep_heads) + sum(
        int((~k).sum()) * units.channel_cost for k in keep_channels)
    total = sum(h * units.head_cost + c * units.channel_cost for h, c in zip(units.n_heads, units.n_channels))
    clock.finish()
    record = st.structure_record(structure, units.layout, form)
    log.info("structured %s/%s (%s): removed %.4f of block linear params (target %.4f), form %s",
             spec.run.method, spec.run.weighting, spec.run.structure, removed / total, spec.run.sparsity, form)
    return StructuredReport(
        structure=structure, record=record, layout=units.layout, target=float(spec.run.sparsity),
        achieved=removed / total, removed_params=int(removed), total_params=int(total),
        blocks=_block_shares(units, keep_heads, keep_channels),
        inputs=inputs, n_passes=sum(int(b.ids.shape[0]) for b in batches),
        n_tokens=sum(int(b.ids.numel()) for b in batches), seconds=dict(clock.wall), cpu_seconds=dict(clock.cpu),
        memory=mem.result,
    )
