"""Atomic writes: nothing half-written is ever left behind.

Every artifact is written to a temporary file in the destination folder and renamed into place,
so a killed process leaves either the old file or the new one, never a torn one.

Staging names carry the writer's process id (``.<name>.<pid>-<random>.tmp``, backups
``.<name>.<pid>-<random>.old``), so the next write of the same output removes what a killed writer
left (``clean_stale``: every sibling staging file or folder of that output whose process is gone;
at paper scale each is a full checkpoint) and never one a live writer is still building.

Inside a stage run by the runner (srclib.run), ``SRCLIB_OUTPUTS_JOURNAL`` names a journal file:
``atomic_outputs`` then swaps its outputs in as usual (later cells can read them) but keeps the old
targets and records both in the journal; the runner calls ``finish_journal(ok=True)`` once the
HTML report is written (the backups go) or ``ok=False`` when any later step failed (every output
goes back to what it was). A stage's outputs are thus committed after every step that can fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from srclib.paths import check_fork_write  # a forked notebook never writes over a stage's outputs

def _umask_mode(base: int) -> int:
    """``base`` (0o666 files, 0o777 folders) less the process umask, as open()/mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


__all__ = ["atomic_path", "atomic_dir", "atomic_outputs", "Outputs", "write_json", "read_json", "write_text",
           "sha256_file", "sha256_folder", "clean_stale", "finish_journal", "JOURNAL_ENV"]

JOURNAL_ENV = "SRCLIB_OUTPUTS_JOURNAL"  # set by the runner: keep replaced outputs until the run ends


