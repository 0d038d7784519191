"""Provenance carried by every metrics file: git commit, package versions, params.

One definition for every stage, so the metrics files agree on what they record. Nothing here
reads a clock: metrics files stay byte-identical across runs of the same commit and params.
``versions()`` also records the sha256 of the hashed lock of every package
(``requirements/lock-cpu.txt``, what ``make`` installs), under the lock's path: the package
versions name the few that shape the numbers, the lock's hash names all of them.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "versions", "provenance", "lock_sha256", "PACKAGES", "LOCK_FILE"]

# git-tracked files that `dvc repro` writes (srclib.paths.METRICS and the lock file)
PIPELINE_WRITES = ("dvc.lock", "metrics")
PACKAGES = ("torch", "transformers", "lm_eval", "datasets", "safetensors", "tokenizers")
# the hashed lock of every package of the CPU build, repository-relative (the Makefile installs it)
LOCK_FILE = Path("requirements/lock-cpu.txt")


def git_commit(root: str | Path | None = None, mark_dirty: bool = False) -> str | None:
    """HEAD's commit hash (None outside a git checkout); with ``mark_dirty``, a suffix
    " (uncommitted changes)" when tracked files differ from HEAD, not counting what ``dvc repro``
    itself writes into git-tracked files (dvc.lock and the metrics/ folder): a fresh clone's
    first ``dvc repro`` rewrites those and still ran the committed code and params."""
    from srclib import paths

    cwd = Path(root) if root is not None else paths.ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        if mark_dirty:
            outputs = [f":(exclude){p}" for p in PIPELINE_WRITES]
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", *outputs],
                                   cwd=cwd, capture_output=True, timeout=30)
            commit += " (uncommitted changes)" if dirty.returncode == 1 else ""
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


def lock_sha256(root: str | Path | None = None) -> str | None:
    """sha256 of the checkout's lock file (``LOCK_FILE``; None when it is absent)."""
    from srclib import paths
    from srclib.files import sha256_file

    path = (Path(root) if root is not None else paths.ROOT) / LOCK_FILE
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
    """{"git_commit", "versions" (with the lock's sha256), **extra} (extra: params, model
    source/revision, hashes)."""
    return {"git_commit": git_commit(), "versions": versions(), **extra}
