"""What the evaluation wrappers and the perplexity share: the lm-eval seed, the sampler of
generation tasks, per-request generators and a model's context length."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import torch

from srclib.params import SamplerParams

__all__ = ["SEED", "SAMPLER", "request_generator", "model_max_length", "sampler_record"]

# lm-eval's own default seed (simple_evaluate's numpy / torch / few-shot seeds): the seed of every
# evaluation entry point that is not given one.
SEED = 1234

# The DLM sampler of generation tasks (e.g. gsm8k): LLaDA's generate.py example. Its cfg_scale is
# replaced by each task's ``cfg`` (DiffusionLM.configure), one guidance value for scoring and
# generation alike.
SAMPLER = SamplerParams(gen_length=128, steps=128, block_length=32, temperature=0.0, cfg_scale=0.0,
                        remasking="low_confidence")


def request_generator(seed: int, *parts: Sequence[int]) -> torch.Generator:
    """A generator seeded by (seed, token ids): a request's MC draws do not depend on the batch,
    the order or the other tasks of a run."""
    h = hashlib.sha256(str(int(seed)).encode())
    for p in parts:
        h.update(b"|" + ",".join(map(str, p)).encode())
    return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") & (2**63 - 1))


def model_max_length(model) -> int | None:
    """The context length a model's config declares (None when it declares none)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def sampler_record(sampler: SamplerParams) -> dict[str, Any]:
    """The sampler's settings as the metrics record them: without ``cfg_scale``, which generation
    takes from each task's ``cfg`` (recorded with the task)."""
    return {k: v for k, v in dataclasses.asdict(sampler).items() if k != "cfg_scale"}
