"""Structured checkpoints (issue 13, method.md 9): masked and compact forms give the same logits,
compact shapes and parameter counts are the removed units' cost, both forms save and reload through
srclib.models.load, and the GQA grouping is the one Llama's repeat_kv and TinyBlock use.

Families: every registry family's stand-in plus a from-config Llama with 9 query / 3 KV heads,
head_dim 6 != hidden / heads = 8, and q/k/v/o and MLP biases. Remote-code entries (LLaDA, Dream) are
saved as tests/test_models.py saves them: a small modeling file subclassing the stand-in's class
and an ``auto_map``, so the registry's own adapters load them offline with trust_remote_code.
No MODELS entry is monkeypatched: every marker names a registry key whose adapter loads the folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from srclib.models import MODELS, load
from srclib.models.base import Adapter, read_marker, write_marker
from srclib.models.structure import (
    STRUCTURE_FILE, HeadLayout, Structure, apply_compact, apply_masked, block_linears, head_layout,
    load_structure, save_structure, structure_record,
)

from standins import save_standin  # tests/ is on sys.path

# name -> (registry key, adapter, stand-in builder, expected (n_heads, n_kv, head_dim))
LLAMA93 = dataclasses.replace(MODELS["smollm2-135m"], standin_config=dict(
    vocab_size=64, hidden_size=72, intermediate_size=40, num_hidden_layers=2, num_attention_heads=9,
    num_key_value_heads=3, head_dim=6, max_position_embeddings=128, tie_word_embeddings=False,
    attention_bias=True, mlp_bias=True,
))
FAMILIES = {
    "tiny-mha": ("tiny-dlm", MODELS["tiny-dlm"], lambda: MODELS["tiny-dlm"].standin(), (4, 4, 16)),
    "tiny-gqa": ("tiny-dlm", MODELS["tiny-dlm"], lambda: MODELS["tiny-dlm"].standin(n_kv_heads=2), (4, 2, 16)),
    "llada": ("llada-8b-base", MODELS["llada-8b-base"], lambda: MODELS["llada-8b-base"].standin(), (4, 4, 8)),
    "smollm2": ("smollm2-135m", MODELS["smollm2-135m"], lambda: MODELS["smollm2-135m"].standin(), (6, 2, 8)),
    "dream": ("dream-7b-base", MODELS["dream-7b-base"], lambda: MODELS["dream-7b-base"].standin(), (4, 2, 8)),
    "llama-9-3": ("smollm2-135m", LLAMA93, LLAMA93.standin, (9, 3, 6)),
}
NAMES = sorted(FAMILIES)


def _with_random_biases(model: nn.Module, seed: int = 5) -> nn.Module:
    """transformers initialises biases to zero, which would hide a wrong bias slice: randomise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _ids(model, B=2, T=9, seed=1) -> torch.Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(3, min(vocab, 60), (B, T), generator=torch.Generator().manual_seed(seed))


def _random_structure(model, adapter, n_kv: int, seed: int = 0) -> Structure:
    """Per block: remove KV groups and ~40% of the channels at random (never all, at least one
    group), nonzero random compensation biases on 0.o, 0.down and 1.down (not 1.o)."""
    g = torch.Generator().manual_seed(seed)
    heads, channels, bias = [], [], {}
    blocks = adapter.blocks(model)
    for i, block in enumerate(blocks):
        lin = block_linears(adapter, block)
        h = torch.rand(n_kv, generator=g) < 0.5
        h[i % n_kv] = True  # keep one
        h[(i + 1) % n_kv] = False  # remove one
        c = torch.rand(lin["gate"].out_features, generator=g) < 0.6
        c[0], c[1] = True, False
        heads.append(h)
        channels.append(c)
        d = lin["o"].out_features
        bias[f"{i}.down"] = torch.randn(d, generator=g) * 0.1
        if i == 0:
            bias[f"{i}.o"] = torch.randn(d, generator=g) * 0.1
    return Structure(heads=heads, channels=channels, bias=bias)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _save(adapter, key: str, model, structure: Structure, layout: HeadLayout, form: str, folder: Path) -> Path:
    """As a pruning stage would: the stand-in checkpoint (tests/standins.py) with the structure
    record in its marker, and the structure file."""
    save_standin(adapter, model, folder, key=key, structure=structure_record(structure, layout, form))
    save_structure(folder, structure)
    return folder


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    torch.set_num_threads(1)
    key, adapter, build, expected = FAMILIES[request.param]
    dense = _with_random_biases(build())
    layout = head_layout(adapter, dense)
    structure = _random_structure(dense, adapter, layout.n_kv_heads)
    masked, compact = copy.deepcopy(dense), copy.deepcopy(dense)
    apply_masked(masked, adapter, structure)
    apply_compact(compact, adapter, structure)
    ids = _ids(dense)
    with torch.no_grad():
        ref = adapter.logits(masked, ids)
    return SimpleNamespace(name=request.param, key=key, adapter=adapter, dense=dense, layout=layout,
                           expected=expected, structure=structure, masked=masked, compact=compact,
                           ids=ids, ref=ref)


