"""Bad params and runner inputs (issue 15 items 1, 3, 4, 5, 7): each is refused with a message that
names the key or the file, before any kernel starts, and nothing is written.

Runner cases run ``srclib.run.main`` in-process on a temporary repository root (paths.ROOT patched;
papermill patched to fail if a kernel would start) and check that the root's files are unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import srclib
from srclib import params, paths, run
from srclib.params import ParamsError
from srclib.run import RunnerError
from srclib.schema import load_yaml_text

from helpers import write_stage_notebook  # tests/ is on sys.path

REPO_PARAMS = (paths.ROOT / "params.yaml").read_text()
INSTANCE = "dlm-wanda-sink-50-s0"  # a tiny-dlm instance of the repository's params.yaml
INSTANCE_LINE = next(i for i, line in enumerate(REPO_PARAMS.splitlines(), 1) if line.startswith(f"    {INSTANCE}:"))


def edit(text: str, old: str, new: str) -> str:
    """``text`` with the one occurrence of ``old`` replaced (the fixture must still match the repo file)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in params.yaml"
    return text.replace(old, new)


def write_params(folder: Path, text: str, name: str = "params.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# a temporary repository root for the runner
@pytest.fixture()
def root(tmp_path, monkeypatch):
    """A repository root with the prune and collect notebooks, the calibration corpus and the repo's
    params.yaml; ``srclib.run.main`` runs against it and may never start a kernel."""
    def no_kernel(*a, **k):
        raise AssertionError("papermill must not start for invalid inputs")

    # a stand-in papermill module: the runner imports it only after validation, and must not run it
    monkeypatch.setitem(sys.modules, "papermill", ModuleType("papermill"))
    monkeypatch.setattr(sys.modules["papermill"], "execute_notebook", no_kernel, raising=False)
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    for stage, params_src in (("prune", "params_file = 'params.yaml'\ninstance = 'x'\n"),
                              ("collect", "params_file = 'params.yaml'\n")):
        write_stage_notebook(tmp_path, stage, "raise SystemExit('the kernel must not start')", params=params_src,
                             params_yaml=False)
    corpus = tmp_path / "data/raw/corpus/calibration.jsonl"
    corpus.parent.mkdir(parents=True)
    corpus.write_text('{"text": "a b c"}\n')
    write_params(tmp_path, REPO_PARAMS)
    return tmp_path


def refused(root: Path, caplog, argv: list[str], rc: int = 2) -> str:
    """Run the runner's CLI entry point; assert the exit code, that no kernel started and that
    nothing under ``root`` changed (no reports/, no metrics/); return what it logged."""
    before = snapshot(root)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="srclib.run"):
        assert run.main(argv) == rc
    assert snapshot(root) == before
    assert not (root / "reports").exists() and not (root / "metrics").exists()
    return "\n".join(r.getMessage() for r in caplog.records)


def prune_argv(params_file: str = "params.yaml", instance: str = INSTANCE) -> list[str]:
    return ["prune", f"params_file={params_file}", f"instance={instance}"]


# ---------------------------------------------------------------------------------------------
# item 1: duplicate keys at any depth, with the dotted path and both lines
DUPLICATES = [
    # (id, old, new, dotted path, lines)
    ("top-level section", "data:\n  seed: 0 ", "data:\n  seed: 0\ndata:\n  seed: 0 ", "data", "lines 5 and 7"),
    ("block key in a section", "  seed: 0\n  threads: 2\n", "  seed: 0\n  threads: 2\n  threads: 3\n",
     "train.threads", "lines 15 and 16"),
    ("quoted and plain spelling of one key", "  seed: 0\n  threads: 2\n", "  seed: 0\n  threads: 2\n  'threads': 3\n",
     "train.threads", "lines 15 and 16"),
    ("key inside a flow mapping",
     "{model: tiny-dlm, method: wanda, weighting: uniform, sparsity: 0.7, pattern: 'unstructured', seed: 0}",
     "{model: tiny-dlm, method: wanda, weighting: uniform, sparsity: 0.7, pattern: 'unstructured', seed: 0, "
     "sparsity: 0.5}",
     "prune.instances.dlm-wanda-uniform-70-s0.sparsity", "columns"),
    ("instance defined twice (sink, then uniform)",
     "    dlm-wanda-sink-50-s0: {model: tiny-dlm, method: wanda, weighting: sink, sparsity: 0.5, "
     "pattern: 'unstructured', seed: 0}\n",
     "    dlm-wanda-sink-50-s0: {model: tiny-dlm, method: wanda, weighting: sink, sparsity: 0.5, "
     "pattern: 'unstructured', seed: 0}\n"
     "    dlm-wanda-sink-50-s0: {model: tiny-dlm, method: wanda, weighting: uniform, sparsity: 0.5, "
     "pattern: 'unstructured', seed: 0}\n",
     f"prune.instances.{INSTANCE}", f"lines {INSTANCE_LINE} and {INSTANCE_LINE + 1}"),
    ("key inside a nested flow mapping of a section",
     "arch: {n_layers: 4,", "arch: {n_layers: 4, n_layers: 2,", "train.arch.n_layers", "columns"),
]


