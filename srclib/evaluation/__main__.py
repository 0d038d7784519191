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

Before lm-eval starts (it spends ~20 s indexing its 14k tasks before it builds the model), the
arguments are parsed with lm-eval's own parser and checked (:func:`check_args`): ``--tasks`` given
and each name known to lm-eval (a text scan of its task configs, about a second), ``--model``
registered, ``--limit`` (:func:`check_limit`), ``srclib-dlm``'s model_args (names, types, ranges:
:func:`lm.check_model_args`) and the checkpoint it names (:func:`lm.check_pretrained`: marker,
registered key, its tokenizer), ``--data_root``'s data (checked against data/raw's manifest). A
bad argument ends the run in a few seconds with one line naming it and what is allowed (exit
status 1). A checkpoint with NaN / Inf weights, weights that disagree with its masks, or
non-finite scores (srclib.evaluation.common.CheckpointError, raised when lm-eval builds or runs
the model) also ends the run with one line naming the checkpoint and the tensor, never a score.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import srclib.evaluation.lm as lm  # registers srclib-dlm with lm-eval
from srclib.data.errors import DataError
from srclib.evaluation.common import CheckpointError
from srclib.evaluation.tasks import TASK_DIRS, build_task_configs, write_task_configs

__all__ = ["main", "check_args", "check_tasks", "check_limit", "PROG"]

PROG = "python -m srclib.evaluation"
_GLOB = re.compile(r"[*?\[]")
# a declared name in a task YAML: `task: x`, `group: x`, `tag: x` (lists of tags are matched by
# the mention scan below; this only feeds the "did you mean" suggestions)
_DECLARED = re.compile(rb"^\s*(?:task|group|tag)\s*:\s*['\"]?([\w.\-]+)", re.MULTILINE)


def _fail(msg: str) -> SystemExit:
    """One line on stderr, exit status 1, no traceback."""
    return SystemExit(f"{PROG}: error: {msg}")


def _cli_tasks(argv: Sequence[str]) -> list[str]:
    for i, a in enumerate(argv):
        if a in ("--tasks", "-t") and i + 1 < len(argv):
            return [t for t in argv[i + 1].split(",") if t]
        if a.startswith("--tasks="):
            return [t for t in a.split("=", 1)[1].split(",") if t]
    raise _fail("--data_root needs --tasks (the tasks whose local data to use)")


def _lm_eval_namespace(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed exactly as lm-eval's CLI will parse it (its own parser, its legacy rule of
    inserting ``run``); argparse's own errors exit here as they would there."""
    from lm_eval._cli.harness import HarnessCLI

    old = sys.argv
    sys.argv = [PROG, *argv]
    try:
        return HarnessCLI().parse_args()
    finally:
        sys.argv = old


def _settings(ns: argparse.Namespace) -> dict[str, Any]:
    """model, model_args, tasks, batch_size, device, include_path as lm-eval will use them:
    command line over ``--config`` YAML over lm-eval's defaults."""
    from lm_eval.config.evaluate_config import EvaluatorConfig
    from lm_eval.utils import simple_parse_args_string

    out: dict[str, Any] = {"model": "hf", "model_args": {}, "tasks": None, "batch_size": None,
                           "device": None, "include_path": None, "limit": None}
    if getattr(ns, "config", None):
        try:
            yaml_cfg = EvaluatorConfig.load_yaml_config(ns.config)
        except (OSError, ValueError, TypeError) as exc:
            raise _fail(f"--config {ns.config!r}: {exc}") from None
        out.update({k: v for k, v in yaml_cfg.items() if k in out and v is not None})
    out.update({k: getattr(ns, k) for k in out if getattr(ns, k, None) not in (None, {}, [])})
    if isinstance(out["model_args"], str):
        out["model_args"] = simple_parse_args_string(out["model_args"])
    if isinstance(out["tasks"], str):
        out["tasks"] = out["tasks"].split(",")
    return out


def _task_roots(include_path: str | None) -> list[Path]:
    """lm-eval's task folder (found without importing ``lm_eval.tasks``, which imports datasets
    and pandas: seconds) and the ``--include_path`` folders."""
    spec = importlib.util.find_spec("lm_eval.tasks")
    roots = [Path(next(iter(spec.submodule_search_locations)))]
    if include_path:
        roots += [Path(p) for p in str(include_path).split(",") if p]
    return roots


# files of a task folder that hold no task config: everything else is read, since lm-eval's YAMLs
# `include` extension-less files (`_default_template_yaml`, `flores`) that declare tags and tasks
_NOT_CONFIG = (".py", ".pyc", ".md")


def _config_text(roots: Iterable[Path]) -> bytes:
    """Every task config file under ``roots`` (a folder, or one YAML file), concatenated
    (lm-eval's own: ~14k YAMLs and the files they include, ~8.5 MB, about a second cold)."""
    parts = []
    for root in roots:
        if root.is_file():
            parts.append(root.read_bytes())
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if not f.endswith(_NOT_CONFIG):
                    with contextlib.suppress(OSError), open(os.path.join(folder, f), "rb") as fh:
                        parts.append(fh.read())
    return b"\n".join(parts)


def _mentions(text: bytes, name: str) -> bool:
    return re.search(rb"(?<![\w.\-])" + re.escape(name.encode()) + rb"(?![\w.\-])", text) is not None


