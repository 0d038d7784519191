"""Evaluation: offline lm-eval task configs, the srclib-dlm LM, the evaluate stage, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM

from srclib import likelihood, params, paths
from srclib.evaluation import common, harness, perplexity
from srclib.evaluation import tasks as T
from srclib.evaluation.lm import DiffusionLM
from srclib.params import EvaluateParams, ModelEntry, PplParams, SamplerParams, TaskSettings, as_dict
from srclib.stages import evaluate as stage
from srclib.models import load
from srclib.models.base import write_marker
from srclib.models.tiny import TinyLM, test_config

TASKS = paths.tasks_dir()
CORPUS_VAL = paths.corpus_file("validation")
needs_data = pytest.mark.skipif(not (TASKS / "ai2_arc").is_dir(),
                                reason="data/raw not built (python -m srclib.data build)")

SPECIALS = ["[BOS]", "[EOS]", "[PAD]", "[MASK]"]  # ids 0..3


# ---- fixtures: test-size checkpoints with a real (tiny) tokenizer ---------------------------------
def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = ["The quick brown fox jumps over the lazy dog.", "Question: What is it?\nAnswer: yes",
             "Plants need water and sunlight to grow.", "A. one B. two C. three D. four"] * 4
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", mask_token="[MASK]")


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """{'tiny-dlm': folder, 'tiny-ar': folder}: random-init test-size TinyLMs + tokenizer + marker."""
    root = tmp_path_factory.mktemp("ckpt")
    tok = _tokenizer()
    out = {}
    for key, causal, shift in (("tiny-dlm", False, True), ("tiny-ar", True, False)):
        torch.manual_seed(0)
        cfg = test_config(causal=causal, shift=shift, vocab_size=len(tok), bos_token_id=0,
                          eos_token_id=1, pad_token_id=2, max_position_embeddings=512,
                          mask_token_id=None if causal else 3)
        folder = root / key
        TinyLM(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
        write_marker(folder, key)
        out[key] = folder
    return out


@pytest.fixture(scope="session")
def dlm(ckpts):
    return DiffusionLM(pretrained=str(ckpts["tiny-dlm"]), mc_num=4, batch_size=8, seed=3)


# ---- task configs ----------------------------------------------------------------------------------
@needs_data
def test_arc_config_points_at_local_arrow_and_drops_missing_splits():
    cfg = T.build_task_configs(["arc_easy"], TASKS)
    assert set(cfg) == {"arc_easy"}
    c = cfg["arc_easy"]
    assert c["include"].endswith(os.path.join("tasks", "arc", "arc_easy.yaml"))
    assert Path(c["include"]).is_file()
    assert c["dataset_path"] == "arrow" and c["dataset_name"] is None
    files = c["dataset_kwargs"]["data_files"]
    assert set(files) == {"validation"}
    assert Path(files["validation"]).is_absolute() and Path(files["validation"]).is_file()
    assert files["validation"].endswith("ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow")
    assert c["test_split"] is None and c["training_split"] is None  # not shipped
    assert "doc_to_text" not in c and "metric_list" not in c  # prompts/metrics stay lm-eval's


@needs_data
def test_gsm8k_reads_jsonl_and_takes_fewshot_from_test():
    c = T.build_task_configs(["gsm8k"], TASKS)["gsm8k"]
    assert c["dataset_path"] == "json"
    assert c["dataset_kwargs"]["data_files"]["test"].endswith("gsm8k/main/test.jsonl")
    assert c["fewshot_split"] == "test" and c["training_split"] is None


@needs_data
def test_mmlu_group_expands_to_57_subjects_and_4_subgroups():
    cfg = T.build_task_configs(["mmlu"], TASKS, overrides={"mmlu": {"num_fewshot": 5}})
    leaves = [k for k, v in cfg.items() if "task" in v]
    assert len(leaves) == 57
    assert {"mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences"} <= set(cfg)
    a = cfg["mmlu_abstract_algebra"]
    assert set(a["dataset_kwargs"]["data_files"]) == {"dev", "test"}
    assert a["dataset_kwargs"]["data_files"]["test"].endswith(
        "hails/mmlu_no_train/abstract_algebra/test/data-00000-of-00001.arrow")
    assert all(cfg[k]["num_fewshot"] == 5 for k in leaves)  # group override reaches every task


def test_hub_mode_only_includes_builtin_yaml():
    cfg = T.build_task_configs(["piqa"], None, overrides={"piqa": {"num_fewshot": 2}})
    assert set(cfg["piqa"]) == {"include", "task", "num_fewshot"}


def test_unknown_task_and_bad_overrides(monkeypatch):
    small = T._task_index()
    monkeypatch.setattr(T, "_task_index", lambda full=False: small)  # skip the ~20 s full index
    with pytest.raises(KeyError, match="no_such_task"):
        T.build_task_configs(["no_such_task"], None)
    with pytest.raises(KeyError, match="overrides"):
        T.build_task_configs(["piqa"], None, overrides={"sciq": {"num_fewshot": 1}})


def test_missing_data_names_task_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"arc_easy.*ai2_arc/ARC-Easy"):
        T.build_task_configs(["arc_easy"], tmp_path)
    (tmp_path / "ai2_arc" / "ARC-Easy" / "validation").mkdir(parents=True)  # folder, no files
    with pytest.raises(FileNotFoundError, match="arc_easy"):
        T.build_task_configs(["arc_easy"], tmp_path)
    with pytest.raises(FileNotFoundError, match="data_root"):
        T.build_task_configs(["arc_easy"], tmp_path / "nope")


def _task(limit, mc_num=1, cfg=0.0, num_fewshot=0) -> TaskSettings:
    return TaskSettings(num_fewshot=num_fewshot, cfg=cfg, mc_num=mc_num, limit=limit)


def test_task_settings_are_recorded_with_the_estimator_group():
    rec = harness.task_record(TaskSettings(num_fewshot=0, cfg=0.5, mc_num=4, limit=200))
    assert rec == {"num_fewshot": 0, "cfg": 0.5, "mc_num": 4, "limit": 200, "mc_batch": None}
    with pytest.raises(ValueError, match="no tasks"):
        harness.evaluate_lm(_Random(), {})


# ---- oracle / random stubs on a real task ----------------------------------------------------------
class _Stub(LM):
    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


class _Oracle(_Stub):
    """High log-likelihood for the gold choice, read from the document (ARC's answerKey)."""

    def loglikelihood(self, requests):
        gold = lambda d: d["choices"]["label"].index(d["answerKey"])  # noqa: E731
        return [(0.0 if r.idx == gold(r.doc) else -10.0, False) for r in requests]


class _Random(_Stub):
    def __init__(self):
        super().__init__()
        self.rng = random.Random(0)

    def loglikelihood(self, requests):
        return [(self.rng.random(), False) for _ in requests]


@needs_data
def test_oracle_scores_1_and_random_scores_chance_on_arc_easy():
    res = harness.evaluate_lm(_Oracle(), {"arc_easy": _task(20)}, data_root=TASKS)
    r = res["arc_easy"]
    assert r["metrics"]["acc"] == 1.0 and r["metrics"]["acc_norm"] == 1.0
    assert r["n_samples"] == 20 and r["eval_split"] == "validation"
    res = harness.evaluate_lm(_Random(), {"arc_easy": _task(300)}, data_root=TASKS)
    acc = res["arc_easy"]["metrics"]["acc"]  # 4 choices (a few items have 3 or 5): chance ~0.25
    assert 0.17 < acc < 0.34
    assert res["arc_easy"]["stderr"]["acc"] == pytest.approx((acc * (1 - acc) / 299) ** 0.5, rel=1e-6)


# ---- the srclib-dlm LM --------------------------------------------------------------------------------
def _ll_instance(ctx: str, cont: str, idx: int = 0) -> Instance:
    return Instance("loglikelihood", doc={}, arguments=(ctx, cont), idx=idx)


def test_dlm_loglikelihood_is_the_estimator_with_bos_and_keep_first(dlm):
    ctx, cont = "Question: What is it?\nAnswer:", " yes"
    (ll, greedy), = dlm.loglikelihood([_ll_instance(ctx, cont)])
    tok = dlm.tokenizer
    whole = [0] + tok(ctx + cont, add_special_tokens=False)["input_ids"]
    c = [0] + tok(ctx, add_special_tokens=False)["input_ids"]
    t = whole[len(c):]
    want = likelihood.elbo_loglikelihood(
        likelihood.model_logits_fn(dlm.model, dlm.adapter), c, t, mask_id=3, mc_num=4,
        batch_size=4, generator=common.request_generator(3, c, t), keep_first=True)
    assert greedy is False
    assert ll == pytest.approx(want, abs=1e-4)


def test_dlm_results_do_not_depend_on_batching_or_company(dlm):
    reqs = [_ll_instance("The quick brown", " fox"), _ll_instance("Plants need", " water and sun"),
            _ll_instance("A. one B.", " two")]
    together = [x for x, _ in dlm.loglikelihood(reqs)]
    alone = [dlm.loglikelihood([r])[0][0] for r in reqs]
    assert together == pytest.approx(alone, abs=1e-4)
    again = [x for x, _ in dlm.loglikelihood(reqs[::-1])][::-1]
    assert together == pytest.approx(again, abs=1e-4)


def test_dlm_configure_and_construction_errors(dlm, ckpts):
    with pytest.raises(ValueError, match=r"mc_num \(6\).*batch_size \(4\)"):
        dlm.configure(mc_num=6, mc_batch=4)
    with pytest.raises(ValueError, match="cfg"):
        dlm.configure(cfg=-0.5)
    with pytest.raises(ValueError, match="causal"):
        DiffusionLM(pretrained=str(ckpts["tiny-ar"]))
    with pytest.raises(TypeError, match="bogus"):
        DiffusionLM(pretrained=str(ckpts["tiny-dlm"]), bogus=1)
    with pytest.raises(ValueError, match=r"mc_num \(5\).*batch_size \(2\)"):
        DiffusionLM.create_from_arg_string(f"pretrained={ckpts['tiny-dlm']},mc_num=5,mc_batch=2")


def test_model_args_win_over_cli_batch_size(ckpts):
    lm = DiffusionLM.create_from_arg_string(
        f"pretrained={ckpts['tiny-dlm']},mc_num=2,batch_size=6", {"batch_size": 1, "device": None})
    assert lm.batch_size == 6 and lm.mc_num == 2 and lm.mc_batch == 2


def test_cfg_changes_scores(dlm):
    req = [_ll_instance("The quick brown", " fox")]
    dlm.configure(cfg=0.0)
    a = dlm.loglikelihood(req)[0][0]
    dlm.configure(cfg=0.5)
    b = dlm.loglikelihood(req)[0][0]
    dlm.configure(cfg=0.0)
    assert a != pytest.approx(b, abs=1e-6)


def test_loglikelihood_rolling_is_elbo_of_string_given_bos(dlm):
    s = "Plants need water and sunlight to grow."
    (roll,) = dlm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (s,), 0)])
    toks = dlm.tok_encode(s, add_special_tokens=False)
    want = dlm.score([([0], toks)])[0]
    assert roll == pytest.approx(want, abs=1e-6)


