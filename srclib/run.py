"""The papermill runner: ``python -m srclib.run <stage | fork> key=value ...``.

``<fork>`` is a forked notebook: a path to a notebook (``notebooks/21_variance_mine.ipynb``) or the
name of one in notebooks/ that is not a stage's (its stem, ``21_variance_mine``; srclib.paths.fork_notebooks).
A fork runs like its base stage (the ``srclib.stages`` module its code imports) -- same parameter
and params checks -- with ``SRCLIB_FORK=<name>`` and ``SRCLIB_FORK_STAGE=<stage>`` in the kernel's
environment, so srclib.paths puts every output of the base stage under ``forks/<name>/`` (reads of
other stages' outputs stay in place, and srclib.files refuses a write over a stage's output). Its
HTML lands in reports/html/forks/<name>.html, and the runner rewrites the "Forked notebooks" list
of reports/index.html (when the page exists; the plot stage lists the same folder when it writes it).

1. Reads the stage's notebook and the names assigned in its cell tagged ``parameters`` (literals
   only; a file that is not a notebook, or a cell that assigns anything else, is refused naming the
   file, the cell and the line).
2. Fails (exit 2) if an injected name is not declared there, or a declared one is not injected
   (papermill itself only warns on unknown names), or if ``params_file`` does not validate
   (srclib.params; the checks that read files: the calibration corpus, each model's maximum length;
   then the model registry) or names no such ``instance``: before any kernel starts. A params error
   is reported before nbformat, papermill or torch are imported (well under 3 s).
3. Executes the notebook with papermill in a fresh kernel, cwd = repository root. Progress: the
   kernel writes the progress lines of its long loops (srclib.notebook.Progress) to a file named by
   ``SRCLIB_PROGRESS`` in its environment, and the runner copies them to its own log (stderr) as they
   come, so the terminal shows them while the executed notebook and its HTML hold none (nor any
   clock value); ``TQDM_DISABLE=1`` in the kernel's environment keeps tqdm bars out of the saved
   notebook too (a bar that must show passes ``disable=False``). The stage's elapsed time is logged
   when it ends, done or failed.
4. Renders the executed notebook to HTML with nbconvert under reports/html/<stage>/<name>.html
   (name = the ``instance`` parameter for fanned-out stages, else the stage name).
5. On failure keeps the annotated notebook under reports/failed/<stage>/<name>.ipynb and exits 1.
Every write is atomic (temporary file, then rename). Error messages are logged whole (a YAML error's
line, source excerpt and caret; a failed cell's traceback).
"""

from __future__ import annotations

import argparse
import ast
import json
import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from srclib import params, paths
from srclib.files import JOURNAL_ENV, atomic_path, finish_journal
from srclib.notebook import PROGRESS_ENV, duration
from srclib.schema import load_yaml_text

__all__ = ["RunnerError", "read_notebook", "declared_parameters", "parse_assignments", "run_stage", "run_fork",
           "fork_stage", "resolve", "main"]

log = logging.getLogger("srclib.run")


class RunnerError(ValueError):
    """Bad runner input: unknown stage, unknown/missing parameter, malformed key=value."""


