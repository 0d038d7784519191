"""Causal (AR) models in lm-eval: its own ``hf`` model (``HFLM``), prepending BOS as DiffusionLM
does and decoding greedily with a KV cache (srclib.decoding) for models without ``generate``."""

from __future__ import annotations

import functools

import torch
from lm_eval.api.model import LM

from srclib import devices
from srclib.evaluation.common import check_finite_scores, checkpoint_name, model_max_length
from srclib.params import SamplerParams

__all__ = ["ar_lm"]


@functools.cache
def _hflm_class():
    """lm-eval's HFLM, plus greedy KV-cache generation (srclib.decoding) for causal models that
    have no ``generate`` (TinyLM is a plain PreTrainedModel)."""
    from lm_eval.models.huggingface import HFLM

    class SrclibHFLM(HFLM):
        """HFLM that prepends BOS itself (as DiffusionLM does) when ``add_bos_token``, whether or
        not the tokenizer's post-processor adds it, and decodes greedily without ``generate``."""

        def _bos(self, add: bool | None) -> int | None:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            return bos if (self.add_bos_token if add is None else add) else None

        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kw):
            ids = super().tok_encode(string, add_special_tokens=add_special_tokens, **kw)
            bos = self._bos(add_special_tokens)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
            return ids[-left_truncate_len:] if left_truncate_len else ids

        def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None,
                             truncation=False):
            encs = [self.tok_encode(s, left_truncate_len=left_truncate_len) for s in strings]
            width = max(len(e) for e in encs)
            pad = self.tokenizer.pad_token_id
            pad = pad if pad is not None else self.eot_token_id
            ids = torch.full((len(encs), width), pad, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(encs), width), dtype=torch.long)
            for i, e in enumerate(encs):
                if padding_side == "left":
                    ids[i, width - len(e):], mask[i, width - len(e):] = torch.tensor(e), 1
                else:
                    ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
            return ids, mask

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            """HFLM's log-likelihoods, refused when not finite (NaN logits would still rank)."""
            res = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            check_finite_scores([ll for ll, _ in res], self.model, checkpoint_name(self.model),
                                "exact log-likelihood of request(s)")
            return res

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            if hasattr(self.model, "generate"):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            from srclib.decoding import greedy_decode

            attn = generation_kwargs.get("attention_mask")
            eos = self.tokenizer.eos_token_id
            new = max(1, int(max_length) - context.shape[1])
            rows = []
            for i in range(context.shape[0]):  # one row at a time: no left padding inside
                real = context[i] if attn is None else context[i][attn[i].bool()]
                out = greedy_decode(self.model, real[None], max_new_tokens=new, eos_id=eos)
                rows.append(torch.cat([context[i], out[0, real.numel():]]))
            width = max(r.numel() for r in rows)
            pad = eos if eos is not None else 0
            return torch.stack([torch.cat([r, r.new_full((width - r.numel(),), pad)]) for r in rows])

    return SrclibHFLM


def ar_lm(model, tokenizer, adapter, *, batch_size: int, seed: int, sampler: SamplerParams,
          device=None) -> LM:
    """lm-eval's HFLM (with the additions above) for a loaded causal model. ``seed`` and
    ``sampler`` are the DLM's settings: HFLM decodes greedily and draws nothing."""
    if device is not None:
        model = model.to(devices.for_model(device, model))
    bos = getattr(tokenizer, "bos_token_id", None)
    return _hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                         add_bos_token=bos is not None, max_length=model_max_length(model))