def test_loglikelihood_rolling_splits_long_strings(ckpts):
    lm = DiffusionLM(pretrained=str(ckpts["tiny-dlm"]), mc_num=2, max_length=9)
    s = "The quick brown fox jumps over the lazy dog. Plants need water."
    toks = lm.tok_encode(s, add_special_tokens=False)
    assert len(toks) > 8
    (roll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (s,), 0)])
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    pairs = [make_disjoint_window(w) for w in get_rolling_token_windows(toks, 0, 8, 1)]
    assert len(pairs) > 1 and sum(len(t) for _, t in pairs) == len(toks)
    assert roll == pytest.approx(sum(lm.score([(list(c), list(t)) for c, t in pairs])), abs=1e-6)


def test_long_requests_keep_bos_and_the_end_of_the_context(ckpts):
    lm = DiffusionLM(pretrained=str(ckpts["tiny-dlm"]), mc_num=2, max_length=6)
    c, t = [0, 10, 11, 12, 13, 14, 15], [20, 21]
    assert lm._fit(c, t) == ([0, 13, 14, 15], t)  # 4 + 2 = max_length
    assert lm.score([(c, t)]) == pytest.approx(lm.score([([0, 13, 14, 15], t)]), abs=1e-6)
    with pytest.raises(ValueError, match="max_length"):
        lm._fit(c, list(range(20, 27)))


