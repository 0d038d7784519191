"""Contract: prune_model works on every registry entry's stand-in (same module layout, test size),
through the adapter's own forward (e.g. Dream's bidirectional 4-D mask); checkpoints of the
locally loadable families reload with identical logits."""

from __future__ import annotations

import pytest
import torch

from helpers import CHUNK  # tests/ is on sys.path
from srclib.pruning import calibration as cal
from srclib.models import MODELS, load
from srclib.params import PruneSpec
from srclib.pruning.checkpoint import run_prune
from srclib.pruning.core import prune_model

from prune_specs import make_spec  # tests/ is on sys.path


def spec(**kw) -> PruneSpec:
    return make_spec(**{"weighting": "sink", "t_grid": (0.5, 1.0), **kw})


def _calib(model, n=2, T=12):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(5, 60, (n, T), generator=g)  # ids every stand-in vocabulary holds, no mask id
    return cal.Calibration(windows=w, seed=0, windows_per_batch=2, mass_chunk_size=CHUNK)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_registry_entry_prunes(key):
    adapter = MODELS[key]
    model = adapter.standin()
    c = _calib(model)
    # the calibration forward is the adapter's: a DLM attends both ways, an AR model causally
    mass = cal.record_pass_mass(model, adapter.blocks(model), c.windows, CHUNK,
                                forward=lambda ids: adapter.logits(model, ids))
    last_key = mass.sum(0)[:, -1] / mass.shape[0]  # mass on the last key per layer: ~H if bidirectional
    assert bool((last_key > 1.0).all()) == (not adapter.causal), key
    for kw in (dict(), dict(method="sparsegpt", pattern="2:4")):
        m = adapter.standin()
        rep = prune_model(m, adapter, spec(**kw), c)
        assert abs(rep.overall - 0.5) < 1e-3
        assert len(rep.masks) == sum(len(adapter.prunable(b)) for b in adapter.blocks(m))
        with torch.no_grad():
            assert torch.isfinite(adapter.logits(m, c.windows)).all()


@pytest.mark.parametrize("key", ["tiny-dlm", "tiny-ar", "smollm2-135m"])
def test_pruned_checkpoint_reloads_identically(key, tmp_path):
    adapter = MODELS[key]
    model = adapter.standin()
    c = _calib(model)
    run_prune(model=(model, None, adapter), spec=spec(method="sparsegpt", weighting="uniform"),
              out_dir=tmp_path / "out", metrics_path=tmp_path / "m.json", n_samples=2, seq_len=12, seed=0,
              calibration=c)
    re_model, _, re_adapter = load(tmp_path / "out")
    assert re_adapter is adapter
    with torch.no_grad():
        assert torch.equal(adapter.logits(re_model, c.windows), adapter.logits(model, c.windows))
