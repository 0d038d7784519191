"""Model registry: ``MODELS = {key: adapter}``; ``load(key_or_dir)`` -> (model, tokenizer, adapter).

Adding a model: one adapter file per family (if the family is new), one line here, one entry in
params.yaml ``models:``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srclib.models.base import Adapter, read_marker
from srclib.models.tiny_adapter import TinyAdapter

__all__ = ["MODELS", "Adapter", "load", "get_adapter"]

MODELS: dict[str, Adapter] = {
    "tiny-dlm": TinyAdapter(key="tiny-dlm", causal=False, shift=True, source="models/tiny-dlm",
                            description="4-layer masked diffusion LM adapted from tiny-ar"),
    "tiny-ar": TinyAdapter(key="tiny-ar", causal=True, shift=False, source="models/tiny-ar",
                           description="4-layer causal LM, tiny-dlm's AR twin"),
}


def get_adapter(key: str) -> Adapter:
    if key not in MODELS:
        raise KeyError(f"unknown model {key!r}; registered models: {sorted(MODELS)}")
    return MODELS[key]


def load(key_or_dir: str | Path, **overrides: Any):
    """Load a registered model by key (default source) or a srclib-written checkpoint folder."""
    src = Path(key_or_dir)
    if isinstance(key_or_dir, str) and key_or_dir in MODELS:
        adapter = MODELS[key_or_dir]
        model, tok = adapter.load(None, **overrides)
    elif src.is_dir():
        adapter = get_adapter(read_marker(src)["key"])
        model, tok = adapter.load(src, **overrides)
    else:
        raise KeyError(
            f"{key_or_dir!r} is neither a registered model ({sorted(MODELS)}) nor a checkpoint folder"
        )
    return model, tok, adapter
