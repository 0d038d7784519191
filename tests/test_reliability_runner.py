"""Reliability of the runner (issue 25, items 14-16): a fork's parameters cell with a non-literal and
a file that is not a notebook are refused naming the file and the line; papermill reads every
parameter the pipeline passes to the shipped notebooks (no "Passed unknown parameter" warning);
long loops log progress lines that reach the terminal through the runner but never the saved
notebook or its HTML, and the runner logs each stage's elapsed time."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from helpers import CHUNK  # tests/ is on sys.path
from srclib import notebook, paths, run
from srclib.notebook import PROGRESS_ENV, PROGRESS_LOGGER, Progress, duration, phase, progress

from helpers import (AD_DLM, collect_params, tiny_dlm, word_texts, word_tokenizer,  # tests/ is on sys.path
                     write_notebook, write_stage_notebook)


def _refused(caplog, argv: list[str]) -> str:
    caplog.clear()
    assert run.main(argv) == 2, caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


# ---- item 14: a fork's parameters cell, and a file that is not a notebook ------------------------
@pytest.mark.parametrize("cell, line, says", [
    ("params_file = 'params.yaml'\nx = foo(1)", 2, "x = foo(1) is not a literal"),
    ("params_file = 'params.yaml'\nn: int = 2 ** 10", 2, "n = 2 ** 10 is not a literal"),
    ("params_file = 'params.yaml'\n\na = b = [1, len('x')]", 3, "a, b = [1, len('x')] is not a literal"),
    ("params_file = 'params.yaml'\na, b = 1, 2", 2, "`a, b` is not a plain name"),
    ("import os\nparams_file = 'params.yaml'", 1, "`import os` is not an assignment"),
    ("params_file = 'params.yaml'\nx = (1,", 2, "does not parse"),
], ids=["call", "annotated-expression", "chained", "tuple-target", "import", "syntax"])
def test_fork_parameters_cell_not_literal_names_file_cell_and_line(tmp_path, caplog, cell, line, says):
    """Before: `x = foo(1)` gave exit 1 and "malformed node or string on line 2: <ast.Call object at
    0x...>"; a syntax error exit 1 and "invalid syntax"."""
    fork = write_notebook(tmp_path / "21_mine.ipynb", "from srclib.stages import variance", params=cell)
    msg = _refused(caplog, [str(fork), "params_file=params.yaml"])
    assert msg.startswith(f"{fork}: the parameters cell (cell 2), line {line}: "), msg
    assert says in msg and "<ast." not in msg
    if "literal" in says or "plain name" in says:
        assert "literals only" in msg


@pytest.mark.parametrize("content, what", [
    ("[1, 2]", "its JSON is a list, not an object"),
    ('"a string"', "its JSON is a string, not an object"),
    ("{}", "not an nbformat 4 notebook"),
    ('{"nbformat": 4, "cells": [1]}', "cell 1 is not a cell object"),
    ('{"nbformat": 4, "cells": [{"cell_type": "code", "source": [1], "metadata": {}}]}', "cell 1 is not a cell object"),
    ('{"nbformat": 4, "cells": [{"cell_type": "code", "source": "", "metadata": []}]}', "cell 1 is not a cell object"),
    ("stages:\n  train: {cmd: python -m x}\n" * 3, "not valid JSON: Expecting value: line 1 column 1"),
    (b"\x89PNG\r\n\x1a\n\x00\xff" * 10, "not UTF-8 text"),
], ids=["list", "string", "empty-object", "cell-not-object", "source-not-text", "metadata-not-object",
        "yaml", "binary"])
def test_non_notebook_passed_as_fork_names_the_file(tmp_path, caplog, content, what):
    """Before: a JSON list gave exit 1 and "'list' object has no attribute 'get'"; a YAML file exit 1
    and "Expecting value: line 1 column 1 (char 0)" without the file's name."""
    path = tmp_path / "21_mine.ipynb"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    msg = _refused(caplog, [str(path), "params_file=params.yaml"])
    assert msg.startswith(f"{path}: not "), msg
    assert what in msg and "a Jupyter notebook is an nbformat 4 JSON object" in msg, msg
    assert "object has no attribute" not in msg and "train" not in msg  # never the file's content


