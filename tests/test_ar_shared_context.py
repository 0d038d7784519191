"""srclib.evaluation.ar: choices that share a context are scored over one KV cache of it.

Reference: one full forward of context + continuation[:-1] per request and the log-softmax
gathered at the continuation's tokens (what HFLM computes per row), on a TinyLM (its list-of-tuples
cache) and a from-config LLaMA (transformers' DynamicCache, GQA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from srclib.evaluation.ar import _has_cache, shared_context_loglikelihoods
from srclib.models.tiny import TinyLM, test_config


def _tiny() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(test_config(causal=True, shift=True)).eval()


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _reference(model, ctx, cont):
    ids = torch.tensor([ctx + cont[:-1]])
    with torch.no_grad():
        out = model(input_ids=ids)
    logits = out.logits if hasattr(out, "logits") else out[0]
    lp = F.log_softmax(logits[0, -len(cont):].float(), dim=-1)
    target = torch.tensor(cont)
    return float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


@pytest.mark.parametrize("build", [_tiny, _llama], ids=["tinylm", "llama"])
def test_shared_context_matches_one_forward_per_request(build):
    model = build()
    assert _has_cache(model)
    g = torch.Generator().manual_seed(1)
    ctx = torch.randint(3, 60, (17,), generator=g).tolist()
    conts = [torch.randint(3, 60, (n,), generator=g).tolist() for n in (1, 5, 3, 8)]
    got = shared_context_loglikelihoods(model, ctx, conts)
    for (ll, greedy), cont in zip(got, conts):
        ref_ll, ref_greedy = _reference(model, ctx, cont)
        assert ll == pytest.approx(ref_ll, abs=1e-4)
        assert greedy == ref_greedy
    # the log-likelihoods differ across choices (the test sees each continuation's own tokens)
    assert len({round(ll, 3) for ll, _ in got}) == len(conts)


def test_greedy_flag_true_for_the_models_own_argmax():
    model = _tiny()
    ctx = [0, 5, 9, 11]
    cont = []
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(4):  # the greedy continuation, token by token
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            cont.append(nxt)
            ids.append(nxt)
    other = cont[:-1] + [(cont[-1] + 1) % 60 + 3]
    (_, g1), (_, g2) = shared_context_loglikelihoods(model, ctx, [cont, other])
    assert g1 is True and g2 is False


def test_refuses_empty_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        shared_context_loglikelihoods(_tiny(), [], [[1]])
    with pytest.raises(ValueError, match="non-empty"):
        shared_context_loglikelihoods(_tiny(), [1], [[]])


def test_lm_eval_requests_same_answers_as_hflm_rows(monkeypatch):
    """Through the lm-eval LM: shared groups and HFLM's own rows give the same (ll, greedy),
    singles and shared groups mixed, in the requests' order."""
    from srclib.evaluation import ar
    from srclib.evaluation.ar import _hflm_class

    model = _llama()

    class Tok:  # the minimum HFLM reads from a tokenizer here
        bos_token_id = 0
        eos_token_id = 1
        pad_token_id = 2
        padding_side = "right"
        vocab_size = 64

    lm = object.__new__(_hflm_class())
    monkeypatch.setattr(type(lm), "max_length", property(lambda self: 128), raising=False)
    lm._model, lm.tokenizer = model, Tok()
    lm.backend, lm.logits_cache, lm.batch_size_per_gpu, lm._device = "causal", False, 4, torch.device("cpu")
    lm.softmax_dtype, lm.vocab_size, lm.mixed_precision_dtype = torch.float32, 64, None
    lm._rank, lm._world_size = 0, 1
    from lm_eval.api.model import CacheHook
    lm.cache_hook = CacheHook(None)
    g = torch.Generator().manual_seed(2)
    ctx_a = torch.randint(3, 60, (9,), generator=g).tolist()
    ctx_b = torch.randint(3, 60, (12,), generator=g).tolist()
    reqs = [(("a", str(i)), ctx_a, torch.randint(3, 60, (n,), generator=g).tolist()) for i, n in enumerate((2, 4, 1))]
    reqs.insert(1, (("b", "0"), ctx_b, [7, 8, 9]))
    shared = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    monkeypatch.setattr(ar, "_has_cache", lambda m: False)
    plain = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [g for _, g in shared] == [g for _, g in plain]
    assert [ll for ll, _ in shared] == pytest.approx([ll for ll, _ in plain], abs=1e-4)
    for (ll, _), (_, ctx, cont) in zip(shared, reqs):
        assert ll == pytest.approx(_reference(model, ctx, cont)[0], abs=1e-4)
