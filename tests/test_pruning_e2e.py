"""End to end: every method x weighting on a from-config TinyLM (DLM) and a tiny transformers Llama
(AR, and bidirectional-labelled with a mask id), OWL, run_prune save/reload, bad inputs."""

from __future__ import annotations

import csv

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import CHUNK  # tests/ is on sys.path
from srclib.pruning import calibration as cal
from srclib.models import MODELS, load
from srclib.models.base import Adapter, read_marker
from srclib.models.tiny import TinyLM, test_config
from srclib.pruning.checkpoint import load_masks, run_prune
from srclib.pruning.core import prune_model

from prune_specs import make_spec as spec  # tests/ is on sys.path

TINY = Adapter(key="t", causal=False, shift=True, blocks_path="model.transformer.blocks")
LLAMA_AR = Adapter(key="l", causal=True, shift=False, blocks_path="model.layers")
LLAMA_DLM = Adapter(key="ld", causal=False, shift=False, blocks_path="model.layers", mask_token_id=63)


def _model(kind):
    torch.manual_seed(0)
    if kind == "tiny":
        return TinyLM(test_config()).eval(), TINY
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval(), (LLAMA_AR if kind == "llama-ar" else LLAMA_DLM)


def _calib(n=4, T=16):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(3, 60, (n, T), generator=g)
    w[:, 0] = 0
    return cal.Calibration(windows=w, seed=0, windows_per_batch=2, mass_chunk_size=CHUNK)


COMBOS = [("magnitude", "uniform")] + [(m, w) for m in ("wanda", "sparsegpt") for w in ("uniform", "sink", "stability")]


@pytest.mark.parametrize("kind", ["tiny", "llama-ar", "llama-dlm"])
@pytest.mark.parametrize("method,weighting", COMBOS)
def test_every_method_and_weighting(kind, method, weighting):
    model, adapter = _model(kind)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    pattern = ({"wanda": "2:4", "sparsegpt": "4:8"}.get(method, "unstructured") if weighting == "stability"
               else "unstructured")
    rep = prune_model(model, adapter, spec(method=method, weighting=weighting, pattern=pattern), _calib())
    assert abs(rep.overall - 0.5) < 1e-3
    assert rep.inputs == ("none" if method == "magnitude" else
                          "noised" if (kind != "llama-ar" and method == "wanda") else "clean")
    params = dict(model.named_parameters())
    n_layers = 0
    for name, mask in rep.masks.items():
        w = params[name + ".weight"].detach()
        assert (w[mask] == 0).all()
        if method != "sparsegpt":  # SparseGPT updates the kept weights; the others never touch them
            assert torch.equal(w[~mask], dense[name + ".weight"][~mask])
        n_layers += 1
    assert n_layers == 14
    for n, p in model.named_parameters():  # embeddings, norms, head untouched
        if not any(n.startswith(k) for k in rep.masks):
            assert torch.equal(p, dense[n]), n
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=_calib().windows).logits).all()


def test_owl_block_sparsities():
    model, adapter = _model("tiny")
    rep = prune_model(model, adapter, spec(owl=True, owl_lambda=0.1), _calib())
    assert len(rep.block_sparsity) == 2 and len(rep.outlier_ratios) == 2
    assert abs(sum(rep.block_sparsity) / 2 - 0.5) < 1e-12
    assert rep.block_sparsity[0] != rep.block_sparsity[1]
    assert abs(rep.overall - 0.5) < 1 / 64  # floor per row of 64 or 128 columns
    for name, s in rep.sparsity.items():
        assert abs(s - rep.target[name]) < 1 / 64
    # OWL with a sink-weighted one-shot Wanda reuses its own statistics
    model, adapter = _model("tiny")
    rep2 = prune_model(model, adapter, spec(weighting="sink", owl=True, owl_lambda=0.1), _calib())
    assert abs(sum(rep2.block_sparsity) / 2 - 0.5) < 1e-12


