"""Adapter contract over every registry entry, loading paths (offline) and error messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from srclib.models import MODELS, get_adapter, load
from srclib.models.dream import dream_attention_inputs

from helpers import check_adapter_contract, check_attention_direction, model_ids as _ids  # tests/ is on sys.path
from standins import save_standin

KEYS = sorted(MODELS)


# ---- contract: every registry entry ----------------------------------------------------------
@pytest.mark.parametrize("key", KEYS)
def test_contract(key):
    check_adapter_contract(key)


@pytest.mark.parametrize("key", KEYS)
def test_attention_direction_matches_causal_flag(key):
    check_attention_direction(key)


@pytest.mark.parametrize("key", [k for k in KEYS if MODELS[k].shift])
def test_shifted_alignment(key):
    adapter = MODELS[key]
    model = adapter.standin()
    ids = _ids(model, T=5)
    with torch.no_grad():
        raw = dataclasses.replace(adapter, shift=False).logits(model, ids)  # same inputs, no alignment
        aligned = adapter.logits(model, ids)
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1])


# ---- loading: srclib-written folders, markers, errors ----------------------------------------
@pytest.mark.parametrize("key", KEYS)
def test_save_load_roundtrip_via_marker(key, tmp_path):
    adapter = MODELS[key]
    model = adapter.standin(seed=1)
    folder = save_standin(adapter, model, tmp_path / key)
    loaded, tok, ad = load(folder, dtype="float32")
    assert ad is adapter and tok is None
    assert not loaded.training
    assert next(loaded.parameters()).dtype == torch.float32
    ids = _ids(model)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(loaded, ids), adapter.logits(model, ids))


@pytest.mark.parametrize("key", KEYS)
def test_truncated_weights_give_clear_error(key, tmp_path):
    adapter = MODELS[key]
    folder = save_standin(adapter, adapter.standin(), tmp_path / key)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeError, match=str(folder)):
        load(folder)


@pytest.mark.parametrize("key", [k for k in KEYS if not MODELS[k].revision])
def test_missing_local_folder_gives_clear_error(key, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        MODELS[key].load(tmp_path / "nope")


def test_load_rejects_unknown_key_and_unmarked_folder(tmp_path):
    with pytest.raises(KeyError, match="registered models"):
        get_adapter("gpt-17")
    with pytest.raises(KeyError, match="neither a registered model"):
        load("gpt-17")
    with pytest.raises(FileNotFoundError, match="srclib_model.json"):
        load(tmp_path)


def test_bad_dtype_is_named(tmp_path):
    adapter = MODELS["tiny-ar"]
    folder = save_standin(adapter, adapter.standin(), tmp_path / "m")
    with pytest.raises(ValueError, match="dtype"):
        load(folder, dtype="float33")


@pytest.mark.parametrize("key", KEYS)
def test_load_honours_params_dtype_and_auto_device(key, tmp_path, monkeypatch):
    """params.yaml's models: entry (dtype, device "auto") reaches every adapter's load."""
    from srclib.devices import resolve as resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cuda:1") == "cuda:1" and resolve_device(None) is None
    adapter = MODELS[key]
    folder = save_standin(adapter, adapter.standin(), tmp_path / key)
    loaded, _tok, _ad = load(folder, dtype="bfloat16", device="auto")
    p = next(loaded.parameters())
    assert p.dtype == torch.bfloat16 and p.device.type == "cpu"


def test_tiny_load_checks_flags_against_entry(tmp_path):
    folder = save_standin(MODELS["tiny-ar"], MODELS["tiny-ar"].standin(), tmp_path / "m")
    with pytest.raises(ValueError, match="causal"):
        MODELS["tiny-dlm"].load(folder)


@pytest.mark.parametrize("key", [k for k in KEYS if MODELS[k].revision])
def test_hub_entries_load_pinned_revision_with_remote_code(key, monkeypatch):
    """The default source goes to Auto*.from_pretrained(hub id, revision=pinned, trust_remote_code, dtype)."""
    import transformers

    adapter = MODELS[key]
    assert len(adapter.revision) == 40 and int(adapter.revision, 16) >= 0
    calls = {}
    standin = adapter.standin()

    def fake_model(src, **kw):
        calls["model"] = (src, kw)
        return standin

    def fake_tok(src, **kw):
        calls["tok"] = (src, kw)
        return "tokenizer"

    monkeypatch.setattr(getattr(transformers, adapter.auto_class), "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tok)
    model, tok, ad = load(key)
    src, kw = calls["model"]
    assert src == adapter.source and kw["revision"] == adapter.revision
    assert kw["trust_remote_code"] is True and kw["dtype"] == torch.bfloat16
    assert calls["tok"] == (adapter.source, {"revision": adapter.revision, "trust_remote_code": True})
    assert tok == "tokenizer" and model is standin
    # a float32 override (CPU) reaches from_pretrained
    load(key, dtype="float32")
    assert calls["model"][1]["dtype"] == torch.float32


def test_hub_failure_names_id_and_revision(monkeypatch):
    import transformers

    def boom(src, **kw):
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", boom)
    with pytest.raises(RuntimeError, match="GSAI-ML/LLaDA-8B-Base@0f2787f2"):
        load("llada-8b-base")


def test_dream_attention_inputs_match_dream_sampler():
    am = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask, pos = dream_attention_inputs(am, 2, 4, am.device)
    assert mask.shape == (2, 1, 4, 4) and mask.dtype == torch.bool
    assert not mask[0, 0, :2].any() and not mask[0, 0, :, :2].any() and mask[0, 0, 2:, 2:].all()
    assert mask[1].all()
    assert pos.tolist() == [[1, 1, 0, 1], [0, 1, 2, 3]]
    full, none = dream_attention_inputs(None, 2, 3, am.device)
    assert full.all() and none is None


def test_dream_padding_equals_unpadded():
    """Left padding with Dream's 4-D mask and position ids leaves the real tokens' logits unchanged."""
    adapter = MODELS["dream-7b-base"]
    model = adapter.standin()
    ids = _ids(model, B=1, T=5)
    padded = torch.cat([torch.full((1, 2), 7), ids], dim=1)
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = adapter.logits(model, ids)
        b = adapter.logits(model, padded, am)
    torch.testing.assert_close(b[:, 3:], a[:, 1:], atol=1e-5, rtol=1e-5)


# ---- SmolLM2 conversion (real GGUF; slow) ----------------------------------------------------
GGUF = Path(__file__).resolve().parents[1] / "data/raw/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(not GGUF.is_file(), reason="data/raw not built")
def test_smollm2_conversion_matches_gguf(tmp_path):
    from transformers import AutoModelForCausalLM

    from srclib.models.hf_causal import convert_gguf

    out = convert_gguf(GGUF, tmp_path / "smollm2-135m", "smollm2-135m")
    model, tok, adapter = load(out)
    assert adapter.key == "smollm2-135m" and tok is not None
    ref = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name).eval()
    ids = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(model, ids), ref(ids).logits, atol=1e-4, rtol=1e-4)
    assert len(adapter.blocks(model)) == 30
    assert model.config._attn_implementation == "sdpa"