def test_generate_until_cuts_at_eos_and_first_stop_string(dlm):
    tok = dlm.tokenizer
    text_ids = tok("yes Answer: no\nQuestion: x", add_special_tokens=False)["input_ids"]

    def fake_generate(model, prompt_ids, *, gen_length, **kw):
        B, P = prompt_ids.shape
        gen = torch.tensor(text_ids + [1] + text_ids)[:gen_length]  # EOS (1) in the middle
        return torch.cat([prompt_ids, gen.expand(B, -1)], dim=1)

    dlm._generate_fn = fake_generate
    saved = dlm.sampler
    try:
        dlm.sampler = dataclasses.replace(saved, steps=4, gen_length=64, block_length=32)
        reqs = [Instance("generate_until", {}, ("Q", {"until": ["Question:", "\n"]}), 0),
                Instance("generate_until", {}, ("Q", {"until": ["zzz"]}), 1),
                Instance("generate_until", {}, ("Q", {"until": "no"}), 2)]
        out = dlm.generate_until(reqs)
    finally:
        dlm._generate_fn = None
        dlm.sampler = saved
    assert out == ["yes Answer: no", "yes Answer: no\nQuestion: x", "yes Answer: "]


def _expected_generation(lm, contexts, until, sampler):
    """The texts srclib.diffusion.generate gives for prompts of equal length (one batch, the
    LM's per-batch generator), cut at EOS and the first stop string, computed here independently."""
    from srclib.diffusion import generate

    tok = lm.tokenizer
    prompts = [[0] + tok(c, add_special_tokens=False)["input_ids"] for c in contexts]  # BOS first
    x = generate(lm.model, torch.tensor(prompts), **sampler.sampler_kwargs(), mask_id=3,
                 adapter=lm.adapter, generator=common.request_generator(lm.seed, *prompts))
    out = []
    for row, p in zip(x.tolist(), prompts):
        gen = row[len(p):]
        assert len(gen) == sampler.gen_length
        gen = gen[: gen.index(1)] if 1 in gen else gen  # EOS id 1
        text = tok.decode(gen)
        for stop in until:
            text = text.split(stop)[0]
        for special in SPECIALS:
            text = text.replace(special, "")
        out.append(text)
    return out


