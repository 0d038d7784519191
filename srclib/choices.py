"""The names every registry is keyed by, in one light module (no imports).

srclib.params validates params.yaml against these without importing torch or the library, so a
stage that reads params does not depend on every registry's code. Each registry checks at import
time that its keys are exactly these (``check``), so a name added here without an
implementation, or an implementation without a name, fails at once.
"""

from __future__ import annotations

__all__ = ["METHODS", "SP_METHODS", "STRUCTURES", "BIAS_COMPENSATION", "ACTIVATION_FREE", "WEIGHTINGS", "PATTERNS",
           "SINK_RULES", "REMASKING", "ACCUMULATIONS", "CALIB_INPUTS", "NOISES", "FIDELITY", "DTYPES", "check"]

METHODS = ("magnitude", "wanda", "sparsegpt")  # srclib.pruning.registry.PRUNERS
SP_METHODS = ("magnitude", "wanda", "flap")  # structured scores: srclib.pruning.structured.SP_METHODS
STRUCTURES = ("uniform", "adaptive")  # structured allocation: per block, or FLAP's global AL-AM
BIAS_COMPENSATION = ("auto", "on", "off")  # structured only; auto = on for FLAP, off otherwise
ACTIVATION_FREE = ("magnitude",)  # methods whose scores use no activations: weighting must be uniform
WEIGHTINGS = ("uniform", "sink", "stability")  # srclib.pruning.weighting.WEIGHTINGS
PATTERNS = {"unstructured": None, "2:4": (2, 4), "4:8": (4, 8)}  # name -> (N, M); N:M fixes N/M
SINK_RULES = ("zscore", "margin")  # srclib.sinks.SINK_RULES
REMASKING = ("low_confidence", "random")  # srclib.diffusion.REMASKING
ACCUMULATIONS = ("total", "per_pass")  # srclib.pruning.wanda.ACCUMULATIONS
CALIB_INPUTS = ("noised", "clean")  # what a DLM's calibration passes are
NOISES = ("grid", "stratified")  # calibration noise of a DLM: srclib.pruning.calibration.NOISES
FIDELITY = ("released", "corrected")  # prune.fidelity: the released code's choices, or srclib's
DTYPES = ("float32", "bfloat16", "float16")
MODEL_FAMILIES = ("tiny", "hf_causal", "llada", "dream")  # srclib.models.FAMILIES (adapter classes)


def check(what: str, registry: object, names: object) -> None:
    """Raise at import time when a registry's keys differ from the declared names."""
    have, want = sorted(registry), sorted(names)  # type: ignore[call-overload]
    if have != want:
        raise RuntimeError(f"registry of {what} has keys {have}, srclib.choices declares {want}")
