"""dvc.yaml and srclib.paths spell the same artifact paths; notebooks are thin; no absolute paths."""

import ast
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

from srclib import params, paths

ROOT = paths.ROOT
REL = Path(".")


def rel(p: Path) -> str:
    return str(Path(p).relative_to(REL)) if not Path(p).is_absolute() else str(Path(p).relative_to(ROOT))


@pytest.fixture(scope="module")
def dvc_stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        out = {}
        for st in repo.index.stages:
            if not st.addressing.endswith(".dvc") and st.cmd:
                out[st.addressing] = {
                    "outs": sorted(str(Path(o.fs_path).relative_to(ROOT)) for o in st.outs),
                    "deps": sorted(str(Path(d.fs_path).relative_to(ROOT)) for d in st.deps
                                   if d.def_path != "params.yaml" and not hasattr(d, "params")),
                    "cmd": st.cmd,
                }
        return out


def expected_outs(p: params.Params) -> dict[str, list[str]]:
    r = lambda f, *a: str(f(*a, root=REL))  # noqa: E731
    built = [k for k in ("tiny-ar", "tiny-dlm", "smollm2-135m")]
    exp = {
        "train": [r(paths.model_dir, k) for k in built]
        + [r(paths.report_html, "train", "train")]
        + [r(paths.train_metrics, k) for k in ("tiny-ar", "tiny-dlm")]
        + [str(paths.METRICS / "train" / "loss_curves.csv")],
        "variance": [str(paths.SINKS), r(paths.report_html, "variance", "variance"), r(paths.variance_metrics),
                     r(paths.variance_units)],
        "efficiency": [r(paths.report_html, "efficiency", "efficiency"), r(paths.efficiency_metrics)],
        "plot": [str(paths.TABLES), str(paths.FIGURES), r(paths.index_html), r(paths.report_html, "plot", "plot"),
                 str(paths.METRICS / "plots" / "accuracy_vs_sparsity.csv"),
                 str(paths.METRICS / "plots" / "variance_per_layer.csv"),
                 str(paths.METRICS / "plots" / "quality_vs_speedup.csv")],
    }
    for key in p.collect.models:  # one collect instance per model
        exp[f"collect@{key}"] = [r(paths.trajectory_dir, key), r(paths.report_html, "collect", key),
                                 r(paths.collect_metrics, key)]
    for name in p.prune.instances:
        exp[f"prune@{name}"] = [r(paths.pruned_dir, name), r(paths.report_html, "prune", name),
                                r(paths.prune_metrics, name)]
        exp[f"evaluate@{name}"] = [r(paths.report_html, "evaluate", name), r(paths.eval_metrics, name),
                                   r(paths.eval_units, name)]
    for name in p.efficiency.instances:
        assert name in p.prune.instances
    for key in p.evaluate.dense:
        exp[f"evaluate_dense@{key}"] = [r(paths.report_html, "evaluate", key), r(paths.eval_metrics, key),
                                        r(paths.eval_units, key)]
    return {k: sorted(v) for k, v in exp.items()}


def test_dvc_outs_agree_with_paths(dvc_stages):
    p = params.load()
    exp = expected_outs(p)
    assert sorted(dvc_stages) == sorted(exp)
    for name, outs in exp.items():
        assert dvc_stages[name]["outs"] == outs, name


def test_stage_commands_use_runner(dvc_stages):
    for name, st in dvc_stages.items():
        stage = name.split("@")[0].replace("evaluate_dense", "evaluate")
        assert st["cmd"].startswith(f"python -m srclib.run {stage} "), name
        nb = paths.notebook(stage, REL)
        assert str(nb) in st["deps"], f"{name} must depend on its notebook {nb}"


def test_prune_instance_names_do_not_collide_with_models():
    p = params.load()
    assert not set(p.prune.instances) & set(p.models)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin_and_stripped(nb_path):
    nb = nbformat.read(str(nb_path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged parameters"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs"), f"{nb_path.name}: outputs must be stripped"
        assert cell.get("execution_count") is None
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), (
                f"{nb_path.name}: no def/class/lambda in notebooks: logic belongs in srclib"
            )