def test_a_yaml_file_given_by_path_is_not_a_notebook(tmp_path, caplog):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  seq_len: 128\n")
    msg = _refused(caplog, [str(path)])
    assert msg.startswith(f"{path}: not a notebook (not valid JSON"), msg


# ---- item 15: papermill reads every parameter the pipeline passes ---------------------------------
def _dvc_parameters() -> dict[str, set[str]]:
    """stage -> the names dvc.yaml's cmd passes as key=value (foreach stages: their template)."""
    out: dict[str, set[str]] = {}
    for _name, stage in yaml.safe_load((paths.ROOT / "dvc.yaml").read_text())["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        words = cmd.split()
        assert words[:3] == ["python", "-m", "srclib.run"], cmd
        out[words[3]] = {w.split("=", 1)[0] for w in words[4:]}
    return out


def test_papermill_reads_every_parameter_the_pipeline_passes(caplog):
    """Before: every collect run logged papermill's "Passed unknown parameter: instance" (and
    "Unable to parse line 2"): the comment of `instance` held a second '='."""
    from papermill.inspection import _infer_parameters
    from papermill.iorw import load_notebook_node

    passed = _dvc_parameters()
    assert set(passed) == set(paths.STAGE_NOTEBOOKS) and passed["collect"] == {"params_file", "instance"}
    for stage in paths.STAGE_NOTEBOOKS:
        nb_path = paths.notebook(stage)
        declared = run.declared_parameters(nb_path)
        run.check_parameters(stage, declared, dict.fromkeys(passed[stage]))  # the runner's own check
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="papermill"):
            inferred = {p.name for p in _infer_parameters(load_notebook_node(str(nb_path)), name="python3",
                                                          language="python")}
        assert inferred == set(declared), (stage, inferred, declared)
        assert not [r for r in caplog.records if r.name.startswith("papermill")], (stage, caplog.text)


@pytest.mark.parametrize("arg, source, columns", [
    ('instance="abc', '"abc', "columns 1 and 5"),
    ("instance=[a", "[a", "columns 1 and 3"),
    ("instance={a: [1}", "{a: [1}", "columns 5 and 7"),
])
def test_a_yaml_error_shows_its_source_line_once(caplog, arg, source, columns):
    """Before: PyYAML's context and problem marks each quoted the argument's one line, so the
    message showed it twice, each with its own caret."""
    msg = _refused(caplog, ["collect", "params_file=params.yaml", arg])
    assert msg.startswith(f"argument {arg}: not valid YAML: "), msg
    assert msg.count(f"\n    {source}\n") == 1 and msg.count("line 1") == 1, msg
    assert f'in "argument {arg}", line 1, {columns}:' in msg


# ---- item 16: progress lines ----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def progress_lines(caplog, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    notebook.progress_logger()  # not routed: records propagate to caplog
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    return lambda: [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]


def test_progress_lines_every_tenth_or_30_s_with_eta(progress_lines):
    clock = Clock()
    bar = Progress("train x", 100, clock=clock)
    for i in range(100):
        clock.t += 1.0 if i < 50 else 0.1  # 50 s for the first half, 5 s for the second
        bar.update(loss=2.0)
    bar.close()
    lines = progress_lines()
    assert lines[0] == "train x: 100 steps"
    assert lines[1] == "train x: step 10/100 (10%), loss 2, 10.0 s elapsed, ETA 1m30s"
    steps = [int(re.search(r"step (\d+)/", line).group(1)) for line in lines[1:]]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert lines[-1] == "train x: step 100/100 (100%), loss 2, done in 55.0 s"
    # slow steps: a line every 30 s even within a tenth
    clock2 = Clock()
    bar = Progress("slow", 1000, unit="batch", clock=clock2)
    for _ in range(5):
        clock2.t += 16.0
        bar.update()
    assert progress_lines()[-1] == "slow: batch 4/1000 (0%), 1m04s elapsed, ETA 4h25m"
    assert len(progress_lines()) == 14


