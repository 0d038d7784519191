"""Tests for srclib.decoding (greedy KV-cache decoding) and srclib.trajectories (collect + variance)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from srclib.decoding import greedy_decode
from srclib.models.tiny import TinyLM, test_config


def _causal_tiny(seed=0):
    torch.manual_seed(seed)
    return TinyLM(test_config(causal=True, shift=False)).eval()


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _naive_greedy(model, prompt, n):
    ids = prompt
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def _prompt(B=2, P=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(3, 63, (B, P), generator=g)
    p[:, 0] = 0
    return p


# ---- greedy decoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("make", [_causal_tiny, _tiny_llama], ids=["tiny", "hf-llama"])
@pytest.mark.parametrize("P", [1, 5])
def test_greedy_cache_matches_naive(make, P):
    model = make()
    prompt = _prompt(P=P)
    calls, prefills = [], []
    out = greedy_decode(model, prompt, max_new_tokens=7,
                        on_step=lambda s, ids, info: calls.append((s, ids.clone(), info)),
                        on_prefill=lambda ids: prefills.append(ids))
    assert torch.equal(out, _naive_greedy(model, prompt, 7))
    assert [c[0] for c in calls] == list(range(7))
    for s, ids, info in calls:
        assert ids.shape == (2, P + s) and info["query_pos"] == P - 1 + s
        assert torch.equal(info["x"][:, :-1], ids) and torch.equal(info["x"][:, -1], info["next_token"])
    assert len(prefills) == (1 if P > 1 else 0)


def test_greedy_eos_stops():
    model = _causal_tiny()
    prompt = _prompt(B=1)
    free = greedy_decode(model, prompt, max_new_tokens=6)
    eos = int(free[0, prompt.shape[1] + 2])  # the third generated token: declare it eos
    out = greedy_decode(model, prompt, max_new_tokens=6, eos_id=eos)
    first = (free[0, prompt.shape[1]:] == eos).nonzero()[0].item()
    assert out.shape[1] == prompt.shape[1] + first + 1 and out[0, -1].item() == eos


def test_greedy_validation():
    model = _causal_tiny()
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_decode(model, _prompt(), max_new_tokens=0)
    with pytest.raises(ValueError, match="P >= 1"):
        greedy_decode(model, _prompt()[:, :0], max_new_tokens=2)
