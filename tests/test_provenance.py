"""Provenance: the commit an index page reports, the dirty-tree flag and the hash of the uncommitted
difference (known answers in a temporary git repository), and the folder hash of checkpoints."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from srclib import files, paths, provenance


def _git(cwd, *args) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "metrics").mkdir()
    (tmp_path / ".gitignore").write_text("/ignored\n")
    files = {"dvc.lock": "a\n", "metrics/m.json": "{}\n", "params.yaml": "x: 1\n", "src.py": "y = 2\n"}
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def _head(repo) -> str:
    return _git(repo, "rev-parse", "HEAD").decode().strip()


def _independent_diff(repo) -> bytes:
    """The diff spelled out here, not through srclib: every tracked change but dvc.lock and metrics/."""
    return _git(repo, "diff", "--binary", "--full-index", "--no-color", "--no-renames", "--no-ext-diff",
                "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/", "HEAD", "--", ".",
                ":(exclude)dvc.lock", ":(exclude)metrics")


def test_clean_tree_is_not_dirty_and_has_no_diff_hash(repo):
    assert provenance.git_state(repo) == {"commit": _head(repo), "dirty": False, "diff_sha256": None}


def test_edited_tracked_file_hash_is_the_sha256_of_the_diff(repo):
    (repo / "params.yaml").write_text("x: 2\n")
    diff = _independent_diff(repo)
    assert b"-x: 1\n+x: 2\n" in diff and b"index " in diff  # a real diff, with full blob ids
    state = provenance.git_state(repo)
    assert state == {"commit": _head(repo), "dirty": True, "diff_sha256": hashlib.sha256(diff).hexdigest()}
    (repo / "params.yaml").write_text("x: 3\n")  # another edit, another hash
    assert provenance.git_state(repo)["diff_sha256"] == hashlib.sha256(_independent_diff(repo)).hexdigest()
    assert provenance.git_state(repo)["diff_sha256"] != state["diff_sha256"]


def test_binary_and_deleted_files_count(repo):
    (repo / "w.bin").write_bytes(bytes(range(256)))
    _git(repo, "add", "w.bin")
    _git(repo, "commit", "-qm", "binary")
    (repo / "w.bin").write_bytes(bytes(range(255, -1, -1)))
    (repo / "src.py").unlink()
    diff = _independent_diff(repo)
    assert b"GIT binary patch" in diff and b"deleted file mode" in diff
    assert provenance.git_state(repo)["diff_sha256"] == hashlib.sha256(diff).hexdigest()


def test_untracked_files_change_the_hash_ignored_ones_do_not(repo):
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_bytes(b"\0" * 100)
    assert provenance.git_state(repo)["dirty"] is False  # git-ignored: not part of the tree
    (repo / "new.py").write_text("z = 3\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "a.txt").write_bytes(b"abc")
    lines = "".join(f"{rel}\0{hashlib.sha256((repo / rel).read_bytes()).hexdigest()}\n"
                    for rel in ["new.py", "sub/a.txt"])
    state = provenance.git_state(repo)
    assert state["dirty"] is True
    assert state["diff_sha256"] == hashlib.sha256(lines.encode()).hexdigest()  # the tracked diff is empty
    first = state["diff_sha256"]
    (repo / "sub" / "a.txt").write_bytes(b"abd")  # one byte of an untracked file  # codespell:ignore abd
    assert provenance.git_state(repo)["diff_sha256"] != first
    (repo / "params.yaml").write_text("x: 2\n")  # tracked diff first, then the untracked lines
    lines = "".join(f"{rel}\0{hashlib.sha256((repo / rel).read_bytes()).hexdigest()}\n"
                    for rel in ["new.py", "sub/a.txt"])
    expected = hashlib.sha256(_independent_diff(repo) + lines.encode()).hexdigest()
    assert provenance.git_state(repo)["diff_sha256"] == expected


def test_pipeline_writes_do_not_make_the_tree_dirty(repo):
    clean = provenance.git_state(repo)
    (repo / "dvc.lock").write_text("b\n")  # what `dvc repro` rewrites on a fresh clone
    (repo / "metrics" / "m.json").write_text('{"ppl": 1}\n')
    (repo / "metrics" / "new.json").write_text("{}\n")  # a new, untracked metrics file
    assert provenance.git_state(repo) == clean
    assert provenance.git_commit(repo, mark_dirty=True) == _head(repo)


def test_git_commit_marks_a_dirty_tree_only_when_asked(repo):
    head = _head(repo)
    assert provenance.git_commit(repo, mark_dirty=True) == head
    (repo / "params.yaml").write_text("x: 2\n")  # a changed param is an uncommitted change
    assert provenance.git_commit(repo, mark_dirty=True) == head + " (uncommitted changes)"
    assert provenance.git_commit(repo) == head  # metrics files never carry the suffix


def test_same_tree_gives_the_same_state_in_another_clone(repo, tmp_path_factory):
    (repo / "params.yaml").write_text("x: 2\n")
    (repo / "new.py").write_text("z = 3\n")
    other = tmp_path_factory.mktemp("clone") / "c"
    subprocess.run(["git", "clone", "-q", str(repo), str(other)], check=True, capture_output=True)
    (other / "params.yaml").write_text("x: 2\n")
    (other / "new.py").write_text("z = 3\n")
    assert provenance.git_state(other) == provenance.git_state(repo)
    assert provenance.git_state(repo)["dirty"]


def test_missing_folder_or_no_repository_gives_none(tmp_path):
    assert provenance.git_commit(tmp_path / "nowhere", mark_dirty=True) is None
    assert provenance.git_state(tmp_path / "nowhere") is None
    assert provenance.git_state(tmp_path) is None  # /tmp is no checkout


def test_pipeline_writes_name_the_metrics_folder():
    assert str(paths.METRICS) in provenance.PIPELINE_WRITES


def test_provenance_records_the_state_and_keeps_git_commit(monkeypatch, repo):
    monkeypatch.setattr(paths, "ROOT", repo)
    (repo / "params.yaml").write_text("x: 2\n")
    p = provenance.provenance(params={"a": 1})
    assert p["git"] == provenance.git_state(repo) and p["git"]["dirty"] is True
    assert p["git_commit"] == _head(repo) and p["params"] == {"a": 1} and "fork" not in p
    assert json.dumps(p, sort_keys=True) == json.dumps(provenance.provenance(params={"a": 1}), sort_keys=True)
    monkeypatch.setenv(paths.FORK_ENV, "21_variance_mine")
    monkeypatch.setenv(paths.FORK_STAGE_ENV, "variance")
    assert provenance.provenance()["fork"] == {"name": "21_variance_mine", "stage": "variance"}


# ---- the folder hash of checkpoints ---------------------------------------------------------------
def _independent_folder_hash(folder) -> str:
    rows = []
    for p in folder.rglob("*"):
        if p.is_file():
            rows.append((str(p.relative_to(folder)).replace("\\", "/"), hashlib.sha256(p.read_bytes()).hexdigest()))
    text = "".join(f"{rel}\0{digest}\n" for rel, digest in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()


def test_folder_hash_known_answer_and_one_byte(tmp_path):
    f = tmp_path / "ckpt"
    (f / "sub").mkdir(parents=True)
    (f / "model.safetensors").write_bytes(bytes(range(200)))
    (f / "config.json").write_text('{"a": 1}\n')
    (f / "sub" / "tok.json").write_text("{}")
    h = files.sha256_folder(f)
    assert h == _independent_folder_hash(f)
    # by hand for a one-file folder: sha256("x\0" + sha256(b"1") + "\n")
    g = tmp_path / "one"
    g.mkdir()
    (g / "x").write_bytes(b"1")
    by_hand = hashlib.sha256(("x\0" + hashlib.sha256(b"1").hexdigest() + "\n").encode()).hexdigest()
    assert files.sha256_folder(g) == by_hand
    blob = bytearray((f / "model.safetensors").read_bytes())
    blob[17] ^= 1  # one byte
    (f / "model.safetensors").write_bytes(bytes(blob))
    assert files.sha256_folder(f) != h and files.sha256_folder(f) == _independent_folder_hash(f)
    (f / "model.safetensors").write_bytes(bytes(range(200)))
    assert files.sha256_folder(f) == h
    (f / "config.json").rename(f / "config2.json")  # a renamed file changes it
    assert files.sha256_folder(f) != h
    with pytest.raises(NotADirectoryError, match="not a folder"):
        files.sha256_folder(tmp_path / "missing")


# ---- prune metrics name the checkpoint they pruned -------------------------------------------------
def test_prune_metrics_carry_the_input_checkpoint_hash(tmp_path):
    import torch

    from srclib.models.base import write_marker
    from srclib.models.tiny import TinyLM, test_config
    from srclib.pruning.checkpoint import run_prune

    from prune_specs import make_spec  # tests/ is on sys.path

    torch.manual_seed(0)
    dense = tmp_path / "dense"
    TinyLM(test_config()).eval().save_pretrained(dense, safe_serialization=True)
    write_marker(dense, "tiny-dlm")
    expected = _independent_folder_hash(dense)
    res = run_prune(model=str(dense), spec=make_spec(method="magnitude"), out_dir=tmp_path / "pruned",
                    metrics_path=tmp_path / "m.json", n_samples=1, seq_len=8, seed=0, instance="x")
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["provenance"]["input_checkpoint"] == {"source": paths.rel(dense), "sha256": expected}
    assert res.metrics["provenance"]["input_checkpoint"]["sha256"] == expected
    assert _independent_folder_hash(dense) == expected  # the input is read, never written
    assert "git" in written["provenance"] and "git_commit" in written["provenance"]


def test_input_checkpoint_of_a_registry_key(tmp_path, monkeypatch):
    """A key resolves as models.load resolves it: models/<key> on disk (hashed), else the hub id at
    its pinned revision."""
    from srclib.models import MODELS
    from srclib.pruning.checkpoint import input_checkpoint

    monkeypatch.setattr(paths, "ROOT", tmp_path)
    folder = tmp_path / "models" / "tiny-dlm"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    assert input_checkpoint("tiny-dlm", MODELS["tiny-dlm"]) == {"source": "models/tiny-dlm",
                                                               "sha256": _independent_folder_hash(folder)}
    hub = MODELS["llada-8b-base"]
    assert input_checkpoint("llada-8b-base", hub) == {"source": f"GSAI-ML/LLaDA-8B-Base@{hub.revision}",
                                                     "sha256": None}
