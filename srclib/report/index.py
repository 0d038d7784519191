"""reports/index.html: the study's front page.

In order: the findings (each claim of the paper with its measured answer, srclib.report.findings),
the headline tables inline, the figures at readable size with a one-line caption each (animations,
GIF with a link to their HTML player, first), the prune
and evaluate reports as a grid (model x method x weighting, one column per sparsity and pattern,
each instance linking its reports and showing its score), the forked notebooks
(reports/html/forks/; srclib.run rewrites that section alone after a fork runs: ``refresh_forks``),
the other stage reports and table files, and the params folded at the end. Relative links only (a
link is written only where its file exists), sorted listings, no timestamps; written atomically.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import yaml

from srclib import paths
from srclib.files import write_text
from srclib.params import as_dict
from srclib.report.findings import Finding
from srclib.report.render import html_table
from srclib.report.results import AVERAGE, METHOD_LABELS, PPL, WEIGHTING_LABELS, instance_values
from srclib.report.tables import METHOD_ORDER, PATTERN_ORDER, WEIGHTING_ORDER

__all__ = ["build_index", "FIGURE_CAPTIONS", "TITLE", "forks_html", "refresh_forks"]

TITLE = "Sink-aware pruning study: results"
FIGURE_CAPTIONS = {  # stem -> one-line caption (figures without one are captioned by their stem)
    "sink_variance_dlm_vs_ar": "Dominant-sink positional variance per layer and globally: diffusion vs "
                               "autoregressive runs, random-init controls hatched / dashed.",
    "sink_position_vs_step": "Where the dominant sink sits at every denoising / decoding step.",
    "trajectory_heatmaps": "Global attention mass per step and key position (1 = uniform share).",
    "sink_dynamics": "Sink dynamics: where the attention mass sits at each denoising / decoding step, diffusion "
                     "LMs beside their autoregressive contrasts (animation of one prompt; sinks marked).",
    "accuracy_vs_sparsity": "Average task accuracy vs sparsity, per method (colour) and weighting (line).",
    "perplexity_vs_sparsity": "Held-out perplexity vs sparsity (log scale).",
    "layer_sparsity": "Actual sparsity of every pruned linear, per transformer block.",
    "loss_curves": "Training loss of the tiny models.",
    "efficiency_bars": "FLOPs, weight memory and measured step latency relative to dense.",
    "quality_vs_speedup": "Quality vs measured speedup over dense: unstructured and 2:4 (CSR) and structured "
                          "(compact) checkpoints; x = each structured point's FLOP-proportional ideal.",
}
STYLE = (
    "body{font-family:sans-serif;margin:2em auto;max-width:78em;color:#222;line-height:1.45;padding:0 1em}"
    "h1{font-size:1.7em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}"
    ".finding{margin:0 0 1.2em 0}.claim{font-weight:bold;margin:0}.verdict{display:inline-block;"
    "background:#eef;border:1px solid #99c;border-radius:3px;padding:0 .4em;margin-left:.4em;font-weight:normal}"
    ".finding ul{margin:.3em 0}"
    "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em 0}"
    "th,td{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}"
    "th{border-bottom:2px solid #444}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}"
    "caption{caption-side:top;font-weight:bold;text-align:left;margin-bottom:.4em}"
    "ol.notes{font-size:12px;color:#444;max-width:60em}"
    "figure{margin:0 0 2em 0}figure img{max-width:100%;width:56em;border:1px solid #ddd}"
    "figcaption{font-size:.95em;color:#333}"
    "table.grid td{text-align:left;vertical-align:top}table.grid .score{color:#555;font-size:.9em}"
    "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}code{background:#f6f6f6;padding:0 .2em}"
)


def _params_text(params) -> str:
    data = dict(params) if isinstance(params, Mapping) else as_dict(params)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)


def _findings_html(items: Sequence[Finding]) -> list[str]:
    e = html.escape
    out = ['<section id="findings">', "<h2>Findings</h2>"]
    for f in items:
        out.append(f'<div class="finding" data-key="{e(f.key)}">')
        out.append(f'<p class="claim">{e(f.claim)} <span class="verdict">{e(f.verdict)}</span></p>')
        out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in f.lines) + "</ul>")
        out.append("</div>")
    out.append("</section>")
    return out


def _cell_key(sparsity: float, pattern: str) -> tuple:
    return (float(sparsity), PATTERN_ORDER.index(pattern))


def _grid_html(results: pd.DataFrame, stage_link) -> list[str]:
    """One table per model: rows (method, weighting), columns (sparsity, pattern); each instance
    shows its seed, average accuracy and perplexity and links its evaluate and prune reports."""
    e = html.escape
    vals = instance_values(results)
    score = {(r.instance, r.column): r.value for r in vals.itertuples()}
    inst = vals.drop_duplicates("instance")
    out = ['<section id="instances">', "<h2>Prune and evaluate reports</h2>",
           "<p>Each entry: calibration seed, average accuracy (%) / held-out perplexity; "
           "<em>eval</em> and <em>prune</em> link the instance's rendered notebooks.</p>"]
    for model in sorted(set(inst["model"])):
        g = inst[inst["model"] == model]
        cols = sorted({(r.sparsity, r.pattern) for r in g.itertuples()}, key=lambda c: _cell_key(*c))
        rows = sorted({(r.method, r.weighting) for r in g.itertuples()},
                      key=lambda r: (METHOD_ORDER.index(r[0]), WEIGHTING_ORDER.index(r[1])))
        out.append(f'<table class="grid" data-model="{e(model)}"><caption>{e(model)}</caption><thead><tr>'
                   "<th>Method</th><th>Weighting</th>"
                   + "".join(f"<th>{100 * s:g}%{'' if p in ('dense', 'unstructured') else ' ' + e(p)}</th>"
                             for s, p in cols) + "</tr></thead><tbody>")
        for method, weighting in rows:
            tds = []
            for s, p in cols:
                hit = g[(g["method"] == method) & (g["weighting"] == weighting) & (g["sparsity"] == s)
                        & (g["pattern"] == p)].sort_values("seed")
                items = []
                for r in hit.itertuples():
                    avg, ppl = score.get((r.instance, AVERAGE)), score.get((r.instance, PPL))
                    text = f"s{r.seed} " + " / ".join(f"{v:.1f}" for v in (avg, ppl) if v is not None)
                    links = [f'<a href="{e(href)}">{kind}</a>' for kind, href in
                             (("eval", stage_link("evaluate", r.instance)),
                              ("prune", stage_link("prune", r.instance))) if href]
                    items.append(f'<div data-instance="{e(r.instance)}"><span class="score">{e(text)}</span> '
                                 + " ".join(links) + "</div>")
                tds.append("<td>" + "".join(items) + "</td>")
            out.append(f"<tr><td>{e(METHOD_LABELS[method])}</td><td>{e(WEIGHTING_LABELS[weighting])}</td>"
                       + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
    out.append("</section>")
    return out


FORKS_BEGIN, FORKS_END = "<!-- forked notebooks -->", "<!-- /forked notebooks -->"


def forks_html(root: str | Path | None) -> list[str]:
    """The "Forked notebooks" section: every rendered fork (reports/html/forks/<name>.html, sorted)
    with a link to its report and where its outputs are. Between two comment markers, so that
    ``refresh_forks`` can rewrite it alone after a fork runs."""
    e = html.escape
    base = paths.index_html(root=root).parent
    found = sorted(paths.fork_html_dir(root=root).glob("*.html")) if paths.fork_html_dir(root=root).is_dir() else []
    out = [FORKS_BEGIN, '<section id="forks"><h2>Forked notebooks</h2>']
    if not found:
        out.append("<p>None yet. Copy a stage notebook to <code>notebooks/&lt;name&gt;.ipynb</code>, edit it and run "
                   "<code>python -m srclib.run &lt;name&gt; params_file=params.yaml</code> (README, Extending the "
                   "study): its report is listed here, its outputs land in <code>forks/&lt;name&gt;/</code>.</p>")
    else:
        out.append("<p>Notebooks forked from a stage's, run with <code>python -m srclib.run &lt;name&gt;</code>; "
                   "each writes its stage's outputs under <code>forks/&lt;name&gt;/</code>.</p><ul>")
        for p in found:
            href = os.path.relpath(p, base).replace(os.sep, "/")
            out.append(f'<li data-fork="{e(p.stem)}"><a href="{e(href)}">{e(p.stem)}</a>: outputs in '
                       f"<code>{e((paths.FORKS / p.stem).as_posix())}/</code></li>")
        out.append("</ul>")
    out += ["</section>", FORKS_END]
    return out


def refresh_forks(root: str | Path | None = None) -> Path | None:
    """Rewrite the "Forked notebooks" section of an existing reports/index.html from the forks
    folder (what the plot stage writes there, so the page equals a fresh build); None when there is
    no index yet or it has no such section (the plot stage's next run writes one)."""
    index = paths.index_html(root=root)
    if not index.is_file():
        return None
    text = index.read_text(encoding="utf-8")
    start, end = text.find(FORKS_BEGIN), text.find(FORKS_END)
    if start < 0 or end < start:
        return None
    new = text[:start] + "\n".join(forks_html(root)) + text[end + len(FORKS_END):]
    return write_text(index, new) if new != text else index


def build_index(root: str | Path | None, params, commit: str, *, findings: Sequence[Finding],
                tables: Mapping[str, pd.DataFrame], results: pd.DataFrame | None = None) -> Path:
    """Write reports/index.html (module docstring). tables: name -> table frame shown inline (in
    the given order); results: load_results frame for the instance grid (None: no grid)."""
    index = paths.index_html(root=root)
    e = html.escape
    link = _linker(root, index.parent)

    def stage_link(stage: str, name: str) -> str | None:
        return link(paths.report_html(stage, name, root=root))

    html_root = paths.report_html("plot", "plot", root=root).parent.parent  # reports/html
    notebooks = set(html_root.glob("**/*.html")) if html_root.is_dir() else set()
    figures = sorted(paths.figures_dir(root=root).glob("*.png"))
    table_files = sorted(p for p in paths.tables_dir(root=root).glob("*") if p.is_file() and not p.name.startswith("."))

    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(TITLE)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{e(TITLE)}</h1>",
           f"<p>Built from commit <code>{e(commit)}</code> with the parameters at the end of this page. "
           "Every number comes from a metrics file written by srclib; <code>dvc repro</code> rebuilds this page.</p>"]
    out += _findings_html(findings)
    out.append('<section id="tables"><h2>Headline tables</h2>')
    out += [html_table(t) for t in tables.values()]
    out.append("</section>")
    out += _figures_html(sorted(paths.figures_dir(root=root).glob("*.gif")), figures, link)
    if results is not None:
        out += _grid_html(results, stage_link)
    out += forks_html(root)
    out += ['<section id="stages"><h2>Other stage reports and table files</h2>', "<ul>"]
    out += _stage_report_items(notebooks, root, results is not None, link)
    out += _table_file_items(table_files, link)
    out += ["</ul>", "</section>", '<details id="params"><summary>Parameters (params.yaml)</summary>',
            f"<pre>{e(_params_text(params))}</pre>", "</details>", "</body>", "</html>"]
    return write_text(index, "\n".join(out) + "\n")


