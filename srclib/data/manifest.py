"""Check a data/raw file against data/raw's MANIFEST.json before a stage reads it.

``check_raw_file(path)`` finds the data/raw folder holding ``path`` (its nearest ancestor whose
last parts are ``srclib.paths.RAW``), looks the file up in that folder's manifest (written by
:mod:`srclib.data.build`: relative path -> bytes, sha256) and raises :class:`DataError` naming
the file and the manifest when its size or sha256 differs. Only the files a stage reads are
hashed, each once per process (cached by path, size and modification time, so a file changed
within the process is hashed again).

Not checked, only logged: a file outside any data/raw folder (a user's own corpus, e.g.
``prune.calibration.corpus: my/corpus.jsonl``), a file that the manifest does not list, and a
data/raw folder without a manifest (test trees). ``python -m srclib.data verify`` checks the
whole tree.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from srclib import paths
from srclib.data.errors import DataError
from srclib.files import read_json_checked, sha256_file

__all__ = ["check_raw_file", "raw_folder_of"]

log = logging.getLogger(__name__)

# (absolute path, size, mtime_ns, manifest path) of the files already checked in this process
_CHECKED: set[tuple[str, int, int, str]] = set()


def raw_folder_of(path: str | os.PathLike) -> Path | None:
    """The data/raw folder holding ``path`` (symlinks not resolved, so DVC-linked files count),
    or None when ``path`` lies outside every data/raw folder."""
    p = Path(os.path.abspath(path))
    n = len(paths.RAW.parts)
    for anc in p.parents:
        if anc.parts[-n:] == paths.RAW.parts:
            return anc
    return None


def _entries(manifest: Path) -> dict[str, dict]:
    fix = "unreadable data/raw manifest: restore data/raw with `dvc checkout data.dvc` or rebuild it: " \
          "python -m srclib.data build"
    doc = read_json_checked(manifest, holds="a JSON object with 'files'", fix=fix, error=DataError)
    if "files" not in doc:
        raise DataError(f"{manifest}: no 'files' key; {fix}")
    files = doc["files"]
    if not isinstance(files, dict):
        raise DataError(f"{manifest}: 'files' must map relative paths to {{bytes, sha256}}, got "
                        f"{type(files).__name__}")
    return files


def check_raw_file(path: str | os.PathLike) -> None:
    """Refuse ``path`` when data/raw's manifest lists it with another size or sha256 (module
    docstring); log and return when there is nothing to check it against."""
    path = Path(path)
    raw = raw_folder_of(path)
    if raw is None:
        log.info("%s lies outside data/raw: not checked against a manifest", path)
        return
    manifest = raw / paths.MANIFEST.relative_to(paths.RAW)
    if not manifest.is_file():
        log.warning("%s: no manifest %s, so its content is not checked", path, manifest)
        return
    st = path.stat()
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, str(manifest))
    if key in _CHECKED:
        return
    rel = Path(os.path.abspath(path)).relative_to(raw).as_posix()
    entry = _entries(manifest).get(rel)
    if entry is None:
        log.warning("%s is not listed in %s: its content is not checked", path, manifest)
        return
    restore = ("data/raw is a read-only input: restore it with `dvc checkout data.dvc`, or rebuild it "
               "with `python -m srclib.data build`")
    if st.st_size != entry.get("bytes"):
        raise DataError(f"{path} does not match {manifest}: {st.st_size} bytes, the manifest lists "
                        f"{entry.get('bytes')} for {rel!r}. {restore}")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise DataError(f"{path} does not match {manifest}: sha256 {digest}, the manifest lists "
                        f"{entry.get('sha256')} for {rel!r} (same size: edited in place). {restore}")
    _CHECKED.add(key)
    log.debug("%s matches %s", path, manifest)