def test_generate_until_with_the_real_sampler_is_deterministic(ckpts):
    lm = DiffusionLM(pretrained=str(ckpts["tiny-dlm"]), steps=4, gen_length=8, block_length=4,
                     batch_size=4)
    reqs = [Instance("generate_until", {}, ("The quick", {"until": ["\n\n"]}), i) for i in range(2)]
    reqs.append(Instance("generate_until", {}, ("Plants need water", {"until": ["."]}), 2))
    a, b = lm.generate_until(reqs), lm.generate_until(reqs)
    assert a == b and a[0] == a[1]
    assert all(a), f"empty generation: {a}"
    sampler = SamplerParams(gen_length=8, steps=4, block_length=4, temperature=0.0, cfg_scale=0.0,
                            remasking="low_confidence")
    assert a[:2] == _expected_generation(lm, ["The quick"] * 2, ["\n\n"], sampler)
    assert a[2:] == _expected_generation(lm, ["Plants need water"], ["."], sampler)
    assert "[MASK]" not in "".join(a) and "." not in a[2]


def test_make_lm_picks_by_adapter_causal(ckpts):
    from lm_eval.models.huggingface import HFLM

    assert set(harness.LM_FACTORIES) == {False, True}
    m, t, a = load(str(ckpts["tiny-ar"]))
    assert isinstance(harness.make_lm(m, t, a, batch_size=2), HFLM)
    m, t, a = load(str(ckpts["tiny-dlm"]))
    assert isinstance(harness.make_lm(m, t, a, batch_size=2), DiffusionLM)