def test_progress_stopped_and_phase_lines(progress_lines):
    with pytest.raises(ValueError):
        with Progress("collect a", 10, clock=Clock()) as bar:
            bar.update()
            raise ValueError("x")
    assert progress_lines()[-1] == "collect a: stopped at step 1/10 after 0.0 s (ValueError)"
    assert list(progress(range(3), "loop", unit="block")) == [0, 1, 2]
    assert progress_lines()[-1].startswith("loop: block 3/3 (100%), done in ")
    with phase("convert"):
        pass
    assert progress_lines()[-2:][0] == "convert ..." and progress_lines()[-1].startswith("convert: done in ")
    assert [duration(s) for s in (4.25, 65, 3725)] == ["4.2 s", "1m05s", "1h02m"]


def test_progress_routed_to_the_runner_file_never_to_the_notebook(tmp_path, monkeypatch, caplog):
    """Under the runner the lines go to SRCLIB_PROGRESS's file only: nothing propagates to the
    handlers that write into the notebook's stderr (here: caplog on the root logger)."""
    target = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(target))
    caplog.set_level(logging.INFO)
    try:
        with phase("train y"):
            pass
        assert target.read_text().splitlines()[0] == "train y ..."
        assert not [r for r in caplog.records if r.name == PROGRESS_LOGGER]
    finally:
        monkeypatch.delenv(PROGRESS_ENV)
        notebook.progress_logger()  # unrouted again
    assert logging.getLogger(PROGRESS_LOGGER).propagate and not logging.getLogger(PROGRESS_LOGGER).handlers


def test_train_loop_logs_step_loss_and_eta(progress_lines):
    """Before: train_loop's only progress was a tqdm bar, written into the notebook's stderr."""
    from srclib.params import Schedule
    from srclib.train.loop import train_loop

    model = torch.nn.Linear(4, 1)
    x = torch.randn(8, 4)
    rec = train_loop(model, Schedule(steps=20, lr=1e-2, warmup=2, min_lr=1e-3), lambda step: model(x).pow(2).mean(),
                     "probe", weight_decay=0.0, grad_clip=1.0)
    lines = progress_lines()
    assert lines[0] == "train probe: 20 steps"
    assert re.fullmatch(r"train probe: step 2/20 \(10%\), loss [\d.e-]+, lr 0\.01, .* elapsed, ETA .*", lines[1]), lines
    assert re.fullmatch(r"train probe: step 20/20 \(100%\), loss [\d.e-]+, lr [\d.e-]+, done in .*", lines[-1])
    first = float(re.search(r"loss ([\d.e-]+)", lines[1]).group(1))
    assert first == pytest.approx(sum(rec["loss"][:2]) / 2, rel=1e-3)  # the mean since the last line
    assert len(lines) == 11


def test_calibration_loops_log_progress(progress_lines):
    from srclib.pruning import calibration as cal
    from srclib.models.tiny import TinyLM, test_config

    model = TinyLM(test_config(causal=False, shift=True)).eval()
    blocks = model.model.transformer.blocks
    batches = [cal.PassBatch(ids=torch.randint(3, 60, (2, 8))) for _ in range(3)]
    cal.run_one_shot(model, blocks, {"q": blocks[0].q_proj}, batches, lambda k, x, w: None, desc="OWL statistics",
                     chunk_size=CHUNK)
    assert progress_lines()[0] == "OWL statistics: 3 batches"
    assert progress_lines()[-1].startswith("OWL statistics: batch 3/3 (100%), done in ")
    cal.run_sequential(model, blocks, lambda b: {"q": b.q_proj}, batches, lambda i: None, lambda i: None,
                       chunk_size=CHUNK)
    lines = progress_lines()
    assert any(line.startswith("calibration (sequential): block 0 inputs: batch 3/3 (100%)") for line in lines)
    assert lines[-1].startswith(f"calibration (sequential): block {len(blocks)}/{len(blocks)} (100%), done in ")


