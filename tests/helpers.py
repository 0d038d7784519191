"""Helpers shared by several test modules (tests/ is on sys.path: ``from helpers import ...``).

Test modules import helpers from here (or from tests/report_tree.py, prune_specs.py, standins.py),
never from another test_*.py module: importing a test module runs its module-level code again
and ties one test file's internals to another's.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from srclib import paths

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


# ---- notebooks -----------------------------------------------------------------------------------
def write_notebook(path: Path, *code: str, params: str = "params_file = 'params.yaml'",
                   title: str = "# a test notebook") -> Path:
    """A notebook at ``path`` (folders made): a markdown ``title`` cell (cell 1), the parameters
    cell ``params`` tagged ``parameters`` (cell 2), then one code cell per ``code`` string."""
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(title), p, *[nbformat.v4.new_code_cell(c) for c in code]]
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def write_stage_notebook(root: Path, stage: str, *code: str, params: str = "params_file = 'params.yaml'",
                         title: str = "# a test notebook", params_yaml: bool = True) -> Path:
    """``write_notebook`` at stage ``stage``'s notebook path under ``root``; with ``params_yaml``
    also the repository's params.yaml copied to ``root`` (the runner validates it before a kernel)."""
    path = write_notebook(paths.notebook(stage, root), *code, params=params, title=title)
    if params_yaml:
        (Path(root) / "params.yaml").write_text((paths.ROOT / "params.yaml").read_text())
    return path
