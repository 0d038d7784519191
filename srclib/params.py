"""Typed, validated parameters: one dataclass per stage; the only reader of params.yaml.

``load()`` parses params.yaml into ``Params``; unknown keys, missing keys, wrong types and
out-of-range values raise ``ParamsError`` naming the dotted key, the value and what is allowed.
Defaults live in params.yaml only: the dataclasses below define types and ranges, not values.
The conversion and checking machinery is srclib.schema; this module imports nothing heavy (no
torch, no registry: names come from srclib.choices), so every stage can read params cheaply
(``Params.check_device`` imports torch, only for a ``cuda`` or ``mps`` device).
It is one file over 400 lines on purpose: every setting's one home is findable in one place.
A params file may be an override of another (``base: params.yaml`` first, then only what differs:
params-gpu.yaml); ``load`` merges it on its base (rules above ``BASE_KEY``), and ``python -m
srclib.params merge params-gpu.yaml -o params.yaml`` writes the complete file for ``dvc repro``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from srclib import choices, paths
from srclib.schema import ParamsError, as_dict, build, dump_yaml, key_lines, load_yaml_text, merge
from srclib.schema import validate_fields
from srclib.schema import constrained as _c

__all__ = [
    "ParamsError", "Params", "load", "load_dict", "build", "ModelEntry", "TrainParams", "SamplerParams",
    "CollectParams", "VarianceParams", "PruneParams", "PruneInstance", "PruneOptions", "PruneSpec",
    "RunChoices", "SPEC_RECORD",
    "EvaluateParams", "TaskSettings", "PplParams", "EfficiencyParams", "PlotParams",
    "METHODS", "WEIGHTINGS", "PATTERNS", "DTYPES", "TINY_MODELS", "BASE_KEY", "merged_yaml", "main",
    "require_instance", "refuse_instance",
]

# The allowed names come from srclib.choices, which every registry checks its keys against at
# import time: validating params.yaml imports neither torch nor any registry's code.
METHODS = choices.METHODS
WEIGHTINGS = choices.WEIGHTINGS
PATTERNS = choices.PATTERNS  # name -> (N, M) or None; N:M fixes the sparsity at N/M
DTYPES = choices.DTYPES
SINK_RULES = choices.SINK_RULES
REMASKING = choices.REMASKING

# The model keys the train stage builds from the ``train:`` section (srclib.train.twins.TWINS): the
# longest sequence they accept is train.max_len (the runner checks the other settings against it).
TINY_MODELS = ("tiny-ar", "tiny-dlm")

# Every seed is a 64-bit signed integer (torch.manual_seed, numpy's SeedSequence take one).
SEED_MAX = 2**63 - 1
# A params file is a few kB of YAML; a bigger file is another file (read and echoed by nobody).
MAX_PARAMS_BYTES = 1 << 20


def _seed() -> Any:
    return _c(ge=0, le=SEED_MAX)


def _names() -> dict[str, Any]:
    """The key constraint of a mapping whose keys are model keys or instance names (srclib.paths)."""
    return dict(key_pattern=paths.NAME_PATTERN, key_rule=paths.NAME_RULE)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    """One ``models:`` entry: how a model is loaded (dtype, device) and, for a model that is not in
    the built-in registry (srclib.models.MODELS), its definition -- so a new model is one params.yaml
    entry and makes stale only the stages that use it (each stage depends on ``models.<key>``).

    family: the adapter family (``tiny``, ``hf_causal``, ``llada``, ``dream``); set it to define a
    model here. source: a hub id ``org/name`` or a folder; a folder is spelled relative to the
    repository root (or absolute) and resolved against it from any working directory; ``models/<key>``
    (the default when left out) is where the pipeline's stages find it and what their DVC deps track.
    revision: the hub commit to pin (hub ids only). trust_remote_code: hub remote code (LLaDA, Dream).
    options: further adapter fields (e.g. ``blocks_path``, ``mask_token_id``, ``standin_config``);
    srclib.models checks their names against the family's adapter.
    """

    dtype: str = _c(choices=DTYPES)
    device: str = _c(pattern=r"^(cpu|cuda(:\d+)?|mps|auto)$")
    # optional: absent = a built-in registry entry (defaults let tests build entries in code)
    family: str | None = dataclasses.field(default=None, metadata=dict(optional=True, choices=choices.MODEL_FAMILIES))
    source: str | None = dataclasses.field(default=None, metadata=dict(optional=True, pattern=r"^\S+$"))
    revision: str | None = dataclasses.field(default=None, metadata=dict(optional=True,
                                                                         pattern=r"^[A-Za-z0-9._/-]+$"))
    trust_remote_code: bool | None = dataclasses.field(default=None, metadata=dict(optional=True))
    options: dict[str, Any] | None = dataclasses.field(default=None, metadata=dict(optional=True))

    def definition(self) -> dict[str, Any] | None:
        """The model definition this entry carries (family, source, ...), or None when the key is a
        built-in registry entry."""
        if self.family is None:
            return None
        d = {"family": self.family, "source": self.source, "revision": self.revision,
             "trust_remote_code": self.trust_remote_code, "options": self.options}
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class DataParams:
    seed: int = _seed()


@dataclass(frozen=True)
class Arch:
    n_layers: int = _c(ge=1)
    hidden_size: int = _c(ge=8)
    n_heads: int = _c(ge=1)
    mlp_hidden: int = _c(ge=1)
    rope_theta: float = _c(gt=0)

    def __post_init__(self) -> None:
        if self.hidden_size % self.n_heads:
            raise ParamsError(
                f"train.arch.hidden_size ({self.hidden_size}) must be divisible by "
                f"train.arch.n_heads ({self.n_heads})"
            )


@dataclass(frozen=True)
class Schedule:
    steps: int = _c(ge=1)
    lr: float = _c(gt=0)
    warmup: int = _c(ge=0)
    min_lr: float = _c(ge=0)


@dataclass(frozen=True)
class DlmSchedule(Schedule):
    eps: float = _c(gt=0, lt=1)


@dataclass(frozen=True)
class TrainParams:
    seed: int = _seed()
    threads: int = _c(ge=1)
    tokenizer_vocab: int = _c(ge=260)
    seq_len: int = _c(ge=8)
    max_len: int = _c(ge=8)
    batch_size: int = _c(ge=1)
    arch: Arch = _c()
    ar: Schedule = _c()
    dlm: DlmSchedule = _c()
    weight_decay: float = _c(ge=0)
    grad_clip: float = _c(gt=0)
    eval_windows: int = _c(ge=1)
    eval_mc_num: int = _c(ge=1)
    n_samples: int = _c(ge=0)
    sample_prompt_tokens: int = _c(ge=1)
    sample_gen_length: int = _c(ge=1)
    sample_block_length: int = _c(ge=1)

    def __post_init__(self) -> None:
        if self.seq_len > self.max_len:
            raise ParamsError(
                f"train.seq_len = {self.seq_len}: must be <= train.max_len ({self.max_len}), the longest "
                f"sequence the tiny models accept (raise train.max_len or lower train.seq_len)"
            )
        check_sampler(self.sample_gen_length, self.sample_gen_length, self.sample_block_length,
                      names=("sample_gen_length", "sample_gen_length", "sample_block_length"))

    def sampler(self) -> "SamplerParams":
        """The sampler of train's greedy samples: one token committed per step, temperature 0."""
        return SamplerParams(gen_length=self.sample_gen_length, steps=self.sample_gen_length,
                             block_length=self.sample_block_length, temperature=0.0, cfg_scale=0.0,
                             remasking="low_confidence")


