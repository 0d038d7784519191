"""Issue 25, evaluate items: a wrong checkpoint or changed data never gives a number.

* item 4: a pruned folder copied over another instance's, dense weights in a pruned folder, a
  pruned folder without its masks: refused naming the folder, the instance and the first tensor;
* item 5: NaN / Inf weights (the stage, the lm-eval model the CLI builds, perplexity) and
  non-finite scores: refused naming the checkpoint and the first non-finite tensor;
* item 6: a changed task data file under data/raw/tasks: refused against MANIFEST.json, hashed
  once per process, before the model loads;
* item 13: ``python -m srclib.evaluation --limit 0 / -1 / 2.5 / nan`` and a checkpoint folder
  without a tokenizer: one line naming the argument / folder, before lm-eval's task index.

Every model here is a test-size TinyLM built in-process; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lm_eval.__main__
import pytest
import torch
from lm_eval.api.instance import Instance

import srclib.data.manifest as manifest
import srclib.evaluation.__main__ as cli
from srclib import params, paths
from srclib.data.errors import DataError
from srclib.evaluation import common, lm, perplexity
from srclib.evaluation import tasks as T
from srclib.evaluation.common import CheckpointError
from srclib.files import sha256_file, write_json
from srclib.models import MODELS, load
from srclib.models.base import write_marker
from srclib.models.tiny import TinyLM, test_config
from srclib.params import EvaluateParams, ModelEntry, PplParams, TaskSettings
from srclib.stages import evaluate as stage

from prune_specs import make_spec  # tests/ is on sys.path

CPU = ModelEntry(dtype="float32", device="cpu")
PPL = PplParams(n_windows=2, mc_num=2, seq_len=12)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "."]
ARC = Path("ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow")  # under data/raw/tasks


# ---- helpers: a word tokenizer, tiny DLM folders, a repository root ---------------------------------
def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[BOS]", "[EOS]", "[PAD]", "[MASK]", "[UNK]", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]")


def _net(tok) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(test_config(vocab_size=len(tok), mask_token_id=3, max_position_embeddings=64)).eval()


def _dense(folder: Path) -> Path:
    tok = _tokenizer()
    _net(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_marker(folder, "tiny-dlm")
    return folder


def _pruned(root: Path, instance: str, sparsity: float = 0.5) -> Path:
    """pruned/<instance> as the prune stage writes it (run_prune, magnitude: no calibration data)."""
    from srclib.pruning.checkpoint import run_prune

    tok = _tokenizer()
    out = paths.pruned_dir(instance, root)
    run_prune(model=(_net(tok), tok, MODELS["tiny-dlm"]), spec=make_spec(method="magnitude", sparsity=sparsity),
              out_dir=out, metrics_path=paths.prune_metrics(instance, root), n_samples=1, seq_len=8, seed=0,
              instance=instance)
    return out


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    corpus = paths.corpus_file("validation", root)
    corpus.parent.mkdir(parents=True)
    corpus.write_text("".join(json.dumps({"text": " ".join(WORDS)}) + "\n" for _ in range(8)))
    return root


def _cfg(tasks=None, ppl=PPL) -> EvaluateParams:
    return EvaluateParams(batch_size=4, seed=0, dense=["tiny-dlm"], ppl=ppl, sampler=params.load().evaluate.sampler,
                          tasks=tasks or {})


def _nothing_written(root: Path, instance: str) -> None:
    assert not paths.eval_metrics(instance, root).exists()
    assert not paths.eval_units(instance, root).exists()


def _poison(folder: Path, value: float) -> str:
    """One weight of block 1 set to ``value`` in the folder's safetensors; the tensor's name."""
    from safetensors.torch import load_file, save_file

    name = "model.transformer.blocks.1.q_proj.weight"
    sd = load_file(str(folder / "model.safetensors"))
    sd[name][0, 0] = value
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return name


# ---- item 4: a folder is the instance its marker names, and its weights agree with its masks --------
def test_a_good_pruned_folder_evaluates(tmp_path):
    root = _root(tmp_path)
    folder = _pruned(root, "dlm-magnitude-uniform-50-s0")
    r = stage.evaluate_source(_cfg(), "dlm-magnitude-uniform-50-s0", folder, CPU, root=root)
    assert r.metrics["ppl"]["n_windows"] == 2 and paths.eval_metrics("dlm-magnitude-uniform-50-s0", root).is_file()


def test_a_folder_copied_over_another_instance_is_refused(tmp_path):
    """cp -r pruned/dlm-magnitude-uniform-0-s0 pruned/dlm-wanda-uniform-50-s0: before, scored as
    the wanda instance (exit 0); now refused before the model loads, naming both instances."""
    root = _root(tmp_path)
    src = _pruned(root, "dlm-magnitude-uniform-0-s0", sparsity=0.0)
    dst = paths.pruned_dir("dlm-wanda-uniform-50-s0", root)
    shutil.copytree(src, dst)
    with pytest.raises(CheckpointError) as ei:
        stage.evaluate_source(_cfg(), "dlm-wanda-uniform-50-s0", dst, CPU, root=root)
    msg = str(ei.value)
    for w in (str(dst), "'dlm-wanda-uniform-50-s0'", "'dlm-magnitude-uniform-0-s0'", "srclib_model.json",
              "dvc repro prune@dlm-wanda-uniform-50-s0"):
        assert w in msg, (w, msg)
    _nothing_written(root, "dlm-wanda-uniform-50-s0")


def test_dense_weights_copied_into_a_pruned_folder_are_refused(tmp_path):
    """Dense model.safetensors in a pruned folder: before, scored silently; now the first masked
    tensor holding non-zero pruned weights is named, in the stage and in the lm-eval model."""
    from srclib.pruning.checkpoint import MASKS_FILE, load_masks

    root = _root(tmp_path)
    folder = _pruned(root, "dlm-magnitude-uniform-50-s0")
    dense = _dense(tmp_path / "dense")
    shutil.copy(dense / "model.safetensors", folder / "model.safetensors")
    first = sorted(load_masks(folder / MASKS_FILE))[0]
    with pytest.raises(CheckpointError) as ei:
        stage.evaluate_source(_cfg(), "dlm-magnitude-uniform-50-s0", folder, CPU, root=root)
    msg = str(ei.value)
    for w in (str(folder), f"'{first}.weight'", "masks.safetensors", "not zero"):
        assert w in msg, (w, msg)
    _nothing_written(root, "dlm-magnitude-uniform-50-s0")
    with pytest.raises(CheckpointError, match=rf"pretrained=.*'{first}\.weight'.*masks\.safetensors"):
        lm.DiffusionLM(pretrained=str(folder), mc_num=2)


def test_a_pruned_folder_without_its_masks_is_refused(tmp_path):
    root = _root(tmp_path)
    folder = _pruned(root, "dlm-magnitude-uniform-50-s0")
    (folder / "masks.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"marker says pruned but masks\.safetensors is missing"):
        stage.evaluate_source(_cfg(), "dlm-magnitude-uniform-50-s0", folder, CPU, root=root)
    _nothing_written(root, "dlm-magnitude-uniform-50-s0")


def test_masks_file_name_is_the_prune_writers():
    from srclib.pruning import checkpoint

    assert common.MASKS_FILE == checkpoint.MASKS_FILE


def test_masks_of_another_shape_or_layer_are_refused(tmp_path):
    from srclib.pruning.checkpoint import save_masks

    folder = _dense(tmp_path / "m")
    model, _, _ = load(str(folder))
    save_masks({"model.transformer.blocks.0.q_proj": torch.zeros(3, 3, dtype=torch.bool)}, folder / "masks.safetensors")
    with pytest.raises(CheckpointError, match=r"mask 'model\.transformer\.blocks\.0\.q_proj' has shape \(3, 3\)"):
        common.check_masks(model, folder)
    save_masks({"model.transformer.blocks.9.q_proj": torch.zeros(3, 3, dtype=torch.bool)}, folder / "masks.safetensors")
    with pytest.raises(CheckpointError, match=r"names layer 'model\.transformer\.blocks\.9\.q_proj'"):
        common.check_masks(model, folder)


# ---- item 5: NaN / Inf weights and scores ----------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_by_the_stage(tmp_path, value):
    root = _root(tmp_path)
    folder = _dense(tmp_path / "ckpt")
    name = _poison(folder, value)
    with pytest.raises(CheckpointError) as ei:
        stage.evaluate_source(_cfg(), "tiny-dlm", folder, CPU, root=root)
    assert str(folder) in str(ei.value) and repr(name) in str(ei.value) and "1 NaN/Inf value(s)" in str(ei.value)
    _nothing_written(root, "tiny-dlm")


def test_non_finite_weights_are_refused_by_the_lm_eval_model(tmp_path):
    """What the lm-eval CLI builds (create_from_arg_string): before, NaN weights gave arc_easy acc
    0.5 with exit 0; now the model is refused naming the folder and the tensor."""
    folder = _dense(tmp_path / "ckpt")
    name = _poison(folder, float("nan"))
    with pytest.raises(CheckpointError, match=rf"pretrained='{folder}'.*'{name}'"):
        lm.DiffusionLM.create_from_arg_string(f"pretrained={folder},mc_num=2")


def test_the_cli_prints_one_line_for_a_non_finite_checkpoint(tmp_path, monkeypatch):
    """lm-eval's CLI builds the model after its task index; the wrapper turns the refusal into one
    line and exit status 1 (lm-eval stubbed here: it builds the model from --model_args, as it does)."""
    folder = _dense(tmp_path / "ckpt")
    name = _poison(folder, float("nan"))

    def fake_cli():  # what lm-eval does with --model_args, minus the task index
        args = sys.argv[sys.argv.index("--model_args") + 1]
        lm.DiffusionLM.create_from_arg_string(args)

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake_cli)
    with pytest.raises(SystemExit) as ei:
        cli.main(["--model", "srclib-dlm", "--model_args", f"pretrained={folder},mc_num=2", "--tasks", "arc_easy"])
    msg = ei.value.code
    assert isinstance(msg, str) and msg.startswith(f"{cli.PROG}: error: ") and len(msg.splitlines()) == 1
    assert str(folder) in msg and repr(name) in msg


@pytest.mark.slow
@pytest.mark.skipif(not (paths.tasks_dir() / "ai2_arc").is_dir(), reason="data/raw not built")
def test_the_real_cli_exits_1_on_a_nan_checkpoint(tmp_path):
    """The issue's case end to end (~25 s: lm-eval's task index): NaN in one weight of block 1,
    arc_easy offline; before: `arc_easy acc 0.5`, exit 0; now exit 1, one line, no results."""
    import os
    import subprocess

    folder = _dense(tmp_path / "ckpt")
    name = _poison(folder, float("nan"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(paths.ROOT)}
    res = subprocess.run([sys.executable, "-m", "srclib.evaluation", "--data_root", str(paths.tasks_dir()),
                          "--model", "srclib-dlm", "--model_args", f"pretrained={folder},mc_num=2",
                          "--tasks", "arc_easy", "--limit", "2", "--device", "cpu", "--batch_size", "4",
                          "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{cli.PROG}: error: ") and str(folder) in last and repr(name) in last, last
    assert "Traceback" not in res.stderr and "acc" not in res.stdout
    assert not list((tmp_path / "out").rglob("results_*.json"))


def test_non_finite_scores_are_refused_where_they_are_computed(tmp_path):
    """Weights that turn NaN after the load check (or logits that overflow) still give no number:
    loglikelihood and perplexity refuse, naming the checkpoint and the tensor. (The final norm is
    poisoned: on CPU, SDPA's kernel does not always carry a NaN of one q_proj weight into the
    logits, so only the load check sees that one.)"""
    folder = _dense(tmp_path / "ckpt")
    dlm = lm.DiffusionLM(pretrained=str(folder), mc_num=2, batch_size=4)
    ok = dlm.loglikelihood([Instance("loglikelihood", {}, ("the quick", " brown fox"), 0)])
    assert torch.isfinite(torch.tensor(ok[0][0]))
    with torch.no_grad():
        dlm.model.model.transformer.ln_f.weight[0] = float("nan")
    named = rf"{folder}: .*score of request\(s\) \[0\].*'model\.transformer\.ln_f\.weight'"
    with pytest.raises(CheckpointError, match=named):
        dlm.loglikelihood([Instance("loglikelihood", {}, ("the quick", " brown fox"), 0)])
    with pytest.raises(CheckpointError, match=r"pruned/x: held-out NLL of window\(s\) \[0, 1\].*ln_f\.weight"):
        perplexity.heldout_perplexity(dlm.model, dlm.tokenizer, dlm.adapter, [" ".join(WORDS)] * 8, PPL,
                                      batch_size=4, source="pruned/x")


def test_non_finite_exact_log_likelihoods_of_a_causal_model_are_refused():
    from srclib.evaluation import harness

    tok = _tokenizer()
    torch.manual_seed(0)
    net = TinyLM(test_config(causal=True, shift=False, vocab_size=len(tok), mask_token_id=None,
                             max_position_embeddings=64)).eval()
    ar = harness.make_lm(net, tok, MODELS["tiny-ar"], batch_size=2)
    req = [Instance("loglikelihood", {}, ("the quick", " brown fox"), 0)]
    assert torch.isfinite(torch.tensor(ar.loglikelihood(req)[0][0]))
    with torch.no_grad():
        net.model.transformer.ln_f.weight[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"exact log-likelihood of request\(s\) \[0\].*ln_f\.weight"):
        ar.loglikelihood(req)


def test_scores_of_finite_weights_that_overflow_say_so():
    with pytest.raises(CheckpointError, match="every weight is finite"):
        common.check_finite_scores([0.0, float("-inf")], torch.nn.Linear(2, 2), "m", "x")


# ---- item 6: task data against data/raw's manifest --------------------------------------------------------
needs_data = pytest.mark.skipif(not (paths.tasks_dir() / ARC).is_file(),
                                reason="data/raw not built (python -m srclib.data build)")


def _raw_with_arc(tmp_path: Path) -> Path:
    """A repository root whose data/raw holds ARC-Easy's validation arrow and a manifest listing it."""
    root = tmp_path / "repo"
    raw, tasks = root / paths.RAW, paths.tasks_dir(root)
    (tasks / ARC).parent.mkdir(parents=True)
    shutil.copy(paths.tasks_dir() / ARC, tasks / ARC)
    rel = (tasks / ARC).relative_to(raw).as_posix()
    write_json(root / paths.MANIFEST, {"files": {rel: {"bytes": (tasks / ARC).stat().st_size,
                                                      "sha256": sha256_file(tasks / ARC)}}})
    return root


