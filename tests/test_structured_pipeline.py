"""Structured pruning end to end (issue 13): prune_structured on every family's stand-in, the
compact and masked forms computing the same function, run_prune -> load(folder) round trip,
sequential Wanda-sp, and the bad inputs of params validation."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from helpers import CHUNK  # tests/ is on sys.path
from srclib.pruning import calibration as cal
from srclib.pruning import plan
from srclib import params
from srclib.models import MODELS, load
from srclib.models.base import read_marker
from srclib.models.tiny import TinyLM, test_config
from srclib.params import ParamsError
from srclib.pruning.checkpoint import run_prune
from srclib.pruning.structured_core import prune_structured

from prune_specs import make_spec  # tests/ is on sys.path


def spec(**kw):
    base = dict(method="flap", weighting="uniform", sparsity=0.5, pattern=None, structure="uniform")
    return make_spec(**{**base, **kw})


def _tiny(n_kv=None):
    torch.manual_seed(0)
    kw = {} if n_kv is None else {"n_kv_heads": n_kv}
    return TinyLM(test_config(causal=False, shift=True, **kw)).eval(), MODELS["tiny-dlm"]


def _family(kind):
    if kind == "tiny":
        return _tiny()
    if kind == "tiny-gqa":
        return _tiny(n_kv=2)
    if kind == "smollm2":  # Llama, GQA 6/2 at test size
        return MODELS["smollm2-135m"].standin(seed=0), MODELS["smollm2-135m"]
    if kind == "dream":  # Qwen2 body, q/k/v biases, masked form
        return MODELS["dream-7b-base"].standin(seed=0), MODELS["dream-7b-base"]
    if kind == "llada":
        return MODELS["llada-8b-base"].standin(seed=0), MODELS["llada-8b-base"]
    raise KeyError(kind)


def _calib(vocab, n=4, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(3, min(vocab, 60), (n, T), generator=g)
    w[:, 0] = 0
    return cal.Calibration(windows=w, seed=seed, windows_per_batch=2, mass_chunk_size=CHUNK)


def _ids(vocab, B=2, T=12):
    return torch.randint(3, min(vocab, 60), (B, T), generator=torch.Generator().manual_seed(1))


def _vocab(model):
    return model.get_input_embeddings().num_embeddings


FAMILIES = ["tiny", "tiny-gqa", "smollm2", "dream", "llada"]


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("method,weighting,structure", [
    ("magnitude", "uniform", "uniform"), ("wanda", "sink", "uniform"), ("flap", "uniform", "adaptive"),
    ("flap", "sink", "adaptive"), ("wanda", "stability", "adaptive"),
])
def test_every_family_method_and_structure(kind, method, weighting, structure):
    model, adapter = _family(kind)
    rep = prune_structured(model, adapter, spec(method=method, weighting=weighting, structure=structure,
                                                sparsity=0.4), _calib(_vocab(model)))
    assert 0 < rep.achieved < 1
    for b in rep.blocks:  # never a block emptied
        assert b["kv_groups"] >= 1 and b["channels"] >= 1
    if structure == "uniform":  # exact per-block counts (round half even, never all)
        for b in rep.blocks:
            assert b["kv_groups_total"] - b["kv_groups"] == min(round(0.4 * b["kv_groups_total"]),
                                                                b["kv_groups_total"] - 1)
            assert b["channels_total"] - b["channels"] == min(round(0.4 * b["channels_total"]), b["channels_total"] - 1)
    else:  # within one unit's cost of the target, from above
        head = max(rep.total_params // max(1, sum(b["kv_groups_total"] for b in rep.blocks)), 1)
        assert rep.achieved >= 0.4 - 1e-9
        assert (rep.achieved - 0.4) * rep.total_params <= head + 1e-6 * rep.total_params
    assert rep.inputs == ("none" if method == "magnitude" else "noised" if not adapter.causal else "clean")
    logits = adapter.logits(model, _ids(_vocab(model)))
    assert torch.isfinite(logits).all()
    if adapter.structured_form == "compact":  # physically smaller
        blocks = adapter.blocks(model)
        for i, b in enumerate(rep.blocks):
            down = dict(blocks[i].named_modules())[adapter.roles["down"]]
            assert down.in_features == b["channels"]
            o = dict(blocks[i].named_modules())[adapter.roles["o"]]
            assert o.in_features == b["query_heads"] * rep.layout.head_dim


@pytest.mark.parametrize("kind", ["tiny", "tiny-gqa", "smollm2", "dream"])
def test_compact_and_masked_forms_compute_the_same_function(kind):
    model, adapter = _family(kind)
    other = dataclasses.replace(adapter,
                                structured_form="masked" if adapter.structured_form == "compact" else "compact")
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    s = spec(method="flap", weighting="sink", structure="adaptive", sparsity=0.5)
    ra = prune_structured(a, adapter, s, _calib(_vocab(model)))
    rb = prune_structured(b, other, s, _calib(_vocab(model)))
    assert [x.tolist() for x in ra.structure.heads] == [x.tolist() for x in rb.structure.heads]
    ids = _ids(_vocab(model))
    diff = (adapter.logits(a, ids) - other.logits(b, ids)).abs().max().item()
    assert diff <= 1e-5
    n_a, n_b = sum(p.numel() for p in a.parameters()), sum(p.numel() for p in b.parameters())
    assert n_a != n_b  # one of them is smaller


def test_bias_compensation_option_changes_the_model_only_through_biases():
    model, adapter = _tiny()
    off, on = copy.deepcopy(model), copy.deepcopy(model)
    prune_structured(off, adapter, spec(method="wanda", bias_compensation="off", structure="adaptive"), _calib(64))
    rep = prune_structured(on, adapter, spec(method="wanda", bias_compensation="on", structure="adaptive"), _calib(64))
    assert rep.structure.bias and all(torch.isfinite(v).all() for v in rep.structure.bias.values())
    blocks = adapter.blocks(on)
    o = dict(blocks[0].named_modules())[adapter.roles["o"]]
    assert o.bias is not None and o.bias.abs().sum() > 0
    # FLAP defaults to compensation, Wanda-sp does not
    assert plan.compensate(spec(method="flap")) and not plan.compensate(spec(method="wanda"))


def test_sequential_wanda_sp_block0_matches_one_shot_and_later_blocks_see_pruned_inputs():
    model, adapter = _tiny()
    seq, one = copy.deepcopy(model), copy.deepcopy(model)
    s = spec(method="wanda", weighting="sink", structure="uniform", sparsity=0.5)
    assert not plan.one_shot(s)
    r_seq = prune_structured(seq, adapter, s, _calib(64))
    forced = dataclasses.replace(s, options=dataclasses.replace(s.options, force_one_shot=True))
    r_one = prune_structured(one, adapter, forced, _calib(64))
    assert r_seq.structure.heads[0].tolist() == r_one.structure.heads[0].tolist()
    assert r_seq.structure.channels[0].tolist() == r_one.structure.channels[0].tolist()


def test_magnitude_sp_needs_no_data():
    model, adapter = _tiny()
    rep = prune_structured(model, adapter, spec(method="magnitude", sparsity=0.5), None)
    assert rep.inputs == "none" and rep.n_passes == 0
    with pytest.raises(ValueError, match="calibration"):
        prune_structured(_tiny()[0], adapter, spec(method="flap"), None)


@pytest.mark.parametrize("key,kind", [("tiny-dlm", "tiny"), ("smollm2-135m", "smollm2")])
def test_run_prune_saves_a_compact_checkpoint_that_reloads(tmp_path, key, kind):
    model, adapter = _family(kind)
    ref = copy.deepcopy(model)
    out = tmp_path / "pruned"
    res = run_prune(model=(model, None, adapter), spec=spec(method="flap", weighting="sink", structure="adaptive",
                                                          sparsity=0.3),
                    out_dir=out, metrics_path=tmp_path / "m.json", n_samples=4, seq_len=16, seed=0,
                    calibration=_calib(_vocab(model)), instance="x")
    marker = read_marker(out)
    assert marker["structure"]["form"] == "compact"
    assert (out / "structure.safetensors").is_file() and (out / "structure.csv").is_file()
    m = res.metrics["structured"]
    assert m["achieved_ratio"] == res.metrics["overall_sparsity"] and abs(m["achieved_ratio"] - 0.3) < 0.3
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in ref.parameters())
    loaded, _tok, ad = load(out)
    ids = _ids(_vocab(model))
    assert torch.equal(ad.logits(loaded, ids), adapter.logits(model, ids))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


# ---- params: the bad inputs of item 5 -----------------------------------------------------------
def _params_with(inst: dict) -> dict:
    import yaml

    from srclib import paths

    data = yaml.safe_load((paths.ROOT / "params.yaml").read_text())
    data["prune"]["instances"] = {"x": inst}
    data["efficiency"]["instances"] = ["x"]
    return data


BASE_INST = dict(model="tiny-dlm", method="flap", weighting="sink", sparsity=0.3, structure="adaptive", seed=0)


@pytest.mark.parametrize("change,match", [
    ({"structure": "rowwise"}, r"prune\.instances\.x\.structure = 'rowwise': must be one of \['uniform', 'adaptive'\]"),
    ({"sparsity": 1.0}, r"prune\.instances\.x\.sparsity = 1\.0: must be < 1"),
    ({"sparsity": -0.1}, r"prune\.instances\.x\.sparsity = -0\.1: must be >= 0"),
    ({"method": "sparsegpt"}, r"prune\.instances\.x: method 'sparsegpt' cannot prune structurally"),
    ({"structure": None}, r"method 'flap' prunes structurally only"),
    ({"pattern": "2:4", "sparsity": 0.5}, r"pattern must be left out"),
    ({"method": "magnitude"}, r"weighting must be 'uniform'"),
])
def test_bad_structured_instances_are_refused_naming_the_key(change, match):
    inst = {**BASE_INST, **change}
    if inst["structure"] is None:
        del inst["structure"]
    with pytest.raises(ParamsError, match=match):
        params.load_dict(_params_with(inst))


def test_structured_instance_without_pattern_is_valid_and_unstructured_needs_one():
    P = params.load_dict(_params_with(dict(BASE_INST)))
    assert P.prune.instances["x"].pattern == "unstructured" and P.prune.spec("x").run.structure == "adaptive"
    with pytest.raises(ParamsError, match="pattern: missing key"):
        params.load_dict(_params_with(dict(model="tiny-dlm", method="wanda", weighting="sink", sparsity=0.3, seed=0)))


def test_owl_with_structure_is_refused():
    data = _params_with(dict(BASE_INST))
    data["prune"]["owl"]["enabled"] = True
    P = params.load_dict(data)
    with pytest.raises(ParamsError, match="OWL"):
        P.prune.spec("x")


def test_runner_refuses_structured_on_a_family_without_head_metadata(monkeypatch):
    from srclib import run as runner
    from srclib.models.base import Adapter

    P = params.load_dict(_params_with(dict(BASE_INST)))
    monkeypatch.setitem(MODELS, "tiny-dlm", Adapter(key="tiny-dlm", causal=False, shift=True,
                                                   blocks_path="model.transformer.blocks"))
    with pytest.raises(ParamsError,
                       match=r"prune\.instances\.x\.structure = 'adaptive': model 'tiny-dlm' .* no head metadata"):
        runner.check_structured(P)
