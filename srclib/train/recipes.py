"""The two tiny models' training recipes.

- ``train_ar``: next-token cross-entropy on random [BOS]-led windows (``srclib.train.loop``).
- ``adapt_dlm``: tiny-dlm starts from tiny-ar's weights, bidirectional attention, shifted logits
  (the output at i-1 predicts token i, as Dream). The LLaDA/MDLM objective with a low-discrepancy t:
  t_j = ((u + j/B) mod 1) clamped to >= eps (u ~ U(0, 1), one per batch); every token but position
  0 is masked with probability t_j; loss = sum over masked tokens of CE / t_j, divided by B*T.
  Logits are computed only at masked positions (backbone -> hidden states -> gather -> head).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from srclib.models.tiny import TinyLM
from srclib.params import TrainParams
from srclib.train.loop import train_loop
from srclib.train.tokenizer import sample_windows

__all__ = ["train_ar", "stratified_t", "dlm_loss", "dlm_from_ar", "adapt_dlm"]


def train_ar(model: TinyLM, stream: torch.Tensor, cfg: TrainParams, *, bos: int,
             generator: torch.Generator) -> dict[str, Any]:
    """Next-token CE on random [BOS]-led windows of ``stream`` (``cfg.seq_len``, ``cfg.batch_size``,
    schedule ``cfg.ar``); returns the record of :func:`srclib.train.loop.train_loop`."""
    if not model.config.causal:
        raise ValueError("train_ar needs a causal TinyLM (config.causal=True)")

    def loss_fn(step: int) -> torch.Tensor:
        x = sample_windows(stream, cfg.batch_size, cfg.seq_len, bos, generator)  # (B, T)
        logits = model(input_ids=x).logits  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

    return train_loop(model, cfg.ar, loss_fn, "tiny-ar", weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)


def stratified_t(batch: int, eps: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) low-discrepancy times t_j = ((u + j/B) mod 1) clamped to >= eps, u ~ U(0, 1)."""
    u = torch.rand((), generator=generator)
    t = (u + torch.arange(batch, dtype=torch.float32) / batch) % 1.0
    return t.clamp_min(eps)


def dlm_loss(model: TinyLM, x0: torch.Tensor, t: torch.Tensor, mask_id: int,
             generator: torch.Generator) -> torch.Tensor:
    """Masked-diffusion loss of a shifted TinyLM: sum_masked CE / t_j, over B*T (module docstring).

    x0: (B, T) clean windows (position 0 = [BOS], never masked); t: (B,) masking probabilities.
    """
    B, T = x0.shape
    masked = torch.rand(B, T, generator=generator) < t[:, None]  # (B, T)
    masked[:, 0] = False
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    h = model.model.hidden(xt)  # (B, T, d)
    b_idx, pos = masked.nonzero(as_tuple=True)  # (M,), (M,)
    src = pos - 1 if model.config.shift_logits else pos  # shifted: output i-1 predicts token i
    logits = model.lm_head(h[b_idx, src])  # (M, V)
    ce = F.cross_entropy(logits, x0[b_idx, pos], reduction="none")  # (M,)
    return (ce / t[b_idx]).sum() / (B * T)


def dlm_from_ar(ar_model: TinyLM, mask_id: int, max_len: int) -> TinyLM:
    """A bidirectional, shifted TinyLM holding a copy of the AR twin's weights."""
    cfg = copy.deepcopy(ar_model.config)
    cfg.causal, cfg.shift_logits = False, True
    cfg.mask_token_id, cfg.max_position_embeddings = int(mask_id), max_len
    model = TinyLM(cfg)
    model.load_state_dict(ar_model.state_dict())
    return model


def adapt_dlm(ar_model: TinyLM, stream: torch.Tensor, cfg: TrainParams, *, bos: int, mask_id: int,
              max_len: int, generator: torch.Generator) -> tuple[TinyLM, dict[str, Any]]:
    """tiny-dlm from tiny-ar's weights (bidirectional, shifted), trained with schedule ``cfg.dlm``
    (its ``eps`` clamps t); returns (model, train record)."""
    model = dlm_from_ar(ar_model, mask_id, max_len)

    def loss_fn(step: int) -> torch.Tensor:
        x0 = sample_windows(stream, cfg.batch_size, cfg.seq_len, bos, generator)  # (B, T)
        t = stratified_t(cfg.batch_size, cfg.dlm.eps, generator)  # (B,)
        return dlm_loss(model, x0, t, mask_id, generator)

    return model, train_loop(model, cfg.dlm, loss_fn, "tiny-dlm", weight_decay=cfg.weight_decay,
                             grad_clip=cfg.grad_clip)