# ---- held-out perplexity -------------------------------------------------------------------------------
def test_heldout_windows_known_answer(ckpts):
    _, tok, _ = load(str(ckpts["tiny-dlm"]))
    texts = ["The quick brown fox", "Plants need water"]
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in texts]
    stream = ids[0] + [1] + ids[1] + [1]
    w = perplexity.heldout_windows(texts, tok, seq_len=4, n_windows=2)
    assert w.tolist() == [[0] + stream[0:3], [0] + stream[3:6]]
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity.heldout_windows(["x"], tok, seq_len=64, n_windows=1)


def test_heldout_perplexity_exact_for_ar_and_elbo_for_dlm(ckpts):
    texts = ["The quick brown fox jumps over the lazy dog."] * 6
    s = PplParams(n_windows=3, mc_num=2, seq_len=12)
    m, t, a = load(str(ckpts["tiny-ar"]))
    r = perplexity.heldout_perplexity(m, t, a, texts, s)
    w = perplexity.heldout_windows(texts, t, 12, 3)
    assert r["kind"] == "exact" and r["n_tokens"] == 3 * 11 and r["mc_num"] is None
    assert r["ppl"] == pytest.approx(
        likelihood.causal_perplexity(likelihood.model_logits_fn(m, a), w), rel=1e-9)
    m, t, a = load(str(ckpts["tiny-dlm"]))
    r = perplexity.heldout_perplexity(m, t, a, texts, s)
    assert r["kind"] == "elbo" and r["n_tokens"] == 3 * 11 and r["ppl"] > 1
    assert r == perplexity.heldout_perplexity(m, t, a, texts, s)  # seeded


# ---- the stage -----------------------------------------------------------------------------------------
CPU = ModelEntry(dtype="float32", device="cpu")
SMALL_SAMPLER = SamplerParams(gen_length=8, steps=4, block_length=4, temperature=0.0, cfg_scale=0.0,
                              remasking="low_confidence")


def _walk_keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk_keys(v)


def _params(tasks, ppl, sampler=None):
    """evaluate params; ``sampler`` the study's (params.yaml) unless given."""
    sampler = params.load().evaluate.sampler if sampler is None else sampler
    return EvaluateParams(batch_size=8, seed=0, dense=["tiny-dlm"], ppl=ppl, sampler=sampler, tasks=tasks)


def _root(tmp_path, with_tasks=False):
    """A repository root for the stage: the validation corpus written, the task data linked."""
    root = tmp_path / "repo"
    corpus = paths.corpus_file("validation", root)
    corpus.parent.mkdir(parents=True)
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                              ["The quick brown fox jumps over the lazy dog."] * 8))
    if with_tasks:
        paths.tasks_dir(root).symlink_to(TASKS, target_is_directory=True)
    return root


def _check_provenance(m, cfg, root):
    prov = m["provenance"]
    assert set(prov["versions"]) >= {"torch", "transformers", "lm_eval", "srclib"}
    assert list(prov["checkpoint"]["sha256"]) == ["model.safetensors"]
    # by params.yaml section: the evaluate settings an evaluation reads (not evaluate.dense) and the
    # model's entry; a pruned folder also the spec its marker names (srclib.report.freshness)
    evaluated = {k: v for k, v in json.loads(json.dumps(as_dict(cfg))).items() if k != "dense"}
    assert prov["params"]["evaluate"] == evaluated
    assert [k for k in prov["params"] if k.startswith("models.")] == [f"models.{m['model']['key']}"]
    assert prov["corpus_validation_file"] == "data/raw/corpus/validation.jsonl"
    assert prov["data_root"] == paths.rel(paths.tasks_dir(root), root)
    assert prov["settings"]["batch_size"] == 8 and prov["settings"]["seed"] == 0
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    assert not [k for k in _walk_keys(m) if "time" in k or "date" in k]


