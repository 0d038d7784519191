"""Model registry: ``MODELS = {key: adapter}``; ``load(key_or_dir)`` -> (model, tokenizer, adapter).

Adding a model: one ``models:`` entry in params.yaml with its ``family`` (and ``source``, ...):
``register`` builds its adapter from that definition, so no file of srclib changes and only the
stages that use the model depend on it. A new family is one adapter file plus a line in ``FAMILIES``.
The built-in entries below are the study's own models.

Hub revisions are pinned commit hashes of the Hugging Face repositories. They were taken from
public code that pins them (this machine has no hub access to re-check them); a wrong hash fails
loudly at load time with the id and revision in the error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from srclib import choices
from srclib.models.base import MARKER, Adapter, marker_labels, read_marker
from srclib.models.dream import DreamAdapter
from srclib.models.hf_causal import HFAdapter
from srclib.models.llada import LLaDAAdapter
from srclib.models.structure import load_structured
from srclib.models.tiny_adapter import TinyAdapter
from srclib.params import ParamsError

__all__ = ["MODELS", "FAMILIES", "Adapter", "load", "get_adapter", "check_keys", "register", "adapter_from_definition",
           "labels", "definition", "inherited_marker"]

MODELS: dict[str, Adapter] = {
    "tiny-dlm": TinyAdapter(key="tiny-dlm", causal=False, shift=True, source="models/tiny-dlm",
                            description="4-layer masked diffusion LM adapted from tiny-ar"),
    "tiny-ar": TinyAdapter(key="tiny-ar", causal=True, shift=False, source="models/tiny-ar",
                           description="4-layer causal LM, tiny-dlm's AR twin"),
    "smollm2-135m": HFAdapter(
        key="smollm2-135m", causal=True, shift=False, blocks_path="model.layers",
        description="SmolLM2-135M-Instruct (Llama body, GQA 9/3), dequantised from the GGUF in data/raw",
        extra={"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        standin_config=dict(vocab_size=49152, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                            tie_word_embeddings=True),
    ),
    "llada-8b-base": LLaDAAdapter(key="llada-8b-base", source="GSAI-ML/LLaDA-8B-Base",
                                  revision="0f2787f2d87eac5eed8a087d5ecd24277e6255b2",
                                  description="LLaDA-8B-Base (the paper's main model)"),
    "llada-8b-instruct": LLaDAAdapter(key="llada-8b-instruct", source="GSAI-ML/LLaDA-8B-Instruct",
                                      revision="08b83a6feb34df1a6011b80c3c00c7563e963b07",
                                      description="LLaDA-8B-Instruct"),
    "llada-1_5": LLaDAAdapter(key="llada-1_5", source="GSAI-ML/LLaDA-1.5",
                              revision="84346fd91ba60252d260022201ad6fc5a3468fb2",
                              description="LLaDA-1.5 (LLaDA architecture, VRPO-aligned)"),
    "dream-7b-base": DreamAdapter(key="dream-7b-base", source="Dream-org/Dream-v0-Base-7B",
                                  revision="6572adb5535263e4d1a337b56942ba48b6dee2a9",
                                  description="Dream-v0-Base-7B (Qwen2 body, shifted logits)"),
}


# family name (params.yaml ``models.<key>.family``) -> adapter class
FAMILIES: dict[str, type[Adapter]] = {"tiny": TinyAdapter, "hf_causal": HFAdapter, "llada": LLaDAAdapter,
                                      "dream": DreamAdapter}
if tuple(FAMILIES) != choices.MODEL_FAMILIES:
    raise ImportError(f"srclib.models.FAMILIES {list(FAMILIES)} != srclib.choices.MODEL_FAMILIES")
_BUILTIN = frozenset(MODELS)
_DEFINED: dict[str, dict[str, Any]] = {}  # key -> the definition a params-defined entry was built from


def adapter_from_definition(key: str, definition: Mapping[str, Any]) -> Adapter:
    """The adapter of a model defined in params.yaml (``models.<key>``: family, source, revision,
    trust_remote_code, options) or recorded in a checkpoint's marker; ParamsError naming the key."""
    where = f"models.{key}"
    family = definition.get("family")
    if family not in FAMILIES:
        raise ParamsError(f"{where}.family = {family!r}: must be one of {list(FAMILIES)}")
    cls = FAMILIES[family]
    options = dict(definition.get("options") or {})
    fields = {f.name for f in dataclasses.fields(cls)} - {"key"}
    reserved = {"source", "revision", "trust_remote_code"}
    for name in options:
        if name not in fields or name in reserved:
            raise ParamsError(f"{where}.options.{name}: not a field of the {family} adapter; allowed: "
                              f"{sorted(fields - reserved)}")
    kwargs: dict[str, Any] = {"key": key, **options}
    for name in ("source", "revision", "trust_remote_code"):
        if definition.get(name) is not None:
            kwargs[name] = definition[name]
    if family == "hf_causal":
        kwargs.setdefault("causal", True)
        kwargs.setdefault("shift", False)
        kwargs.setdefault("blocks_path", "model.layers")
    if family == "tiny" and ("causal" not in kwargs or "shift" not in kwargs):
        raise ParamsError(f"{where}.options: the tiny family needs causal and shift (true/false)")
    kwargs.setdefault("description", f"{key} (defined in params.yaml: {family})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{where}: {exc}") from None


