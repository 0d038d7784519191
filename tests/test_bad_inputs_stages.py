"""Bad inputs to the stages that write several outputs or read data/raw (issue 15 items 2 and 8).

Each case asserts that the error names the bad file and that nothing was written or deleted:
the whole tree under ``tmp_path`` is compared byte for byte before and after (so a half-updated
output folder or a temporary folder left behind fails the test). Test-size data built in
tmp_path; CPU, seconds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import CHUNK, WINDOWS_PER_BATCH  # tests/ is on sys.path
from srclib import files, paths
from srclib.pruning import calibration
from srclib.data import manifest as manifest_mod
from srclib.data.corpus import read_jsonl, read_texts
from srclib.data.errors import DataError
from srclib.files import atomic_outputs, read_json, sha256_file, write_json, write_text
from srclib.params import CollectParams, ModelEntry, TrainParams, VarianceParams, build
from srclib.stages import collect, train, variance
from srclib.trajectories.store import (
    META_KEY, Trajectory, TrajectoryFileError, check_trajectory_file, load_trajectory, save_trajectory,
)

SINK = VarianceParams(rule="zscore", alpha=5.0, kappa=2.0, eps=0.0, stability_threshold=0.5)
SINK2 = VarianceParams(rule="zscore", alpha=4.0, kappa=2.0, eps=0.0, stability_threshold=0.5)  # a rerun's new rule
MASK = 9


# ---- helpers ----------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes]:
    """Every file and folder under root -> its bytes (folders: b'<dir>'): nothing written or deleted."""
    return {p.relative_to(root).as_posix(): (b"<dir>" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def _traj(kind: str = "dlm", seed: int = 0, S: int = 4, L: int = 2, B: int = 2, P: int = 3) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    T = P + S
    mass = torch.rand(S, L, B, T, generator=g)
    mass[..., 0] += 5.0  # a sink at position 0
    meta = {"kind": kind, "model": f"m{seed}", "mask_id": MASK, "random_init": False, "has_bos": True}
    if kind == "dlm":
        return Trajectory(meta=meta, mass=mass, valid_len=torch.full((S,), T), prompt_ids=torch.ones(B, P).long(),
                          final_ids=torch.ones(B, T).long(), step_ids=torch.ones(S, B, T).long())
    valid = torch.arange(P, P + S)
    mass = mass * (torch.arange(T)[None, :] < valid[:, None])[:, None, None, :]
    return Trajectory(meta=meta, mass=mass, valid_len=valid, prompt_ids=torch.ones(B, P).long(),
                      final_ids=torch.ones(B, T).long(), prefill_mass=torch.rand(L, B, T, generator=g))


def _variance_root(root: Path) -> Path:
    """trajectories/{a-dlm,b-ar,c-dlm} and the variance outputs of a first successful run."""
    for i, (name, kind) in enumerate([("a-dlm", "dlm"), ("b-ar", "ar"), ("c-dlm", "dlm")]):
        save_trajectory(_traj(kind, seed=i), paths.trajectory_file(name, root))
    variance.sink_variance(SINK, root=root)
    return root


def _raw_with_manifest(root: Path, files_: dict[str, str]) -> Path:
    """data/raw/<rel> with the given text and a MANIFEST.json listing them (as srclib.data.build)."""
    raw = paths.raw_dir(root)
    for rel, text in files_.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_text(text, encoding="utf-8")
    table = {rel: {"bytes": (raw / rel).stat().st_size, "sha256": sha256_file(raw / rel)} for rel in files_}
    write_json(paths.raw_dir(root) / paths.MANIFEST.relative_to(paths.RAW), {"format_version": 1, "files": table})
    return raw


def _tamper_same_size(path: Path) -> None:
    """Change one byte of the text (same size), like an accidental in-place edit."""
    b = bytearray(path.read_bytes())
    i = b.index(b"e")
    b[i] = ord("E")
    path.write_bytes(bytes(b))


def _passages(n: int, word: str = "the cat sat on the mat") -> str:
    return "".join(json.dumps({"source": "s", "text": f"{word} {i}."}) + "\n" for i in range(n))


def _assert_names(exc: pytest.ExceptionInfo, *names: object) -> None:
    msg = str(exc.value)
    for n in names:
        assert str(n) in msg, f"{n} not named in: {msg}"


# ---- variance: one corrupt trajectory file, sinks/ and metrics untouched (item 2) -------------------
def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00garbage, not safetensors" * 4)


def _truncated(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) * 2 // 3])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _no_metadata(p: Path) -> None:
    save_file({"mass_dev": torch.zeros(2, 2)}, str(p))


def _bad_meta_json(p: Path) -> None:
    save_file({"mass_dev": torch.zeros(2, 2)}, str(p), metadata={META_KEY: "{not json"})


def _unknown_kind(p: Path) -> None:
    meta = {**_traj("dlm").meta, "kind": "rnn"}
    save_file({"mass_dev": torch.zeros(1)}, str(p), metadata={META_KEY: json.dumps(meta)})


def _rewrite(p: Path, edit) -> None:
    """Rewrite a trajectory file with edit(tensors) applied, keeping its metadata."""
    with safe_open(str(p), framework="pt") as fh:
        md = fh.metadata()
    t = load_file(str(p))
    edit(t)
    save_file(t, str(p), metadata=md)


def _missing_tensor(p: Path) -> None:
    _rewrite(p, lambda t: t.pop("mass_mean"))


def _wrong_shape(p: Path) -> None:
    _rewrite(p, lambda t: t.update(valid_len=t["valid_len"][:-1].contiguous()))


def _valid_len_out_of_range(p: Path) -> None:
    _rewrite(p, lambda t: t.update(valid_len=t["valid_len"] + 100))


CORRUPTIONS = {
    "garbage bytes": (_garbage, "not a readable safetensors file"),
    "truncated safetensors": (_truncated, "not a readable safetensors file"),
    "empty file": (_empty, "not a readable safetensors file"),
    "no srclib metadata": (_no_metadata, "not a srclib trajectory"),
    "metadata not JSON": (_bad_meta_json, "is not JSON"),
    "unknown kind": (_unknown_kind, "kind = 'rnn'"),
    "tensor missing": (_missing_tensor, "'mass_mean' is missing"),
    "tensor misshapen": (_wrong_shape, "'valid_len' has shape"),
    "valid_len out of range": (_valid_len_out_of_range, "valid_len must lie in"),
}


@pytest.fixture(scope="module")
def variance_tree(tmp_path_factory) -> Path:
    return _variance_root(tmp_path_factory.mktemp("variance"))


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_variance_names_a_corrupt_trajectory_and_writes_nothing(case, variance_tree, tmp_path):
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(variance_tree, root)
    corrupt, what = CORRUPTIONS[case]
    bad = paths.trajectory_file("b-ar", root)  # the middle run: a-dlm was processed before it
    corrupt(bad)
    before = snapshot(root)
    with pytest.raises(TrajectoryFileError) as exc:  # a rerun with a new rule: every sinks file would change
        variance.sink_variance(SINK2, root=root)
    _assert_names(exc, bad, what)
    assert snapshot(root) == before  # sinks/, metrics/variance.json as they were; no temp folder left


def test_check_trajectory_file_reads_headers_only(tmp_path, monkeypatch):
    """The pre-check of every file reads no tensor data (so a corrupt last file is named at once)."""
    p = save_trajectory(_traj("ar"), tmp_path / "t.safetensors")
    calls = []

    class Spy:
        def __init__(self, *a, **k):
            self.fh = safe_open(*a, **k)

        def __enter__(self):
            self.fh.__enter__()
            return self

        def __exit__(self, *a):
            return self.fh.__exit__(*a)

        def __getattr__(self, name):
            calls.append(name)
            return getattr(self.fh, name)

    import safetensors
    monkeypatch.setattr(safetensors, "safe_open", Spy)
    check_trajectory_file(p)
    assert "get_tensor" not in calls and "get_slice" in calls
    assert load_trajectory(p).kind == "ar"


def test_variance_swaps_sinks_whole(variance_tree, tmp_path):
    """A successful rerun replaces sinks/ whole: a run whose trajectory is gone leaves no stale file."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(variance_tree, root)
    paths.trajectory_file("c-dlm", root).unlink()
    res = variance.sink_variance(SINK, root=root)
    assert sorted(p.name for p in (root / paths.SINKS).iterdir()) == ["a-dlm.json", "b-ar.json"]
    assert set(read_json(paths.variance_metrics(root))["runs"]) == {"a-dlm", "b-ar"} == set(res.stats)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp or backup left


