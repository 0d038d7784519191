"""A PruneSpec with every field spelled out (no defaults in the library), for the pruning tests."""

from __future__ import annotations

from srclib.params import PruneSpec

BASE = dict(method="wanda", weighting="uniform", sparsity=0.5, pattern="unstructured", t_grid=(0.3, 0.7, 1.0),
            noise_eps=1e-3, sink_rule="zscore", sink_alpha=5.0, sink_kappa=2.0, sink_eps=0.0,
            stability_threshold=0.5, blocksize=128, percdamp=0.01, owl=False, owl_lambda=0.08, owl_m=5.0,
            one_shot_sink_wanda=True, calib_inputs="auto", wanda_accumulation="auto", noise_keep_ends=False,
            force_one_shot=False, bias_compensation="auto", structure=None, fidelity="corrected", noise="grid")


def make_spec(**kw) -> PruneSpec:
    """BASE with ``kw`` replacing fields."""
    return PruneSpec(**{**BASE, **kw})
