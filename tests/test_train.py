"""Tests for srclib.train and the train stage (srclib.stages.train) on a synthetic corpus and
test-size models (seconds on CPU)."""

from __future__ import annotations

import csv
import io
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

from srclib import params, paths
from srclib.data.corpus import read_texts
from srclib.models import load
from srclib.models.tiny import TinyConfig, TinyLM, test_config
from srclib.params import Schedule, TrainParams
from srclib.stages import train
from srclib.train.config import max_len, study_config, tiny_config
from srclib.train.heldout import distinct_n, greedy_ar, unigram_perplexity
from srclib.train.loop import lr_at
from srclib.train.recipes import adapt_dlm, dlm_from_ar, dlm_loss, stratified_t, train_ar
from srclib.train.tokenizer import (
    SPECIAL_IDS, SPECIAL_TOKENS, eval_windows, sample_windows, token_stream, train_tokenizer,
)

ARCH = {"n_layers": 2, "hidden_size": 32, "n_heads": 2, "mlp_hidden": 64, "rope_theta": 10000.0}
WORDS = "the a cat dog bird sat ran flew on under over mat tree house red blue small big and then".split()


def _cfg(**over) -> TrainParams:
    """A test-size train section, validated by params (as params.yaml's would be)."""
    d = dict(seed=0, threads=1, tokenizer_vocab=300, seq_len=32, max_len=64, batch_size=8, arch=dict(ARCH),
             ar={"steps": 12, "lr": 3e-3, "warmup": 2, "min_lr": 3e-4},
             dlm={"steps": 12, "lr": 1e-3, "warmup": 2, "min_lr": 1e-4, "eps": 1e-3},
             weight_decay=0.1, grad_clip=1.0, eval_windows=4, eval_mc_num=2, n_samples=2,
             sample_prompt_tokens=4, sample_gen_length=8, sample_block_length=4)
    d.update(over)
    return params.build(TrainParams, d, "train")


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
    return train_tokenizer(read_texts(corpus[0]), 300)


# ---- tokenizer --------------------------------------------------------------------------------
def test_tokenizer_specials_roundtrip_and_bos(tok, tmp_path):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert SPECIAL_IDS == {"bos": 0, "eos": 1, "pad": 2, "mask": 3}  # what tiny_config writes
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
    train_tokenizer(read_texts(corpus[0]), 300, tmp_path / "a")
    train_tokenizer(read_texts(corpus[0]), 300, tmp_path / "b")
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()


def test_tokenizer_rejects_a_vocabulary_below_the_bytes():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["some text"], 10)


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
    s = Schedule(steps=110, lr=1e-3, warmup=10, min_lr=1e-4)
    assert lr_at(0, s) == pytest.approx(1e-4)
    assert lr_at(9, s) == pytest.approx(1e-3)
    assert lr_at(10, s) == pytest.approx(1e-3)
    assert lr_at(60, s) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way: cos = 0
    assert lr_at(110, s) == pytest.approx(1e-4)
    assert lr_at(0, _cfg().dlm) == pytest.approx(1e-3 / 2)  # params' DlmSchedule is a Schedule


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
    sched = {"steps": 25, "lr": 3e-3, "warmup": 5, "min_lr": 3e-4}
    cfg = _cfg(ar=sched, dlm={**sched, "eps": 1e-3})
    ar = TinyLM(tiny_config(cfg.arch, len(tok), causal=True, shift=False, max_len=64))
    g = torch.Generator().manual_seed(0)
    rec = train_ar(ar, stream, cfg, bos=0, generator=g)
    assert len(rec["loss"]) == 25
    assert sum(rec["loss"][-5:]) < 0.8 * sum(rec["loss"][:5])
    dlm, drec = adapt_dlm(ar, stream, cfg, bos=0, mask_id=tok.mask_token_id, max_len=64, generator=g)
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


# ---- the tiny models' config ----------------------------------------------------------------
def test_tiny_config_from_arch_and_the_study_config():
    cfg = _cfg()
    ar = tiny_config(cfg.arch, 304, causal=True, shift=False, max_len=64)
    assert isinstance(ar, TinyConfig) and (ar.causal, ar.shift_logits, ar.mask_token_id) == (True, False, None)
    assert (ar.vocab_size, ar.n_layers, ar.hidden_size, ar.n_heads, ar.mlp_hidden, ar.rope_theta) == \
        (304, 2, 32, 2, 64, 10000.0)
    assert (ar.bos_token_id, ar.eos_token_id, ar.pad_token_id, ar.max_position_embeddings) == (0, 1, 2, 64)
    dlm = study_config(cfg, causal=False, shift=True)
    # the trained models' vocabulary: the BPE vocabulary plus the 4 special tokens
    assert dlm.vocab_size == cfg.tokenizer_vocab + 4 == 304 and dlm.mask_token_id == 3
    assert (dlm.causal, dlm.shift_logits) == (False, True)
    # max_len bounds the inputs: training windows, greedy samples and params' max_len
    assert max_len(cfg) == 64 and max_len(_cfg(max_len=8, seq_len=8)) == 12  # prompt 4 + gen 8 wins
    assert max_len(_cfg(max_len=8, seq_len=8, sample_prompt_tokens=30)) == 38
    assert study_config(_cfg(max_len=8, seq_len=8), causal=True, shift=False).max_position_embeddings == 12