def check_sampler(gen_length: int, steps: int, block_length: int,
                  names: tuple[str, str, str] = ("gen_length", "steps", "block_length")) -> None:
    """The LLaDA sampler's shape rules (method.md 5): gen_length % block_length == 0 and steps a
    multiple of the number of blocks. ``names``: how the three settings are spelled where they live."""
    g, st, b = names
    if gen_length % block_length:
        raise ParamsError(f"{g} ({gen_length}) must be a multiple of {b} ({block_length})")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ParamsError(
            f"{st} ({steps}) must be a multiple of the number of blocks {g}/{b} = {n_blocks}"
        )


@dataclass(frozen=True)
class SamplerParams:
    """The DLM sampler's settings (method.md 5), the one home of them: collect's trajectories,
    train's greedy samples and generation tasks all run the sampler with one of these."""

    gen_length: int = _c(ge=1)
    steps: int = _c(ge=1)
    block_length: int = _c(ge=1)
    temperature: float = _c(ge=0)
    cfg_scale: float = _c(ge=0)
    remasking: str = _c(choices=REMASKING)

    def __post_init__(self) -> None:
        validate_fields(self, "sampler")  # also when library code builds one directly
        check_sampler(self.gen_length, self.steps, self.block_length)

    def sampler_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of srclib.diffusion.generate."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplerParams)}


@dataclass(frozen=True)
class CollectParams(SamplerParams):
    """collect: the sampler's settings (SamplerParams) plus what is collected."""

    models: list[str] = _c(min_len=1)
    n_prompts: int = _c(ge=1)
    prompt_tokens: int = _c(ge=1)
    chunk_size: int = _c(ge=1)
    random_init_control: bool = _c()
    seed: int = _seed()


@dataclass(frozen=True)
class VarianceParams:
    rule: str = _c(choices=SINK_RULES)
    alpha: float = _c(gt=0)
    kappa: float = _c()
    eps: float = _c(ge=0)
    stability_threshold: float = _c(gt=0, le=1)


@dataclass(frozen=True)
class CalibrationParams:
    n_samples: int = _c(ge=1)
    seq_len: int = _c(ge=2)
    t_grid: list[float] = _c(min_len=1, item_gt=0, item_le=1)
    noise_eps: float = _c(ge=0, lt=1)
    # how a DLM's calibration windows are noised (srclib.pruning.calibration.noised_passes), one pass per t of
    # t_grid: "grid" masks with p = (1 - eps) t + eps at the grid's t; "stratified" is the released
    # Dream forward process (t = (u0 + i/B) mod 1, u0 ~ U(0, 1) per pass: the grid's values are
    # ignored, only its length counts; first and last position never masked); "auto" = the released
    # code's choice for the model: stratified for shifted (Dream-style) DLMs, grid for LLaDA-style.
    noise: str = _c(choices=("auto",) + choices.NOISES)
    # JSONL corpus ({"text": ...} per line), relative to the repository root; dvc.yaml depends on it.
    corpus: str = _c(pattern=r"^(?!/)(?!.*\.\.)[A-Za-z0-9_./-]+\.jsonl$")
    # how the run computes, not what (outside the spec record): calibration windows per forward (each
    # with its passes) and the attention-mass recorder's query chunk (srclib.pruning.calibration.Calibration)
    windows_per_batch: int = _c(ge=1)
    chunk_size: int = _c(ge=1)


@dataclass(frozen=True)
class SparseGPTParams:
    blocksize: int = _c(ge=1)
    percdamp: float = _c(ge=0)


@dataclass(frozen=True)
class OwlParams:
    enabled: bool = _c()
    lambda_: float = _c(ge=0, lt=1, key="lambda")
    m: float = _c(gt=0)