@pytest.mark.parametrize("case", DUPLICATES, ids=[c[0] for c in DUPLICATES])
def test_duplicate_key_in_params_file(tmp_path, case):
    _, old, new, dotted, lines = case
    f = write_params(tmp_path, edit(REPO_PARAMS, old, new))
    with pytest.raises(ParamsError) as err:
        params.load(f)
    msg = str(err.value)
    assert f"duplicate key {dotted} (" in msg and lines in msg, msg
    assert str(f) in msg or "params.yaml" in msg


def test_duplicate_key_in_a_sequence_item_names_the_index():
    with pytest.raises(ParamsError, match=r"^f\.yaml: duplicate key a\[1\]\.x \(line 3, columns 6 and 12\)"):
        load_yaml_text("a:\n  - {x: 1}\n  - {x: 1, x: 2}\n", "f.yaml")


def test_merge_keys_anchors_and_repeated_names_elsewhere_are_not_duplicates():
    text = "base: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}\ne: *b\nf: {x: 1}\n"
    assert load_yaml_text(text, "f.yaml") == {"base": {"x": 1, "y": 2}, "d": {"x": 3, "y": 2},
                                              "e": {"x": 1, "y": 2}, "f": {"x": 1}}
    assert params.load(paths.ROOT / "params.yaml").prune.sink.rule  # the repo file (anchors, aliases) loads


def test_duplicate_key_through_the_runner(root, caplog):
    write_params(root, edit(REPO_PARAMS, "  seed: 0\n  threads: 2\n", "  seed: 0\n  threads: 2\n  threads: 3\n"))
    msg = refused(root, caplog, prune_argv())
    assert "params.yaml: duplicate key train.threads (lines 15 and 16)" in msg


def test_duplicate_key_in_a_runner_argument(root, caplog):
    msg = refused(root, caplog, ["prune", "params_file=params.yaml", "instance={a: 1, a: 2}"])
    assert "argument instance={a: 1, a: 2}: duplicate key a (line 1, columns 2 and 8)" in msg


# ---------------------------------------------------------------------------------------------
# item 4: cross-field checks
def test_train_seq_len_above_max_len(tmp_path):
    f = write_params(tmp_path, edit(REPO_PARAMS, "  seq_len: 128\n  max_len: 512", "  seq_len: 600\n  max_len: 512"))
    with pytest.raises(ParamsError, match=r"^train\.seq_len = 600: must be <= train\.max_len \(512\)"):
        params.load(f)
    ok = write_params(tmp_path, edit(REPO_PARAMS, "  seq_len: 128\n  max_len: 512", "  seq_len: 512\n  max_len: 512"))
    assert params.load(ok).train.seq_len == 512  # the boundary is allowed


def test_empty_prune_instances_named_directly(tmp_path):
    start = REPO_PARAMS.index("\n  instances:") + 1
    end = REPO_PARAMS.index("\nevaluate:")
    f = write_params(tmp_path, REPO_PARAMS[:start] + "  instances: {}\n" + REPO_PARAMS[end:])
    with pytest.raises(ParamsError) as err:
        params.load(f)
    assert str(err.value).startswith("prune.instances: must define at least one instance")
    assert "efficiency" not in str(err.value)