def read_notebook(nb_path: str | Path) -> dict[str, Any]:
    """A notebook's JSON (nbformat 4: an object with a list of cell objects), read directly.

    RunnerError naming the file and what it is instead (not text, not JSON, a JSON list, no
    cells, a cell that is not an object): never its content."""
    path = Path(nb_path)
    hint = "a Jupyter notebook is an nbformat 4 JSON object with a 'cells' list (a .ipynb file)"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunnerError(f"{path}: not a notebook (not UTF-8 text; {hint})") from None
    except OSError as exc:
        raise RunnerError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunnerError(f"{path}: not a notebook (not valid JSON: {exc}; {hint})") from None
    except RecursionError:
        raise RunnerError(f"{path}: not a notebook (JSON nested too deeply; {hint})") from None
    if not isinstance(nb, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(nb), "null")
        raise RunnerError(f"{path}: not a notebook (its JSON is {kind}, not an object; {hint})")
    if nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise RunnerError(f"{path}: not an nbformat 4 notebook (no 'nbformat': 4 and 'cells' list; {hint})")
    for i, cell in enumerate(nb["cells"], 1):
        source = cell.get("source", "") if isinstance(cell, dict) else None
        if not isinstance(cell, dict) or not isinstance(cell.get("metadata", {}), dict) or not (
                isinstance(source, str) or (isinstance(source, list) and all(isinstance(x, str) for x in source))):
            raise RunnerError(f"{path}: not a notebook (cell {i} is not a cell object with a text 'source' "
                              f"and a 'metadata' object; {hint})")
    return nb


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def _tags(cell: dict[str, Any]) -> list[Any]:
    tags = cell.get("metadata", {}).get("tags", [])
    return tags if isinstance(tags, list) else []


# what a parameters cell may assign: papermill replaces these lines with the injected values
LITERALS = "literals only (numbers, strings, True/False/None, and lists, tuples, dicts or sets of them)"
SHOW_CHARS = 60  # a value quoted in a message is cut to this many characters