# ---- collect: a failure on a later model leaves trajectories/ as it was (item 2) --------------------
class _Model(torch.nn.Module):
    def __init__(self, key):
        super().__init__()
        self.key = key


def _collect_cfg(models) -> CollectParams:
    return CollectParams(models=list(models), n_prompts=1, prompt_tokens=3, gen_length=4, steps=4, block_length=4,
                         temperature=0.0, cfg_scale=0.0, remasking="low_confidence", chunk_size=8,
                         random_init_control=False, seed=0)


def _collect_root(root: Path, monkeypatch) -> tuple[Path, dict]:
    _raw_with_manifest(root, {"prompts.jsonl": _passages(2, "prompt")})
    entries = {k: ModelEntry(dtype="float32", device="cpu") for k in ("m1", "m2")}

    def fake_collect(model, adapter, tok, texts, cfg, run_name, random_init):
        return _traj("dlm", seed=len(run_name) + (7 if getattr(model, "v2", False) else 0))

    monkeypatch.setattr(collect, "collect_trajectory", fake_collect)
    out = collect.collect_models(_collect_cfg(["m1", "m2"]), entries, root=root,
                                 loader=lambda key, dtype: (_Model(key), None, None))
    assert sorted(out.runs) == ["m1", "m2"]
    return root, entries


