"""The import graph of srclib, read from the source (never by importing it).

What a stage runs is what its notebook imports, transitively: ``stage_closure("prune")`` is the
list of srclib files that dvc.yaml must list as the stage's deps (tests/test_dvc_deps.py checks
it), and ``cycles()`` the import cycles (there must be none). Every import counts, also those
inside functions, and importing ``srclib.a.b`` runs ``srclib/__init__.py`` and
``srclib/a/__init__.py`` first, so those count too.

``python -m srclib.deps`` prints each stage's closure in dvc.yaml's spelling; ``--cycles`` lists
the cycles.
"""

from __future__ import annotations

import argparse
import re
import ast
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from srclib import paths

__all__ = ["PACKAGE", "modules", "imports_of", "graph", "closure", "notebook_imports", "stage_closure",
           "cycles", "main"]

PACKAGE = "srclib"


def _root(root: Path | None) -> Path:
    return Path(root) if root is not None else paths.ROOT


@lru_cache(maxsize=None)
def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def modules(root: Path | None = None) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their __init__)."""
    return dict(_modules(_root(root)))


def _parents(name: str) -> list[str]:
    """srclib.a.b -> [srclib, srclib.a] (the packages whose __init__ runs first)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve(name: str, mods: dict[str, Path], parents: bool = True) -> list[str]:
    """The modules that importing ``name`` executes: the module (an attribute's module) and, with
    ``parents``, the packages above it."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return []
    while name and name not in mods:  # an attribute (srclib.x.func): its module
        name = name.rpartition(".")[0]
    if not name:
        return []
    return [*_parents(name), name] if parents else [name]


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def imports_of(module: str, root: Path | None = None, parents: bool = True) -> set[str]:
    """srclib modules that ``module`` executes when imported or when any of its functions run.
    ``parents=False``: only what its import statements name (the packages that Python runs first
    are left out), the edges of an import cycle."""
    mods = _modules(_root(root))
    tree = ast.parse(mods[module].read_text(encoding="utf-8"), filename=str(mods[module]))
    return _imports(tree, module, mods, parents)


def _imports(tree: ast.AST, module: str | None, mods: dict[str, Path], parents: bool = True) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.update(_resolve(alias.name, mods, parents))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the importing module's package
                if module is None:
                    continue
                base = module if _is_package(module, mods) else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            named = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
            if not named or parents:  # `from srclib import paths` names the module srclib.paths
                out.update(_resolve(target, mods, parents))
            for sub in named:
                out.update(_resolve(sub, mods, parents))
    if module is not None:
        if parents:
            out.update(_parents(module))
        out.discard(module)
    return out


def graph(root: Path | None = None, parents: bool = True) -> dict[str, set[str]]:
    """module -> the srclib modules it imports (directly); see ``imports_of`` for ``parents``."""
    return {m: imports_of(m, root, parents) for m in _modules(_root(root))}


def closure(starts: set[str], root: Path | None = None) -> set[str]:
    """Every module reachable from ``starts`` (included)."""
    g = graph(root)
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(g[m] - seen)
    return seen


def notebook_imports(nb_path: str | Path, root: Path | None = None) -> set[str]:
    """srclib modules imported by the code cells of a notebook."""
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    mods = _modules(_root(root))
    out: set[str] = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        out |= _imports(ast.parse(src), None, mods)
    return out


def stage_closure(stage: str, root: Path | None = None) -> list[str]:
    """The srclib files a stage runs (repo-relative, sorted): its notebook's import closure."""
    r = _root(root)
    mods = _modules(r)
    reached = closure(notebook_imports(paths.notebook(stage, r), r), r)
    return sorted(mods[m].relative_to(r).as_posix() for m in reached)


