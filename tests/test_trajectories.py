"""Tests for srclib.decoding (greedy KV-cache decoding), srclib.trajectories (record, store, stats)
and the collect and variance stages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from srclib.decoding import greedy_decode
from srclib.models.tiny import TinyLM, test_config


def _causal_tiny(seed=0):
    torch.manual_seed(seed)
    return TinyLM(test_config(causal=True, shift=False)).eval()


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _naive_greedy(model, prompt, n):
    ids = prompt
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def _prompt(B=2, P=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(3, 63, (B, P), generator=g)
    p[:, 0] = 0
    return p


# ---- greedy decoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("make", [_causal_tiny, _tiny_llama], ids=["tiny", "hf-llama"])
@pytest.mark.parametrize("P", [1, 5])
def test_greedy_cache_matches_naive(make, P):
    model = make()
    prompt = _prompt(P=P)
    calls, prefills = [], []
    out = greedy_decode(model, prompt, max_new_tokens=7,
                        on_step=lambda s, ids, info: calls.append((s, ids.clone(), info)),
                        on_prefill=lambda ids: prefills.append(ids))
    assert torch.equal(out, _naive_greedy(model, prompt, 7))
    assert [c[0] for c in calls] == list(range(7))
    for s, ids, info in calls:
        assert ids.shape == (2, P + s) and info["query_pos"] == P - 1 + s
        assert torch.equal(info["x"][:, :-1], ids) and torch.equal(info["x"][:, -1], info["next_token"])
    assert len(prefills) == (1 if P > 1 else 0)


def test_greedy_eos_stops():
    model = _causal_tiny()
    prompt = _prompt(B=1)
    free = greedy_decode(model, prompt, max_new_tokens=6)
    eos = int(free[0, prompt.shape[1] + 2])  # the third generated token: declare it eos
    out = greedy_decode(model, prompt, max_new_tokens=6, eos_id=eos)
    first = (free[0, prompt.shape[1]:] == eos).nonzero()[0].item()
    assert out.shape[1] == prompt.shape[1] + first + 1 and out[0, -1].item() == eos


def test_greedy_validation():
    model = _causal_tiny()
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_decode(model, _prompt(), max_new_tokens=0)
    with pytest.raises(ValueError, match="P >= 1"):
        greedy_decode(model, _prompt()[:, :0], max_new_tokens=2)


# =============================================================================================
# trajectories
# =============================================================================================
import json  # noqa: E402

import numpy as np  # noqa: E402

from srclib.attention import record_mass  # noqa: E402
from srclib.models.tiny_adapter import TinyAdapter  # noqa: E402
from srclib.sinks import dominant_positions  # noqa: E402
from srclib import paths  # noqa: E402
from srclib.params import ModelEntry, VarianceParams  # noqa: E402
from srclib.stages import collect, variance  # noqa: E402
from srclib.trajectories.record import collect_trajectory, prompt_batch, random_init_twin  # noqa: E402
from srclib.trajectories.stats import sink_statistics  # noqa: E402
from srclib.trajectories.store import (  # noqa: E402
    Trajectory,
    load_trajectory,
    random_init_name,
    save_trajectory,
)

from helpers import AD_DLM, CHUNK, MASK  # noqa: E402  (tests/ is on sys.path)
from helpers import collect_params as _cfg  # noqa: E402
from helpers import tiny_dlm as _dlm  # noqa: E402
from helpers import word_texts as _texts  # noqa: E402
from helpers import word_tokenizer as _word_tokenizer  # noqa: E402

H = 4  # heads of test_config
AD_DLM_NOSHIFT = TinyAdapter(key="t-dlm0", causal=False, shift=False)
AD_AR = TinyAdapter(key="t-ar", causal=True, shift=False)
SINK = VarianceParams(rule="zscore", alpha=5.0, kappa=2.0, eps=0.0, stability_threshold=0.5)


def _record(model, ids):
    with torch.no_grad(), record_mass(chunk_size=7) as rec:
        model(input_ids=ids)
    return rec.mass  # (L, B, T)


# ---- DLM --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [True, False])
def test_dlm_trajectory_pairs_each_step_with_its_forward(shift):
    model = _dlm(shift)
    prompt = _prompt(B=2, P=6)
    traj = collect_trajectory(model, AD_DLM if shift else AD_DLM_NOSHIFT, None, prompt, _cfg())
    S, L, B, T = traj.shape
    assert (S, L, B, T) == (8, 2, 2, 14) and traj.kind == "dlm"
    # row-sum invariant: every query row sums to 1, so sum_k m_k = H * T per layer
    assert torch.allclose(traj.mass.sum(-1), torch.full((S, L, B), float(H * T)), rtol=1e-4)
    # step 0 saw [prompt, MASK * G]; the last step's ids + its commits = the final ids
    assert torch.equal(traj.step_ids[0, :, :6], prompt) and (traj.step_ids[0, :, 6:] == MASK).all()
    assert not (traj.final_ids == MASK).any()
    for s in (0, 3, 7):  # the mass of step s is the attention of the forward over step_ids[s]
        assert torch.allclose(traj.mass[s], _record(model, traj.step_ids[s]), atol=1e-4)
    assert traj.meta["has_bos"] and traj.meta["mask_id"] == MASK and traj.meta["shift"] == shift


def test_dlm_cfg_keeps_conditional_rows():
    model = _dlm()
    prompt = _prompt(B=2, P=6)
    traj = collect_trajectory(model, AD_DLM, None, prompt, _cfg(cfg_scale=1.0))
    assert traj.shape[2] == 2
    assert torch.allclose(traj.mass[2], _record(model, traj.step_ids[2]), atol=1e-4)


def _commit_step(traj: Trajectory) -> torch.Tensor:
    """(B, T) the step at which each position was committed (-1: never [MASK], i.e. the prompt)."""
    return (traj.step_ids == MASK).sum(0) - 1


def test_dlm_random_remasking_seeded():
    model = _dlm()
    prompt = _prompt(B=1, P=6)
    a = collect_trajectory(model, AD_DLM, None, prompt, _cfg(remasking="random", seed=3))
    b = collect_trajectory(model, AD_DLM, None, prompt, _cfg(remasking="random", seed=3))
    c = collect_trajectory(model, AD_DLM, None, prompt, _cfg(remasking="random", seed=4))
    greedy = collect_trajectory(model, AD_DLM, None, prompt, _cfg(remasking="low_confidence", seed=3))
    # the same seed: the same commit order, ids and masses
    assert torch.equal(a.step_ids, b.step_ids) and torch.equal(a.mass, b.mass)
    # one position committed per step, each once
    assert sorted(_commit_step(a)[0, 6:].tolist()) == list(range(8))
    # another seed commits in another order: the seed reaches the sampler
    assert not torch.equal(_commit_step(a), _commit_step(c))
    # random remasking is not low-confidence remasking: the commit order differs
    assert not torch.equal(_commit_step(a), _commit_step(greedy))


# ---- AR ---------------------------------------------------------------------------------------
def _plant_bos_sink(model, strength=6.0):
    """Every query attends to the key of token 0 ([BOS]) only: token 0 has a private embedding
    direction (dim 1), every token a constant feature (dim 0); q reads dim 0, k reads dim 1, both
    written to the lowest-frequency RoPE pair (so q.k stays positive at every distance)."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.n_heads
    lowfreq = [hd // 2 - 1, hd - 1]
    with torch.no_grad():
        wte = model.model.transformer.wte.weight
        wte[:, :2] = 0.0
        wte[:, 0] = 1.0
        wte[0] = 0.0
        wte[0, 1] = 10.0
        for blk in model.model.transformer.blocks:
            blk.q_proj.weight.zero_()
            blk.k_proj.weight.zero_()
            for h in range(cfg.n_heads):
                for j in lowfreq:
                    blk.q_proj.weight[h * hd + j, 0] = strength
                    blk.k_proj.weight[h * hd + j, 1] = strength
    return model


def test_ar_trajectory_planted_sink_at_position_0():
    model = _plant_bos_sink(_causal_tiny())
    prompt = _prompt(B=2, P=6)
    traj = collect_trajectory(model, AD_AR, None, prompt, _cfg())
    S, L, B, T = traj.shape
    assert (S, L, B, T) == (8, 2, 2, 14) and traj.kind == "ar"
    assert traj.valid_len.tolist() == list(range(6, 14))
    # the newest query's row sums to 1 per head: H per layer, zero beyond the valid keys
    assert torch.allclose(traj.mass.sum(-1), torch.full((S, L, B), float(H)), atol=1e-4)
    assert (traj.mass[0, :, :, 6:] == 0).all()
    assert (traj.mass[:, :, :, 0] > 0.9 * H).all()  # the planted sink holds the mass
    st = sink_statistics(traj, SINK)
    for variant in ("newest", "prefix_raw", "prefix_norm"):
        g = st["variants"][variant]["global"]
        assert g["variance"] == 0.0 and g["dominant_at_0_frac"] == 1.0, variant
        assert g["persistence_pos0"] == 1.0 and g["pos0_stable_frac"] == 1.0
    g = st["variants"]["newest"]["global"]
    assert g["jaccard"] == 1.0 and g["sinks_per_step"] == 1.0
    assert st["stable_sinks"]["newest"]["global"] == [[0], [0]]


def test_ar_prefix_mass_equals_full_prefix_forward():
    model = _causal_tiny()
    prompt = _prompt(B=2, P=5)
    traj = collect_trajectory(model, AD_AR, None, prompt, _cfg(prompt_tokens=5, gen_length=6, steps=6, block_length=6))
    raw, norm = traj.prefix_mass(False), traj.prefix_mass(True)
    for s in range(6):
        n = 5 + s  # keys (and queries) of the prefix after step s
        full = _record(model, traj.final_ids[:, :n])  # (L, B, n): one forward over the whole prefix
        assert torch.allclose(raw[s, :, :, :n], full, atol=1e-4)
        assert (raw[s, :, :, n:] == 0).all()
        count = torch.arange(n, 0, -1, dtype=torch.float32)  # queries that see key k: n - k
        assert torch.allclose(norm[s, :, :, :n], full / count, atol=1e-5)
    with pytest.raises(ValueError, match="AR"):
        collect_trajectory(_dlm(), AD_DLM, None, prompt, _cfg(prompt_tokens=5)).prefix_mass()


def test_ar_hf_llama_collects():
    model = _tiny_llama()
    ad = TinyAdapter(key="llama", causal=True, shift=False)
    traj = collect_trajectory(model, ad, None, _prompt(B=1, P=4),
                              _cfg(prompt_tokens=4, gen_length=3, steps=3, block_length=3))
    assert traj.shape == (3, 2, 1, 7)
    assert torch.allclose(traj.mass.sum(-1), torch.full((3, 2, 1), 4.0), atol=1e-4)


# ---- storage ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dlm", "ar"])
def test_save_load_round_trip(tmp_path, kind):
    if kind == "dlm":
        traj = collect_trajectory(_dlm(), AD_DLM, None, _prompt(B=2, P=6), _cfg())
    else:
        traj = collect_trajectory(_causal_tiny(), AD_AR, None, _prompt(B=2, P=6), _cfg())
    path = save_trajectory(traj, tmp_path / "sub" / "t.safetensors")
    back = load_trajectory(path)
    assert back.meta == traj.meta and back.kind == kind
    assert torch.allclose(back.mass, traj.mass, atol=2e-3)
    assert torch.equal(back.valid_len, traj.valid_len) and torch.equal(back.final_ids, traj.final_ids)
    assert torch.equal(back.prompt_ids, traj.prompt_ids)
    if kind == "dlm":
        assert torch.equal(back.step_ids, traj.step_ids) and back.prefill_mass is None
    else:
        assert torch.allclose(back.prefill_mass, traj.prefill_mass, atol=2e-3) and back.step_ids is None
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))  # atomic: no temp file left