@pytest.mark.parametrize("key", ["tiny-dlm", "tiny-ar"])
def test_run_evaluate_ppl_only_is_byte_identical(ckpts, tmp_path, key, monkeypatch):
    monkeypatch.setattr(stage, "git_commit", lambda root: "0" * 40)  # other commits may land meanwhile
    root = _root(tmp_path)
    cfg = _params({}, PplParams(n_windows=3, mc_num=2, seq_len=12))
    r = stage.evaluate_source(cfg, "t", ckpts[key], CPU, root=root)
    a = paths.eval_metrics("t", root).read_bytes()
    stage.evaluate_source(cfg, "t", ckpts[key], CPU, root=root)
    assert paths.eval_metrics("t", root).read_bytes() == a
    m = json.loads(a)
    assert m == json.loads(json.dumps(r.metrics))
    assert m["ppl"]["kind"] == ("exact" if key == "tiny-ar" else "elbo")
    assert m["ppl"]["n_tokens"] == 33 and m["tasks"] == {}
    assert m["model"]["lm"] == ("hf" if key == "tiny-ar" else "srclib-dlm")
    assert m["provenance"]["settings"]["gen"] == {  # the sampler of generation tasks, less cfg_scale
        "steps": 128, "gen_length": 128, "block_length": 32, "temperature": 0.0,
        "remasking": "low_confidence"}
    assert m["provenance"]["settings"]["ppl"] == {"n_windows": 3, "mc_num": 2, "seq_len": 12}
    _check_provenance(m, cfg, root)
    assert list(r.table["task"]) == ["heldout"]
    assert f"{m['ppl']['ppl']:.2f}" in r.interpretation and "**t**" in r.interpretation
    # unit-level values beside the metrics: one NLL per window, consistent with the scalar
    u = json.loads(paths.eval_units("t", root).read_text())
    assert "window_nll_per_token" not in m["ppl"]
    per, tok = u["ppl"]["window_nll_per_token"], u["ppl"]["window_tokens"]
    assert len(per) == 3 and sum(tok) == 33 and u["ppl"]["kind"] == m["ppl"]["kind"]
    assert sum(x * k for x, k in zip(per, tok)) / sum(tok) == pytest.approx(m["ppl"]["nll_per_token"], rel=1e-12)
    assert u["provenance"]["params"] == m["provenance"]["params"]


def test_evaluate_refuses_a_non_finite_perplexity_naming_the_checkpoint():
    ppl = {"kind": "elbo", "ppl": float("nan"), "window_nll_per_token": [1.0, float("nan")], "window_tokens": [3, 3]}
    with pytest.raises(ValueError, match=r"pruned/x.*not finite in window\(s\) \[1\]"):
        stage.split_units("x", {}, ppl, "pruned/x")


def test_item_values_orders_by_doc_and_checks_duplicates():
    samples = [{"doc_id": 2, "filter": "none", "acc": 1.0, "acc_norm": 0.0},
               {"doc_id": 0, "filter": "none", "acc": 0.0, "acc_norm": 1.0}]
    assert harness.item_values(samples, ["acc", "acc_norm"]) == {"doc_id": [0, 2], "acc": [0.0, 1.0],
                                                                "acc_norm": [1.0, 0.0]}
    with pytest.raises(ValueError, match="twice"):
        harness.item_values(samples + samples[:1], ["acc"])