# ---- masked == compact ------------------------------------------------------------------------
def test_layout_from_config(family):
    L = family.layout
    assert (L.n_heads, L.n_kv_heads, L.head_dim) == family.expected
    assert L.n_rep == family.expected[0] // family.expected[1]


def test_compact_logits_equal_masked(family):
    with torch.no_grad():
        got = family.adapter.logits(family.compact, family.ids)
        dense = family.adapter.logits(family.dense, family.ids)
    assert got.shape == family.ref.shape
    assert (got - family.ref).abs().max().item() <= 1e-5
    assert (dense - family.ref).abs().max().item() > 1e-4  # the structure changed the function


def test_compact_shapes_and_parameter_count(family):
    n_q, n_kv, hd = family.expected
    n_rep = n_q // n_kv
    d = family.dense.get_input_embeddings().weight.shape[1]
    removed = 0
    for i, (dense_block, block) in enumerate(zip(family.adapter.blocks(family.dense),
                                                 family.adapter.blocks(family.compact))):
        old, new = block_linears(family.adapter, dense_block), block_linears(family.adapter, block)
        kv_kept = int(family.structure.heads[i].sum())
        c_total = old["gate"].out_features
        c_kept = int(family.structure.channels[i].sum())
        assert tuple(new["q"].weight.shape) == (kv_kept * n_rep * hd, d)
        assert tuple(new["k"].weight.shape) == (kv_kept * hd, d)
        assert tuple(new["v"].weight.shape) == (kv_kept * hd, d)
        assert tuple(new["o"].weight.shape) == (d, kv_kept * n_rep * hd)
        assert tuple(new["gate"].weight.shape) == (c_kept, d)
        assert tuple(new["up"].weight.shape) == (c_kept, d)
        assert tuple(new["down"].weight.shape) == (d, c_kept)
        # cost of the removed units, by hand (method.md 9: a GQA group 2 d n_rep hd + 2 d hd, a
        # channel 3 d), plus the removed rows' biases
        g_removed, c_removed = n_kv - kv_kept, c_total - c_kept
        removed += g_removed * (2 * d * n_rep * hd + 2 * d * hd)
        removed += c_removed * 3 * d
        removed += g_removed * n_rep * hd * (old["q"].bias is not None)
        removed += g_removed * hd * ((old["k"].bias is not None) + (old["v"].bias is not None))
        removed += c_removed * ((old["gate"].bias is not None) + (old["up"].bias is not None))
        # compensation biases create a (d,) parameter where the linear had none
        for role in ("o", "down"):
            if f"{i}.{role}" in family.structure.bias and old[role].bias is None:
                removed -= d
                assert new[role].bias is not None and new[role].bias.shape == (d,)
        if hasattr(block, "n_heads"):  # TinyBlock (tiny, LLaDA stand-in) reads its counts
            assert (block.n_heads, block.n_kv) == (kv_kept * n_rep, kv_kept)
    assert _n_params(family.dense) - _n_params(family.compact) == removed