def check_run(method: str, weighting: str, sparsity: float, pattern: str | None,
              structure: str | None = None) -> None:
    """The rules tying one pruning run's method, weighting, sparsity, pattern and structure (their
    one home). ``structure`` None: unstructured / N:M pruning of single weights; "uniform" or
    "adaptive": whole heads and MLP channels (method.md 9), ``sparsity`` the removed share of the
    blocks' linear parameters."""
    if method in choices.ACTIVATION_FREE and weighting != "uniform":
        raise ParamsError(
            f"method {method!r} uses no activations, so weighting must be 'uniform', got {weighting!r}"
        )
    if structure is not None:
        if method not in choices.SP_METHODS:
            raise ParamsError(
                f"method {method!r} cannot prune structurally (structure {structure!r}); structured "
                f"methods: {list(choices.SP_METHODS)} (magnitude-sp, Wanda-sp, FLAP)"
            )
        if pattern not in (None, "unstructured"):
            raise ParamsError(
                f"structure {structure!r} removes whole heads and channels: pattern must be left out "
                f"(or 'unstructured'), got {pattern!r}"
            )
        return
    if method not in choices.METHODS:
        raise ParamsError(
            f"method {method!r} prunes structurally only: add structure: one of {list(choices.STRUCTURES)} "
            f"(unstructured methods: {list(choices.METHODS)})"
        )
    if pattern is None:
        raise ParamsError(f"pattern: missing key (unstructured pruning needs one of {list(PATTERNS)})")
    nm = PATTERNS[pattern]
    if nm is not None and not math.isclose(sparsity, nm[0] / nm[1]):
        raise ParamsError(
            f"pattern {pattern!r} prunes exactly {nm[0]}/{nm[1]} = {nm[0] / nm[1]} of each "
            f"group; sparsity {sparsity} is not allowed with it"
        )


# Field declarations shared by the YAML's instance and the flat run spec (one home per rule).
def _method() -> Any:
    return _c(choices=tuple(dict.fromkeys(METHODS + choices.SP_METHODS)))


def _weighting() -> Any:
    return _c(choices=WEIGHTINGS)


def _sparsity() -> Any:
    return _c(ge=0, lt=1)


def _pattern() -> Any:
    return _c(choices=tuple(PATTERNS), optional=True)


def _structure() -> Any:
    return _c(choices=choices.STRUCTURES, optional=True)


@dataclass(frozen=True)
class RunChoices:
    """What one pruning run does to the weights: an instance's method, weighting, sparsity, pattern
    and structure (``PruneInstance.run``; ``PruneSpec.run``)."""

    method: str = _method()
    weighting: str = _weighting()
    sparsity: float = _sparsity()
    pattern: Union[str, None] = _pattern()  # None (structured): "unstructured"
    structure: Union[str, None] = _structure()  # None: unstructured; uniform | adaptive: heads + channels

    def __post_init__(self) -> None:
        validate_fields(self, "run")
        check_run(self.method, self.weighting, self.sparsity, self.pattern, self.structure)
        if self.pattern is None:  # structured: no N:M pattern applies
            object.__setattr__(self, "pattern", "unstructured")


@dataclass(frozen=True)
class PruneInstance:
    model: str = _c()
    method: str = _method()
    weighting: str = _weighting()
    sparsity: float = _sparsity()
    pattern: Union[str, None] = _pattern()  # left out for structured instances
    seed: int = _seed()
    structure: Union[str, None] = _structure()  # None: unstructured; uniform | adaptive: heads + channels

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", self.run.pattern)  # validated there; structured: "unstructured"

    @property
    def run(self) -> RunChoices:
        """This instance's run choices (without its model and seed)."""
        return RunChoices(method=self.method, weighting=self.weighting, sparsity=self.sparsity,
                          pattern=self.pattern, structure=self.structure)


_SEED_TOKEN = re.compile(r"s(\d+)")
_NM_TOKEN = re.compile(r"(\d+)of(\d+)")
_STRUCTURE_TOKENS = {"struct": "uniform", "adapt": "adaptive"}


def check_instance_name(name: str, inst: PruneInstance) -> None:
    """A prune instance's name says what its values are, wherever it is spelled like the house
    convention ``<model>-<method>-<weighting>-<percent>[-<N>of<M> | -struct | -adapt]-s<seed>`` (e.g.
    ``dlm-wanda-sink-50-2of4-s0``): each part the name has must agree with the instance (a method, a
    weighting, the sparsity in percent after the method, N of M, struct / adapt, ``s<seed>`` last);
    a name without such parts (``x``, ``u50``) says nothing. Reports and file names show the name,
    the run uses the values: a name that disagrees would label one run as another."""
    tokens = re.split(r"[-_]", name)
    methods = set(METHODS) | set(choices.SP_METHODS)
    after_method = False
    for i, tok in enumerate(tokens):
        says = value = None
        if tok in methods:
            after_method = True
            if tok != inst.method:
                says, value = f"method {tok!r}", f"method = {inst.method!r}"
        elif tok in WEIGHTINGS:
            if tok != inst.weighting:
                says, value = f"weighting {tok!r}", f"weighting = {inst.weighting!r}"
        elif tok.isdigit() and after_method:
            if abs(int(tok) - 100 * inst.sparsity) >= 1:
                says, value = f"sparsity {int(tok)}% ('-{tok}-')", f"sparsity = {inst.sparsity}"
        elif (m := _NM_TOKEN.fullmatch(tok)) is not None:
            if inst.pattern != f"{m[1]}:{m[2]}":
                says, value = f"pattern '{m[1]}:{m[2]}' ('{tok}')", f"pattern = {inst.pattern!r}"
        elif tok in _STRUCTURE_TOKENS:
            if inst.structure != _STRUCTURE_TOKENS[tok]:
                says = f"structure {_STRUCTURE_TOKENS[tok]!r} ('-{tok}-')"
                value = f"structure = {inst.structure!r}" if inst.structure else "no structure"
        elif (m := _SEED_TOKEN.fullmatch(tok)) is not None and i == len(tokens) - 1 and i > 0:
            if int(m[1]) != inst.seed:
                says, value = f"seed {int(m[1])} ('-{tok}')", f"seed = {inst.seed}"
        if says is not None:
            raise ParamsError(
                f"prune.instances.{name}: the name says {says} but the instance has {value}; rename the "
                f"instance or fix its values (reports and file names show the name, the run uses the values)")