FIDELITY_CASES = [
    # (old, new, message start): prune.fidelity and the calibration noise (README, "Differences from
    # the released code"), refused by the runner before any kernel starts
    ("  fidelity: corrected\n", "  fidelity: relased\n",  # codespell:ignore relased
     "prune.fidelity = 'relased': must be one of ['released', 'corrected']"),
    ("noise_eps: 1.0e-3, noise: grid,", "noise_eps: 1.0e-3, noise: dream,",
     "prune.calibration.noise = 'dream': must be one of ['auto', 'grid', 'stratified']"),
    ("noise_eps: 1.0e-3, noise: grid,", "noise_eps: 1.0e-3, noise: stratified,",
     "prune.calibration.noise = 'stratified' is the released Dream forward process"),
]


@pytest.mark.parametrize("old,new,start", FIDELITY_CASES, ids=["fidelity", "noise", "stratified-ends"])
def test_fidelity_and_noise_refused_through_the_runner(root, caplog, old, new, start):
    write_params(root, edit(REPO_PARAMS, old, new))
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith(start), msg


CALIB = "n_samples: 32, seq_len: 128,"


def test_calibration_seq_len_above_tiny_max_len(root, caplog):
    write_params(root, edit(REPO_PARAMS, CALIB, "n_samples: 32, seq_len: 513,"))
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith("prune.calibration.seq_len = 513: above the maximum length 512 of model 'tiny-dlm' "
                          "(train.max_len)"), msg


def _model_config(root: Path, key: str, text: str) -> None:
    folder = paths.model_dir(key, root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text)


def test_calibration_seq_len_above_config_max_position_embeddings(root, caplog):
    _model_config(root, "smollm2-135m", json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    write_params(root, edit(REPO_PARAMS, CALIB, "n_samples: 32, seq_len: 300,"))  # tiny models: 512, fine
    msg = refused(root, caplog, prune_argv())
    assert ("prune.calibration.seq_len = 300: above the maximum length 256 of model 'smollm2-135m' "
            "(max_position_embeddings in models/smollm2-135m/config.json), which prune.instances.smol-") in msg


def _collect_gen_length(root: Path, gen_length: int) -> None:
    """The repository's params with collect.gen_length (and its steps and block) = ``gen_length``."""
    text = edit(REPO_PARAMS, "  gen_length: 64\n  steps: 64 ", f"  gen_length: {gen_length}\n  steps: {gen_length} ")
    write_params(root, edit(text, "  block_length: 64\n", f"  block_length: {gen_length}\n"))


def test_collect_lengths_at_tiny_max_len_pass(root, caplog):
    """The boundary on both sides: prompt_tokens 27 + gen_length 485 = 512 = train.max_len of the
    tiny models passes (validation returns, nothing logged, the runner goes on to the kernel); one
    token more is refused."""
    P = params.load(root / "params.yaml")
    assert (P.collect.prompt_tokens, P.train.max_len) == (27, 512)  # the fixture's arithmetic
    assert {"tiny-dlm", "tiny-ar"} <= set(P.collect.models)
    _collect_gen_length(root, 485)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="srclib"):
        assert run.validate("collect", {"params_file": "params.yaml"}, root) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    with pytest.raises(AssertionError, match="papermill must not start"):  # past validation: the kernel
        run.run_stage("collect", {"params_file": "params.yaml"}, root)
    _collect_gen_length(root, 486)
    msg = refused(root, caplog, ["collect", "params_file=params.yaml"])
    assert msg.startswith("collect.gen_length = 486 (+ collect.prompt_tokens = 27: 513 tokens): above the "
                          "maximum length 512 of model 'tiny-dlm' (train.max_len) in collect.models[0]"), msg


def test_collect_prompt_plus_gen_length_above_tiny_max_len(root, caplog):
    text = edit(REPO_PARAMS, "  gen_length: 64\n  steps: 64 ", "  gen_length: 496\n  steps: 496 ")
    write_params(root, edit(text, "  block_length: 64\n", "  block_length: 496\n"))
    msg = refused(root, caplog, ["collect", "params_file=params.yaml"])
    assert msg.startswith("collect.gen_length = 496 (+ collect.prompt_tokens = 27: 523 tokens): above the "
                          "maximum length 512 of model 'tiny-dlm' (train.max_len) in collect.models[0]"), msg


