"""Adding a model at the params level leaves every other stage's DVC fingerprint alone (issue 16).

A copy of the repository's tracked files (dvc.yaml, dvc.lock, params.yaml, srclib, notebooks) is
asked `dvc status` before and after the README's params edit for a new model: the stages whose
status changes are exactly the new model's own instances. (The aggregating stages, variance and
plot, go stale once the new model's trajectories and metrics exist: they depend on the folders.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from srclib import paths

pytestmark = pytest.mark.slow

NEW_INSTANCE = "myar-wanda-sink-50-s0"


def add_model_to_params(text: str) -> str:
    """The README's recipe, as text edits of params.yaml (comments and anchors kept)."""
    text = re.sub(r"(?m)^(models:[^\n]*\n)", r"\1  my-ar: {dtype: float32, device: cpu, family: hf_causal}\n", text,
                  count=1)
    text = re.sub(r"(?m)^(collect:\n  models: \[)", r"\1my-ar, ", text, count=1)
    text = re.sub(r"(?m)^(  dense: \[)", r"\1my-ar, ", text, count=1)
    text = re.sub(r"(?m)^(  instances:\n)", r"\1    " + NEW_INSTANCE + ": {model: my-ar, method: wanda, "
                  r"weighting: sink, sparsity: 0.5, pattern: 'unstructured', seed: 0}\n", text, count=1)
    return text


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def _status(cwd: Path) -> dict:
    res = _dvc(cwd, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout or "{}")


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The tracked files of this checkout (its working-tree versions) in a fresh git repository."""
    dst = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=paths.ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = paths.ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def test_add_model_edit_is_what_the_readme_says(copy):
    text = add_model_to_params((copy / "params.yaml").read_text())
    from srclib import params
    from srclib.schema import load_yaml_text

    P = params.load_dict(load_yaml_text(text, "params.yaml"))
    assert P.models["my-ar"].family == "hf_causal" and "my-ar" in P.collect.models
    assert "my-ar" in P.evaluate.dense and P.prune.instances[NEW_INSTANCE].model == "my-ar"


def test_adding_a_model_changes_only_its_own_stages(copy):
    before = _status(copy)
    params_file = copy / "params.yaml"
    params_file.write_text(add_model_to_params(params_file.read_text()))
    try:
        after = _status(copy)
    finally:
        subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=copy, check=True)
    changed = sorted(s for s in set(before) | set(after) if before.get(s) != after.get(s))
    # the model's own stages, and variance: it reads exactly the runs collect.models names (and the
    # aggregating stages after it, plot and efficiency, only through its outputs)
    own = sorted(["collect@my-ar", f"prune@{NEW_INSTANCE}", f"evaluate@{NEW_INSTANCE}", "evaluate_dense@my-ar",
                  "variance"])
    assert changed == own, f"stages whose status the new model changed: {changed}"
    n_stages = len(before)
    assert n_stages > 50  # the whole default study was asked, not an empty pipeline