@needs_data
def test_run_evaluate_dlm_on_local_tasks(ckpts, tmp_path, monkeypatch):
    root = _root(tmp_path, with_tasks=True)
    cfg = _params({"arc_easy": _task(2, mc_num=2, cfg=0.5), "gsm8k": _task(1)}, None, SMALL_SAMPLER)
    r = stage.evaluate_source(cfg, "t", ckpts["tiny-dlm"], CPU, root=root)
    m = json.loads(paths.eval_metrics("t", root).read_text())
    assert set(m["tasks"]) == {"arc_easy", "gsm8k"} and m["ppl"] is None
    a = m["tasks"]["arc_easy"]
    assert 0 <= a["metrics"]["acc"] <= 1 and a["n_samples"] == 2 and a["eval_split"] == "validation"
    assert a["settings"] == {"num_fewshot": 0, "cfg": 0.5, "mc_num": 2, "limit": 2, "mc_batch": None}
    assert "exact_match,strict-match" in m["tasks"]["gsm8k"]["metrics"]
    assert m["tasks"]["gsm8k"]["fewshot_split"] == "test"
    assert m["provenance"]["task_versions"] == {"arc_easy": 1.0, "gsm8k": 3.0}
    assert m["provenance"]["settings"]["gen"]["gen_length"] == 8
    _check_provenance(m, cfg, root)
    assert {"task", "metric", "value", "stderr"} <= set(r.table.columns) and len(r.table) == 4
    acc, err = a["metrics"]["acc"], a["stderr"]["acc"]
    assert f"arc_easy (n=2, 0-shot, split validation): acc {acc:.3f} ± {err:.3f}" in r.interpretation
    # per item correct or not, in doc order, and its mean is lm-eval's accuracy
    items = json.loads(paths.eval_units("t", root).read_text())["tasks"]["arc_easy"]
    assert items["doc_id"] == [0, 1] and "items" not in a and items["chance"] == 0.25
    assert sum(items["acc"]) / 2 == pytest.approx(acc) and set(items["acc"]) <= {0.0, 1.0}
    assert sum(items["acc_norm"]) / 2 == pytest.approx(a["metrics"]["acc_norm"])


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("key", ["tiny-dlm", "tiny-ar"])
def test_run_evaluate_with_tasks_is_byte_identical(ckpts, tmp_path, key, monkeypatch):
    monkeypatch.setattr(stage, "git_commit", lambda root: "0" * 40)  # other commits may land meanwhile
    root = _root(tmp_path, with_tasks=True)
    cfg = _params({"arc_easy": _task(3, mc_num=2, cfg=0.5), "gsm8k": _task(1)},
                  PplParams(n_windows=2, mc_num=2, seq_len=16), SMALL_SAMPLER)
    stage.evaluate_source(cfg, f"t-{key}", ckpts[key], CPU, root=root)
    a = paths.eval_metrics(f"t-{key}", root).read_bytes()
    stage.evaluate_source(cfg, f"t-{key}", ckpts[key], CPU, root=root)
    assert paths.eval_metrics(f"t-{key}", root).read_bytes() == a


def test_ar_generation_without_generate_uses_greedy_kv_decoding(ckpts):
    m, t, a = load(str(ckpts["tiny-ar"]))
    lm = harness.make_lm(m, t, a, batch_size=2)
    reqs = [Instance("generate_until", {}, ("The quick", {"until": ["zzz"], "max_gen_toks": 5}), 0),
            Instance("generate_until", {}, ("Plants need water and", {"until": ["zzz"],
                                                                     "max_gen_toks": 5}), 1)]
    out = lm.generate_until(reqs)
    from srclib.decoding import greedy_decode

    for (ctx, _), text in zip([r.args for r in reqs], out):
        ids = torch.tensor([[0] + t(ctx, add_special_tokens=False)["input_ids"]])
        g = greedy_decode(m, ids, max_new_tokens=5, eos_id=1)[0, ids.shape[1]:].tolist()
        g = g[: g.index(1)] if 1 in g else g
        assert text == t.decode(g, skip_special_tokens=True)


# ---- command line -------------------------------------------------------------------------------------
def _printed_table(stdout: str) -> dict[tuple[str, str], tuple[float, float]]:
    """{(task, metric): (value, stderr)} of the markdown results table lm-eval's CLI prints."""
    rows, task = {}, None
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 9 or cells[0] in ("Tasks", "Groups") or (cells[0] and set(cells[0]) <= {"-", ":"}):
            continue
        task = cells[0] or task
        rows[(task, cells[4])] = (float(cells[6]), float(cells[8]))
    return rows