def check_tasks(names: Sequence[str], include_path: str | None = None) -> None:
    """Refuse a task name that no lm-eval task config (built-in or under ``include_path``) mentions,
    without building lm-eval's task index (~20 s). Glob patterns, YAML files and folders are left
    to lm-eval; a name that a YAML mentions but does not declare is left to lm-eval too."""
    todo = [n for n in names if not (_GLOB.search(n) or n.endswith(".yaml") or Path(n).exists())]
    if not todo:
        return
    roots = _task_roots(include_path)
    study = _config_text([roots[0] / d for d in TASK_DIRS])  # the study's tasks: a few files
    todo = [n for n in todo if not _mentions(study, n)]
    text = _config_text(roots) if todo else b""
    for name in todo:
        if _mentions(text, name):
            continue
        declared = sorted({m.decode() for m in _DECLARED.findall(text)})
        close = difflib.get_close_matches(name, declared, n=3, cutoff=0.75)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        where = "lm-eval's task configs" + "".join(f" or {r}" for r in roots[1:])
        raise _fail(f"--tasks {name!r}: no task, group or tag of that name in {where}; "
                    f"{hint}(`lm-eval ls tasks` lists them)")


LIMIT_ALLOWED = ("an integer >= 1 (documents per task) or a fraction in (0, 1) of each task's documents "
                 "(lm-eval reads 1 as one document)")


def check_limit(limit: Any) -> None:
    """Refuse a ``--limit`` that lm-eval would misread: lm-eval takes a value below 1 as a fraction
    (ceil(fraction x documents)) and anything else as int(value), so 0 and negatives would run no
    or nearly all documents, 2.5 would run 2 and NaN would fail deep inside."""
    if limit is None:
        return
    try:
        x = float(limit)
    except (TypeError, ValueError):
        raise _fail(f"--limit {limit!r}: must be {LIMIT_ALLOWED}") from None
    shown = int(x) if math.isfinite(x) and x.is_integer() else limit
    if not math.isfinite(x) or x <= 0 or (x >= 1 and not x.is_integer()):
        raise _fail(f"--limit {shown}: must be {LIMIT_ALLOWED}")


def check_args(argv: Sequence[str], data_root: str | None = None) -> dict[str, Any] | None:
    """Check lm-eval's ``run`` arguments before lm-eval indexes its tasks; raise SystemExit with
    one line naming the bad argument. Cheap checks first: --tasks given, --model registered,
    srclib-dlm's model_args, the task names, ``data_root``'s data for them, then the checkpoint
    (which imports the model registry). Returns the settings checked, with ``task_configs``
    (:func:`build_task_configs`' output when ``data_root`` is given); None for other commands."""
    from lm_eval.api.registry import model_registry

    ns = _lm_eval_namespace(argv)
    if getattr(ns, "command", None) != "run":
        return None
    s = _settings(ns)
    if not s["tasks"]:
        raise _fail("--tasks: missing; name one or more lm-eval tasks (e.g. --tasks arc_easy,piqa)")
    check_limit(s["limit"])
    if s["model"] not in model_registry:
        close = difflib.get_close_matches(s["model"], list(model_registry.keys()), n=3)
        raise _fail(f"--model {s['model']!r}: not a registered lm-eval model; "
                    f"{'did you mean ' + ', '.join(close) + '? ' if close else ''}"
                    f"registered: {', '.join(sorted(model_registry.keys()))}")
    margs = None
    if s["model"] == lm.NAME:
        try:
            margs = lm.check_model_args(s["model_args"], {"batch_size": s["batch_size"],
                                                         "device": s["device"]})
        except lm.ModelArgsError as exc:
            raise _fail(_dashed(exc)) from None
    check_tasks(s["tasks"], s["include_path"])
    s["task_configs"] = None if data_root is None else _task_configs(s["tasks"], data_root)
    if margs is not None:
        try:
            lm.check_pretrained(margs["pretrained"])
        except lm.ModelArgsError as exc:
            raise _fail(_dashed(exc)) from None
    return s


def _task_configs(tasks: Sequence[str], data_root: str) -> dict[str, Any]:
    try:
        return build_task_configs(tasks, data_root)
    except (KeyError, FileNotFoundError, ValueError, DataError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise _fail(f"--data_root {data_root!r}: {msg}") from None


def _dashed(exc: Exception) -> str:
    msg = str(exc)
    return f"--{msg}" if msg.startswith("model_args") else msg


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m srclib.evaluation``: lm-eval's CLI with ``srclib-dlm`` registered (see the
    module docstring); ``--data_root DIR`` runs the given tasks on local data."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--data_root", default=None)
    ns, rest = pre.parse_known_args(argv)
    if ns.data_root is not None and any(a == "--include_path" or a.startswith("--include_path=")
                                        for a in rest):
        raise _fail("--data_root writes its own --include_path; drop --include_path")
    checked = check_args(rest, ns.data_root)
    with contextlib.ExitStack() as stack:
        if ns.data_root is not None:
            configs = (checked or {}).get("task_configs") or _task_configs(_cli_tasks(rest), ns.data_root)
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="srclib-tasks-"))
            write_task_configs(configs, tmp)
            rest += ["--include_path", tmp]
        old = sys.argv
        sys.argv = [old[0] if old else "srclib.evaluation", *rest]
        try:
            cli_evaluate()
        except (CheckpointError, DataError) as exc:  # a checkpoint or data file that gives no true score
            raise _fail(str(exc)) from None
        finally:
            sys.argv = old


if __name__ == "__main__":
    main()
