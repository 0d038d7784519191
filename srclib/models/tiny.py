"""tiny-dlm / tiny-ar: a small transformer with LLaDA's module layout and naming.

Layout (as LLaDA's remote code):
    TinyLM.model.transformer.{wte, blocks[i].{attn_norm, q_proj, k_proj, v_proj, attn_out,
                                               ff_norm, ff_proj, up_proj, ff_out}, ln_f, ff_out}
Pre-RMSNorm, RoPE, SwiGLU (ff_proj is the activated gate, up_proj the linear branch), no biases,
attention through torch.nn.functional.scaled_dot_product_attention (so srclib.attention can record
it), causal or bidirectional by config.  ``shift_logits`` is metadata the adapter reads: the
AR-initialised tiny-dlm predicts token i from output i-1, as Dream does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

__all__ = ["TinyConfig", "TinyLM", "test_config"]


class TinyConfig(PretrainedConfig):
    model_type = "srclib-tiny"

    def __init__(
        self,
        vocab_size: int = 4098,
        hidden_size: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        mlp_hidden: int = 688,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        rms_eps: float = 1e-6,
        causal: bool = False,
        shift_logits: bool = True,
        init_std: float = 0.02,
        mask_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.mlp_hidden = mlp_hidden
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_eps = rms_eps
        self.causal = causal
        self.shift_logits = shift_logits
        self.init_std = init_std
        self.mask_token_id = mask_token_id
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs
        )
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by n_heads ({n_heads})")
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def num_hidden_layers(self) -> int:  # transformers' generic name
        return self.n_layers


def test_config(causal: bool = False, shift: bool = True, **kw: Any) -> TinyConfig:
    """A test-size config (seconds on CPU): 2 layers, d=64, 4 heads, vocab 64 (+mask)."""
    base = dict(
        vocab_size=64, hidden_size=64, n_layers=2, n_heads=4, mlp_hidden=128,
        max_position_embeddings=256, causal=causal, shift_logits=shift,
        mask_token_id=None if causal else 63, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    base.update(kw)
    return TinyConfig(**base)


test_config.__test__ = False  # a factory, not a pytest test (tests import it by name)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def rope_cache(seq_len: int, head_dim: int, theta: float, device, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)  # (T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); cos/sin: (T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class TinyBlock(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.hidden_size // cfg.n_heads
        self.n_heads, self.n_kv, self.head_dim, self.causal = cfg.n_heads, cfg.n_kv_heads, hd, cfg.causal
        self.attn_norm = RMSNorm(d, cfg.rms_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_eps)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,  # (B, 1, T_q|1, T_k) bool, True = attend
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool = False,
    ):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        present = (k, v) if use_cache else None
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # causal without cache and without an explicit mask: let SDPA build it
        is_causal = self.causal and attn_mask is None and past_kv is None and T > 1
        if self.causal and not is_causal:
            Tk = k.shape[2]
            causal = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(Tk - T)
            attn_mask = causal if attn_mask is None else (attn_mask & causal)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        x = x + self.attn_out(y)
        h = self.ff_norm(x)
        x = x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return (x, present) if use_cache else x


class TinyBackbone(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
                blocks=nn.ModuleList(TinyBlock(cfg) for _ in range(cfg.n_layers)),
                ln_f=RMSNorm(cfg.hidden_size, cfg.rms_eps),
                ff_out=nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False),
            )
        )

    def hidden(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T_k) 1 = real token
        past_key_values: list | None = None,
        use_cache: bool = False,
    ):
        cfg = self.cfg
        B, T = input_ids.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        if past_len + T > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {past_len + T} exceeds max_position_embeddings "
                f"({cfg.max_position_embeddings})"
            )
        x = self.transformer.wte(input_ids)
        hd = cfg.hidden_size // cfg.n_heads
        cos, sin = rope_cache(past_len + T, hd, cfg.rope_theta, x.device, x.dtype)
        cos, sin = cos[past_len:], sin[past_len:]
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T_k)
        presents = []
        for i, block in enumerate(self.transformer.blocks):
            pkv = past_key_values[i] if past_key_values else None
            if use_cache:
                x, present = block(x, cos=cos, sin=sin, attn_mask=mask, past_kv=pkv, use_cache=True)
                presents.append(present)
            else:
                x = block(x, cos=cos, sin=sin, attn_mask=mask, past_kv=pkv)
        x = self.transformer.ln_f(x)
        return (x, presents) if use_cache else x


class TinyLM(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["TinyBlock"]

    def __init__(self, config: TinyConfig):
        super().__init__(config)
        self.model = TinyBackbone(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        if isinstance(module, TinyBlock):  # GPT-2 style: residual projections scaled 1/sqrt(2L)
            scaled = std / math.sqrt(2 * self.config.n_layers)
            nn.init.normal_(module.attn_out.weight, mean=0.0, std=scaled)
            nn.init.normal_(module.ff_out.weight, mean=0.0, std=scaled)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.transformer.ff_out(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: list | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> CausalLMOutput:
        if use_cache:
            h, presents = self.model.hidden(input_ids, attention_mask, past_key_values, use_cache=True)
        else:
            h, presents = self.model.hidden(input_ids, attention_mask, past_key_values), None
        logits = self.lm_head(h)  # (B, T, V)
        out = CausalLMOutput(logits=logits)
        if use_cache:
            out["past_key_values"] = presents
        return out