@needs_data
@pytest.mark.slow
def test_cli_runs_offline_on_a_checkpoint_folder(ckpts, tmp_path):
    """The CLI evaluates the checkpoint it is given with its model_args on the local ARC-Easy data:
    the table it prints is the results file it writes, the first 2 validation items were scored,
    and every per-choice log-likelihood is the one DiffusionLM gives in-process for the same
    request (mc_num=2, the default seed), so its accuracies are the ones these imply."""
    import datasets

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(paths.ROOT)}
    cmd = [sys.executable, "-m", "srclib.evaluation", "--data_root", str(TASKS),
           "--model", "srclib-dlm", "--model_args", f"pretrained={ckpts['tiny-dlm']},mc_num=2",
           "--tasks", "arc_easy", "--limit", "2", "--device", "cpu", "--batch_size", "4",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    [samples_file] = (tmp_path / "out").rglob("samples_arc_easy_*.jsonl")
    res = json.loads(results_file.read_text())
    r = res["results"]["arc_easy"]
    assert res["n-samples"]["arc_easy"]["effective"] == 2 and r["sample_len"] == 2
    assert res["config"]["model"] == "srclib-dlm" and res["config"]["model_args"]["mc_num"] == 2
    # the printed table holds the results file's numbers (4 decimals), and nothing else
    printed = _printed_table(proc.stdout)
    assert set(printed) == {("arc_easy", "acc"), ("arc_easy", "acc_norm")}, proc.stdout
    for metric in ("acc", "acc_norm"):
        value, stderr = printed[("arc_easy", metric)]
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(r[f"{metric},none"], abs=5e-5), proc.stdout
        assert stderr == pytest.approx(r[f"{metric}_stderr,none"], abs=5e-5), proc.stdout
    # the items scored are the local validation split's first two, in order
    [arrow] = (TASKS / "ai2_arc" / "ARC-Easy" / "validation").glob("*.arrow")
    local = datasets.Dataset.from_file(str(arrow))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == [0, 1]
    assert [s["doc"]["id"] for s in samples] == local["id"][:2]
    # every choice's log-likelihood is DiffusionLM's for that request, computed here in-process
    lm = DiffusionLM(pretrained=str(ckpts["tiny-dlm"]), mc_num=2, batch_size=4)
    acc, acc_norm = [], []
    for s in samples:
        args = [s["arguments"][f"gen_args_{k}"] for k in range(len(s["arguments"]))]
        assert [a["arg_1"] for a in args] == [" " + c for c in s["doc"]["choices"]["text"]]
        cli = [float(resp[0]) for resp in s["filtered_resps"]]
        here = [ll for ll, _ in lm.loglikelihood([_ll_instance(a["arg_0"], a["arg_1"], k) for k, a in enumerate(args)])]
        assert cli == pytest.approx(here, rel=1e-5, abs=1e-4), s["doc_id"]
        target = int(s["target"])
        lengths = [len(c) for c in s["doc"]["choices"]["text"]]
        acc.append(float(max(range(len(here)), key=here.__getitem__) == target))
        acc_norm.append(float(max(range(len(here)), key=lambda k: here[k] / lengths[k]) == target))
        assert (s["acc"], s["acc_norm"]) == (acc[-1], acc_norm[-1]), s["doc_id"]
    assert r["acc,none"] == pytest.approx(sum(acc) / 2) and r["acc_norm,none"] == pytest.approx(sum(acc_norm) / 2)


def test_run_evaluate_loads_with_the_params_dtype_and_device(tmp_path, monkeypatch):
    """The evaluate stage hands params.yaml's models: entry (dtype, device) to srclib.models.load."""
    import srclib.models

    class Loaded(Exception):
        pass

    seen = {}

    def spy(source, **overrides):
        seen.update(source=source, **overrides)
        raise Loaded

    monkeypatch.setattr(srclib.models, "load", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Loaded):
        stage.evaluate_source(_params({}, None), "t", "pruned/x", ModelEntry(dtype="bfloat16", device="auto"),
                              root=tmp_path)
    assert seen == {"source": "pruned/x", "dtype": "bfloat16", "device": "cpu"}
    assert not paths.eval_metrics("t", tmp_path).exists()
