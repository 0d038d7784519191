"""``python -m srclib.evaluation``: lm-eval's own CLI with ``srclib-dlm`` registered.

lm-eval 0.4.13 discovers models only through its own registry (no entry points), so an external
model needs an import before lm-eval's CLI runs. This wrapper imports
:mod:`srclib.evaluation.lm` (which registers ``srclib-dlm``) and hands every argument to
``lm_eval``'s own CLI (``lm_eval.__main__.cli_evaluate``); its one extra option,
``--data_root DIR``, writes the offline task YAMLs for the ``--tasks`` given into a temporary
folder and adds it as ``--include_path`` (later include paths override lm-eval's built-in tasks of
the same name)::

    python -m srclib.evaluation --data_root data/raw/tasks \\
        --model srclib-dlm --model_args pretrained=models/tiny-dlm,mc_num=8,cfg=0.0 \\
        --tasks arc_easy,piqa --batch_size 32 --device cpu --limit 100

    # online (hub datasets), any lm-eval option works as usual:
    python -m srclib.evaluation --model srclib-dlm --model_args pretrained=<key or dir> --tasks mmlu

``--model_args`` of ``srclib-dlm``: see :mod:`srclib.evaluation.lm`. lm-eval's ``--batch_size``
is the number of noised rows per forward pass (requests are packed together); ``--device`` moves
the model (ignored with a warning when that device is not available). ``model_args`` win over
``--batch_size``/``--device`` if both are given.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from typing import Sequence

import srclib.evaluation.lm  # noqa: F401  registers srclib-dlm with lm-eval
from srclib.evaluation.tasks import build_task_configs, write_task_configs

__all__ = ["main"]


def _cli_tasks(argv: Sequence[str]) -> list[str]:
    for i, a in enumerate(argv):
        if a in ("--tasks", "-t") and i + 1 < len(argv):
            return [t for t in argv[i + 1].split(",") if t]
        if a.startswith("--tasks="):
            return [t for t in a.split("=", 1)[1].split(",") if t]
    raise SystemExit("--data_root needs --tasks (the tasks whose local data to use)")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m srclib.evaluation``: lm-eval's CLI with ``srclib-dlm`` registered (see the
    module docstring); ``--data_root DIR`` runs the given tasks on local data."""
    import argparse

    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--data_root", default=None)
    ns, rest = pre.parse_known_args(argv)
    with contextlib.ExitStack() as stack:
        if ns.data_root is not None:
            if any(a == "--include_path" or a.startswith("--include_path=") for a in rest):
                raise SystemExit("--data_root writes its own --include_path; drop --include_path")
            configs = build_task_configs(_cli_tasks(rest), ns.data_root)
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="srclib-tasks-"))
            write_task_configs(configs, tmp)
            rest += ["--include_path", tmp]
        old = sys.argv
        sys.argv = [old[0] if old else "srclib.evaluation", *rest]
        try:
            cli_evaluate()
        finally:
            sys.argv = old


if __name__ == "__main__":
    main()
