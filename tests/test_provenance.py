"""Provenance: the commit an index page reports, and what counts as uncommitted changes."""

from __future__ import annotations

import subprocess

import pytest

from srclib import paths, provenance


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "metrics").mkdir()
    for rel, text in {"dvc.lock": "a\n", "metrics/m.json": "{}\n", "params.yaml": "x: 1\n"}.items():
        (tmp_path / rel).write_text(text)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_pipeline_outputs_do_not_count_as_uncommitted_changes(repo):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert provenance.git_commit(repo, mark_dirty=True) == head
    (repo / "dvc.lock").write_text("b\n")  # what `dvc repro` rewrites on a fresh clone
    (repo / "metrics" / "m.json").write_text('{"ppl": 1}\n')
    assert provenance.git_commit(repo, mark_dirty=True) == head
    (repo / "params.yaml").write_text("x: 2\n")  # a changed param is an uncommitted change
    assert provenance.git_commit(repo, mark_dirty=True) == head + " (uncommitted changes)"
    assert provenance.git_commit(repo) == head  # metrics files never carry the suffix


def test_missing_folder_gives_none(tmp_path):
    assert provenance.git_commit(tmp_path / "nowhere", mark_dirty=True) is None


def test_pipeline_writes_name_the_metrics_folder():
    assert str(paths.METRICS) in provenance.PIPELINE_WRITES
