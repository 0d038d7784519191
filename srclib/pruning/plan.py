"""What one pruning run does: the decisions a ``srclib.params.PruneSpec`` resolves to (method.md
3-4, 9-10). Torch-free, so params checks and reports can ask without loading a model.

``srclib.params`` only declares and validates the settings; every rule that turns settings into
the run's choices lives here, once:

* ``needs_data``: does the run calibrate at all (the one home of that rule);
* ``inputs_for``: noised passes or clean windows (``AUTO_INPUTS``);
* ``draws_noise`` / ``noise_options``: whether and how a DLM's windows are noised;
* ``one_shot``: all statistics on the dense model, or block by block;
* ``accumulation`` (``AUTO_ACCUMULATION``), ``compensate``, ``pruner_options``, ``mask_pattern``;
* ``effective``: the resolved choices as the prune metrics record them;
* ``check_noise_used``: the params-level check that needs them (a noise setting no instance uses);
* ``resolve``: all of them at once for one run on one model (``RunPlan``), which the pruning code
  reads instead of asking again at every step.

``fidelity = "released"`` sets, for a run, every choice where the released code differs from its
description (method.md 10), overriding the options it governs: calibration windows drawn as the
released loader draws them; the released noise per model family (``noise_options``: stratified with
both ends kept for shifted / Dream-style DLMs, the t-grid with no position kept for LLaDA-style
ones); uniform Wanda on clean windows (``inputs_for``); sink-aware Wanda per-row unstructured
whatever the pattern, and magnitude's / SparseGPT's ``<=`` thresholds (``pruner_options``).
Structured runs take the windows and the noise only (the released code has no structured pruning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from srclib import choices
from srclib.schema import ParamsError

if TYPE_CHECKING:  # annotations only: this module imports nothing above srclib.params
    from srclib.params import PruneParams, PruneSpec

__all__ = ["RunPlan", "resolve", "AUTO_INPUTS", "AUTO_ACCUMULATION", "released", "needs_data", "draws_noise",
           "inputs_for",
           "noise_options", "mask_pattern", "effective", "accumulation", "compensate", "one_shot",
           "pruner_options", "check_noise_used"]

# What "auto" means for prune.options (the released code's choices, method.md 4).
# calib_inputs: sink-aware Wanda on noised passes, SparseGPT's Hessian on clean windows (its sink
# weights come from the noised passes). AR models (no mask token) always use clean windows.
AUTO_INPUTS = {"magnitude": "clean", "wanda": "noised", "sparsegpt": "clean"}
# wanda_accumulation: uniform = the total norm over all tokens, sink/stability = per-pass sum.
AUTO_ACCUMULATION = {"uniform": "total", "sink": "per_pass", "stability": "per_pass"}


def released(spec: PruneSpec) -> bool:
    """prune.fidelity = released: the released code's choices (see the module docstring)."""
    return spec.fidelity == "released"


def compensate(spec: PruneSpec) -> bool:
    """Structured pruning adds FLAP's bias compensation (prune.options.bias_compensation)."""
    if spec.options.bias_compensation == "auto":
        return spec.run.method == "flap"
    return spec.options.bias_compensation == "on"


def needs_data(spec: PruneSpec) -> bool:
    """Whether the run calibrates at all: every method that scores activations, OWL (its outlier
    ratios come from Wanda scores), and structured bias compensation; magnitude alone does not."""
    if spec.run.structure is not None:
        return spec.run.method not in choices.ACTIVATION_FREE or compensate(spec)
    return spec.run.method not in choices.ACTIVATION_FREE or spec.owl.enabled


def inputs_for(spec: PruneSpec, dlm: bool) -> str:
    """'noised' or 'clean': what the calibration passes are (AR models: always 'clean')."""
    if not dlm:
        return "clean"
    run, calib_inputs = spec.run, spec.options.calib_inputs
    if run.structure is not None and calib_inputs == "auto":
        return "noised"  # method.md 9: structured scores on the noised t-grid passes
    if released(spec) and run.structure is None:  # overrides calib_inputs
        return "clean" if (run.method, run.weighting) == ("wanda", "uniform") else AUTO_INPUTS[run.method]
    return AUTO_INPUTS[run.method] if calib_inputs == "auto" else calib_inputs


def draws_noise(spec: PruneSpec) -> bool:
    """Whether a DLM run of this spec noises its windows (noised passes, or the noised mass
    pre-pass that gives sink / stability weights to clean windows)."""
    return needs_data(spec) and (inputs_for(spec, True) == "noised" or spec.run.weighting != "uniform")


def noise_options(spec: PruneSpec, shift: bool) -> dict[str, Any]:
    """How a DLM's windows are noised (srclib.pruning.calibration.noised_passes keywords): ``noise``
    ("grid" | "stratified") and ``keep_ends``. ``shift``: the adapter's (Dream-style) flag, which
    picks the released choice under noise "auto" and fidelity "released" (which overrides noise and
    noise_keep_ends: the released LLaDA noise keeps no position)."""
    if released(spec) or spec.calibration.noise == "auto":
        noise = "stratified" if shift else "grid"
    else:
        noise = spec.calibration.noise
    if noise == "stratified":
        keep_ends = True
    else:
        keep_ends = False if released(spec) else spec.options.noise_keep_ends
    return {"noise": noise, "keep_ends": keep_ends}