def check_noise(noise: str, keep_ends: bool) -> None:
    """The calibration-noise rule (its one home): the stratified noise is the released Dream forward
    process, which never masks the first or last position, so it cannot run with ends maskable."""
    if noise == "stratified" and not keep_ends:
        raise ParamsError(
            "prune.calibration.noise = 'stratified' is the released Dream forward process, which never "
            "masks the first or last position; prune.options.noise_keep_ends = false contradicts it: set "
            "prune.options.noise_keep_ends: true, or use noise 'grid' (or 'auto': the released choice "
            "per model family, ends included)"
        )


@dataclass(frozen=True)
class PruneOptions:
    """Ablation switches of every pruning run (params.yaml ``prune.options``).

    calib_inputs: "auto" (AUTO_INPUTS) | "noised" | "clean": what a DLM's calibration passes are.
    wanda_accumulation: "auto" (AUTO_ACCUMULATION) | "total" | "per_pass".
    noise_keep_ends: never mask the last position either (Dream's variant; the first position is
        kept whenever the adapter is shifted). Only DLM runs on noised passes use it (params refuse it
        when no instance draws noise); noise "stratified" requires it (check_noise).
    force_one_shot: every method one-shot on the dense model (ablations and benchmarks).
    bias_compensation: structured pruning only: "auto" (FLAP: on; magnitude-sp, Wanda-sp: off) |
        "on" | "off": add W[:, removed] @ mean(x[removed]) to o_proj / down_proj (method.md 9).
    """

    calib_inputs: str = _c(choices=("auto",) + choices.CALIB_INPUTS)
    wanda_accumulation: str = _c(choices=("auto",) + choices.ACCUMULATIONS)
    noise_keep_ends: bool = _c()
    force_one_shot: bool = _c()
    bias_compensation: str = _c(choices=choices.BIAS_COMPENSATION)


@dataclass(frozen=True)
class PruneParams:
    calibration: CalibrationParams = _c()
    sink: VarianceParams = _c()
    sparsegpt: SparseGPTParams = _c()
    owl: OwlParams = _c()
    one_shot_sink_wanda: bool = _c()
    options: PruneOptions = _c()
    # "corrected" (srclib's choices) | "released": every choice where the released code differs
    # from its description is set as the released code makes it (PruneSpec.released; README,
    # "Differences from the released code"); it overrides the options it governs.
    fidelity: str = _c(choices=choices.FIDELITY)
    instances: dict[str, PruneInstance] = _c(**_names())

    def __post_init__(self) -> None:
        if not self.instances:
            raise ParamsError(
                "prune.instances: must define at least one instance (name: {model, method, weighting, "
                "sparsity, pattern or structure, seed}); each one is a DVC prune stage"
            )
        for name, inst in self.instances.items():
            check_instance_name(name, inst)
        check_noise(self.calibration.noise, self.options.noise_keep_ends)
        # a noise setting that no instance uses: srclib.pruning.plan.check_noise_used (it needs the
        # run's decisions), which the stage runner calls before any stage starts

    def spec(self, instance: str) -> "PruneSpec":
        """The PruneSpec that srclib.pruning runs for one instance: its run choices and this
        section's settings, held as the section objects themselves."""
        return PruneSpec(run=self.instance(instance).run, calibration=self.calibration, sink=self.sink,
                         sparsegpt=self.sparsegpt, owl=self.owl, options=self.options,
                         one_shot_sink_wanda=self.one_shot_sink_wanda, fidelity=self.fidelity)

    def instance(self, name: str) -> PruneInstance:
        if name not in self.instances:
            raise ParamsError(f"instance {name!r} is not in prune.instances ({len(self.instances)} defined)")
        return self.instances[name]


# The flat record of a PruneSpec (``to_dict``: prune metrics, checkpoint markers, report freshness):
# record key -> (section, field). Its keys and their order are the record format.
SPEC_RECORD = {
    "method": ("run", "method"), "weighting": ("run", "weighting"), "sparsity": ("run", "sparsity"),
    "pattern": ("run", "pattern"), "t_grid": ("calibration", "t_grid"),
    "noise_eps": ("calibration", "noise_eps"), "sink_rule": ("sink", "rule"), "sink_alpha": ("sink", "alpha"),
    "sink_kappa": ("sink", "kappa"), "sink_eps": ("sink", "eps"),
    "stability_threshold": ("sink", "stability_threshold"), "blocksize": ("sparsegpt", "blocksize"),
    "percdamp": ("sparsegpt", "percdamp"), "owl": ("owl", "enabled"), "owl_lambda": ("owl", "lambda_"),
    "owl_m": ("owl", "m"), "one_shot_sink_wanda": (None, "one_shot_sink_wanda"),
    "calib_inputs": ("options", "calib_inputs"), "wanda_accumulation": ("options", "wanda_accumulation"),
    "noise_keep_ends": ("options", "noise_keep_ends"), "force_one_shot": ("options", "force_one_shot"),
    "bias_compensation": ("options", "bias_compensation"), "structure": ("run", "structure"),
    "fidelity": (None, "fidelity"), "noise": ("calibration", "noise"),
}


