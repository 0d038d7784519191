"""srclib.pruning.plan: the prune run's decisions, with one home each (issue 24 item 1).

Known answers from method.md 3-4 and 9-10 (not from the code under test), the resolved plan equal
to the single rules, the flat spec record pinned, and params.py importing nothing above it."""

from __future__ import annotations

import ast
import itertools

import pytest

from srclib import params, paths
from srclib.pruning import plan
from srclib.schema import ParamsError

from prune_specs import make_spec  # tests/ is on sys.path


@pytest.mark.parametrize("kw, needs", [
    (dict(method="magnitude"), False),  # |W| alone
    (dict(method="magnitude", owl=True), True),  # OWL's ratios come from Wanda scores
    (dict(method="wanda"), True),
    (dict(method="sparsegpt", weighting="sink"), True),
    (dict(method="magnitude", structure="uniform", pattern=None), False),  # magnitude-sp, no compensation
    (dict(method="magnitude", structure="uniform", pattern=None, bias_compensation="on"), True),  # needs means
    (dict(method="flap", structure="adaptive", pattern=None), True),  # FLAP compensates by default
    (dict(method="wanda", structure="uniform", pattern=None, bias_compensation="off"), True),
])
def test_needs_data_known_answers(kw, needs):
    s = make_spec(**kw)
    assert plan.needs_data(s) is needs
    assert plan.resolve(s, dlm=True, shift=True).needs_data is needs


def test_released_inputs_and_auto_tables():
    """method.md 4 and 10: sink Wanda on noised passes, SparseGPT's Hessian on clean windows,
    released uniform Wanda on clean windows; AR models always clean."""
    assert plan.inputs_for(make_spec(weighting="sink"), dlm=True) == "noised"
    assert plan.inputs_for(make_spec(method="sparsegpt", weighting="sink"), dlm=True) == "clean"
    assert plan.inputs_for(make_spec(fidelity="released"), dlm=True) == "clean"
    assert plan.inputs_for(make_spec(weighting="sink"), dlm=False) == "clean"
    assert plan.draws_noise(make_spec(method="sparsegpt", weighting="sink"))  # its mass pre-pass
    assert not plan.draws_noise(make_spec(method="sparsegpt", weighting="uniform"))
    assert plan.accumulation(make_spec(weighting="sink")) == "per_pass"
    assert plan.accumulation(make_spec(weighting="uniform")) == "total"
    assert plan.one_shot(make_spec(weighting="sink")) and not plan.one_shot(make_spec())


def test_resolve_equals_the_single_rules():
    grid = itertools.product(
        [dict(method="magnitude"), dict(method="wanda"), dict(method="sparsegpt"),
         dict(method="flap", structure="adaptive", pattern=None),
         dict(method="wanda", structure="uniform", pattern=None)],
        ["uniform", "sink"], ["corrected", "released"], ["grid", "auto"], [True, False], [True, False])
    n = 0
    for run, weighting, fidelity, noise, dlm, shift in grid:
        if run["method"] == "magnitude" and weighting != "uniform":
            continue
        s = make_spec(**run, weighting=weighting, fidelity=fidelity, noise=noise)
        rp = plan.resolve(s, dlm=dlm, shift=shift)
        assert rp.effective == plan.effective(s, dlm, shift)
        assert (rp.needs_data, rp.inputs, rp.one_shot, rp.compensate, rp.released) == (
            plan.needs_data(s), plan.inputs_for(s, dlm), plan.one_shot(s), plan.compensate(s), plan.released(s))
        assert rp.noise == plan.noise_options(s, shift) and rp.pruner_options == plan.pruner_options(s)
        assert rp.draws_noise == (dlm and plan.draws_noise(s))
        n += 1
    assert n == 144  # 5 runs x 2 weightings x 2 fidelities x 2 noises x dlm x shift, less magnitude-sink


def test_spec_record_is_the_flat_format_the_metrics_keep():
    """The committed prune metrics keep these 25 keys: composition must not change the record."""
    P = params.load()
    rec = P.prune.spec("dlm-sparsegpt-sink-50-s0").to_dict()
    assert sorted(rec) == sorted([
        "method", "weighting", "sparsity", "pattern", "t_grid", "noise_eps", "sink_rule", "sink_alpha", "sink_kappa",
        "sink_eps", "stability_threshold", "blocksize", "percdamp", "owl", "owl_lambda", "owl_m",
        "one_shot_sink_wanda", "calib_inputs", "wanda_accumulation", "noise_keep_ends", "force_one_shot",
        "bias_compensation", "structure", "fidelity", "noise"])
    assert rec["sink_alpha"] == P.prune.sink.alpha and rec["owl"] is P.prune.owl.enabled
    assert rec["t_grid"] == P.prune.calibration.t_grid and rec["method"] == "sparsegpt"
    s = P.prune.spec("dlm-sparsegpt-sink-50-s0")
    assert s.sink is P.prune.sink and s.calibration is P.prune.calibration  # held, not copied


def test_spec_validates_its_sections():
    s = make_spec()
    with pytest.raises(ParamsError, match=r"spec\.sink = .*must be a VarianceParams"):
        type(s)(**{**{f: getattr(s, f) for f in s.__dataclass_fields__}, "sink": {"rule": "zscore"}})
    with pytest.raises(ParamsError, match=r"run\.sparsity = 1\.5"):
        make_spec(sparsity=1.5)
    with pytest.raises(ParamsError, match="OWL sets a sparsity per block"):
        make_spec(owl=True, pattern="2:4")


def test_noise_used_check_names_the_settings():
    P = params.load()
    only = {k: v for k, v in P.prune.instances.items() if v.method == "magnitude"}
    options = params.PruneOptions(**{**P.prune.options.__dict__, "noise_keep_ends": True})
    cfg = params.PruneParams(**{**{f: getattr(P.prune, f) for f in P.prune.__dataclass_fields__},
                                "instances": only, "options": options})
    with pytest.raises(ParamsError, match=r"prune\.options\.noise_keep_ends = true: only a DLM run"):
        plan.check_noise_used(cfg)
    plan.check_noise_used(P.prune)


def test_params_imports_nothing_above_it():
    """params.py declares settings: it imports only srclib.choices, paths, schema and files (atomic writes)."""
    tree = ast.parse((paths.ROOT / "srclib" / "params.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in mods if m.startswith("srclib")} <= {"srclib", "srclib.schema", "srclib.files"}
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "srclib"
             for a in n.names}
    assert names <= {"choices", "paths"}


def test_needs_data_rule_has_one_home():
    """Only plan.py spells the rule; the pruning code reads the resolved plan."""
    for f in sorted((paths.ROOT / "srclib").rglob("*.py")):
        if f.name == "plan.py":
            continue
        text = f.read_text()
        assert "needs_inputs or" not in text and 'method != "magnitude" or' not in text, f
