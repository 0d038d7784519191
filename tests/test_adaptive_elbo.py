"""Sequential MC-ELBO with common random numbers (issue 23 item 2; srclib-dlm ``mc_adaptive``):
the default (off) is today's estimator bit for bit, the choices of an item share their draws,
the stopping rule on hand-made cases, requests grouped into items, argument validation."""

from __future__ import annotations

import math

import pytest
import torch
from lm_eval.api.instance import Instance

from srclib import likelihood
from srclib.evaluation import lm as LM
from srclib.evaluation.common import request_generator
from srclib.evaluation.distributed import Group

MASK = 63  # test_config's [MASK]
PAIRS = [([0, 5, 6, 7], [8, 9]), ([0, 5, 6, 7], [10, 11]), ([0, 5, 6, 7], [12, 13, 14]),
         ([0, 20, 21], [22]), ([0, 20, 21], [30]), ([0, 30, 31, 32, 33], [34, 35, 36, 37])]

# Computed at commit 82b3a50 (before mc_adaptive existed) from a `git archive` copy, on the model
# and requests below, one thread: float.hex of each per-request value.
HEAD = {
    "batch_cfg0.0": ['-0x1.07376e8000000p+3', '-0x1.0234420000000p+3', '-0x1.8daea71000000p+3',
                     '-0x1.0b6a960000000p+2', '-0x1.0a4e500000000p+2', '-0x1.0c11248000000p+4'],
    "batch_cfg0.5": ['-0x1.0775b34000000p+3', '-0x1.0004736000000p+3', '-0x1.91b9cc0000000p+3',
                     '-0x1.0b026a0000000p+2', '-0x1.0a65700000000p+2', '-0x1.0c28238aaaaaap+4'],
    "lm_cfg0": ['-0x1.0a92c20000000p+3', '-0x1.00abef8000000p+3', '-0x1.8b63bd1000000p+3',
                '-0x1.0b6a960000000p+2', '-0x1.0a4e500000000p+2', '-0x1.0be2057aaaaaap+4'],
    "lm_cfg0.5_b4": ['-0x1.0775b34000000p+3', '-0x1.0004736000000p+3', '-0x1.91b9cbf000000p+3',
                     '-0x1.0b026a0000000p+2', '-0x1.0a65700000000p+2', '-0x1.0c28238aaaaaap+4'],
}


def _model():
    from srclib.models.tiny import TinyLM, test_config
    from srclib.models.tiny_adapter import TinyAdapter

    torch.manual_seed(0)
    return TinyLM(test_config(causal=False, shift=True)).eval(), TinyAdapter(key="t-dlm", causal=False, shift=True)


def _tok():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[BOS]": 0, "[EOS]": 1, "[PAD]": 2, "[UNK]": 3, **{f"w{i}": 4 + i for i in range(50)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def built():
    model, ad = _model()
    return model, ad, _tok()


def _dlm(built, **kw):
    model, ad, tok = built
    return LM.DiffusionLM(model=model, tokenizer=tok, adapter=ad, **{"mc_num": 8, "batch_size": 8, **kw})


def _reqs():
    return [((f"ctx{i}", f"c{j}"), c, t) for j, (c, t) in enumerate(PAIRS) for i in [0]]


def _hex(values):
    return [float(v).hex() for v in values]


# ---- default off: today's estimator, bit for bit ----------------------------------------------------
def test_default_off_is_todays_estimator_bit_for_bit(built):
    model, ad, _ = built
    fn = likelihood.model_logits_fn(model, ad)
    for cfg in (0.0, 0.5):
        got = likelihood.elbo_loglikelihood_batch(
            fn, PAIRS, mask_id=MASK, mc_num=8, batch_size=4, cfg=cfg, keep_first=True, pad_id=MASK,
            generator=[request_generator(1234, c, t) for c, t in PAIRS], forward_batch=5)
        assert _hex(got) == HEAD[f"batch_cfg{cfg}"]
    for kw in ({}, {"mc_adaptive": False}, {"mc_adaptive": "false"}):
        lm = _dlm(built, **kw)
        assert lm.mc_adaptive is False and not lm._adaptive_now
        assert _hex(v for v, _ in lm._loglikelihood_tokens(_reqs())) == HEAD["lm_cfg0"]
        lm.configure(cfg=0.5, mc_num=8, mc_batch=4)
        assert _hex(v for v, _ in lm._loglikelihood_tokens(_reqs())) == HEAD["lm_cfg0.5_b4"]


