"""params.yaml validation: every bad input gives one clear error naming the key."""

import copy

import pytest
import yaml

from srclib import params, paths
from srclib.params import ParamsError


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((paths.ROOT / "params.yaml").read_text())


def test_repo_params_load():
    p = params.load()
    assert p.train.seq_len > 0
    assert set(p.collect.models) <= set(p.models)
    assert all(i.model in p.models for i in p.prune.instances.values())
    assert isinstance(p.prune.instances, dict) and p.prune.instances


def mutate(raw, dotted, value, delete=False):
    d = copy.deepcopy(raw)
    node = d
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node[k]
    if delete:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return d


FIRST = "dlm-wanda-sink-50-s0"
BAD = [
    # (dotted key, value, substring the message must contain)
    ("train.seq_len", "128", "train.seq_len"),  # wrong type
    ("train.seq_len", 0, ">= 8"),  # out of range
    ("train.ar.lr", -1.0, "train.ar.lr"),
    ("train.arch.n_heads", 3, "divisible"),
    ("collect.remasking", "lowconf", "low_confidence"),
    ("collect.block_length", 48, "multiple"),
    ("collect.models", ["gpt-17"], "gpt-17"),
    ("collect.random_init_control", "yes", "true or false"),
    ("variance.rule", "median", "zscore"),
    ("variance.stability_threshold", 1.5, "<= 1"),
    (f"prune.instances.{FIRST}.sparsity", 1.0, "< 1"),
    (f"prune.instances.{FIRST}.sparsity", -0.1, ">= 0"),
    (f"prune.instances.{FIRST}.method", "obs", "magnitude"),
    (f"prune.instances.{FIRST}.weighting", "sinky", "stability"),
    (f"prune.instances.{FIRST}.pattern", "3:4", "2:4"),
    (f"prune.instances.{FIRST}.pattern", "2:4", "sparsity 0.5"),  # wrong: 2:4 needs 0.5; FIRST has 0.5
    ("prune.calibration.t_grid", [0.0, 0.5], "> 0"),
    ("prune.calibration.corpus", "/data/wiki.jsonl", "prune.calibration.corpus"),  # absolute
    ("prune.calibration.corpus", "../outside.jsonl", "prune.calibration.corpus"),  # leaves the repo
    ("prune.calibration.corpus", "data/raw/corpus/calibration.txt", "prune.calibration.corpus"),
    ("prune.instances.dlm-magnitude-uniform-50-s0.weighting", "sink", "must be 'uniform'"),
    ("prune.instances.tiny-ar", {"model": "tiny-ar", "method": "wanda", "weighting": "uniform",
                                 "sparsity": 0.5, "pattern": "unstructured", "seed": 0}, "named like a model"),
    ("evaluate.ppl.seq_len", 1, ">= 2"),
    ("prune.calibration.n_samples", 2.5, "integer"),
    ("prune.calibration.windows_per_batch", 0, ">= 1"),
    ("prune.calibration.chunk_size", 0, ">= 1"),
    ("evaluate.tasks.boolq", {"num_fewshot": 0, "cfg": 0.0, "mc_num": 4, "limit": 10}, "boolq"),
    ("evaluate.tasks.arc_easy.mc_num", 0, ">= 1"),
    ("models.tiny-dlm.dtype", "fp8", "float32"),
    ("models.tiny-dlm.device", "gpu0", "device"),
    ("prune.fidelity", "release", "prune.fidelity = 'release': must be one of ['released', 'corrected']"),
    ("prune.calibration.noise", "uniform", "prune.calibration.noise"),
    ("prune.calibration.noise", "stratified", "prune.options.noise_keep_ends"),
]


@pytest.mark.parametrize("dotted,value,needle", BAD)
def test_bad_values_name_key(raw, dotted, value, needle):
    bad = mutate(raw, dotted, value)
    if needle == "sparsity 0.5":  # 2:4 is valid with 0.5: use 0.3 to trigger the N:M check
        bad = mutate(bad, f"prune.instances.{FIRST}.sparsity", 0.3)
        needle = "sparsity 0.3"
    with pytest.raises(ParamsError) as err:
        params.load_dict(bad)
    assert needle in str(err.value), str(err.value)


def test_unregistered_model_key_is_named(raw):
    """params.py does not import the model registry; srclib.models.check_keys (run by the runner
    before any kernel starts) names the unregistered key."""
    from srclib.models import check_keys

    bad = params.load_dict(mutate(raw, "models.llama-99", {"dtype": "float32", "device": "cpu"}))
    with pytest.raises(ParamsError, match=r"models\.llama-99: unknown model; registered models: \[.*'tiny-dlm'"):
        check_keys(bad.models)
    check_keys(params.load_dict(raw).models)  # the repository's keys are all registered


def test_unknown_key_is_named(raw):
    bad = mutate(raw, "train.learning_rate", 0.1)
    with pytest.raises(ParamsError, match=r"train\.learning_rate: unknown key"):
        params.load_dict(bad)


def test_missing_key_is_named(raw):
    bad = mutate(raw, "train.batch_size", None, delete=True)
    with pytest.raises(ParamsError, match=r"train\.batch_size: missing key"):
        params.load_dict(bad)


def test_unknown_section(raw):
    bad = copy.deepcopy(raw)
    bad["trian"] = {}  # codespell:ignore trian
    with pytest.raises(ParamsError, match="trian"):  # codespell:ignore trian
        params.load_dict(bad)


def test_instance_model_must_be_declared(raw):
    bad = copy.deepcopy(raw)
    del bad["models"]["smollm2-135m"]
    bad["collect"]["models"] = ["tiny-dlm", "tiny-ar"]
    bad["evaluate"]["dense"] = ["tiny-dlm", "tiny-ar"]
    with pytest.raises(ParamsError, match=r"prune\.instances\..*\.model = 'smollm2-135m'"):
        params.load_dict(bad)


def test_nan_rejected(raw):
    with pytest.raises(ParamsError, match="finite"):
        params.load_dict(mutate(raw, "train.ar.lr", float("nan")))


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        params.load(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        params.load(f)


def test_as_dict_round_trip(raw):
    p = params.load_dict(raw)
    assert params.load_dict(params.as_dict(p)) == p


def test_paper_scale_params_validate():
    p = params.load(paths.ROOT / "params-gpu.yaml")
    assert "llada-8b-base" in p.collect.models
    assert {i.model for i in p.prune.instances.values()} == {"llada-8b-base", "dream-7b-base"}
    assert p.evaluate.tasks["mmlu"].mc_num == 1 and p.evaluate.tasks["arc_challenge"].cfg == 0.5


def test_model_entry_of_instances_and_keys(raw):
    P = params.load_dict(raw)
    inst = next(iter(P.prune.instances))
    assert P.model_entry(inst) is P.models[P.prune.instances[inst].model]
    assert P.model_entry("tiny-dlm") is P.models["tiny-dlm"]
    with pytest.raises(ParamsError, match="gpt-17"):
        P.model_entry("gpt-17")
