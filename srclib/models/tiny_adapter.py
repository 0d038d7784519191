"""Adapter for the study's own tiny models (tiny-dlm, tiny-ar): local safetensors folders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srclib import paths
from srclib.models.base import Adapter
from srclib.models.hf_causal import load_options
from srclib.models.tiny import TinyConfig, TinyLM, test_config

__all__ = ["TinyAdapter", "TINY_ROLES"]

TINY_ROLES = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
    "gate": "ff_proj", "up": "up_proj", "down": "ff_out",
}


@dataclass(frozen=True)
class TinyAdapter(Adapter):
    blocks_path: str = "model.transformer.blocks"
    roles: dict[str, str] = field(default_factory=lambda: dict(TINY_ROLES))

    def load(self, source: str | Path | None = None, **overrides: Any):
        """(model, tokenizer) from a srclib-built folder (default: models/<key>).

        Overrides: ``dtype`` (default float32), ``device``; others go to ``from_pretrained``.
        """
        dtype, device, kwargs = load_options(overrides, "float32")
        folder = Path(source) if source is not None else paths.model_dir(self.key)
        if not (folder / "config.json").is_file():
            from srclib.params import TINY_MODELS

            how = ("run `dvc repro train` to build it" if self.key in TINY_MODELS else
                   f"the train stage builds only {list(TINY_MODELS)}: save a TinyLM checkpoint (config.json, "
                   f"model.safetensors, tokenizer) into {folder} yourself")
            raise FileNotFoundError(f"no tiny checkpoint for {self.key!r} at {folder} (missing config.json); {how}")
        try:
            model = TinyLM.from_pretrained(folder, use_safetensors=True, dtype=dtype, **kwargs)
        except Exception as exc:  # corrupt/unreadable weights
            raise RuntimeError(f"could not load checkpoint for {self.key!r} from {folder}: {exc}") from exc
        self._check_flags(model.config, folder)
        tok = self.folder_tokenizer(folder)
        if device is not None:
            model = model.to(device)
        return model.eval(), tok

    def _check_flags(self, config: TinyConfig, folder: Path) -> None:
        if config.causal != self.causal or config.shift_logits != self.shift:
            raise ValueError(
                f"checkpoint at {folder} has causal={config.causal}, shift_logits="
                f"{config.shift_logits} but registry entry {self.key!r} says causal={self.causal}, "
                f"shift={self.shift}"
            )

    def folder_tokenizer(self, folder: str | Path):
        """The fast tokenizer saved in ``folder`` (tokenizer.json), or None."""
        from transformers import PreTrainedTokenizerFast

        folder = Path(folder)
        return PreTrainedTokenizerFast.from_pretrained(folder) if (folder / "tokenizer.json").is_file() else None

    def skeleton(self, folder: str | Path, dtype: torch.dtype) -> nn.Module:
        """A TinyLM built from ``folder``/config.json (random weights, ``dtype``), flags checked."""
        folder = Path(folder)
        config = TinyConfig.from_pretrained(folder)
        self._check_flags(config, folder)
        return TinyLM(config).to(dtype)

    def set_block_heads(self, block: nn.Module, n_heads: int, n_kv: int) -> None:
        """TinyBlock's forward reshapes with ``block.n_heads`` / ``block.n_kv``: set them."""
        block.n_heads, block.n_kv = int(n_heads), int(n_kv)

    def standin(self, seed: int = 0, **config: Any) -> nn.Module:
        """A randomly initialised test-size TinyLM with this entry's causal/shift flags."""
        torch.manual_seed(seed)
        return TinyLM(test_config(causal=self.causal, shift=self.shift, **config)).eval()