def test_single_choice_items_keep_the_full_estimator_under_mc_adaptive(built):
    """Items of one distinct pair (nothing to rank) are scored as with mc_adaptive off."""
    lm = _dlm(built, mc_adaptive=True, mc_group=2, mc_min=2)
    vals, rows = lm.score_items([p for p in PAIRS], [[i] for i in range(len(PAIRS))])
    assert _hex(vals) == HEAD["lm_cfg0"] and rows == [8] * len(PAIRS)
    # identical pairs of one item: one distinct pair, the full estimator too
    vals, rows = lm.score_items([PAIRS[0], PAIRS[0]], [[0, 1]])
    assert _hex(vals) == HEAD["lm_cfg0"][:1] * 2 and rows == [8, 8]


# ---- common random numbers --------------------------------------------------------------------------
def test_crn_group_shares_t_and_masks_across_choices():
    g = torch.Generator().manual_seed(3)
    item = [([0, 5], [8, 9, 10]), ([0, 5], [11, 12, 13]), ([0, 5], [14, 15, 16, 17, 18])]
    plans = likelihood.crn_group(item, 4, True, g)
    a, b, c = plans
    assert torch.equal(a.masked, b.masked) and torch.equal(a.weight, b.weight)  # same length: same rows
    # the draws: one float64 u, then (b, L_max) keys; k_i = floor(u * L_i) + 1 for every choice
    g = torch.Generator().manual_seed(3)
    u = float(torch.rand((), dtype=torch.float64, generator=g))
    keys = torch.rand(4, 5, generator=g)
    for pl, L in ((a, 3), (c, 5)):
        k = min(int(u * L), L - 1) + 1
        counts = likelihood.mask_counts(k, L, 4)
        assert torch.equal(pl.masked.sum(1), counts)
        assert torch.equal(pl.weight, L / counts.to(torch.float64))
        # the masked positions: the l_j smallest of the first L keys of row j
        for j in range(4):
            want = set(keys[j, :L].argsort()[: int(counts[j])].tolist())
            assert set(pl.masked[j].nonzero().flatten().tolist()) == want
    assert a.prefix_len == 2 and a.ids.tolist() == [0, 5, 8, 9, 10]


def test_the_rows_actually_run_share_their_draws(built, monkeypatch):
    """Through DiffusionLM: every forward group gives the choices of an item (same continuation
    length) the same masked positions and weights; the other item gets other draws."""
    seen = []
    original = likelihood._run_plans

    def spy(logits_fn, plans, **kw):
        seen.append([(p.ids.tolist(), p.masked.clone(), p.weight.clone()) for p in plans])
        return original(logits_fn, plans, **kw)

    monkeypatch.setattr(likelihood, "_run_plans", spy)
    lm = _dlm(built, mc_adaptive=True, mc_group=2, mc_min=8, mc_num=8)
    pairs = [PAIRS[0], PAIRS[1], PAIRS[3], PAIRS[4]]
    vals, rows = lm.score_items(pairs, [[0, 1], [2, 3]])
    assert rows == [8] * 4 and len(seen) == 4  # mc_min = mc_num: 4 groups of 2 rows
    for call in seen:
        by_prefix = {}
        for ids, masked, w in call:
            by_prefix.setdefault(tuple(ids[:-2] if len(ids) == 6 else ids[:-1]), []).append((masked, w))
        for group in by_prefix.values():
            assert len(group) == 2
            assert torch.equal(group[0][0], group[1][0]) and torch.equal(group[0][1], group[1][1])
    # the item's values are the mean over its rows of minus the row loss: the CRN pair is paired
    assert all(math.isfinite(v) for v in vals)


# ---- the stopping rule ---------------------------------------------------------------------------
def test_leader_resolved_on_hand_made_rows():
    clear = torch.tensor([[-1.0, -5.0], [-1.2, -5.1], [-0.9, -4.8]], dtype=torch.float64)
    assert likelihood.leader_resolved(clear, 3.0)
    tie = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]], dtype=torch.float64)
    assert not likelihood.leader_resolved(tie, 3.0)
    noisy = torch.tensor([[-1.0, -2.0], [-2.0, -1.0], [-1.1, -1.9]], dtype=torch.float64)
    assert not likelihood.leader_resolved(noisy, 1.0)
    # d = 1, 2, 3: mean 2, se = 1 / sqrt(3) = 0.577: resolved at z = 3, not at z = 4
    d = torch.tensor([[0.0, -1.0], [0.0, -2.0], [0.0, -3.0]], dtype=torch.float64)
    assert likelihood.leader_resolved(d, 3.0) and not likelihood.leader_resolved(d, 4.0)
    # a scaled ranking (acc_norm) that the raw ranking does not settle blocks the stop
    assert not likelihood.leader_resolved(clear, 3.0, scales=[[1.0, 1 / 5]])  # -1 vs -1.0, ...
    assert likelihood.leader_resolved(clear, 3.0, scales=[[1.0, 1 / 10]])  # another leader, clear
    assert not likelihood.leader_resolved(clear[:1], 3.0)  # one row: no error estimate
    assert not likelihood.leader_resolved(clear[:, :1], 3.0)  # one choice: nothing to rank


