"""A PruneSpec with every setting spelled out (no defaults in the library), for the pruning tests.

``make_spec(**kw)`` takes the flat record's keys (``srclib.params.SPEC_RECORD``: method, sink_alpha,
blocksize, owl, ...) and builds the composed spec from its sections."""

from __future__ import annotations

from helpers import CHUNK, WINDOWS_PER_BATCH  # tests/ is on sys.path

from srclib import params
from srclib.params import SPEC_RECORD, PruneSpec

BASE = dict(method="wanda", weighting="uniform", sparsity=0.5, pattern="unstructured", t_grid=(0.3, 0.7, 1.0),
            noise_eps=1e-3, sink_rule="zscore", sink_alpha=5.0, sink_kappa=2.0, sink_eps=0.0,
            stability_threshold=0.5, blocksize=128, percdamp=0.01, owl=False, owl_lambda=0.08, owl_m=5.0,
            one_shot_sink_wanda=True, calib_inputs="auto", wanda_accumulation="auto", noise_keep_ends=False,
            force_one_shot=False, bias_compensation="auto", structure=None, fidelity="corrected", noise="grid")
# the calibration settings the spec holds but the pruning tests do not vary (windows come in-process)
CALIBRATION = dict(n_samples=4, seq_len=16, corpus="data/raw/corpus/calibration.jsonl",
                   windows_per_batch=WINDOWS_PER_BATCH, chunk_size=CHUNK)
SECTIONS = {"run": params.RunChoices, "calibration": params.CalibrationParams, "sink": params.VarianceParams,
            "sparsegpt": params.SparseGPTParams, "owl": params.OwlParams, "options": params.PruneOptions}


def make_spec(**kw) -> PruneSpec:
    """BASE with ``kw`` replacing record keys, as a composed PruneSpec."""
    unknown = sorted(set(kw) - set(SPEC_RECORD))
    if unknown:
        raise TypeError(f"make_spec: unknown record keys {unknown}")
    flat = {**BASE, **kw}
    parts: dict[str, dict] = {"calibration": dict(CALIBRATION)}
    top = {}
    for key, (section, name) in SPEC_RECORD.items():
        value = list(flat[key]) if key == "t_grid" else flat[key]
        (top if section is None else parts.setdefault(section, {}))[name] = value
    return PruneSpec(**top, **{s: SECTIONS[s](**fields) for s, fields in parts.items()})
