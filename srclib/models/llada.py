"""LLaDA family (LLaDA-8B-Base/-Instruct, LLaDA-1.5): remote code from the hub, LLaDA layout.

Layout (GSAI-ML modeling_llada.py): LLaDAModelLM.model.transformer.blocks[i].{q_proj, k_proj, v_proj,
attn_out, ff_proj, up_proj, ff_out}; bidirectional attention through torch SDPA (so
srclib.attention records it); logits not shifted; mask id 126336 (method.md 7). The stand-in for
offline tests is a TinyLM, which has the same attribute layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from srclib.models.hf_causal import HFAdapter
from srclib.models.tiny import TinyLM, test_config

__all__ = ["LLaDAAdapter", "LLADA_ROLES", "LLADA_VOCAB", "LLADA_MASK_ID"]

LLADA_ROLES = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
    "gate": "ff_proj", "up": "up_proj", "down": "ff_out",
}
LLADA_VOCAB = 126464
LLADA_MASK_ID = 126336


@dataclass(frozen=True)
class LLaDAAdapter(HFAdapter):
    causal: bool = False
    shift: bool = False
    blocks_path: str = "model.transformer.blocks"
    auto_class: str = "AutoModel"  # LLaDA's auto_map registers LLaDAModelLM under AutoModel
    dtype: str = "bfloat16"
    attn_implementation: str | None = None  # remote code: always SDPA
    trust_remote_code: bool = True
    mask_token_id: int | None = LLADA_MASK_ID
    roles: dict[str, str] = field(default_factory=lambda: dict(LLADA_ROLES))

    def standin(self, seed: int = 0, **config: Any) -> nn.Module:
        """A 2-layer TinyLM with LLaDA's module names, vocabulary size and mask id."""
        torch.manual_seed(seed)
        kw = dict(vocab_size=LLADA_VOCAB, hidden_size=32, mlp_hidden=64, mask_token_id=self.mask_token_id,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
        kw.update(config)
        return TinyLM(test_config(causal=False, shift=False, **kw)).eval()
