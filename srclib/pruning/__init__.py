"""Pruning: ``PRUNERS = {name: LayerPruner}`` (magnitude, wanda, sparsegpt), masks in one place,
the weighting axis (uniform | sink | stability), OWL, and ``prune_model`` (method.md 3-4)."""

from __future__ import annotations

from srclib.pruning.base import LayerPruner
from srclib.pruning.magnitude import MagnitudePruner, magnitude_mask
from srclib.pruning.masks import PATTERNS, SCOPES, get_pattern, select_mask, validate_sparsity
from srclib.pruning.sparsegpt import SparseGPTPruner, sparsegpt_prune
from srclib.pruning.wanda import ACCUMULATIONS, WandaPruner, wanda_score
from srclib.pruning.weighting import WEIGHTINGS, get_weighting

PRUNERS: dict[str, type[LayerPruner]] = {
    "magnitude": MagnitudePruner,
    "wanda": WandaPruner,
    "sparsegpt": SparseGPTPruner,
}

from srclib.pruning.spec import PruneSpec  # noqa: E402  (needs PRUNERS)
from srclib.pruning.core import PruneReport, prune_model  # noqa: E402
from srclib.pruning.owl import outlier_ratio, owl_sparsities  # noqa: E402

__all__ = [
    "PRUNERS", "PATTERNS", "SCOPES", "WEIGHTINGS", "ACCUMULATIONS",
    "LayerPruner", "MagnitudePruner", "WandaPruner", "SparseGPTPruner",
    "PruneSpec", "PruneReport", "prune_model",
    "select_mask", "get_pattern", "validate_sparsity", "magnitude_mask", "wanda_score", "sparsegpt_prune",
    "get_weighting", "outlier_ratio", "owl_sparsities",
]

from srclib.pruning.stage import PruneRun, load_masks, run_prune  # noqa: E402

__all__ += ["PruneRun", "run_prune", "load_masks"]
