"""srclib.pruning.calibration: windows (released-code sampling), noised passes, the generic catcher and
the one-shot / sequential loops on a TinyLM and a tiny transformers Llama."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import CHUNK, WINDOWS_PER_BATCH  # tests/ is on sys.path
from srclib.attention import record_mass
from srclib.pruning import calibration as cal
from srclib.models import MODELS
from srclib.models.base import Adapter
from srclib.models.tiny import TinyLM, test_config


class WordTokenizer:
    """Whitespace tokenizer: word -> stable id (enough for windows)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab) + 3) for w in text.split()]
        return {"input_ids": ids}


def _tiny(causal=False):
    torch.manual_seed(0)
    return TinyLM(test_config(causal=causal, shift=not causal)).eval()


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


# ---- windows -----------------------------------------------------------------------------------
def test_windows_follow_the_released_sampler():
    ids = list(range(100, 400))
    got = cal.sample_windows(ids, n_samples=5, seq_len=16, seed=7)
    random.seed(7)  # released code: module-level random.seed then random.randint per sample
    for row in got:
        i = random.randint(0, len(ids) - 16 - 1)
        assert row.tolist() == ids[i:i + 16]
    assert got.dtype == torch.long and got.shape == (5, 16)


def test_windows_with_bos_and_errors():
    got = cal.sample_windows(list(range(50)), n_samples=3, seq_len=8, seed=0, bos_id=1)
    assert (got[:, 0] == 1).all()
    rng = random.Random(0)
    for row in got:
        i = rng.randint(0, 50 - 7 - 1)
        assert row[1:].tolist() == list(range(i, i + 7))
    with pytest.raises(ValueError, match="seq_len=64"):
        cal.sample_windows(list(range(10)), 2, 64, 0)
    with pytest.raises(ValueError, match="n_samples"):
        cal.sample_windows(list(range(10)), 0, 4, 0)


def test_build_calibration_from_jsonl(tmp_path):
    path = tmp_path / "calibration.jsonl"
    lines = [{"source": "x", "text": " ".join(f"w{i}_{j}" for j in range(20))} for i in range(10)]
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    tok = WordTokenizer()
    c = cal.build_calibration(tok, path, n_samples=4, seq_len=12, seed=3, bos_id=0, windows_per_batch=2,
                              mass_chunk_size=CHUNK)
    assert c.windows.shape == (4, 12) and (c.windows[:, 0] == 0).all()
    c2 = cal.build_calibration(WordTokenizer(), path, n_samples=4, seq_len=12, seed=3, bos_id=0,
                               windows_per_batch=WINDOWS_PER_BATCH, mass_chunk_size=CHUNK)
    assert torch.equal(c.windows, c2.windows)
    with pytest.raises(FileNotFoundError, match="calibration corpus"):
        cal.read_texts(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="windows"):
        cal.Calibration(windows=torch.zeros(2, 4), seed=0, mass_chunk_size=CHUNK, windows_per_batch=WINDOWS_PER_BATCH)


# ---- noised passes -------------------------------------------------------------------------------
def test_noised_passes_shape_determinism_and_rate():
    windows = torch.randint(3, 60, (8, 400))
    grid = (0.1, 0.5, 1.0)
    a = cal.noised_passes(windows, grid, mask_id=63, eps=1e-3, seed=0, keep_first=True, noise="grid")
    b = cal.noised_passes(windows, grid, mask_id=63, eps=1e-3, seed=0, keep_first=True, noise="grid")
    assert a.shape == (8, 3, 400) and torch.equal(a, b)
    assert (a[:, :, 0] == windows[:, None, 0]).all()  # shifted: position 0 never masked
    masked = a == 63
    assert torch.equal(torch.where(masked, windows[:, None, :], a), windows[:, None, :].expand_as(a))
    for j, t in enumerate(grid):
        p = (1 - 1e-3) * t + 1e-3
        rate = masked[:, j, 1:].float().mean().item()
        assert abs(rate - p) < 0.03, (t, rate)
    c = cal.noised_passes(windows, grid, mask_id=63, eps=1e-3, seed=1, keep_first=True, noise="grid")
    assert not torch.equal(a, c)
    ends = cal.noised_passes(windows, (1.0,), mask_id=63, eps=1e-3, seed=0, keep_first=False, keep_ends=True,
                             noise="grid")
    assert (ends[:, 0, 0] != 63).all() and (ends[:, 0, -1] != 63).all() and (ends[:, 0, 1:-1] == 63).all()


