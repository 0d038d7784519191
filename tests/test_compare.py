"""``python -m srclib.report.compare``: this tree's metrics/ against a commit's, under the stated
tolerances (issue 15 item 10), on synthetic metrics in a temporary git repository."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from srclib.report import compare as C

TRAIN = {"ppl": 298.16662, "ppl_over_unigram": 0.302, "loss": [6.74, 6.59, 6.21, 5.91],
         "n_params": 5263616, "samples": [{"prompt": "[BOS]Lake", "completion": " released in"}],
         "provenance": {"git_commit": "a" * 40, "versions": {"torch": "2.13.0+cpu", "lock": "sha256:00"}}}
EVAL_PRUNED = {
    "instance": "dlm-wanda-sink-50-s0",
    "ppl": {"ppl": 314.9, "nll_per_token": 5.75, "n_tokens": 4064},
    "tasks": {"arc_easy": {"metrics": {"acc": 0.22, "acc_norm": 0.18}, "stderr": {"acc": 0.0592},
                           "n_samples": 50, "version": 1.0}},
    "provenance": {"checkpoint": {"source": "pruned/dlm-wanda-sink-50-s0", "sha256": {"m": "ab"}}},
}
EVAL_DENSE = {"instance": "tiny-dlm", "ppl": {"ppl": 276.0, "nll_per_token": 5.62},
              "provenance": {"checkpoint": {"source": "models/tiny-dlm"}}}
PRUNE = {"masks_sha256": "63ea", "overall_sparsity": 0.5, "n_pruned": 948616, "spec": {"method": "wanda"}}
EFFICIENCY = {"instances": {"x": {"latency": {"1x192": {"median_s": 0.033}}, "env": {"loadavg_1m": 1.2},
                                  "flops": {"1x192": {"dense": 1214251008}}}}}
TREE = {"metrics/train/tiny-dlm.json": TRAIN, "metrics/evaluate/dlm-wanda-sink-50-s0.json": EVAL_PRUNED,
        "metrics/evaluate/tiny-dlm.json": EVAL_DENSE, "metrics/prune/dlm-wanda-sink-50-s0.json": PRUNE,
        "metrics/efficiency.json": EFFICIENCY}


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _write(root, tree):
    for rel, doc in tree.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(doc, indent=1))


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    _write(tmp_path, TREE)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "committed metrics")
    return tmp_path


def _edit(repo, rel, change):
    doc = copy.deepcopy(TREE[rel])
    change(doc)
    _write(repo, {rel: doc})


def _run(repo, capsys, *args):
    before = _git(repo, "status", "--porcelain")
    code = C.main(["--root", str(repo), *args])
    out = capsys.readouterr()
    assert _git(repo, "status", "--porcelain") == before, "the check wrote into the tree"
    return code, out.out, out.err


def _row(out, key):
    lines = [ln for ln in out.splitlines() if f"  {key}  " in f"{ln}  " or f"  {key} (" in ln]
    assert len(lines) == 1, (key, out)
    return lines[0]


def test_identical_tree_passes_with_no_table(repo, capsys):
    code, out, _ = _run(repo, capsys)
    assert code == 0
    assert out.splitlines() == [out.strip()]  # the summary line only
    assert "0 within tolerance, 0 beyond, 0 missing" in out


def test_last_digit_drift_of_another_machine_passes(repo, capsys):
    def drift(d):
        d["ppl"] = 298.16665  # the example: 7th significant digit
        d["loss"] = [x * (1 + 2e-7) for x in d["loss"]]
        d["provenance"]["versions"]["lock"] = "sha256:ff"  # never compared
        d["samples"][0]["completion"] = " released on"  # generated text: listed only
    _edit(repo, "metrics/train/tiny-dlm.json", drift)
    code, out, _ = _run(repo, capsys)
    assert code == 0, out
    assert _row(out, "ppl").startswith("within") and "298.16665" in _row(out, "ppl")
    assert "(4 values, worst shown)" in _row(out, "loss[*]")
    assert _row(out, "samples[0].completion").startswith("info")
    assert "provenance" not in out.split("\n\n")[0].replace("provenance and timings", "")


def test_dense_perplexity_beyond_rtol_fails_naming_file_and_key(repo, capsys):
    _edit(repo, "metrics/evaluate/tiny-dlm.json", lambda d: d["ppl"].update(ppl=276.0 * 1.001))
    code, out, _ = _run(repo, capsys)
    assert code == 1
    row = _row(out, "ppl.ppl")
    assert row.startswith("beyond") and "metrics/evaluate/tiny-dlm.json" in row and "rtol 0.0001" in row
    code, out, _ = _run(repo, capsys, "--ppl-rtol", "1e-2")
    assert code == 0


def test_pruned_model_perplexity_has_its_own_tolerance(repo, capsys):
    rel = "metrics/evaluate/dlm-wanda-sink-50-s0.json"
    _edit(repo, rel, lambda d: d["ppl"].update(ppl=314.9 * 1.01))  # masks flip across machines
    code, out, _ = _run(repo, capsys)
    assert code == 0 and "(pruned)" in _row(out, "ppl.ppl")
    _edit(repo, rel, lambda d: d["ppl"].update(ppl=314.9 * 1.05))
    code, out, _ = _run(repo, capsys)
    assert code == 1 and _row(out, "ppl.ppl").startswith("beyond")
    code, out, _ = _run(repo, capsys, "--pruned-ppl-rtol", "0.1")
    assert code == 0


def test_accuracy_may_move_by_one_item_of_n(repo, capsys):
    rel = "metrics/evaluate/dlm-wanda-sink-50-s0.json"
    _edit(repo, rel, lambda d: d["tasks"]["arc_easy"]["metrics"].update(acc=0.24))  # 1 of 50
    code, out, _ = _run(repo, capsys)
    assert code == 0 and "1 item(s) of 50" in _row(out, "tasks.arc_easy.metrics.acc")
    _edit(repo, rel, lambda d: d["tasks"]["arc_easy"]["metrics"].update(acc=0.26))  # 2 of 50
    code, out, _ = _run(repo, capsys)
    assert code == 1 and _row(out, "tasks.arc_easy.metrics.acc").startswith("beyond")
    code, _, _ = _run(repo, capsys, "--acc-items", "2")
    assert code == 0


def test_loss_element_beyond_fails(repo, capsys):
    _edit(repo, "metrics/train/tiny-dlm.json", lambda d: d["loss"].__setitem__(2, 6.21 * 1.001))
    code, out, _ = _run(repo, capsys)
    assert code == 1 and _row(out, "loss[2]").startswith("beyond")


def test_timings_provenance_and_hashes_never_fail(repo, capsys):
    def timing(d):
        d["instances"]["x"]["latency"]["1x192"]["median_s"] = 0.5
        d["instances"]["x"]["env"]["loadavg_1m"] = 1.9
    _edit(repo, "metrics/efficiency.json", timing)
    _edit(repo, "metrics/prune/dlm-wanda-sink-50-s0.json", lambda d: d.update(masks_sha256="ffff"))
    code, out, _ = _run(repo, capsys)
    assert code == 0
    assert "median_s" not in out and "loadavg" not in out
    assert _row(out, "masks_sha256").startswith("info")


def test_flops_counts_strings_and_structure_are_exact(repo, capsys):
    rel = "metrics/prune/dlm-wanda-sink-50-s0.json"
    for change, key in ((lambda d: d.update(n_pruned=948617), "n_pruned"),
                        (lambda d: d["spec"].update(method="sparsegpt"), "spec.method"),
                        (lambda d: d.pop("overall_sparsity"), "overall_sparsity")):
        _edit(repo, rel, change)
        code, out, _ = _run(repo, capsys)
        assert code == 1, key
        verdict = _row(out, key).split()[0]
        assert verdict == ("missing" if key == "overall_sparsity" else "beyond"), out
    _edit(repo, rel, lambda d: d.update(new_key=1))  # only here: listed, does not fail
    code, out, _ = _run(repo, capsys)
    assert code == 0 and _row(out, "new_key").startswith("extra")


def test_missing_file_fails_extra_file_is_listed_and_patterns_select(repo, capsys):
    (repo / "metrics/prune/dlm-wanda-sink-50-s0.json").unlink()
    _write(repo, {"metrics/prune/new.json": {"x": 1}})
    code, out, _ = _run(repo, capsys)
    assert code == 1
    assert "missing  metrics/prune/dlm-wanda-sink-50-s0.json" in out
    assert "extra    metrics/prune/new.json" in out
    code, out, _ = _run(repo, capsys, "metrics/train/*.json")
    assert code == 0 and "1 metrics files" in out


def test_a_checkout_in_a_subfolder_of_a_repository(tmp_path, capsys):
    # --root is the study's folder inside a bigger repository: paths stay relative to it
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    _write(tmp_path / "study", TREE)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "m")
    assert C.main(["--root", str(tmp_path / "study")]) == 0
    assert "0 missing here, 0 only here" in capsys.readouterr().out


def test_against_an_older_commit(repo, capsys):
    _edit(repo, "metrics/evaluate/tiny-dlm.json", lambda d: d["ppl"].update(ppl=300.0))
    _git(repo, "commit", "-qam", "new run")
    code, _, _ = _run(repo, capsys)  # vs HEAD: identical
    assert code == 0
    code, out, _ = _run(repo, capsys, "--against", "HEAD~1")
    assert code == 1 and "276.0" in _row(out, "ppl.ppl") and "against HEAD~1" in out


@pytest.mark.parametrize("args,words", [
    (["--rtol", "-1"], ["--rtol", "'-1'", ">= 0"]),
    (["--acc-items", "one"], ["--acc-items", "'one'", "integer"]),
    (["--ppl-rtol", "nan"], ["--ppl-rtol", "'nan'", "finite"]),
])
def test_bad_tolerance_names_the_option(repo, capsys, args, words):
    with pytest.raises(SystemExit) as ei:
        C.main(["--root", str(repo), *args])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("args,words", [
    (["--against", "no-such-rev"], ["--against", "'no-such-rev'", "not a commit"]),
    (["metrics/nothing/*.json"], ["no metrics files match", "metrics/nothing/*.json"]),
])
def test_bad_revision_or_pattern_names_it(repo, capsys, args, words):
    code, out, err = _run(repo, capsys, *args)
    assert code == 2 and out == ""
    for w in words:
        assert w in err, (w, err)


def test_not_a_git_checkout_and_bad_json_are_named(tmp_path_factory, repo, capsys):
    plain = tmp_path_factory.mktemp("plain")
    _write(plain, {"metrics/a.json": {"x": 1}})
    assert C.main(["--root", str(plain)]) == 2
    assert f"{plain} is not a git checkout" in capsys.readouterr().err
    (repo / "metrics/train/tiny-dlm.json").write_text("{oops")
    code, out, err = _run(repo, capsys)
    assert code == 2 and "metrics/train/tiny-dlm.json" in err and "not valid JSON" in err


def test_rules_classify_keys():
    assert C._kind(("provenance", "versions", "lock")) == "skip"
    assert C._kind(("instances", "x", "latency", "1x192", "median_s")) == "skip"
    assert C._kind(("calibration", "windows_sha256")) == "info"
    assert C._kind(("tasks", "piqa", "stderr", "acc")) == "accuracy"
    assert C._kind(("ppl", "nll_per_token"), pruned=True) == "pruned-ppl"
    assert C._kind(("unigram_ppl",)) == "ppl"
    assert C._kind(("loss", 3)) == "loss"
    assert C._kind(("runs", "tiny-dlm", "variance")) == "number"
