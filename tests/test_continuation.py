"""The continuation task: item construction (srclib.data.continuation), its file in data/raw, its
lm-eval config (srclib.evaluation.tasks) and a run through the harness on a test-size model."""

from __future__ import annotations

import hashlib
import random

import pytest
from lm_eval.api.model import LM

from srclib import paths
from srclib.data import continuation as C
from srclib.data import corpus
from srclib.evaluation import harness
from srclib.evaluation import tasks as T
from srclib.files import read_json
from srclib.params import TaskSettings
from helpers import write_tiny_checkpoint

TASKS = paths.tasks_dir()
FILE = TASKS / "continuation" / "validation.jsonl"
needs_data = pytest.mark.skipif(not FILE.is_file(),
                                reason="data/raw (with the continuation task) not built: make data")
W = C.CONTEXT_WORDS + C.ANSWER_WORDS


def _passage(i: int, n: int) -> dict:
    return {"source": "ab"[i % 2], "text": " ".join(f"p{i}w{j}" for j in range(n))}


# windows of W = 44 words: 1, 1, 2, 0 (too short), 4 (5 fit: capped), 4 (6 fit), 4, 4 -> 20 items
LENGTHS = [52, 70, 110, 30, 260, 300, 250, 240]
CW, AW = C.CONTEXT_WORDS, C.ANSWER_WORDS
PASSAGES = [_passage(i, n) for i, n in enumerate(LENGTHS)]


def _words(text: str, start: int, n: int) -> str:
    return " ".join(text.split()[start:start + n])


def _sha(*parts) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


# ---- item construction ---------------------------------------------------------------------------
def test_items_on_hand_made_passages():
    items = C.build_items(PASSAGES)
    assert len(items) == 1 + 1 + 2 + 0 + 4 + 4 + 4 + 4
    assert [it["id"] for it in items] == list(range(len(items)))
    by_text = {p["text"]: p for p in PASSAGES}
    seen = set()
    for it in items:
        assert set(it) == set(C.FIELDS)
        assert 0 <= it["label"] < C.N_CHOICES == len(it["choices"]) == len(set(it["choices"]))
        # the passage of the item: the one whose words at the offset are the context
        (text,) = [t for t in by_text if _words(t, it["offset"], C.CONTEXT_WORDS) == it["context"]]
        o = it["offset"]
        assert o % W == 0 and o // W < C.MAX_WINDOWS and len(text.split()) >= o + W
        assert it["source"] == by_text[text]["source"]
        assert it["context"].split() == text.split()[o:o + CW]
        assert it["choices"][it["label"]] == _words(text, o + CW, AW)
        pid = text.split()[0].split("w")[0]  # "p<i>"
        for k, span in enumerate(it["choices"]):
            if k == it["label"]:
                continue
            words = span.split()
            assert len(words) == AW and words[0].split("w")[0] != pid  # another passage
            other = next(t for t in by_text if t.startswith(words[0].split("w")[0] + "w0 "))
            assert span == _words(other, o + CW, AW)  # its span at the same offset
        seen.add((text, o))
    assert len(seen) == len(items)
    assert {(p["text"], 0) for p in PASSAGES if len(p["text"].split()) >= W} <= seen
    assert max(it["offset"] for it in items) == (C.MAX_WINDOWS - 1) * W  # 300 words: capped at 4
    # known answers, spelled out: passage 0's one item and passage 5's four offsets
    (first,) = [it for it in items if it["context"].startswith("p0w0 ")]
    assert (first["offset"], first["source"]) == (0, "a")
    assert first["context"] == " ".join(f"p0w{j}" for j in range(40))
    assert first["choices"][first["label"]] == "p0w40 p0w41 p0w42 p0w43"
    assert sorted(it["offset"] for it in items if it["context"].startswith("p5w")) == [0, 44, 88, 132]