def declared_parameters(nb_path: str | Path) -> dict[str, Any]:
    """Names and default values assigned in the notebook's cell tagged ``parameters``.

    Reads the notebook's JSON (nbformat 4) directly: importing nbformat costs a second, which a
    params error should not wait for. RunnerError naming the file, the cell and the line for a
    cell that does not parse or assigns anything but a literal to a plain name."""
    nb = read_notebook(nb_path)
    cells = [(i, c) for i, c in enumerate(nb["cells"], 1) if "parameters" in _tags(c)]
    if len(cells) != 1:
        raise RunnerError(f"{nb_path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    index, cell = cells[0]
    where = f"{nb_path}: the parameters cell (cell {index})"
    source = _source(cell)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise RunnerError(f"{where}, line {exc.lineno}: does not parse ({exc.msg})") from None
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if not isinstance(t, ast.Name):
                    text = _cut(ast.get_source_segment(source, t) or "")
                    raise RunnerError(f"{where}, line {node.lineno}: `{text}` is not a plain name; a parameters "
                                      f"cell may only assign plain names (`name = value`), {LITERALS}")
            if node.value is None:  # `name: int`, no value
                value = None
            else:
                try:
                    value = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    text = _cut(ast.get_source_segment(source, node.value) or "")
                    names = ", ".join(t.id for t in targets)  # type: ignore[union-attr]
                    raise RunnerError(
                        f"{where}, line {node.lineno}: {names} = {text} is not a literal; a parameters cell "
                        f"may assign {LITERALS}: compute derived values in a later cell") from None
            for t in targets:
                out[t.id] = value  # type: ignore[union-attr]
        elif not isinstance(node, ast.Expr):  # docstrings/comments allowed, nothing else
            text = _cut((ast.get_source_segment(source, node) or "").splitlines()[0] if source else "")
            raise RunnerError(f"{where}, line {node.lineno}: `{text}` is not an assignment; a parameters cell "
                              f"may only contain assignments of {LITERALS}")
    return out


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS - 3] + "..."


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise RunnerError(f"argument {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if not key.isidentifier():
            raise RunnerError(f"parameter name {key!r} is not a valid Python identifier")
        if key in out:
            raise RunnerError(f"parameter {key!r} given twice")
        try:
            out[key] = load_yaml_text(value, f"argument {item}") if value != "" else ""
        except params.ParamsError as exc:  # the whole message: line, excerpt, caret, what was expected
            raise RunnerError(str(exc)) from None
    return out


def check_parameters(stage: str, declared: dict[str, Any], injected: dict[str, Any]) -> None:
    unknown = sorted(set(injected) - set(declared))
    missing = sorted(set(declared) - set(injected))
    if unknown:
        raise RunnerError(
            f"stage {stage!r}: unknown parameter(s) {unknown}; the notebook declares {sorted(declared)}"
        )
    if missing:
        raise RunnerError(
            f"stage {stage!r}: missing parameter(s) {missing}; pass them as key=value "
            f"(the notebook declares {sorted(declared)})"
        )


# stage -> how its ``instance`` parameter is looked up in params (a ParamsError when unknown)
INSTANCE_CHECKS = {
    "prune": lambda P, name: (P.prune.instance(name), P.check_device(name)),
    "evaluate": lambda P, name: P.eval_source(name),
    "collect": lambda P, name: P.collect_model(name) if name else None,  # "": every model
}


def validate(stage: str, parameters: dict[str, Any], root: Path) -> None:
    """Validate the injected params file (and instance) before a kernel starts: a params error costs
    a fraction of a second here instead of a kernel start and the stage's imports."""
    if "params_file" not in parameters:
        return
    P = params.load(root / str(parameters["params_file"]))
    if "instance" in parameters and stage in INSTANCE_CHECKS:
        INSTANCE_CHECKS[stage](P, str(parameters["instance"]))
    if stage in FILE_CHECKS:
        FILE_CHECKS[stage](P, root)
    check_lengths(P, root)
    from srclib.models import check_keys  # the registry imports torch and the adapters: seconds

    check_keys(P.models)
    check_structured(P)
    from srclib.pruning.plan import check_noise_used  # torch-free: the prune run's decisions

    check_noise_used(P.prune)


def check_calibration_corpus(P: params.Params, root: Path) -> None:
    """prune.calibration.corpus names a file under the repository root (the prune stage reads it)."""
    corpus = P.prune.calibration.corpus
    if not (root / corpus).is_file():
        raise params.ParamsError(
            f"prune.calibration.corpus = {corpus!r}: no such file {root / corpus} (relative to the "
            f"repository root {root}); name a JSONL corpus there, e.g. one under "
            f"{paths.rel(paths.raw_dir(root), root)}/"
        )


# stage -> checks of the files its params name (only the stage that reads a file requires it)
FILE_CHECKS = {"prune": check_calibration_corpus}

# The config keys that declare a model's context length, in the order
# srclib.evaluation.common.model_max_length reads them (a test keeps the two in step).
MAX_LENGTH_KEYS = ("max_position_embeddings", "max_sequence_length", "n_positions")


def model_max_length(P: params.Params, key: str, root: Path) -> tuple[int, str] | None:
    """(the longest sequence model ``key`` accepts, where that number comes from), or None when it is
    not known before loading: the tiny models accept train.max_len; another model the length its
    models/<key>/config.json declares, when that file exists. Reads JSON only (no torch)."""
    if key in params.TINY_MODELS:
        return P.train.max_len, "train.max_len"
    cfg = paths.model_dir(key, root) / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunnerError(
            f"{paths.rel(cfg, root)}: not valid JSON ({exc}); rebuild model {key!r} "
            f"(`dvc repro train` for a built model, `python -m srclib.models fetch {key}` for a hub model)"
        ) from None
    for name in MAX_LENGTH_KEYS:
        value = data.get(name) if isinstance(data, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"{name} in {paths.rel(cfg, root)}"
    return None


def check_lengths(P: params.Params, root: Path) -> None:
    """The sequences each stage feeds a model fit its maximum length: prune.calibration.seq_len for
    every prune instance's model, collect.prompt_tokens + collect.gen_length for every collect model,
    evaluate.ppl.seq_len for every model evaluate scores (dense or through a prune instance). Where
    the length is not known before loading (no config.json yet), the stage's own check applies."""
    limits: dict[str, tuple[int, str] | None] = {}

    def limit(key: str) -> tuple[int, str] | None:
        if key not in limits:
            limits[key] = model_max_length(P, key, root)
        return limits[key]

    seq_len = P.prune.calibration.seq_len
    for name, inst in P.prune.instances.items():
        lim = limit(inst.model)
        if lim is not None and seq_len > lim[0]:
            raise params.ParamsError(
                f"prune.calibration.seq_len = {seq_len}: above the maximum length {lim[0]} of model "
                f"{inst.model!r} ({lim[1]}), which prune.instances.{name}.model uses; must be <= {lim[0]}"
            )
    if P.evaluate.ppl is not None:
        ppl_len = P.evaluate.ppl.seq_len
        evaluated = {key: f"evaluate.dense[{i}]" for i, key in enumerate(P.evaluate.dense)}
        for name, inst in P.prune.instances.items():
            evaluated.setdefault(inst.model, f"prune.instances.{name}.model (evaluated after pruning)")
        for key, where in evaluated.items():
            lim = limit(key)
            if lim is not None and ppl_len > lim[0]:
                raise params.ParamsError(
                    f"evaluate.ppl.seq_len = {ppl_len}: above the maximum length {lim[0]} of model "
                    f"{key!r} ({lim[1]}), which {where} evaluates; must be <= {lim[0]}"
                )
    c = P.collect
    total = c.prompt_tokens + c.gen_length
    for i, key in enumerate(c.models):
        lim = limit(key)
        if lim is not None and total > lim[0]:
            raise params.ParamsError(
                f"collect.gen_length = {c.gen_length} (+ collect.prompt_tokens = {c.prompt_tokens}: "
                f"{total} tokens): above the maximum length {lim[0]} of model {key!r} ({lim[1]}) in "
                f"collect.models[{i}]; collect.prompt_tokens + collect.gen_length must be <= {lim[0]}"
            )


def check_structured(P: params.Params) -> None:
    """Structured instances need a family with head metadata (all seven linear roles); the head
    counts themselves are read from the checkpoint's config when the stage loads it."""
    from srclib.models import MODELS
    from srclib.models.structure import ROLES

    for name, inst in P.prune.instances.items():
        if inst.structure is None:
            continue
        adapter = MODELS[inst.model]
        missing = [r for r in ROLES if r not in adapter.roles]
        if missing:
            raise params.ParamsError(
                f"prune.instances.{name}.structure = {inst.structure!r}: model {inst.model!r} "
                f"({type(adapter).__name__}) has no head metadata (linear roles {missing} are not declared), "
                f"so whole heads and channels cannot be removed; use an unstructured pattern or a family "
                f"with roles {list(ROLES)}"
            )


def render_html(nb_path: Path, html_path: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(nb_path), as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    with atomic_path(html_path) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return html_path


def run_stage(stage: str, parameters: dict[str, Any], root: Path | None = None) -> Path:
    """Execute one stage notebook; return the HTML report path. Raises on failure."""
    root = Path(root) if root is not None else paths.ROOT
    if stage not in paths.STAGE_NOTEBOOKS:
        raise RunnerError(f"unknown stage {stage!r}; stages: {list(paths.STAGE_NOTEBOOKS)} (a forked notebook "
                          f"runs with run_fork)")
    nb_in = paths.notebook(stage, root)
    if not nb_in.is_file():
        raise RunnerError(f"notebook for stage {stage!r} not found: {nb_in}")
    check_parameters(stage, declared_parameters(nb_in), parameters)
    validate(stage, parameters, root)
    name = str(parameters.get("instance") or stage)
    return _execute(f"stage {stage}", nb_in, name, parameters, root, paths.report_html(stage, name, root),
                    paths.failed_notebook(stage, name, root))


def fork_stage(nb_path: str | Path) -> str:
    """The base stage of a forked notebook: the one ``srclib.stages`` module its code cells import
    (``from srclib.stages import variance``, ``import srclib.stages.variance``, ``from
    srclib.stages.variance import run``). RunnerError when there is none or more than one."""
    nb = read_notebook(nb_path)
    found: set[str] = set()
    for i, cell in enumerate(nb["cells"], 1):
        if cell.get("cell_type") != "code":
            continue
        src = _source(cell)
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(src)
        except SyntaxError as exc:
            which = f"the parameters cell (cell {i})" if "parameters" in _tags(cell) else f"cell {i}"
            raise RunnerError(f"{nb_path}: {which}, line {exc.lineno}: does not parse ({exc.msg})") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "srclib.stages" and not node.level:
                found.update(a.name for a in node.names)
            elif (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("srclib.stages.")
                  and not node.level):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("srclib.stages."))
    stages = sorted(found & set(paths.STAGE_NOTEBOOKS))
    if len(stages) != 1:
        raise RunnerError(
            f"{nb_path}: a forked notebook imports exactly one stage module (`from srclib.stages import <stage>`, "
            f"one of {list(paths.STAGE_NOTEBOOKS)}), whose outputs it writes under forks/<name>/; found {stages}")
    return stages[0]


def run_fork(nb_path: str | Path, parameters: dict[str, Any], root: Path | None = None) -> Path:
    """Execute a forked notebook (module docstring); return its HTML report path. Raises on failure."""
    root = Path(root) if root is not None else paths.ROOT
    nb_in = Path(nb_path)
    if not nb_in.is_file():
        raise RunnerError(f"forked notebook not found: {nb_in}")
    name = nb_in.stem
    if not paths.FORK_NAME.match(name) or name in paths.STAGE_NOTEBOOKS or name == "forks":
        raise RunnerError(
            f"{nb_in}: a forked notebook's name (its file's stem, {name!r}) must be letters, digits, '_', '.', '-' "
            f"and not a stage's name {list(paths.STAGE_NOTEBOOKS)}; rename the file, e.g. 21_variance_mine.ipynb")
    stage = fork_stage(nb_in)
    check_parameters(f"{stage}, forked as {name}", declared_parameters(nb_in), parameters)
    validate(stage, parameters, root)
    env = {paths.FORK_ENV: name, paths.FORK_STAGE_ENV: stage, "SRCLIB_ROOT": str(root)}
    html = _execute(f"fork {name} ({stage})", nb_in, name, parameters, root, paths.fork_html(name, root),
                    paths.failed_notebook("forks", name, root), env=env)
    from srclib.report.index import refresh_forks  # after the run: the fork list of reports/index.html

    if refresh_forks(root) is not None:
        log.info("reports/index.html: forked notebooks list refreshed")
    return html


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """Set ``env`` in os.environ (the kernel inherits it) and restore the previous values after."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute(what: str, nb_in: Path, name: str, parameters: dict[str, Any], root: Path, html: Path, failed: Path,
             env: dict[str, str] | None = None) -> Path:
    """papermill in a fresh kernel (cwd = root, ``env`` added to its environment), then HTML; on
    failure the annotated notebook is kept at ``failed``. The kernel's progress lines are copied to
    this process's log as they come (module docstring, 3.); the elapsed time is logged at the end."""
    import papermill as pm  # after validation: a params error does not wait for its import

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srclib-run-") as tmpdir:
        nb_out = Path(tmpdir) / f"{name}.ipynb"
        progress_file = Path(tmpdir) / "progress.log"
        journal = Path(tmpdir) / "outputs.journal"  # the stage's outputs stay revocable until the HTML is written
        kernel_env = {**(env or {}), PROGRESS_ENV: str(progress_file), "TQDM_DISABLE": "1", JOURNAL_ENV: str(journal)}
        log.info("running %s (%s) with %s", nb_in.name, name, parameters)
        try:
            with _environment(kernel_env), _ProgressCopy(progress_file):
                pm.execute_notebook(
                    str(nb_in), str(nb_out), parameters=parameters, cwd=str(root),
                    kernel_name="python3", progress_bar=False, log_output=False,
                    request_save_on_cell_execute=False,
                )
        except BaseException:
            _roll_back(journal, what)
            took = duration(time.perf_counter() - t0)
            if nb_out.is_file():
                with atomic_path(failed) as tmp:
                    tmp.write_bytes(nb_out.read_bytes())
                log.error("%s failed after %s; annotated notebook kept at %s", what, took, failed)
            else:
                log.error("%s failed after %s", what, took)
            raise
        try:
            render_html(nb_out, html)
        except BaseException:
            _roll_back(journal, what)
            log.error("%s: the HTML report %s could not be written", what, html)
            raise
        finish_journal(journal, ok=True)
        failed.unlink(missing_ok=True)
    log.info("%s (%s) done in %s -> %s", what, name, duration(time.perf_counter() - t0), html)
    return html


def _roll_back(journal: Path, what: str) -> None:
    """A step after the notebook's outputs were committed failed: put every output back as it was
    (srclib.files.finish_journal), so a failed stage leaves its previous outputs, not new ones."""
    rolled = finish_journal(journal, ok=False)
    if rolled:
        log.error("%s failed: its %d output(s) put back as they were: %s", what, len(rolled), ", ".join(rolled))


class _ProgressCopy:
    """While the notebook runs, copy each line the kernel writes to ``path`` (its progress file,
    srclib.notebook.PROGRESS_ENV) to this process's log (logger ``srclib.run.progress``), polling
    every ``poll_s``; the last lines when the run ends."""

    def __init__(self, path: Path, poll_s: float = 0.5) -> None:
        self.path, self.poll_s = path, poll_s
        self.log = logging.getLogger("srclib.run.progress")
        self.pos, self.partial = 0, b""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="srclib-progress", daemon=True)

    def __enter__(self) -> "_ProgressCopy":
        self.path.touch()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        self.thread.join()
        self._copy(final=True)

    def _poll(self) -> None:
        while not self.stopped.wait(self.poll_s):
            self._copy()

    def _copy(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return
        self.pos += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = b"" if final else lines.pop()  # a line still being written waits for its end
        for line in lines:
            if line.strip():
                self.log.info("%s", line.decode("utf-8", "replace").rstrip())


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the colour codes of a kernel's traceback


def error_text(exc: BaseException) -> str:
    """An exception's whole message (every line, colour codes removed), or its type when it has none."""
    text = _ANSI.sub("", str(exc)).strip()
    return text or type(exc).__name__


def resolve(target: str, root: Path | None = None) -> tuple[str | None, Path | None]:
    """What ``python -m srclib.run <target>`` runs: (stage, None) for a stage name or a stage's own
    notebook, (None, notebook) for a forked notebook (a path to a .ipynb, relative to the working
    folder, or the name of one in notebooks/). RunnerError naming the stages and forks otherwise."""
    if target in paths.STAGE_NOTEBOOKS:
        return target, None
    forks = paths.fork_notebooks(root)
    if target in forks:
        return None, forks[target]
    as_path = Path(target).expanduser()
    if target.endswith(".ipynb") or os.sep in target or "/" in target:
        if not as_path.is_file():
            raise RunnerError(f"notebook not found: {target}")
        for stage in paths.STAGE_NOTEBOOKS:
            if as_path.resolve() == paths.notebook(stage, root).resolve():
                return stage, None
        return None, as_path
    raise RunnerError(
        f"unknown stage {target!r}; stages: {list(paths.STAGE_NOTEBOOKS)}; forked notebooks "
        f"(notebooks/*.ipynb that are not a stage's): {list(forks) or 'none'}; or give a notebook's path "
        f"(python -m srclib.run notebooks/<name>.ipynb key=value ...)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srclib.run", description=__doc__.splitlines()[0])
    parser.add_argument("stage", help=f"one of {list(paths.STAGE_NOTEBOOKS)}, a forked notebook's name "
                                      "(notebooks/<name>.ipynb) or a notebook's path")
    parser.add_argument("assignments", nargs="*", help="notebook parameters as key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        stage, fork = resolve(args.stage)
        if fork is not None:
            run_fork(fork, parse_assignments(args.assignments))
        else:
            run_stage(stage, parse_assignments(args.assignments))
    except (RunnerError, params.ParamsError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # the notebook failed: papermill's error holds the cell's traceback
        log.error("stage %s failed: %s", args.stage, error_text(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