def test_collect_failure_on_the_second_model_changes_nothing(tmp_path, monkeypatch):
    root, entries = _collect_root(tmp_path / "repo", monkeypatch)
    before = snapshot(root)
    missing = root / "models" / "m2"

    def loader(key, dtype):
        if key == "m2":
            raise FileNotFoundError(f"model folder not found: {missing}")
        m = _Model(key)
        m.v2 = True  # a rerun of m1 would write different bytes: they must not land
        return m, None, None

    with pytest.raises(FileNotFoundError) as exc:
        collect.collect_models(_collect_cfg(["m1", "m2"]), entries, root=root, loader=loader)
    _assert_names(exc, missing)
    assert snapshot(root) == before


def test_collect_refuses_tampered_prompts(tmp_path, monkeypatch):
    root, entries = _collect_root(tmp_path / "repo", monkeypatch)
    prompts = paths.prompts_file(root)
    _tamper_same_size(prompts)
    before = snapshot(root)
    loaded = []
    with pytest.raises(DataError) as exc:
        collect.collect_models(_collect_cfg(["m1"]), entries, root=root,
                               loader=lambda key, dtype: loaded.append(key))
    _assert_names(exc, prompts, paths.MANIFEST.name, "sha256")
    assert loaded == [] and snapshot(root) == before  # refused before any model is loaded


# ---- train: tampered inputs and a failure mid-way (items 2 and 8) -----------------------------------
ARCH = {"n_layers": 1, "hidden_size": 16, "n_heads": 2, "mlp_hidden": 32, "rope_theta": 10000.0}


def _train_cfg() -> TrainParams:
    d = dict(seed=0, threads=1, tokenizer_vocab=280, seq_len=16, max_len=32, batch_size=4, arch=dict(ARCH),
             ar={"steps": 3, "lr": 3e-3, "warmup": 1, "min_lr": 3e-4},
             dlm={"steps": 3, "lr": 1e-3, "warmup": 1, "min_lr": 1e-4, "eps": 1e-3},
             weight_decay=0.1, grad_clip=1.0, eval_windows=2, eval_mc_num=1, n_samples=0,
             sample_prompt_tokens=4, sample_gen_length=4, sample_block_length=4)
    return build(TrainParams, d, "train")


