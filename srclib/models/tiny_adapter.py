"""Adapter for the study's own tiny models (tiny-dlm, tiny-ar): local safetensors folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srclib.models.base import Adapter

__all__ = ["TinyAdapter"]


@dataclass(frozen=True)
class TinyAdapter(Adapter):
    blocks_path: str = "model.transformer.blocks"

    def load(self, source: str | Path | None = None, **overrides: Any):
        from transformers import PreTrainedTokenizerFast

        from srclib import paths
        from srclib.models.tiny import TinyLM

        folder = Path(source) if source is not None else paths.model_dir(self.key)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no tiny checkpoint at {folder} (missing config.json); run `dvc repro train` "
                f"to build {self.key!r}"
            )
        try:
            model = TinyLM.from_pretrained(folder, use_safetensors=True, **overrides)
        except Exception as exc:  # corrupt/unreadable weights
            raise RuntimeError(f"could not load checkpoint for {self.key!r} from {folder}: {exc}") from exc
        tok = None
        if (folder / "tokenizer.json").is_file():
            tok = PreTrainedTokenizerFast.from_pretrained(folder)
        return model.eval(), tok
