"""What the train stage measures on held-out text besides perplexity: the add-one smoothed
unigram baseline, greedy AR decoding (KV cache), distinct-n and decoded samples."""

from __future__ import annotations

from typing import Sequence

import torch

from srclib.models.tiny import TinyLM

__all__ = ["unigram_perplexity", "greedy_ar", "distinct_n", "decode_samples", "n_params"]


def unigram_perplexity(train_stream: torch.Tensor, windows: torch.Tensor, vocab_size: int) -> float:
    """Add-one smoothed unigram model of the train stream, perplexity on tokens 1..T-1 of ``windows``."""
    counts = torch.bincount(train_stream, minlength=vocab_size).double() + 1.0  # (V,)
    logp = counts.log() - counts.sum().log()
    scored = windows[:, 1:].reshape(-1)
    return float(torch.exp(-logp[scored].mean()))


@torch.no_grad()
def greedy_ar(model: TinyLM, prompt: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding with the KV cache: (B, P) -> (B, P + n_new)."""
    ids = prompt
    out = model(input_ids=prompt, use_cache=True)
    for i in range(n_new):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)
        if i < n_new - 1:
            out = model(input_ids=nxt, past_key_values=out["past_key_values"], use_cache=True)
    return ids


def distinct_n(token_lists: Sequence[Sequence[int]], n: int = 2) -> float:
    """Fraction of distinct n-grams among all n-grams of the given sequences (1.0 = no repetition)."""
    grams = [tuple(seq[i:i + n]) for seq in token_lists for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def decode_samples(tokenizer, prompts: torch.Tensor, generated: torch.Tensor) -> tuple[list[dict[str, str]], float]:
    """prompts (B, P), generated (B, P + G) -> ([{prompt, completion}] decoded, distinct-2 of the
    completions)."""
    P = prompts.shape[1]
    rows, conts = [], []
    for p, g in zip(prompts.tolist(), generated[:, P:].tolist()):
        conts.append(g)
        rows.append({"prompt": tokenizer.decode(p), "completion": tokenizer.decode(g)})
    return rows, distinct_n(conts, 2)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