def _train_root(root: Path) -> Path:
    """data/raw (corpus + a stand-in GGUF, with a manifest) and the previous train outputs."""
    _raw_with_manifest(root, {"corpus/train.jsonl": _passages(60),
                              "corpus/validation.jsonl": _passages(12, "a dog ran"),
                              "gguf/model.gguf": "not really a gguf"})
    for key in ("tiny-ar", "tiny-dlm"):  # outputs of an earlier run
        write_text(paths.model_dir(key, root) / "model.safetensors", f"old {key}")
        write_json(paths.train_metrics(key, root), {"old": key})
    write_text(paths.train_curves(root), "model,step,loss\n")
    return root


@pytest.mark.parametrize("rel,how", [
    ("corpus/train.jsonl", "same size"),
    ("corpus/validation.jsonl", "appended"),
    ("gguf/model.gguf", "same size"),
])
def test_train_refuses_a_tampered_data_raw_file(tmp_path, rel, how):
    root = _train_root(tmp_path / "repo")
    bad = paths.raw_dir(root) / rel
    if how == "same size":
        _tamper_same_size(bad)
    else:
        bad.write_text(bad.read_text() + _passages(1, "extra"))
    before = snapshot(root)
    with pytest.raises(DataError) as exc:
        train.train_models(_train_cfg(), root=root)
    _assert_names(exc, bad, paths.raw_dir(root) / "MANIFEST.json", rel)
    assert ("bytes" if how == "appended" else "sha256") in str(exc.value)
    assert snapshot(root) == before


def test_train_failure_after_tiny_ar_changes_nothing(tmp_path, monkeypatch):
    """tiny-ar is trained and saved, then adapting tiny-dlm fails: no model folder or metrics changes."""
    from srclib.train import twins

    root = _train_root(tmp_path / "repo")
    (paths.gguf_dir(root) / "model.gguf").unlink()  # no SmolLM2 conversion in this test
    m = read_json(paths.raw_dir(root) / "MANIFEST.json")
    del m["files"]["gguf/model.gguf"]
    write_json(paths.raw_dir(root) / "MANIFEST.json", m)
    before = snapshot(root)
    saved = []
    real_save = twins.save

    def save(model, tok, folder, key, **info):
        saved.append(key)
        return real_save(model, tok, folder, key, **info)

    def adapt_dlm(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated) while adapting tiny-dlm")

    monkeypatch.setattr(twins, "save", save)
    monkeypatch.setattr(twins, "adapt_dlm", adapt_dlm)
    with pytest.raises(RuntimeError, match="adapting tiny-dlm"):
        train.train_models(_train_cfg(), root=root)
    assert saved == ["tiny-ar"]  # tiny-ar was written (into the staged folder) before the failure
    assert snapshot(root) == before


# ---- prune / evaluate readers: the calibration and validation corpora (item 8) ---------------------
def test_calibration_refuses_a_tampered_corpus(tmp_path):
    raw = _raw_with_manifest(tmp_path, {"corpus/calibration.jsonl": _passages(20)})
    bad = raw / "corpus/calibration.jsonl"
    _tamper_same_size(bad)
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as exc:  # before the tokenizer is touched
        calibration.build_calibration(None, bad, n_samples=2, seq_len=4, seed=0, bos_id=None,
                                      windows_per_batch=WINDOWS_PER_BATCH, mass_chunk_size=CHUNK)
    _assert_names(exc, bad, raw / "MANIFEST.json", "calibration.jsonl")
    assert snapshot(tmp_path) == before


def test_validation_corpus_and_jsonl_reader_refuse_tampering(tmp_path):
    raw = _raw_with_manifest(tmp_path, {"corpus/validation.jsonl": _passages(5), "tasks/t/test.jsonl": _passages(3)})
    assert len(read_texts(raw / "corpus/validation.jsonl", what="validation corpus")) == 5
    for rel, reader in (("corpus/validation.jsonl", read_texts), ("tasks/t/test.jsonl", read_jsonl)):
        bad = raw / rel
        bad.write_bytes(bad.read_bytes()[:-1])  # truncated: the size differs, nothing is hashed
        with pytest.raises(DataError) as exc:
            reader(bad)
        _assert_names(exc, bad, "MANIFEST.json", "bytes")


