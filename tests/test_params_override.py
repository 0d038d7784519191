"""params-gpu.yaml as an override of params.yaml (issue 24 item 3): srclib.params merges a file whose
first key is ``base:`` on that base -- sections merge key by key; lists and mappings of named entries
(models, prune.instances, evaluate.tasks, efficiency.model_token_shapes) are replaced whole -- with the
same validation and errors naming the file and line; ``python -m srclib.params merge`` writes the
complete file that ``dvc repro`` reads as params.yaml.

tests/data/params_gpu_merged.json is ``dataclasses.asdict(params.load("params-gpu.yaml"))`` as it was
before the override (commit 626b82c, the full 153-line file): the merge must give those settings.
A deliberate change of a setting params-gpu.yaml inherits from params.yaml changes it too: then
rewrite the JSON from the new load (``json.dumps(dataclasses.asdict(P), indent=1)``) in the same commit.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from srclib import deps, paths, params, schema
from srclib.params import ParamsError

GPU = paths.ROOT / "params-gpu.yaml"
BASE = paths.ROOT / "params.yaml"
KNOWN = Path(__file__).parent / "data" / "params_gpu_merged.json"


def _plain(P: params.Params) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(P)))


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_leaves(v, key) if isinstance(v, dict) and v else {key: v})
    return out


# ---- the paper-scale study is unchanged ----------------------------------------------------
def test_params_gpu_merges_to_the_known_answer():
    got, want = _plain(params.load(GPU)), json.loads(KNOWN.read_text())
    a, b = _leaves(got), _leaves(want)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    assert differ == [], f"params-gpu.yaml merged on params.yaml differs from {KNOWN.name} at {differ[:10]}"
    # the order of the named collections is the DVC stages' order
    for section, key in [("models", None), ("prune", "instances"), ("evaluate", "tasks"), ("collect", "models")]:
        g, w = got[section], want[section]
        if key:
            g, w = g[key], w[key]
        assert list(g) == list(w), (section, key)


def test_params_gpu_is_an_override_holding_only_what_differs():
    raw, base = yaml.safe_load(GPU.read_text()), yaml.safe_load(BASE.read_text())
    assert next(iter(raw)) == params.BASE_KEY and raw[params.BASE_KEY] == "params.yaml"

    def same(cls, over, under, where):  # the keys of over that repeat under word for word
        hints = {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(cls)}
        out = []
        for k, v in over.items():
            sub = f"{where}.{k}" if where else k
            tp = schema._section_type(typing.get_type_hints(cls)[hints[k]])
            if tp is not None and isinstance(v, dict):
                out += same(tp, v, under[k], sub)
            elif v == under.get(k):
                out.append(sub)
        return out

    settings = {k: v for k, v in raw.items() if k != params.BASE_KEY}
    assert same(params.Params, settings, base, "") == []
    # 22 today (models, prune.instances, evaluate.tasks, efficiency.model_token_shapes whole, and 18
    # single settings) of the 89 that params.yaml holds, counted the same way
    assert len(_leaf_settings(params.Params, settings)) <= 30 < len(_leaf_settings(params.Params, base))


def _leaf_settings(cls, over: dict, where: str = "") -> list[str]:
    """The settings an override gives, as merge sees them (a replaced collection counts once)."""
    hints = typing.get_type_hints(cls)
    names = {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(cls)}
    out = []
    for k, v in over.items():
        sub = f"{where}.{k}" if where else k
        tp = schema._section_type(hints[names[k]])
        out += _leaf_settings(tp, v, sub) if tp is not None and isinstance(v, dict) else [sub]
    return out


def test_params_yaml_is_no_override_and_loads_as_its_plain_mapping():
    """params.yaml's loading is what it was: its plain mapping validated, no other file read."""
    text = BASE.read_text()
    assert params.BASE_KEY not in yaml.safe_load(text)
    assert params.load(BASE) == params.load_dict(yaml.safe_load(text)) == params.load()


