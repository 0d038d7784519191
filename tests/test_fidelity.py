"""prune.fidelity: released | corrected (README, "Differences from the released code").

One test per row of the README table: each runs the released and the corrected setting (on a
from-config model at test size, in-process, where the row is about pruning) and checks the released
behaviour against an independent count or re-derivation (plain loops, python's random, counts from
the masks), and that ``corrected`` is today's behaviour. Then the params rules (fidelity values,
noise values, noise_keep_ends, precedence) and the metrics record of the effective choices.
"""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import CHUNK, WINDOWS_PER_BATCH  # tests/ is on sys.path
from srclib.pruning import calibration as cal
from srclib.pruning import plan
from srclib import params, paths
from srclib.data import wikitext
from srclib.diffusion import mask_probability, noise_stratified, stratified_times
from srclib.models.base import Adapter
from srclib.models.tiny import TinyLM, test_config
from srclib.params import ParamsError
from srclib.pruning.checkpoint import run_prune
from srclib.pruning.core import prune_model
from srclib.stages.prune import interpretation

from prune_specs import make_spec  # tests/ is on sys.path

TINY = Adapter(key="t", causal=False, shift=True, blocks_path="model.transformer.blocks")  # Dream-style
LLAMA_DLM = Adapter(key="ld", causal=False, shift=False, blocks_path="model.layers", mask_token_id=63)  # LLaDA-style
MASK = 63


def _tiny():
    torch.manual_seed(0)
    return TinyLM(test_config()).eval()


def _llama_dlm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def _calib(n=4, T=16, wpb=2):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(3, 60, (n, T), generator=g)
    w[:, 0] = 0
    return cal.Calibration(windows=w, seed=0, windows_per_batch=wpb, mass_chunk_size=CHUNK)


def spec(**kw):
    return make_spec(**{"t_grid": (0.2, 0.6, 1.0), **kw})


def released(**kw):
    return spec(fidelity="released", **kw)


# ---- row 1: WikiText-2 calibration text -------------------------------------------------------------
class _FakeSplit(dict):
    """What ``datasets.load_dataset(...)[split]`` offers export_wikitext2: column access by name."""