def accumulation(spec: PruneSpec) -> str:
    """Wanda's accumulation over passes: prune.options.wanda_accumulation, "auto" by weighting."""
    if spec.options.wanda_accumulation != "auto":
        return spec.options.wanda_accumulation
    return AUTO_ACCUMULATION[spec.run.weighting]


def one_shot(spec: PruneSpec) -> bool:
    """All statistics on the dense model (True) or block by block, block i+1 seeing the pruned i."""
    run = spec.run
    if spec.options.force_one_shot:
        return True
    if run.structure is not None:  # method.md 9: Wanda-sp (uniform) sequential, FLAP / adaptive on the dense model
        return not (run.method == "wanda" and run.structure == "uniform")
    return run.method == "wanda" and run.weighting != "uniform" and spec.one_shot_sink_wanda


def pruner_options(spec: PruneSpec) -> dict[str, Any]:
    """Keyword options of every unstructured pruner. ``inclusive``: the released ``<=`` threshold
    (magnitude over the matrix, SparseGPT per column block; unstructured only); ``ignore_pattern``:
    released sink-aware Wanda prunes per row, unstructured, whatever the N:M pattern."""
    rel = released(spec) and spec.run.structure is None
    return {"accumulation": accumulation(spec), "blocksize": spec.sparsegpt.blocksize,
            "percdamp": spec.sparsegpt.percdamp, "inclusive": rel,
            "ignore_pattern": rel and (spec.run.method, spec.run.weighting) == ("wanda", "sink")}


def mask_pattern(spec: PruneSpec) -> str:
    """The pattern the masks follow: released sink-aware Wanda ignores N:M (per-row unstructured)."""
    return "unstructured" if pruner_options(spec)["ignore_pattern"] else spec.run.pattern


def effective(spec: PruneSpec, dlm: bool, shift: bool) -> dict[str, Any]:
    """The resolved choices of a run of this spec on a model (``dlm``: has a mask token; ``shift``:
    the adapter's flag), as the prune metrics record them."""
    run = spec.run
    opts = pruner_options(spec)
    noised = dlm and draws_noise(spec)
    noise = noise_options(spec, shift) if noised else {"noise": None, "keep_ends": None}
    threshold = None
    if run.structure is None:
        inclusive = opts["inclusive"] and run.method in ("magnitude", "sparsegpt") and run.pattern == "unstructured"
        threshold = "inclusive" if inclusive else "exact"
    return {
        "fidelity": spec.fidelity,
        "windows": "released" if released(spec) else "corrected",
        "inputs": inputs_for(spec, dlm) if needs_data(spec) else "none",
        "noise": noise["noise"],
        "noise_keep_ends": noise["keep_ends"],
        "mask_pattern": mask_pattern(spec) if run.structure is None else None,
        "threshold": threshold,
    }


def check_noise_used(prune: PruneParams) -> None:
    """prune.options.noise_keep_ends and noise 'stratified' only act on a DLM run that draws noise:
    set while no instance of prune.instances does, they are a mistake (ParamsError)."""
    noise_set = {"prune.options.noise_keep_ends = true": prune.options.noise_keep_ends,
                 "prune.calibration.noise = 'stratified'": prune.calibration.noise == "stratified"}
    if any(noise_set.values()) and not any(draws_noise(prune.spec(n)) for n in prune.instances):
        raise ParamsError(
            f"{' and '.join(k for k, v in noise_set.items() if v)}: only a DLM run on noised passes "
            f"uses it, and no instance of prune.instances draws noise (magnitude without OWL, or clean "
            f"calibration windows with uniform weighting): remove it (set noise_keep_ends: false, "
            f"noise: grid)"
        )


@dataclass(frozen=True)
class RunPlan:
    """Every decision of one run of a spec on one model, resolved once (``resolve``) at the top of
    the run: the pruning code below reads these fields instead of calling back into the rules."""

    dlm: bool  # the model has a mask token
    needs_data: bool
    inputs: str  # "noised" | "clean": what the calibration passes are (when the run calibrates)
    draws_noise: bool  # a DLM run that noises its windows (noised passes or the noised mass pre-pass)
    noise: dict[str, Any]  # srclib.pruning.calibration.noised_passes keywords: noise, keep_ends
    one_shot: bool
    accumulation: str
    compensate: bool
    released: bool
    pruner_options: dict[str, Any]
    effective: dict[str, Any]  # the resolved choices as the prune metrics record them


def resolve(spec: PruneSpec, dlm: bool, shift: bool) -> RunPlan:
    """The decisions of ``spec`` on a model with (``dlm``) or without a mask token, shifted or not."""
    return RunPlan(dlm=dlm, needs_data=needs_data(spec), inputs=inputs_for(spec, dlm),
                   draws_noise=dlm and draws_noise(spec), noise=noise_options(spec, shift),
                   one_shot=one_shot(spec), accumulation=accumulation(spec), compensate=compensate(spec),
                   released=released(spec), pruner_options=pruner_options(spec),
                   effective=effective(spec, dlm, shift))
