"""One stage interface (issue 24 item 4): every ``srclib.stages.<stage>.run`` is ``run(P, instance=None,
root=None)``, taking the whole validated Params and the stage's instance name; each notebook calls
``<stage>.run(P, instance)`` (a stage whose notebook declares ``instance``) or ``<stage>.run(P)``; a
stage with instances refuses None, one without refuses an instance; and each ``run`` hands the work
the settings and inputs it derives from P (checked with the work replaced by a recorder: no model
is loaded, nothing is written). CPU, seconds.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import srclib.stages
from srclib import paths
from srclib.params import ParamsError, load
from srclib.run import declared_parameters

P = load(paths.ROOT / "params.yaml")
STAGES = list(paths.STAGE_NOTEBOOKS)
WITH_INSTANCES = {"prune", "evaluate"}  # run(P, instance) needs one
OPTIONAL_INSTANCE = {"collect"}  # a key of collect.models, or None / "": every model


def stage_modules() -> dict[str, object]:
    """Every module of srclib/stages with a ``run``, by name."""
    mods = {m.name: importlib.import_module(f"srclib.stages.{m.name}")
            for m in pkgutil.iter_modules(srclib.stages.__path__)}
    return {name: mod for name, mod in mods.items() if hasattr(mod, "run")}


def test_the_stage_modules_are_the_stages():
    assert sorted(stage_modules()) == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_run_signature_is_P_instance_root(stage):
    sig = inspect.signature(stage_modules()[stage].run)
    params = list(sig.parameters.values())
    names = [p.name for p in params]
    assert names[:3] == ["P", "instance", "root"], f"srclib.stages.{stage}.run{sig}: expected run(P, instance=None, " \
                                                   f"root=None)"
    first, inst, root = params[:3]
    assert first.default is inspect.Parameter.empty and first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert inst.default is None and root.default is None, f"{stage}.run{sig}"
    assert all(p.default is not inspect.Parameter.empty for p in params[1:]), f"{stage}.run{sig}"


def _run_calls(stage: str) -> list[ast.Call]:
    """The ``<stage>.run(...)`` calls in the code cells of the stage's notebook."""
    import nbformat

    nb = nbformat.read(str(paths.notebook(stage)), as_version=4)
    calls = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == stage):
                calls.append(node)
    return calls


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_calls_run_with_P_and_its_instance(stage):
    calls = _run_calls(stage)
    assert len(calls) == 1, f"{paths.notebook(stage).name}: {len(calls)} calls of {stage}.run"
    [call] = calls
    got = [ast.unparse(a) for a in call.args] + [ast.unparse(k) for k in call.keywords]
    has_instance = "instance" in declared_parameters(paths.notebook(stage))
    assert has_instance == (stage in WITH_INSTANCES | OPTIONAL_INSTANCE), stage
    want = ["P", "instance"] if has_instance else ["P"]
    assert got == want, f"{paths.notebook(stage).name}: {stage}.run({', '.join(got)}); expected " \
                        f"{stage}.run({', '.join(want)})"


@pytest.mark.parametrize("stage", sorted(WITH_INSTANCES))
def test_a_stage_with_instances_refuses_none(stage):
    with pytest.raises(ParamsError, match=rf"stage '{stage}'.*needs an instance.*instance=None"):
        stage_modules()[stage].run(P)


@pytest.mark.parametrize("stage", sorted(set(STAGES) - WITH_INSTANCES - OPTIONAL_INSTANCE))
def test_a_stage_without_instances_refuses_one(stage, tmp_path):
    with pytest.raises(ParamsError, match=rf"stage '{stage}' has no instances.*instance='x'"):
        stage_modules()[stage].run(P, "x", root=tmp_path)


# ---- what each run derives from P --------------------------------------------------------------------
class Called(Exception):
    pass