@dataclass(frozen=True)
class PruneSpec:
    """One pruning run (method.md 3-4): an instance's run choices with the prune section's
    settings, as srclib.pruning takes it. Built by ``PruneParams.spec(name)``; it holds the section
    objects themselves (``calibration``, ``sink``, ``sparsegpt``, ``owl``, ``options``: each
    validated when it was built, by the same rules as params.yaml) and checks what ties them.

    run: the instance's method, weighting, sparsity, pattern, structure (``RunChoices``).
    calibration: prune.calibration (t_grid, noise_eps, noise are the run's; n_samples, seq_len and
    corpus build its windows). sink: prune.sink (srclib.sinks.sink_scores arguments, the stability
    threshold). sparsegpt, owl, options: prune.sparsegpt, prune.owl, prune.options. fidelity:
    prune.fidelity. What the run does with them (inputs, noise, one-shot or sequential, the
    pruners' options, the released-code choices) is decided in srclib.pruning.plan.
    ``to_dict`` is the flat record the prune metrics keep (``SPEC_RECORD``).
    """

    run: RunChoices = _c()
    calibration: CalibrationParams = _c()
    sink: VarianceParams = _c()
    sparsegpt: SparseGPTParams = _c()
    owl: OwlParams = _c()
    options: PruneOptions = _c()
    one_shot_sink_wanda: bool = _c()
    fidelity: str = _c(choices=choices.FIDELITY)

    def __post_init__(self) -> None:
        validate_fields(self, "spec")
        check_noise(self.calibration.noise, self.options.noise_keep_ends)
        if self.owl.enabled and PATTERNS[self.run.pattern] is not None:
            raise ParamsError(
                f"OWL sets a sparsity per block, so pattern must be 'unstructured', got {self.run.pattern!r}")
        if self.owl.enabled and self.run.structure is not None:
            raise ParamsError("OWL sets unstructured sparsities per block; it does not apply to structured "
                              f"pruning (structure {self.run.structure!r}): set prune.owl.enabled: false")

    def with_run(self, **changes: Any) -> "PruneSpec":
        """This spec with some run choices replaced (e.g. ``with_run(method="magnitude")``)."""
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))

    def to_dict(self) -> dict[str, Any]:
        """The flat record (``SPEC_RECORD``): prune metrics, checkpoint markers, report freshness."""
        d = {}
        for key, (section, name) in SPEC_RECORD.items():
            value = getattr(self if section is None else getattr(self, section), name)
            d[key] = [float(t) for t in value] if key == "t_grid" else value
        return d


@dataclass(frozen=True)
class TaskSettings:
    num_fewshot: int = _c(ge=0)
    cfg: float = _c(ge=0)
    mc_num: int = _c(ge=1)
    limit: Union[int, None] = _c(ge=1)


@dataclass(frozen=True)
class PplParams:
    n_windows: int = _c(ge=1)
    mc_num: int = _c(ge=1)
    seq_len: int = _c(ge=2)


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _c(ge=1)
    seed: int = _seed()
    dense: list[str] = _c()
    ppl: PplParams = _c()
    sampler: SamplerParams = _c()  # generation tasks' DLM sampler; cfg_scale is replaced by each task's cfg
    tasks: dict[str, TaskSettings] = _c(min_len=1, key_choices=(
        "arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "openbookqa", "sciq",
        "mmlu", "gsm8k", "continuation",
    ))

    # the settings one evaluation reads (dvc.yaml's evaluate stages list exactly these; ``dense``
    # only chooses which models are evaluated): what an evaluate metrics file records
    READ_BY_AN_EVALUATION = ("batch_size", "seed", "ppl", "sampler", "tasks")

    def read_by_an_evaluation(self) -> dict[str, Any]:
        """The settings of ``READ_BY_AN_EVALUATION`` as plain JSON-able values (as_dict)."""
        d = as_dict(self)
        return {k: d[k] for k in self.READ_BY_AN_EVALUATION}


@dataclass(frozen=True)
class EfficiencyParams:
    instances: list[str] = _c(min_len=1)
    token_shapes: list[list[int]] = _c(min_len=1)
    # per model key: token shapes replacing token_shapes for that model's checkpoints (e.g. fewer
    # tokens for a model whose forward takes seconds on the CPU); {} = token_shapes everywhere
    model_token_shapes: dict[str, list[list[int]]] = _c()
    repeats: int = _c(ge=1)
    warmup: int = _c(ge=0)
    threads: int = _c(ge=1)
    clock: str = _c(choices=("wall", "process"))
    memory_dtype: str = _c(choices=DTYPES)

    def __post_init__(self) -> None:
        named = [("token_shapes", self.token_shapes)] + [
            (f"model_token_shapes.{k}", v) for k, v in self.model_token_shapes.items()]
        for where, shapes in named:
            if not shapes:
                raise ParamsError(f"efficiency.{where}: must list at least one [batch, tokens] shape")
            for i, shape in enumerate(shapes):
                if len(shape) != 2 or min(shape) < 1:
                    raise ParamsError(f"efficiency.{where}[{i}] = {shape}: must be [batch, tokens], both >= 1")

    def for_model(self, key: str) -> "EfficiencyParams":
        """These settings with the token shapes of model ``key`` (model_token_shapes, else token_shapes)."""
        if key not in self.model_token_shapes:
            return self
        return dataclasses.replace(self, token_shapes=self.model_token_shapes[key])


@dataclass(frozen=True)
class PlotParams:
    headline_sparsities: list[float] = _c(item_gt=0, item_lt=1)
    headline_methods: list[str] = _c(item_choices=METHODS)
    seeds: list[int] = _c(min_len=1, item_ge=0, item_le=SEED_MAX)


