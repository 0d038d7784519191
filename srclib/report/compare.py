"""Cross-machine check: this tree's metrics/ against the committed ones, under stated tolerances.

Rerunning the pipeline on the machine that produced the committed metrics gives byte-identical
files. Another machine's CPU rounds floating-point sums differently, so its training losses and
perplexities differ in the last digits (tiny-dlm's ELBO perplexity 298.16662 vs 298.16665), and
every metric downstream of them then differs a little: an accuracy can move by one item of the
task's n, a hash of a float artifact changes entirely. This check says whether a run reproduces
the committed numbers up to that::

    python -m srclib.report.compare                      # working tree's metrics/ vs HEAD's
    python -m srclib.report.compare --against d36fe92 --ppl-rtol 1e-3 'metrics/evaluate/*.json'

Every value of every metrics/**/*.json (or of the files matching the given patterns) is compared
at its key path with the committed one (``git show <rev>:metrics/...``); the first rule that
applies decides:

=========  ===========================================================  ===========================
kind       which values                                                 passes when
=========  ===========================================================  ===========================
skip       ``provenance.*`` (commit, versions, lock hash) and timings    never compared
           (``latency``, ``env``, ``loadavg*``, ``*_s``)
info       hashes (``*sha256*``) and generated text (``completion``)     always (listed if changed)
accuracy   ``tasks.<t>.metrics.*`` / ``tasks.<t>.stderr.*``              ``|diff| <= acc_items / n``,
                                                                        n = the task's n_samples
ppl        keys naming ``ppl``, ``nll`` or ``perplexity``                ``|diff| <= ppl_rtol * max``
loss       keys naming ``loss``                                         ``|diff| <= loss_rtol * max``
number     any other float                                              ``|diff| <= rtol * max + 1e-12``
exact      integers, strings, booleans, null                            equal
=========  ===========================================================  ===========================

Defaults (:class:`Tolerances`): ppl_rtol 1e-4, loss_rtol 1e-4, acc_items 1, rtol 1e-4. A value
or file that is committed but missing here fails; one that is only here is listed (``extra``).
The table lists every value that is not identical; exit status 0 when all are within tolerance,
1 when any is beyond or missing, 2 when the check cannot run (not a git checkout, unknown
revision, unreadable JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import logging
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from srclib import paths

__all__ = ["Tolerances", "Row", "CompareError", "flatten", "compare_file", "compare_trees",
           "committed_metrics", "current_metrics", "format_table", "summary", "main"]

log = logging.getLogger(__name__)

KeyPath = tuple  # a key path: str keys and int list indices


class CompareError(RuntimeError):
    """The check cannot run: names the revision, file or folder and why."""


@dataclass(frozen=True)
class Tolerances:
    """The stated tolerances (see the module docstring)."""

    ppl_rtol: float = 1e-4
    pruned_ppl_rtol: float = 2e-2
    loss_rtol: float = 1e-4
    acc_items: int = 1
    rtol: float = 1e-4
    atol: float = 1e-12  # floor for "number" values near zero


@dataclass(frozen=True)
class Row:
    file: str
    key: str
    committed: Any
    current: Any
    kind: str
    tolerance: str
    verdict: str  # equal | within | beyond | missing | extra | info

    @property
    def fails(self) -> bool:
        return self.verdict in ("beyond", "missing")


_MISSING = object()
_TIMING = re.compile(r"^(latency|env|loadavg.*|.*_s)$")
_PPL = re.compile(r"(^|_)(ppl|nll|perplexity)(_|$)")
_LOSS = re.compile(r"(^|_)loss(es)?(_|$)")


def flatten(obj: Any, prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """(key path, leaf) for every leaf of a JSON value; an empty dict or list is a leaf."""
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from flatten(v, (*prefix, k))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from flatten(v, (*prefix, i))
    else:
        yield prefix, obj


def key_text(path: KeyPath) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _kind(path: KeyPath, pruned: bool = False) -> str:
    names = [p for p in path if isinstance(p, str)]
    last = names[-1] if names else ""
    if names[:1] == ["provenance"] or any(_TIMING.match(n) for n in names):
        return "skip"
    if "sha256" in last or last == "completion":
        return "info"
    if len(names) >= 4 and names[0] == "tasks" and names[2] in ("metrics", "stderr"):
        return "accuracy"
    if _PPL.search(last):
        return "pruned-ppl" if pruned else "ppl"
    if _LOSS.search(last):
        return "loss"
    return "number"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _of_pruned_model(doc: Any) -> bool:
    """An evaluate metrics file of a pruned checkpoint (its provenance.checkpoint.source lies
    under pruned/)."""
    try:
        source = str(doc["provenance"]["checkpoint"]["source"])
    except (KeyError, TypeError):
        return False
    return source.startswith(f"{paths.PRUNED.as_posix()}/")


def _n_items(doc: Mapping[str, Any], path: KeyPath) -> int | None:
    task = doc.get("tasks", {}).get(path[1], {}) if isinstance(doc.get("tasks"), dict) else {}
    n = task.get("n_samples") if isinstance(task, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _close(a: float, b: float, atol: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def _judge(kind: str, committed: Any, current: Any, tol: Tolerances, n: int | None) -> tuple[str, str]:
    """(verdict, tolerance text) for two leaves that are not identical."""
    if kind == "info":
        return "info", "listed only"
    if not (_is_num(committed) and _is_num(current)):
        return "beyond", "exact"
    if kind == "accuracy" and n is not None:
        atol, rtol, text = tol.acc_items / n + 1e-12, 0.0, f"{tol.acc_items} item(s) of {n}"
    elif kind == "ppl":
        atol, rtol, text = 0.0, tol.ppl_rtol, f"rtol {tol.ppl_rtol:g}"
    elif kind == "pruned-ppl":
        atol, rtol, text = 0.0, tol.pruned_ppl_rtol, f"rtol {tol.pruned_ppl_rtol:g} (pruned)"
    elif kind == "loss":
        atol, rtol, text = 0.0, tol.loss_rtol, f"rtol {tol.loss_rtol:g}"
    elif isinstance(committed, int) and isinstance(current, int):
        atol, rtol, text = 0.0, 0.0, "exact"
    else:  # any other float (an accuracy without n_samples too)
        atol, rtol, text = tol.atol, tol.rtol, f"rtol {tol.rtol:g}"
    return ("within" if _close(float(committed), float(current), atol, rtol) else "beyond"), text


def compare_file(name: str, committed: Any, current: Any, tol: Tolerances) -> list[Row]:
    """Rows for every leaf of one metrics file (skipped leaves are left out)."""
    ours = dict(flatten(current))
    theirs = dict(flatten(committed))
    pruned = _of_pruned_model(committed)
    rows = []
    for path in list(theirs) + [p for p in ours if p not in theirs]:
        kind = _kind(path, pruned)
        if kind == "skip":
            continue
        a, b = theirs.get(path, _MISSING), ours.get(path, _MISSING)
        if a is _MISSING:
            rows.append(Row(name, key_text(path), None, b, kind, "-", "extra"))
        elif b is _MISSING:
            rows.append(Row(name, key_text(path), a, None, kind, "-", "missing"))
        elif type(a) is type(b) and a == b:
            rows.append(Row(name, key_text(path), a, b, kind, "-", "equal"))
        else:
            n = _n_items(committed, path) if kind == "accuracy" and isinstance(committed, dict) else None
            verdict, text = _judge(kind, a, b, tol, n)
            rows.append(Row(name, key_text(path), a, b, kind, text, verdict))
    return rows


def compare_trees(committed: Mapping[str, Any], current: Mapping[str, Any], tol: Tolerances) -> list[Row]:
    """Rows for every file of either tree ({relative path: parsed JSON})."""
    rows = []
    for name in sorted(set(committed) | set(current)):
        if name not in current:
            rows.append(Row(name, "(file)", "present", None, "file", "-", "missing"))
        elif name not in committed:
            rows.append(Row(name, "(file)", None, "present", "file", "-", "extra"))
        else:
            rows.extend(compare_file(name, committed[name], current[name], tol))
    return rows


# ---- reading both trees -------------------------------------------------------------------------
def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompareError(f"git {' '.join(args[:2])} in {root}: {exc}") from None


def _selected(name: str, patterns: Sequence[str]) -> bool:
    return name.endswith(".json") and (not patterns or any(fnmatch.fnmatch(name, p) for p in patterns))


def _parse(text: bytes | str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompareError(f"{where}: not valid JSON ({exc})") from None


def committed_metrics(root: str | Path, rev: str, patterns: Sequence[str] = ()) -> dict[str, Any]:
    """{repo-relative path: parsed JSON} of metrics/**/*.json at ``rev`` (matching ``patterns``)."""
    root = Path(root)
    resolved = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if resolved.returncode != 0:
        inside = _git(root, "rev-parse", "--git-dir").returncode == 0
        raise CompareError(f"--against {rev!r}: not a commit of the git checkout at {root}" if inside
                           else f"{root} is not a git checkout (--root names the repository)")
    listing = _git(root, "ls-tree", "-r", "-z", "--name-only", resolved.stdout.decode().strip(), "--",
                   paths.METRICS.as_posix())
    names = [n for n in listing.stdout.decode().split("\0") if n and _selected(n, patterns)]
    out = {}
    for name in names:
        shown = _git(root, "show", f"{rev}:./{name}")  # ls-tree names are relative to root
        if shown.returncode != 0:
            raise CompareError(f"{rev}:{name}: {shown.stderr.decode().strip()}")
        out[name] = _parse(shown.stdout, f"{name} at {rev}")
    return out


def current_metrics(root: str | Path, patterns: Sequence[str] = ()) -> dict[str, Any]:
    """{repo-relative path: parsed JSON} of the working tree's metrics/**/*.json."""
    root = Path(root)
    folder = root / paths.METRICS
    out = {}
    for f in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        name = f.relative_to(root).as_posix()
        if _selected(name, patterns):
            out[name] = _parse(f.read_bytes(), name)
    return out