def dvc_stage_parameters() -> dict[str, set[str]]:
    """stage -> the parameter names dvc.yaml's commands pass it (``python -m srclib.run <stage> k=v ...``)."""
    out: dict[str, set[str]] = {}
    for name, st in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        words = (st.get("do") or st)["cmd"].split()
        assert words[:3] == ["python", "-m", "srclib.run"] and len(words) > 3, name
        out.setdefault(words[3], set()).update(w.split("=", 1)[0] for w in words[4:])
    return out


def stage_modules_imported(tree: ast.AST) -> set[str]:
    """The srclib.stages modules a cell imports (``from srclib.stages import x``, ``import
    srclib.stages.x``, ``from srclib.stages.x import run``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "srclib.stages":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("srclib.stages."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("srclib.stages.")}
    return found


@pytest.mark.parametrize("stage", list(paths.STAGE_NOTEBOOKS))
def test_every_stage_has_a_notebook(stage):
    """paths.notebook(stage) is that stage's own notebook: a valid notebook whose title names the
    stage, whose code imports srclib.stages.<stage> and no other stage module and calls its run,
    and whose parameters cell declares every parameter dvc.yaml's command passes the stage."""
    nb_path = paths.notebook(stage)
    assert nb_path.is_file(), stage
    nb = nbformat.read(str(nb_path), as_version=4)
    nbformat.validate(nb)
    title = next(c.source for c in nb.cells if c.cell_type == "markdown").splitlines()[0]
    assert title.startswith(f"# Stage `{stage}`"), (nb_path.name, title)
    code = [c for c in nb.cells if c.cell_type == "code"]
    imported = set().union(*(stage_modules_imported(ast.parse(c.source)) for c in code))
    assert imported == {stage}, (nb_path.name, imported)
    calls_run = re.compile(rf"(?<![\w.]){stage}\.run\(")
    assert any(calls_run.search(c.source) for c in code), f"{nb_path.name} never calls {stage}.run"
    [params_cell] = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    declared = {t.id for node in ast.parse(params_cell.source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    passed = dvc_stage_parameters()[stage]
    assert passed and passed <= declared, (f"{nb_path.name} declares {sorted(declared)}; "
                                           f"dvc.yaml passes {sorted(passed)}")


def test_test_modules_do_not_import_each_other():
    """Code that several test modules share lives in a helper module (tests/helpers.py,
    tests/report_tree.py, prune_specs.py, standins.py) or a conftest fixture; a test module that
    imports another runs that module's code twice and ties it to the other's internals."""
    offenders = []
    for f in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
                if node.module == "tests":  # from tests import test_x
                    names += [f"tests.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                mod = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
                if mod.startswith("test_"):
                    offenders.append(f"{f.name}:{node.lineno} imports {name}")
    assert not offenders, offenders


ABS = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users)/")


def test_no_absolute_paths_in_repo_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for f in files:
        path = ROOT / f
        if path.suffix in {".py", ".yaml", ".yml", ".ipynb", ".md", ".toml", ".cfg", ".txt", ""} and path.is_file():
            if f.startswith("tests/test_paths.py"):
                continue
            text = path.read_text(errors="ignore")
            if ABS.search(text):
                offenders.append(f)
    assert not offenders, f"absolute paths in {offenders}"


def test_stages_depend_on_the_shared_corpus_reader_and_the_params_corpus(dvc_stages):
    p = params.load()
    for name, st in dvc_stages.items():
        if name == "train" or name.split("@")[0] in ("prune", "evaluate", "evaluate_dense"):
            assert "srclib/data/corpus.py" in st["deps"], f"{name} reads corpora through srclib.data.corpus"
            assert "srclib/data/build.py" not in st["deps"], f"{name} does not run the data/raw builder"
        if name.startswith("prune@"):
            assert p.prune.calibration.corpus in st["deps"], name


def test_rel_never_records_the_clone_location(tmp_path):
    assert paths.rel(paths.ROOT / "pruned" / "x") == "pruned/x"
    assert paths.rel(tmp_path / "y") == str(tmp_path / "y")
    assert paths.rel(tmp_path / "a" / "b.json", root=tmp_path) == "a/b.json"