@dataclass(frozen=True)
class Params:
    data: DataParams = _c()
    models: dict[str, ModelEntry] = _c(min_len=1, **_names())
    train: TrainParams = _c()
    collect: CollectParams = _c()
    variance: VarianceParams = _c()
    prune: PruneParams = _c()
    evaluate: EvaluateParams = _c()
    efficiency: EfficiencyParams = _c()
    plot: PlotParams = _c()

    def __post_init__(self) -> None:
        # Model keys are checked against the registry (srclib.models.MODELS) by the runner and by
        # srclib.models.load, not here: reading params must not import every adapter.
        declared = sorted(self.models)

        def need(where: str, key: str) -> None:
            if key not in self.models:
                raise ParamsError(f"{where} = {key!r}: not declared under models: (declared: {declared})")

        for key, entry in self.models.items():
            if key.endswith(paths.RANDOM_SUFFIX):
                raise ParamsError(
                    f"models: key {key!r} may not end with {paths.RANDOM_SUFFIX!r}: collect names the random-init "
                    f"twin of model {paths.run_model(key)!r} so (trajectories/{paths.run_model(key)}/{key}"
                    f".safetensors); rename the key")
            if entry.family == "tiny" and entry.source is not None and entry.source != f"models/{key}":
                raise ParamsError(
                    f"models.{key}.source = {entry.source!r}: the tiny family loads a srclib-built checkpoint "
                    f"from models/{key} only (the folder the stages' DVC deps track; source is never read): "
                    f"remove models.{key}.source and put the checkpoint folder at models/{key}")
            if entry.family is None:
                for name in ("source", "revision", "trust_remote_code", "options"):
                    if getattr(entry, name) is not None:
                        raise ParamsError(
                            f"models.{key}.{name}: only a model defined here takes {name}; set "
                            f"models.{key}.family (one of {list(choices.MODEL_FAMILIES)}) or remove it")
            elif entry.revision is not None and entry.source is None:
                raise ParamsError(f"models.{key}.revision: needs models.{key}.source (a hub id org/name)")
        for i, key in enumerate(self.collect.models):
            need(f"collect.models[{i}]", key)
        if len(set(self.collect.models)) != len(self.collect.models):
            raise ParamsError(f"collect.models = {self.collect.models}: a model is listed twice "
                              f"(one collect stage instance per model)")
        for i, key in enumerate(self.evaluate.dense):
            need(f"evaluate.dense[{i}]", key)
        for name, inst in self.prune.instances.items():
            need(f"prune.instances.{name}.model", inst.model)
            if name in self.models:
                raise ParamsError(f"prune.instances.{name}: an instance may not be named like a model key")
        for key in self.efficiency.model_token_shapes:
            need(f"efficiency.model_token_shapes.{key}", key)
        for i, name in enumerate(self.efficiency.instances):
            if name not in self.prune.instances:
                raise ParamsError(f"efficiency.instances[{i}] = {name!r}: not in prune.instances")
        # the ELBO perplexity's windows fit every evaluated model known here (the tiny models accept
        # train.max_len; a hub model's length is checked by the runner from its config.json)
        evaluated = {key: f"evaluate.dense[{i}]" for i, key in enumerate(self.evaluate.dense)}
        for name, inst in self.prune.instances.items():
            evaluated.setdefault(inst.model, f"prune.instances.{name}.model")
        seq_len, max_len = self.evaluate.ppl.seq_len, self.train.max_len
        for key, where in evaluated.items():
            if key in TINY_MODELS and seq_len > max_len:
                raise ParamsError(
                    f"evaluate.ppl.seq_len = {seq_len}: above the maximum length {max_len} of model {key!r} "
                    f"(train.max_len), which {where} evaluates; must be <= {max_len}")

    def collect_model(self, name: str) -> str:
        """A collect instance (a key of collect.models); a ParamsError naming the allowed ones."""
        if name not in self.collect.models:
            raise ParamsError(f"collect instance {name!r}: not in collect.models {self.collect.models}")
        self.check_device(name)
        return name

    def model_key(self, instance: str) -> str:
        """The ``models:`` key that a prune instance (its model) or a model key (itself) loads."""
        if instance in self.prune.instances:
            return self.prune.instances[instance].model
        if instance in self.models:
            return instance
        raise ParamsError(f"{instance!r} is neither a prune instance nor a key of models: {sorted(self.models)}")

    def model_entry(self, instance: str) -> ModelEntry:
        """The ``models:`` entry (dtype, device) that a prune instance or a model key loads with; its
        device must exist on this machine (``check_device``)."""
        self.check_device(instance)
        return self.models[self.model_key(instance)]

    def check_device(self, instance: str) -> None:
        """The device a prune instance or model key loads on (``models.<key>.device``) exists on this
        machine: ``cuda`` / ``cuda:<i>`` needs CUDA (and i < the device count), ``mps`` Apple's MPS; a
        ParamsError naming the key otherwise (``cpu`` and ``auto`` always pass). torch is imported only
        for such a device, so reading params stays torch-free. The runner reaches it through
        ``collect_model`` and ``eval_source``, the notebooks through ``model_entry``; loading a params
        file does not check devices (params-gpu.yaml is read on CPU-only machines too)."""
        key = self.model_key(instance)
        device = self.models[key].device
        where = f"models.{key}.device = {device!r}"
        fix = f"set models.{key}.device: cpu (or auto: CUDA where there is one, else the CPU)"
        if device.startswith("cuda"):
            import torch  # only here: a CUDA device is asked for

            if not torch.cuda.is_available():
                raise ParamsError(f"{where}: this machine has no CUDA device (torch.cuda.is_available() is "
                                  f"false); {fix}")
            index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
            if index >= count:
                raise ParamsError(f"{where}: this machine has {count} CUDA device(s) (cuda:0 to "
                                  f"cuda:{count - 1}); name one of them, or {fix}")
        elif device == "mps":
            import torch

            if not torch.backends.mps.is_available():
                raise ParamsError(f"{where}: this machine has no MPS device (torch.backends.mps.is_available() "
                                  f"is false); {fix}")

    def eval_source(self, instance: str, root: Path | None = None) -> str:
        """What the evaluate stage loads for ``instance``: a pruned folder (under ``root``, default
        the repository's) or a dense model key (whose device must exist on this machine:
        ``check_device``)."""
        if instance in self.prune.instances:
            self.check_device(instance)
            return str(paths.pruned_dir(instance, root))
        if instance in self.evaluate.dense:
            self.check_device(instance)
            return instance
        raise ParamsError(
            f"instance {instance!r} is neither in prune.instances nor in evaluate.dense {self.evaluate.dense}"
        )


