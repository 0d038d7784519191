"""Provenance carried by every metrics file: git commit and tree state, package versions, params.

One definition for every stage, so the metrics files agree on what they record. Nothing here
reads a clock: metrics files stay byte-identical across runs of the same tree and params.
``git_state()`` says whether the checkout differs from its commit and hashes the difference, so
results from an edited tree never pass for the commit's: ``{"commit", "dirty", "diff_sha256"}``.
What ``dvc repro`` itself writes into git-tracked files (``dvc.lock`` and ``metrics/``,
``PIPELINE_WRITES``) is not a difference: a fresh clone's first ``dvc repro`` rewrites those and
still runs the committed code and params.
``versions()`` also records the sha256 of the hashed lock of every package
(``requirements/lock-cpu.txt``, what ``make`` installs), under the lock's path: the package
versions name the few that shape the numbers, the lock's hash names all of them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "git_state", "diff_bytes", "untracked_files", "versions", "provenance", "lock_sha256",
           "PACKAGES", "LOCK_FILE", "PIPELINE_WRITES", "DIFF_ARGS"]

# git-tracked files that `dvc repro` writes (srclib.paths.METRICS and the lock file)
PIPELINE_WRITES = ("dvc.lock", "metrics")
PACKAGES = ("torch", "transformers", "lm_eval", "datasets", "safetensors", "tokenizers")
# the hashed lock of every package of the CPU build, repository-relative (the Makefile installs it)
LOCK_FILE = Path("requirements/lock-cpu.txt")
# `git diff` whose bytes do not depend on the user's git configuration or the repository's size:
# full blob ids (abbreviations grow with the repository), no colour, renames or external drivers
DIFF_ARGS = ("diff", "--binary", "--full-index", "--no-color", "--no-renames", "--no-ext-diff", "--no-textconv",
             "--src-prefix=a/", "--dst-prefix=b/")


def _root(root: str | Path | None) -> Path:
    from srclib import paths

    return Path(root) if root is not None else paths.ROOT


def _excludes() -> list[str]:
    return [f":(exclude){p}" for p in PIPELINE_WRITES]


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # core.quotepath off: paths as bytes, never C-quoted (a setting's choice); no optional index lock:
    # reading the tree state never blocks a concurrent commit
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(["git", "-c", "core.quotepath=off", *args], cwd=cwd, capture_output=True, timeout=60,
                          env=env)


def diff_bytes(root: str | Path | None = None) -> bytes:
    """``git diff --binary HEAD`` of the tracked files (``DIFF_ARGS``), less ``PIPELINE_WRITES``."""
    out = _git(_root(root), *DIFF_ARGS, "HEAD", "--", ".", *_excludes())
    if out.returncode != 0:
        raise RuntimeError(f"git diff failed in {_root(root)}: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout


def untracked_files(root: str | Path | None = None) -> list[str]:
    """Untracked files git does not ignore (repository-relative, sorted), less ``PIPELINE_WRITES``."""
    out = _git(_root(root), "ls-files", "-z", "--others", "--exclude-standard", "--", ".", *_excludes())
    if out.returncode != 0:
        raise RuntimeError(f"git ls-files failed in {_root(root)}: {out.stderr.decode(errors='replace').strip()}")
    return sorted(p for p in out.stdout.decode("utf-8", errors="surrogateescape").split("\0") if p)


def git_state(root: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": HEAD, "dirty": bool, "diff_sha256": hex or None}`` of the checkout at ``root``
    (default: the repository; None outside a git checkout or without git).

    dirty: tracked files differ from HEAD, or untracked files that git does not ignore exist,
    neither counting ``PIPELINE_WRITES``. diff_sha256 (None when clean): sha256 over the bytes of
    ``diff_bytes()`` followed, for every untracked file in sorted order, by the line
    ``<path>\\0<sha256 of its bytes>\\n``. The same tree gives the same hash in any clone."""
    from srclib.files import sha256_file

    cwd = _root(root)
    try:
        head = _git(cwd, "rev-parse", "--verify", "HEAD")
        if head.returncode != 0:
            return None
        diff = diff_bytes(cwd)
        untracked = untracked_files(cwd)
    except (OSError, subprocess.SubprocessError, RuntimeError):
        return None
    commit = head.stdout.decode().strip()
    if not diff and not untracked:
        return {"commit": commit, "dirty": False, "diff_sha256": None}
    h = hashlib.sha256(diff)
    for rel in untracked:
        h.update(f"{rel}\0{sha256_file(cwd / rel)}\n".encode("utf-8", errors="surrogateescape"))
    return {"commit": commit, "dirty": True, "diff_sha256": h.hexdigest()}


def git_commit(root: str | Path | None = None, mark_dirty: bool = False) -> str | None:
    """HEAD's commit hash (None outside a git checkout); with ``mark_dirty``, a suffix
    " (uncommitted changes)" when ``git_state`` finds the tree dirty (the index page's wording;
    metrics files record ``git_state`` itself)."""
    state = git_state(root)
    if state is None:
        return None
    return state["commit"] + (" (uncommitted changes)" if mark_dirty and state["dirty"] else "")


def lock_sha256(root: str | Path | None = None) -> str | None:
    """sha256 of the checkout's lock file (``LOCK_FILE``; None when it is absent)."""
    from srclib.files import sha256_file

    path = _root(root) / LOCK_FILE
    return sha256_file(path) if path.is_file() else None


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of python, srclib and the packages that shape the numbers, and
    ``{"requirements/lock-cpu.txt": "sha256:<hex>"}`` (None without a lock file)."""
    import srclib

    out: dict[str, str | None] = {"python": platform.python_version(), "srclib": srclib.__version__}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    lock = lock_sha256()
    out[LOCK_FILE.as_posix()] = f"sha256:{lock}" if lock else None
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    """{"git_commit" (HEAD, kept for the readers of older metrics), "git" (``git_state``: commit,
    dirty flag, hash of the uncommitted difference), "versions" (with the lock's sha256), "fork"
    (only inside a forked notebook's kernel: its name and base stage), **extra} (extra: params,
    model source/revision, hashes)."""
    from srclib import paths

    state = git_state()
    out: dict[str, Any] = {"git_commit": state["commit"] if state else None, "git": state, "versions": versions()}
    fork = paths.active_fork()
    if fork is not None:
        out["fork"] = {"name": fork[0], "stage": fork[1]}
    return {**out, **extra}