def test_a_plain_file_keeps_its_error_messages(tmp_path):
    """No file or line is added to a plain params file's validation errors (as before overrides)."""
    raw = yaml.safe_load(BASE.read_text())
    raw["collect"]["n_promptz"] = raw["collect"].pop("n_prompts")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"^collect\.n_promptz: unknown key; allowed keys: \["):
        params.load(tmp_path / "p.yaml")


# ---- the merge rule --------------------------------------------------------------------------
def test_merge_rule_known_answer():
    base = yaml.safe_load(BASE.read_text())
    before = json.dumps(base)
    over = {
        "prune": {"calibration": {"seq_len": 64}, "instances": {"x-wanda-uniform-50-s0": {"model": "tiny-dlm"}}},
        "collect": {"models": ["tiny-dlm"]},
        "models": {"tiny-dlm": {"dtype": "float32", "device": "cpu"}},
        "evaluate": {"tasks": {"piqa": {"num_fewshot": 1}}},
        "variance": {"alpha": 9.0},
        "efficiency": {"model_token_shapes": {}},
        "newsection": {"a": 1},
    }
    m = schema.merge(params.Params, base, over)
    assert json.dumps(base) == before  # inputs untouched
    assert list(m) == list(base) + ["newsection"]  # base's order; a new key last (build refuses it)
    cal = m["prune"]["calibration"]
    assert cal["seq_len"] == 64 and cal["t_grid"] == base["prune"]["calibration"]["t_grid"]  # a section merges
    assert m["prune"]["instances"] == over["prune"]["instances"]  # named entries: replaced whole
    assert m["prune"]["fidelity"] == base["prune"]["fidelity"]
    assert m["collect"]["models"] == ["tiny-dlm"] and m["collect"]["seed"] == base["collect"]["seed"]
    assert m["models"] == over["models"] and m["evaluate"]["tasks"] == over["evaluate"]["tasks"]
    assert m["efficiency"]["model_token_shapes"] == {}
    # YAML anchors do not cross files: the base's prune.sink (an alias of variance) keeps its values
    assert m["variance"]["alpha"] == 9.0 and m["prune"]["sink"]["alpha"] == base["variance"]["alpha"]
    assert schema.merge(params.Params, base, {}) == base


def test_merge_of_a_non_mapping_section_replaces_it_for_build_to_refuse(tmp_path):
    _override(tmp_path, "prune: 3\n")
    with pytest.raises(ParamsError, match=r"^.*o\.yaml, line 2: prune: must be a mapping, got int 3$"):
        params.load(tmp_path / "o.yaml")


# ---- errors name the file and the line -------------------------------------------------------
def _override(tmp_path: Path, body: str, base_text: str | None = None, name: str = "o.yaml") -> Path:
    (tmp_path / "base.yaml").write_text(base_text if base_text is not None else BASE.read_text())
    f = tmp_path / name
    f.write_text("base: base.yaml\n" + body)
    return f


@pytest.mark.parametrize("body, line, message", [
    ("prune:\n  instancez: {}\n", 3, r"prune\.instancez: unknown key; allowed keys: \['calibration',"),
    ("collect:\n  n_prompts: 0\n", 3, r"collect\.n_prompts = 0: must be >= 1"),
    ("collect:\n  models: [tiny-dlm, nope]\n", 3, r"collect\.models\[1\] = 'nope': not declared under models:"),
    ("evaluate:\n  tasks:\n    piqa: {num_fewshot: 0, cfg: 0.0, mc_num: 2}\n", 4,
     r"evaluate\.tasks\.piqa\.limit: missing key"),
    ("plot: {seeds: [0]}\nbogus: 1\n", 3, r"bogus: unknown key; allowed keys: \['collect',"),
])
def test_an_error_in_the_override_names_it_and_the_line(tmp_path, body, line, message):
    f = _override(tmp_path, body)
    with pytest.raises(ParamsError, match=rf"^{re.escape(paths.rel(f))}, line {line}: {message}"):
        params.load(f)


def test_a_duplicate_key_in_the_override_names_it_and_both_places(tmp_path):
    f = _override(tmp_path, "collect: {n_prompts: 3, n_prompts: 4}\n")
    with pytest.raises(ParamsError, match=rf"^{re.escape(paths.rel(f))}: duplicate key collect\.n_prompts "
                                          r"\(line 2, columns 11 and 25\)"):
        params.load(f)