def _fake_logits(good: set[int]):
    """Aligned logits (B, T, V=64): token t in ``good`` gets logit 8 everywhere, others 0, plus a
    small position-free bump that differs by token (a margin with noise across rows)."""
    def fn(ids, attention_mask=None):
        B, T = ids.shape
        base = torch.zeros(64)
        for t in good:
            base[t] = 8.0
        base += torch.linspace(0, 0.5, 64)
        return base.expand(B, T, 64).clone()
    return fn


def test_clear_margin_stops_at_mc_min_and_a_tie_runs_to_mc_num():
    item_clear = [([0, 5], [8, 9]), ([0, 5], [20, 21])]  # 8, 9 likely; 20, 21 not
    # a tie: uniform logits, every token the same CE, same-length choices share masks: d = 0
    flat = lambda ids, attention_mask=None: torch.zeros(ids.shape[0], ids.shape[1], 64)  # noqa: E731
    kw = dict(mask_id=MASK, mc_num=16, mc_min=4, mc_group=2, z=3.0, keep_first=True)
    vals, used = likelihood.elbo_rank_adaptive(
        _fake_logits({8, 9}), [item_clear], generators=[torch.Generator().manual_seed(0)], **kw)
    assert used == [4] and vals[0][0] > vals[0][1]
    vals, used = likelihood.elbo_rank_adaptive(
        flat, [item_clear], generators=[torch.Generator().manual_seed(0)], **kw)
    assert used == [16] and vals[0][0] == vals[0][1]
    # both at once: each item stops on its own
    rec = []
    vals, used = likelihood.elbo_rank_adaptive(
        _fake_logits({8, 9}), [item_clear, [([0, 5], [30, 31]), ([0, 5], [40, 41])]],
        generators=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)], record=rec, **kw)
    assert used[0] == 4 and [r.shape for r in rec][0] == (4, 2)
    # a single request is never "resolved": its value is asked for, at the full budget
    _, used = likelihood.elbo_rank_adaptive(_fake_logits({8}), [[([0, 5], [8])]], **kw)
    assert used == [16]


def test_prefix_consistency_the_first_rows_do_not_depend_on_the_stop():
    item = [([0, 5], [8, 9]), ([0, 5], [20, 21, 22])]
    kw = dict(mask_id=MASK, mc_num=8, mc_group=2, keep_first=True)
    full, short = [], []
    likelihood.elbo_rank_adaptive(_fake_logits({8, 9}), [item], mc_min=8, z=3.0, record=full,
                                  generators=[torch.Generator().manual_seed(5)], **kw)
    likelihood.elbo_rank_adaptive(_fake_logits({8, 9}), [item], mc_min=2, z=0.1, record=short,
                                  generators=[torch.Generator().manual_seed(5)], **kw)
    n = short[0].shape[0]
    assert n < 8 and torch.equal(full[0][:n], short[0])


def test_adaptive_argument_errors_of_the_estimator():
    kw = dict(mask_id=MASK, generators=None, keep_first=True)
    item = [[([0, 5], [8]), ([0, 5], [9])]]
    fn = _fake_logits({8})
    with pytest.raises(ValueError, match="mc_min"):
        likelihood.elbo_rank_adaptive(fn, item, mc_num=8, mc_min=3, mc_group=2, z=1.0, **kw)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        likelihood.elbo_rank_adaptive(fn, item, mc_num=8, mc_min=3, mc_group=3, z=1.0, **kw)
    with pytest.raises(ValueError, match="z must be"):
        likelihood.elbo_rank_adaptive(fn, item, mc_num=8, mc_min=2, mc_group=2, z=0.0, **kw)


# ---- requests -> items -------------------------------------------------------------------------
def _inst(task, doc, idx, ctx, cont):
    return Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=idx,
                    metadata=(task, doc, 1))