# ---- catcher and loops ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "llama"])
def test_catcher_is_generic_and_stops_early(which):
    model = _tiny() if which == "tiny" else _llama()
    blocks = model.model.transformer.blocks if which == "tiny" else model.model.layers
    ids = torch.randint(3, 60, (3, 10))
    calls = []
    h = blocks[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    args, kwargs, mass = cal.catch_block_inputs(model, blocks, ids, chunk_size=CHUNK)
    h.remove()
    assert calls == [] and mass is None
    emb = model.get_input_embeddings()(ids)
    assert torch.equal(args[0], emb)  # block 0's input is the embedding
    # running the stored call reproduces block 0's output inside a normal forward
    seen = {}
    h = blocks[0].register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        mine = blocks[0](*args, **kwargs)
    h.remove()
    out = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    mine = mine[0] if isinstance(mine, tuple) else mine
    assert torch.equal(mine, out)
    _, _, mass = cal.catch_block_inputs(model, blocks, ids, record=True, chunk_size=CHUNK)
    assert mass.shape == (2, 3, 10)


def _adapter(which):
    if which == "tiny":
        return Adapter(key="t", causal=False, shift=True, blocks_path="model.transformer.blocks")
    return Adapter(key="l", causal=True, shift=False, blocks_path="model.layers")


@pytest.mark.parametrize("which", ["tiny", "llama"])
def test_sequential_without_pruning_sees_the_dense_inputs(which):
    """With nothing pruned, every block's linears see exactly what a plain forward feeds them."""
    model = _tiny() if which == "tiny" else _llama()
    adapter = _adapter(which)
    blocks = adapter.blocks(model)
    ids = torch.randint(3, 60, (4, 12))
    plain = {}
    handles = [lin.register_forward_hook(lambda m, a, o, k=(i, n): plain.setdefault(k, []).append(a[0]))
               for i, b in enumerate(blocks) for n, lin in adapter.prunable(b).items()]
    with torch.no_grad():
        model(input_ids=ids[:2], use_cache=False)
        model(input_ids=ids[2:], use_cache=False)
    for h in handles:
        h.remove()
    seq = {}
    batches = [cal.PassBatch(ids=ids[:2]), cal.PassBatch(ids=ids[2:])]
    current = {}

    def start(i):
        current["i"] = i
        return lambda n, x, w: seq.setdefault((i, n), []).append(x)

    cal.run_sequential(model, blocks, adapter.prunable, batches, start, lambda i: None, chunk_size=CHUNK)
    assert plain.keys() == seq.keys()
    for k in plain:
        for a, b in zip(plain[k], seq[k]):
            assert torch.allclose(a, b, atol=1e-6), k
    one = {}
    cal.run_one_shot(model, blocks, {f"{i}.{n}": lin for i, b in enumerate(blocks)
                                     for n, lin in adapter.prunable(b).items()},
                     batches, lambda k, x, w: one.setdefault(k, []).append(x), chunk_size=CHUNK)
    for (i, n), xs in plain.items():
        for a, b in zip(xs, one[f"{i}.{n}"]):
            assert torch.equal(a, b)


def test_one_shot_online_weights_come_from_the_same_forward():
    """One forward per batch; the fed weights are weight_fn of that forward's own mass."""
    model = _tiny()
    blocks = model.model.transformer.blocks
    ids = torch.randint(3, 60, (6, 16))
    batches = [cal.PassBatch(ids=ids[:3]), cal.PassBatch(ids=ids[3:])]
    n_forward = []
    h = model.register_forward_pre_hook(lambda m, a: n_forward.append(1))
    head = []
    h2 = model.model.transformer.ff_out.register_forward_hook(lambda m, a, o: head.append(1))
    fed, masses = [], []

    def weight_fn(mass):
        masses.append(mass)
        return torch.sigmoid(mass.sum(0))  # (B, T) any function of the mass

    cal.run_one_shot(model, blocks, {"q": blocks[0].q_proj}, batches,
                     lambda k, x, w: fed.append((x, w)), weight_fn=weight_fn, chunk_size=CHUNK)
    h.remove(), h2.remove()
    assert len(n_forward) == 2 and head == []  # no second forward, no LM head
    for (x, w), m, b in zip(fed, masses, batches):
        assert torch.equal(w, torch.sigmoid(m.sum(0)))
        assert m.shape == (2, b.ids.shape[0], 16) and x.shape == (b.ids.shape[0], 16, 64)


@pytest.mark.parametrize("which", ["tiny", "tiny_causal", "llama"])
def test_record_pass_mass_stops_once_the_last_mass_is_in(which, monkeypatch):
    """The mass-only forward ends right after the last block's attention mass is recorded: the
    mass is bit-identical to a full forward's, and the last block's attention output, output
    projection and MLP never run (nor anything after the blocks)."""
    model = _llama() if which == "llama" else _tiny(causal=which == "tiny_causal")
    adapter = _adapter("llama" if which == "llama" else "tiny")
    blocks = adapter.blocks(model)
    last = blocks[-1]
    mlp, out_proj = (last.mlp, last.self_attn.o_proj) if which == "llama" else (last.ff_out, last.attn_out)
    ids = torch.randint(3, 60, (3, 13))
    sdpa_calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        sdpa_calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    ran = {"mlp": 0, "o": 0, "norm": 0}
    norm = model.model.norm if which == "llama" else model.model.transformer.ln_f
    handles = [mlp.register_forward_hook(lambda *a: ran.__setitem__("mlp", ran["mlp"] + 1)),
               out_proj.register_forward_hook(lambda *a: ran.__setitem__("o", ran["o"] + 1)),
               norm.register_forward_hook(lambda *a: ran.__setitem__("norm", ran["norm"] + 1))]
    fwd = lambda x: adapter.logits(model, x)  # noqa: E731
    try:
        full = cal.record_pass_mass(model, blocks, ids, CHUNK, forward=fwd, stop_at_mass=False)
        assert ran == {"mlp": 1, "o": 1, "norm": 0} and len(sdpa_calls) == len(blocks)
        sdpa_calls.clear()
        ran.update(mlp=0, o=0)
        short = cal.record_pass_mass(model, blocks, ids, CHUNK, forward=fwd)
        assert ran == {"mlp": 0, "o": 0, "norm": 0} and len(sdpa_calls) == len(blocks) - 1
        with torch.no_grad(), record_mass(CHUNK) as rec:  # the whole model, LM head included
            model(input_ids=ids, use_cache=False)
        assert ran == {"mlp": 1, "o": 1, "norm": 1}  # no stop hook is left behind
    finally:
        for h in handles:
            h.remove()
    assert short.shape == (len(blocks), 3, 13)
    assert torch.equal(short, full) and torch.equal(short, rec.mass)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_record_pass_mass_stopped_equals_full_for_every_adapter_standin(key):
    """Every built-in adapter's stand-in (TinyLM, Llama, LLaDA's and Dream's layouts, through the
    adapter's own forward: e.g. Dream's 4-D mask): the stopped mass equals the whole-block one."""
    adapter = MODELS[key]
    model = adapter.standin()
    blocks = adapter.blocks(model)
    ids = torch.randint(3, 60, (2, 9))
    fwd = lambda x: adapter.logits(model, x)  # noqa: E731
    ran = []
    h = blocks[-1].register_forward_hook(lambda *a: ran.append(1))
    try:
        full = cal.record_pass_mass(model, blocks, ids, CHUNK, forward=fwd, stop_at_mass=False)
        short = cal.record_pass_mass(model, blocks, ids, CHUNK, forward=fwd)
    finally:
        h.remove()
    assert ran == [1]  # the whole last block ran only in the first
    assert short.shape == (len(blocks), 2, 9) and torch.equal(short, full)