def test_an_error_made_by_the_merge_names_the_override_and_the_base_line(tmp_path):
    f = _override(tmp_path, "train:\n  max_len: 100\n")
    with pytest.raises(ParamsError, match=rf"^{re.escape(paths.rel(f))} \(merged on .*base\.yaml; train\.seq_len is "
                                          r"at line \d+ of .*base\.yaml\): train\.seq_len = 128: must be <= "
                                          r"train\.max_len \(100\)"):
        params.load(f)


def _base_with(old: str, new: str) -> str:
    text = BASE.read_text()
    assert old in text
    return text.replace(old, new, 1)


def test_errors_in_the_base_name_the_base(tmp_path):
    dup = _base_with("  alpha: 5.0", "  alpha: 5.0\n  alpha: 6.0")
    f = _override(tmp_path, "", dup)
    base = re.escape(paths.rel(tmp_path / "base.yaml"))
    of = rf"{base} \(the base of {re.escape(paths.rel(f))}\)"
    with pytest.raises(ParamsError, match=rf"^{of}: duplicate key variance\.alpha \(lines \d+ and \d+\)"):
        params.load(f)
    unknown = _base_with("  n_prompts: 32", "  n_promptz: 32")
    line = next(i for i, s in enumerate(unknown.splitlines(), 1) if "n_promptz" in s)
    f = _override(tmp_path, "", unknown)
    with pytest.raises(ParamsError, match=rf"^{of}, line {line}: collect\.n_promptz: unknown key; allowed keys"):
        params.load(f)
    f = _override(tmp_path, "", "- a list\n")
    with pytest.raises(ParamsError, match=rf"^{of} holds a YAML list of 1 item\(s\)"):
        params.load(f)


@pytest.mark.parametrize("text, message", [
    ("collect: {n_prompts: 3}\nbase: base.yaml\n", r"line 2: base: must be the first key of an override"),
    ("base: nothere.yaml\n", r"line 1: base = 'nothere.yaml': no such file .*nothere\.yaml \(relative to the folder"),
    ("base: o.yaml\n", r"line 1: base = 'o.yaml': names the override itself"),
    ("base: /etc/params.yaml\n", r"line 1: base = '/etc/params.yaml': must name a params file \(\.yaml\) by a "
                                 r"path relative"),
    ("base: [params.yaml]\n", r"line 1: base = \['params.yaml'\]: must name a params file"),
])
def test_the_base_key_is_checked(tmp_path, text, message):
    (tmp_path / "base.yaml").write_text(BASE.read_text())
    f = tmp_path / "o.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError, match=rf"^{re.escape(paths.rel(f))}, {message}"):
        params.load(f)


def test_the_base_of_an_override_is_no_override(tmp_path):
    _override(tmp_path, "plot: {seeds: [0]}\n", name="mid.yaml")
    f = tmp_path / "top.yaml"
    f.write_text("base: mid.yaml\n")
    with pytest.raises(ParamsError, match=r"mid\.yaml \(the base of .*top\.yaml\), line 1: base: the base of an "
                                          r"override must be a complete params file, not an override itself"):
        params.load(f)


def test_an_override_in_a_subfolder_names_its_base_relative_to_itself(tmp_path):
    (tmp_path / "params.yaml").write_text(BASE.read_text())
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "s.yaml").write_text("base: ../params.yaml\nplot: {seeds: [0]}\n")
    P = params.load(tmp_path / "studies" / "s.yaml")
    assert P.plot.seeds == [0] and P.collect == params.load(BASE).collect


# ---- python -m srclib.params merge: the complete file for dvc repro --------------------------
def _copy_study(tmp_path: Path) -> Path:
    for f in (BASE, GPU):
        (tmp_path / f.name).write_text(f.read_text())
    return tmp_path