def _linker(root: str | Path | None, base: Path) -> Callable[[Path], str | None]:
    """link(path) -> the path relative to ``base`` (the index's folder), None when it is not a file;
    relative paths are taken under ``root``."""

    def link(p: Path) -> str | None:
        p = Path(p) if Path(p).is_absolute() else Path(root or paths.ROOT) / p
        # relpath, not relative_to: a plot fork's index lives under forks/<name>/ beside other folders
        return Path(os.path.relpath(p, base)).as_posix() if p.is_file() else None

    return link


def _figures_html(animations: Sequence[Path], figures: Sequence[Path], link) -> list[str]:
    """The figures section: the animations (with their interactive player) first, then the PNG figures
    (with their PDF)."""
    e = html.escape
    out = ['<section id="figures"><h2>Figures</h2>']
    for p in animations:  # animations first: the headline figure
        player = p.with_suffix(".html")
        extra = f' (<a href="{e(link(player))}">interactive player</a>)' if link(player) else ""
        out.append(f'<figure id="fig-{e(p.stem)}"><a href="{e(link(p))}"><img src="{e(link(p))}" alt="{e(p.stem)}"></a>'
                   f"<figcaption>{e(FIGURE_CAPTIONS.get(p.stem, p.stem))}{extra}</figcaption></figure>")
    for p in figures:
        pdf = p.with_suffix(".pdf")
        extra = f' (<a href="{e(link(pdf))}">PDF</a>)' if link(pdf) else ""
        caption = FIGURE_CAPTIONS.get(p.stem, p.stem)
        out.append(f'<figure id="fig-{e(p.stem)}"><a href="{e(link(p))}"><img src="{e(link(p))}" alt="{e(p.stem)}"></a>'
                   f"<figcaption>{e(caption)}{extra}</figcaption></figure>")
    out.append("</section>")
    return out