def test_masked_keeps_shapes_and_adds_biases(family):
    for i, (dense_block, block) in enumerate(zip(family.adapter.blocks(family.dense),
                                                 family.adapter.blocks(family.masked))):
        old, new = block_linears(family.adapter, dense_block), block_linears(family.adapter, block)
        for role in old:
            assert new[role].weight.shape == old[role].weight.shape
        # removed units zeroed, kept ones untouched, biases of q/k/v/gate/up with their rows (loops)
        n_q, n_kv, hd = family.expected
        n_rep = n_q // n_kv
        spans = []  # (role, axis, start, stop, kept)
        for g, kept in enumerate(family.structure.heads[i].tolist()):
            spans += [("q", 0, g * n_rep * hd, (g + 1) * n_rep * hd, kept),
                      ("o", 1, g * n_rep * hd, (g + 1) * n_rep * hd, kept),
                      ("k", 0, g * hd, (g + 1) * hd, kept), ("v", 0, g * hd, (g + 1) * hd, kept)]
        for j, kept in enumerate(family.structure.channels[i].tolist()):
            spans += [("gate", 0, j, j + 1, kept), ("up", 0, j, j + 1, kept), ("down", 1, j, j + 1, kept)]
        for role, axis, a, b, kept in spans:
            w_new = new[role].weight.detach().narrow(axis, a, b - a)
            w_old = old[role].weight.detach().narrow(axis, a, b - a)
            assert torch.equal(w_new, w_old) if kept else bool((w_new == 0).all()), (role, a, kept)
            if axis == 0 and old[role].bias is not None:
                b_new, b_old = new[role].bias.detach()[a:b], old[role].bias.detach()[a:b]
                assert torch.equal(b_new, b_old) if kept else bool((b_new == 0).all()), (role, "bias", a)
        for role in ("o", "down"):
            b = family.structure.bias.get(f"{i}.{role}")
            if b is None:
                assert (new[role].bias is None) == (old[role].bias is None)
                continue
            base = torch.zeros_like(b) if old[role].bias is None else old[role].bias.detach()
            torch.testing.assert_close(new[role].bias.detach(), base + b, rtol=0, atol=0)


# ---- save / load --------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["compact", "masked"])
def test_save_and_load_round_trip(family, form, tmp_path):
    model = family.compact if form == "compact" else family.masked
    folder = _save(family.adapter, family.key, model, family.structure, family.layout, form, tmp_path / form)
    marker = read_marker(folder)
    assert marker["structure"]["form"] == form
    loaded, _tok, adapter = load(folder, dtype="float32")
    assert adapter is MODELS[family.key]
    with torch.no_grad():
        got = adapter.logits(loaded, family.ids)
    assert (got - family.ref).abs().max().item() <= 1e-5
    blocks = adapter.blocks(loaded)
    for i, block in enumerate(blocks):
        lin = block_linears(adapter, block)
        kv_kept = int(family.structure.heads[i].sum())
        rows = kv_kept * family.layout.n_rep * family.layout.head_dim if form == "compact" else \
            family.layout.n_heads * family.layout.head_dim
        assert lin["q"].out_features == rows
        for role in ("o", "down"):
            if f"{i}.{role}" in family.structure.bias:
                assert lin[role].bias is not None, f"{form}: block {i} {role} lost its compensation bias"