def test_collect_lengths_above_config_max_sequence_length(root, caplog):
    # LLaDA-style configs declare max_sequence_length
    _model_config(root, "smollm2-135m", json.dumps({"max_sequence_length": 256}))  # calibration's 128 fits
    write_params(root, edit(REPO_PARAMS, "  prompt_tokens: 27 ", "  prompt_tokens: 200 "))
    msg = refused(root, caplog, ["collect", "params_file=params.yaml"])
    assert ("collect.gen_length = 64 (+ collect.prompt_tokens = 200: 264 tokens): above the maximum length 256 of "
            "model 'smollm2-135m' (max_sequence_length in models/smollm2-135m/config.json) in collect.models[2]") in msg


def test_evaluate_ppl_seq_len_above_config_max_position_embeddings(root, caplog):
    # a hub-style config of 160 positions: calibration's 128 and collect's 91 tokens fit, the ELBO
    # perplexity's 200-token windows do not; refused before a kernel starts (every stage checks every
    # length, so a bad evaluate setting is caught before the prune that would lead to it)
    _model_config(root, "smollm2-135m", json.dumps({"model_type": "llama", "max_position_embeddings": 160}))
    write_params(root, edit(REPO_PARAMS, "ppl: {n_windows: 32, mc_num: 8, seq_len: 128}",
                            "ppl: {n_windows: 32, mc_num: 8, seq_len: 200}"))
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith("evaluate.ppl.seq_len = 200: above the maximum length 160 of model 'smollm2-135m' "
                          "(max_position_embeddings in models/smollm2-135m/config.json), which "
                          "evaluate.dense[2] evaluates; must be <= 160"), msg