def require_instance(stage: str, instance: str | None) -> str:
    """The instance a fanned-out stage's ``run(P, instance)`` was given; a ParamsError when None."""
    if instance is None:
        raise ParamsError(f"stage {stage!r}: run(P, instance) needs an instance (one DVC stage instance "
                          f"{stage}@<name>); instance=None given")
    return instance


def refuse_instance(stage: str, instance: str | None) -> None:
    """A stage without instances (``run(P)``) given one: a ParamsError naming it."""
    if instance is not None:
        raise ParamsError(f"stage {stage!r} has no instances: call run(P) without instance "
                          f"(instance={instance!r} given)")


def load_dict(data: dict[str, Any]) -> Params:
    """Validate a params mapping (as read from params.yaml) into ``Params``."""
    return build(Params, data, "")


# ---------------------------------------------------------------------------------------------
# Reading params files; overrides. An override is a params file whose first key is ``base:``, the
# params file it overrides (a path relative to the override's folder, e.g. ``base: params.yaml``);
# its other keys are only the settings that differ. It stands for its base with those settings laid
# over (srclib.schema.merge): a section or group of settings (a dataclass here: ``prune``,
# ``prune.calibration``, ``evaluate.ppl``) merges key by key; every other value is replaced whole --
# a scalar, a list (``collect.models``, ``evaluate.dense``, ``efficiency.instances``) and a mapping of
# named entries (``models``, ``prune.instances``, ``evaluate.tasks``,
# ``efficiency.model_token_shapes``): an override that gives one lists the complete collection.
# Nothing can be deleted (every setting is required), YAML anchors do not cross files (the base's
# ``prune.sink: *sink_rule`` keeps the base's sink rule: an override of ``variance`` states
# ``prune.sink`` too), and the base is a complete params file, not an override (one level).
# ``python -m srclib.params merge OVERRIDE -o OUT`` writes the complete file an override stands for.
BASE_KEY = "base"
BASE_PATTERN = r"^(?!/)[A-Za-z0-9_./-]+\.ya?ml$"  # relative to the override's folder


def load(path: str | Path | None = None) -> Params:
    """Read and validate params.yaml (default: the repository's). A YAML syntax error or a key given
    twice in one mapping (at any depth) is a ParamsError naming the file and the line(s); a file that
    is no mapping of sections (empty, a list, plain text, over MAX_PARAMS_BYTES) one naming the file
    and saying what it is, never quoting it. An override (first key ``base:``, above) is merged on
    its base, which is validated on its own first: an error is a ParamsError naming the file and the
    line of the key it concerns (the override's, or the base's as the base of the override)."""
    return _resolve(path)[1]


def _resolve(path: str | Path | None) -> tuple[dict[str, Any], Params]:
    """The plain params mapping a params file stands for (for an override: merged on its base, without
    its ``base`` key) and its validated Params."""
    path = Path(path) if path is not None else paths.ROOT / "params.yaml"
    data, text, where = _read(path)
    if BASE_KEY not in data:
        return data, load_dict(data)
    return _merge_override(path, data, text, where)


def _read(path: Path) -> tuple[dict[str, Any], str, str]:
    """A params file's mapping, its text and its name in messages (checks in ``load``)."""
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    where = paths.rel(path)
    sections = [f.name for f in dataclasses.fields(Params)]
    size = path.stat().st_size
    if size > MAX_PARAMS_BYTES:
        raise ParamsError(f"{where} is not a params file: {size / 1e6:.1f} MB ({size} bytes), over the "
                          f"{MAX_PARAMS_BYTES} bytes a params file may have (a few kB of YAML: a mapping of "
                          f"sections {sections})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{where}: not UTF-8 text ({exc})") from None
    data = load_yaml_text(text, where)
    if not isinstance(data, dict):
        raise ParamsError(f"{where} {_not_a_mapping(data, text)}, not a YAML mapping of sections {sections}")
    return data, text, where