# ---- the GQA grouping ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-gqa", "llama-9-3", "smollm2"])
def test_removing_group_zeroes_its_query_heads(name):
    _key, adapter, build, (n_q, n_kv, hd) = FAMILIES[name]
    model = build()
    n_rep = n_q // n_kv
    g = 1  # remove KV group 1 of block 0 only
    blocks = adapter.blocks(model)
    heads = [torch.ones(n_kv, dtype=torch.bool) for _ in blocks]
    heads[0][g] = False
    channels = [torch.ones(block_linears(adapter, b)["gate"].out_features, dtype=torch.bool) for b in blocks]
    dense = copy.deepcopy(model)
    apply_masked(model, adapter, Structure(heads=heads, channels=channels))
    lin, old = block_linears(adapter, blocks[0]), block_linears(adapter, adapter.blocks(dense)[0])
    for h in range(n_q):  # query head h belongs to KV group h // n_rep (plain loop, by hand)
        rows = slice(h * hd, (h + 1) * hd)
        if h // n_rep == g:
            assert (lin["q"].weight[rows] == 0).all() and (lin["o"].weight[:, rows] == 0).all()
        else:
            assert torch.equal(lin["q"].weight[rows], old["q"].weight[rows])
            assert torch.equal(lin["o"].weight[:, rows], old["o"].weight[:, rows])
    for kv in range(n_kv):
        rows = slice(kv * hd, (kv + 1) * hd)
        for role in ("k", "v"):
            assert bool((lin[role].weight[rows] == 0).all()) == (kv == g)
    # the family's own attention maps query head h to KV head h // n_rep: with k and v of group g
    # zero (and q of its heads zero, no biases), exactly those heads' outputs (the input of o) vanish
    if lin["v"].bias is None:
        seen = {}
        hook = lin["o"].register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0].detach()))
        with torch.no_grad():
            adapter.logits(model, _ids(model))
        hook.remove()
        x = seen["x"]  # (B, T, n_q * hd)
        for h in range(n_q):
            part = x[..., h * hd:(h + 1) * hd]
            assert bool((part == 0).all()) == (h // n_rep == g), f"{name}: query head {h}"


def test_llama_grouping_follows_repeat_kv():
    """Llama's repeat_kv sends query head h to KV head h // n_rep (the layout units assume)."""
    from transformers.models.llama.modeling_llama import repeat_kv

    x = torch.arange(3.0).view(1, 3, 1, 1)  # KV heads 0, 1, 2
    got = repeat_kv(x, 3).flatten().tolist()
    assert got == [h // 3 for h in range(9)]


# ---- validation and errors ----------------------------------------------------------------------
def test_structure_validation():
    ok = [torch.tensor([True, False])]
    ch = [torch.tensor([True, True, False])]
    Structure(heads=ok, channels=ch)
    with pytest.raises(ValueError, match=r"heads\[0\] keeps no"):
        Structure(heads=[torch.tensor([False, False])], channels=ch)
    with pytest.raises(ValueError, match=r"channels\[0\] keeps no"):
        Structure(heads=ok, channels=[torch.zeros(3, dtype=torch.bool)])
    with pytest.raises(ValueError, match="same blocks"):
        Structure(heads=ok + ok, channels=ch)
    with pytest.raises(ValueError, match="bool"):
        Structure(heads=[torch.tensor([1, 0])], channels=ch)
    with pytest.raises(ValueError, match="bias key '1.o'"):
        Structure(heads=ok, channels=ch, bias={"1.o": torch.zeros(4)})
    with pytest.raises(ValueError, match="bias key '0.q'"):
        Structure(heads=ok, channels=ch, bias={"0.q": torch.zeros(4)})
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        HeadLayout(6, 4, 8)


def test_structure_must_fit_the_model():
    adapter = MODELS["tiny-dlm"]
    model = adapter.standin()
    blocks = adapter.blocks(model)
    s = Structure(heads=[torch.ones(3, dtype=torch.bool) for _ in blocks],  # the model has 4 KV heads
                  channels=[torch.ones(128, dtype=torch.bool) for _ in blocks])
    with pytest.raises(ValueError, match="heads mask length is 3"):
        apply_compact(model, adapter, s)
    with pytest.raises(ValueError, match="structure has 1 blocks"):
        apply_masked(model, adapter, Structure(heads=[torch.ones(4, dtype=torch.bool)],
                                               channels=[torch.ones(128, dtype=torch.bool)]))


def test_head_layout_needs_metadata():
    plain = Adapter(key="plain", causal=True, shift=False, blocks_path="model.layers")  # no roles
    with pytest.raises(ValueError, match=r"model plain has no head metadata \(adapter roles lack"):
        head_layout(plain, MODELS["smollm2-135m"].standin())
    nometa = nn.Linear(2, 2)
    nometa.config = SimpleNamespace(hidden_size=8)
    with pytest.raises(ValueError, match="model tiny-dlm has no head metadata .*neither n_heads"):
        head_layout(MODELS["tiny-dlm"], nometa)


def test_record_and_structure_file(tmp_path):
    s = Structure(heads=[torch.tensor([True, False, True]), torch.tensor([False, True, False])],
                  channels=[torch.tensor([True, True, False, True]), torch.tensor([False, False, True, False])],
                  bias={"1.down": torch.tensor([1.0, -2.0]), "0.o": torch.tensor([0.5, 0.25])})
    rec = structure_record(s, HeadLayout(6, 3, 4), "compact")
    assert rec == {"form": "compact", "head_dim": 4, "n_rep": 2, "kv_groups": [2, 1], "query_heads": [4, 2],
                   "intermediate": [3, 1], "bias": ["0.o", "1.down"]}
    json.dumps(rec)
    with pytest.raises(ValueError, match="form must be one of"):
        structure_record(s, HeadLayout(6, 3, 4), "sparse")
    a, b = save_structure(tmp_path / "a", s), save_structure(tmp_path / "b", s)
    assert a.name == STRUCTURE_FILE and a.read_bytes() == b.read_bytes()
    back = load_structure(tmp_path / "a")
    assert [h.tolist() for h in back.heads] == [[True, False, True], [False, True, False]]
    assert [c.tolist() for c in back.channels] == [[True, True, False, True], [False, False, True, False]]
    assert back.bias["1.down"].tolist() == [1.0, -2.0] and back.bias["0.o"].tolist() == [0.5, 0.25]
    with pytest.raises(FileNotFoundError, match=STRUCTURE_FILE):
        load_structure(tmp_path)


def test_corrupt_or_missing_structure_file_names_the_folder(tmp_path):
    adapter = MODELS["tiny-dlm"]
    model = adapter.standin()
    layout = head_layout(adapter, model)
    s = _random_structure(model, adapter, layout.n_kv_heads)
    apply_compact(model, adapter, s)
    folder = _save(adapter, "tiny-dlm", model, s, layout, "compact", tmp_path / "ckpt")
    (folder / STRUCTURE_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match=rf"{folder}.*could not read .*{STRUCTURE_FILE}"):
        load(folder)
    (folder / STRUCTURE_FILE).unlink()
    with pytest.raises(RuntimeError, match=rf"{folder}.*{STRUCTURE_FILE} not found"):
        load(folder)
    # a record that disagrees with the saved masks is refused too
    save_structure(folder, s)
    marker = read_marker(folder)
    marker["structure"]["kv_groups"] = [9, 9]
    write_marker(folder, **marker)
    with pytest.raises(RuntimeError, match=r"kv_groups = \[9, 9\]"):
        load(folder)


def test_remote_code_families_refuse_compact_blocks():
    class _RemoteLLaDABlock(nn.Module):  # reads head counts from a shared config: no n_heads attribute
        pass

    with pytest.raises(ValueError, match="structured_form='masked'"):
        MODELS["llada-8b-base"].set_block_heads(_RemoteLLaDABlock(), 2, 2)
    block = nn.Module()
    block.self_attn = nn.Module()
    block.self_attn.num_heads = 28  # Dream's remote attention keeps per-module counts
    with pytest.raises(ValueError, match="structured_form='masked'"):
        MODELS["dream-7b-base"].set_block_heads(block, 14, 2)
    assert MODELS["llada-8b-base"].structured_form == MODELS["dream-7b-base"].structured_form == "masked"
    assert MODELS["tiny-dlm"].structured_form == MODELS["smollm2-135m"].structured_form == "compact"
    with pytest.raises(ValueError, match="structured_form must be one of"):
        dataclasses.replace(MODELS["tiny-dlm"], structured_form="sparse")
