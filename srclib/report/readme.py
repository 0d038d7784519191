"""The README's results block, written from the committed metrics/ (numbers in prose come from metrics).

``python -m srclib.report.readme`` rewrites the part of README.md between ``BEGIN`` and ``END``
in place (atomically) and redraws the figure the block embeds (``FIGURE``, from
metrics/variance.json and metrics/plots/variance_per_layer.csv); ``--check`` writes nothing and
exits 1 when README.md (or the figure) disagrees with metrics/. The block holds the findings
(srclib.report.findings), the sink variance table, the sink-vs-uniform table of every pruned model
and the efficiency table. It reads only metrics/ and params.yaml, so a fresh clone can check it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from srclib import paths, plotting
from srclib.files import atomic_path, read_json, write_text
from srclib.params import load
from srclib.report import findings, tables
from srclib.report.loaders import efficiency_rows, load_variance_units
from srclib.report.render import table_markdown
from srclib.report.results import load_results, pruned_models

__all__ = ["BEGIN", "END", "FIGURE", "block", "replace_block", "figure", "main"]

log = logging.getLogger(__name__)

BEGIN = "<!-- results:begin: written by `python -m srclib.report.readme` from metrics/; do not edit -->"
END = "<!-- results:end -->"
FIGURE = Path("docs/figures/sink_variance_dlm_vs_ar.png")  # relative to the repository root


def _variance_plots(root: Path | None) -> dict[str, dict[str, np.ndarray]]:
    """run -> {"variance_per_layer": (L,)} from the committed DVC plot series."""
    s = pd.read_csv(paths.plot_series("variance_per_layer", root=root))
    return {run: {"variance_per_layer": g.sort_values("layer")["variance"].to_numpy(dtype=float)}
            for run, g in s.groupby("model", sort=True)}


def figure(root: Path | None, out_dir: Path) -> Path:
    """Draw the embedded figure from metrics/ into out_dir (PNG; returns its path)."""
    fig = plotting.sink_variance_dlm_vs_ar(read_json(paths.variance_metrics(root=root)), _variance_plots(root))
    return plotting.save_figure(fig, FIGURE.stem, out_dir)["png"]


def block(root: Path | None = None) -> str:
    """The results block (markers included) from root's metrics/ and params.yaml."""
    base = Path(root) if root is not None else paths.ROOT
    params = load(base / "params.yaml")
    df = load_results(params, root=root)
    variance = read_json(paths.variance_metrics(root=root))
    units = load_variance_units(root)
    eff_path = paths.efficiency_metrics(root=root)
    eff = efficiency_rows(read_json(eff_path)) if eff_path.is_file() else None
    out = [BEGIN, "", "**Findings** (each claim of the paper with the measured answer; `reports/index.html` "
           "shows the same list):", "",
           findings.findings_markdown(findings.findings(df, params, variance, eff, variance_units=units)),
           "**Do sinks move?** (`reports/tables/sink_variance.md`)", "",
           table_markdown(tables.sink_variance_table(variance, units)),
           f"![Dominant-sink variance, DLM vs AR]({FIGURE.as_posix()})", ""]
    for model in pruned_models(df, structured=False):
        out += [f"**Does sink-aware calibration prune {model} better?** "
                f"(`reports/tables/main_{model}.md` has every row)",
                "", table_markdown(tables.sink_vs_uniform_table(df, params, model))]
    for name, table in tables.structured_tables(df, params).items():
        out += [f"**Structured pruning: baseline vs sink-aware** (`reports/tables/{name}.md`)", "",
                table_markdown(table)]
    if eff is not None:
        out += ["**Does pruning buy speed?** (`metrics/efficiency.json`; `reports/figures/quality_vs_speedup.png` "
                "puts quality beside it)", "", table_markdown(tables.efficiency_table(eff))]
    out.append(END)
    return "\n".join(out) + "\n"


def replace_block(text: str, new_block: str) -> str:
    """text with the part from BEGIN to END (inclusive, through END's line end) replaced."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no results markers ({BEGIN!r} ... {END!r}) in order")
    stop = end + len(END)
    if text[stop:stop + 1] == "\n":
        stop += 1
    return text[:start] + new_block + text[stop:]


def main(argv: Sequence[str] | None = None, root: Path | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m srclib.report.readme", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when README.md disagrees with metrics/")
    ap.add_argument("--readme", type=Path, default=None, help="default: README.md of the repository")
    args = ap.parse_args(argv)
    base = Path(root) if root is not None else paths.ROOT
    readme = args.readme or base / "README.md"
    text = readme.read_text(encoding="utf-8")
    want = replace_block(text, block(root))
    with tempfile.TemporaryDirectory() as tmp:
        fig = figure(root, Path(tmp))
        fig_ok = (base / FIGURE).is_file() and (base / FIGURE).read_bytes() == fig.read_bytes()
        if args.check:
            stale = [str(p) for p, ok in ((readme, want == text), (base / FIGURE, fig_ok)) if not ok]
            if stale:
                log.error("out of date with metrics/ (run python -m srclib.report.readme): %s", ", ".join(stale))
                return 1
            return 0
        if not fig_ok:
            with atomic_path(base / FIGURE) as dst:
                shutil.copyfile(fig, dst)
    if want != text:
        write_text(readme, want)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.exit(main())
