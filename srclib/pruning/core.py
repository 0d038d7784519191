"""``prune_model``: one pruning run on a model in place (method.md 3-4).

Order of work:
1. passes: the clean windows, or (DLM, noised inputs) every window at every t of the grid;
2. token weights (the weighting axis), plumbed ONCE into every pruner's ``add_batch``:
   - uniform: none;
   - from the attention mass of the calibration passes themselves (noised DLM passes, clean AR
     passes): recorded in the SAME forward that produces the linears' inputs;
   - DLM calibrated on clean windows (sink-aware SparseGPT): per window from the mass of its
     noised passes on the dense model (a mass-only pre-pass, as the released code does);
3. OWL (optional): per-block sparsities from the dense model's Wanda scores;
4. statistics and pruning: magnitude needs no data; one-shot (all passes through the dense
   model, then prune everything) or sequential (block by block, block i+1 sees the pruned
   block i).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from srclib.pruning import calibration as cal
from srclib import devices, sinks
from srclib.pruning.base import LayerPruner
from srclib.pruning import memory
from srclib.pruning.plan import RunPlan, resolve
from srclib.pruning.memory import PeakMemory
from srclib.pruning.owl import outlier_ratio, owl_sparsities
from srclib.params import PruneSpec
from srclib.pruning.registry import PRUNERS
from srclib.pruning.wanda import WandaPruner
from srclib.pruning.weighting import get_weighting

__all__ = ["PruneReport", "prune_model", "make_batches", "weights_from_mass"]

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    """What ``prune_model`` did. Layer names are full module paths (e.g. model.layers.0.mlp.up_proj)."""

    sparsity: dict[str, float]  # actual pruned fraction per layer (from its mask)
    target: dict[str, float]  # target sparsity per layer (OWL: its block's)
    overall: float  # pruned / total over every prunable weight
    masks: dict[str, torch.Tensor]  # bool (C_out, C_in), True = pruned, on CPU
    block_sparsity: list[float]
    outlier_ratios: list[float] | None
    inputs: str  # "noised" | "clean" | "none"
    n_passes: int
    n_tokens: int
    seconds: dict[str, float] = field(default_factory=dict)  # wall clock per phase
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU time per phase
    memory: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per layer: name, shape, target, actual sparsity (for a CSV or a DataFrame)."""
        return [
            {"layer": n, "rows": int(m.shape[0]), "cols": int(m.shape[1]), "target": self.target[n],
             "sparsity": self.sparsity[n], "pruned": int(m.sum())}
            for n, m in self.masks.items()
        ]


class _Clock:
    """Wall and process-CPU seconds per phase (CPU time is robust to other processes' load)."""

    def __init__(self, phases: tuple[str, ...] = ("calibration", "prune")) -> None:
        self.wall: dict[str, float] = defaultdict(float, dict.fromkeys(phases, 0.0))
        self.cpu: dict[str, float] = defaultdict(float, dict.fromkeys(phases, 0.0))
        self._start = time.perf_counter(), time.process_time()

    def finish(self) -> None:
        """The run's ``total``, from the clock's creation."""
        self.wall["total"] = time.perf_counter() - self._start[0]
        self.cpu["total"] = time.process_time() - self._start[1]

    @contextlib.contextmanager
    def __call__(self, key: str):
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[key] += time.perf_counter() - w0
            self.cpu[key] += time.process_time() - c0

    def discount(self, key: str, other: str, wall0: float, cpu0: float) -> None:
        """Remove from ``key`` the time ``other`` accrued since (wall0, cpu0) (nested phases)."""
        self.wall[key] -= self.wall[other] - wall0
        self.cpu[key] -= self.cpu[other] - cpu0


