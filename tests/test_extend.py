"""Adding a model without touching srclib (issue 16): a params.yaml entry defines it, its source
resolves against the repository root from any working directory, its contract-test stand-in is
derived from its own config, its checkpoints carry their definition and labels, and the DVC stages
that do not use it keep their deps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import srclib.models as models_pkg
from srclib import params, paths
from srclib.models import MODELS, adapter_from_definition, labels, load, register
from srclib.models.base import local_source, marker_labels, read_marker, write_marker
from srclib.models.hf_causal import HFAdapter, shrink_config
from srclib.params import ModelEntry, ParamsError

REPO_PARAMS = params.load()  # the repository's params.yaml, read before any test moves paths.ROOT

# the registry contract (tests/ on sys.path)
from helpers import check_adapter_contract, check_attention_direction  # noqa: E402

LLAMA_CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=300, hidden_size=64,
                    intermediate_size=96, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
                    max_position_embeddings=512, tie_word_embeddings=False, torch_dtype="float32")


@pytest.fixture
def registry():
    """Restore the registry after a test registers params-defined entries."""
    saved, defined = dict(MODELS), dict(models_pkg._DEFINED)
    yield MODELS
    MODELS.clear()
    MODELS.update(saved)
    models_pkg._DEFINED.clear()
    models_pkg._DEFINED.update(defined)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A repository root of its own (paths.ROOT) and a working directory elsewhere."""
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(paths, "ROOT", repo)
    monkeypatch.chdir(elsewhere)
    return repo


def _save_llama(folder: Path, key: str, seed: int = 0, **marker) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(**LLAMA_CONFIG)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    write_marker(folder, key, **marker)
    return model


def _entry(**kw) -> ModelEntry:
    return ModelEntry(dtype="float32", device="cpu", **kw)


# ---- params: a definition is validated where it is written --------------------------------------
def _params_with(entry: dict) -> dict:
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    data["models"]["my-ar"] = entry
    return data


@pytest.mark.parametrize("entry, message", [
    ({"dtype": "float32", "device": "cpu", "source": "models/my-ar"}, "models.my-ar.source: only a model defined here"),
    ({"dtype": "float32", "device": "cpu", "family": "gpt"}, "models.my-ar.family = 'gpt': must be one of"),
    ({"dtype": "float32", "device": "cpu", "family": "hf_causal", "revision": "abc"},
     "models.my-ar.revision: needs models.my-ar.source"),
    ({"dtype": "float32", "device": "cpu", "family": "hf_causal", "options": "x"}, "models.my-ar.options"),
])
def test_bad_definitions_are_refused_naming_the_key(entry, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        params.load_dict(_params_with(entry))


def test_a_definition_round_trips_through_params():
    P = params.load_dict(_params_with({"dtype": "float32", "device": "cpu", "family": "hf_causal",
                                       "source": "org/My-AR", "revision": "a" * 40}))
    assert P.models["my-ar"].definition() == {"family": "hf_causal", "source": "org/My-AR", "revision": "a" * 40}
    assert P.models["tiny-dlm"].definition() is None


def test_register_builds_the_adapter_and_refuses_conflicts(registry):
    register({"my-ar": _entry(family="hf_causal", options={"attn_implementation": "sdpa"})})
    ad = registry["my-ar"]
    assert isinstance(ad, HFAdapter) and ad.causal and not ad.shift and ad.blocks_path == "model.layers"
    register({"my-ar": _entry(family="hf_causal", options={"attn_implementation": "sdpa"})})  # idempotent
    with pytest.raises(ParamsError, match="models.my-ar: defined twice differently"):
        register({"my-ar": _entry(family="llada")})
    with pytest.raises(ParamsError, match="models.tiny-dlm.family: 'tiny-dlm' is a built-in"):
        register({"tiny-dlm": _entry(family="tiny", options={"causal": False, "shift": True})})
    with pytest.raises(ParamsError, match=r"models.nope: unknown model.*models.nope.family"):
        register({"nope": _entry()})
    with pytest.raises(ParamsError, match=r"models.x.options.colour: not a field of the hf_causal adapter"):
        adapter_from_definition("x", {"family": "hf_causal", "options": {"colour": 1}})
    with pytest.raises(ParamsError, match=r"models.x.options.source"):  # spelled at the entry's level
        adapter_from_definition("x", {"family": "hf_causal", "options": {"source": "a/b"}})
    with pytest.raises(ParamsError, match="the tiny family needs causal and shift"):
        adapter_from_definition("x", {"family": "tiny"})


# ---- source: a folder relative to the repository root, from any working directory ----------------
def test_local_source_rules(root):
    (root / "org" / "local").mkdir(parents=True)
    assert local_source("models/my-ar") == root / "models" / "my-ar"  # spelled as a folder: even if absent
    assert local_source("./ckpt") == root / "ckpt"
    assert local_source("/abs/ckpt") == Path("/abs/ckpt")
    assert local_source("org/local") == root / "org" / "local"  # an existing folder wins over a hub id
    assert local_source("GSAI-ML/LLaDA-8B-Base") is None  # a hub id
    assert local_source("~/x") == Path("~/x").expanduser()


def test_a_local_source_loads_from_any_working_directory(root, registry):
    model = _save_llama(root / "models" / "my-ar", "my-ar")
    register({"my-ar": _entry(family="hf_causal", source="models/my-ar")})
    assert Path.cwd() != root and not (Path.cwd() / "models" / "my-ar").exists()
    loaded, tok, adapter = load("my-ar")
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert tok is None and adapter.key == "my-ar"


def test_a_missing_local_source_is_named_not_sent_to_the_hub(root, registry):
    register({"gone": _entry(family="hf_causal", source="models/gone")})
    with pytest.raises(FileNotFoundError, match=r"no checkpoint folder for 'gone' at .*models/gone"):
        load("gone")


def test_no_source_means_models_key(root, registry):
    _save_llama(root / "models" / "my-ar", "my-ar")
    register({"my-ar": _entry(family="hf_causal")})
    assert load("my-ar")[2].key == "my-ar"


# ---- the contract test's stand-in comes from the model's own config ------------------------------
def test_shrink_config_known_answer():
    small = shrink_config({**LLAMA_CONFIG, "layer_types": ["full"] * 3})
    # 8 query heads over 4 KV heads: 2 KV heads x min(2, 3) queries each, 8-dim heads
    assert (small["num_attention_heads"], small["num_key_value_heads"], small["hidden_size"]) == (4, 2, 32)
    assert small["num_hidden_layers"] == 2 and small["layer_types"] == ["full", "full"]
    assert small["intermediate_size"] == 64 and small["vocab_size"] == 300
    assert small["max_position_embeddings"] == 256
    assert "model_type" not in small and "architectures" not in small


def test_a_new_entry_passes_the_contract_without_a_hand_written_standin(root, registry):
    folder = root / "models" / "my-ar"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))  # only the config: no weights needed
    register({"my-ar": _entry(family="hf_causal")})
    stand = registry["my-ar"].standin()
    cfg = stand.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers, cfg.vocab_size) == (4, 2, 2, 300)
    assert sum(p.numel() for p in stand.parameters()) < 100_000
    check_adapter_contract("my-ar")
    check_attention_direction("my-ar")


