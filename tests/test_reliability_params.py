"""Bad params refused early with a message naming the key or file (issue 25 items 1, 9, 10, 11, 12).

Each case was accepted, or refused late or unclearly, before the fix: model keys and instance names
follow one pattern (srclib.paths.NAME_PATTERN) and every path built from one stays inside its folder;
an unquoted ``2:4`` (YAML's base-60 integer 124) says to quote it; a params file that is no mapping
says what it is without quoting it; a tiny model's ``source``, a perplexity window above the model's
length, a missing CUDA device, a seed above 2**63 - 1 and an instance named unlike its values are
refused in params.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from srclib import params, paths
from srclib.params import ParamsError

REPO_TEXT = (paths.ROOT / "params.yaml").read_text()
INSTANCE = "dlm-wanda-sink-50-s0"


@pytest.fixture()
def raw():
    return yaml.safe_load(REPO_TEXT)


def with_model(raw: dict, key: str, entry: dict | None = None) -> dict:
    d = copy.deepcopy(raw)
    d["models"][key] = entry or {"dtype": "float32", "device": "cpu"}
    d["collect"]["models"].append(key)
    return d


# ---------------------------------------------------------------------------------------------
# item 1: one name pattern for model keys and instance names; paths stay inside their folders
BAD_NAMES = ["../evil", "my model", "modèle", "a/b", "a.b", "-x", "_x", "x\n", " x", ".."]


@pytest.mark.parametrize("key", BAD_NAMES)
def test_model_key_outside_the_name_pattern_is_refused(raw, key):
    with pytest.raises(ParamsError) as err:
        params.load_dict(with_model(raw, key))
    msg = str(err.value)
    assert msg.startswith(f"models: key {key!r} is not a valid name: must match {paths.NAME_PATTERN}"), msg
    assert "no '.', '/' or spaces" in msg


@pytest.mark.parametrize("name", BAD_NAMES)
def test_instance_name_outside_the_name_pattern_is_refused(raw, name):
    raw["prune"]["instances"][name] = dict(raw["prune"]["instances"][INSTANCE])
    with pytest.raises(ParamsError, match=re.escape(f"prune.instances: key {name!r} is not a valid name: must match "
                                                    f"{paths.NAME_PATTERN}")):
        params.load_dict(raw)


def test_instance_name_with_a_dot_is_refused_as_dvc_nesting(raw):
    raw["prune"]["instances"]["dlm-wanda-sink-0.5-s0"] = dict(raw["prune"]["instances"][INSTANCE])
    with pytest.raises(ParamsError, match=r"key 'dlm-wanda-sink-0\.5-s0' is not a valid name.*no '\.'.*DVC stage"):
        params.load_dict(raw)


@pytest.mark.parametrize("params_file", ["params.yaml", "params-gpu.yaml"])
def test_repository_names_match_the_pattern(params_file):
    P = params.load(paths.ROOT / params_file)
    for name in list(P.models) + list(P.prune.instances):
        assert re.fullmatch(paths.NAME_PATTERN, name), name


def test_model_key_ending_like_a_random_init_twin_is_refused(raw):
    with pytest.raises(ParamsError, match=r"models: key 'tiny-dlm-randinit' may not end with '-randinit'.*"
                                          r"random-init twin of model 'tiny-dlm'"):
        params.load_dict(with_model(raw, "tiny-dlm-randinit"))


KEY_PATHS = [paths.model_dir, paths.train_metrics, paths.train_timing, paths.trajectory_dir, paths.trajectory_file,
             paths.collect_metrics, paths.sink_stats, paths.pruned_dir, paths.prune_timing, paths.prune_metrics,
             paths.eval_metrics, paths.eval_units, paths.plot_series, paths.fork_dir, paths.fork_html]


@pytest.mark.parametrize("fn", KEY_PATHS, ids=[f.__name__ for f in KEY_PATHS])
@pytest.mark.parametrize("name", ["../evil", "a/../../b", "/etc", "..", ".", "", "a\\b", "x\0"])
def test_paths_built_from_a_name_stay_inside_their_folder(tmp_path, fn, name):
    """Even with params bypassed, no name leads a path out of its folder (models/../evil is not in models/)."""
    with pytest.raises(ValueError, match=re.escape(repr(name)) + r": not one plain file name .* would leave or alias"):
        fn(name, tmp_path)


@pytest.mark.parametrize("fn", KEY_PATHS, ids=[f.__name__ for f in KEY_PATHS])
def test_paths_of_plain_names_are_unchanged(tmp_path, fn):
    p = fn("tiny-dlm", tmp_path)
    assert tmp_path in p.parents and p.name.startswith("tiny-dlm")
    twin = tmp_path / "trajectories/tiny-dlm/tiny-dlm-randinit.safetensors"
    assert paths.trajectory_file("tiny-dlm-randinit", tmp_path) == twin
    assert paths.model_dir("llada-1_5", tmp_path) == tmp_path / "models/llada-1_5"  # a registry key: a plain name


def test_every_registry_key_is_a_name_params_can_use():
    """A built-in model key must pass the name rule params applies (it becomes models/<key>, a DVC
    stage name and a file name): llada-1.5 did not ('.' is DVC nesting)."""
    from srclib.models import MODELS

    bad = [k for k in MODELS if not re.fullmatch(paths.NAME_PATTERN, k)]
    assert bad == [], f"registry keys outside paths.NAME_PATTERN: {bad}"


@pytest.mark.parametrize("stage,name", [("../x", "plot"), ("plot", "../x"), ("plot", "a/b")])
def test_report_paths_stay_inside_their_folder(tmp_path, stage, name):
    for fn in (paths.report_html, paths.failed_notebook):
        with pytest.raises(ValueError, match="not one plain file name"):
            fn(stage, name, tmp_path)


# ---------------------------------------------------------------------------------------------
# item 9: an unquoted N:M pattern is YAML's base-60 integer
@pytest.mark.parametrize("text,value,intended", [("2:4", 124, "2:4"), ("4:8", 248, "4:8")])
def test_unquoted_nm_pattern_says_to_quote_it(tmp_path, text, value, intended):
    line = next(x for x in REPO_TEXT.splitlines(keepends=True) if x.startswith(f"    {INSTANCE}: "))
    assert line.count("pattern: 'unstructured'") == 1
    f = tmp_path / "params.yaml"
    f.write_text(REPO_TEXT.replace(line, line.replace("pattern: 'unstructured'", f"pattern: {text}")))
    with pytest.raises(ParamsError) as err:
        params.load(f)
    msg = str(err.value)
    assert msg.startswith(f"prune.instances.{INSTANCE}.pattern = {value}: must be a string; YAML reads an "
                          f"unquoted {text} as the base-60 integer {value}"), msg
    assert f'N:M patterns must be quoted, e.g. pattern: "{intended}"' in msg


def test_an_integer_pattern_below_60_still_says_to_quote(raw):
    raw["prune"]["instances"][INSTANCE]["pattern"] = 7
    with pytest.raises(ParamsError, match=r"pattern = 7: must be a string; N:M patterns must be quoted, e.g. "
                                          r"pattern: \"2:4\""):
        params.load_dict(raw)


def test_an_integer_where_no_nm_string_is_expected_is_a_plain_type_error(raw):
    raw["prune"]["instances"][INSTANCE]["method"] = 124
    with pytest.raises(ParamsError, match=r"method = 124: must be a string$"):
        params.load_dict(raw)


# ---------------------------------------------------------------------------------------------
# item 10: a params file that is no mapping: named, said what it is, never quoted
SECRET = "root:x:0:0:root:/root:/bin/bash"
FILES = [
    ("empty", "", "is empty, not a YAML mapping of sections"),
    ("comments only", "# nothing here\n", "holds only comments or null, not a YAML mapping"),
    ("a YAML list", "- data\n- models\n", "holds a YAML list of 2 item(s), not a YAML mapping of sections"),
    ("a passwd file", "\n".join([SECRET] + [f"user{i}:x:{i}:{i}::/var/u:/bin/sh" for i in range(30)]) + "\n",
     "is plain text (", ),
    ("3 MB of text", (SECRET + " lorem ipsum dolor sit amet\n") * 60_000, "is not a params file: 3.5 MB"),
    ("one number", "42\n", "holds a single YAML int value, not a YAML mapping"),
]


@pytest.mark.parametrize("case", FILES, ids=[c[0] for c in FILES])
def test_a_file_that_is_no_params_mapping_is_named_and_described(tmp_path, case):
    _, text, says = case
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError) as err:
        params.load(f)
    msg = str(err.value)
    assert msg.startswith(f"{f} ") and says in msg, msg
    assert "root:x" not in msg and len(msg) - len(str(f)) < 250, msg
    assert "['data', 'models', 'train'" in msg  # what a params file holds instead


def test_etc_passwd_is_refused_without_its_content():
    if not paths.Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd here")
    with pytest.raises(ParamsError) as err:
        params.load("/etc/passwd")
    msg = str(err.value)
    assert msg.startswith("/etc/passwd is plain text (") and "root" not in msg and len(msg) < 300, msg


def test_a_long_value_is_cut_in_the_message(raw):
    raw["train"] = "x" * 100_000
    with pytest.raises(ParamsError) as err:
        params.load_dict(raw)
    msg = str(err.value)
    assert msg.startswith("train: must be a mapping, got a text of 100000 characters") and len(msg) < 300, msg


def test_top_level_keys_of_mixed_types_are_named(raw):
    raw[1], raw["zz"] = "x", "y"  # sorting the unknown keys raised TypeError ('<' between str and int)
    with pytest.raises(ParamsError, match=r"^1: unknown key; allowed keys"):
        params.load_dict(raw)


# ---------------------------------------------------------------------------------------------
# item 11: models.<key>.source of a tiny-family model is refused (it is never read)
TINY = {"dtype": "float32", "device": "cpu", "family": "tiny", "options": {"causal": True, "shift": False}}


def test_tiny_family_source_is_refused(raw):
    with pytest.raises(ParamsError, match=r"^models\.my-tiny\.source = 'ckpt/mine': the tiny family loads a "
                                          r"srclib-built checkpoint from models/my-tiny only.*remove "
                                          r"models\.my-tiny\.source"):
        params.load_dict(with_model(raw, "my-tiny", {**TINY, "source": "ckpt/mine"}))


@pytest.mark.parametrize("source", [None, "models/my-tiny"])
def test_tiny_family_without_source_or_with_its_own_folder_is_valid(raw, source):
    entry = dict(TINY) if source is None else {**TINY, "source": source}
    P = params.load_dict(with_model(raw, "my-tiny", entry))
    assert P.models["my-tiny"].family == "tiny"


# ---------------------------------------------------------------------------------------------
# item 12: perplexity length, device, seeds, instance names
def test_ppl_seq_len_above_the_tiny_models_max_len_is_refused(raw):
    raw["evaluate"]["ppl"]["seq_len"] = raw["train"]["max_len"] + 1
    with pytest.raises(ParamsError, match=r"^evaluate\.ppl\.seq_len = 513: above the maximum length 512 of model "
                                          r"'tiny-dlm' \(train\.max_len\), which evaluate\.dense\[0\] evaluates"):
        params.load_dict(raw)
    raw["evaluate"]["ppl"]["seq_len"] = raw["train"]["max_len"]
    params.load_dict(raw)


def test_ppl_seq_len_checked_for_a_tiny_model_evaluated_only_through_its_instances(raw):
    raw["evaluate"]["dense"] = ["smollm2-135m"]
    raw["evaluate"]["ppl"]["seq_len"] = 1024
    with pytest.raises(ParamsError, match=r"model 'tiny-dlm' \(train\.max_len\), which prune\.instances\.\S+\.model"):
        params.load_dict(raw)


@pytest.fixture()
def no_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    return torch


@pytest.mark.parametrize("call", ["eval_source", "collect_model", "model_entry", "check_device"])
def test_cuda_device_without_cuda_is_refused_naming_the_key(raw, no_cuda, call):
    raw["models"]["tiny-dlm"]["device"] = "cuda"
    P = params.load_dict(raw)  # reading params checks no device (params-gpu.yaml is read on CPUs too)
    name = "tiny-dlm" if call == "collect_model" else INSTANCE
    with pytest.raises(ParamsError, match=r"^models\.tiny-dlm\.device = 'cuda': this machine has no CUDA device "
                                          r"\(torch\.cuda\.is_available\(\) is false\); "
                                          r"set models\.tiny-dlm\.device: cpu"):
        getattr(P, call)(name)
    assert P.eval_source("tiny-ar") == "tiny-ar"  # a CPU model still passes


def test_cuda_index_above_the_device_count_is_refused(raw, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    raw["models"]["tiny-dlm"]["device"] = "cuda:1"
    with pytest.raises(ParamsError, match=r"models\.tiny-dlm\.device = 'cuda:1': this machine has 1 CUDA device\(s\) "
                                          r"\(cuda:0 to cuda:0\)"):
        params.load_dict(raw).model_entry("tiny-dlm")
    raw["models"]["tiny-dlm"]["device"] = "cuda:0"
    assert params.load_dict(raw).model_entry("tiny-dlm").device == "cuda:0"


def test_paper_scale_params_load_without_cuda_and_refuse_its_models_there(no_cuda):
    P = params.load(paths.ROOT / "params-gpu.yaml")
    with pytest.raises(ParamsError, match=r"models\.llada-8b-base\.device = 'cuda': this machine has no CUDA"):
        P.collect_model("llada-8b-base")


def test_reading_params_and_cpu_devices_stays_torch_free():
    code = ("import sys, srclib.params as p; P = p.load(); P.eval_source('dlm-wanda-sink-50-s0'); "
            "P.collect_model('tiny-dlm'); P.model_entry('tiny-ar'); assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=paths.ROOT)


SEEDS = ["data.seed", "train.seed", "collect.seed", "evaluate.seed", f"prune.instances.{INSTANCE}.seed"]


def _set(raw: dict, dotted: str, value) -> dict:
    node = raw
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("dotted", SEEDS)
def test_seed_above_63_bits_is_refused(raw, dotted):
    with pytest.raises(ParamsError, match=re.escape(f"{dotted} = {2**63}: must be <= {2**63 - 1}")):
        params.load_dict(_set(raw, dotted, 2**63))


def test_plot_seeds_are_63_bit_and_not_negative(raw):
    for value, says in [(-1, "plot.seeds[1] = -1: must be >= 0"), (2**64, f"plot.seeds[1] = {2**64}: must be <= ")]:
        raw["plot"]["seeds"] = [0, value]
        with pytest.raises(ParamsError, match=re.escape(says)):
            params.load_dict(raw)


def test_largest_seed_is_valid(raw):
    # the instance's name ends in -s0: give the largest seed to a name without one
    raw["prune"]["instances"]["x"] = {**raw["prune"]["instances"][INSTANCE], "seed": 2**63 - 1}
    assert params.load_dict(_set(raw, "collect.seed", 2**63 - 1)).collect.seed == 2**63 - 1


MISMATCH = [
    # (instance, changes, what the name says, what the instance has)
    ("dlm-wanda-uniform-50-s0", {"sparsity": 0.7}, "sparsity 50% ('-50-')", "sparsity = 0.7"),
    ("dlm-wanda-uniform-50-s0", {"weighting": "sink"}, "weighting 'uniform'", "weighting = 'sink'"),
    ("dlm-wanda-uniform-50-s0", {"method": "sparsegpt"}, "method 'wanda'", "method = 'sparsegpt'"),
    ("dlm-wanda-uniform-50-s0", {"seed": 3}, "seed 0 ('-s0')", "seed = 3"),
    ("dlm-wanda-uniform-50-2of4-s0", {"pattern": "unstructured"}, "pattern '2:4' ('2of4')", "pattern = 'unstructured'"),
    ("dlm-wanda-uniform-30-struct-s0", {"structure": "adaptive"}, "structure 'uniform' ('-struct-')",
     "structure = 'adaptive'"),
]


@pytest.mark.parametrize("name,changes,says,has", MISMATCH, ids=[f"{c[0]}:{next(iter(c[1]))}" for c in MISMATCH])
def test_instance_name_disagreeing_with_its_values_is_refused(raw, name, changes, says, has):
    instances = raw["prune"]["instances"]
    if name not in instances:  # an instance of its own, from an unstructured 50% one
        instances[name] = dict(instances["dlm-wanda-uniform-50-s0"])
    instances[name].update(changes)
    with pytest.raises(ParamsError) as err:
        params.load_dict(raw)
    assert str(err.value) == (f"prune.instances.{name}: the name says {says} but the instance has {has}; rename "
                              f"the instance or fix its values (reports and file names show the name, the run "
                              f"uses the values)")


def test_structure_named_for_an_unstructured_instance_is_refused(raw):
    raw["prune"]["instances"]["dlm-wanda-sink-50-adapt-s0"] = dict(raw["prune"]["instances"][INSTANCE])
    with pytest.raises(ParamsError, match=r"^prune\.instances\.dlm-wanda-sink-50-adapt-s0: the name says structure "
                                          r"'adaptive' \('-adapt-'\) but the instance has no structure;"):
        params.load_dict(raw)


@pytest.mark.parametrize("name", ["x", "u50", "run-7", "my-ablation-2", "qwen-7-wanda-sink-50-s0"])
def test_names_without_the_convention_say_nothing(raw, name):
    raw["prune"]["instances"][name] = dict(raw["prune"]["instances"][INSTANCE])
    params.load_dict(raw)


def test_a_missing_tiny_checkpoint_hint_fits_the_model(tmp_path):
    """train builds tiny-ar and tiny-dlm only: another tiny model's missing folder does not send the
    user to `dvc repro train`."""
    from srclib.models.tiny_adapter import TinyAdapter

    with pytest.raises(FileNotFoundError, match="run `dvc repro train`"):
        TinyAdapter(key="tiny-dlm", causal=False, shift=True).load(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"builds only \['tiny-ar', 'tiny-dlm'\]") as exc:
        TinyAdapter(key="my-tiny", causal=False, shift=True).load(tmp_path / "none")
    assert "dvc repro train" not in str(exc.value)