def test_storage_keeps_the_dominant_position_of_near_uniform_mass(tmp_path):
    g = torch.Generator().manual_seed(0)
    S, L, B, T = 5, 2, 3, 40
    mass = 4.0 + 1e-3 * torch.rand(S, L, B, T, generator=g)  # random-init-like: ~1e-4 relative spread
    assert (dominant_positions(mass.half().float()) != dominant_positions(mass)).any()  # raw f16 fails
    traj = Trajectory(meta={"kind": "dlm", "mask_id": MASK}, mass=mass,
                      valid_len=torch.full((S,), T), prompt_ids=torch.zeros(B, 2, dtype=torch.long),
                      final_ids=torch.zeros(B, T, dtype=torch.long),
                      step_ids=torch.zeros(S, B, T, dtype=torch.long))
    back = load_trajectory(save_trajectory(traj, tmp_path / "u.safetensors"))
    assert torch.equal(dominant_positions(back.mass), dominant_positions(mass))
    assert (back.mass - mass).abs().max() < 1e-6


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="collect"):
        load_trajectory(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a srclib trajectory"):
        load_trajectory(tmp_path / "x.safetensors")


# ---- statistics on a hand-built trajectory -------------------------------------------------------
def _synthetic(positions, T=8, mask_from=None):
    """One layer, one prompt; step s has mass 1 everywhere and 21 at positions[s]."""
    S = len(positions)
    mass = torch.ones(S, 1, 1, T)
    for s, p in enumerate(positions):
        mass[s, 0, 0, p] = 21.0
    ids = torch.full((S, 1, T), 5, dtype=torch.long)
    if mask_from is not None:  # step s: positions >= mask_from[s] are [MASK]
        for s, m in enumerate(mask_from):
            ids[s, 0, m:] = MASK
    return Trajectory(meta={"kind": "dlm", "mask_id": MASK, "model": "syn", "random_init": False},
                      mass=mass, valid_len=torch.full((S,), T), prompt_ids=torch.zeros(1, 2, dtype=torch.long),
                      final_ids=torch.zeros(1, T, dtype=torch.long), step_ids=ids)


def test_statistics_known_answers():
    traj = _synthetic([0, 2, 4, 2], mask_from=[3, 4, 5, 6])
    st = sink_statistics(traj, SINK)
    g = st["variants"]["full"]["global"]
    # one layer: global = that layer (the global stats also keep the per-prompt values)
    assert st["variants"]["full"]["layers"][0] == {k: v for k, v in g.items() if k != "per_prompt"}
    # positions 0, 2, 4, 2: mean 2, population variance 2 -> 2 / 8^2
    assert g["variance"] == pytest.approx(2 / 64)
    # sink sets {0}, {2}, {4}, {2}: consecutive Jaccard 0, 0, 0
    assert g["jaccard"] == 0.0 and g["sinks_per_step"] == 1.0
    assert g["dominant_share_x_uniform"] == pytest.approx(21 / 28 * 8)
    assert g["dominant_at_0_frac"] == 0.25
    # persistence: pos 2 -> 2/4 (stable at threshold 0.5), pos 0 and 4 -> 1/4
    assert g["persistence_max"] == 0.5 and g["persistence_pos0"] == 0.25
    assert g["n_stable"] == 1.0 and st["stable_sinks"]["full"]["global"] == [[2]]
    assert g["persistence_hist"][2] == pytest.approx(2 / 3) and g["persistence_hist"][5] == pytest.approx(1 / 3)
    # mask classes: step 0 masks 3.., step 1 masks 4.., step 2 masks 5.., step 3 masks 6..
    # dominant 0 (content), 2 (content), 4 (content at step 2: 4 < 5), 2 (content)
    assert g["dominant_on_mask_frac"] == 0.0 and g["dominant_on_content_frac"] == 1.0
    # fresh at step s: masked at s-1, not at s -> step 1: {3}, step 2: {4}, step 3: {5}; dominant 4 at step 2
    assert g["dominant_on_fresh_frac"] == pytest.approx(1 / 3)
    assert g["sinks_per_step_fresh"] == pytest.approx(1 / 4)


def test_statistics_dominant_on_mask_and_ratio():
    traj = _synthetic([7, 7, 7], mask_from=[4, 4, 4])  # the sink sits on a [MASK] key
    g = sink_statistics(traj, SINK)["variants"]["full"]["global"]
    assert g["dominant_on_mask_frac"] == 1.0 and g["variance"] == 0.0 and g["variance_mask"] == 0.0
    # mask keys 4..7 hold 24 of 28 mass units over 4 of 8 keys: ratio (24/28) / (4/8)
    assert g["mask_mass_ratio"] == pytest.approx((24 / 28) / 0.5)
    # restricted to content keys (0..3, all equal mass) the dominant is position 0 at every step
    assert g["variance_content"] == 0.0


def test_statistics_validation():
    traj = _synthetic([0, 1])
    with pytest.raises(ValueError, match="allowed rules"):
        sink_statistics(traj, dataclasses.replace(SINK, rule="nope"))
    with pytest.raises(ValueError, match="stability_threshold"):
        sink_statistics(traj, dataclasses.replace(SINK, stability_threshold=1.5))


# ---- random-init twin ---------------------------------------------------------------------------
def test_random_init_twin_seeded():
    model = _causal_tiny(seed=0)
    state = torch.random.get_rng_state()
    a, b = random_init_twin(model, 7), random_init_twin(model, 7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    pa, pb, pm = (dict(m.named_parameters()) for m in (a, b, model))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(pa[k], pm[k]) for k in pa)
    assert not a.training and random_init_name("x") == "x-randinit"


# ---- prompts ------------------------------------------------------------------------------------
def test_prompt_batch_left_truncates_and_keeps_bos():
    tok = _word_tokenizer(bos=True)
    ids, used = prompt_batch(tok, _texts(), prompt_tokens=6, n_prompts=2)
    # text 0 (w0..w9): [BOS] + last 5 words w5..w9; text 1 (3 words) is skipped; text 2: w2..w6
    assert used == [0, 2]
    assert ids.tolist() == [[0, 9, 10, 11, 12, 13], [0, 6, 7, 8, 9, 10]]
    with pytest.raises(ValueError, match=r"only 3 of 4 prompts"):
        prompt_batch(tok, _texts(), prompt_tokens=6, n_prompts=4)


def test_prompt_batch_without_bos():
    ids, used = prompt_batch(_word_tokenizer(bos=False), _texts(), prompt_tokens=6, n_prompts=3)
    assert used == [0, 2, 3] and ids[0].tolist() == [8, 9, 10, 11, 12, 13]


# ---- stages end to end --------------------------------------------------------------------------
def test_collect_and_variance_stages(tmp_path):
    prompts = paths.prompts_file(tmp_path)
    prompts.parent.mkdir(parents=True)
    prompts.write_text("".join(json.dumps({"id": i, "source": "s", "text": t}) + "\n"
                               for i, t in enumerate(_texts())))
    built = {"t-dlm": (_dlm(), AD_DLM), "t-ar": (_causal_tiny(), AD_AR)}

    def loader(key, dtype):
        model, ad = built[key]
        return model.to(dtype), _word_tokenizer(bos=True), ad

    entries = {k: ModelEntry(dtype="float32", device="cpu") for k in built}
    cfg = _cfg(models=["t-dlm", "t-ar"], n_prompts=2, gen_length=4, steps=4, block_length=4, chunk_size=8,
               random_init_control=True)
    out = collect.collect_models(cfg, entries, root=tmp_path, loader=loader)
    runs = ["t-dlm", "t-dlm-randinit", "t-ar", "t-ar-randinit"]
    assert sorted(out.runs) == sorted(runs) and sorted(out.trajectories) == sorted(runs)
    assert all(paths.trajectory_file(r, tmp_path).is_file() for r in runs)
    # one folder and one metrics file per model (DVC: one collect instance per model)
    assert paths.trajectory_file("t-dlm-randinit", tmp_path).parent == tmp_path / "trajectories" / "t-dlm"
    by_model = {k: json.loads(paths.collect_metrics(k, tmp_path).read_text()) for k in ("t-dlm", "t-ar")}
    assert by_model == out.metrics
    assert sorted(by_model["t-ar"]["runs"]) == ["t-ar", "t-ar-randinit"]
    metrics = by_model["t-ar"]
    assert metrics["runs"]["t-ar"]["kind"] == "ar" and metrics["runs"]["t-ar-randinit"]["random_init"]
    assert "models" not in metrics["provenance"]["params"]["collect"]
    assert metrics["provenance"]["params"]["collect"]["steps"] == 4
    assert metrics["provenance"]["params"]["models.t-ar"]["dtype"] == "float32"
    assert len(out.samples) == 8
    assert "**t-dlm** (DLM" in out.interpretation and "**t-ar-randinit** (AR, random init)" in out.interpretation
    assert "the head with the largest share of its attention on position 0 is layer" in out.interpretation

    res = variance.sink_variance(SINK, root=tmp_path)
    ordered = list(paths.trajectory_runs(tmp_path))  # the stage reads trajectories/ in file order
    assert list(res.main["run"]) == ordered and set(res.main["variant"]) == {"full", "newest"}
    assert len(res.table) == 2 * 3 + 2 * 4 * 3  # DLM: 1 variant x (global + 2 layers); AR: 4 variants
    assert set(res.table.loc[res.table["biased"], "variant"]) == {"prefix_raw", "prefix_norm"}
    stats = json.loads(paths.sink_stats("t-ar", tmp_path).read_text())
    assert set(stats["variants"]) == {"newest", "prefix_raw", "prefix_norm", "prefix_expected"}
    assert stats["settings"] == dataclasses.asdict(SINK)
    v = json.loads(paths.variance_metrics(tmp_path).read_text())
    assert set(v["runs"]) == set(runs) and "git_commit" in v["provenance"]
    assert v["provenance"]["params"]["variance"] == dataclasses.asdict(SINK)
    p = res.plots["t-dlm"]
    assert p["global_mass_norm"].shape == (2, 4, 10) and np.allclose(p["global_mass_norm"].sum(-1), 1)
    assert p["dominant"]["full"].shape == (2, 4) and p["variance_per_layer"].shape == (2,)
    # metrics: scalars only (dvc metrics show), the new ones present
    for r in runs:
        g = v["runs"][r]
        assert all(isinstance(x, (int, float)) for x in g.values()), r
        for key in ("bos_share", "sink_step_frac", "variance_sink_steps", "variance_std", "head_bos_share_max",
                    "head_strength_max", "n_prompts"):
            assert key in g, (r, key)
    assert "dominant_at_0_frac_expected" in v["runs"]["t-ar"]
    assert "dominant_at_0_frac_expected" not in v["runs"]["t-dlm"]
    # units: per-prompt values, heads, twins, AR offsets
    u = json.loads(paths.variance_units(tmp_path).read_text())
    assert u == res.units and list(u) == ["runs"] and set(u["runs"]) == set(runs)
    assert u["runs"]["t-ar"]["twin"] == "t-ar-randinit" and u["runs"]["t-ar-randinit"]["twin"] is None
    for r in runs:
        ur, st = u["runs"][r], res.stats[r]
        assert (ur["kind"], ur["model"], ur["n_prompts"]) == (st["meta"]["kind"], r.removesuffix("-randinit"), 2)
        assert set(ur["per_prompt"]) == set(st["variants"])
        for vname, stat in ur["per_prompt"].items():
            glob = st["variants"][vname]["global"]
            for key, vals in stat.items():
                assert len(vals) == 2
                ok = [x for x in vals if x is not None]
                assert glob[key] == pytest.approx(np.mean(ok) if ok else 0.0), (r, vname, key)
        assert np.array(ur["heads"]["bos_share"]).shape == (2, H, 2) == np.array(ur["heads"]["strength"]).shape
        assert v["runs"][r]["head_bos_share_max"] == pytest.approx(np.array(ur["heads"]["bos_share"]).mean(-1).max())
    hist = u["runs"]["t-ar"]["offset_hist"]
    assert set(hist) == {"0", "1", "2", "3", ">=4", "at_pos0"}
    assert sum(hist[b] for b in ("0", "1", "2", "3", ">=4")) == pytest.approx(1.0)
    assert "offset_hist" not in u["runs"]["t-dlm"]
    # the interpretation quotes mean ± standard error over prompts, beside the twin
    ppv = u["runs"]["t-dlm"]["per_prompt"]["full"]["variance"]
    se = np.std(ppv, ddof=1) / np.sqrt(2)
    assert f"{np.mean(ppv):.4f} ± {se:.4f}" in res.interpretation
    assert "random-init twin t-dlm-randinit" in res.interpretation and "standard error" in res.interpretation
    assert "steps with a sink" in res.interpretation and "not evidence" in res.interpretation
    assert set(res.heads["run"]) == set(runs) and len(res.heads) == 4 * 2 * H

    # the runs params collect names (issue 25): exactly those, a missing one named
    stale = paths.trajectory_file("old", tmp_path)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(paths.trajectory_file("t-ar", tmp_path).read_bytes())
    assert "old" in paths.trajectory_runs(tmp_path)
    res2 = variance.sink_variance(SINK, root=tmp_path, collect=cfg)
    assert sorted(res2.metrics["runs"]) == sorted(runs)
    assert sorted(variance.collected_runs(dataclasses.replace(cfg, random_init_control=False),
                                          tmp_path)) == ["t-ar", "t-dlm"]
    paths.trajectory_file("t-ar-randinit", tmp_path).unlink()
    with pytest.raises(FileNotFoundError, match="t-ar-randinit"):
        variance.sink_variance(SINK, root=tmp_path, collect=cfg)
    with pytest.raises(FileNotFoundError, match="'t-new'.*t-new.safetensors"):
        variance.sink_variance(SINK, root=tmp_path, collect=dataclasses.replace(cfg, models=["t-dlm", "t-new"]))


# ---- per-head shares, format 2 ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dlm", "ar"])
def test_collected_head_shares_agree_with_the_layer_mass(kind, tmp_path):
    """sum_h (BOS share of head h) x (queries) = the layer's mass on key 0, at every step; strength
    in [1, keys]; the shares survive the file round trip."""
    if kind == "dlm":
        traj = collect_trajectory(_dlm(), AD_DLM, None, _prompt(B=2, P=6), _cfg())
        n_q = torch.full((8,), 14.0)
    else:
        traj = collect_trajectory(_plant_bos_sink(_causal_tiny()), AD_AR, None, _prompt(B=2, P=6), _cfg())
        n_q = torch.ones(8)  # the newest query only
    S, L, B, T = traj.shape
    assert traj.head_bos_share.shape == (S, L, H, B) == traj.head_top_share.shape
    from_heads = traj.head_bos_share.sum(2) * n_q[:, None, None]  # (S, L, B)
    torch.testing.assert_close(from_heads, traj.mass[..., 0], atol=1e-4, rtol=1e-4)
    strength = traj.head_top_share * traj.valid_len.float()[:, None, None, None]
    assert (strength >= 1 - 1e-4).all() and (strength <= traj.valid_len.float()[:, None, None, None] + 1e-4).all()
    if kind == "ar":
        assert (traj.head_bos_share > 0.9).all()  # the planted sink, in every head
    back = load_trajectory(save_trajectory(traj, tmp_path / "h.safetensors"))
    assert (torch.equal(back.head_bos_share, traj.head_bos_share)
            and torch.equal(back.head_top_share, traj.head_top_share))


def test_old_format_file_is_refused_naming_it(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from srclib.trajectories.store import META_KEY, TrajectoryFileError, check_trajectory_file

    path = save_trajectory(_synthetic([0, 1]), tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        md = dict(fh.metadata())
    assert list(md) == [META_KEY]  # the only key: the format is in the meta
    meta = json.loads(md[META_KEY])
    assert meta.pop("format") == 2
    save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(meta)})  # format 1: no format
    for read in (load_trajectory, check_trajectory_file):
        with pytest.raises(TrajectoryFileError, match=r"old\.safetensors has format 1.*rerun the collect stage"):
            read(path)


def test_files_written_with_a_format_key_are_still_read(tmp_path):
    """Format-2 files written before the format moved into the meta carry a second key."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from srclib.trajectories.store import FORMAT_KEY, META_KEY

    traj = _synthetic([0, 1])
    path = save_trajectory(traj, tmp_path / "two.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[META_KEY])
    del meta["format"]
    save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(meta), FORMAT_KEY: "2"})
    back = load_trajectory(path)
    assert torch.allclose(back.mass, traj.mass) and back.meta == meta  # read, format from the second key


def test_trajectory_files_are_byte_identical_across_processes(tmp_path):
    """safetensors writes its metadata from a hash map whose order changes between processes: with
    one metadata key the same trajectory gives the same bytes in every process (the collect metrics
    record the file's sha256)."""
    import subprocess
    import sys

    code = ("import sys, torch; sys.path.insert(0, sys.argv[2]); from test_trajectories import _synthetic; "
            "from srclib.trajectories.store import save_trajectory; save_trajectory(_synthetic([0, 1]), sys.argv[1])")
    tests = str(Path(__file__).parent)
    digests = set()
    for i in range(6):
        out = tmp_path / f"t{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(out), tests], check=True, cwd=tests)
        digests.add(out.read_bytes())
    assert len(digests) == 1


def test_head_statistics_known_answer():
    """Head 0 puts all its mass on key 0, head 1 attends uniformly: BOS share 1 and strength T for
    head 0, BOS share 1/T and strength 1 for head 1 (recorded through the real recorder)."""
    from srclib.trajectories.stats import head_statistics

    B, Hh, T, S = 2, 2, 5, 3
    q = torch.zeros(B, Hh, T, 4)  # zero queries: uniform attention unless masked
    mask = torch.zeros(1, Hh, T, T)
    mask[:, 0, :, 1:] = float("-inf")  # head 0 sees key 0 only
    bos, top = [], []
    for _ in range(S):
        with record_mass(per_head=True, chunk_size=CHUNK) as rec:
            torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        bos.append(rec.bos_share.permute(0, 2, 1))  # (L=1, H, B)
        top.append(rec.top_share.permute(0, 2, 1))
    traj = _synthetic([0] * S, T=T)
    traj.head_bos_share, traj.head_top_share = torch.stack(bos), torch.stack(top)  # (S, 1, H, B=2)
    traj.mass = traj.mass.expand(S, 1, B, T).clone()
    traj.prompt_ids, traj.final_ids = torch.zeros(B, 2, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
    traj.step_ids = traj.step_ids.expand(S, B, T).clone()
    h = head_statistics(traj)
    np.testing.assert_allclose(h["bos_share"], [[[1.0, 1.0], [1 / T, 1 / T]]], rtol=1e-6)
    np.testing.assert_allclose(h["strength"], [[[T, T], [1.0, 1.0]]], rtol=1e-6)
    assert h["bos_share_max"] == pytest.approx(1.0) and h["bos_share_argmax"] == [0, 0]
    assert h["strength_max"] == pytest.approx(T) and h["strength_argmax"] == [0, 0]
    st = sink_statistics(traj, SINK)
    assert st["heads"] == h
    assert head_statistics(_synthetic([0, 1])) is None  # not recorded


# ---- AR known answers: prefix_expected, offsets ---------------------------------------------------
def _uniform_causal_ar(B=3, P=4, G=6, L=2, Hh=2, noise=0.0, seed=0):
    """An AR trajectory of uniform causal attention (every row of every head sums to 1 over the keys
    it sees); noise > 0 perturbs each row (a random-init-like model)."""
    g = torch.Generator().manual_seed(seed)
    T = P + G

    def rows(q_from, q_to):  # (L, B, T) column mass of queries q_from..q_to-1
        m = torch.zeros(L, B, T)
        for q in range(q_from, q_to):
            w = torch.ones(L, Hh, B, q + 1) * (1 + noise * torch.rand(L, Hh, B, q + 1, generator=g))
            m[..., : q + 1] += (w / w.sum(-1, keepdim=True)).sum(1)
        return m

    mass = torch.stack([rows(P - 1 + s, P + s) for s in range(G)])  # (S, L, B, T): the newest query
    meta = {"kind": "ar", "model": "syn-ar", "random_init": True, "has_bos": True}
    return Trajectory(meta=meta, mass=mass, valid_len=P + torch.arange(G),
                      prompt_ids=torch.zeros(B, P, dtype=torch.long),
                      final_ids=torch.zeros(B, T, dtype=torch.long), prefill_mass=rows(0, P - 1))


def test_prefix_expected_is_one_for_uniform_causal_attention():
    traj = _uniform_causal_ar()
    ex = traj.exists()[:, None, None, :].expand(traj.shape)
    pe = traj.prefix_expected()
    torch.testing.assert_close(pe[ex], torch.ones(int(ex.sum())), atol=1e-5, rtol=1e-5)
    assert (pe[~ex] == 0).all()
    # the raw column sums are the expectation itself: H * sum_{q=k}^{n-1} 1/(q+1)
    raw = traj.prefix_mass(False)
    n = int(traj.valid_len[-1])
    want = torch.tensor([2 * sum(1 / (q + 1) for q in range(k, n)) for k in range(n)])
    torch.testing.assert_close(raw[-1, 0, 0, :n], want, atol=1e-5, rtol=1e-5)


def test_prefix_expected_removes_the_key0_bias_of_a_random_model():
    traj = _uniform_causal_ar(B=4, G=12, noise=0.5)
    st = sink_statistics(traj, SINK)
    v = st["variants"]
    assert v["prefix_raw"]["global"]["dominant_at_0_frac"] == 1.0  # biased: key 0 wins by construction
    assert v["prefix_norm"]["global"]["dominant_at_0_frac"] == 1.0
    assert v["prefix_expected"]["global"]["dominant_at_0_frac"] < 0.5  # not forced to position 0
    pe = traj.prefix_expected()[traj.exists()[:, None, None, :].expand(traj.shape)]
    assert 0.7 < float(pe.min()) and float(pe.max()) < 1.3  # ~1 everywhere


def test_ar_offsets_known_answer():
    """The newest query's dominant key 2 tokens behind it at every step except one at key 0."""
    traj = _uniform_causal_ar(B=2, G=5)
    for s in range(5):
        q = int(traj.valid_len[s]) - 1
        traj.mass[s, :, :, q - 2] += 3.0
    traj.mass[4, :, 1, 0] += 10.0  # prompt 1, last step: position 0 (offset q)
    g = sink_statistics(traj, SINK)["variants"]["newest"]["global"]
    pp = g["per_prompt"]
    assert pp["offset_frac_2"] == [1.0, 0.8] and pp["offset_frac_ge4"] == [0.0, 0.2]
    assert pp["dominant_at_0_frac"] == [0.0, 0.2] and g["offset_frac_2"] == pytest.approx(0.9)
    assert pp["dominant_offset_mean"][0] == 2.0


# ---- sinks that exist, per-prompt values ------------------------------------------------------------
def test_sink_steps_and_per_prompt_values():
    """Prompt 0: a sink at 0, 0, 4 then a step without outlier; prompt 1: no sink at any step."""
    S, T = 4, 8
    flat = torch.tensor([1.0, 2.0] * 4)  # mean 1.5, std 0.5: nothing above mean + 2 std
    mass = flat.repeat(S, 1, 2, 1)  # (S, L=1, B=2, T)
    for s, p in enumerate([0, 0, 4]):
        mass[s, 0, 0] = 1.0
        mass[s, 0, 0, p] = 21.0
    traj = Trajectory(meta={"kind": "dlm", "mask_id": MASK, "model": "syn", "random_init": False}, mass=mass,
                      valid_len=torch.full((S,), T), prompt_ids=torch.zeros(2, 2, dtype=torch.long),
                      final_ids=torch.zeros(2, T, dtype=torch.long),
                      step_ids=torch.full((S, 2, T), 5, dtype=torch.long))
    g = sink_statistics(traj, SINK)["variants"]["full"]["global"]
    pp = g["per_prompt"]
    assert pp["sink_step_frac"] == [0.75, 0.0] and g["sink_step_frac"] == 0.375
    # prompt 0 over its sink steps: positions 0, 0, 4 -> var 32/9 / 8^2; prompt 1: undefined
    assert pp["variance_sink_steps"][0] == pytest.approx(32 / 9 / 64) and pp["variance_sink_steps"][1] is None
    assert g["variance_sink_steps"] == pytest.approx(32 / 9 / 64)  # the mean over the prompts that have one
    assert pp["persistence_pos0_sink_steps"] == [pytest.approx(2 / 3), None]
    assert pp["persistence_pos0"] == [0.5, 0.0]  # over all steps
    assert pp["bos_share"][0] == pytest.approx((2 * 21 / 28 + 1 / 28 + 1 / 12) / 4)
    assert pp["bos_share"][1] == pytest.approx(1 / 12)
    for key, vals in pp.items():
        assert len(vals) == 2, key
        ok = [x for x in vals if x is not None]
        assert g[key] == pytest.approx(np.mean(ok) if ok else 0.0), key
    assert g["variance_std"] == pytest.approx(np.std(pp["variance"]))
