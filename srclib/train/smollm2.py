"""smollm2-135m: SmolLM2-135M-Instruct dequantised once from data/raw's GGUF, and its perplexity on
the validation windows of its own tokenizer (shown by the train stage, not tracked as a metric)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from srclib.likelihood import causal_perplexity, model_logits_fn
from srclib.models import get_adapter
from srclib.models.hf_causal import convert_gguf
from srclib.notebook import phase
from srclib.train.heldout import n_params
from srclib.train.tokenizer import token_stream

__all__ = ["KEY", "convert_smollm2"]

KEY = "smollm2-135m"


def convert_smollm2(gguf_file: str | Path, folder: Path, val_passages: Sequence[str], n_windows: int,
                    seq_len: int) -> dict[str, Any]:
    """Dequantise ``gguf_file`` into ``folder``; its true perplexity on at most ``n_windows``
    validation windows of ``seq_len`` tokens. Returns {convert_time_s, ppl, ppl_kind, eval_windows,
    eval_time_s, n_params, vocab_size}."""
    t0 = time.perf_counter()
    with phase(f"train {KEY}: dequantise {Path(gguf_file).name}"):
        folder = convert_gguf(gguf_file, folder, KEY)
    convert_s = time.perf_counter() - t0
    adapter = get_adapter(KEY)
    model, tok = adapter.load(folder)
    stream = token_stream(tok, val_passages)
    # SmolLM2 has no BOS: windows are plain non-overlapping seq_len chunks, tokens 1..T-1 scored
    n = min(n_windows, stream.numel() // seq_len)
    windows = stream[: n * seq_len].view(n, seq_len)
    t1 = time.perf_counter()
    with phase(f"train {KEY}: held-out perplexity on {n} windows"):
        ppl = causal_perplexity(model_logits_fn(model, adapter), windows, forward_batch=8)
    return {"convert_time_s": convert_s, "ppl": ppl, "ppl_kind": "causal", "eval_windows": n,
            "eval_time_s": time.perf_counter() - t1, "n_params": n_params(model), "vocab_size": len(tok)}
