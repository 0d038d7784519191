"""Efficiency: FLOP/param counts, memory formulas, CSR execution, the report and the stage."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from srclib import paths
from srclib.efficiency import accounting as A
from srclib.efficiency import sparse as S
from srclib.efficiency import timing as T
from srclib.efficiency.summary import report_rows
from srclib.files import read_json
from srclib.params import EfficiencyParams, ParamsError
from srclib.stages import efficiency as stage
from srclib.models import get_adapter
from srclib.models.base import Adapter, write_marker
from srclib.models.tiny import TinyLM, test_config

ADAPTER = get_adapter("tiny-dlm")


# ---- a hand-built model: one block holding one 4x8 linear -------------------------------------------
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4, bias=False)


class _Hand(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_Block()])


@dataclass(frozen=True)
class _HandAdapter(Adapter):
    key: str = "hand"
    causal: bool = False
    shift: bool = False
    blocks_path: str = "blocks"


def _hand_model() -> tuple[nn.Module, Adapter]:
    m = _Hand()
    with torch.no_grad():
        w = torch.arange(1, 33, dtype=torch.float32).reshape(4, 8)
        w[:, ::2] = 0  # 16 zeros, and every group of 4 keeps exactly 2 -> 2:4
        m.blocks[0].lin.weight.copy_(w)
    return m, _HandAdapter()


def test_hand_counts_flops_memory_known_answer():
    m, ad = _hand_model()
    (s,) = A.layer_stats(m, ad)
    assert (s.name, s.out_features, s.in_features, s.numel, s.nnz) == ("blocks.0.lin", 4, 8, 32, 16)
    assert s.sparsity == 0.5 and s.keeps_2_of_4 and not s.has_bias
    assert not s.cutlass_2to4_shape_ok and not s.cusparselt_2to4_shape_ok  # 4 x 8 is below both minima
    f = A.flops([s], tokens=10)
    assert f == {"tokens": 10, "dense": 2 * 32 * 10, "nonzero": 2 * 16 * 10, "ratio": 0.5}
    mem = A.memory([s], torch.bfloat16)
    assert mem["dense_bytes"] == 64
    # CSR int64: 16 values * 2 B + 16 col idx * 8 B + 5 row ptr * 8 B = 32 + 128 + 40
    assert mem["csr_int64_bytes"] == 200
    # CSR int32: 32 + 64 + 20
    assert mem["csr_int32_bytes"] == 116
    # 2:4 pattern holds, but 8 inputs do not fill one int16 metadata word (16 columns): not reported
    assert mem["semi_structured_2to4_bytes"] is None and "multiple of 16" in mem["semi_structured_2to4_note"]


def test_hand_2to4_rejects_bad_width():
    with pytest.raises(ValueError, match="divisible by 16"):
        A.semi_structured_bytes(4, 8, torch.bfloat16)
    with pytest.raises(ValueError, match="allowed"):
        A.semi_structured_bytes(32, 64, torch.float32)


def test_semi_structured_bytes_known_answer():
    # 32 x 64 bf16: values 32 * 32 * 2 B = 2048; metadata int16 (32, 4) = 256 B; dense 4096 B
    b = A.semi_structured_bytes(32, 64, torch.bfloat16)
    assert b == {"values": 2048, "metadata": 256, "total": 2304}
    assert b["total"] / (32 * 64 * 2) == 9 / 16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_semi_structured_bytes_match_torch_cutlass_packing(dtype):
    """The formula equals the storage torch's own CUTLASS packer produces (it runs on CPU)."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 128, generator=g)
    w = S._two_four_mask(w.abs(), 0.5).logical_not().float() * w  # keep 2 of 4
    packed, meta = sparse_semi_structured_from_dense_cutlass(w.to(dtype))
    actual = packed.numel() * packed.element_size() + meta.numel() * meta.element_size()
    assert A.semi_structured_bytes(64, 128, dtype)["total"] == actual


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), p=st.floats(0.0, 1.0), seed=st.integers(0, 99))
def test_csr_bytes_match_torch_storage(rows, cols, p, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) >= p)
    c = w.to(torch.bfloat16).to_sparse_csr()
    nnz = int(torch.count_nonzero(w))
    actual = sum(t.numel() * t.element_size() for t in (c.values(), c.col_indices(), c.crow_indices()))
    assert c.col_indices().dtype == torch.int64
    assert A.csr_bytes(rows, nnz, 2, 8) == actual


