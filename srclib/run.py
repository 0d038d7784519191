"""The papermill runner: ``python -m srclib.run <stage> key=value ...``.

1. Reads the stage's notebook and the names assigned in its cell tagged ``parameters``.
2. Fails (exit 2) if an injected name is not declared there, or a declared one is not injected
   (papermill itself only warns on unknown names), or if ``params_file`` does not validate
   (srclib.params, then the model registry) or names no such ``instance``: before any kernel starts.
3. Executes the notebook with papermill in a fresh kernel, cwd = repository root.
4. Renders the executed notebook to HTML with nbconvert under reports/html/<stage>/<name>.html
   (name = the ``instance`` parameter for fanned-out stages, else the stage name).
5. On failure keeps the annotated notebook under reports/failed/<stage>/<name>.ipynb and exits 1.
Every write is atomic (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import yaml

from srclib import params, paths
from srclib.files import atomic_path

__all__ = ["RunnerError", "declared_parameters", "parse_assignments", "run_stage", "main"]

log = logging.getLogger("srclib.run")


class RunnerError(ValueError):
    """Bad runner input: unknown stage, unknown/missing parameter, malformed key=value."""


def declared_parameters(nb_path: str | Path) -> dict[str, Any]:
    """Names and default values assigned in the notebook's cell tagged ``parameters``."""
    nb = nbformat.read(str(nb_path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise RunnerError(f"{nb_path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    tree = ast.parse(cells[0].source)
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if not isinstance(t, ast.Name):
                    raise RunnerError(f"{nb_path}: parameters cell may only assign plain names")
                out[t.id] = ast.literal_eval(node.value) if node.value is not None else None
        elif not isinstance(node, ast.Expr):  # docstrings/comments allowed, nothing else
            raise RunnerError(f"{nb_path}: parameters cell may only contain assignments")
    return out


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
        out[key] = yaml.safe_load(value) if value != "" else ""
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
    "prune": lambda P, name: P.prune.instance(name),
    "evaluate": lambda P, name: P.eval_source(name),
}


def validate(stage: str, parameters: dict[str, Any], root: Path) -> None:
    """Validate the injected params file (and instance) before a kernel starts: a params error costs
    a fraction of a second here instead of a kernel start and the stage's imports."""
    if "params_file" not in parameters:
        return
    P = params.load(root / str(parameters["params_file"]))
    if "instance" in parameters and stage in INSTANCE_CHECKS:
        INSTANCE_CHECKS[stage](P, str(parameters["instance"]))
    from srclib.models import check_keys  # the registry imports torch and the adapters: seconds

    check_keys(P.models)
    check_structured(P)


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
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(nb_path), as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    with atomic_path(html_path) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return html_path


def run_stage(stage: str, parameters: dict[str, Any], root: Path | None = None) -> Path:
    """Execute one stage notebook; return the HTML report path. Raises on failure."""
    import papermill as pm

    root = Path(root) if root is not None else paths.ROOT
    nb_in = paths.notebook(stage, root)
    if not nb_in.is_file():
        raise RunnerError(f"notebook for stage {stage!r} not found: {nb_in}")
    check_parameters(stage, declared_parameters(nb_in), parameters)
    validate(stage, parameters, root)
    name = str(parameters.get("instance", stage))
    html = paths.report_html(stage, name, root)
    failed = paths.failed_notebook(stage, name, root)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srclib-run-") as tmpdir:
        nb_out = Path(tmpdir) / f"{name}.ipynb"
        log.info("running %s (%s) with %s", nb_in.name, name, parameters)
        try:
            pm.execute_notebook(
                str(nb_in), str(nb_out), parameters=parameters, cwd=str(root),
                kernel_name="python3", progress_bar=False, log_output=False,
                request_save_on_cell_execute=False,
            )
        except BaseException:
            if nb_out.is_file():
                with atomic_path(failed) as tmp:
                    tmp.write_bytes(nb_out.read_bytes())
                log.error("stage %s failed; annotated notebook kept at %s", stage, failed)
            raise
        failed.unlink(missing_ok=True)
        render_html(nb_out, html)
    log.info("stage %s (%s) done in %.1f s -> %s", stage, name, time.perf_counter() - t0, html)
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srclib.run", description=__doc__.splitlines()[0])
    parser.add_argument("stage", help=f"one of {list(paths.STAGE_NOTEBOOKS)}")
    parser.add_argument("assignments", nargs="*", help="notebook parameters as key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.stage not in paths.STAGE_NOTEBOOKS:
            raise RunnerError(f"unknown stage {args.stage!r}; stages: {list(paths.STAGE_NOTEBOOKS)}")
        run_stage(args.stage, parse_assignments(args.assignments))
    except (RunnerError, params.ParamsError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # the notebook failed: papermill's error names the cell
        log.error("stage %s failed: %s", args.stage, str(exc).strip().splitlines()[-1] if str(exc) else exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