def _merge_override(path: Path, data: dict[str, Any], text: str,
                    where: str) -> tuple[dict[str, Any], Params]:
    lines = key_lines(text, where)
    if next(iter(data)) != BASE_KEY:
        raise ParamsError(f"{where}, line {lines[BASE_KEY]}: {BASE_KEY}: must be the first key of an override "
                          f"(the params file it overrides, named before what it changes)")
    at = f"{where}, line {lines[BASE_KEY]}: {BASE_KEY}"
    base = data[BASE_KEY]
    if not isinstance(base, str) or not re.fullmatch(BASE_PATTERN, base):
        raise ParamsError(f"{at} = {base!r}: must name a params file (.yaml) by a path relative to the "
                          f"folder of {where}, e.g. {BASE_KEY}: params.yaml")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ParamsError(f"{at} = {base!r}: no such file {paths.rel(base_path)} (relative to the folder "
                          f"of {where})")
    if base_path.resolve() == path.resolve():
        raise ParamsError(f"{at} = {base!r}: names the override itself; name the params file it overrides")
    base_where = paths.rel(base_path)
    of = f"{base_where} (the base of {where})"
    try:
        base_data, base_text, _ = _read(base_path)
    except ParamsError as exc:  # its messages start with the base's name
        msg = str(exc)
        raise ParamsError(of + msg[len(base_where):] if msg.startswith(base_where) else f"{of}: {msg}") from None
    base_lines = key_lines(base_text, base_where)
    if BASE_KEY in base_data:
        raise ParamsError(f"{of}, line {base_lines[BASE_KEY]}: {BASE_KEY}: the base of an override must be a "
                          f"complete params file, not an override itself (one level; {at} = {base!r})")
    try:
        load_dict(base_data)
    except ParamsError as exc:
        found = _key_line(str(exc), base_lines)
        raise ParamsError(f"{of}{f', line {found[1]}' if found else ''}: {exc}") from None
    sections: set[str] = set()  # the override's mappings merged key by key (the rest replaced whole)
    merged = merge(Params, base_data, {k: v for k, v in data.items() if k != BASE_KEY}, sections)
    try:
        return merged, load_dict(merged)
    except ParamsError as exc:  # the base alone is valid: the override's settings are in it
        # the key is the override's where the override gives it or a collection above it; the base's
        # where the override's nearest key is a merged section and the base gives the key deeper
        mine, theirs = _key_line(str(exc), lines), _key_line(str(exc), base_lines)
        if mine and (mine[0] not in sections or not theirs or _depth(mine[0]) >= _depth(theirs[0])):
            raise ParamsError(f"{where}, line {mine[1]}: {exc}") from None
        there = f"; {theirs[0]} is at line {theirs[1]} of {base_where}" if theirs else ""
        raise ParamsError(f"{where} (merged on {base_where}{there}): {exc}") from None


def _depth(key: str) -> int:
    return key.count(".") + key.count("[")


_MESSAGE_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+|\[\d+\])*")


def _key_line(message: str, lines: dict[str, int]) -> tuple[str, int] | None:
    """The longest dotted key of ``lines`` that the dotted key a ParamsError message starts with lies
    under (``prune.instances.x.model`` -> itself, ``prune.instances.x`` or ``prune``), and its line."""
    m = _MESSAGE_KEY.match(message)
    key = m.group(0) if m else ""
    while key:
        if key in lines:
            return key, lines[key]
        shorter = re.sub(r"(?:\.[^.\[\]]+|\[\d+\])$", "", key)
        key = "" if shorter == key else shorter
    return None


def merged_yaml(path: str | Path, out: str | Path | None = None) -> str:
    """The complete params file that override ``path`` stands for (merged on its base, validated),
    as YAML under a header naming both files; it reads back to the same Params. ``out``: where it
    will be written (named in the header's command)."""
    path = Path(path)
    data, text, where = _read(path)
    if BASE_KEY not in data:
        raise ParamsError(f"{where}: not an override (its first key is not {BASE_KEY}: <params file>); "
                          f"nothing to merge")
    merged, P = _merge_override(path, data, text, where)
    base_path = path.parent / data[BASE_KEY]
    digest = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest()[:12] for p in (path, base_path)}
    command = f"python -m srclib.params merge {where}" + (f" -o {paths.rel(out)}" if out is not None else "")
    header = (f"# Generated by srclib.params: {command}\n"
              f"# {where} (sha256 {digest[path]}) merged on {paths.rel(base_path)} (sha256 {digest[base_path]}):\n"
              f"# sections merge key by key; lists and named entries (models, prune.instances,\n"
              f"# evaluate.tasks, ...) are the override's whole. Do not edit: edit those files, merge again.\n\n")
    out_text = header + dump_yaml(merged)
    if load_dict(load_yaml_text(out_text, "the merged params")) != P:  # a programming error, never data
        raise RuntimeError(f"the merge of {where} does not read back to the same params")
    return out_text


def main(argv: list[str] | None = None) -> int:
    """``python -m srclib.params merge OVERRIDE [-o OUT]``: the complete params file an override
    stands for, validated, written atomically to OUT (default: standard output)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m srclib.params", description=(
        "merge: write the complete params file that an override (first key base:) stands for, merged on "
        "its base and validated (e.g. merge params-gpu.yaml -o params.yaml, then dvc repro)"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("merge", help="write the complete params file an override (first key base:) stands for")
    p.add_argument("override", type=Path, help="the override, e.g. params-gpu.yaml")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="the file to write (atomically), e.g. params.yaml for dvc repro; default: standard output")
    args = parser.parse_args(argv)
    try:
        if args.out is not None and args.out.resolve() == args.override.resolve():
            raise ParamsError(f"-o {args.out}: would overwrite the override {args.override} itself")
        text = merged_yaml(args.override, args.out)
    except ParamsError as exc:
        sys.stderr.write(f"python -m srclib.params: error: {exc}\n")
        return 2
    if args.out is None:
        sys.stdout.write(text)
        return 0
    from srclib.files import write_text  # atomic (temporary file, then rename)

    write_text(args.out, text)
    sys.stderr.write(f"{paths.rel(args.out)}: written ({paths.rel(args.override)} merged on its base)\n")
    return 0


def _not_a_mapping(data: Any, text: str) -> str:
    """What a params file that parsed to something other than a mapping holds, in words."""
    if data is None:
        return "is empty" if not text.strip() else "holds only comments or null"
    if isinstance(data, list):
        return f"holds a YAML list of {len(data)} item(s)"
    if isinstance(data, str):
        lines = text.count("\n") + (not text.endswith("\n"))
        return f"is plain text ({len(text.encode('utf-8'))} bytes, {lines} line(s))"
    return f"holds a single YAML {type(data).__name__} value"


if __name__ == "__main__":
    raise SystemExit(main())