def test_memory_2to4_only_when_pattern_holds():
    m = TinyLM(test_config()).eval()
    S.zero_by_magnitude_(m, ADAPTER, 0.5, "unstructured")
    mem = A.memory(A.layer_stats(m, ADAPTER), torch.bfloat16)
    assert mem["semi_structured_2to4_bytes"] is None and "2 of every 4" in mem["semi_structured_2to4_note"]
    m2 = TinyLM(test_config()).eval()
    S.zero_by_magnitude_(m2, ADAPTER, 0.5, "2:4")
    mem2 = A.memory(A.layer_stats(m2, ADAPTER), torch.bfloat16)
    assert mem2["semi_structured_2to4_ratio"] == pytest.approx(9 / 16)
    assert A.memory(A.layer_stats(m2, ADAPTER), torch.float32)["semi_structured_2to4_bytes"] is None


# ---- masks used as fixtures ---------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 8), groups=st.integers(1, 6), seed=st.integers(0, 999))
def test_zero_2to4_property(rows, groups, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, 4 * groups, generator=g)
    mask = S._two_four_mask(w.abs(), 0.5)
    kept = w * ~mask
    assert A.keeps_n_of_m(kept, 2, 4)
    assert int(mask.sum()) == rows * groups * 2
    # every kept |w| in a group is >= every pruned |w| of that group
    a = w.abs().reshape(rows, groups, 4)
    mk = mask.reshape(rows, groups, 4)
    assert bool((a.masked_fill(mk, math.inf).amin(-1) >= a.masked_fill(~mk, -math.inf).amax(-1)).all())


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 20), s=st.floats(0.0, 0.95), seed=st.integers(0, 999))
def test_zero_rowwise_property(rows, cols, s, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    mask = S._rowwise_mask(w.abs(), s)
    assert (mask.sum(1) == math.floor(cols * s)).all()


def test_keeps_n_of_m_rejects_three_of_four():
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert not A.keeps_n_of_m(w)
    assert A.keeps_n_of_m(torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
    assert not A.keeps_n_of_m(torch.ones(1, 6) * 0)  # width not a multiple of 4


def test_zero_by_magnitude_errors():
    m = TinyLM(test_config())
    with pytest.raises(ValueError, match="pattern must be one of"):
        S.zero_by_magnitude_(m, ADAPTER, 0.5, "3:7")
    with pytest.raises(ValueError, match="sparsity must be 0.5"):
        S.zero_by_magnitude_(m, ADAPTER, 0.7, "2:4")


# ---- CSR execution ----------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(cin=st.integers(1, 16), cout=st.integers(1, 16), lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       bias=st.booleans(), seed=st.integers(0, 999))
def test_csr_linear_equals_f_linear(cin, cout, lead, bias, seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(cin, cout, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(cout, cin, generator=g) * (torch.rand(cout, cin, generator=g) > 0.5))
    x = torch.randn(*lead, cin, generator=g)
    y = S.CSRLinear.from_linear(lin)(x)
    assert y.shape == (*lead, cout)
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", 0.5), ("unstructured", 0.7)])
def test_csr_model_matches_dense_zeroed(pattern, sparsity):
    m = TinyLM(test_config()).eval()
    S.zero_by_magnitude_(m, ADAPTER, sparsity, pattern)
    sm = S.sparse_copy(m, ADAPTER, "csr")
    assert all(isinstance(lin, nn.Linear) for lin in A.prunable_linears(m, ADAPTER).values())  # original intact
    blocks = ADAPTER.blocks(sm)
    assert all(isinstance(blocks[i].get_submodule(n), S.CSRLinear) for i in range(2) for n in ("q_proj", "ff_out"))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(ADAPTER.logits(sm, ids), ADAPTER.logits(m, ids), atol=1e-5, rtol=1e-5)


def test_sparse_copy_rejects_unknown_format():
    with pytest.raises(ValueError, match="fmt must be one of"):
        S.sparse_copy(TinyLM(test_config()), ADAPTER, "coo")


# ---- report and stage -------------------------------------------------------------------------------
def _eff(**over) -> EfficiencyParams:
    kw = dict(instances=["x"], token_shapes=[[1, 8], [2, 8]], model_token_shapes={}, repeats=2, warmup=1, threads=1,
              clock="wall", memory_dtype="bfloat16")
    kw.update(over)
    return EfficiencyParams(**kw)


def _small_report(**over):
    m = TinyLM(test_config()).eval()
    S.zero_by_magnitude_(m, ADAPTER, 0.5, "2:4")
    return T.efficiency_report(m, ADAPTER, _eff(**over))


def test_report_is_json_and_consistent():
    threads = torch.get_num_threads()
    r = _small_report(threads=1)
    assert torch.get_num_threads() == threads  # restored
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r
    assert r["env"]["threads"] == 1 and r["env"]["torch"] == torch.__version__
    assert r["settings"]["token_shapes"] == [[1, 8], [2, 8]] and r["settings"]["repeats"] == 2
    assert r["model"]["prunable_sparsity"] == 0.5 and r["model"]["keeps_2_of_4"]
    cfg = test_config()
    per_block = 4 * cfg.hidden_size**2 + 3 * cfg.hidden_size * cfg.mlp_hidden
    assert r["model"]["prunable_params"] == cfg.n_layers * per_block
    assert r["flops"]["2x8"]["dense"] == 2 * r["model"]["prunable_params"] * 16
    assert r["memory"]["semi_structured_2to4_ratio"] == pytest.approx(9 / 16)
    lat = r["latency"]["1x8"]
    assert lat["csr_max_abs_diff"] < 1e-4
    assert lat["step"]["dense"]["n"] == 2 and lat["step"]["csr"]["median_s"] > 0
    assert lat["step"]["csr_over_dense"]["ratio_of_medians"] == pytest.approx(
        lat["step"]["csr"]["median_s"] / lat["step"]["dense"]["median_s"])
    rows = report_rows("x", r)
    assert len(rows) == 2 and rows[0]["flops_ratio"] == 0.5


def test_report_argument_errors():
    m = TinyLM(test_config())
    with pytest.raises(ParamsError, match="token_shapes"):  # the params' own rule
        _eff(token_shapes=[[0, 8]])
    with pytest.raises(ValueError, match="memory_dtype"):
        T.efficiency_report(m, ADAPTER, _eff(memory_dtype="int4"))
    with pytest.raises(ValueError, match="formats"):
        T.efficiency_report(m, ADAPTER, _eff(), formats=("coo",))
    with pytest.raises(ValueError, match="clock must be one of"):
        T.efficiency_report(m, ADAPTER, _eff(clock="cycles"))
    with pytest.raises(ValueError, match="CPU time only"):
        T.efficiency_report(m, ADAPTER, _eff(clock="process"), device="meta")


def test_report_process_clock():
    r = _small_report(clock="process", threads=1)
    assert r["settings"]["clock"] == "process" and r["latency"]["2x8"]["step"]["dense"]["median_s"] > 0


def test_report_refuses_mismatched_sparse_model(monkeypatch):
    class _Wrong(S.CSRLinear):
        def forward(self, x):
            return super().forward(x) + 1.0

    monkeypatch.setitem(S.SPARSE_FORMATS, "csr", lambda lin: _Wrong(lin.weight.detach().to_sparse_csr(), None))
    with pytest.raises(RuntimeError, match="refusing to time"):
        _small_report()


def _checkpoint(folder, pattern):
    m = TinyLM(test_config())
    S.zero_by_magnitude_(m, ADAPTER, 0.5, pattern)
    m.save_pretrained(folder)
    write_marker(folder, "tiny-dlm")
    return folder


def test_efficiency_stage_writes_atomically(tmp_path):
    for name, pattern in {"u50": "unstructured", "nm": "2:4"}.items():
        _checkpoint(paths.pruned_dir(name, tmp_path), pattern)
    out = paths.efficiency_metrics(tmp_path)
    res = stage.measure(_eff(instances=["u50", "nm"], token_shapes=[[1, 8]], warmup=0), root=tmp_path)
    data = read_json(out)
    assert data == json.loads(json.dumps(res.metrics))
    assert set(data["instances"]) == {"u50", "nm"} and data["instances"]["nm"]["checkpoint"] == "pruned/nm"
    assert data["instances"]["nm"]["model"]["keeps_2_of_4"] and not data["instances"]["u50"]["model"]["keeps_2_of_4"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["efficiency.json"]  # no temp files left
    assert list(res.table["instance"]) == ["u50", "nm"] and set(res.table["shape"]) == {"1x8"}
    # the interpretation quotes the measured ratio of each instance
    for name in ("u50", "nm"):
        ratio = data["instances"][name]["latency"]["1x8"]["step"]["csr_over_dense"]["ratio_of_medians"]
        assert f"**{name}**" in res.interpretation and f"csr/dense {ratio:.2f}" in res.interpretation
    # a failing run leaves the previous file untouched
    before = out.read_bytes()
    with pytest.raises(FileNotFoundError, match="not found"):
        stage.measure(_eff(instances=["gone"]), root=tmp_path)
    assert out.read_bytes() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_semi_structured_bytes_match_cuda_tensor():
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = True
    try:
        w = torch.randn(64, 128)
        w = (w * ~S._two_four_mask(w.abs(), 0.5)).to("cuda", torch.bfloat16)
        s = to_sparse_semi_structured(w)
        actual = s.packed.numel() * s.packed.element_size() + s.meta.numel() * s.meta.element_size()
        assert actual == A.semi_structured_bytes(64, 128, torch.bfloat16)["total"]
        x = torch.randn(128, 32, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(s @ x, w @ x, atol=1e-2, rtol=1e-2)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = False


def test_layer_shape_flags_tiny_dlm_mlp():
    m, ad = _hand_model()
    m.blocks[0].lin = nn.Linear(256, 688, bias=True)  # tiny-dlm's ff_proj: 688 rows
    (s,) = A.layer_stats(m, ad)
    assert s.has_bias and s.cusparselt_2to4_shape_ok and not s.cutlass_2to4_shape_ok


def _load_script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_script_skips_cleanly_without_cuda(capsys):
    mod = _load_script("gpu_semistructured")
    assert mod.main([]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["skipped"] == "no CUDA"


def test_gpu_script_two_four_and_padding(monkeypatch):
    mod = _load_script("gpu_semistructured")
    w = torch.randn(8, 16)
    assert A.keeps_n_of_m(mod.two_four(w)) and int(torch.count_nonzero(mod.two_four(w))) == 64
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda t: t)  # dense stand-in on CPU
    lin = nn.Linear(40, 30, bias=False)
    sl = mod.SemiLinear(lin, 32, 64)
    assert sl.weight.shape == (32, 64)
    x = torch.randn(2, 3, 40)
    torch.testing.assert_close(sl(x), lin(x))


@pytest.mark.slow
def test_cpu_benchmark_cli_runs(tmp_path, capsys):
    mod = _load_script("efficiency")
    out = tmp_path / "r.json"
    assert mod.main(["--shapes", "1x8", "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    assert set(read_json(out)["instances"]) == set(mod.SYNTHETIC)
    assert "csr/dense" in capsys.readouterr().out