@pytest.mark.parametrize("split,sep", [("train", " "), ("validation", "\n\n"), ("test", "\n\n")])
def test_wikitext_train_text_is_joined_by_a_space(tmp_path, split, sep):
    lines = ["", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 \n", " It met with \n"]
    out = wikitext.export_wikitext2(tmp_path / f"{split}.jsonl", split=split,
                                    loader=lambda name, config, split: _FakeSplit(text=lines))
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = lines[0]  # independent: the released lib/data.py joins train with " ", test with "\n\n"
    for line in lines[1:]:
        expected = expected + sep + line
    assert row["text"] == expected
    assert row["source"] == f"wikitext/wikitext-2-raw-v1/{split}"


# ---- row 2: the window draw -------------------------------------------------------------------------
class ToyTok:
    """Character tokenizer that adds BOS by default, as LLaMA-style tokenizers do."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True):
        ids = [2 + ord(c) % 50 for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def _corpus(tmp_path):
    texts = ["the first passage of the calibration corpus", "and a second one, a little longer than that"]
    f = tmp_path / "calib.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return f, texts


def _python_random_starts(seed, n, hi):
    """The released loop: random.seed(seed), then one random.randint(0, hi) per window (global RNG)."""
    state = random.getstate()
    try:
        random.seed(seed)
        return [random.randint(0, hi) for _ in range(n)]
    finally:
        random.setstate(state)


@pytest.mark.parametrize("seed", [0, 3])
def test_released_windows_are_python_random_slices_of_the_special_token_stream(tmp_path, seed):
    f, texts = _corpus(tmp_path)
    n, L = 5, 12
    c = cal.build_calibration(ToyTok(), f, n_samples=n, seq_len=L, seed=seed, bos_id=1, released=True,
                              windows_per_batch=WINDOWS_PER_BATCH, mass_chunk_size=CHUNK)
    stream = [1] + [2 + ord(ch) % 50 for ch in " ".join(texts)]  # BOS once, then the joined text
    starts = _python_random_starts(seed, n, len(stream) - L - 1)
    assert c.windows.tolist() == [stream[i:i + L] for i in starts]
    # corrected (today's): no special tokens, [BOS] + L - 1 tokens, starts over n - (L - 1) - 1
    c2 = cal.build_calibration(ToyTok(), f, n_samples=n, seq_len=L, seed=seed, bos_id=1,
                               windows_per_batch=WINDOWS_PER_BATCH, mass_chunk_size=CHUNK)
    body = stream[1:]
    starts2 = _python_random_starts(seed, n, len(body) - (L - 1) - 1)
    assert c2.windows.tolist() == [[1] + body[i:i + L - 1] for i in starts2]


# ---- row 3: Dream calibration noise -----------------------------------------------------------------
def test_stratified_times_follow_the_formula():
    g = torch.Generator().manual_seed(5)
    u0 = float(torch.rand(1, generator=torch.Generator().manual_seed(5)))  # the one draw it makes
    t = stratified_times(4, g)
    assert t.tolist() == pytest.approx([(u0 + i / 4) % 1 for i in range(4)], abs=1e-7)
    gaps = sorted(t.tolist())
    assert all(abs(b - a - 0.25) < 1e-6 for a, b in zip(gaps, gaps[1:]))  # one t in every quarter


def _released_dream_passes(windows, n_t, eps, seed, batch):
    """Independent re-derivation of lib/prune_dream.py: for each batch of windows, for each of the
    n_t sampled steps: u0 = rand(1); t = (u0 + i/B) % 1; mask = rand(B, T) < (1 - eps) t + eps;
    first and last position unmasked."""
    g = torch.Generator().manual_seed(seed)
    N, T = windows.shape
    out = [[None] * n_t for _ in range(N)]
    ts = []
    for j in range(0, N, batch):
        rows = windows[j:j + batch]
        B = rows.shape[0]
        for k in range(n_t):
            u0 = float(torch.rand(1, generator=g)[0])
            u = torch.rand((B, T), generator=g)
            for i in range(B):
                t = (u0 + i / B) % 1
                ts.append(t)
                p = (1 - eps) * t + eps
                row = rows[i].tolist()
                for pos in range(1, T - 1):
                    if float(u[i, pos]) < p:
                        row[pos] = MASK
                out[j + i][k] = row
    return out, ts


@pytest.mark.parametrize("batch", [1, 3])
def test_stratified_passes_match_the_released_dream_loop(batch):
    c = _calib(n=5, T=20)
    got = cal.noised_passes(c.windows, (0.1, 0.5, 0.9, 1.0), MASK, 1e-3, 7, keep_first=True, keep_ends=True,
                            noise="stratified", rows_per_draw=batch)
    ref, ts = _released_dream_passes(c.windows, 4, 1e-3, 7, batch)
    assert got.tolist() == ref
    masked = got == MASK
    assert not masked[..., 0].any() and not masked[..., -1].any()  # ends never masked
    assert len(set(round(t, 6) for t in ts)) > 4  # t is drawn, not the grid's 4 values


def test_noise_stratified_masks_with_p_of_t_and_keeps_ends():
    x0 = torch.full((3, 4000), 5)
    noisy, mask, t = noise_stratified(x0, MASK, eps=1e-3, generator=torch.Generator().manual_seed(2))
    assert not mask[:, 0].any() and not mask[:, -1].any()
    assert torch.equal(noisy == MASK, mask)
    for i in range(3):  # the interior masked fraction is p(t_i) (binomial, 3998 draws: 5 sigma < 0.04)
        p = float(mask_probability(float(t[i]), 1e-3))
        assert abs(float(mask[i, 1:-1].float().mean()) - p) < 0.04


def _spy_noise(monkeypatch):
    calls = []
    orig = cal.noised_passes

    def spy(*a, **k):
        out = orig(*a, **k)
        calls.append((k, out))
        return out

    monkeypatch.setattr(cal, "noised_passes", spy)
    return calls


def test_released_dream_noise_through_prune_model(monkeypatch):
    calls = _spy_noise(monkeypatch)
    c = _calib()
    prune_model(_tiny(), TINY, released(weighting="sink"), c)
    (kw, passes), = calls
    assert kw["noise"] == "stratified" and kw["keep_ends"] is True
    ref, _ = _released_dream_passes(c.windows, 3, 1e-3, c.seed, 1)
    assert passes.tolist() == ref
    calls.clear()
    prune_model(_tiny(), TINY, spec(weighting="sink"), c)  # corrected: the t-grid, ends maskable
    (kw, passes), = calls
    assert kw["noise"] == "grid" and kw["keep_ends"] is False
    assert torch.equal(passes, cal.noised_passes(c.windows, (0.2, 0.6, 1.0), MASK, 1e-3, c.seed, keep_first=True,
                                                 noise="grid"))
    assert (passes[..., -1] == MASK).any()  # t = 1.0 masks the last position of some pass


def test_released_llada_noise_is_the_grid_with_no_position_kept(monkeypatch):
    calls = _spy_noise(monkeypatch)
    c = _calib()
    prune_model(_llama_dlm(), LLAMA_DLM, released(weighting="sink", noise_keep_ends=True), c)
    (kw, passes), = calls
    assert kw["noise"] == "grid" and kw["keep_ends"] is False and kw["keep_first"] is False
    assert torch.equal(passes, cal.noised_passes(c.windows, (0.2, 0.6, 1.0), MASK, 1e-3, c.seed, keep_first=False,
                                                 noise="grid"))


# ---- rows 4-6: the masks ----------------------------------------------------------------------------
@pytest.mark.parametrize("s", [0.5, 0.3])
def test_magnitude_released_prunes_one_more_entry_per_matrix(s):
    dense = _tiny()
    ws = {n: p.detach().clone() for n, p in dense.named_parameters()}
    rep_r = prune_model(_tiny(), TINY, released(method="magnitude", sparsity=s))
    rep_c = prune_model(_tiny(), TINY, spec(method="magnitude", sparsity=s))
    assert rep_r.masks.keys() == rep_c.masks.keys() and len(rep_r.masks) == 14
    for name, m in rep_r.masks.items():
        n = m.numel()
        a = sorted(ws[name + ".weight"].abs().flatten().tolist())
        assert a[int(n * s)] != a[int(n * s) + 1]  # no tie at the threshold: the counts below are exact
        assert int(m.sum()) == math.floor(s * n) + 1, name
        assert int(rep_c.masks[name].sum()) == math.floor(s * n), name
        assert bool((ws[name + ".weight"].abs()[m] <= a[int(n * s)]).all())  # the lowest magnitudes


def _blocks(mask, size):
    return [mask[:, i:i + size] for i in range(0, mask.shape[1], size)]


def test_sparsegpt_released_prunes_one_more_entry_per_block():
    bs = 16
    rep_r = prune_model(_tiny(), TINY, released(method="sparsegpt", blocksize=bs), _calib())
    rep_c = prune_model(_tiny(), TINY, spec(method="sparsegpt", blocksize=bs), _calib())
    for name, m in rep_r.masks.items():
        rows = m.shape[0]
        for blk_r, blk_c in zip(_blocks(m, bs), _blocks(rep_c.masks[name], bs)):
            k = math.floor(rows * blk_r.shape[1] * 0.5)
            assert int(blk_r.sum()) == k + 1, name
            assert int(blk_c.sum()) == k, name
        assert int(m.sum()) == int(rep_c.masks[name].sum()) + m.shape[1] // bs


def test_sink_wanda_released_ignores_nm():
    rep_r = prune_model(_tiny(), TINY, released(weighting="sink", pattern="2:4"), _calib())
    rep_c = prune_model(_tiny(), TINY, spec(weighting="sink", pattern="2:4"), _calib())
    violated = 0
    for name, m in rep_r.masks.items():
        R, C = m.shape
        assert m.sum(dim=1).tolist() == [C // 2] * R, name  # per row: floor(C_in * 0.5)
        groups = m.reshape(R, C // 4, 4).sum(dim=-1)
        violated += int((groups != 2).sum())
        assert bool((rep_c.masks[name].reshape(R, C // 4, 4).sum(dim=-1) == 2).all()), name  # corrected: 2:4
    assert violated > 0  # the released masks are not 2:4
    # the same (released) sink-aware scores pruned per row, unstructured, give the released 2:4 masks
    rep_u = prune_model(_tiny(), TINY, released(weighting="sink", pattern="unstructured"), _calib())
    assert all(torch.equal(rep_r.masks[k], rep_u.masks[k]) for k in rep_r.masks)


def test_uniform_wanda_released_calibrates_on_clean_windows():
    c = _calib()
    rep_r = prune_model(_tiny(), TINY, released(), c)
    rep_c = prune_model(_tiny(), TINY, spec(), c)
    n, T = c.windows.shape
    assert (rep_r.inputs, rep_r.n_passes, rep_r.n_tokens) == ("clean", n, n * T)
    assert (rep_c.inputs, rep_c.n_passes, rep_c.n_tokens) == ("noised", n * 3, n * 3 * T)
    rep_clean = prune_model(_tiny(), TINY, spec(calib_inputs="clean"), c)
    assert all(torch.equal(rep_r.masks[k], rep_clean.masks[k]) for k in rep_r.masks)


def test_corrected_reproduces_the_committed_magnitude_instance(tmp_path):
    """prune.fidelity corrected is today's behaviour: the embedded default's magnitude instance (its
    masks depend on the trained weights alone, the same on every machine) gives the committed masks."""
    name = "dlm-magnitude-uniform-50-s0"
    committed = paths.ROOT / "metrics" / "prune" / f"{name}.json"
    if not (paths.ROOT / "models" / "tiny-dlm" / "model.safetensors").is_file() or not committed.is_file():
        pytest.skip("models/tiny-dlm or its prune metrics are not in this checkout (dvc pull)")
    P = params.load()
    inst = P.prune.instance(name)
    run = run_prune(model=inst.model, spec=P.prune.spec(name), instance=name, out_dir=tmp_path / name,
                    metrics_path=tmp_path / "m.json", n_samples=1, seq_len=2, seed=inst.seed, device="cpu")
    c = json.loads(committed.read_text())
    for key in ("masks_sha256", "n_pruned", "n_prunable", "overall_sparsity", "layer_sparsity"):
        assert run.metrics[key] == c[key], key
    assert run.metrics["effective"]["threshold"] == "exact"


# ---- precedence and the metrics record -------------------------------------------------------------
def test_released_overrides_explicit_options_and_metrics_record_the_effective_choices(tmp_path, monkeypatch):
    calls = _spy_noise(monkeypatch)
    c = _calib()
    sp = released(weighting="sink", pattern="2:4", noise="grid", noise_keep_ends=False, calib_inputs="clean")
    run = run_prune(model=(_tiny(), None, TINY), spec=sp, out_dir=tmp_path / "out", metrics_path=tmp_path / "m.json",
                    n_samples=4, seq_len=16, seed=0, calibration=c)
    (kw, _), = calls
    assert kw["noise"] == "stratified" and kw["keep_ends"] is True  # released wins over noise: grid
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["spec"]["noise"] == "grid" and m["spec"]["fidelity"] == "released"  # what was asked
    assert m["effective"] == {"fidelity": "released", "windows": "released", "inputs": "noised",
                              "noise": "stratified", "noise_keep_ends": True, "mask_pattern": "unstructured",
                              "threshold": "exact"}  # what ran: calib_inputs clean overridden for sink Wanda
    assert m["inputs"] == "noised" and run.metrics == m
    text = interpretation(m)  # the notebook's reading names what ran
    assert "Fidelity released: released calibration windows; stratified noise (first and last position kept); " \
           "unstructured masks for the 2:4 instance." in text
    assert "Fidelity" not in interpretation({**m, "effective": {**m["effective"], "fidelity": "corrected",
                                                                 "noise": "grid"}})


def test_effective_choices_per_family():
    sp = released(method="sparsegpt", weighting="sink")
    assert plan.effective(sp, dlm=True, shift=False) == {
        "fidelity": "released", "windows": "released", "inputs": "clean", "noise": "grid",
        "noise_keep_ends": False, "mask_pattern": "unstructured", "threshold": "inclusive"}
    assert plan.effective(sp, dlm=False, shift=False)["noise"] is None  # an AR model draws no noise
    auto = spec(noise="auto", weighting="sink")
    assert plan.noise_options(auto, shift=True) == {"noise": "stratified", "keep_ends": True}
    assert plan.noise_options(auto, shift=False) == {"noise": "grid", "keep_ends": False}
    assert plan.effective(spec(method="magnitude"), dlm=True, shift=True)["inputs"] == "none"
    nm = released(method="magnitude", pattern="2:4")
    assert plan.effective(nm, True, True)["threshold"] == "exact"  # N:M: no `<=`


# ---- params ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((paths.ROOT / "params.yaml").read_text())


def _set(raw, dotted, value):
    d = copy.deepcopy(raw)
    node = d
    *keys, last = dotted.split(".")
    for k in keys:
        node = node[k]
    node[last] = value
    return d


def test_default_params_are_corrected_grid(raw):
    P = params.load_dict(raw)
    assert P.prune.fidelity == "corrected" and P.prune.calibration.noise == "grid"
    sp = P.prune.spec("dlm-wanda-sink-50-s0")
    assert (sp.fidelity, sp.calibration.noise) == ("corrected", "grid")
    g = params.load(paths.ROOT / "params-gpu.yaml")
    assert g.prune.fidelity == "corrected" and g.prune.calibration.noise == "auto"
    assert plan.noise_options(g.prune.spec("dream-wanda-sink-50-s0"), shift=True)["noise"] == "stratified"
    assert plan.noise_options(g.prune.spec("llada-wanda-sink-50-s0"), shift=False)["noise"] == "grid"
    P2 = params.load_dict(_set(raw, "prune.fidelity", "released"))  # what -S prune.fidelity=released gives
    assert plan.pruner_options(P2.prune.spec("dlm-magnitude-uniform-50-s0"))["inclusive"] is True


@pytest.mark.parametrize("value", ["release", "RELEASED", "", 1, None])
def test_unknown_fidelity_names_key_and_values(raw, value):
    with pytest.raises(ParamsError) as err:
        params.load_dict(_set(raw, "prune.fidelity", value))
    msg = str(err.value)
    assert "prune.fidelity" in msg
    if isinstance(value, str):
        assert "'released'" in msg and "'corrected'" in msg


def test_unknown_noise_names_key_and_values(raw):
    with pytest.raises(ParamsError, match=r"prune\.calibration\.noise = 'uniform': "
                                          r"must be one of \['auto', 'grid', 'stratified'\]"):
        params.load_dict(_set(raw, "prune.calibration.noise", "uniform"))


def test_stratified_noise_needs_both_ends_kept(raw):
    with pytest.raises(ParamsError, match=r"noise_keep_ends"):
        params.load_dict(_set(raw, "prune.calibration.noise", "stratified"))
    ok = _set(_set(raw, "prune.calibration.noise", "stratified"), "prune.options.noise_keep_ends", True)
    assert params.load_dict(ok).prune.calibration.noise == "stratified"
    with pytest.raises(ParamsError, match="noise_keep_ends"):
        spec(noise="stratified")


def test_keep_ends_without_any_noised_run_is_refused(raw):
    only_magnitude = {k: v for k, v in raw["prune"]["instances"].items() if v["method"] == "magnitude"}
    d = _set(_set(raw, "prune.instances", only_magnitude), "prune.options.noise_keep_ends", True)
    d["efficiency"]["instances"] = [k for k in d["efficiency"]["instances"] if k in only_magnitude] or \
        [next(iter(only_magnitude))]
    with pytest.raises(ParamsError, match=r"prune\.options\.noise_keep_ends = true: only a DLM run on noised passes"):
        plan.check_noise_used(params.load_dict(d).prune)  # the runner's pre-flight check
    ok = params.load_dict(_set(raw, "prune.options.noise_keep_ends", True)).prune
    plan.check_noise_used(ok)
    assert ok.options.noise_keep_ends


def test_dvc_prune_stage_depends_on_fidelity():
    stages = yaml.safe_load((paths.ROOT / "dvc.yaml").read_text())["stages"]
    assert "prune.fidelity" in stages["prune"]["do"]["params"]
    others = [n for n, s in stages.items() if n != "prune" and "prune.fidelity" in str(s)]
    assert others == []