def weights_from_mass(mass: torch.Tensor, n_t: int, per_pass: bool, spec: PruneSpec) -> torch.Tensor:
    """Token weights of one forward from its recorded mass.

    mass: (L, B, T) per-layer key mass, B = windows * n_t passes in window-major order.
    Returns (B, T) (per pass) or (B / n_t, T) (per clean window) float32 in [0, 1].
    """
    m = mass.float().sum(dim=0)  # (B, T) global mass
    B, T = m.shape
    if B % n_t:
        raise ValueError(f"batch of {B} passes is not a whole number of windows x {n_t} noise levels")
    s = sinks.sink_scores(m, rule=spec.sink.rule, alpha=spec.sink.alpha, kappa=spec.sink.kappa, eps=spec.sink.eps)
    w = get_weighting(spec.run.weighting)(s.reshape(B // n_t, n_t, T), per_pass, spec.sink.stability_threshold)
    return w.reshape(-1, T)


def _adapter_forward(model: nn.Module, adapter: Any) -> Callable[[torch.Tensor], Any]:
    """Calibration forwards go through the adapter, which builds the model's own attention inputs
    (e.g. Dream's bidirectional 4-D mask)."""
    return functools.partial(adapter.logits, model)  # called as forward(ids)


def make_batches(passes: torch.Tensor, windows_per_batch: int) -> list[cal.PassBatch]:
    """passes (N, n_t, T) -> batches of ``windows_per_batch`` windows (all their passes)."""
    N, n_t, T = passes.shape
    return [cal.PassBatch(ids=passes[j:j + windows_per_batch].reshape(-1, T), n_t=n_t)
            for j in range(0, N, windows_per_batch)]


def _stash_too_large(model, adapter, blocks, batches: list[cal.PassBatch]) -> bool:
    """Would one batch's stash of every prunable linear's inputs (one-shot calibration with weights
    from the same forward) exceed ``memory.stash_budget``? Then ``_prepare`` streams instead."""
    if not batches:
        return False
    B, T = (int(n) for n in batches[0].ids.shape)
    linears = [lin for b in blocks for lin in adapter.prunable(b).values()]
    need = memory.stash_bytes(linears, B, T, next(model.parameters()).element_size())
    budget = memory.stash_budget(devices.of(model))
    if need > budget:
        log.info("one-shot stash of %.1f GB > budget %.1f GB: sink weights from a mass-only pre-pass",
                 need / 1e9, budget / 1e9)
    return need > budget


def _prepare(model, adapter, spec: PruneSpec, rp: RunPlan, calib: cal.Calibration, mask_id, blocks, clock: _Clock):
    """Batches of calibration passes, with weights attached or an online weight function."""
    dlm = mask_id is not None
    inputs = rp.inputs
    windows = calib.windows.cpu()
    noised = None
    if dlm and (inputs == "noised" or get_weighting(spec.run.weighting).needs_mass):
        noised = cal.noised_passes(windows, spec.calibration.t_grid, mask_id, spec.calibration.noise_eps, calib.seed,
                                   keep_first=adapter.shift, **rp.noise)  # (N, n_t, T)
    passes = noised if inputs == "noised" else windows[:, None, :]  # (N, n_t | 1, T)
    batches = make_batches(passes, calib.windows_per_batch)
    weight_fn = None
    if get_weighting(spec.run.weighting).needs_mass:
        n_t = passes.shape[1]
        if noised is None or inputs == "noised":  # the scored passes are the calibration passes
            weight_fn = lambda mass, n_t=n_t: weights_from_mass(mass, n_t, True, spec)  # noqa: E731
            if (rp.one_shot or spec.owl.enabled) and _stash_too_large(model, adapter, blocks, batches):
                # stream: the same per-pass weights from a mass-only pre-pass of the same passes, so
                # the one-shot forward feeds every linear's inputs at once (no stash of all blocks)
                with clock("mass_prepass"):
                    for b in batches:
                        mass = cal.record_pass_mass(model, blocks, b.ids, calib.mass_chunk_size,
                                                    forward=_adapter_forward(model, adapter))
                        b.weights = weights_from_mass(mass, b.n_t, True, spec)  # (passes, T)
                weight_fn = None
        else:  # clean DLM windows, weights from their noised passes (mass-only pre-pass)
            with clock("mass_prepass"):
                for b, nb in zip(batches, make_batches(noised, calib.windows_per_batch)):
                    mass = cal.record_pass_mass(model, blocks, nb.ids, calib.mass_chunk_size,
                                                forward=_adapter_forward(model, adapter))
                    b.weights = weights_from_mass(mass, nb.n_t, False, spec)  # (windows, T)
    return inputs, batches, weight_fn


def _wanda_outlier_ratios(model, adapter, blocks, per_block, batches, weight_fn, spec, rp, calib) -> list[float]:
    """OWL's D per block from Wanda scores of the DENSE model (one-shot statistics pass)."""
    pruners = {f"{i}.{n}": WandaPruner(lin, n, accumulation=rp.accumulation)
               for i, lins in enumerate(per_block) for n, lin in lins.items()}
    linears = {k: p.layer for k, p in pruners.items()}
    cal.run_one_shot(model, blocks, linears, batches, lambda k, x, w: pruners[k].add_batch(x, w),
                     weight_fn=weight_fn, chunk_size=calib.mass_chunk_size, desc="OWL statistics",
                     forward=_adapter_forward(model, adapter))
    return [outlier_ratio([pruners[f"{i}.{n}"].score() for n in lins], spec.owl.m)
            for i, lins in enumerate(per_block)]


@dataclass
class _Run:
    """What the phases of one ``prune_model`` call share."""

    model: nn.Module
    adapter: Any
    spec: PruneSpec
    rp: RunPlan
    calibration: cal.Calibration | None
    pruner_cls: type[LayerPruner]
    blocks: nn.ModuleList
    per_block: list[dict[str, nn.Linear]]
    clock: _Clock
    block_sparsity: list[float]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    ratios: list[float] | None = None
    batches: list[cal.PassBatch] = field(default_factory=list)
    weight_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def name(self, i: int, n: str) -> str:
        return f"{self.adapter.blocks_path}.{i}.{n}"

    def pruner(self, i: int, n: str, lin: nn.Linear) -> LayerPruner:
        return self.pruner_cls(lin, self.name(i, n), **self.rp.pruner_options)

    def prune_one(self, i: int, n: str, pruner: LayerPruner) -> None:
        with self.clock("prune"):
            mask = pruner.prune(self.block_sparsity[i], self.spec.run.pattern)
            pruner.free()
        self.masks[self.name(i, n)] = mask.detach().cpu()

    def set_owl(self, ratios: list[float]) -> None:
        self.ratios = ratios
        self.block_sparsity = owl_sparsities(ratios, self.spec.run.sparsity, self.spec.owl.lambda_)


def _resolved(model: nn.Module, adapter: Any, spec: PruneSpec, calibration: cal.Calibration | None,
              run_plan: RunPlan | None, what: Callable[[RunPlan], str]) -> tuple[int | None, RunPlan]:
    """(the model's mask id, the run's plan); a run that needs data but got no ``calibration`` is a
    ValueError starting with ``what(plan)``."""
    mask_id = adapter.mask_id(model)
    rp = run_plan or resolve(spec, dlm=mask_id is not None, shift=bool(adapter.shift))
    if rp.needs_data and calibration is None:
        raise ValueError(f"{what(rp)} needs calibration data; got calibration=None")
    return mask_id, rp


def _prunable_blocks(model: nn.Module, adapter: Any) -> tuple[nn.ModuleList, list[dict[str, nn.Linear]]]:
    blocks = adapter.blocks(model)
    per_block = [adapter.prunable(b) for b in blocks]
    for i, lins in enumerate(per_block):
        if not lins:
            raise ValueError(f"block {i} of {adapter.key!r} has no prunable nn.Linear")
    return blocks, per_block


def _prune_activation_free(r: _Run) -> None:
    """Magnitude: every linear from its weights alone."""
    for i, lins in enumerate(r.per_block):
        for n, lin in lins.items():
            r.prune_one(i, n, r.pruner(i, n, lin))


def _prune_one_shot(r: _Run) -> None:
    """Every linear's statistics from the dense model in one pass of the batches, then prune all."""
    pruners = {(i, n): r.pruner(i, n, lin) for i, lins in enumerate(r.per_block) for n, lin in lins.items()}
    keyed = {f"{i}.{n}": p for (i, n), p in pruners.items()}
    with r.clock("calibration"):
        cal.run_one_shot(r.model, r.blocks, {k: p.layer for k, p in keyed.items()}, r.batches,
                         lambda k, x, w: keyed[k].add_batch(x, w), weight_fn=r.weight_fn,
                         chunk_size=r.calibration.mass_chunk_size, forward=_adapter_forward(r.model, r.adapter))
    if r.spec.owl.enabled:  # one-shot Wanda: OWL's statistics are these very statistics
        r.set_owl([outlier_ratio([pruners[(i, n)].score() for n in lins], r.spec.owl.m)
                   for i, lins in enumerate(r.per_block)])
    for (i, n), p in pruners.items():
        r.prune_one(i, n, p)


def _prune_sequential(r: _Run) -> None:
    """Block by block: block i+1's statistics see the outputs of the already pruned block i."""
    current: dict[str, LayerPruner] = {}

    def start_block(i: int):
        current.clear()
        current.update({n: r.pruner(i, n, lin) for n, lin in r.per_block[i].items()})
        return lambda n, x, w: current[n].add_batch(x, w)

    def finish_block(i: int) -> None:
        for n, p in current.items():
            r.prune_one(i, n, p)
        current.clear()

    w0, c0 = r.clock.wall["prune"], r.clock.cpu["prune"]
    with r.clock("calibration"):  # block forwards only: the pruning inside is discounted
        cal.run_sequential(r.model, r.blocks, r.adapter.prunable, r.batches, start_block, finish_block,
                           weight_fn=r.weight_fn, chunk_size=r.calibration.mass_chunk_size,
                           forward=_adapter_forward(r.model, r.adapter))
    r.clock.discount("calibration", "prune", w0, c0)


def _report(r: _Run, inputs: str, memory_result: dict[str, Any]) -> PruneReport:
    total = sum(int(m.numel()) for m in r.masks.values())
    pruned = sum(int(m.sum()) for m in r.masks.values())
    r.clock.finish()
    target = {r.name(i, n): float(r.block_sparsity[i]) for i, lins in enumerate(r.per_block) for n in lins}
    return PruneReport(
        sparsity={k: float(m.float().mean()) for k, m in r.masks.items()},
        target={k: target[k] for k in r.masks},
        overall=pruned / total,
        masks=r.masks,
        block_sparsity=[float(s) for s in r.block_sparsity],
        outlier_ratios=r.ratios,
        inputs=inputs,
        n_passes=sum(int(b.ids.shape[0]) for b in r.batches),
        n_tokens=sum(int(b.ids.numel()) for b in r.batches),
        seconds=dict(r.clock.wall),
        cpu_seconds=dict(r.clock.cpu),
        memory=memory_result,
    )


def prune_model(
    model: nn.Module, adapter: Any, spec: PruneSpec, calibration: cal.Calibration | None = None,
    run_plan: RunPlan | None = None,
) -> PruneReport:
    """Prune every prunable linear of ``model``'s blocks in place; return a ``PruneReport``.
    ``run_plan``: the spec's decisions on this model (srclib.pruning.plan.resolve), if the caller
    resolved them already."""
    clock = _Clock()
    pruner_cls: type[LayerPruner] = PRUNERS[spec.run.method]
    blocks, per_block = _prunable_blocks(model, adapter)
    mask_id, rp = _resolved(model, adapter, spec, calibration, run_plan,
                            lambda rp: f"method {spec.run.method!r} (owl={spec.owl.enabled})")
    r = _Run(model, adapter, spec, rp, calibration, pruner_cls, blocks, per_block, clock,
             block_sparsity=[spec.run.sparsity] * len(blocks))
    inputs = "none"
    with PeakMemory(devices.of(model)) as mem:
        if rp.needs_data:
            inputs, r.batches, r.weight_fn = _prepare(model, adapter, spec, rp, calibration, mask_id, blocks, clock)
        one_shot_stats = rp.one_shot and pruner_cls.needs_inputs
        if spec.owl.enabled and not (one_shot_stats and spec.run.method == "wanda"):
            with clock("owl"):
                r.set_owl(_wanda_outlier_ratios(model, adapter, blocks, per_block, r.batches, r.weight_fn, spec, rp,
                                                calibration))
        if not pruner_cls.needs_inputs:
            _prune_activation_free(r)
        elif one_shot_stats:
            _prune_one_shot(r)
        else:
            _prune_sequential(r)
    return _report(r, inputs, mem.result)
