"""``PruneSpec``: everything that defines one pruning run (built by srclib.params from params.yaml)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from srclib.pruning.masks import get_pattern
from srclib.pruning.wanda import ACCUMULATIONS
from srclib.pruning.weighting import get_weighting

__all__ = ["PruneSpec", "CALIB_INPUTS", "DEFAULT_INPUTS", "DEFAULT_ACCUMULATION"]

# What a DLM is calibrated on. AR models (no mask token) always use clean windows.
CALIB_INPUTS = ("noised", "clean")
# "auto" resolves per method as the released code does: sink-aware Wanda on noised passes,
# SparseGPT's Hessian on clean windows (its sink weights come from the noised passes).
DEFAULT_INPUTS = {"magnitude": "clean", "wanda": "noised", "sparsegpt": "clean"}
# "auto" Wanda accumulation per weighting (released code: uniform = total norm, sink = per-pass sum)
DEFAULT_ACCUMULATION = {"uniform": "total", "sink": "per_pass", "stability": "per_pass"}


@dataclass(frozen=True)
class PruneSpec:
    """One pruning run (method.md 3-4).

    method: a key of srclib.pruning.PRUNERS (magnitude | wanda | sparsegpt).
    weighting: a key of WEIGHTINGS (uniform | sink | stability); magnitude allows only uniform.
    sparsity: target fraction pruned per matrix, in [0, 1); N:M patterns need exactly N/M.
    pattern: a key of PATTERNS (unstructured | 2:4 | 4:8).
    t_grid: noise levels of the calibration passes, each in (0, 1].
    noise_eps: eps of p = (1 - eps) t + eps, in [0, 1).
    sink_rule, sink_alpha, sink_kappa, sink_eps: srclib.sinks.sink_scores arguments.
    stability_threshold: persistence over the t-grid at which a sink is stable, in (0, 1].
    blocksize, percdamp: SparseGPT.
    owl, owl_lambda, owl_m: outlier-weighted layer-wise sparsity (unstructured only).
    one_shot_sink_wanda: sink-/stability-weighted Wanda collects all passes on the dense model
        (released code) instead of sequentially.
    Documented defaults:
    calib_inputs: "auto" (see DEFAULT_INPUTS) | "noised" | "clean" -- a DLM's calibration passes.
    wanda_accumulation: "auto" (see DEFAULT_ACCUMULATION) | "total" | "per_pass".
    noise_keep_ends: never mask the last position either (Dream's variant; the first position
        is kept whenever the adapter is shifted).
    force_one_shot: every method one-shot on the dense model (ablations and benchmarks).
    """

    method: str
    weighting: str
    sparsity: float
    pattern: str
    t_grid: tuple[float, ...]
    noise_eps: float
    sink_rule: str
    sink_alpha: float
    sink_kappa: float
    sink_eps: float
    stability_threshold: float
    blocksize: int
    percdamp: float
    owl: bool
    owl_lambda: float
    owl_m: float
    one_shot_sink_wanda: bool
    calib_inputs: str = "auto"
    wanda_accumulation: str = "auto"
    noise_keep_ends: bool = False
    force_one_shot: bool = False

    def __post_init__(self) -> None:
        from srclib.pruning import PRUNERS  # registry lives in the package

        if self.method not in PRUNERS:
            raise ValueError(f"unknown method {self.method!r}; allowed methods: {sorted(PRUNERS)}")
        get_weighting(self.weighting)
        get_pattern(self.pattern).check(self.sparsity)
        if not PRUNERS[self.method].needs_inputs and self.weighting != "uniform":
            raise ValueError(
                f"method {self.method!r} ignores activations, so weighting must be 'uniform', "
                f"got weighting={self.weighting!r}"
            )
        object.__setattr__(self, "t_grid", tuple(float(t) for t in self.t_grid))
        if not self.t_grid or any(not 0.0 < t <= 1.0 for t in self.t_grid):
            raise ValueError(f"t_grid must be a non-empty list of t in (0, 1], got {list(self.t_grid)}")
        if not 0.0 <= self.noise_eps < 1.0:
            raise ValueError(f"noise_eps must lie in [0, 1), got {self.noise_eps}")
        from srclib.sinks import SINK_RULES

        if self.sink_rule not in SINK_RULES:
            raise ValueError(f"unknown sink_rule {self.sink_rule!r}; allowed: {sorted(SINK_RULES)}")
        if not self.sink_alpha > 0:
            raise ValueError(f"sink_alpha must be > 0, got {self.sink_alpha}")
        if not 0.0 < self.stability_threshold <= 1.0:
            raise ValueError(f"stability_threshold must lie in (0, 1], got {self.stability_threshold}")
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise ValueError(f"blocksize must be a positive int, got {self.blocksize!r}")
        if not (self.percdamp >= 0 and math.isfinite(self.percdamp)):
            raise ValueError(f"percdamp must be a finite number >= 0, got {self.percdamp}")
        if self.owl:
            if get_pattern(self.pattern).structured:
                raise ValueError(f"OWL sets a sparsity per block, so pattern must be 'unstructured', got {self.pattern!r}")
            if not 0.0 <= self.owl_lambda < 1.0:
                raise ValueError(f"owl_lambda must lie in [0, 1), got {self.owl_lambda}")
            if not self.owl_m > 0:
                raise ValueError(f"owl_m must be > 0, got {self.owl_m}")
        if self.calib_inputs != "auto" and self.calib_inputs not in CALIB_INPUTS:
            raise ValueError(f"calib_inputs must be 'auto' or one of {CALIB_INPUTS}, got {self.calib_inputs!r}")
        if self.wanda_accumulation != "auto" and self.wanda_accumulation not in ACCUMULATIONS:
            raise ValueError(
                f"wanda_accumulation must be 'auto' or one of {sorted(ACCUMULATIONS)}, got {self.wanda_accumulation!r}"
            )

    # ---- resolved choices -----------------------------------------------------------------------
    def inputs_for(self, dlm: bool) -> str:
        """'noised' or 'clean': what the calibration passes are (AR models: always 'clean')."""
        if not dlm:
            return "clean"
        return DEFAULT_INPUTS[self.method] if self.calib_inputs == "auto" else self.calib_inputs

    @property
    def accumulation(self) -> str:
        if self.wanda_accumulation != "auto":
            return self.wanda_accumulation
        return DEFAULT_ACCUMULATION[self.weighting]

    @property
    def one_shot(self) -> bool:
        if self.force_one_shot:
            return True
        return self.method == "wanda" and self.weighting != "uniform" and self.one_shot_sink_wanda

    def pruner_options(self) -> dict[str, Any]:
        return {"accumulation": self.accumulation, "blocksize": self.blocksize, "percdamp": self.percdamp}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["t_grid"] = list(self.t_grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruneSpec":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown PruneSpec fields {unknown}; allowed: {sorted(names)}")
        return cls(**d)