def test_items_follow_the_stated_hash_rule():
    """An independent re-derivation of label, distractors and order from RULE's sha256 keys."""
    seed = 7
    items = C.build_items(PASSAGES, seed=seed)
    at = {}
    for p in PASSAGES:
        for k in range(min(C.MAX_WINDOWS, len(p["text"].split()) // W)):
            at.setdefault(k * W, []).append(p["text"])
    for it in items:
        o = it["offset"]
        (text,) = [t for t in at[o] if _words(t, o, CW) == it["context"]]
        assert it["label"] == int(_sha(seed, "label", o, text), 16) % 4
        ranked = sorted(at[o], key=lambda t: _sha(seed, "distractor", o, text, t))
        others = [_words(t, o + CW, AW) for t in ranked if t != text][:3]
        assert [c for k, c in enumerate(it["choices"]) if k != it["label"]] == others
    keys = [_sha(seed, "order", it["offset"], next(t for t in at[it["offset"]]
                                                   if _words(t, it["offset"], CW) == it["context"]))
            for it in items]
    assert keys == sorted(keys)


def test_items_are_deterministic_and_ignore_input_order():
    a = C.build_items(PASSAGES)
    shuffled = PASSAGES[:]
    random.Random(1).shuffle(shuffled)
    assert C.build_items(shuffled) == a == C.build_items(PASSAGES, seed=0)
    b = C.build_items(PASSAGES, seed=1)
    assert b != a and len(b) == len(a)


def test_a_span_equal_to_the_answer_is_never_a_distractor():
    p0 = PASSAGES[0]["text"].split()
    twin = [f"q{j}" for j in range(CW)] + p0[CW:W] + ["x"]  # same answer span as passage 0
    passages = PASSAGES + [{"source": "a", "text": " ".join(twin)}]
    for it in C.build_items(passages):
        if it["offset"] == 0 and it["context"].split()[0] in ("p0w0", "q0"):
            answer = it["choices"][it["label"]]
            assert answer == " ".join(p0[CW:W])
            assert it["choices"].count(answer) == 1


def test_too_few_other_passages_and_duplicates_are_refused():
    with pytest.raises(ValueError, match="too few other passages"):
        C.build_items([_passage(i, 60) for i in range(3)])  # 2 others: 3 distractors impossible
    assert len(C.build_items([_passage(i, 60) for i in range(4)])) == 4
    with pytest.raises(ValueError, match="duplicate"):
        C.build_items([_passage(0, 60)] * 5)


# ---- the built file ------------------------------------------------------------------------------
@needs_data
def test_built_file_is_in_the_manifest_and_a_function_of_the_validation_split():
    manifest = read_json(paths.raw_dir() / "MANIFEST.json")
    rel = "tasks/continuation/validation.jsonl"
    assert rel in manifest["files"]
    info = manifest["tasks"][T.CONTINUATION]
    assert info["path"] == "continuation/validation.jsonl" and info["splits"] == ["validation"]
    items = corpus.read_jsonl(FILE)  # checked against the manifest
    assert len(items) == info["examples"] >= 400
    # a pure function of the held-out validation split (disjoint from train and calibration:
    # test_data.py) and the build's seed
    assert items == C.build_items(corpus.read_jsonl(paths.corpus_file("validation")), seed=info["seed"])


# ---- lm-eval config, offline ---------------------------------------------------------------------
def test_chance_levels():
    assert T.CHANCE[T.CONTINUATION] == 0.25 and T.CONTINUATION == "continuation"
    assert T.CHANCE["piqa"] == T.CHANCE["winogrande"] == T.CHANCE["boolq"] == 0.5
    assert {T.CHANCE[t] for t in ("arc_easy", "arc_challenge", "hellaswag", "openbookqa", "sciq",
                                  "mmlu")} == {0.25}


@needs_data
def test_config_points_at_the_local_file():
    cfg = T.build_task_configs([T.CONTINUATION], TASKS, overrides={T.CONTINUATION: {"num_fewshot": 1}})
    c = cfg[T.CONTINUATION]
    assert c["dataset_path"] == "json" and c["output_type"] == "multiple_choice"
    assert c["dataset_kwargs"] == {"data_files": {"validation": str(FILE.resolve())}}
    assert (c["doc_to_text"], c["doc_to_choice"], c["doc_to_target"]) == ("context", "choices", "label")
    assert c["target_delimiter"] == " " and c["num_fewshot"] == 1
    assert [m["metric"] for m in c["metric_list"]] == ["acc", "acc_norm"]


def test_config_needs_local_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="no hub dataset"):
        T.build_task_configs([T.CONTINUATION], None)
    with pytest.raises(FileNotFoundError, match="continuation"):
        T.build_task_configs([T.CONTINUATION], tmp_path)


class _Oracle(LM):
    """Log-likelihood 0 for the true continuation, -10 for the others; records the requests."""

    def __init__(self):
        super().__init__()
        self.requests = []

    def loglikelihood(self, requests):
        self.requests += requests
        return [(0.0 if r.idx == r.doc["label"] else -10.0, False) for r in requests]

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


@needs_data
def test_oracle_scores_1_offline_and_choices_continue_the_context():
    lm = _Oracle()
    res = harness.evaluate_lm(lm, {T.CONTINUATION: TaskSettings(0, 0.0, 4, 8)}, data_root=TASKS)
    r = res[T.CONTINUATION]
    assert r["metrics"] == {"acc": 1.0, "acc_norm": 1.0}
    assert r["n_samples"] == 8 and r["n_docs"] >= 400 and r["eval_split"] == "validation"
    items = corpus.read_jsonl(FILE)
    assert len(lm.requests) == 8 * 4
    for req in lm.requests:
        doc = items[req.doc["id"]]
        assert req.arguments == (doc["context"], " " + doc["choices"][req.idx])


# ---- a test-size model through the harness -------------------------------------------------------
@needs_data
@pytest.mark.parametrize("causal", [True, False], ids=["ar", "dlm"])
def test_test_size_model_scores_the_task(causal, tmp_path):
    from srclib.models import load

    write_tiny_checkpoint(tmp_path, causal)
    model, tokenizer, adapter = load(str(tmp_path))
    lm = harness.make_lm(model, tokenizer, adapter, batch_size=8)
    res = harness.evaluate_lm(lm, {T.CONTINUATION: TaskSettings(0, 0.0, 4, 8)}, data_root=TASKS)
    r = res[T.CONTINUATION]
    assert r["n_samples"] == 8 and r["settings"]["mc_num"] == 4
    assert 0.0 <= r["metrics"]["acc"] <= 1.0 and 0.0 <= r["metrics"]["acc_norm"] <= 1.0