def test_corrupt_manifest_is_named(tmp_path):
    raw = _raw_with_manifest(tmp_path, {"corpus/calibration.jsonl": _passages(3)})
    man = raw / "MANIFEST.json"
    man.write_text("{ not json")
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as exc:
        read_texts(raw / "corpus/calibration.jsonl")
    _assert_names(exc, man, "unreadable data/raw manifest")
    assert snapshot(tmp_path) == before


def test_files_outside_the_manifest_are_read_and_logged(tmp_path, caplog):
    raw = _raw_with_manifest(tmp_path, {"corpus/calibration.jsonl": _passages(3)})
    own = tmp_path / "mine" / "corpus.jsonl"  # a user's own calibration corpus, outside data/raw
    own.parent.mkdir()
    own.write_text(_passages(2))
    extra = raw / "corpus" / "extra.jsonl"  # inside data/raw but not listed
    extra.write_text(_passages(2))
    with caplog.at_level(logging.INFO, logger="srclib.data.manifest"):
        assert len(read_texts(own)) == 2 and len(read_texts(extra)) == 2
    text = caplog.text
    assert f"{own} lies outside data/raw: not checked" in text
    assert f"{extra} is not listed in {raw / 'MANIFEST.json'}" in text


def test_each_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    raw = _raw_with_manifest(tmp_path, {"corpus/train.jsonl": _passages(4)})
    f = raw / "corpus/train.jsonl"
    hashed = []
    real = manifest_mod.sha256_file
    monkeypatch.setattr(manifest_mod, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    for _ in range(3):
        read_texts(f)
    assert hashed == [f]
    _tamper_same_size(f)  # changed within the process: the new modification time makes it checked again
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="sha256"):
        read_texts(f)


# ---- srclib.files.atomic_outputs: the multi-output swap -------------------------------------------
def _two_outputs(root: Path) -> tuple[Path, Path]:
    d, f = root / "outdir", root / "metrics" / "m.json"
    write_text(d / "old.txt", "old")
    write_json(f, {"old": True})
    return d, f


def test_atomic_outputs_failure_in_the_block_touches_nothing(tmp_path):
    d, f = _two_outputs(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with atomic_outputs() as out:
            write_text(out.dir(d) / "new.txt", "new")
            write_json(out.file(f), {"new": True})
            _ = 1 / 0
    assert snapshot(tmp_path) == before
    with atomic_outputs() as out:
        write_text(out.dir(d) / "new.txt", "new")
        write_json(out.file(f), {"new": True})
    assert [p.name for p in d.iterdir()] == ["new.txt"] and read_json(f) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "outdir"]


def test_atomic_outputs_unwritten_output_is_named(tmp_path):
    d, f = _two_outputs(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError) as exc:
        with atomic_outputs() as out:
            write_text(out.dir(d) / "new.txt", "new")
            out.file(f)  # staged, never written
    _assert_names(exc, f, "never written")
    assert snapshot(tmp_path) == before


def test_atomic_outputs_rolls_back_when_a_rename_fails(tmp_path, monkeypatch):
    d, f = _two_outputs(tmp_path)
    before = snapshot(tmp_path)
    real = os.replace

    def replace(src, dst):
        if Path(dst) == f.absolute() and ".tmp" in Path(src).name:
            raise OSError(28, "No space left on device (simulated)", str(dst))
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError) as exc:
        with atomic_outputs() as out:
            write_text(out.dir(d) / "new.txt", "new")  # swapped in first, then rolled back
            write_json(out.file(f), {"new": True})
    _assert_names(exc, f)
    assert snapshot(tmp_path) == before


def test_atomic_outputs_refuses_overlapping_outputs(tmp_path):
    with pytest.raises(ValueError) as exc:
        with atomic_outputs() as out:
            out.dir(tmp_path / "sinks")
            out.file(tmp_path / "sinks" / "x.json")
    _assert_names(exc, tmp_path / "sinks" / "x.json", "overlaps")
    assert list(tmp_path.iterdir()) == []
