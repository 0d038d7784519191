"""``python -m srclib.models fetch KEY ...``: download hub entries into models/<key> (see fetch.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from srclib import paths
from srclib.models import get_adapter, register
from srclib.params import ParamsError
from srclib.params import load as load_params
from srclib.models.fetch import fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srclib.models")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download registry entries with a hub id into models/<key>")
    p.add_argument("keys", nargs="+")
    p.add_argument("--params", default=None,
                   help="params file whose models: definitions are registered too (default: params.yaml "
                        "at the repository root, when present)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    log = logging.getLogger("srclib.models")
    try:
        params_file = args.params or (paths.ROOT / "params.yaml")
        if args.params or params_file.is_file():
            register(load_params(params_file).models)
        adapters = [get_adapter(k) for k in args.keys]
    except KeyError as exc:
        log.error("%s", exc.args[0])
        return 2
    except ParamsError as exc:
        log.error("%s", exc)
        return 2
    for adapter in adapters:
        fetch(adapter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