def _stage_report_items(notebooks: set[Path], root: str | Path | None, has_grid: bool, link) -> list[str]:
    """One list item per stage (in pipeline order) linking its rendered notebooks; prune and evaluate
    reports are left to the instance grid when there is one, fork reports to their own section."""
    e = html.escape
    by_stage: dict[str, list[Path]] = {}
    for p in sorted(notebooks):
        if p.parent == paths.fork_html_dir(root=root):  # listed in their own section
            continue
        if p.parent.name not in ("prune", "evaluate") or not has_grid:
            by_stage.setdefault(p.parent.name, []).append(p)
    if "plot" not in by_stage:  # rendered after the plot notebook that writes this page
        by_stage["plot"] = []
    stage_order = list(paths.STAGE_NOTEBOOKS)
    out = []
    for stage in sorted(by_stage, key=lambda s: (stage_order.index(s) if s in stage_order else len(stage_order), s)):
        items = [f'<a href="{e(link(p))}">{e(p.stem)}</a>' for p in by_stage[stage]]
        if stage == "plot" and not by_stage[stage]:
            items = ['<a href="html/plot/plot.html">plot</a>']
        out.append(f"<li><strong>{e(stage)}</strong>: {', '.join(items)}</li>")
    return out


def _table_file_items(table_files: Sequence[Path], link) -> list[str]:
    """One list item per table stem linking its files (one link per format)."""
    e = html.escape
    by_table: dict[str, list[Path]] = {}
    for p in table_files:
        by_table.setdefault(p.stem, []).append(p)
    return [f"<li>table {e(stem)}: "
            + " ".join(f'<a href="{e(link(p))}">{e(p.suffix.lstrip(".") or p.name)}</a>' for p in files) + "</li>"
            for stem, files in sorted(by_table.items())]
