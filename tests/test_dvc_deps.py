"""dvc.yaml's deps tell the truth: each stage lists exactly the srclib files its notebook reaches
through imports (derived from the source by srclib.deps), each prune / evaluate instance depends on
its own model folder and models: entry, instance names agree with their values, and srclib has
no import cycle."""

import dataclasses
import re
import textwrap

import pytest
import yaml

from srclib import deps, params, paths

DVC = yaml.safe_load((paths.ROOT / "dvc.yaml").read_text())["stages"]
NOTEBOOK_OF = {"evaluate_dense": "evaluate"}  # dvc stage -> the notebook (stage) it runs


def _body(name):
    stage = DVC[name]
    return stage["do"] if "do" in stage else stage


@pytest.mark.parametrize("name", sorted(DVC))
def test_srclib_deps_are_the_notebooks_import_closure(name):
    listed = sorted(d for d in _body(name)["deps"] if d.startswith("srclib"))
    expected = deps.stage_closure(NOTEBOOK_OF.get(name, name))
    assert listed == expected, (
        f"dvc.yaml stage {name!r}: missing {sorted(set(expected) - set(listed))}, "
        f"not imported {sorted(set(listed) - set(expected))} (python -m srclib.deps prints the closure)"
    )


def test_every_stage_runs_a_notebook_that_is_a_dep():
    for name in DVC:
        nb = paths.notebook(NOTEBOOK_OF.get(name, name)).relative_to(paths.ROOT).as_posix()
        assert nb in _body(name)["deps"], name


def test_instances_depend_on_their_own_model():
    prune, evaluate, dense = _body("prune"), _body("evaluate"), _body("evaluate_dense")
    assert "models/${item.model}" in prune["deps"] and "models" not in prune["deps"]
    assert "models.${item.model}" in prune["params"] and "models" not in prune["params"]
    assert "pruned/${key}" in evaluate["deps"] and not any(d.startswith("models") for d in evaluate["deps"])
    assert "models.${item.model}" in evaluate["params"] and "models" not in evaluate["params"]
    assert "models/${item}" in dense["deps"] and "models.${item}" in dense["params"]
    assert "models" not in dense["deps"] and "models" not in dense["params"]


def test_collect_instance_depends_on_its_model_only():
    body = _body("collect")
    assert DVC["collect"]["foreach"] == "${collect.models}"
    assert [d for d in body["deps"] if d.startswith("models")] == ["models/${item}"]
    assert [p for p in body["params"] if p.startswith("models")] == ["models.${item}"]
    # every collect setting except the list of instances: adding a model leaves the others fresh
    fields = {f.name for f in dataclasses.fields(params.CollectParams)} - {"models"}
    assert {p.split(".", 1)[1] for p in body["params"] if p.startswith("collect.")} == fields
    assert "collect" not in body["params"]


def test_evaluate_does_not_depend_on_the_dense_list():
    fields = {f.name for f in dataclasses.fields(params.EvaluateParams)} - {"dense"}
    for name in ("evaluate", "evaluate_dense"):
        listed = _body(name)["params"]
        assert "evaluate" not in listed and "evaluate.dense" not in listed
        assert {p.split(".", 1)[1] for p in listed if p.startswith("evaluate.")} == fields, name


def test_efficiency_depends_on_the_instances_it_times():
    body = _body("efficiency")
    data, model_params = deps.efficiency_data(paths.ROOT / "params.yaml")
    assert [d for d in body["deps"] if d.startswith(("pruned", "models"))] == data
    assert [p for p in body["params"] if p.startswith("models")] == model_params
    assert "pruned" not in body["deps"]


# ---- instance names ---------------------------------------------------------------------------
NAME = re.compile(r"^(?P<tag>[a-z0-9]+)-(?P<method>[a-z]+)-(?P<weighting>[a-z]+)-(?P<pct>\d+)"
                  r"(?:-(?P<n>\d+)of(?P<m>\d+)|-(?P<struct>struct|adapt))?-s(?P<seed>\d+)$")
STRUCT_TAGS = {None: None, "struct": "uniform", "adapt": "adaptive"}


@pytest.mark.parametrize("params_file", ["params.yaml", "params-gpu.yaml"])
def test_instance_names_agree_with_their_values(params_file):
    """<model tag>-<method>-<weighting>-<sparsity %>[-<N>of<M> | -struct | -adapt]-s<seed>, one tag per
    model; -struct: structured, uniform per block; -adapt: structured, adaptive (FLAP's AL-AM)."""
    P = params.load(paths.ROOT / params_file)
    tags = {}
    for name, inst in P.prune.instances.items():
        m = NAME.match(name)
        assert m, f"{params_file}: instance name {name!r} does not follow the naming scheme"
        assert (m["method"], m["weighting"], int(m["seed"])) == (inst.method, inst.weighting, inst.seed), name
        assert int(m["pct"]) == round(inst.sparsity * 100), name
        pattern = "unstructured" if m["n"] is None else f"{m['n']}:{m['m']}"
        assert pattern == inst.pattern, name
        assert STRUCT_TAGS[m["struct"]] == inst.structure, name
        assert tags.setdefault(m["tag"], inst.model) == inst.model, f"tag {m['tag']!r} names two models"


# ---- the import graph -------------------------------------------------------------------------
def test_no_import_cycles():
    assert deps.cycles() == [], "import cycles among srclib modules (python -m srclib.deps --cycles)"


def _package(tmp_path, files):
    for rel, src in files.items():
        f = tmp_path / "srclib" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(src))
    deps._modules.cache_clear()
    return tmp_path


def test_graph_known_answer(tmp_path):
    """A function-level import closes a cycle; `from pkg import mod` names the module; importing
    a submodule runs its package's __init__ (closure) without making a cycle."""
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from srclib import b\n",
        "b.py": "def f():\n    from srclib.a import x\n",
        "c.py": "import srclib.pkg.leaf\n",
        "pkg/__init__.py": "from srclib.pkg.leaf import y\n",
        "pkg/leaf.py": "y = 1\n",
        "solo.py": "import os\n",
    })
    try:
        assert deps.cycles(root) == [["srclib.a", "srclib.b"]]
        assert deps.imports_of("srclib.a", root, parents=False) == {"srclib.b"}
        assert deps.closure({"srclib.c"}, root) == {"srclib", "srclib.c", "srclib.pkg", "srclib.pkg.leaf"}
        assert deps.closure({"srclib.solo"}, root) == {"srclib", "srclib.solo"}
    finally:
        deps._modules.cache_clear()