def recorder(seen: dict):
    def record(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise Called
    return record


def _call(fn, *args, **kwargs) -> None:
    with pytest.raises(Called):
        fn(*args, **kwargs)


def test_train_run_trains_with_P_train(monkeypatch, tmp_path):
    from srclib.stages import train

    seen: dict = {}
    monkeypatch.setattr(train, "train_models", recorder(seen))
    _call(train.run, P, root=tmp_path)
    assert seen == {"args": (P.train,), "kwargs": {"root": tmp_path}}


@pytest.mark.parametrize("instance,model", [("", None), (None, None), ("first", "first")])
def test_collect_run_collects_its_instance(monkeypatch, tmp_path, instance, model):
    from srclib.stages import collect

    key = P.collect.models[0]
    instance, model = (key if v == "first" else v for v in (instance, model))
    seen: dict = {}
    monkeypatch.setattr(collect, "collect_models", recorder(seen))
    _call(collect.run, P, instance, root=tmp_path)
    assert seen == {"args": (P.collect, P.models), "kwargs": {"root": tmp_path, "model": model}}


def test_variance_run_reads_the_runs_collect_names(monkeypatch, tmp_path):
    from srclib.stages import variance

    seen: dict = {}
    monkeypatch.setattr(variance, "sink_variance", recorder(seen))
    _call(variance.run, P, root=tmp_path)
    assert seen == {"args": (P.variance,), "kwargs": {"root": tmp_path, "collect": P.collect}}


def test_efficiency_run_measures_P_efficiency(monkeypatch, tmp_path):
    from srclib.stages import efficiency

    seen: dict = {}
    monkeypatch.setattr(efficiency, "measure", recorder(seen))
    _call(efficiency.run, P, root=tmp_path)
    assert seen == {"args": (P.efficiency,), "kwargs": {"root": tmp_path}}


@pytest.mark.parametrize("which", ["pruned", "dense"])
@pytest.mark.parametrize("rooted", [False, True])
def test_evaluate_run_evaluates_the_instance_source(monkeypatch, tmp_path, which, rooted):
    from srclib.stages import evaluate

    instance = next(iter(P.prune.instances)) if which == "pruned" else P.evaluate.dense[0]
    root = tmp_path if rooted else None
    source = str(paths.pruned_dir(instance, root)) if which == "pruned" else instance
    assert P.eval_source(instance, root=root) == source
    if not rooted:
        assert source == P.eval_source(instance)  # what the notebook passed before: the same
    seen: dict = {}
    monkeypatch.setattr(evaluate, "evaluate_source", recorder(seen))
    _call(evaluate.run, P, instance, root=root)
    assert seen == {"args": (P.evaluate, instance, source, P.model_entry(instance)), "kwargs": {"root": root}}


def test_evaluate_run_refuses_an_unknown_instance():
    from srclib.stages import evaluate

    with pytest.raises(ParamsError, match="'nope' is neither in prune.instances nor in evaluate.dense"):
        evaluate.run(P, "nope")


def test_prune_run_prunes_the_instance_with_its_model_entry(monkeypatch, tmp_path):
    from srclib.stages import prune

    instance = next(iter(P.prune.instances))
    inst, entry = P.prune.instances[instance], P.model_entry(instance)
    registered: dict = {}
    seen: dict = {}
    monkeypatch.setattr(prune, "register", registered.update)
    monkeypatch.setattr(prune, "run_prune", recorder(seen))
    _call(prune.run, P, instance, root=tmp_path)
    assert registered == {inst.model: entry}
    kw = seen["kwargs"]
    assert kw["model"] == inst.model and kw["spec"] == P.prune.spec(instance) and kw["instance"] == instance
    assert kw["out_dir"] == paths.pruned_dir(instance, tmp_path) and kw["seed"] == inst.seed
    assert kw["corpus_path"] == Path(tmp_path) / P.prune.calibration.corpus
    assert (kw["dtype"], kw["device"]) == (entry.dtype, entry.device)
    assert (kw["n_samples"], kw["seq_len"]) == (P.prune.calibration.n_samples, P.prune.calibration.seq_len)


def test_prune_run_refuses_an_unknown_instance():
    from srclib.stages import prune

    with pytest.raises(ParamsError, match="'nope' is neither a prune instance nor a key of models"):
        prune.run(P, "nope")


def test_plot_run_reads_every_stage_under_P(monkeypatch, tmp_path):
    from srclib.stages import plot

    seen: dict = {}
    monkeypatch.setattr(plot.freshness, "check_inputs", recorder(seen))
    _call(plot.run, P, root=tmp_path)
    assert seen["args"][0] is P and seen["kwargs"] == {"root": tmp_path}