def test_run_prune_saves_reloadable_model(tmp_path):
    torch.manual_seed(0)
    adapter = MODELS["tiny-dlm"]
    c = _calib()
    sp = spec(method="sparsegpt", weighting="sink")
    outs = []
    for run in ("a", "b"):
        torch.manual_seed(0)
        m = TinyLM(test_config()).eval()
        res = run_prune(model=(m, None, adapter), spec=sp, out_dir=tmp_path / run / "pruned",
                        metrics_path=tmp_path / run / "metrics.json", timing_path=tmp_path / run / "timing.json",
                        n_samples=4, seq_len=16, seed=0, calibration=c, instance="x")
        outs.append((m, res))
    m, res = outs[0]
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
    for f in ("model.safetensors", "masks.safetensors", "sparsity.csv", "srclib_model.json", "config.json"):
        assert (tmp_path / "a" / "pruned" / f).read_bytes() == (tmp_path / "b" / "pruned" / f).read_bytes(), f
    assert res.metrics["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert set(res.timing["seconds"]) >= {"calibration", "prune", "total"}
    assert res.timing["memory"]["peak_bytes"] > 0
    folder = tmp_path / "a" / "pruned"
    re_model, _, re_adapter = load(folder)
    assert re_adapter is adapter
    ids = c.windows
    with torch.no_grad():
        assert torch.equal(re_model(input_ids=ids).logits, m(input_ids=ids).logits)
    masks = load_masks(folder / "masks.safetensors")
    assert masks.keys() == res.report.masks.keys()
    for k in masks:
        assert torch.equal(masks[k], res.report.masks[k])
    assert read_marker(folder)["pruned"]["method"] == "sparsegpt"
    rows = list(csv.DictReader(open(folder / "sparsity.csv")))
    assert len(rows) == 14 and all(float(r["sparsity"]) == 0.5 for r in rows)


# ---- bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(method="obs"), r"run.method = 'obs': must be one of \['magnitude'"),
    (dict(weighting="attn"), r"run.weighting = 'attn'.*stability"),
    (dict(pattern="1:4"), r"run.pattern = '1:4'.*unstructured"),
    (dict(sparsity=1.0), r"run.sparsity = 1.0: must be < 1"),
    (dict(sparsity=-0.2), r"run.sparsity = -0.2: must be >= 0"),
    (dict(pattern="2:4", sparsity=0.6), r"2:4.*sparsity 0\.6 is not allowed"),
    (dict(method="magnitude", weighting="sink"), r"weighting must be 'uniform'"),
    (dict(owl=True, pattern="2:4"), r"OWL.*unstructured"),
    (dict(t_grid=(0.0, 0.5)), r"t_grid"),
    (dict(wanda_accumulation="max"), r"wanda_accumulation"),
    (dict(calib_inputs="dirty"), r"calib_inputs"),
])
def test_bad_specs(kw, match):
    with pytest.raises(ValueError, match=match):
        spec(**kw)


def test_nan_activations_name_the_layer():
    model, adapter = _model("tiny")
    with torch.no_grad():
        model.model.transformer.blocks[0].attn_norm.weight[3] = float("nan")
    with pytest.raises(ValueError, match=r"model\.transformer\.blocks\.0\.q_proj.*NaN"):
        prune_model(model, adapter, spec(), _calib())


def test_missing_calibration():
    model, adapter = _model("tiny")
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_model(model, adapter, spec(method="sparsegpt"), None)
    rep = prune_model(model, adapter, spec(method="magnitude"), None)  # magnitude needs none
    assert abs(rep.overall - 0.5) < 1e-3


def test_run_prune_loads_with_the_params_dtype_and_device(tmp_path, monkeypatch):
    """The prune stage hands params.yaml's models: entry (dtype, device) to srclib.models.load."""
    import srclib.models

    adapter = MODELS["tiny-dlm"]
    torch.manual_seed(0)
    TinyLM(test_config()).eval().save_pretrained(tmp_path / "dense", safe_serialization=True)
    from srclib.models.base import write_marker

    write_marker(tmp_path / "dense", "tiny-dlm")
    seen = {}

    def spy(source, **overrides):
        seen.update(overrides)
        return load(source, **overrides)

    monkeypatch.setattr(srclib.models, "load", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = run_prune(model=str(tmp_path / "dense"), spec=spec(method="magnitude"), out_dir=tmp_path / "pruned",
                    metrics_path=tmp_path / "m.json", n_samples=1, seq_len=8, seed=0, instance="x",
                    dtype="bfloat16", device="auto")
    assert seen == {"dtype": "bfloat16", "device": "cpu"}  # "auto" resolved before loading
    assert res.metrics["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert adapter.key == read_marker(tmp_path / "pruned")["key"]
