"""The tiny models' tokenizer and the token streams and windows they train and are measured on.

- ``train_tokenizer``: ByteLevel BPE on the corpus train split; special tokens [BOS], [EOS], [PAD],
  [MASK] (ids 0..3, ``SPECIAL_IDS``); the post-processor prepends [BOS]. Deterministic.
- Token stream: every passage is encoded without [BOS] and followed by [EOS]; the passages are
  concatenated in file order. A window is [BOS] + seq_len - 1 consecutive stream tokens.
  Training windows start at uniformly random stream offsets (seeded ``torch.Generator``);
  held-out windows are the first ``n`` non-overlapping chunks of the validation stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

__all__ = ["SPECIAL_TOKENS", "SPECIAL_IDS", "train_tokenizer", "token_stream", "eval_windows", "sample_windows"]

SPECIAL_TOKENS = ("[BOS]", "[EOS]", "[PAD]", "[MASK]")
# the trainer gives the special tokens the first ids, in this order (train_tokenizer checks it)
SPECIAL_IDS = {name: i for i, name in enumerate(("bos", "eos", "pad", "mask"))}


def train_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: str | Path | None = None):
    """ByteLevel BPE trained on ``texts`` (the TRAIN split): ``vocab_size`` learned tokens (the 256
    bytes included) plus the 4 special tokens at ids 0..3; adds [BOS] in front of every encoded
    text. Returns a ``PreTrainedTokenizerFast``; saved to ``out_dir`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(SPECIAL_TOKENS), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens {SPECIAL_TOKENS} got ids {ids}, expected 0..{len(ids) - 1}")
    bos = tok.token_to_id("[BOS]")
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A [BOS] $B", special_tokens=[("[BOS]", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", mask_token="[MASK]"
    )
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def token_stream(tokenizer, passages: Sequence[str]) -> torch.Tensor:
    """(N,) int64: every passage's tokens (no [BOS]) followed by [EOS], concatenated in order."""
    enc = tokenizer(list(passages), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    flat: list[int] = []
    for ids in enc:
        flat.extend(ids)
        flat.append(eos)
    return torch.tensor(flat, dtype=torch.int64)


def _window(stream: torch.Tensor, start: int, seq_len: int, bos: int) -> torch.Tensor:
    return torch.cat([torch.tensor([bos]), stream[start:start + seq_len - 1]])


def eval_windows(stream: torch.Tensor, n: int, seq_len: int, bos: int) -> torch.Tensor:
    """(n, seq_len): [BOS] + the first n non-overlapping (seq_len - 1)-token chunks of ``stream``."""
    body = seq_len - 1
    if n * body > stream.numel():
        raise ValueError(
            f"eval_windows={n} x seq_len={seq_len} needs {n * body} held-out tokens, the split has "
            f"{stream.numel()}"
        )
    return torch.stack([_window(stream, i * body, seq_len, bos) for i in range(n)])


def sample_windows(stream: torch.Tensor, batch: int, seq_len: int, bos: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, seq_len) training windows at uniformly random stream offsets."""
    hi = stream.numel() - (seq_len - 1)
    if hi < 1:
        raise ValueError(f"the training stream ({stream.numel()} tokens) is shorter than seq_len={seq_len}")
    starts = torch.randint(0, hi, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(seq_len - 1)[None, :]  # (B, T-1)
    return torch.cat([torch.full((batch, 1), bos, dtype=torch.int64), stream[idx]], dim=1)