def cycles(root: Path | None = None) -> list[list[str]]:
    """Import cycles: strongly connected components (more than one module, or a self-import) of the
    graph of import statements. A package's __init__ running before its submodules is not an
    edge here (it is in ``closure``): a cycle is a module importing, directly or not, a module
    that imports it back."""
    g = graph(root, parents=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan; the graph is small (tens of modules), recursion is fine
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g[v]:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


DVC_NOTEBOOK_OF = {"evaluate_dense": "evaluate"}  # dvc.yaml stage -> the notebook (stage) it runs


def efficiency_data(params_file: Path) -> tuple[list[str], list[str]]:
    """The efficiency stage's data deps and model params, from ``efficiency.instances``: each timed
    instance's ``pruned/<name>`` and, for structured ones, the dense ``models/<key>`` (and
    ``models.<key>``) it is timed against -- so a prune instance the stage does not time never
    makes it stale (DVC cannot template a list of deps from params)."""
    from srclib import params

    P = params.load(params_file)
    instances = [(n, P.prune.instances[n]) for n in P.efficiency.instances]
    pruned = [f"pruned/{n}" for n, _ in instances]
    dense = sorted({i.model for _, i in instances if i.structure is not None})
    return pruned + [f"models/{k}" for k in dense], [f"models.{k}" for k in dense]


def _rewrite_runs(lines: list[str], stages: Sequence[str], item: str,
                  items_for: Callable[[str, str], list[str]]) -> tuple[list[str], list[str]]:
    """Text-level rewrite of dvc.yaml: inside each stage of ``stages``, every run of consecutive
    list lines ``- <item>...`` (``item`` a regex of prefixes; a line that does not match ends the
    run) becomes ``items_for(stage, first)``, where ``first`` is the prefix the run's first line
    matched. Comments, order and every other line are kept. Returns (lines, stages changed)."""
    out: list[str] = []
    changed: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  ([A-Za-z0-9_]+):\s*$", line)
        if m and m.group(1) in stages:
            stage = m.group(1)
        hit = re.match(rf"^(\s+)- ({item})", line)
        if hit and stage is not None:
            indent = hit.group(1)
            old = []
            while i < len(lines) and re.match(rf"^{indent}- ({item})", lines[i]):
                old.append(lines[i])
                i += 1
            new = [f"{indent}- {d}\n" for d in items_for(stage, hit.group(2))]
            if new != old and stage not in changed:
                changed.append(stage)
            out.extend(new)
            continue
        out.append(line)
        i += 1
    return out, changed


def sync_dvc_yaml(path: Path | None = None, root: Path | None = None) -> list[str]:
    """Rewrite the srclib/ lines of every stage's deps in dvc.yaml to the stage's import closure and
    the efficiency stage's data deps to the instances it times (``efficiency_data``; text-level:
    comments, order and every other line are kept). Returns the changed stages."""
    import yaml

    root = _root(root)
    path = Path(path) if path is not None else root / "dvc.yaml"
    lines = path.read_text().splitlines(keepends=True)
    stages = list(yaml.safe_load("".join(lines))["stages"])
    out, changed = _rewrite_runs(lines, stages, r"srclib/",
                                 lambda stage, _: stage_closure(DVC_NOTEBOOK_OF.get(stage, stage), root))
    params_file = root / "params.yaml"
    if "efficiency" in stages and params_file.is_file():
        data, model_params = efficiency_data(params_file)
        # deps: pruned/<inst> then models/<key>; params: models.<key> (the "params:" line parts the two)
        out, eff = _rewrite_runs(out, ["efficiency"], r"pruned/|models/|models\.",
                                 lambda _, first: model_params if first == "models." else data)
        changed += [s for s in eff if s not in changed]
    if changed:
        from srclib.files import write_text

        write_text(path, "".join(out))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srclib.deps", description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help=f"default: all of {list(paths.STAGE_NOTEBOOKS)}")
    parser.add_argument("--cycles", action="store_true", help="list import cycles instead")
    parser.add_argument("--sync-dvc", action="store_true",
                        help="rewrite dvc.yaml's srclib deps to each stage's import closure")
    args = parser.parse_args(argv)
    if args.sync_dvc:
        changed = sync_dvc_yaml()
        sys.stdout.write(f"dvc.yaml: srclib deps rewritten for {changed}\n" if changed else "dvc.yaml: up to date\n")
        return 0
    if args.cycles:
        found = cycles()
        for comp in found:
            sys.stdout.write(" <-> ".join(comp) + "\n")
        return 1 if found else 0
    for stage in args.stages or list(paths.STAGE_NOTEBOOKS):
        sys.stdout.write(f"{stage}:\n")
        for f in stage_closure(stage):
            sys.stdout.write(f"  - {f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
