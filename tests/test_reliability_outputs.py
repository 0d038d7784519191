"""Issue 25, items 3, 7, 8: outputs committed after every step that can fail, stale staging paths
of a killed run removed by the next one, aggregating stages refuse inputs written under other params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