@needs_data
def test_changed_task_data_is_refused_and_hashed_once(tmp_path, monkeypatch):
    root = _raw_with_arc(tmp_path)
    tasks = paths.tasks_dir(root)
    hashed = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    T.build_task_configs(["arc_easy"], tasks)
    T.build_task_configs(["arc_easy"], tasks)  # the same process: not hashed again
    assert hashed == [tasks / ARC]
    data = bytearray((tasks / ARC).read_bytes())
    data[-9] ^= 0xFF  # same size, edited in place
    (tasks / ARC).write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{tasks / ARC} does not match .*MANIFEST\.json.*sha256"):
        T.build_task_configs(["arc_easy"], tasks)


@needs_data
def test_the_stage_refuses_changed_task_data_before_loading_the_model(tmp_path, monkeypatch):
    import srclib.models

    root = _raw_with_arc(tmp_path)
    (paths.tasks_dir(root) / ARC).write_bytes(b"not arrow")
    monkeypatch.setattr(srclib.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = _cfg({"arc_easy": TaskSettings(num_fewshot=0, cfg=0.0, mc_num=1, limit=2)}, ppl=None)
    with pytest.raises(DataError, match=r"ARC-Easy.*does not match .*MANIFEST\.json: 9 bytes"):
        stage.evaluate_source(cfg, "t", "pruned/x", CPU, root=root)
    _nothing_written(root, "t")


# ---- item 13: the CLI wrapper's --limit and a folder without a tokenizer ------------------------------------
@pytest.fixture(scope="module")
def dlm_folder(tmp_path_factory):
    return _dense(tmp_path_factory.mktemp("cli") / "tiny-dlm")


def _refused(argv, calls) -> str:
    with pytest.raises(SystemExit) as ei:
        cli.main(argv)
    assert not calls, "lm-eval's CLI started"
    msg = ei.value.code
    assert isinstance(msg, str) and msg.startswith(f"{cli.PROG}: error: ") and len(msg.splitlines()) == 1, msg
    return msg


@pytest.mark.parametrize("limit", ["0", "-1", "2.5", "nan", "inf"])
def test_cli_refuses_a_limit_lm_eval_would_misread(limit, dlm_folder, no_lm_eval):
    msg = _refused(["--model", "srclib-dlm", "--model_args", f"pretrained={dlm_folder}", "--tasks", "arc_easy",
                    "--limit", limit], no_lm_eval)
    assert "--limit" in msg and "an integer >= 1" in msg and "fraction in (0, 1)" in msg, msg
    shown = {"0": "--limit 0:", "-1": "--limit -1:", "2.5": "--limit 2.5:"}.get(limit)
    assert shown is None or shown in msg, msg


@pytest.mark.parametrize("limit", ["2", "0.5"])
def test_cli_passes_a_good_limit_to_lm_eval(limit, dlm_folder, no_lm_eval):
    argv = ["--model", "srclib-dlm", "--model_args", f"pretrained={dlm_folder}", "--tasks", "arc_easy",
            "--limit", limit]
    cli.main(argv)
    assert no_lm_eval == [[sys.argv[0], *argv]]


def test_cli_names_a_folder_without_a_tokenizer_before_the_task_index(tmp_path, no_lm_eval):
    folder = tmp_path / "no-tok"
    _net(_tokenizer()).save_pretrained(folder)
    write_marker(folder, "tiny-dlm")
    msg = _refused(["--model", "srclib-dlm", "--model_args", f"pretrained={folder}", "--tasks", "arc_easy"],
                   no_lm_eval)
    assert f"pretrained='{folder}'" in msg and f"folder {folder} holds no tokenizer" in msg, msg
    (folder / "tokenizer.json").write_text("{not json")
    msg = _refused(["--model", "srclib-dlm", "--model_args", f"pretrained={folder}", "--tasks", "arc_easy"],
                   no_lm_eval)
    assert f"the tokenizer in {folder} does not load" in msg, msg
