"""README.md's results block agrees with the committed metrics/ (numbers in prose come from metrics).

The block is regenerated in memory from metrics/ and params.yaml (srclib.report.readme) and compared
with README.md; a hand edit of a number, or a metrics change without ``python -m srclib.report.readme``,
fails here. The check itself must catch a changed number (second test).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from srclib import paths
from srclib.report import readme


def _readme_block(text: str) -> str:
    start, end = text.index(readme.BEGIN), text.index(readme.END)
    return text[start:end + len(readme.END)] + "\n"


def test_readme_results_block_matches_metrics():
    text = (paths.ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(readme.BEGIN) == 1 and text.count(readme.END) == 1
    want = readme.block()
    assert _readme_block(text) == want, "README.md disagrees with metrics/: run python -m srclib.report.readme"


def test_readme_embedded_figure_matches_metrics():
    with tempfile.TemporaryDirectory() as tmp:
        fig = readme.figure(None, Path(tmp))
        assert (paths.ROOT / readme.FIGURE).read_bytes() == fig.read_bytes(), \
            f"{readme.FIGURE} is not drawn from metrics/: run python -m srclib.report.readme"


def test_check_catches_an_edited_number(tmp_path):
    for rel in ("README.md", "params.yaml"):
        shutil.copy(paths.ROOT / rel, tmp_path / rel)
    shutil.copytree(paths.ROOT / "metrics", tmp_path / "metrics")
    (tmp_path / readme.FIGURE).parent.mkdir(parents=True)
    shutil.copy(paths.ROOT / readme.FIGURE, tmp_path / readme.FIGURE)
    assert readme.main(["--check"], root=tmp_path) == 0
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    block = _readme_block(text)
    number = re.search(r"\d+\.\d{4}", block).group(0)  # the first variance in the block
    edited = block.replace(number, "9.9999", 1)
    (tmp_path / "README.md").write_text(text.replace(block, edited), encoding="utf-8")
    assert readme.main(["--check"], root=tmp_path) == 1
    assert readme.main([], root=tmp_path) == 0  # rewrites the block in place
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == text
    with pytest.raises(ValueError, match="markers"):
        readme.replace_block("no markers here", readme.block(tmp_path))
