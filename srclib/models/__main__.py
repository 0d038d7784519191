"""``python -m srclib.models fetch KEY ...``: download hub entries into models/<key> (see fetch.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from srclib.models import get_adapter
from srclib.models.fetch import fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srclib.models")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download registry entries with a hub id into models/<key>")
    p.add_argument("keys", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        adapters = [get_adapter(k) for k in args.keys]
    except KeyError as exc:
        logging.getLogger("srclib.models").error("%s", exc.args[0])
        return 2
    for adapter in adapters:
        fetch(adapter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
