"""Tests for srclib.train on a synthetic corpus and test-size models (seconds on CPU)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from srclib import paths
from srclib.data import read_texts
from srclib.models import load
from srclib.models.tiny import TinyLM, test_config
from srclib.train import (
    SPECIAL_TOKENS, Schedule, adapt_dlm, dlm_from_ar, distinct_n, dlm_loss, eval_windows, greedy_ar, lr_at,
    run_train, sample_windows, stratified_t, tiny_config, token_stream, train_ar,
    train_tokenizer, unigram_perplexity,
)

ARCH = {"n_layers": 2, "hidden_size": 32, "n_heads": 2, "mlp_hidden": 64, "rope_theta": 10000.0}
WORDS = "the a cat dog bird sat ran flew on under over mat tree house red blue small big and then".split()


def _corpus(folder: Path, n_train=300, n_val=40, seed=0) -> tuple[Path, Path]:
    rng = random.Random(seed)

    def passage():
        sents = []
        for _ in range(rng.randint(2, 4)):
            sents.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + ".")
        return " ".join(sents)

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n in (("train", n_train), ("validation", n_val)):
        p = folder / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"text": passage(), "source": "synthetic"}) + "\n" for _ in range(n)))
        out.append(p)
    return out[0], out[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer(corpus[0], 300)


# ---- tokenizer --------------------------------------------------------------------------------
def test_tokenizer_specials_roundtrip_and_bos(tok, tmp_path):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert len(tok) == 304
    for text in ["The cat sat on the mat.", "  spaces\tand\nnewlines ", "naïve café — “quotes” 日本"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
        assert tok.decode(ids[1:]) == text
        assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    from transformers import PreTrainedTokenizerFast

    again = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert again("The red dog.")["input_ids"] == tok("The red dog.")["input_ids"]
    assert again.mask_token_id == 3


def test_tokenizer_is_deterministic(corpus, tmp_path):
    train_tokenizer(corpus[0], 300, tmp_path / "a")
    train_tokenizer(corpus[0], 300, tmp_path / "b")
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(tmp_path / "x.jsonl", 10)
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        read_texts(tmp_path / "x.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_texts(bad)


# ---- windows, stream, unigram -----------------------------------------------------------------
def test_stream_and_windows(tok):
    stream = token_stream(tok, ["The cat.", "A dog."])
    a, b = tok("The cat.", add_special_tokens=False)["input_ids"], tok("A dog.", add_special_tokens=False)["input_ids"]
    assert stream.tolist() == a + [1] + b + [1]
    s = torch.arange(10, 30)
    w = eval_windows(s, 3, 5, bos=0)
    assert w.tolist() == [[0, 10, 11, 12, 13], [0, 14, 15, 16, 17], [0, 18, 19, 20, 21]]
    with pytest.raises(ValueError, match="eval_windows"):
        eval_windows(s, 6, 5, bos=0)
    g = torch.Generator().manual_seed(0)
    r = sample_windows(s, 4, 6, 0, g)
    assert r.shape == (4, 6) and (r[:, 0] == 0).all()
    assert ((r[:, 2:] - r[:, 1:-1]) == 1).all()  # consecutive stream tokens


def test_unigram_known_answer():
    train = torch.tensor([4, 4, 5])  # counts+1 over V=6: [1,1,1,1,3,2] / 9
    windows = torch.tensor([[0, 4, 5], [0, 5, 5]])  # scored: 4, 5, 5, 5
    expected = math.exp(-(math.log(3 / 9) + 3 * math.log(2 / 9)) / 4)
    assert unigram_perplexity(train, windows, 6) == pytest.approx(expected, rel=1e-12)


def test_distinct_n():
    assert distinct_n([[1, 2, 1, 2, 1]], 2) == pytest.approx(2 / 4)
    assert distinct_n([[1, 2, 3]], 2) == 1.0


# ---- schedule ---------------------------------------------------------------------------------
def test_lr_schedule_known_values():
    s = Schedule(steps=110, lr=1e-3, warmup=10, min_lr=1e-4, weight_decay=0.1, grad_clip=1.0)
    assert lr_at(0, s) == pytest.approx(1e-4)
    assert lr_at(9, s) == pytest.approx(1e-3)
    assert lr_at(10, s) == pytest.approx(1e-3)
    assert lr_at(60, s) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way: cos = 0
    assert lr_at(110, s) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="schedule"):
        Schedule(steps=0, lr=1e-3, warmup=0, min_lr=0, weight_decay=0, grad_clip=1)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 64), seed=st.integers(0, 1000), eps=st.sampled_from([1e-3, 0.05]))
def test_stratified_t_is_low_discrepancy(B, seed, eps):
    t = stratified_t(B, eps, torch.Generator().manual_seed(seed))
    assert t.shape == (B,) and (t >= eps).all() and (t < 1).all()
    # exactly one t in each stratum [k/B, (k+1)/B) (up to the eps clamp)
    raw = ((t - t[0]) % 1.0)
    gaps = torch.sort(raw).values
    torch.testing.assert_close(gaps, torch.arange(B) / B, atol=eps + 1e-6, rtol=0)


# ---- losses -----------------------------------------------------------------------------------
def test_dlm_loss_matches_full_logits_rederivation():
    """Head-at-masked-positions == full forward, shift by one, CE at masked tokens / t, sum / (B*T)."""
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=False, shift=True))
    x0 = torch.randint(4, 60, (3, 9))
    x0[:, 0] = 0
    t = torch.tensor([0.2, 0.5, 0.9])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = dlm_loss(model, x0, t, 63, g1)
    masked = torch.rand(3, 9, generator=g2) < t[:, None]
    masked[:, 0] = False
    xt = torch.where(masked, torch.full_like(x0, 63), x0)
    logits = model(input_ids=xt).logits  # (B, T, V), row i-1 predicts token i
    aligned = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    ce = F.cross_entropy(aligned.transpose(1, 2), x0, reduction="none")  # (B, T)
    expected = (ce * masked / t[:, None]).sum() / (3 * 9)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert masked.any()


def test_greedy_ar_matches_uncached_greedy():
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=True, shift=False)).eval()
    prompt = torch.randint(3, 60, (2, 4))
    got = greedy_ar(model, prompt, 6)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, ids)


def test_a_few_steps_lower_the_loss(corpus, tok):
    stream = token_stream(tok, read_texts(corpus[0]))
    torch.manual_seed(0)
    ar = TinyLM(tiny_config(ARCH, tok, causal=True, shift=False, max_len=64))
    sched = Schedule(steps=25, lr=3e-3, warmup=5, min_lr=3e-4, weight_decay=0.1, grad_clip=1.0)
    g = torch.Generator().manual_seed(0)
    rec = train_ar(ar, stream, seq_len=32, batch_size=8, schedule=sched, bos=0, generator=g)
    assert sum(rec["loss"][-5:]) < 0.8 * sum(rec["loss"][:5])
    dlm, drec = adapt_dlm(ar, tok, stream, seq_len=32, batch_size=8, schedule=sched, eps=1e-3,
                          generator=g, max_len=64)
    assert dlm.config.causal is False and dlm.config.shift_logits is True and dlm.config.mask_token_id == 3
    assert sum(drec["loss"][-10:]) < sum(drec["loss"][:10])
    assert ar.config.causal is True  # the AR twin is untouched


def test_dlm_from_ar_copies_weights_and_flips_flags():
    torch.manual_seed(0)
    ar = TinyLM(test_config(causal=True, shift=False, mask_token_id=None))
    dlm = dlm_from_ar(ar, 63, 128)
    assert (dlm.config.causal, dlm.config.shift_logits, dlm.config.mask_token_id) == (False, True, 63)
    assert (ar.config.causal, ar.config.shift_logits) == (True, False)
    sa, sd = ar.state_dict(), dlm.state_dict()
    assert sa.keys() == sd.keys() and all(torch.equal(sa[k], sd[k]) for k in sa)
    assert all(sa[k].data_ptr() != sd[k].data_ptr() for k in sa)  # a copy, not shared storage


# ---- the stage --------------------------------------------------------------------------------
def _run(corpus, root, seed=0):
    return run_train(
        train_jsonl=corpus[0], validation_jsonl=corpus[1], gguf_file=None, out_root=root,
        tokenizer_vocab=300, seq_len=32, batch_size=8, arch=ARCH,
        ar={"steps": 12, "lr": 3e-3, "warmup": 2, "min_lr": 3e-4},
        dlm={"steps": 12, "lr": 1e-3, "warmup": 2, "min_lr": 1e-4, "eps": 1e-3},
        weight_decay=0.1, grad_clip=1.0, eval_windows_n=4, eval_mc_num=2, n_samples=2,
        sample_prompt_tokens=4, sample_gen_length=8, sample_block_length=4, seed=seed, threads=1,
    )


def test_run_train_is_deterministic_and_loadable(corpus, tmp_path):
    m1 = _run(corpus, tmp_path / "a")
    m2 = _run(corpus, tmp_path / "b")
    for key in ("tiny-ar", "tiny-dlm"):
        d1, d2 = paths.model_dir(key, root=tmp_path / "a"), paths.model_dir(key, root=tmp_path / "b")
        w1, w2 = load_file(d1 / "model.safetensors"), load_file(d2 / "model.safetensors")
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
        strip = lambda m: {k: v for k, v in m.items() if not k.endswith("_s")}  # noqa: E731
        assert strip(m1[key]) == strip(m2[key])
        model, tok, adapter = load(d1)
        assert adapter.key == key and tok is not None and tok.mask_token_id == 3
        mt = m1[key]
        assert len(mt["loss"]) == 12 and all(math.isfinite(x) for x in mt["loss"])
        assert mt["ppl"] > 1 and mt["unigram_ppl"] > 1 and len(mt["samples"]) == 2
        json.dumps(mt, allow_nan=False)
    assert m1["tiny-dlm"]["ppl_kind"] == "elbo" and m1["tiny-ar"]["ppl_kind"] == "causal"


def test_run_train_rejects_bad_arguments(corpus, tmp_path):
    with pytest.raises(ValueError, match="sample_gen_length"):
        run_train(
            train_jsonl=corpus[0], validation_jsonl=corpus[1], gguf_file=None, out_root=tmp_path,
            tokenizer_vocab=300, seq_len=32, batch_size=8, arch=ARCH, ar={}, dlm={}, weight_decay=0.1,
            grad_clip=1.0, eval_windows_n=4, eval_mc_num=2, n_samples=2, sample_prompt_tokens=4,
            sample_gen_length=8, sample_block_length=3, seed=0, threads=1,
        )
    with pytest.raises(ValueError, match="arch has unknown keys"):
        tiny_config({**ARCH, "layers": 3}, None, causal=True, shift=False, max_len=8)
