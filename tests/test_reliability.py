"""Reliability: killed stages leave nothing half-written; corrupt inputs are detected; no pickle."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from srclib import files as io, paths

from helpers import html_outputs, write_stage_notebook  # tests/ is on sys.path


@pytest.mark.slow
def test_killed_stage_leaves_no_partial_output_and_reruns(tmp_path):
    marker = tmp_path / "started"
    write_stage_notebook(tmp_path, "plot",
                         f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(60)")
    env = {**os.environ, "SRCLIB_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "srclib.run", "plot", "params_file=params.yaml"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the notebook never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not paths.report_html("plot", "plot", tmp_path).exists()
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"
    write_stage_notebook(tmp_path, "plot", "print('rerun', 6 * 7)")
    rerun = subprocess.run([sys.executable, "-m", "srclib.run", "plot", "params_file=params.yaml"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # the report is the rerun's, whole: its one cell's output (computed, not in the source), no
    # error, nothing of the killed run's notebook, the document complete
    text = paths.report_html("plot", "plot", tmp_path).read_text()
    assert html_outputs(text) == [("text/plain", "rerun 42")]
    assert "sleep" not in text and "Traceback" not in text
    assert text.rstrip().endswith("</html>") and text.count("<html") == 1
    assert not paths.failed_notebook("plot", "plot", tmp_path).exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_interrupted_atomic_write_keeps_old_file(tmp_path):
    target = tmp_path / "m.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("killed")
    assert io.read_json(target) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_corrupt_metrics_file_is_detected(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text('{"tasks": {"arc_easy": ')
    with pytest.raises(ValueError, match="corrupt JSON"):
        io.read_json(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        io.read_json(tmp_path / "missing.json")


def test_deterministic_json_bytes(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    io.write_json(a, {"b": 1.0, "a": [1, 2]})
    io.write_json(b, {"a": [1, 2], "b": 1.0})
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ValueError):
        io.write_json(tmp_path / "nan.json", {"x": float("nan")})


def test_no_pickle_checkpoint_loading():
    """Checkpoints are safetensors only: no torch.load / pickle in the library."""
    offenders = []
    for path in (paths.ROOT / "srclib").rglob("*.py"):
        text = path.read_text()
        if re.search(r"\btorch\.load\(|\bpickle\.load|use_safetensors\s*=\s*False", text):
            offenders.append(str(path.relative_to(paths.ROOT)))
    assert not offenders, offenders


def test_atomic_writes_have_normal_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    f = io.write_json(tmp_path / "a.json", {"a": 1})
    assert (f.stat().st_mode & 0o777) == (0o666 & ~mask)
    with io.atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("1")
    assert ((tmp_path / "d").stat().st_mode & 0o777) == (0o777 & ~mask)