def test_request_items_by_document_and_context():
    reqs = [_inst("a", 0, 0, "Q?", " x"), _inst("a", 0, 1, "Q?", " y"),
            _inst("a", 1, 0, "Q?", " x"), _inst("a", 1, 1, "Q?", " z"),  # same context, other doc
            _inst("b", 0, 0, "R", " x"), _inst("b", 0, 1, "R", " y"),  # another task, doc 0
            _inst("m", 0, 0, "S", " x"), _inst("m", 0, 1, "S", " y"),  # acc_mutual_info:
            _inst("m", 0, 2, "", " x"), _inst("m", 0, 3, "", " y"),  # + unconditional requests
            _inst("w", 0, 0, "T1 _", " end"), _inst("w", 0, 1, "T2 _", " end")]  # multiple input
    ctx = [r.args[0] for r in reqs]
    assert LM.request_items(reqs, ctx) == [[0, 1], [2, 3], [4, 5], [6], [7], [8], [9], [10], [11]]
    # lm-eval's own order (document by document, choice by choice) need not hold: keyed is exact
    perm = [3, 0, 2, 1]
    assert LM.request_items([reqs[i] for i in perm], [ctx[i] for i in perm]) == [[0, 2], [1, 3]]
    # without lm-eval keys: runs of consecutive requests with the same context
    assert LM.request_items(None, ["Q", "Q", "R", "Q", "Q", ""]) == [[0, 1], [2], [3, 4], [5]]
    # Instances that do not match the requests one to one: the same runs (documents 0 and 1 of
    # task a share their context and merge: why the keys are used when there are any)
    assert LM.request_items(reqs[:2], ctx) == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9], [10], [11]]


def test_loglikelihood_groups_lm_eval_requests_into_items(built, monkeypatch):
    got = []
    original = LM.DiffusionLM.score_items

    def spy(self, pairs, items, lengths=None, **kw):
        got.append((items, list(lengths)))
        return original(self, pairs, items, lengths, **kw)

    monkeypatch.setattr(LM.DiffusionLM, "score_items", spy)
    lm = _dlm(built, mc_adaptive=True, mc_group=2, mc_min=2)
    reqs = [_inst("t", 0, 0, "w1 w2", " w3"), _inst("t", 0, 1, "w1 w2", " w4 w5"),
            _inst("t", 1, 0, "w1 w2", " w3"), _inst("t", 1, 1, "w1 w2", " w6")]
    out = lm.loglikelihood(reqs)
    assert got == [([[0, 1], [2, 3]], [2, 5, 2, 2])]
    assert len(out) == 4 and all(math.isfinite(v) and g is False for v, g in out)
    assert lm._instances is None


# ---- model_args ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, match", [
    ({"mc_min": 4}, "model_args mc_min=4: only used with mc_adaptive=true"),
    ({"mc_z": 2.0, "mc_adaptive": "false"}, "model_args mc_z=2.0: only used with mc_adaptive=true"),
    ({"mc_adaptive": "maybe"}, "model_args mc_adaptive='maybe': must be true or false"),
    ({"mc_adaptive": True, "mc_num": 30, "mc_group": 4},
     "model_args mc_group=4: must be an integer >= 1 dividing mc_num"),
    ({"mc_adaptive": True, "mc_num": 32, "mc_group": 4, "mc_min": 6},
     "model_args mc_min=6: must be an integer, a multiple of mc_group"),
    ({"mc_adaptive": True, "mc_num": 32, "mc_group": 4, "mc_min": 64}, "model_args mc_min=64"),
    ({"mc_adaptive": True, "mc_num": 32, "mc_z": 0}, "model_args mc_z=0.0: must be a number > 0"),
    ({"mc_adaptive": True, "mc_num": 32, "mc_z": "inf"}, "model_args mc_z=inf"),
    ({"mc_adaptive": True, "mc_group": "two"}, "model_args mc_group='two': must be an integer"),
    ({"mc_adaptive": True, "mc_rank": "norm"}, "model_args mc_rank='norm': must be one of all, acc, acc_norm"),
    ({"mc_rank": "acc"}, "model_args mc_rank='acc': only used with mc_adaptive=true"),
])
def test_check_model_args_refuses_bad_adaptive_settings(args, match):
    with pytest.raises(LM.ModelArgsError, match=match.replace("(", r"\(").replace("+", r"\+")):
        LM.check_model_args({"pretrained": "tiny-dlm", **args})


def test_check_model_args_accepts_and_types_adaptive_settings():
    out = LM.check_model_args({"pretrained": "tiny-dlm", "mc_num": "32", "mc_adaptive": "true",
                               "mc_group": "4", "mc_min": "8", "mc_z": "2.5"})
    assert (out["mc_adaptive"], out["mc_group"], out["mc_min"], out["mc_z"]) == (True, 4, 8, 2.5)
    out = LM.check_model_args({"pretrained": "tiny-dlm", "mc_adaptive": "true"})  # defaults, mc_num 128
    assert out["mc_adaptive"] is True and "mc_min" not in out


