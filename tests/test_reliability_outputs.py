"""Issue 25, items 3, 7, 8: outputs committed after every step that can fail, stale staging paths
of a killed run removed by the next one, aggregating stages refuse inputs written under other params."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from srclib import files as io


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- item 8: staging paths a killed run left ---------------------------------------------------
def test_next_write_removes_staging_left_by_a_killed_writer(tmp_path):
    target = tmp_path / "models" / "tiny-dlm"
    target.parent.mkdir()
    dead = _dead_pid()
    left = [target.parent / f".tiny-dlm.{dead}-abc123.tmp",  # a checkpoint folder half-written
            target.parent / ".tiny-dlm.k2j3h4g5.tmp",  # an older srclib's name (no process id)
            target.parent / f".tiny-dlm.{dead}-zz.old"]  # a backup of a killed commit
    for p in left:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"x" * 1000)
    live = target.parent / f".tiny-dlm.{os.getpid()}-live.tmp"  # a writer still running: kept
    live.mkdir()
    other = target.parent / f".tiny-ar.{dead}-abc.tmp"  # another output's: not this run's business
    other.mkdir()
    with io.atomic_outputs() as out:
        (out.dir(target) / "config.json").write_text("{}")
    assert (target / "config.json").is_file()
    assert not any(p.exists() for p in left), "stale staging folders survived the rerun"
    assert live.is_dir() and other.is_dir()
    # a file output likewise (atomic_path and Outputs.file)
    stale = tmp_path / f".m.json.{dead}-q1.tmp"
    stale.write_text("{")
    io.write_json(tmp_path / "m.json", {"a": 1})
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.json"]


def test_staging_names_carry_the_writer_pid(tmp_path):
    seen = []
    with io.atomic_outputs() as out:
        seen.append(out.dir(tmp_path / "d"))
        seen.append(out.file(tmp_path / "f.json"))
        io.write_json(seen[1], {})
    assert seen[0].name.startswith(f".d.{os.getpid()}-") and seen[1].name.startswith(f".f.json.{os.getpid()}-")


# ---- item 7: a stage's outputs roll back when a later step fails --------------------------------
def test_journal_rolls_back_every_output_when_a_later_step_fails(tmp_path, monkeypatch):
    ckpt, metrics, new = tmp_path / "pruned" / "x", tmp_path / "metrics" / "x.json", tmp_path / "metrics" / "new.json"
    ckpt.mkdir(parents=True)
    (ckpt / "w").write_text("old")
    io.write_json(metrics, {"v": "old"})
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv(io.JOURNAL_ENV, str(journal))
    with io.atomic_outputs() as out:
        (out.dir(ckpt) / "w").write_text("new")
        io.write_json(out.file(metrics), {"v": "new"})
        io.write_json(out.file(new), {"v": "new"})
    # committed: later cells of the notebook read the new outputs
    assert (ckpt / "w").read_text() == "new" and io.read_json(metrics) == {"v": "new"}
    rolled = io.finish_journal(journal, ok=False)  # e.g. the HTML report could not be written
    assert sorted(rolled) == sorted(map(str, (ckpt, metrics, new)))
    assert (ckpt / "w").read_text() == "old" and io.read_json(metrics) == {"v": "old"} and not new.exists()
    assert not journal.exists()
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == ["x"]
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["x.json"]


def test_journal_keeps_the_outputs_when_the_run_succeeds(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    io.write_json(target, {"v": "old"})
    journal = tmp_path / "j.jsonl"
    monkeypatch.setenv(io.JOURNAL_ENV, str(journal))
    with io.atomic_outputs() as out:
        io.write_json(out.file(target), {"v": "new"})
    assert len(journal.read_text().splitlines()) == 1
    assert io.finish_journal(journal, ok=True) == []
    assert io.read_json(target) == {"v": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # the backup went too
    assert io.finish_journal(journal, ok=True) == []  # no journal: nothing to do


# ---- item 3: plot refuses metrics written under other params ------------------------------------
import copy  # noqa: E402

import yaml  # noqa: E402

from srclib import params as params_mod, paths  # noqa: E402
from srclib.report import freshness  # noqa: E402


@pytest.fixture(scope="module")
def raw():
    """params.yaml as plain YAML (the recorded side, built without srclib's own conversions)."""
    return yaml.safe_load((paths.ROOT / "params.yaml").read_text())


def _evaluate_doc(raw, instance):
    ev = {k: raw["evaluate"][k] for k in ("batch_size", "seed", "ppl", "sampler", "tasks")}
    inst = raw["prune"]["instances"].get(instance)
    model = inst["model"] if inst else instance
    return {"tasks": {}, "provenance": {"params": {"evaluate": ev, f"models.{model}": raw["models"][model]}}}


def test_fresh_inputs_pass_and_a_changed_setting_is_named(raw, tmp_path):
    P = params_mod.load_dict(copy.deepcopy(raw))
    name = next(iter(raw["prune"]["instances"]))
    dense = raw["evaluate"]["dense"][0]
    for inst in (name, dense):
        io.write_json(paths.eval_metrics(inst, tmp_path), _evaluate_doc(raw, inst))
    assert freshness.stale_inputs(P, tmp_path) == []
    # the old flat record (srclib before sections) of the same settings is fresh too
    flat = {"tasks": {}, "provenance": {"params": copy.deepcopy(raw["evaluate"])}}
    io.write_json(paths.eval_metrics(dense, tmp_path), flat)
    assert freshness.stale_inputs(P, tmp_path) == []
    # params change after the runs: every file that read the setting is named, with the fix
    changed = copy.deepcopy(raw)
    changed["evaluate"]["ppl"]["n_windows"] += 1
    stale = freshness.stale_inputs(params_mod.load_dict(changed), tmp_path)
    assert sorted(s.file for s in stale) == sorted(paths.rel(paths.eval_metrics(i, tmp_path), tmp_path)
                                                   for i in (name, dense))
    s = next(s for s in stale if name in s.file)
    assert (s.setting, s.recorded, s.current) == ("evaluate.ppl.n_windows", raw["evaluate"]["ppl"]["n_windows"],
                                                  raw["evaluate"]["ppl"]["n_windows"] + 1)
    assert s.rerun == f"dvc repro evaluate@{name}"
    with pytest.raises(freshness.StaleInputs, match=r"evaluate\.ppl\.n_windows = \d+ when it was written"):
        freshness.check_inputs(params_mod.load_dict(changed), tmp_path)


def test_a_prune_run_of_an_older_spec_is_stale(raw, tmp_path):
    P = params_mod.load_dict(copy.deepcopy(raw))
    name = next(n for n, i in raw["prune"]["instances"].items() if i["method"] != "magnitude")
    spec = P.prune.spec(name).to_dict()
    io.write_json(paths.prune_metrics(name, tmp_path), {"spec": spec, "provenance": {}})
    assert freshness.stale_inputs(P, tmp_path) == []
    old = {**spec, "sparsity": 0.25 if spec["sparsity"] != 0.25 else 0.75}
    io.write_json(paths.prune_metrics(name, tmp_path), {"spec": old, "provenance": {}})
    (s,) = freshness.stale_inputs(P, tmp_path)
    assert s.setting == f"prune.instances.{name}.sparsity" and s.recorded == old["sparsity"]
    # the evaluation of that checkpoint records the spec it scored: a re-pruned, not re-evaluated one is stale
    doc = _evaluate_doc(raw, name)
    doc["provenance"]["params"][f"prune.instances.{name}"] = old
    io.write_json(paths.eval_metrics(name, tmp_path), doc)
    assert {s.file for s in freshness.stale_inputs(P, tmp_path)} == {
        paths.rel(paths.prune_metrics(name, tmp_path), tmp_path),
        paths.rel(paths.eval_metrics(name, tmp_path), tmp_path)}


def test_variance_written_for_other_collect_models_or_without_its_section(raw, tmp_path):
    P = params_mod.load_dict(copy.deepcopy(raw))
    rec = {"variance": raw["variance"], "collect.models": raw["collect"]["models"][:1],
           "collect.random_init_control": raw["collect"]["random_init_control"]}
    io.write_json(paths.variance_metrics(tmp_path), {"runs": {}, "provenance": {"params": rec}})
    (s,) = freshness.stale_inputs(P, tmp_path)
    assert s.setting == "collect.models" and s.rerun == "dvc repro variance"
    io.write_json(paths.variance_metrics(tmp_path), {"runs": {}, "provenance": {"params": {}}})
    (s,) = freshness.stale_inputs(P, tmp_path)
    assert "records no 'variance'" in str(s)


def test_plot_stops_before_writing_anything_on_a_stale_input(raw, tmp_path):
    from srclib.stages import plot

    changed = copy.deepcopy(raw)
    changed["evaluate"]["seed"] += 1
    P = params_mod.load_dict(changed)
    dense = raw["evaluate"]["dense"][0]
    io.write_json(paths.eval_metrics(dense, tmp_path), _evaluate_doc(raw, dense))
    with pytest.raises(freshness.StaleInputs, match=rf"{dense}\.json: evaluate\.seed"):
        plot.run(P, root=tmp_path)
    assert not (tmp_path / "reports").exists()


def test_an_evaluation_records_what_the_freshness_check_compares(raw, tmp_path):
    """The evaluate stage's provenance.params are the sections freshness expects of it: for a
    pruned folder the spec its marker names, so the record of the params in use is fresh."""
    from srclib.models.base import write_marker
    from srclib.stages.evaluate import _params_record

    P = params_mod.load_dict(copy.deepcopy(raw))
    name = next(iter(raw["prune"]["instances"]))
    model = raw["prune"]["instances"][name]["model"]
    folder = tmp_path / "pruned" / name
    folder.mkdir(parents=True)
    write_marker(folder, key=model, pruned=P.prune.spec(name).to_dict(), instance=name)
    rec = json.loads(json.dumps(_params_record(P.evaluate, model, P.models[model], folder)))
    assert rec == json.loads(json.dumps(freshness.evaluate_sections(P, name)))
    assert rec["evaluate"] == {k: raw["evaluate"][k] for k in ("batch_size", "seed", "ppl", "sampler", "tasks")}
    io.write_json(paths.eval_metrics(name, tmp_path), {"tasks": {}, "provenance": {"params": rec}})
    assert freshness.stale_inputs(P, tmp_path) == []


def test_runner_puts_outputs_back_when_the_html_cannot_be_written(tmp_path, monkeypatch):
    """Issue 25 item 7: with the HTML folder read-only the stage fails and its outputs are the old ones."""
    import nbformat

    from srclib import run

    target = tmp_path / "metrics" / "out.json"
    io.write_json(target, {"v": "old"})
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("params_file = 'params.yaml'")
    p.metadata["tags"] = ["parameters"]
    body = ("from srclib import files as io\n"
            f"with io.atomic_outputs() as out:\n    io.write_json(out.file({str(target)!r}), {{'v': 'new'}})")
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb_path = paths.notebook("plot", tmp_path)
    nb_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(nb_path))
    (tmp_path / "params.yaml").write_text((paths.ROOT / "params.yaml").read_text())
    def read_only(nb_out, html):  # as nbconvert's write into a read-only reports/html/ fails
        raise PermissionError(13, "Permission denied", str(html))

    monkeypatch.setattr(run, "render_html", read_only)
    with pytest.raises(PermissionError):
        run._execute("stage plot", nb_path, "plot", {"params_file": "params.yaml"}, tmp_path,
                     paths.report_html("plot", "plot", tmp_path), paths.failed_notebook("plot", "plot", tmp_path))
    monkeypatch.undo()
    assert io.read_json(target) == {"v": "old"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    # and a run that ends well keeps the new output
    run._execute("stage plot", nb_path, "plot", {"params_file": "params.yaml"}, tmp_path,
                 paths.report_html("plot", "plot", tmp_path), paths.failed_notebook("plot", "plot", tmp_path))
    assert io.read_json(target) == {"v": "new"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
