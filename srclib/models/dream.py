"""Dream family (Dream-v0-Base-7B): remote code from the hub, Qwen2 body, shifted logits.

Layout (Dream-org modeling_dream.py): DreamModel.model.layers[i].{self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj}, GQA 28/4, bidirectional SDPA attention, mask id 151666; the logits that
predict token i are read at position i-1 (``shift=True``; the adapter's align_logits handles it).

Dream's forward takes no 2-D padding mask: its sampler passes either "full" or a 4-D boolean mask
(query AND key padding) plus position ids that skip the padding. ``DreamAdapter.logits`` builds
exactly that, and always passes a 4-D mask, so that a stock Qwen2 stand-in (offline tests) is
bidirectional too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from srclib.models.hf_causal import LLAMA_ROLES, HFAdapter

__all__ = ["DreamAdapter", "DREAM_VOCAB", "DREAM_MASK_ID", "dream_attention_inputs"]

DREAM_VOCAB = 152064
DREAM_MASK_ID = 151666


def dream_attention_inputs(attention_mask: torch.Tensor | None, batch: int, length: int, device):
    """(4-D bool mask (B, 1, T, T), position_ids (B, T) or None) as Dream's sampler builds them."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return torch.ones(batch, 1, length, length, dtype=torch.bool, device=device), None
    am = attention_mask.bool()  # (B, T), True = real token
    pos = am.long().cumsum(-1) - 1
    pos = pos.masked_fill(~am, 1)
    mask = am[:, None, None, :] & am[:, None, :, None]  # (B, 1, T, T)
    return mask, pos


@dataclass(frozen=True)
class DreamAdapter(HFAdapter):
    causal: bool = False
    shift: bool = True
    blocks_path: str = "model.layers"
    auto_class: str = "AutoModel"  # Dream's auto_map registers DreamModel (with lm_head) under AutoModel
    dtype: str = "bfloat16"
    attn_implementation: str | None = None
    trust_remote_code: bool = True
    mask_token_id: int | None = DREAM_MASK_ID
    roles: dict[str, str] = field(default_factory=lambda: dict(LLAMA_ROLES))
    standin_model_type: str = "qwen2"
    standin_config: dict[str, Any] = field(default_factory=lambda: dict(
        vocab_size=DREAM_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    ))
    # masked, not compact: Dream's remote attention (Qwen2 before transformers 4.48) builds
    # q/k/v/o_proj from config.num_attention_heads / num_key_value_heads / hidden_size at init and
    # reshapes with self.num_heads, self.head_dim = hidden_size // num_heads and
    # reshape(bsz, q_len, self.hidden_size), so from_pretrained cannot hold per-block shapes and the
    # forward does not follow smaller projections (see set_block_heads)
    structured_form: str = "masked"

    def set_block_heads(self, block: nn.Module, n_heads: int, n_kv: int) -> None:
        """Per-block head counts: nothing to do for the stock Qwen2 stand-in (it reshapes with -1,
        see ``Adapter.set_block_heads``); refused for Dream's remote code.

        What the public Dream modeling code shows (not run here: no hub access): its attention keeps
        ``num_heads``, ``num_key_value_heads``, ``head_dim`` and ``hidden_size`` as module attributes
        taken from the config, views q as ``(bsz, q_len, self.num_heads, self.head_dim)``, checks
        the output's size against them and reshapes it to ``self.hidden_size``. Rewriting those
        attributes is untested here, so a block that has them is refused.
        """
        attn = block.get_submodule(self.roles["q"].rpartition(".")[0]) if "." in self.roles["q"] else block
        if hasattr(attn, "num_heads"):  # Dream's remote attention (stock Qwen2 attention has none)
            raise ValueError(
                f"model {self.key!r}: Dream's remote attention reshapes with per-module head counts "
                f"taken from the config (num_heads, hidden_size), so a block cannot be made compact; "
                f"use structured_form='masked'"
            )

    def logits(self, model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Aligned logits (B, T, V); bidirectional 4-D mask and padding-aware position ids."""
        B, T = ids.shape
        mask, pos = dream_attention_inputs(attention_mask, B, T, ids.device)
        kw = {} if pos is None else {"position_ids": pos}
        out = model(input_ids=ids, attention_mask=mask, **kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return self.align_logits(logits)