def test_the_repository_study_config_is_the_trained_models_size():
    """benchmarks build tiny-dlm-sized models from params.yaml: vocab 4096 + 4, d=256, 4 layers."""
    cfg = params.load().train
    c = study_config(cfg, causal=False, shift=True)
    assert (c.vocab_size, c.hidden_size, c.n_layers, c.n_heads, c.mlp_hidden) == \
        (cfg.tokenizer_vocab + len(SPECIAL_TOKENS), cfg.arch.hidden_size, cfg.arch.n_layers, cfg.arch.n_heads,
         cfg.arch.mlp_hidden)
    assert c.mask_token_id == SPECIAL_IDS["mask"] and c.bos_token_id == SPECIAL_IDS["bos"]


# ---- the stage --------------------------------------------------------------------------------
def _root(corpus, root: Path) -> Path:
    """A repository root holding the synthetic corpus as data/raw's train/validation splits."""
    for split, src in zip(("train", "validation"), corpus):
        dst = paths.corpus_file(split, root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    return root


def test_stage_is_deterministic_and_loadable(corpus, tmp_path):
    cfg = _cfg()
    r1 = train.train_models(cfg, root=_root(corpus, tmp_path / "a"))
    r2 = train.train_models(cfg, root=_root(corpus, tmp_path / "b"))
    assert set(r1.metrics) == {"tiny-ar", "tiny-dlm"}  # no GGUF under this root: no smollm2-135m
    for key in ("tiny-ar", "tiny-dlm"):
        d1, d2 = paths.model_dir(key, root=tmp_path / "a"), paths.model_dir(key, root=tmp_path / "b")
        w1, w2 = load_file(d1 / "model.safetensors"), load_file(d2 / "model.safetensors")
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
        assert (d1 / "config.json").read_bytes() == (d2 / "config.json").read_bytes()
        # metrics files: byte-identical across runs, no clock values; clocks go to timing/
        m1 = paths.train_metrics(key, tmp_path / "a")
        assert m1.read_bytes() == paths.train_metrics(key, tmp_path / "b").read_bytes()
        written = json.loads(m1.read_text())
        assert not set(written) & set(train.TIMING_KEYS)
        assert set(r1.timing[key]) == {"train_time_s", "step_time_s", "train_cpu_s", "tokenizer_time_s"}
        assert json.loads(paths.train_timing(key, tmp_path / "a").read_text()) == r1.timing[key]
        assert not (d1 / "timing.json").exists()
        model, tok, adapter = load(d1)
        assert adapter.key == key and tok is not None and tok.mask_token_id == 3
        assert model.config.vocab_size == study_config(cfg, causal=key == "tiny-ar",
                                                       shift=key == "tiny-dlm").vocab_size
        mt = r1.metrics[key]
        assert written == {**train.split_timing(mt)[0], "provenance": written["provenance"]}
        assert len(mt["loss"]) == 12 and all(math.isfinite(x) for x in mt["loss"])
        assert mt["ppl"] > 1 and mt["unigram_ppl"] > 1 and len(mt["samples"]) == 2
        json.dumps(mt, allow_nan=False)
    assert paths.train_curves(tmp_path / "a").read_bytes() == paths.train_curves(tmp_path / "b").read_bytes()
    rows = list(csv.DictReader(io.StringIO(paths.train_curves(tmp_path / "a").read_text())))
    assert [(r["model"], int(r["step"])) for r in rows] == \
        [(k, s) for k in ("tiny-ar", "tiny-dlm") for s in range(1, 13)]
    assert float(rows[-1]["loss"]) == pytest.approx(r1.metrics["tiny-dlm"]["loss"][-1], rel=1e-5)
    assert r1.metrics["tiny-dlm"]["ppl_kind"] == "elbo" and r1.metrics["tiny-ar"]["ppl_kind"] == "causal"
    assert list(r1.table.index) == ["tiny-ar", "tiny-dlm"] and len(r1.samples) == 4
    assert r1.metrics["tiny-dlm"]["samples"] == r2.metrics["tiny-dlm"]["samples"]
    # the interpretation quotes this run's numbers
    for key in ("tiny-ar", "tiny-dlm"):
        assert f"{r1.metrics[key]['ppl']:.1f}" in r1.interpretation
        assert f"{r1.metrics[key]['ppl_over_unigram']:.2f}x unigram" in r1.interpretation
    assert f"{r1.metrics['tiny-ar']['unigram_ppl']:.1f}" in r1.interpretation


def test_interpretation_reads_the_bar_from_the_numbers():
    base = {"unigram_ppl": 1000.0, "eval_windows": 128, "seq_len": 128, "loss": [5.0] * 12, "samples": [],
            "distinct_2": 0.0, "eval_mc_num": 8}
    good = train.interpretation({"tiny-ar": {**base, "ppl": 112.0, "ppl_over_unigram": 0.112},
                                 "tiny-dlm": {**base, "ppl": 276.0, "ppl_over_unigram": 0.276}})
    bad = train.interpretation({"tiny-ar": {**base, "ppl": 112.0, "ppl_over_unigram": 0.112},
                                "tiny-dlm": {**base, "ppl": 944.0, "ppl_over_unigram": 0.944}})
    assert "276.0" in good and "0.28x unigram, so it meets" in good
    assert "944.0" in bad and "0.94x unigram, so it misses" in bad
    assert "tiny-dlm / tiny-ar perplexity: 2.46" in good
