"""The linter sees every source file: its excludes name the root's output folders (./data,
./models, ...), not every folder of that name (srclib/models, srclib/data and srclib/trajectories
went unlinted while the excludes were bare names)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from srclib import paths


def test_ruff_checks_every_srclib_and_test_file():
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run([str(ruff), "check", "--show-files", "--no-cache", "."], cwd=paths.ROOT,
                         capture_output=True, text=True, check=True).stdout
    seen = {Path(line.strip()).resolve() for line in out.splitlines() if line.strip().endswith(".py")}
    wanted = {p.resolve() for d in ("srclib", "tests", "benchmarks") for p in (paths.ROOT / d).rglob("*.py")}
    missing = sorted(str(p.relative_to(paths.ROOT)) for p in wanted - seen)
    assert not missing, f"ruff skips {len(missing)} source files, e.g. {missing[:5]}"
