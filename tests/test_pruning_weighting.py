"""The weighting axis: known answers, consistency with srclib.sinks, the honest "weights of 1 equal
uniform" equalities, and an independent end-to-end re-derivation of sink-aware Wanda statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import CHUNK  # tests/ is on sys.path
import srclib.sinks
from srclib.pruning import calibration as cal
from srclib.attention import record_mass
from srclib.models.base import Adapter
from srclib.models.tiny import TinyLM, test_config
from srclib.params import PruneSpec
from srclib.pruning.core import prune_model
from srclib.pruning.masks import select_mask
from srclib.pruning.weighting import WEIGHTINGS
from srclib.pruning.core import weights_from_mass
from srclib.pruning.weighting import stable_sinks

from prune_specs import make_spec  # tests/ is on sys.path

ADAPTER = Adapter(key="t", causal=False, shift=True, blocks_path="model.transformer.blocks")


def spec(**kw) -> PruneSpec:
    return make_spec(**{"t_grid": (0.2, 0.6, 1.0), **kw})


def _model():
    torch.manual_seed(0)
    return TinyLM(test_config()).eval()


def _calib(n=4, T=24, wpb=2):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(3, 60, (n, T), generator=g)
    w[:, 0] = 0
    return cal.Calibration(windows=w, seed=0, windows_per_batch=wpb, mass_chunk_size=CHUNK)


# ---- known answers -----------------------------------------------------------------------------
S = torch.tensor([[[0.9, 0.1, 0.0], [0.8, 0.6, 0.0], [0.2, 0.7, 0.0], [0.7, 0.0, 0.4]]])  # (1 window, 4 t, 3)


def test_weightings_known_answer():
    assert torch.equal(WEIGHTINGS["uniform"](S, True, 0.5), torch.ones(1, 4, 3))
    assert torch.equal(WEIGHTINGS["uniform"](S, False, 0.5), torch.ones(1, 1, 3))
    assert torch.allclose(WEIGHTINGS["sink"](S, True, 0.5), 1 - S)
    # mean_t s = [0.65, 0.35, 0.1]
    assert torch.allclose(WEIGHTINGS["sink"](S, False, 0.5), torch.tensor([[[0.35, 0.65, 0.9]]]))
    # sink counts (s >= 0.5): position 0: 3 of 4, position 1: 2 of 4, position 2: 0
    # threshold 0.75 -> need 3: only position 0 stable; threshold 0.5 -> need 2: positions 0 and 1
    st75 = WEIGHTINGS["stability"](S, True, 0.75)
    assert torch.allclose(st75[0, :, 0], torch.ones(4))
    assert torch.allclose(st75[0, :, 1:], 1 - S[0, :, 1:])
    assert torch.allclose(WEIGHTINGS["stability"](S, False, 0.75), torch.tensor([[[1.0, 0.65, 0.9]]]))
    assert torch.allclose(WEIGHTINGS["stability"](S, False, 0.5), torch.tensor([[[1.0, 1.0, 0.9]]]))


def test_stability_per_pass_agrees_with_sinks_module():
    g = torch.Generator().manual_seed(2)
    s = torch.rand(5, 7, 11, generator=g) ** 3
    for thr in (0.1, 0.3, 0.5, 1.0):
        clean = WEIGHTINGS["stability"](s, False, thr)[:, 0]
        assert torch.equal(clean, srclib.sinks.stability_weights(s, thr))
        per = WEIGHTINGS["stability"](s, True, thr)
        stable = stable_sinks(s, thr)
        assert torch.equal(per[stable.unsqueeze(1).expand_as(per)], torch.ones(int(stable.sum()) * 7))
        # off the stable set the per-pass weights average to the clean weight
        assert torch.allclose(per.mean(1)[~stable], clean[~stable], atol=1e-6)


def _zscore(m, alpha=5.0, kappa=2.0):
    mean = sum(m) / len(m)
    std = math.sqrt(sum((x - mean) ** 2 for x in m) / len(m))
    return [1 / (1 + math.exp(-alpha * (x - mean - kappa * std))) for x in m]


def test_weights_from_mass_known_answer():
    # 1 window x 2 noise levels, 2 layers, 6 positions: global mass = sum over layers
    mass = torch.tensor([[[5.0, 1, 1, 1, 1, 3], [1.0, 1, 6, 1, 1, 2]],
                         [[4.0, 1, 1, 1, 1, 0], [1.0, 1, 5, 1, 2, 1]]])  # (L=2, B=2, T=6)
    glob = (mass[0] + mass[1]).tolist()
    s = [_zscore(row) for row in glob]
    w = weights_from_mass(mass, 2, True, spec(weighting="sink"))
    assert torch.allclose(w, 1 - torch.tensor(s), atol=1e-6)
    wc = weights_from_mass(mass, 2, False, spec(weighting="sink"))
    assert torch.allclose(wc, 1 - torch.tensor(s).mean(0, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="whole number of windows"):
        weights_from_mass(mass, 4, True, spec(weighting="sink"))


# ---- weights of 1 == uniform (same accumulation, same passes, same mode) ------------------------
@pytest.mark.parametrize("kw", [
    dict(method="wanda", force_one_shot=True, wanda_accumulation="per_pass"),  # one-shot, online mass
    dict(method="wanda", one_shot_sink_wanda=False, wanda_accumulation="total"),  # sequential, online
    dict(method="sparsegpt"),  # clean windows, weights from the noised mass-only pre-pass
])
@pytest.mark.parametrize("weighting", ["sink", "stability"])
def test_unit_weights_bit_identical_to_uniform(monkeypatch, kw, weighting):
    monkeypatch.setattr(srclib.sinks, "sink_scores", lambda m, **k: torch.zeros_like(m))  # w = 1
    a, b = _model(), _model()
    ra = prune_model(a, ADAPTER, spec(weighting="uniform", **kw), _calib())
    rb = prune_model(b, ADAPTER, spec(weighting=weighting, **kw), _calib())
    assert ra.inputs == rb.inputs
    for k in ra.masks:
        assert torch.equal(ra.masks[k], rb.masks[k]), k
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_sink_sparsegpt_prepass_stopped_at_the_last_mass_is_bit_identical(monkeypatch):
    """The mass-only pre-pass ends at the last block's mass (record_pass_mass's default): the same
    masses, hence the same token weights, masks and pruned weights as a pre-pass through whole blocks."""
    plain = cal.record_pass_mass
    runs: dict[bool, dict] = {}
    for stop in (True, False):
        masses = []

        def recorded(*a, _stop=stop, _masses=masses, **kw):
            kw["stop_at_mass"] = _stop
            m = plain(*a, **kw)
            _masses.append(m)
            return m

        monkeypatch.setattr(cal, "record_pass_mass", recorded)
        model = _model()
        rep = prune_model(model, ADAPTER, spec(method="sparsegpt", weighting="sink"), _calib())
        runs[stop] = {"masses": masses, "masks": rep.masks, "params": list(model.parameters())}
    a, b = runs[True], runs[False]
    assert len(a["masses"]) == len(b["masses"]) == 2  # one per batch of 2 windows x 3 t
    assert all(torch.equal(x, y) for x, y in zip(a["masses"], b["masses"]))
    assert a["masks"].keys() == b["masks"].keys()
    assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))


def test_accumulations_differ_with_unit_weights():
    """The honest converse: per-pass-sum and total-norm statistics are different estimators."""
    a, b = _model(), _model()
    ra = prune_model(a, ADAPTER, spec(force_one_shot=True, wanda_accumulation="total"), _calib())
    rb = prune_model(b, ADAPTER, spec(force_one_shot=True, wanda_accumulation="per_pass"), _calib())
    assert any(not torch.equal(ra.masks[k], rb.masks[k]) for k in ra.masks)


# ---- independent re-derivation of one-shot sink-aware Wanda ---------------------------------------
def test_sink_wanda_one_shot_matches_independent_per_pass_computation():
    sp = spec(weighting="sink")  # auto: noised passes, per-pass accumulation, one-shot
    c = _calib(n=3, T=20, wpb=2)
    model = _model()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    rep = prune_model(model, ADAPTER, sp, c)
    # independent: every pass alone (batch of 1), its own mass, python zscore, float64 norms
    ref_model = _model()
    passes = cal.noised_passes(c.windows, sp.calibration.t_grid, 63, sp.calibration.noise_eps, c.seed,
                               keep_first=True, noise="grid").reshape(-1, 20)
    blocks = ref_model.model.transformer.blocks
    names = [(i, n) for i in range(len(blocks)) for n in ADAPTER.prunable(blocks[i])]
    acc = {k: np.zeros(ADAPTER.prunable(blocks[k[0]])[k[1]].in_features) for k in names}
    for ids in passes:
        got = {}
        hs = [ADAPTER.prunable(blocks[i])[n].register_forward_hook(
            lambda m, a, o, k=(i, n): got.__setitem__(k, a[0][0].double().numpy())) for i, n in names]
        with torch.no_grad(), record_mass(chunk_size=CHUNK) as rec:
            ref_model(input_ids=ids[None])
        for h in hs:
            h.remove()
        w = 1 - np.array(_zscore(rec.mass.sum(0)[0].double().tolist()))  # (T,)
        for k in names:
            acc[k] += np.sqrt(((w[:, None] * got[k]) ** 2).sum(0))
    for i, n in names:
        full = f"model.transformer.blocks.{i}.{n}"
        score = dense[full + ".weight"].abs() * torch.tensor(acc[(i, n)], dtype=torch.float32)[None, :]
        assert torch.equal(rep.masks[full], select_mask(score, 0.5)), full
