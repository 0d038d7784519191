"""tiny-ar and tiny-dlm end to end: tokenizer, streams and windows, training, held-out measures,
greedy samples, checkpoints.

Held-out metrics: AR perplexity (``srclib.likelihood.causal_perplexity``), DLM ELBO perplexity
(``srclib.likelihood.elbo_perplexity``, position 0 kept), both on tokens 1..T-1 of the same
windows; add-one smoothed unigram perplexity of the train split on those tokens; greedy samples
(AR: KV-cache greedy decoding; DLM: ``srclib.diffusion.generate`` with params' train sampler,
``TrainParams.sampler()``: one token per step, low-confidence remasking, temperature 0).
Every random draw (init, batches, masks, MC, sampler) derives from ``train.seed``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from srclib.diffusion import generate
from srclib.files import atomic_dir
from srclib.likelihood import causal_perplexity, elbo_perplexity, model_logits_fn
from srclib.models import get_adapter
from srclib.models.base import write_marker
from srclib.models.tiny import TinyLM
from srclib.notebook import phase
from srclib.params import TrainParams
from srclib.train.config import max_len as max_len_of
from srclib.train.config import tiny_config
from srclib.train.heldout import decode_samples, greedy_ar, n_params, unigram_perplexity
from srclib.train.recipes import adapt_dlm, train_ar
from srclib.train.tokenizer import eval_windows, token_stream, train_tokenizer

__all__ = ["TWINS", "train_twins", "save"]

logger = logging.getLogger(__name__)

TWINS = ("tiny-ar", "tiny-dlm")


def save(model, tokenizer, folder: Path, key: str, **info: Any) -> Path:
    """Weights (safetensors), tokenizer and srclib marker, written atomically into ``folder``."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, key, **info)
    return folder


