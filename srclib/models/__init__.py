"""Model registry: ``MODELS = {key: adapter}``; ``load(key_or_dir)`` -> (model, tokenizer, adapter).

Adding a model: one adapter file per family (if the family is new), one line here, one entry in
params.yaml ``models:``.

Hub revisions are pinned commit hashes of the Hugging Face repositories. They were taken from
public code that pins them (this machine has no hub access to re-check them); a wrong hash fails
loudly at load time with the id and revision in the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from srclib.models.base import Adapter, read_marker
from srclib.models.dream import DreamAdapter
from srclib.models.hf_causal import HFAdapter
from srclib.models.llada import LLaDAAdapter
from srclib.models.structure import load_structured
from srclib.models.tiny_adapter import TinyAdapter
from srclib.params import ParamsError

__all__ = ["MODELS", "Adapter", "load", "get_adapter", "check_keys"]

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
    "llada-1.5": LLaDAAdapter(key="llada-1.5", source="GSAI-ML/LLaDA-1.5",
                              revision="84346fd91ba60252d260022201ad6fc5a3468fb2",
                              description="LLaDA-1.5 (LLaDA architecture, VRPO-aligned)"),
    "dream-7b-base": DreamAdapter(key="dream-7b-base", source="Dream-org/Dream-v0-Base-7B",
                                  revision="6572adb5535263e4d1a337b56942ba48b6dee2a9",
                                  description="Dream-v0-Base-7B (Qwen2 body, shifted logits)"),
}


def check_keys(keys: Iterable[str]) -> None:
    """Every params.yaml ``models:`` key must be registered here (the runner calls this before a
    notebook starts; srclib.params does not import the registry)."""
    for key in keys:
        if key not in MODELS:
            raise ParamsError(f"models.{key}: unknown model; registered models: {sorted(MODELS)}")


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