def test_without_any_config_the_standin_is_still_test_size(root, registry):
    register({"hub-only": _entry(family="hf_causal", source="org/not-fetched")})
    stand = registry["hub-only"].standin()  # transformers' default llama (7B) shrunk: not 27 GB
    assert sum(p.numel() for p in stand.parameters()) < 5_000_000


# ---- labels and definitions travel with the checkpoint --------------------------------------------
def test_labels_come_from_the_marker(root, registry):
    _save_llama(root / "models" / "rand-ar", "rand-ar", weights="random")
    _save_llama(root / "models" / "my-ar", "my-ar")
    register({"rand-ar": _entry(family="hf_causal"), "my-ar": _entry(family="hf_causal")})
    assert labels("rand-ar") == {"kind": "ar", "random_init": True}
    assert labels("my-ar") == {"kind": "ar", "random_init": False}
    write_marker(root / "models" / "my-ar", "my-ar", kind="dlm")
    with pytest.raises(ValueError, match="kind 'dlm' disagrees with its adapter"):
        labels("my-ar")
    with pytest.raises(ValueError, match="marker weights"):
        write_marker(root / "x", "x", weights="half")
    assert marker_labels(None, causal=False) == {"kind": "dlm", "random_init": False}


def test_collect_labels_a_random_weight_model_random(root, registry):
    """The variance table's Init column reads the trajectory's random_init: a model whose marker
    says its weights are random is 'random' under its own name (it was 'trained' before)."""
    from srclib.report.tables import sink_variance_table
    from srclib.stages import collect, variance

    _save_llama(root / "models" / "rand-ar", "rand-ar", weights="random")
    prompts = paths.prompts_file(root)
    prompts.parent.mkdir(parents=True)
    prompts.write_text("".join(json.dumps({"id": i, "source": "s", "text": f"w{i} a b c d e f"}) + "\n"
                               for i in range(2)))
    entries = {"rand-ar": _entry(family="hf_causal")}
    cfg = params.CollectParams(models=["rand-ar"], n_prompts=2, prompt_tokens=4, gen_length=3, steps=3,
                               block_length=3, temperature=0.0, cfg_scale=0.0, remasking="low_confidence",
                               chunk_size=8, random_init_control=False, seed=0)

    def loader(key, dtype):  # the default loader, with a word tokenizer (the folder has none)
        model, _tok, adapter = load(key, dtype=dtype)
        return model, _Words(), adapter

    loader.labeller = lambda key, adapter: labels(key)
    register(entries)
    out = collect.collect_models(cfg, entries, root=root, loader=loader, model="rand-ar")
    assert out.runs["rand-ar"]["random_init"] is True
    res = variance.sink_variance(REPO_PARAMS.variance, root=root)
    table = sink_variance_table(res.metrics)
    assert table.loc[table["Run"] == "rand-ar", "Init"].item() == "random"


class _Words:
    """A minimal tokenizer: one id per word (ids below the test vocabulary)."""
    bos_token_id = None
    eos_token_id = None
    pad_token_id = 0

    def __call__(self, text, **kw):
        return {"input_ids": [3 + (sum(map(ord, w)) % 200) for w in text.split()]}

    def decode(self, ids, **kw):
        return " ".join(str(i) for i in ids)


def test_pruned_checkpoints_carry_the_definition(root, registry, tmp_path):
    """A pruned folder of a params-defined model loads in a process that never read params.yaml."""
    from srclib import models

    _save_llama(root / "models" / "my-ar", "my-ar", weights="random")
    register({"my-ar": _entry(family="hf_causal")})
    extra = models.inherited_marker("my-ar")
    assert extra == {"adapter": {"family": "hf_causal"}, "weights": "random"}
    folder = tmp_path / "pruned"
    m, _tok, ad = load("my-ar")
    m.save_pretrained(folder)
    write_marker(folder, "my-ar", pruned={}, **extra)
    del registry["my-ar"], models_pkg._DEFINED["my-ar"]
    assert load(folder)[2].key == "my-ar" and read_marker(folder)["adapter"]["family"] == "hf_causal"
