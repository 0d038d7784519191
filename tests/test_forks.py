"""Forked notebooks: `python -m srclib.run <fork>` runs a copy of a stage notebook like its stage,
writes the stage's outputs under forks/<name>/ (never over the stage's own), renders its HTML beside
the stages' and lists it in reports/index.html; the README's dvc.yaml stage for a fork works."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from srclib import deps, paths, run
from srclib.files import write_json
from srclib.run import RunnerError
from srclib.trajectories.store import Trajectory, save_trajectory

from helpers import write_notebook  # tests/ is on sys.path

FORK = "21_variance_mine"
VENV_BIN = Path(sys.executable).parent


# ---- the output table ----------------------------------------------------------------------------
def _dvc_outs() -> dict[str, list[Path]]:
    """dvc.yaml stage -> its declared outs, metrics and plots (``${...}`` templates as one path part)."""
    stages = yaml.safe_load((paths.ROOT / "dvc.yaml").read_text())["stages"]
    out: dict[str, list[Path]] = {}
    for name, st in stages.items():
        body = st.get("do", st)
        items = []
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind, []) or []:
                items.append(next(iter(entry)) if isinstance(entry, dict) else entry)
        out[name] = [Path(re.sub(r"\$\{[^}]+\}", "X", p)) for p in items]
    return out


def _under(p: Path, prefix: Path) -> bool:
    return p == prefix or prefix in p.parents


def test_stage_outputs_table_covers_every_dvc_out():
    """Every out of a stage (its HTML report aside, which the runner writes) lies under an entry of
    paths.STAGE_OUTPUTS for that stage, and every tracked entry holds at least one out: a fork of
    the stage redirects exactly what the stage writes."""
    of = {"evaluate_dense": "evaluate"}
    seen: dict[str, set[Path]] = {}
    for name, outs in _dvc_outs().items():
        stage = of.get(name, name)
        assert stage in paths.STAGE_OUTPUTS, f"dvc.yaml stage {name!r} has no row in paths.STAGE_OUTPUTS"
        for o in outs:
            if _under(o, paths.HTML / stage):
                continue
            hits = [e for e in paths.STAGE_OUTPUTS[stage] if _under(o, e)]
            assert hits, f"{name}: out {o} is not under paths.STAGE_OUTPUTS[{stage!r}]"
            seen.setdefault(stage, set()).update(hits)
    for stage, entries in paths.STAGE_OUTPUTS.items():
        tracked = {e for e in entries if not _under(e, paths.TIMING)}  # timing/ is git-ignored, never an out
        assert tracked == seen.get(stage, set()), f"{stage}: entries without a dvc.yaml out: {tracked - seen[stage]}"


def test_redirect_inside_a_fork_only(tmp_path, monkeypatch):
    assert paths.sink_stats("a", tmp_path) == tmp_path / "sinks" / "a.json"
    monkeypatch.setenv(paths.FORK_ENV, FORK)
    monkeypatch.setenv(paths.FORK_STAGE_ENV, "variance")
    fork = tmp_path / "forks" / FORK
    assert paths.sink_stats("a", tmp_path) == fork / "sinks" / "a.json"
    assert paths.sinks_dir(tmp_path) == fork / "sinks"
    assert paths.variance_metrics(tmp_path) == fork / "metrics" / "variance.json"
    # reads of other stages' outputs stay in place
    assert paths.trajectory_file("m", tmp_path) == tmp_path / "trajectories" / "m" / "m.safetensors"
    assert paths.prune_metrics("i", tmp_path) == tmp_path / "metrics" / "prune" / "i.json"
    assert paths.model_dir("k", tmp_path) == tmp_path / "models" / "k"
    monkeypatch.setenv(paths.FORK_STAGE_ENV, "prune")
    assert paths.pruned_dir("i", tmp_path) == tmp_path / "forks" / FORK / "pruned" / "i"
    assert paths.prune_timing("i", tmp_path) == tmp_path / "forks" / FORK / "timing" / "prune" / "i.json"
    assert paths.sink_stats("a", tmp_path) == tmp_path / "sinks" / "a.json"  # prune reads sinks/ in place
    monkeypatch.setenv(paths.FORK_STAGE_ENV, "nostage")
    with pytest.raises(ValueError, match="SRCLIB_FORK_STAGE = one of"):
        paths.sink_stats("a", tmp_path)


def test_files_refuse_a_write_over_a_stage_output_inside_a_fork(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setenv(paths.FORK_ENV, FORK)
    monkeypatch.setenv(paths.FORK_STAGE_ENV, "variance")
    with pytest.raises(RuntimeError,
                       match=r"fork '21_variance_mine' would write sinks/a.json, an output of stage 'variance'"):
        write_json(tmp_path / "sinks" / "a.json", {})  # spelled without srclib.paths
    from srclib.files import atomic_outputs

    with pytest.raises(RuntimeError, match="would write metrics/variance.json"):
        with atomic_outputs() as out:
            out.file(tmp_path / "metrics" / "variance.json")
    write_json(paths.variance_metrics(), {"ok": 1})  # through srclib.paths: under forks/<name>/
    assert json.loads((tmp_path / "forks" / FORK / "metrics" / "variance.json").read_text()) == {"ok": 1}
    assert not (tmp_path / "sinks").exists() and not (tmp_path / "metrics" / "variance.json").exists()


# ---- finding a fork and its stage ----------------------------------------------------------------
@pytest.mark.parametrize("code", [
    "from srclib import notebook\nfrom srclib.stages import variance",
    "import srclib.stages.variance as v",
    "from srclib.stages.variance import run",
    "%matplotlib inline\nfrom srclib.stages import variance, __init__",
])
def test_fork_stage_is_the_one_stage_module_imported(tmp_path, code):
    assert run.fork_stage(write_notebook(tmp_path / "f.ipynb", code)) == "variance"


@pytest.mark.parametrize("code, found", [("from srclib import notebook", r"\[\]"),
                                         ("from srclib.stages import variance, prune", r"\['prune', 'variance'\]")])
def test_fork_stage_needs_exactly_one_stage(tmp_path, code, found):
    with pytest.raises(RunnerError, match=rf"imports exactly one stage module .* found {found}"):
        run.fork_stage(write_notebook(tmp_path / "f.ipynb", code))


def test_resolve_stage_fork_name_path_and_unknown(tmp_path, monkeypatch):
    fork = write_notebook(tmp_path / "notebooks" / f"{FORK}.ipynb", "from srclib.stages import variance")
    stage_nb = write_notebook(paths.notebook("variance", tmp_path), "from srclib.stages import variance")
    assert run.resolve("variance", tmp_path) == ("variance", None)
    assert run.resolve(FORK, tmp_path) == (None, fork)
    assert paths.fork_notebooks(tmp_path) == {FORK: fork}
    assert paths.notebook(FORK, tmp_path) == fork  # srclib.deps reads a fork's imports through this
    assert run.resolve(str(fork), tmp_path) == (None, fork)
    assert run.resolve(str(stage_nb), tmp_path) == ("variance", None)  # a stage's own notebook runs as the stage
    with pytest.raises(RunnerError) as exc:
        run.resolve("unknown_thing", tmp_path)
    msg = str(exc.value)
    assert msg.startswith("unknown stage 'unknown_thing'; stages: ['train', 'collect', 'variance'")
    assert f"forked notebooks (notebooks/*.ipynb that are not a stage's): ['{FORK}']" in msg
    with pytest.raises(RunnerError, match="notebook not found: nowhere/x.ipynb"):
        run.resolve("nowhere/x.ipynb", tmp_path)
    with pytest.raises(RunnerError, match="not a stage's name"):
        run.run_fork(write_notebook(tmp_path / "elsewhere" / "variance.ipynb", "from srclib.stages import variance"),
                     {}, root=tmp_path)
    with pytest.raises(RunnerError,
                       match=r"stage 'variance, forked as 21_variance_mine': unknown parameter\(s\) \['zz'\]"):
        run.run_fork(fork, {"params_file": "params.yaml", "zz": 1}, root=tmp_path)


def test_unknown_thing_exit_code_and_message(caplog):
    assert run.main(["unknown_thing"]) == 2
    text = caplog.text
    assert "unknown stage 'unknown_thing'; stages: ['train', 'collect', 'variance', 'prune', 'evaluate'" in text
    assert "forked notebooks" in text


# ---- the index lists forks ----------------------------------------------------------------------
def test_index_fork_section_refresh_equals_a_fresh_build(tmp_path):
    from srclib.report.index import build_index, refresh_forks

    assert refresh_forks(tmp_path) is None  # no index yet: the plot stage writes one
    build_index(tmp_path, {"plot": {}}, "c0ffee", findings=[], tables={})
    index = paths.index_html(tmp_path)
    assert 'id="forks"' in index.read_text() and "None yet" in index.read_text()
    html = paths.fork_html(FORK, tmp_path)
    html.parent.mkdir(parents=True)
    html.write_text("<html></html>")
    refresh_forks(tmp_path)
    refreshed = index.read_text()
    assert f'<a href="html/forks/{FORK}.html">{FORK}</a>' in refreshed
    assert "Other stage reports" in refreshed and refreshed.count(f"{FORK}.html") == 1  # not listed twice
    build_index(tmp_path, {"plot": {}}, "c0ffee", findings=[], tables={})
    assert index.read_text() == refreshed


# ---- end to end on a fake study -----------------------------------------------------------------
def fake_study(root: Path) -> None:
    """Two hand-made trajectories (a DLM whose dominant position moves, an AR model's at 0), the
    study's params.yaml and the variance notebook."""
    S, L, B, T, P = 4, 2, 2, 8, 3
    g = torch.Generator().manual_seed(0)
    for model, kind in (("tiny-dlm", "dlm"), ("tiny-ar", "ar")):
        mass = torch.rand(S, L, B, T, generator=g) + 0.1
        if kind == "dlm":
            for s in range(S):
                mass[s, :, :, s] += 5.0
            valid, extra = torch.full((S,), T), {"step_ids": torch.full((S, B, T), 5, dtype=torch.long)}
        else:
            valid = torch.tensor([P + s for s in range(S)])
            for s in range(S):
                mass[s, :, :, int(valid[s]):] = 0
            mass[:, :, :, 0] += 5.0
            extra = {"prefill_mass": torch.rand(L, B, T, generator=g)}
        meta = {"kind": kind, "model": model, "run": model, "random_init": False, "causal": kind == "ar",
                "mask_id": 7 if kind == "dlm" else None, "has_bos": True, "bos_id": 1}
        save_trajectory(Trajectory(meta=meta, mass=mass, valid_len=valid,
                                   prompt_ids=torch.zeros(B, P, dtype=torch.long),
                                   final_ids=torch.zeros(B, T, dtype=torch.long), **extra),
                        paths.trajectory_file(model, root))
    text = (paths.ROOT / "params.yaml").read_text()  # the study's params, collecting these two runs only
    collect = "collect:\n  models: [tiny-dlm, tiny-ar, smollm2-135m]\n"
    assert collect in text and "  random_init_control: true\n" in text
    text = text.replace(collect, "collect:\n  models: [tiny-dlm, tiny-ar]\n").replace(
        "  random_init_control: true\n", "  random_init_control: false\n")
    (root / "params.yaml").write_text(text)
    (root / "notebooks").mkdir(exist_ok=True)
    shutil.copy(paths.notebook("variance"), paths.notebook("variance", root))


def make_fork(root: Path) -> Path:
    """notebooks/21_variance_mine.ipynb: the variance notebook, edited (a new title, one more cell)."""
    nb = nbformat.read(str(paths.notebook("variance")), as_version=4)
    nb.cells[0].source = "# My variance variant\n\n" + nb.cells[0].source
    nb.cells.append(nbformat.v4.new_code_cell("sorted(result.metrics['runs'])"))
    path = root / "notebooks" / f"{FORK}.ipynb"
    nbformat.write(nb, str(path))
    return path


def _snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_fork_writes_its_own_outputs_renders_and_is_indexed(tmp_path):
    from srclib import params
    from srclib.report.index import build_index
    from srclib.stages import variance

    fake_study(tmp_path)
    variance.sink_variance(params.load(tmp_path / "params.yaml").variance, root=tmp_path)  # the stage's tracked outputs
    build_index(tmp_path, {"plot": {}}, "c0ffee", findings=[], tables={})  # an index from an earlier plot run
    make_fork(tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, "SRCLIB_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "srclib.run", FORK, "params_file=params.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _snapshot(tmp_path)
    # the stage's outputs are untouched: same bytes, same files (never replaced)
    tracked = [k for k in before if k.startswith(("sinks/", "metrics/units/")) or k == "metrics/variance.json"]
    assert sorted(tracked) == ["metrics/units/variance.json", "metrics/variance.json", "sinks/tiny-ar.json",
                               "sinks/tiny-dlm.json"]
    for k in tracked:
        assert after[k] == before[k], k
    # what changed: the fork's outputs, its report and the index; nothing else
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert changed == [f"forks/{FORK}/metrics/units/variance.json", f"forks/{FORK}/metrics/variance.json",
                       f"forks/{FORK}/sinks/tiny-ar.json",
                       f"forks/{FORK}/sinks/tiny-dlm.json", f"reports/html/forks/{FORK}.html", "reports/index.html"]
    assert sorted(set(before) - set(after)) == []
    mine = json.loads((tmp_path / "forks" / FORK / "metrics" / "variance.json").read_text())
    stage = json.loads((tmp_path / "metrics" / "variance.json").read_text())
    assert mine["provenance"]["fork"] == {"name": FORK, "stage": "variance"} and "fork" not in stage["provenance"]
    assert mine["runs"] == stage["runs"]  # same inputs, same params: the same numbers
    assert ((tmp_path / "forks" / FORK / "sinks" / "tiny-dlm.json").read_bytes()
            == (tmp_path / "sinks" / "tiny-dlm.json").read_bytes())
    html = paths.fork_html(FORK, tmp_path).read_text()
    assert "My variance variant" in html and "tiny-dlm" in html
    index = paths.index_html(tmp_path).read_text()
    assert f'<li data-fork="{FORK}"><a href="html/forks/{FORK}.html">{FORK}</a>' in index
    assert not list(tmp_path.rglob("*.tmp"))


# ---- the README's dvc.yaml stage ----------------------------------------------------------------
def readme_fork_stage() -> str:
    text = (paths.ROOT / "README.md").read_text()
    section = text[text.index("**Fork a notebook**"):]
    return section[section.index("```yaml\n") + len("```yaml\n"):section.index("```\n", section.index("```yaml"))]


def test_readme_fork_stage_names_the_fork_and_its_outputs():
    stage = yaml.safe_load(readme_fork_stage())[FORK]
    assert stage["cmd"] == f"python -m srclib.run {FORK} params_file=params.yaml"
    assert f"notebooks/{FORK}.ipynb" in stage["deps"] and "trajectories" in stage["deps"]
    outs = [next(iter(o)) for o in stage["outs"] + stage["metrics"]]
    assert outs == [f"forks/{FORK}/sinks", f"reports/html/forks/{FORK}.html",
                    f"forks/{FORK}/metrics/units/variance.json", f"forks/{FORK}/metrics/variance.json"]
    assert outs[0] == paths.rel(paths.fork_dir(FORK) / paths.SINKS) and outs[1] == paths.rel(paths.fork_html(FORK))


@pytest.mark.slow
def test_readme_fork_stage_runs_with_dvc_repro(tmp_path):
    """The README's stage text in a temporary copy of the package: --sync-dvc fills in the srclib
    closure, `dvc repro` runs the fork, a second `dvc repro` does nothing."""
    root = tmp_path / "study"
    root.mkdir()
    shutil.copytree(paths.ROOT / "srclib", root / "srclib", ignore=shutil.ignore_patterns("__pycache__"))
    fake_study(root)
    make_fork(root)
    (root / ".gitignore").write_text((paths.ROOT / ".gitignore").read_text())
    (root / "dvc.yaml").write_text("stages:\n" + readme_fork_stage())
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("SRCLIB_ROOT", None)

    def sh(*cmd, check=True):
        p = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert not check or p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        return p

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    deps._modules.cache_clear()
    try:
        assert deps.sync_dvc_yaml(root / "dvc.yaml", root=root) == [FORK]
        listed = sorted(d for d in yaml.safe_load((root / "dvc.yaml").read_text())["stages"][FORK]["deps"]
                        if d.startswith("srclib/"))
        assert listed == deps.stage_closure(FORK, root) == deps.stage_closure("variance", root)
    finally:
        deps._modules.cache_clear()
    sh(sys.executable, "-m", "dvc", "repro", FORK)
    fork = root / "forks" / FORK
    assert (fork / "metrics" / "variance.json").is_file() and (fork / "sinks" / "tiny-dlm.json").is_file()
    assert paths.fork_html(FORK, root).is_file()
    assert not (root / "sinks").exists() and not (root / "metrics").exists()  # the stage's outputs untouched
    assert json.loads((fork / "metrics" / "variance.json").read_text())["provenance"]["fork"]["name"] == FORK
    again = sh(sys.executable, "-m", "dvc", "repro", FORK)
    assert "didn't change" in again.stdout or "up to date" in again.stdout, again.stdout
    status = sh(sys.executable, "-m", "dvc", "status")
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout
