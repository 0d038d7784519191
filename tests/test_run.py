"""The papermill runner: parameter checks, success renders HTML, failure keeps the notebook."""

import re

import nbformat
import pytest

from srclib import paths, run
from srclib.run import RunnerError

from helpers import html_outputs, write_stage_notebook  # tests/ is on sys.path


def test_declared_parameters(tmp_path):
    nb = write_stage_notebook(tmp_path, "variance", "pass", params="a = 1\nb = 'x'  # comment\n", params_yaml=False)
    assert run.declared_parameters(nb) == {"a": 1, "b": "x"}


def test_parse_assignments():
    assert run.parse_assignments(["a=1", "b=x", "c=0.5", "d=true"]) == {"a": 1, "b": "x", "c": 0.5, "d": True}
    with pytest.raises(RunnerError, match="key=value"):
        run.parse_assignments(["oops"])
    with pytest.raises(RunnerError, match="twice"):
        run.parse_assignments(["a=1", "a=2"])


def test_unknown_and_missing_parameters(tmp_path):
    write_stage_notebook(tmp_path, "variance", "pass", params="a = 1\nb = 2\n", params_yaml=False)
    with pytest.raises(RunnerError, match=r"unknown parameter\(s\) \['zz'\]"):
        run.run_stage("variance", {"a": 1, "b": 2, "zz": 3}, root=tmp_path)
    with pytest.raises(RunnerError, match=r"missing parameter\(s\) \['b'\]"):
        run.run_stage("variance", {"a": 1}, root=tmp_path)


def test_unknown_stage_exit_code(capsys):
    assert run.main(["nostage"]) == 2


@pytest.mark.slow
def test_success_renders_html_and_failure_keeps_notebook(tmp_path):
    body = "import os\nprint('cwd', os.getcwd())\nprint('answer', a * 7 + 35)\nassert a == 1"
    write_stage_notebook(tmp_path, "variance", body, params="a = 0\n", title="# Runner smoke notebook",
                         params_yaml=False)
    html_path = run.run_stage("variance", {"a": 1}, root=tmp_path)
    assert html_path == paths.report_html("variance", "variance", tmp_path)
    text = html_path.read_text()
    # the executed notebook, whole: its markdown title, the parameters cell, the cell papermill
    # injected (a = 1 over the default 0), the body, each executed in order
    assert '<h1 id="Runner-smoke-notebook">Runner smoke notebook' in text
    assert text.count("celltag_parameters") == 1 and text.count("celltag_injected-parameters") == 1
    assert re.findall(r'jp-InputPrompt[^"]*">In\s\[(\d+)\]:', text) == ["1", "2", "3"]  # \s: a no-break space
    # one output, the body's: run in the root as cwd with the injected value; no stderr, no error
    assert html_outputs(text) == [("text/plain", f"cwd {tmp_path}\nanswer 42")]
    assert "Traceback" not in text and "AssertionError" not in text
    failed = paths.failed_notebook("variance", "variance", tmp_path)
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError, match="AssertionError"):
        run.run_stage("variance", {"a": 2}, root=tmp_path)
    # the annotated notebook is kept: a = 2 injected, the body ran (answer 49) and failed on its assert
    nb = nbformat.read(str(failed), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "a = 2" in injected[0].source
    last = nb.cells[-1]
    assert last.source == body
    streams = [o.get("text", "").strip() for o in last.outputs if o.output_type == "stream"]
    assert streams == [f"cwd {tmp_path}\nanswer 49"]
    errors = [(o.output_type, o.get("ename")) for o in last.outputs if o.output_type == "error"]
    assert errors == [("error", "AssertionError")]
    assert html_path.read_text() == text  # the failed run left the last good report as it was
    # no temp files left beside the outputs
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert not leftovers


def test_params_are_validated_before_any_kernel_starts(tmp_path, monkeypatch):
    """A params error (or an unknown instance) is raised by the runner itself: papermill never runs."""
    import shutil

    import papermill

    from srclib.params import ParamsError

    def no_kernel(*a, **k):
        raise AssertionError("papermill must not start for invalid params")

    monkeypatch.setattr(papermill, "execute_notebook", no_kernel)
    write_stage_notebook(tmp_path, "prune", "pass", params="params_file = 'params.yaml'\ninstance = 'x'\n",
                         params_yaml=False)
    shutil.copy(paths.ROOT / "params.yaml", tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="instance 'nope' is not in prune.instances"):
        run.run_stage("prune", {"params_file": "params.yaml", "instance": "nope"}, root=tmp_path)
    text = (tmp_path / "params.yaml").read_text().replace("  seq_len: 128\n", "  seq_len: -1\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"train\.seq_len = -1"):
        run.run_stage("prune", {"params_file": "params.yaml", "instance": "x"}, root=tmp_path)