def _prefix(name: str) -> str:
    """The staging-name prefix of output ``name`` for this process: ``.<name>.<pid>-``."""
    return f".{name}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the staging files and folders a killed writer left beside ``target``
    (``.<name>.[<pid>-]<random>[.<suffix>].tmp`` and ``.old`` backups) whose process is gone, or
    that carry no process id (older srclib); return what was removed. Those of a live process
    (a concurrent run, this one) stay."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:(\d+)-)?[^.]*(?:\.[^.]+)?\.(?:tmp|old)$")
    removed = []
    for p in target.parent.iterdir():
        m = pattern.match(p.name)
        if m is None or (m.group(1) is not None and _alive(int(m.group(1)))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        import logging

        logging.getLogger(__name__).info("removed %d stale staging path(s) of %s left by a killed run: %s",
                                         len(removed), target, ", ".join(p.name for p in removed))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_fork_write(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path.name), suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _umask_mode(0o666))  # mkstemp makes 0600: give the file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    check_fork_write(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path.name), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f"{_prefix(path.name)}swap.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Outputs:
    """The outputs of one stage run, each built at a temporary path beside its target and swapped
    in together by :func:`atomic_outputs` (see there). ``dir(target)`` / ``file(target)`` return the
    temporary path to build ``target`` at."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, bool]] = []  # (target, temporary path, is a folder)

    def _check_new(self, target: Path) -> None:
        check_fork_write(target)
        for old, _, _ in self._staged:
            if old == target or old in target.parents or target in old.parents:
                raise ValueError(f"output {target} overlaps output {old} already staged in this run")

    def dir(self, target: str | os.PathLike) -> Path:
        """A new empty folder beside ``target``; it replaces the folder ``target`` on commit."""
        target = Path(target).absolute()
        self._check_new(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".tmp", dir=target.parent))
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700
        self._staged.append((target, tmp, True))
        return tmp

    def file(self, target: str | os.PathLike) -> Path:
        """A temporary file path beside ``target`` (not created: write it, e.g. with write_json);
        it replaces ``target`` on commit. Committing fails if it was never written."""
        target = Path(target).absolute()
        self._check_new(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(target.name), suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(tmp)  # the unique name is reserved by its random part; the writer creates the file
        self._staged.append((target, Path(tmp), False))
        return Path(tmp)

    def discard(self) -> None:
        """Remove every temporary output (the targets are untouched)."""
        for _, tmp, is_dir in self._staged:
            if is_dir:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

    def commit(self) -> None:
        """Swap every staged output into place; on any failure put every old target back."""
        unwritten = [str(t) for t, tmp, is_dir in self._staged if not (tmp.is_dir() if is_dir else tmp.is_file())]
        if unwritten:
            self.discard()
            raise RuntimeError(f"stage outputs staged but never written: {unwritten}; nothing was replaced")
        moved: list[tuple[Path, Path | None]] = []  # (target now holding the new output, backup of the old)
        try:
            for target, tmp, _ in self._staged:
                backup = None
                if target.exists() or target.is_symlink():
                    backup = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".old", dir=target.parent))
                    backup = backup / target.name
                    os.replace(target, backup)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, target)
                        shutil.rmtree(backup.parent, ignore_errors=True)
                    raise
                moved.append((target, backup))
        except BaseException:
            for target, backup in reversed(moved):  # roll back: the new outputs go, the old come back
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
                if backup is not None:
                    os.replace(backup, target)
                    shutil.rmtree(backup.parent, ignore_errors=True)
            self.discard()
            raise
        journal = os.environ.get(JOURNAL_ENV)
        if journal:  # the runner decides once the run's last step is done (module docstring)
            with open(journal, "a", encoding="utf-8") as fh:
                for target, backup in moved:
                    fh.write(json.dumps({"target": str(target),
                                         "backup": None if backup is None else str(backup)}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            return
        for _, backup in moved:
            if backup is not None:
                shutil.rmtree(backup.parent, ignore_errors=True)


def finish_journal(journal: str | os.PathLike, ok: bool) -> list[str]:
    """End a run's output transaction (module docstring): ``ok`` drops the kept old outputs; not
    ``ok`` removes every output the run committed and puts the old one back (latest first).
    Returns the targets rolled back (empty when ``ok``); the journal file is removed."""
    journal = Path(journal)
    if not journal.is_file():
        return []
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]
    rolled: list[str] = []
    for rec in (records if ok else reversed(records)):
        target, backup = Path(rec["target"]), (Path(rec["backup"]) if rec["backup"] else None)
        if not ok:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            if backup is not None and (backup.exists() or backup.is_symlink()):
                os.replace(backup, target)
            rolled.append(str(target))
        if backup is not None:
            shutil.rmtree(backup.parent, ignore_errors=True)
    journal.unlink()
    return rolled


@contextlib.contextmanager
def atomic_outputs() -> Iterator[Outputs]:
    """All-or-nothing stage outputs: build every output (folders and files) at the temporary
    paths ``Outputs.dir`` / ``Outputs.file`` give, beside their targets; when the block succeeds
    they replace the targets one rename each, all after everything is built; when it raises,
    the temporary paths are removed and no target is touched. A failed rename puts back every
    target already replaced. (Only a kill inside the commit's few renames can leave some outputs
    new and others old.)

    Example::

        with atomic_outputs() as out:
            write_json(out.dir(sinks) / "run.json", stats)
            write_json(out.file(metrics), summary)
    """
    out = Outputs()
    try:
        yield out
    except BaseException:
        out.discard()
        raise
    out.commit()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Deterministic JSON (sorted keys, fixed float repr, trailing newline), written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_text(path, text)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics/json file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt JSON file {path}: {exc}") from exc


def read_json_checked(path: str | os.PathLike, *, holds: str, fix: str, kind: type = dict,
                      error: type[Exception] = ValueError) -> Any:
    """The JSON value of ``path``, which must be a ``kind``. Invalid JSON, text that is not UTF-8 and a
    value of another type raise ``error`` naming the file, what it must hold and ``fix`` (how to get a
    good one); the file itself must exist (the caller says what a missing one means)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}): {exc.msg}; {fix}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc}); {fix}") from None
    if not isinstance(value, kind):
        raise error(f"{path}: must hold {holds}, got {type(value).__name__}; {fix}")
    return value


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_folder(folder: str | os.PathLike) -> str:
    """sha256 of a folder's files: for every file below it, in the order of their sorted relative
    POSIX paths, the line ``<relative path>\0<sha256 of its bytes>\n``, hashed together. Names and
    contents count, the folder's own location and the files' times do not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for rel, p in files:
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()