def test_collect_logs_each_run(tmp_path, progress_lines):
    import json

    from srclib.params import ModelEntry
    from srclib.stages import collect

    prompts = paths.prompts_file(tmp_path)
    prompts.parent.mkdir(parents=True)
    prompts.write_text("".join(json.dumps({"id": i, "source": "s", "text": t}) + "\n"
                               for i, t in enumerate(word_texts())))
    collect.collect_models(collect_params(models=["t-dlm"], n_prompts=2, gen_length=4, steps=4, block_length=4,
                                          chunk_size=8, random_init_control=True),
                           {"t-dlm": ModelEntry(dtype="float32", device="cpu")}, root=tmp_path,
                           loader=lambda key, dtype: (tiny_dlm(), word_tokenizer(bos=True), AD_DLM))
    lines = progress_lines()
    assert lines[:2] == ["collect t-dlm: load (float32, cpu) ...", lines[1]] and lines[1].startswith(
        "collect t-dlm: load (float32, cpu): done in ")
    assert ("collect t-dlm: run 1/2, 2 prompts ..." in lines
            and "collect t-dlm-randinit: run 2/2, 2 prompts ..." in lines)
    assert lines[-1].startswith("collect t-dlm-randinit: run 2/2, 2 prompts: done in ")
    assert "collect t-dlm: 4 steps" in lines and any(
        line.startswith("collect t-dlm-randinit: step 4/4 (100%), done in ")
        for line in lines)  # the sampler's steps, within a run


# ---- item 16 end to end: the terminal gets progress, the saved notebook none ---------------------
PROBE = """from srclib import notebook
P = notebook.setup(params_file)
import torch
from tqdm.auto import tqdm
from srclib.params import Schedule
from srclib.train.loop import train_loop
model = torch.nn.Linear(4, 1)
x = torch.ones(8, 4)
for _ in tqdm(range(3), desc="a tqdm bar"):
    pass
rec = train_loop(model, Schedule(steps=30, lr=1e-2, warmup=0, min_lr=1e-3), lambda s: model(x).pow(2).mean(),
                 "probe", weight_decay=0.0, grad_clip=1.0)
print("steps", len(rec["loss"]))
"""
# a progress line, a tqdm bar or a clock value (the cells' source holds none of these)
PROGRESS_TEXT = re.compile(r"train probe: |ETA \d|elapsed,|done in \d|\d it/s|a tqdm bar: |\d+%\|")


def _runner(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SRCLIB_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    env.pop(PROGRESS_ENV, None)
    return subprocess.run([sys.executable, "-m", "srclib.run", "plot", "params_file=params.yaml"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _outputs(nb: nbformat.NotebookNode) -> str:
    return "\n".join(str(o) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_terminal_shows_progress_and_saved_notebook_holds_none(tmp_path):
    """Before: the runner's terminal showed nothing between "Executing notebook with kernel" and
    the end; train_loop's tqdm bar (rate, elapsed, ETA) was saved in the executed notebook's HTML."""
    write_stage_notebook(tmp_path, "plot", PROBE)
    proc = _runner(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress_lines = [line for line in proc.stderr.splitlines() if " srclib.run.progress INFO " in line]
    assert any(line.endswith("train probe: 30 steps") for line in progress_lines), proc.stderr[-3000:]
    assert any(re.search(r"train probe: step 3/30 \(10%\), loss .*, ETA ", line) for line in progress_lines)
    assert any(re.search(r"train probe: step 30/30 \(100%\), .* done in ", line) for line in progress_lines)
    assert re.search(r"stage plot \(plot\) done in [\d.]+ s -> .*plot\.html", proc.stderr), proc.stderr[-2000:]
    html = paths.report_html("plot", "plot", tmp_path).read_text()
    assert "steps 30" in html  # the notebook's own output is there ...
    assert not PROGRESS_TEXT.search(html), PROGRESS_TEXT.search(html)  # ... its progress is not

    # a failing run: the annotated notebook kept under reports/failed holds no progress either
    write_stage_notebook(tmp_path, "plot", PROBE + "raise ValueError('after the loop')\n")
    proc = _runner(tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert re.search(r"stage plot failed after [\d.]+ s; annotated notebook kept at ", proc.stderr), proc.stderr[-2000:]
    assert "train probe: step 30/30" in proc.stderr
    kept = nbformat.read(str(paths.failed_notebook("plot", "plot", tmp_path)), as_version=4)
    text = _outputs(kept)
    assert "after the loop" in text and "steps 30" in text
    assert not PROGRESS_TEXT.search(text), PROGRESS_TEXT.search(text)
