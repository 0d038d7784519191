"""WikiText-2 (raw) as a calibration corpus: the released Wanda/SparseGPT calibration source.

Paper-scale calibration only; it needs the dataset hub (network or HF cache), so it is not part
of data/raw. ``python -m srclib.data wikitext2 --out data/wikitext2/train.jsonl``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from srclib.data.corpus import jsonl_line
from srclib.data.errors import DataError
from srclib.files import write_text

__all__ = ["WIKITEXT2", "SPLITS", "JOINS", "export_wikitext2"]

log = logging.getLogger(__name__)

WIKITEXT2 = ("wikitext", "wikitext-2-raw-v1")  # the released Wanda/SparseGPT calibration source
SPLITS = ("train", "validation", "test")
# how the released lib/data.py joins a split's lines: " " for the calibration (train) text, "\n\n" for test
JOINS = {"train": " ", "validation": "\n\n", "test": "\n\n"}


def export_wikitext2(out: str | os.PathLike, split: str = "train", loader: Callable | None = None) -> Path:
    """Write WikiText-2 (raw) ``split`` as a calibration corpus for ``prune.calibration.corpus``.

    The released loader (lib/data.py ``get_wikitext2``) tokenizes ``" ".join(train["text"])`` for
    the calibration windows and ``"\n\n".join(test["text"])`` for its test perplexity; this joins
    the lines the same way (``JOINS``: train with a space, validation / test with a blank line) and
    writes the joined string as ONE ``{"source", "text"}`` line, so that
    :func:`srclib.pruning.calibration.tokenize_texts` tokenizes exactly the released string.
    ``loader`` defaults to ``datasets.load_dataset`` (network or HF cache).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if loader is None:
        from datasets import load_dataset as loader
    ds = loader(*WIKITEXT2, split=split)
    texts = list(ds["text"])
    if not texts or not any(t.strip() for t in texts):
        raise DataError(f"WikiText-2 {split} split is empty")
    row = {"source": f"{WIKITEXT2[0]}/{WIKITEXT2[1]}/{split}", "text": JOINS[split].join(texts)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, jsonl_line(row))
    log.info("wrote %s (%d lines of WikiText-2 %s, %d characters)", out, len(texts), split, len(row["text"]))
    return out