def test_prune_instance_on_a_cuda_device_without_cuda_is_refused(root, caplog, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_params(root, edit(REPO_PARAMS, "  tiny-dlm: {dtype: float32, device: cpu}",
                            "  tiny-dlm: {dtype: float32, device: cuda}"))
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith("models.tiny-dlm.device = 'cuda': this machine has no CUDA device"), msg


def test_model_config_not_valid_json(root, caplog):
    _model_config(root, "smollm2-135m", '{"max_position_embeddings": ')
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith("models/smollm2-135m/config.json: not valid JSON"), msg
    assert "rebuild model 'smollm2-135m'" in msg


def test_lengths_within_limits_and_unknown_limits_pass(root):
    _model_config(root, "smollm2-135m", json.dumps({"max_position_embeddings": 128}))  # == calibration seq_len
    P = params.load(root / "params.yaml")
    run.check_lengths(P, root)  # no error: 128 <= 128, 96 <= 128, tiny models 512
    assert run.model_max_length(P, "llada-8b-base", root) is None  # no models/<key>/config.json: not known


def test_max_length_keys_match_the_evaluation_reader():
    from srclib.evaluation.common import model_max_length

    for i, _key in enumerate(run.MAX_LENGTH_KEYS):
        cfg = {k: 1000 + j for j, k in enumerate(run.MAX_LENGTH_KEYS[i:])}  # this key and the later ones
        assert model_max_length(SimpleNamespace(config=SimpleNamespace(**cfg))) == 1000


def test_tiny_models_are_the_trained_twins():
    from srclib.models import MODELS
    from srclib.models.tiny_adapter import TinyAdapter
    from srclib.train.twins import TWINS

    assert sorted(params.TINY_MODELS) == sorted(TWINS)
    assert sorted(params.TINY_MODELS) == sorted(k for k, a in MODELS.items() if isinstance(a, TinyAdapter))


@pytest.mark.parametrize("corpus", ["data/raw/corpus/nope.jsonl", "data/raw/corpus.jsonl"],
                         ids=["missing file", "a folder's name"])
def test_calibration_corpus_missing(root, caplog, corpus):
    (root / "data/raw/corpus.jsonl").mkdir()  # a folder, not a file
    write_params(root, edit(REPO_PARAMS, "corpus: data/raw/corpus/calibration.jsonl", f"corpus: {corpus}"))
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith(f"prune.calibration.corpus = {corpus!r}: no such file {root / corpus}"), msg


def test_calibration_corpus_is_only_required_by_prune(root):
    (root / "data/raw/corpus/calibration.jsonl").unlink()
    run.validate("collect", {"params_file": "params.yaml"}, root)  # collect does not read it
    with pytest.raises(ParamsError, match=r"^prune\.calibration\.corpus = "):
        run.validate("prune", {"params_file": "params.yaml", "instance": INSTANCE}, root)


# ---------------------------------------------------------------------------------------------
# item 5: multi-line messages shown whole
def test_unclosed_flow_sequence_argument_shown_whole(root, caplog):
    with pytest.raises(RunnerError, match=r"^argument instance=\[unclosed: not valid YAML: "):
        run.parse_assignments(["instance=[unclosed"])
    msg = refused(root, caplog, ["prune", "params_file=params.yaml", "instance=[unclosed"])
    lines = msg.splitlines()
    assert lines[0] == ("argument instance=[unclosed: not valid YAML: while parsing a flow sequence: "
                        "expected ',' or ']', but got '<stream end>'")
    assert lines[1:] == ['  in "argument instance=[unclosed", line 1, columns 1 and 10:', "    [unclosed",
                         "    ^        ^"]  # the one line once, both carets


def test_params_yaml_syntax_error_shown_whole(root, caplog):
    write_params(root, edit(REPO_PARAMS, "  seed: 0\n  threads: 2\n", "  seed: 0\n  threads: [2\n"))
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith("params.yaml: not valid YAML: while parsing a flow sequence"), msg
    assert 'in "params.yaml", line 15, column 12:' in msg and "threads: [2" in msg
    assert "expected ',' or ']', but got ':'" in msg


def test_notebook_failure_shown_whole(root, caplog, monkeypatch):
    def failing(stage, parameters, root=None):
        raise RuntimeError("\n-----\nException encountered at \"In [3]\":\n\x1b[0;31mValueError\x1b[0m: bad value\n"
                           "  in cell 3, line 2\n      ^")

    monkeypatch.setattr(run, "run_stage", failing)
    msg = refused(root, caplog, prune_argv(), rc=1)
    assert "Exception encountered at \"In [3]\"" in msg and "ValueError: bad value" in msg
    assert "in cell 3, line 2" in msg and "\x1b" not in msg


def test_notebook_file_not_json(root, caplog):
    paths.notebook("prune", root).write_text("{not json")
    msg = refused(root, caplog, prune_argv())
    assert msg.startswith(f"{paths.notebook('prune', root)}: not a notebook (not valid JSON"), msg


# ---------------------------------------------------------------------------------------------
# item 3: a params error through the CLI is fast and imports none of nbformat, papermill, torch
def test_cli_params_error_before_heavy_imports(root):
    write_params(root, edit(REPO_PARAMS, "  seq_len: 128\n  max_len", "  seq_len: -1\n  max_len"), "bad.yaml")
    before = snapshot(root)
    env = {**os.environ, "SRCLIB_ROOT": str(root), "PYTHONPATH": str(Path(srclib.__file__).parents[1]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "srclib.run", *prune_argv("bad.yaml", "x")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.seq_len = -1: must be >= 8" in proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "papermill", "nbformat", "nbconvert"}, sorted(imported & {"torch", "papermill"})
    # ~0.3 s on an idle machine: measured, not gated; the import check above is the guard
    assert snapshot(root) == before


# ---------------------------------------------------------------------------------------------
# item 7: an unreadable srclib_model.json names the file
@pytest.mark.parametrize("text, what", [
    ('{"key": ', r"not valid JSON \(line 1 column 9\)"),
    ("", r"not valid JSON \(line 1 column 1\)"),
    ('["tiny-dlm"]', "must hold a JSON object"),
], ids=["truncated", "empty", "a list"])
def test_marker_not_valid(tmp_path, text, what):
    from srclib.models import load
    from srclib.models.base import MARKER, read_marker

    folder = tmp_path / "pruned" / "x"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(text)
    before = snapshot(tmp_path)
    for call in (read_marker, load):  # the marker reader and the registry's load(folder)
        with pytest.raises(ValueError, match=what) as err:
            call(folder)
        assert str(err.value).startswith(f"{folder / MARKER}: ") and "rebuild the checkpoint" in str(err.value)
    assert snapshot(tmp_path) == before
