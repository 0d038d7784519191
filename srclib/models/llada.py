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
    # masked, not compact: LLaDA's remote attention reshapes with the SHARED config's head counts
    # (q.view(B, T, config.n_heads, C // config.n_heads), k/v with config.effective_n_kv_heads) and
    # its blocks build q/k/v/attn_out from config.d_model at init, so one block cannot hold fewer
    # heads than another (see set_block_heads)
    structured_form: str = "masked"

    def set_block_heads(self, block: nn.Module, n_heads: int, n_kv: int) -> None:
        """Per-block head counts: possible for the TinyLM stand-in (its blocks read ``n_heads`` /
        ``n_kv``), not for LLaDA's remote code.

        What the public LLaDA modeling code shows (not run here: no hub access): ``attention()``
        takes ``C = q.size(-1)`` and reshapes q to ``(B, T, config.n_heads, C // config.n_heads)``
        and k/v to ``config.effective_n_kv_heads`` heads; ``config`` is one object shared by every
        block, so a compacted block would reshape with the dense counts (wrong head_dim, or a shape
        error). Structured LLaDA checkpoints are therefore saved masked (``structured_form``).
        """
        if hasattr(block, "n_heads") and hasattr(block, "n_kv"):  # the TinyLM stand-in
            block.n_heads, block.n_kv = int(n_heads), int(n_kv)
            return
        raise ValueError(
            f"model {self.key!r}: LLaDA's remote code reads the head counts of every block from the "
            f"shared config, so a block cannot be made compact; use structured_form='masked'"
        )

    def standin(self, seed: int = 0, **config: Any) -> nn.Module:
        """A 2-layer TinyLM with LLaDA's module names, vocabulary size and mask id."""
        torch.manual_seed(seed)
        kw = dict(vocab_size=LLADA_VOCAB, hidden_size=32, mlp_hidden=64, mask_token_id=self.mask_token_id,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
        kw.update(config)
        return TinyLM(test_config(causal=False, shift=False, **kw)).eval()
