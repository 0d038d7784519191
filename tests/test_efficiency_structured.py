"""Efficiency of structured (compact) checkpoints: full-forward FLOPs, the structured report, its
table rows, the stage on a structured checkpoint and the benchmark's uniform structures."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from srclib import paths
from srclib.efficiency import sparse as S
from srclib.efficiency import structured as ST
from srclib.efficiency.summary import report_rows
from srclib.files import read_json
from srclib.models import get_adapter
from srclib.models import load as real_load
from srclib.models.base import write_marker
from srclib.models.structure import Structure, apply_compact, head_layout, save_structure, structure_record
from srclib.models.tiny import TinyLM, test_config
from srclib.params import EfficiencyParams
from srclib.stages import efficiency as stage

ADAPTER = get_adapter("tiny-dlm")


def _eff(**over) -> EfficiencyParams:
    kw = dict(instances=["x"], token_shapes=[[1, 8], [2, 8]], model_token_shapes={}, repeats=2, warmup=0, threads=1,
              clock="wall", memory_dtype="bfloat16")
    kw.update(over)
    return EfficiencyParams(**kw)


# ---- forward_flops ------------------------------------------------------------------------------------
def test_forward_flops_dense_known_answer():
    # test_config: vocab 64, d 64, 2 blocks, 4 heads of 16, MLP 128; B=2, T=8 (16 tokens)
    m = TinyLM(test_config()).eval()
    f = ST.forward_flops(m, ADAPTER, 2, 8)
    # per block: q, k, v, o 64*64 = 4096 each -> 16384; gate, up, down 64*128 = 8192 each -> 24576
    assert f["linears"] == 2 * (16384 + 24576) * 2 * 16 == 2_621_440
    # per block 4 * B * T^2 * (4 heads * 16) = 4 * 2 * 64 * 64 = 32768
    assert f["attention"] == 2 * 32768 == 65_536
    assert f["head"] == 2 * 64 * 64 * 16 == 131_072  # 2 d V * B*T
    assert f["total"] == 2_621_440 + 65_536 + 131_072


def test_forward_flops_counts_compact_blocks_by_hand():
    """Block 0 shrunk BY HAND (no apply_compact): 3 of 4 heads, 96 of 128 channels."""
    m = TinyLM(test_config()).eval()
    b0 = ADAPTER.blocks(m)[0]
    b0.q_proj, b0.k_proj, b0.v_proj = (nn.Linear(64, 48, bias=False) for _ in range(3))
    b0.attn_out = nn.Linear(48, 64, bias=True)  # a compensation bias: not a FLOP of the count
    b0.ff_proj, b0.up_proj = nn.Linear(64, 96, bias=False), nn.Linear(64, 96, bias=False)
    b0.ff_out = nn.Linear(96, 64, bias=False)
    f = ST.forward_flops(m, ADAPTER, 1, 10)
    block0 = 4 * 48 * 64 + 3 * 96 * 64  # 12288 + 18432
    block1 = 4 * 64 * 64 + 3 * 128 * 64
    assert f["linears"] == 2 * (block0 + block1) * 10
    assert f["attention"] == 4 * 1 * 100 * 48 + 4 * 1 * 100 * 64
    assert f["head"] == 2 * 64 * 64 * 10
    assert f["total"] == f["linears"] + f["attention"] + f["head"]


def test_forward_flops_rejects_bad_arguments():
    m = TinyLM(test_config()).eval()
    with pytest.raises(ValueError, match="batch and tokens"):
        ST.forward_flops(m, ADAPTER, 0, 8)
    ADAPTER.blocks(m)[1].q_proj = nn.Linear(64, 40, bias=False)  # 40 is not a multiple of head_dim 16
    with pytest.raises(ValueError, match="block 1: .*head_dim 16"):
        ST.forward_flops(m, ADAPTER, 1, 8)


# ---- a hand-made structure on a GQA TinyLM (4 query heads, 2 KV groups of 2, hd 16) -----------------
def _gqa_pair(seed: int = 0):
    torch.manual_seed(seed)
    dense = TinyLM(test_config(n_kv_heads=2)).eval()
    g = torch.Generator().manual_seed(seed)
    structure = Structure(
        heads=[torch.tensor([True, False]), torch.tensor([True, True])],
        channels=[torch.arange(128) >= 32, torch.arange(128) % 2 == 0],  # 96 and 64 kept
        bias={"0.o": torch.randn(64, generator=g), "1.down": torch.randn(64, generator=g)},
    )
    compact = copy.deepcopy(dense)
    apply_compact(compact, ADAPTER, structure)
    return dense, compact, structure


# block linear weights, by hand: dense block = q 64*64 + k, v 32*64 + o 64*64 + 3 * 64*128 = 36864
DENSE_LIN = 2 * 36864
# compact block 0: q 32*64, k, v 16*64, o 64*32 = 6144; MLP 3 * 96*64 = 18432
# compact block 1: attention 12288; MLP 3 * 64*64 = 12288
COMPACT_LIN = (6144 + 18432) + (12288 + 12288)
Q_OUT = {"dense": [64, 64], "compact": [32, 64]}


def _flops_by_hand(which: str, b: int, t: int) -> int:
    lin = DENSE_LIN if which == "dense" else COMPACT_LIN
    att = sum(4 * b * t * t * q for q in Q_OUT[which])
    return 2 * lin * b * t + att + 2 * 64 * 64 * b * t


def test_structured_report_known_answers():
    dense, compact, _ = _gqa_pair()
    threads = torch.get_num_threads()
    r = ST.structured_report(compact, dense, ADAPTER, _eff(threads=1, token_shapes=[[1, 8], [2, 16]]))
    assert torch.get_num_threads() == threads  # restored
    assert json.loads(json.dumps(r, allow_nan=False)) == r
    assert r["kind"] == "structured" and r["settings"]["formats"] == ["compact"] and r["env"]["threads"] == 1
    mod = r["model"]
    assert mod["block_linear_params"] == {"dense": DENSE_LIN, "compact": COMPACT_LIN}
    assert mod["removed_share"] == pytest.approx(1 / 3) and mod["prunable_sparsity"] == mod["removed_share"]
    assert mod["dense_total_params"] == sum(p.numel() for p in dense.parameters())
    # the compact model: its block linears, the two compensation biases, and the unchanged rest
    rest = mod["dense_total_params"] - DENSE_LIN
    assert mod["total_params"] == rest + COMPACT_LIN + 2 * 64
    assert r["blocks"]["compact"] == {"query_heads": [2, 4], "kv_groups": [1, 2], "intermediate": [96, 64]}
    assert r["blocks"]["dense"] == {"query_heads": [4, 4], "kv_groups": [2, 2], "intermediate": [128, 128]}
    assert r["memory"]["dense_bytes"] == 2 * DENSE_LIN and r["memory"]["compact_bytes"] == 2 * COMPACT_LIN
    for b, t in [(1, 8), (2, 16)]:
        key = f"{b}x{t}"
        f_d, f_c = _flops_by_hand("dense", b, t), _flops_by_hand("compact", b, t)
        assert (r["flops"][key]["dense"], r["flops"][key]["pruned"]) == (f_d, f_c)
        lat = r["latency"][key]
        assert (lat["batch"], lat["tokens"]) == (b, t)
        sp = lat["speedup"]
        assert sp["ideal"] == pytest.approx(f_d / f_c)
        assert sp["measured"] == pytest.approx(lat["step"]["dense"]["median_s"] / lat["step"]["compact"]["median_s"])
        assert sp["measured_over_ideal"] == pytest.approx(sp["measured"] / sp["ideal"])
        assert lat["step"]["compact_over_dense"]["ratio_of_medians"] == pytest.approx(1 / sp["measured"])
        assert lat["step"]["dense"]["n"] == 2
        assert lat["step"]["throughput_tokens_per_s"]["compact"] == pytest.approx(
            b * t / lat["step"]["compact"]["median_s"])


def test_structured_report_process_clock_restores_threads():
    dense, compact, _ = _gqa_pair()
    before = torch.get_num_threads()
    r = ST.structured_report(compact, dense, ADAPTER, _eff(clock="process", threads=2, token_shapes=[[1, 8]]))
    assert r["settings"]["clock"] == "process" and r["env"]["threads"] == 2
    assert torch.get_num_threads() == before


def test_structured_report_errors():
    dense, compact, _ = _gqa_pair()
    with pytest.raises(ValueError, match="clock must be one of"):
        ST.structured_report(compact, dense, ADAPTER, _eff(clock="cycles"))
    with pytest.raises(ValueError, match="memory_dtype"):
        ST.structured_report(compact, dense, ADAPTER, _eff(memory_dtype="int4"))
    with pytest.raises(ValueError, match="CPU time only"):
        ST.structured_report(compact, dense, ADAPTER, _eff(clock="process"), device="meta")
    other = TinyLM(test_config(n_kv_heads=2, n_layers=3)).eval()
    with pytest.raises(ValueError, match="same family and size"):
        ST.structured_report(compact, other, ADAPTER, _eff())
    with torch.no_grad():
        ADAPTER.blocks(compact)[0].ff_out.weight[0, 0] = math.nan
    with pytest.raises(RuntimeError, match="non-finite logits"):
        ST.structured_report(compact, dense, ADAPTER, _eff(token_shapes=[[1, 8]]))


# ---- table rows -----------------------------------------------------------------------------------
def test_report_rows_structured_and_unstructured():
    dense, compact, _ = _gqa_pair()
    r = ST.structured_report(compact, dense, ADAPTER, _eff(token_shapes=[[1, 8]]))
    (row,) = report_rows("s", r)
    lat = r["latency"]["1x8"]
    assert (row["instance"], row["kind"], row["shape"], row["format"]) == ("s", "structured", "1x8", "compact")
    assert row["sparsity"] == pytest.approx(1 / 3)
    assert row["flops_ratio"] == pytest.approx(_flops_by_hand("compact", 1, 8) / _flops_by_hand("dense", 1, 8))
    assert row["ideal_speedup"] == pytest.approx(_flops_by_hand("dense", 1, 8) / _flops_by_hand("compact", 1, 8))
    ratio = lat["step"]["compact"]["median_s"] / lat["step"]["dense"]["median_s"]
    assert row["step_sparse_over_dense"] == pytest.approx(ratio)
    assert row["measured_speedup"] == pytest.approx(1 / ratio)
    assert row["measured_over_ideal"] == pytest.approx(row["measured_speedup"] / row["ideal_speedup"])
    assert row["mem_compact_ratio"] == pytest.approx(COMPACT_LIN / DENSE_LIN)
    assert row["sparse_step_ms"] == pytest.approx(1e3 * lat["step"]["compact"]["median_s"])
    for col in ("mem_csr_int32_ratio", "mem_csr_int64_ratio", "mem_2to4_ratio", "linears_sparse_over_dense",
                "keeps_2_of_4"):
        assert math.isnan(row[col]), col
    # an unstructured report (old shape, no "kind") gets the same columns
    from srclib.efficiency.timing import efficiency_report

    m = TinyLM(test_config()).eval()
    S.zero_by_magnitude_(m, ADAPTER, 0.5, "unstructured")
    (urow,) = report_rows("u", efficiency_report(m, ADAPTER, _eff(token_shapes=[[1, 8]])))
    assert set(urow) == set(row)
    assert urow["kind"] == "unstructured" and urow["format"] == "csr"
    assert math.isnan(urow["ideal_speedup"]) and math.isnan(urow["measured_over_ideal"])
    assert math.isnan(urow["mem_compact_ratio"])
    assert urow["measured_speedup"] == pytest.approx(1 / urow["step_sparse_over_dense"])


# ---- the stage ------------------------------------------------------------------------------------
def _structured_checkpoint(folder: Path, dense: nn.Module, structure: Structure, form: str = "compact") -> Path:
    """As the structured pruner writes one: the compact model, the marker with the structure record,
    the keep masks and biases."""
    model = copy.deepcopy(dense)
    apply_compact(model, ADAPTER, structure)
    model.save_pretrained(folder, safe_serialization=True)
    write_marker(folder, "tiny-dlm", structure=structure_record(structure, head_layout(ADAPTER, dense), form))
    save_structure(folder, structure)
    return folder


def test_stage_structured_and_unstructured(tmp_path, monkeypatch):
    dense, _, structure = _gqa_pair()
    dense.save_pretrained(tmp_path / "dense", safe_serialization=True)
    write_marker(tmp_path / "dense", "tiny-dlm")
    for name in ("s1", "s2"):
        _structured_checkpoint(paths.pruned_dir(name, tmp_path), dense, structure)
    u = copy.deepcopy(dense)
    S.zero_by_magnitude_(u, ADAPTER, 0.5, "unstructured")
    u.save_pretrained(paths.pruned_dir("u50", tmp_path), safe_serialization=True)
    write_marker(paths.pruned_dir("u50", tmp_path), "tiny-dlm")

    calls: list[str] = []

    def spy(source, **overrides):  # the dense model by key comes from tmp_path, not models/tiny-dlm
        calls.append(str(source))
        return real_load(tmp_path / "dense" if source == "tiny-dlm" else source, **overrides)

    monkeypatch.setattr(stage, "load", spy)
    res = stage.measure(_eff(instances=["s1", "u50", "s2"], token_shapes=[[1, 8]]), root=tmp_path)
    assert calls.count("tiny-dlm") == 1  # the dense model is loaded once per key
    data = read_json(paths.efficiency_metrics(tmp_path))
    assert data == json.loads(json.dumps(res.metrics))
    s1, u50 = data["instances"]["s1"], data["instances"]["u50"]
    assert s1["kind"] == "structured" and "kind" not in u50 and s1["checkpoint"] == "pruned/s1"
    assert s1["structure"]["form"] == "compact" and s1["structure"]["kv_groups"] == [1, 2]
    assert s1["model"]["removed_share"] == pytest.approx(1 / 3)
    assert s1["flops"]["1x8"]["pruned"] == _flops_by_hand("compact", 1, 8)
    assert list(res.table["instance"]) == ["s1", "u50", "s2"]
    assert list(res.table["kind"]) == ["structured", "unstructured", "structured"]
    for name in ("s1", "s2"):
        sp = data["instances"][name]["latency"]["1x8"]["speedup"]
        assert (f"x{sp['measured']:.2f} measured vs x{sp['ideal']:.2f} ideal "
                f"({sp['measured_over_ideal']:.2f} of ideal)") in res.interpretation
    assert "csr/dense" in res.interpretation and "ideal is dense FLOPs" in res.interpretation


def test_stage_refuses_masked_form(tmp_path):
    dense, _, structure = _gqa_pair()
    folder = paths.pruned_dir("m", tmp_path)
    folder.mkdir(parents=True)
    write_marker(folder, "tiny-dlm", structure=structure_record(structure, head_layout(ADAPTER, dense), "masked"))
    with pytest.raises(ValueError, match="form 'masked'"):
        stage.measure(_eff(instances=["m"]), root=tmp_path)
    assert not paths.efficiency_metrics(tmp_path).exists()


# ---- the benchmark's uniform structures --------------------------------------------------------------
def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "structured_speed.py"
    spec = importlib.util.spec_from_file_location("bench_structured_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_uniform_structure():
    mod = _bench()
    assert [mod.n_removed(0.3, 3), mod.n_removed(0.5, 3), mod.n_removed(0.3, 1536), mod.n_removed(0.99, 4)] == \
        [1, 2, 461, 3]
    m = TinyLM(test_config(n_kv_heads=2)).eval()
    s = mod.uniform_structure(m, ADAPTER, 0.5)
    assert [h.tolist() for h in s.heads] == [[False, True]] * 2
    assert all(int(c.sum()) == 64 and not c[:64].any() for c in s.channels)