def test_merge_writes_the_complete_validated_file(tmp_path):
    root = _copy_study(tmp_path)
    out = root / "params.yaml"
    assert params.main(["merge", str(root / "params-gpu.yaml"), "-o", str(out)]) == 0
    text = out.read_text()
    head = text.split("\n\n", 1)[0]
    assert head.startswith("# Generated by srclib.params: python -m srclib.params merge ")
    assert "params-gpu.yaml (sha256 " in head and "merged on " in head and "params.yaml (sha256 " in head
    assert params.BASE_KEY not in yaml.safe_load(text)  # a complete params file, what dvc.yaml's stages read
    assert _plain(params.load(out)) == json.loads(KNOWN.read_text())
    assert sorted(p.name for p in root.iterdir()) == ["params-gpu.yaml", "params.yaml"]  # no temporary file left
    # merging again on the merged file as the base is the same study (idempotent)
    assert params.load(root / "params-gpu.yaml") == params.load(out)
    assert params.main(["merge", str(root / "params-gpu.yaml"), "-o", str(out)]) == 0
    assert out.read_text().split("\n\n", 1)[1] == text.split("\n\n", 1)[1]
    # the efficiency deps that `python -m srclib.deps --sync-dvc` then writes into dvc.yaml
    assert deps.efficiency_data(out) == (["pruned/llada-wanda-uniform-50-s0", "pruned/llada-wanda-uniform-50-2of4-s0"],
                                          [])


def test_merge_raw_settings_equal_an_unmerged_full_file():
    """The merged mapping is the one the full file held (so DVC's params of each stage are too)."""
    merged, P = params._resolve(GPU)
    assert P == params.load(GPU) and params.load_dict(merged) == P
    assert yaml.safe_load(params.merged_yaml(GPU)) == merged


def test_merge_to_standard_output_and_its_refusals(tmp_path, capsys):
    assert params.main(["merge", str(GPU)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == params._resolve(GPU)[0]
    assert params.main(["merge", str(BASE)]) == 2
    assert "params.yaml: not an override (its first key is not base:" in capsys.readouterr().err
    root = _copy_study(tmp_path)
    gpu = root / "params-gpu.yaml"
    before = gpu.read_text()
    assert params.main(["merge", str(gpu), "-o", str(gpu)]) == 2
    assert "would overwrite the override" in capsys.readouterr().err and gpu.read_text() == before
    gpu.write_text(before + "bogus: 1\n")
    out = root / "merged.yaml"
    assert params.main(["merge", str(gpu), "-o", str(out)]) == 2
    assert re.search(r"params-gpu\.yaml, line \d+: bogus: unknown key", capsys.readouterr().err)
    assert not out.exists()  # nothing written on an error


def test_merge_command_and_override_loading_stay_torch_free(tmp_path):
    code = ("import sys, srclib.params as p; P = p.load('params-gpu.yaml'); p.merged_yaml('params-gpu.yaml'); "
            "assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=paths.ROOT)
    r = subprocess.run([sys.executable, "-m", "srclib.params", "merge", "params-gpu.yaml", "-o",
                        str(tmp_path / "params.yaml")], cwd=paths.ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert params.load(tmp_path / "params.yaml") == params.load(GPU)


def test_params_imports_nothing_upward():
    """srclib.params declares settings: it imports the leaf modules only (every import, also inside
    functions: the merge command's atomic write is srclib.files, a leaf over srclib.paths)."""
    assert deps.imports_of("srclib.params", parents=False) <= {"srclib.choices", "srclib.paths", "srclib.schema",
                                                                "srclib.files"}
    assert deps.imports_of("srclib.schema", parents=False) == set()


def test_readme_paper_scale_commands_merge_then_sync_then_repro(tmp_path):
    text = (paths.ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Paper-scale study"):]
    block = section[section.index("```bash\n") + 8:]
    block = block[:block.index("```")]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    merge = "python -m srclib.params merge params-gpu.yaml -o params.yaml"
    assert commands.index(merge) < commands.index("python -m srclib.deps --sync-dvc") < commands.index("dvc repro")
    assert not any(c.startswith("cp params-gpu.yaml") for c in commands)  # an override is no params.yaml for DVC
    root = _copy_study(tmp_path)
    argv = merge.split()[3:]
    assert params.main([argv[0], str(root / argv[1]), argv[2], str(root / argv[3])]) == 0
    assert params.load(root / "params.yaml") == params.load(GPU)
