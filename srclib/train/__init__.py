"""The train stage's library: the tokenizer, the tiny twins (tiny-ar, tiny-dlm adapted from it) and
the SmolLM2 conversion. The stage itself is :mod:`srclib.stages.train`.

- :mod:`srclib.train.tokenizer`: BPE tokenizer, special tokens, token streams and windows;
- :mod:`srclib.train.config`: the tiny models' TinyConfig, from params (one builder for the
  stage, the tests and the benchmarks);
- :mod:`srclib.train.loop`: AdamW, the lr schedule, the training loop;
- :mod:`srclib.train.recipes`: the AR objective, the DLM adaptation and its masked-diffusion loss;
- :mod:`srclib.train.heldout`: unigram baseline, greedy AR decoding, distinct-n, decoded samples;
- :mod:`srclib.train.twins`: the two tiny models trained, measured and saved, end to end;
- :mod:`srclib.train.smollm2`: SmolLM2-135M dequantised from the GGUF, with its perplexity.

This file imports nothing.
"""