# ---- the report ---------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None:
        return "-"
    text = repr(v) if isinstance(v, float) else json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def _diff(r: Row) -> str:
    if not (_is_num(r.committed) and _is_num(r.current)):
        return ""
    d = float(r.current) - float(r.committed)
    rel = abs(d) / max(abs(float(r.committed)), abs(float(r.current)), 1e-300)
    return f"{d:+.3g} ({rel:.1e})"


def _rel(r: Row) -> float:
    if not (_is_num(r.committed) and _is_num(r.current)):
        return math.inf
    a, b = float(r.committed), float(r.current)
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _collapsed(rows: Sequence[Row]) -> list[tuple[Row, int]]:
    """Rows of one list (``loss[0]``, ``loss[1]``, ...) with one verdict folded into their worst
    element, as (row with key ``loss[*]``, count)."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.file, re.sub(r"\[\d+\]", "[*]", r.key), r.verdict), []).append(r)
    out = []
    for (_, key, _), rs in groups.items():
        worst = max(rs, key=_rel)
        out.append((dataclasses.replace(worst, key=key) if len(rs) > 1 else worst, len(rs)))
    return out


def format_table(rows: Sequence[Row], show_equal: bool = False) -> str:
    """The rows that differ (all with ``show_equal``) as an aligned text table; the elements of a
    list with one verdict are one row (``loss[*]``, its worst element, how many)."""
    shown = _collapsed([r for r in rows if show_equal or r.verdict != "equal"])
    order = {"beyond": 0, "missing": 1, "within": 2, "extra": 3, "info": 4, "equal": 5}
    shown.sort(key=lambda x: (order[x[0].verdict], x[0].file, x[0].key))
    head = ("verdict", "file", "key", "committed", "yours", "diff (rel)", "tolerance")
    body = [(r.verdict, r.file, r.key + (f" ({n} values, worst shown)" if n > 1 else ""),
             _cell(r.committed), _cell(r.current), _diff(r), r.tolerance) for r, n in shown]
    if not body:
        return ""
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*x).rstrip() for x in body)])


def summary(rows: Sequence[Row], rev: str) -> str:
    count = {v: sum(r.verdict == v for r in rows) for v in ("equal", "within", "beyond", "missing",
                                                           "extra", "info")}
    files = len({r.file for r in rows})
    return (f"{len(rows)} values in {files} metrics files against {rev}: {count['equal']} identical, "
            f"{count['within']} within tolerance, {count['beyond']} beyond, {count['missing']} "
            f"missing here, {count['extra']} only here, {count['info']} changed hashes/text (listed "
            f"only); provenance and timings not compared")


def _positive(kind: type):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (v >= 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
        return v
    return parse


def _parser() -> argparse.ArgumentParser:
    d = Tolerances()
    p = argparse.ArgumentParser(
        prog="python -m srclib.report.compare",
        description="Compare this tree's metrics/*.json with the committed ones under stated "
                    "tolerances (exit 1 when any value is beyond them or missing).")
    p.add_argument("patterns", nargs="*", help="only the metrics files matching these globs "
                   "(e.g. 'metrics/evaluate/*.json'); default: all")
    p.add_argument("--against", default="HEAD", metavar="REV",
                   help="the git revision holding the reference metrics (default: HEAD)")
    p.add_argument("--root", default=None, help="the repository (default: this checkout)")
    p.add_argument("--ppl-rtol", type=_positive(float), default=d.ppl_rtol,
                   help=f"relative tolerance of perplexities / NLLs (default {d.ppl_rtol:g})")
    p.add_argument("--pruned-ppl-rtol", type=_positive(float), default=d.pruned_ppl_rtol,
                   help=f"relative tolerance of a pruned model's perplexity / NLL (default "
                        f"{d.pruned_ppl_rtol:g})")
    p.add_argument("--loss-rtol", type=_positive(float), default=d.loss_rtol,
                   help=f"relative tolerance of training losses (default {d.loss_rtol:g})")
    p.add_argument("--acc-items", type=_positive(int), default=d.acc_items,
                   help=f"items of a task's n an accuracy may move by (default {d.acc_items})")
    p.add_argument("--rtol", type=_positive(float), default=d.rtol,
                   help=f"relative tolerance of every other float (default {d.rtol:g})")
    p.add_argument("--all", action="store_true", help="list identical values too")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m srclib.report.compare``: print the table and the summary; 0 within tolerance,
    1 beyond or missing, 2 when the check cannot run."""
    args = _parser().parse_args(argv)
    tol = dataclasses.replace(Tolerances(), ppl_rtol=args.ppl_rtol, loss_rtol=args.loss_rtol,
                              pruned_ppl_rtol=args.pruned_ppl_rtol,
                              acc_items=args.acc_items, rtol=args.rtol)
    root = Path(args.root) if args.root is not None else paths.ROOT
    try:
        committed = committed_metrics(root, args.against, args.patterns)
        current = current_metrics(root, args.patterns)
    except CompareError as exc:
        print(f"python -m srclib.report.compare: error: {exc}", file=sys.stderr)
        return 2
    if not committed and not current:
        print(f"python -m srclib.report.compare: error: no metrics files match "
              f"{args.patterns or ['metrics/**/*.json']} here or at {args.against}", file=sys.stderr)
        return 2
    rows = compare_trees(committed, current, tol)
    table = format_table(rows, show_equal=args.all)
    if table:
        print(table)
    print(summary(rows, args.against))
    return 1 if any(r.fails for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