def train_twins(cfg: TrainParams, train_texts: Sequence[str], val_texts: Sequence[str],
                model_dirs: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Train the tokenizer, tiny-ar and tiny-dlm (adapted from tiny-ar) per ``cfg``; save each into
    ``model_dirs[key]``; return {key: metrics}.

    Metrics per model: loss (per step), train_time_s, step_time_s, train_cpu_s, threads, ppl
    ("tiny-ar": true perplexity; "tiny-dlm": ELBO perplexity, an upper bound), ppl_kind,
    unigram_ppl, ppl_over_unigram, samples [{prompt, completion}], distinct_2, n_params, the data
    sizes (vocab_size, train_tokens, validation_tokens, eval_windows, seq_len, tokenizer_time_s);
    tiny-dlm also eval_mc_num. The caller sets torch's thread count.
    """
    sampler = cfg.sampler()
    t_start = time.perf_counter()
    with phase(f"train: tokenizer ({cfg.tokenizer_vocab} tokens) on {len(train_texts)} passages"):
        tok = train_tokenizer(train_texts, cfg.tokenizer_vocab)
    train_stream = token_stream(tok, train_texts)
    val_stream = token_stream(tok, val_texts)
    bos, mask_id, V = tok.bos_token_id, tok.mask_token_id, len(tok)
    windows = eval_windows(val_stream, cfg.eval_windows, cfg.seq_len, bos)  # (N, T)
    uni = unigram_perplexity(train_stream, windows, V)
    max_len = max_len_of(cfg)
    data_info = {"vocab_size": V, "train_tokens": int(train_stream.numel()),
                 "validation_tokens": int(val_stream.numel()), "eval_windows": cfg.eval_windows,
                 "seq_len": cfg.seq_len, "tokenizer_time_s": time.perf_counter() - t_start}
    n_samples = cfg.n_samples
    prompts = _sample_prompts(tok, val_texts, n_samples, cfg.sample_prompt_tokens)  # (n_samples, P)

    # tiny-ar
    torch.manual_seed(cfg.seed)
    ar_model = TinyLM(tiny_config(cfg.arch, V, causal=True, shift=False, max_len=max_len))
    gen = torch.Generator().manual_seed(cfg.seed)
    ar_rec = train_ar(ar_model, train_stream, cfg, bos=bos, generator=gen)
    ar_ad = get_adapter("tiny-ar")
    ar_ppl, ar_samples, ar_d2 = _evaluate_ar(ar_model, ar_ad, tok, windows, prompts, n_samples, sampler.gen_length)
    save(ar_model, tok, model_dirs["tiny-ar"], "tiny-ar", seed=cfg.seed)

    # tiny-dlm
    dlm_model, dlm_rec = adapt_dlm(ar_model, train_stream, cfg, bos=bos, mask_id=mask_id, max_len=max_len,
                                   generator=gen)
    dlm_ad = get_adapter("tiny-dlm")
    dlm_ppl, dlm_samples, dlm_d2 = _evaluate_dlm(dlm_model, dlm_ad, tok, windows, prompts, n_samples, cfg, sampler)
    save(dlm_model, tok, model_dirs["tiny-dlm"], "tiny-dlm", seed=cfg.seed, init="tiny-ar")

    logger.info("tiny-ar ppl %.1f, tiny-dlm ELBO ppl %.1f, unigram %.1f", ar_ppl, dlm_ppl, uni)
    return {
        "tiny-ar": {**ar_rec, **data_info, "ppl": ar_ppl, "ppl_kind": "causal", "unigram_ppl": uni,
                    "ppl_over_unigram": ar_ppl / uni, "samples": ar_samples, "distinct_2": ar_d2,
                    "n_params": n_params(ar_model)},
        "tiny-dlm": {**dlm_rec, **data_info, "ppl": dlm_ppl, "ppl_kind": "elbo", "unigram_ppl": uni,
                     "ppl_over_unigram": dlm_ppl / uni, "samples": dlm_samples, "distinct_2": dlm_d2,
                     "n_params": n_params(dlm_model), "eval_mc_num": cfg.eval_mc_num},
    }


def _sample_prompts(tok, val_texts: Sequence[str], n_samples: int, P: int) -> torch.Tensor:
    """(n_samples, P): the first P token ids of the first ``n_samples`` validation passages; raises
    when one is shorter."""
    prompts = torch.stack([
        torch.tensor(tok(p)["input_ids"][:P]) for p in val_texts[:n_samples]
    ]) if n_samples else torch.zeros(0, P, dtype=torch.int64)  # (n_samples, P)
    if prompts.shape[0] and prompts.shape[1] != P:
        raise ValueError(f"a validation passage is shorter than sample_prompt_tokens={P}")
    return prompts


def _evaluate_ar(ar_model, ar_ad, tok, windows: torch.Tensor, prompts: torch.Tensor, n_samples: int,
                 gen_length: int) -> tuple[float, list, float]:
    """tiny-ar's held-out perplexity on ``windows`` (N, T), greedy samples from ``prompts`` and their distinct-2."""
    with phase(f"train tiny-ar: held-out perplexity on {windows.shape[0]} windows, {n_samples} samples"):
        ar_ppl = causal_perplexity(model_logits_fn(ar_model, ar_ad), windows)
        ar_samples, ar_d2 = decode_samples(tok, prompts, greedy_ar(ar_model, prompts, gen_length)) \
            if n_samples else ([], 0.0)
    return ar_ppl, ar_samples, ar_d2


def _evaluate_dlm(dlm_model, dlm_ad, tok, windows: torch.Tensor, prompts: torch.Tensor, n_samples: int,
                  cfg: TrainParams, sampler) -> tuple[float, list, float]:
    """tiny-dlm's held-out ELBO perplexity on ``windows`` (N, T), sampler continuations of ``prompts``
    and their distinct-2 (each from a generator seeded with cfg.seed)."""
    mask_id = tok.mask_token_id
    with phase(f"train tiny-dlm: held-out ELBO perplexity on {windows.shape[0]} windows x "
               f"{cfg.eval_mc_num} MC draws, {n_samples} samples"):
        dlm_ppl = elbo_perplexity(model_logits_fn(dlm_model, dlm_ad), windows, mask_id=mask_id,
                                  mc_num=cfg.eval_mc_num, generator=torch.Generator().manual_seed(cfg.seed),
                                  keep_first=True)
        dlm_samples, dlm_d2 = ([], 0.0)
        if n_samples:
            out = generate(dlm_model, prompts, **sampler.sampler_kwargs(), mask_id=mask_id, adapter=dlm_ad,
                           generator=torch.Generator().manual_seed(cfg.seed))
            dlm_samples, dlm_d2 = decode_samples(tok, prompts, out)
    return dlm_ppl, dlm_samples, dlm_d2
