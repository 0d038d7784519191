"""The corpus files' format (UTF-8 JSON lines, sorted keys) and its readers.

``read_texts`` is the one reader of a corpus split used by training, calibration and held-out
evaluation; ``read_jsonl`` reads any JSON-lines file of data/raw; ``jsonl_line`` / ``write_jsonl``
are the one writer, used by the data/raw builder and the WikiText-2 export. Both readers check a
file of data/raw against data/raw's manifest first (:func:`srclib.data.manifest.check_raw_file`:
a tampered file is refused, naming it and the manifest).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from srclib.data.manifest import check_raw_file

__all__ = ["jsonl_line", "write_jsonl", "read_jsonl", "read_texts"]


def jsonl_line(obj: dict) -> str:
    """One JSON-lines row: UTF-8 (no escapes), sorted keys, a trailing newline."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n"


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(jsonl_line(r) for r in rows)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file written by :func:`write_jsonl` (checked against data/raw's manifest)."""
    check_raw_file(path)
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_texts(path: str | os.PathLike, what: str = "corpus file") -> list[str]:
    """The ``text`` field of every line of a corpus JSON-lines file, in file order (the one reader
    used by training, calibration and held-out evaluation); a data/raw file is checked against
    data/raw's manifest first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (build data/raw first: make data)")
    check_raw_file(path)
    texts = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({exc})") from exc
    if not texts:
        raise ValueError(f"{what} {path} holds no passages")
    return texts