def register(models: Mapping[str, Any]) -> None:
    """Add params.yaml's model definitions (entries with ``family``) to ``MODELS``; check that every
    other key is a built-in entry. ``models``: key -> srclib.params.ModelEntry. Idempotent; a key
    defined twice differently, or a definition that shadows a built-in key, is a ParamsError."""
    for key, entry in models.items():
        definition = entry.definition()
        if definition is None:
            if key not in MODELS:
                raise ParamsError(
                    f"models.{key}: unknown model; registered models: {sorted(MODELS)} (or define it here: "
                    f"models.{key}.family, one of {list(FAMILIES)}, and its source)")
            continue
        if key in _BUILTIN:
            raise ParamsError(f"models.{key}.family: {key!r} is a built-in registry entry; remove its family "
                              f"(and source, ...) or use another key")
        if key in _DEFINED and _DEFINED[key] != definition:
            raise ParamsError(f"models.{key}: defined twice differently ({_DEFINED[key]} vs {definition})")
        _define(key, definition)


def _define(key: str, definition: Mapping[str, Any]) -> None:
    """Register the adapter a definition (params entry or checkpoint marker) describes."""
    MODELS[key] = adapter_from_definition(key, definition)
    _DEFINED[key] = dict(definition)


def check_keys(models: Mapping[str, Any]) -> None:
    """Every params.yaml ``models:`` key (key -> srclib.params.ModelEntry) must be a built-in
    registry entry or defined in its entry; the definitions are registered (``register``). The
    runner calls this before a notebook starts; srclib.params does not import the registry."""
    register(models)


def definition(key: str) -> dict[str, Any] | None:
    """The params definition a registered key was built from (None for a built-in entry): recorded
    in the markers of the checkpoints made from it, so they load in any process."""
    return dict(_DEFINED[key]) if key in _DEFINED else None


def inherited_marker(key: str) -> dict[str, Any]:
    """Marker fields a checkpoint derived from model ``key`` (a pruned copy) carries over: the
    params definition (``adapter``) of a params-defined model and the dense checkpoint's
    ``weights`` / ``kind`` labels when it records them."""
    from srclib import paths

    out: dict[str, Any] = {}
    if key in _DEFINED:
        out["adapter"] = dict(_DEFINED[key])
    folder = paths.model_dir(key)
    if (folder / MARKER).is_file():
        info = read_marker(folder)
        out.update({k: info[k] for k in ("weights", "kind") if k in info})
    return out


def labels(key: str, folder: str | Path | None = None) -> dict[str, Any]:
    """{"kind": "dlm" | "ar", "random_init": bool} of a model's checkpoint, from its own marker
    (default folder: models/<key>; srclib.models.base.marker_labels)."""
    from srclib import paths

    adapter = get_adapter(key)
    if folder is None:
        folder = paths.model_dir(key)
    return marker_labels(folder if Path(folder).is_dir() else None, adapter.causal)


def get_adapter(key: str) -> Adapter:
    if key not in MODELS:
        raise KeyError(f"unknown model {key!r}; registered models: {sorted(MODELS)}")
    return MODELS[key]


def load(key_or_dir: str | Path, **overrides: Any):
    """Load a registered model by key (default source) or a srclib-written checkpoint folder.

    Overrides: ``dtype`` (str or torch.dtype), ``device``, and from_pretrained keyword arguments
    (a compact structured checkpoint takes only dtype and device).
    Returns (model in eval mode, tokenizer or None, adapter).
    """
    src = Path(key_or_dir)
    if isinstance(key_or_dir, str) and key_or_dir in MODELS:
        adapter = MODELS[key_or_dir]
        model, tok = adapter.load(None, **overrides)
    elif src.is_dir():
        info = read_marker(src)
        if info["key"] not in MODELS and isinstance(info.get("adapter"), dict):  # a params-defined model
            _define(info["key"], info["adapter"])
        adapter = get_adapter(info["key"])
        if "structure" in info:  # a structured (head / channel) pruned checkpoint: srclib.models.structure
            model, tok = load_structured(adapter, src, info["structure"], **overrides)
        else:
            model, tok = adapter.load(src, **overrides)
    else:
        raise KeyError(
            f"{key_or_dir!r} is neither a registered model ({sorted(MODELS)}) nor a checkpoint folder"
        )
    return model, tok, adapter
