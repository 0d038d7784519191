"""The README's "Add a model" recipe, end to end, in a temporary copy of the repository (issue 16).

A from-config causal LM (random weights, SmolLM2's tokenizer from data/raw) is saved in
models/my-ar, versioned with `dvc add`, defined in params.yaml by one entry, then collected, pruned,
evaluated, timed and plotted by `dvc repro -s <stage>` -- the stage commands DVC would run -- and
it appears, labelled random-init, in the tables and on the index page. The copy's params.yaml is
reduced to this one model so that no other model has to be trained first (CI has no study outputs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from srclib import paths

pytestmark = pytest.mark.slow

KEY = "my-ar"
INSTANCE = "myar-wanda-sink-50-s0"
DATA = ("MANIFEST.json", "prompts.jsonl", "corpus", "tasks")  # what the stages read from data/raw


def _run(cwd: Path, *cmd: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    env.pop("SRCLIB_ROOT", None)
    res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    raw = paths.ROOT / "data" / "raw"
    if not (raw / "prompts.jsonl").is_file():
        pytest.skip("data/raw is not built (make data)")
    dst = tmp_path_factory.mktemp("study")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=paths.ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = paths.ROOT / rel
        # the study's metrics stay behind (this copy studies one model), except the train stage's: the
        # plot stage depends on that folder, and the new model is not trained here
        if src.is_file() and not rel.startswith("dvc.lock") and (not rel.startswith("metrics/")
                                                                  or rel.startswith("metrics/train/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for name in DATA:
        src, out = raw / name, dst / "data" / "raw" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, out) if src.is_dir() else shutil.copy2(src, out)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def _save_model(folder: Path) -> None:
    """Step 1 of the recipe: a checkpoint folder (here: built from a config, random weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from srclib.models.base import write_marker

    tok = AutoTokenizer.from_pretrained(paths.ROOT / "data" / "raw" / "gguf",
                                        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    write_marker(folder, KEY, weights="random")


def _one_model_params(text: str) -> str:
    """Step 2-3 of the recipe on a study reduced to the new model (nothing else to train)."""
    data = yaml.safe_load(text)
    data["models"] = {KEY: {"dtype": "float32", "device": "cpu", "family": "hf_causal"}}
    data["collect"].update(models=[KEY], n_prompts=2, gen_length=8, steps=8, block_length=8)
    data["prune"]["instances"] = {INSTANCE: {"model": KEY, "method": "wanda", "weighting": "sink", "sparsity": 0.5,
                                             "pattern": "unstructured", "seed": 0}}
    data["prune"]["calibration"]["n_samples"] = 4
    data["evaluate"]["dense"] = [KEY]
    data["evaluate"]["ppl"].update(n_windows=4, mc_num=1)
    for task in data["evaluate"]["tasks"].values():
        task.update(limit=8, mc_num=1)
    data["efficiency"].update(instances=[INSTANCE], token_shapes=[[1, 32]], model_token_shapes={}, repeats=2,
                              warmup=0)
    return yaml.safe_dump(data, sort_keys=False)


def test_add_a_model_by_the_readme_recipe(study):
    folder = study / "models" / KEY
    _save_model(folder)
    _run(study, sys.executable, "-m", "dvc", "add", f"models/{KEY}")  # versioned: models/ is not git-ignored
    assert (study / "models" / f"{KEY}.dvc").is_file()
    assert subprocess.run(["git", "check-ignore", "-q", f"models/{KEY}.dvc"], cwd=study).returncode == 1

    (study / "params.yaml").write_text(_one_model_params((study / "params.yaml").read_text()))
    _run(study, sys.executable, "-m", "srclib.deps", "--sync-dvc")  # efficiency deps follow its instances
    for stage in (f"collect@{KEY}", f"prune@{INSTANCE}", f"evaluate@{INSTANCE}", f"evaluate_dense@{KEY}",
                  "variance", "efficiency", "plot"):
        _run(study, sys.executable, "-m", "dvc", "repro", "-s", stage)

    collect = json.loads((study / "metrics" / "collect" / f"{KEY}.json").read_text())
    assert collect["runs"][KEY]["random_init"] is True  # from the marker, not the run name
    prune = json.loads((study / "metrics" / "prune" / f"{INSTANCE}.json").read_text())
    assert prune["provenance"]["input_checkpoint"]["sha256"]
    marker = json.loads((study / "pruned" / INSTANCE / "srclib_model.json").read_text())
    assert marker["adapter"]["family"] == "hf_causal" and marker["weights"] == "random"
    for name in (INSTANCE, KEY):
        assert (study / "metrics" / "evaluate" / f"{name}.json").is_file()

    tables = study / "reports" / "tables"
    variance = (tables / "sink_variance.md").read_text()
    row = next(line for line in variance.splitlines() if f"| {KEY} " in line)
    assert "| random |" in row and "| AR |" in row  # kind and init from the checkpoint's marker
    assert KEY in (tables / "dense_models.md").read_text()
    assert (tables / f"main_{KEY}.md").is_file()
    index = (study / "reports" / "index.html").read_text()
    assert KEY in index and (study / "reports" / "html" / "collect" / f"{KEY}.html").is_file()
