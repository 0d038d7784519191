"""The tiny models' architecture config, built in one place from params.

``tiny_config(arch, vocab_size, ...)`` is the one builder of a tiny TinyConfig (the train stage,
the tests and the benchmarks all call it); ``study_config(train, ...)`` is the config of the
study's tiny-ar / tiny-dlm as params.yaml's ``train:`` section defines them (vocabulary: the BPE
vocabulary plus the 4 special tokens, the vocabulary of the trained models).
"""

from __future__ import annotations

import dataclasses

from srclib.models.tiny import TinyConfig
from srclib.params import Arch, TrainParams
from srclib.train.tokenizer import SPECIAL_IDS, SPECIAL_TOKENS

__all__ = ["max_len", "tiny_config", "study_config"]


def max_len(train: TrainParams) -> int:
    """The longest sequence the tiny models accept: training windows, greedy samples and params'
    ``max_len`` (RoPE has no learned positions: it only bounds the inputs; evaluation contexts are
    longer than training windows)."""
    return max(train.seq_len, train.sample_prompt_tokens + train.sample_gen_length, train.max_len)


def tiny_config(arch: Arch, vocab_size: int, *, causal: bool, shift: bool, max_len: int) -> TinyConfig:
    """TinyConfig of ``arch`` (params.yaml's ``train.arch``) over ``vocab_size`` tokens whose first
    ids are the special tokens of :mod:`srclib.train.tokenizer`; a bidirectional model gets [MASK]
    as its mask token. ``max_len``: the longest sequence the model will see."""
    return TinyConfig(
        vocab_size=vocab_size, max_position_embeddings=max_len, causal=causal, shift_logits=shift,
        mask_token_id=None if causal else SPECIAL_IDS["mask"], bos_token_id=SPECIAL_IDS["bos"],
        eos_token_id=SPECIAL_IDS["eos"], pad_token_id=SPECIAL_IDS["pad"], **dataclasses.asdict(arch),
    )


def study_config(train: TrainParams, *, causal: bool, shift: bool) -> TinyConfig:
    """The config of the study's tiny-ar (``causal=True, shift=False``) or tiny-dlm
    (``causal=False, shift=True``) from params.yaml's ``train:`` section, untrained: for
    benchmarks that need a model of the trained ones' size without the trained weights."""
    return tiny_config(train.arch, train.tokenizer_vocab + len(SPECIAL_TOKENS), causal=causal, shift=shift,
                       max_len=max_len(train))