def test_configure_keeps_the_sequential_settings_and_falls_back_per_task(built):
    lm = _dlm(built, mc_adaptive=True, mc_group=4, mc_min=8, mc_z=2.0, mc_num=32)
    assert (lm.mc_group, lm.mc_min, lm.mc_z, lm._adaptive_now) == (4, 8, 2.0, True)
    lm.configure(mc_num=16, mc_batch=None, cfg=0.5)  # what the harness does per task
    assert (lm.mc_adaptive, lm.mc_group, lm.mc_min, lm.mc_z, lm._adaptive_now) == (True, 4, 8, 2.0, True)
    lm.configure(mc_num=1, mc_batch=None, cfg=0.0)  # MMLU's mc_num 1: the full estimator
    assert lm.mc_adaptive and not lm._adaptive_now
    lm.configure(mc_adaptive=False)
    assert not lm.mc_adaptive and lm.mc_min is None
    with pytest.raises(ValueError, match="only apply with mc_adaptive=true"):
        lm.configure(mc_z=3.0)


def test_adaptive_with_sharded_evaluation_is_refused(built, monkeypatch):
    monkeypatch.setattr(LM.distributed, "setup", lambda device: Group(0, 2, 0, torch.device("cpu")))
    with pytest.raises(ValueError, match="mc_adaptive=true is not supported with sharded evaluation"):
        _dlm(built, mc_adaptive=True, mc_group=2, mc_min=2)


def test_leader_resolved_on_the_named_rankings_only():
    """mc_rank: raw=False asks only the scaled (acc_norm) ranking. Hand-made rows: choice 0 leads
    the raw values clearly (d = 4, 4.1, 3.9); scaled by 1 and 1/10 choice 1 leads by 0.5, 0.67,
    0.42 (resolved); scaled by 1 and 1/5 the differences are 0, 0.14, -0.06 (not resolved)."""
    rows = torch.tensor([[-1.0, -5.0], [-1.2, -5.3], [-0.9, -4.8]], dtype=torch.float64)
    unresolved = [[1.0, 1 / 5]]
    assert likelihood.leader_resolved(rows, 3.0)  # raw alone
    assert not likelihood.leader_resolved(rows, 3.0, scales=unresolved)  # raw and scaled ("all")
    assert not likelihood.leader_resolved(rows, 3.0, scales=unresolved, raw=False)  # scaled alone
    assert likelihood.leader_resolved(rows, 3.0, scales=[[1.0, 1 / 10]], raw=False)
    with pytest.raises(ValueError, match="needs a ranking"):
        likelihood.leader_resolved(rows, 3.0, raw=False)


def test_mc_rank_names_the_rankings_the_estimator_resolves(built, monkeypatch):
    """score_items hands elbo_rank_adaptive the rankings mc_rank names: all (the default) the raw
    values and the length-scaled ones, acc the raw ones only, acc_norm the scaled ones only; the
    stop then follows leader_resolved (tested on hand-made rows above)."""
    pairs = [("The cat", " sat on the mat"), ("The cat", " ran"), ("One two", " three"), ("One two", " four")]
    items = [[0, 1], [2, 3]]
    lengths = [len(c.lstrip()) for _, c in pairs]
    seen = {}
    original = likelihood.elbo_rank_adaptive

    def spy(*a, **kw):
        seen["scales"], seen["raw"] = kw.get("scales"), kw.get("raw", True)
        return original(*a, **kw)

    monkeypatch.setattr(likelihood, "elbo_rank_adaptive", spy)
    want = {"all": (True, True), "acc": (True, False), "acc_norm": (False, True)}
    for rank, (raw, scaled) in want.items():
        kw = {} if rank == "all" else {"mc_rank": rank}
        lm = _dlm(built, mc_adaptive=True, mc_group=2, mc_min=2, mc_z=1.0, mc_num=8, **kw)
        assert lm.mc_rank == rank
        lm.score_items([lm._encode_pair(c, t) for c, t in pairs], items, lengths=lengths, disable_tqdm=True)
        assert seen["raw"] is raw and (seen["scales"] is not None) is scaled, rank
        if scaled:
            assert seen["scales"][0] == [[1 / lengths[0], 1 / lengths[1]]] or seen["scales"][0] == [
                [1 / lengths[2], 1 / lengths[3]]]
    # without lengths acc_norm has nothing to scale: the raw ranking decides
    lm.score_items([lm._encode_pair(c, t) for c, t in pairs], items, lengths=None, disable_tqdm=True)
    assert seen["raw"] is True and seen["scales"] is None
