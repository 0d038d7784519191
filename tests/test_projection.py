"""The paper-scale cost model (srclib.efficiency.projection) and the paper-width memory paths.

Known answers: parameter counts by hand, FLOPs against torch's own FLOP counter on reduced-width
models of both families, slopes and schedules on hand cases. Paper-width code paths run here only
at reduced width: the streamed sink-aware Wanda (mass pre-pass instead of the stash) gives the
same pruned weights as the one-forward path, and calibration never runs the LM head (and would
give the same weights if it did).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from srclib.pruning import calibration as cal
from srclib.pruning import plan
from srclib import params
from srclib.efficiency import projection as pj
from srclib.models import MODELS
from srclib.models.tiny import TinyLM, test_config
from srclib.pruning import core, memory
from srclib.pruning.core import prune_model

from helpers import CHUNK, SPARSEGPT
from prune_specs import make_spec

ROOT = Path(__file__).resolve().parents[1]
SMALL_LLADA = pj.ModelShape(d=64, n_layers=2, n_heads=4, n_kv=4, head_dim=16, mlp=96, vocab=300)
SMALL_DREAM = pj.ModelShape(d=64, n_layers=2, n_heads=4, n_kv=2, head_dim=16, mlp=96, vocab=300)


def _tiny_llada(shape: pj.ModelShape) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(test_config(causal=False, shift=False, vocab_size=shape.vocab, hidden_size=shape.d,
                              n_layers=shape.n_layers, n_heads=shape.n_heads, n_kv_heads=shape.n_kv,
                              mlp_hidden=shape.mlp, mask_token_id=shape.vocab - 1)).eval()


def _tiny_dream(shape: pj.ModelShape):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen2", vocab_size=shape.vocab, hidden_size=shape.d, intermediate_size=shape.mlp,
                               num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
                               num_key_value_heads=shape.n_kv, max_position_embeddings=256,
                               tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg).eval()


# ---- counts ----------------------------------------------------------------------------------------
def test_paper_parameter_counts_by_hand():
    # LLaDA-8B: 32 x (4 x 4096^2 + 3 x 4096 x 12288) + 2 x 4096 x 126464
    assert pj.PAPER_SHAPES["llada"].params == 32 * (4 * 4096 ** 2 + 3 * 4096 * 12288) + 2 * 4096 * 126464
    assert pj.PAPER_SHAPES["llada"].params == 8_015_314_944
    # Dream-7B (Qwen2.5-7B body): q, o 3584^2; k, v 3584 x 512; MLP 3 x 3584 x 18944; untied head
    per_block = 2 * 3584 ** 2 + 2 * 3584 * 512 + 3 * 3584 * 18944
    assert pj.PAPER_SHAPES["dream"].params == 28 * per_block + 2 * 3584 * 152064 == 7_615_283_200


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("head", [True, False])
def test_forward_flops_match_torch_flop_counter(family, head):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    shape = SMALL_LLADA if family == "llada" else SMALL_DREAM
    model = _tiny_llada(shape) if family == "llada" else _tiny_dream(shape)
    adapter = MODELS["llada-8b-base" if family == "llada" else "dream-7b-base"]
    B, T = 2, 24
    ids = torch.randint(0, shape.vocab - 1, (B, T))
    blocks = adapter.blocks(model)
    counter = FlopCounterMode(display=False)
    # the math SDPA backend: its q k^T and A v matmuls are counted (CPU flash attention is not)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        if head:
            adapter.logits(model, ids)
        else:
            with cal._stop_after(blocks[-1]):
                cal._forward(model, ids, core._adapter_forward(model, adapter))
    assert counter.get_total_flops() == pj.forward_flops(shape, T, batch=B, head=head)


def test_forward_flops_hand_case():
    s = pj.ModelShape(d=2, n_layers=1, n_heads=1, n_kv=1, head_dim=2, mlp=3, vocab=5)
    # block params: q, k, v, o 2x2 = 16; gate, up, down 2x3 = 18 -> 34; T = 4
    assert pj.forward_flops(s, 4, head=False) == 2 * 34 * 4 + 4 * 16 * 1 * 2
    assert pj.forward_flops(s, 4) == 2 * 34 * 4 + 4 * 16 * 2 + 2 * 2 * 5 * 4
    assert pj.mass_flops(s, 4, batch=3) == 3 * 2 * 16 * 2


def test_sparsegpt_flops_by_loop():
    s = SMALL_DREAM
    tokens, bs = 1000, 32
    want = {"hessian": 0.0, "solve": 0.0, "columns": 0.0}
    for rows, c in [(64, 64), (32, 64), (32, 64), (64, 64), (96, 64), (96, 64), (64, 96)]:  # q k v o gate up down
        want["hessian"] += 2 * tokens * c * c
        want["solve"] += 4 / 3 * c ** 3 + rows * c * c + 2 * rows * c * bs
        want["columns"] += c
    got = pj.sparsegpt_flops(s, tokens, bs, layers=1)
    assert got == pytest.approx(want)
    assert pj.sparsegpt_flops(s, tokens, bs)["solve"] == pytest.approx(2 * want["solve"])


def test_loglog_slope_known_answers():
    assert pj.loglog_slope([1024, 2048, 4096], [3.0, 6.0, 12.0]) == pytest.approx(1.0)
    assert pj.loglog_slope([1, 2, 4], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="positive"):
        pj.loglog_slope([1, 2], [0.0, 1.0])


def test_schedule_hand_case():
    jobs = [{"name": "a", "seconds": 3.0, "deps": []}, {"name": "b", "seconds": 2.0, "deps": []},
            {"name": "c", "seconds": 2.0, "deps": ["a"]}]
    one, two = pj.schedule(jobs, 1), pj.schedule(jobs, 2)
    assert one["makespan_s"] == 7.0 and two["makespan_s"] == 5.0
    assert one["critical_path_s"] == two["critical_path_s"] == 5.0  # a -> c
    with pytest.raises(ValueError, match="workers"):
        pj.schedule(jobs, 0)
    with pytest.raises(ValueError, match="unknown job"):
        pj.schedule([{"name": "x", "seconds": 1.0, "deps": ["y"]}], 1)


def test_gpu_efficiency_is_checked():
    with pytest.raises(ValueError, match="mfu"):
        pj.H200.with_efficiency(0.0, 0.5)
    # 1 PFLOP of bf16 at 35% of 989 TFLOP/s
    assert pj.H200.with_efficiency(0.35, 0.5).seconds(1e15) == pytest.approx(1e15 / (0.35 * 989e12))


def test_study_projection_fits_one_h200_and_streams_the_stash():
    P = params.load(ROOT / "params-gpu.yaml")
    proj = pj.project_study(P, pj.H200)
    n_paper = sum(P.prune.instance(i).model in pj.MODEL_KEYS for i in P.prune.instances)
    kinds = [j["kind"] for j in proj["jobs"]]
    assert kinds.count("prune") == n_paper and kinds.count("evaluate") == n_paper + len(P.evaluate.dense)
    assert proj["over_memory"] == []  # every stage fits 141 GB
    sink_wanda = next(j for j in proj["jobs"] if j["name"] == "prune:llada-wanda-sink-50-s0")
    # the one-forward stash would be 4 windows x 10 t x 4096 tokens x 32 blocks x 24576 widths x 2 B
    assert sink_wanda["streamed"] and sink_wanda["prepass_passes"] == 1280
    assert 40 * 4096 * 32 * 24576 * 2 > 0.5 * (141e9 - 2 * pj.PAPER_SHAPES["llada"].params)
    s1, s8 = pj.schedule(proj["jobs"], 1), pj.schedule(proj["jobs"], 8)
    assert s1["makespan_s"] == pytest.approx(proj["total_seconds"])
    assert s8["makespan_s"] >= max(proj["total_seconds"] / 8, s8["critical_path_s"]) - 1e-6
    assert "| **total** |" in pj.projection_table(proj, {1: s1, 8: s8}, pj.H200.describe())


# ---- paper-width memory paths at reduced width ---------------------------------------------------------
def _calib(vocab: int, mask_id: int) -> cal.Calibration:
    g = torch.Generator().manual_seed(0)
    return cal.Calibration(windows=torch.randint(3, mask_id, (3, 32), generator=g), seed=0, windows_per_batch=2,
                           mass_chunk_size=CHUNK)


def _prune(monkeypatch, spec, budget=None, stop_after=None):
    model = _tiny_llada(SMALL_LLADA)
    adapter = MODELS["llada-8b-base"]
    adapter = dataclasses.replace(adapter, mask_token_id=SMALL_LLADA.vocab - 1)
    if budget is not None:
        monkeypatch.setattr(memory, "stash_budget", lambda device=None: budget)
    if stop_after is not None:
        monkeypatch.setattr(cal, "_stop_after", stop_after)
    head_calls = []
    h = model.model.transformer.ff_out.register_forward_hook(lambda *a: head_calls.append(1))
    try:
        rep = prune_model(model, adapter, spec, _calib(SMALL_LLADA.vocab, SMALL_LLADA.vocab - 1))
    finally:
        h.remove()
    monkeypatch.undo()
    return model, rep, len(head_calls)


def test_streamed_sink_wanda_equals_the_one_forward_stash(monkeypatch):
    spec = make_spec(method="wanda", weighting="sink")
    assert plan.one_shot(spec)
    a, ra, _ = _prune(monkeypatch, spec)
    b, rb, _ = _prune(monkeypatch, spec, budget=0)  # every stash is too large: stream
    assert "mass_prepass" not in ra.seconds and "mass_prepass" in rb.seconds
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    assert all(torch.equal(ra.masks[k], rb.masks[k]) for k in ra.masks)


def test_stash_bytes_by_hand():
    lins = [torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)]
    assert memory.stash_bytes(lins, passes=3, seq_len=5, element_size=2) == 3 * 5 * (4 + 8) * 2
    assert memory.stash_budget("cpu") == int(memory.STASH_FRACTION * memory.available_bytes("cpu")) > 0


@contextlib.contextmanager
def _no_stop(module):
    yield


@pytest.mark.parametrize("method,weighting", [("wanda", "sink"), ("sparsegpt", "sink"), ("wanda", "uniform")])
def test_calibration_skips_the_lm_head_and_the_skip_changes_nothing(monkeypatch, method, weighting):
    spec = make_spec(method=method, weighting=weighting)
    a, _, calls = _prune(monkeypatch, spec)
    assert calls == 0  # calibration never ran the LM head
    b, _, calls_full = _prune(monkeypatch, spec, stop_after=_no_stop)
    # without the stop the forwards that record mass in the same forward run the head (sink Wanda);
    # the sequential catch of block 0's inputs (uniform: no mass) stops at block 0 either way, and
    # sink SparseGPT's mass-only pre-pass stops by itself at the last block's mass (stop_at_mass)
    assert (calls_full > 0) == ((method, weighting) == ("wanda", "sink"))
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


@pytest.mark.slow
def test_rehearsal_worker_runs_at_reduced_width():
    path = ROOT / "benchmarks" / "paper_rehearsal.py"
    spec = importlib.util.spec_from_file_location("bench_paper_rehearsal", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.worker("llada", 1, small=True)
    st = out["stages"]
    assert {"mass_T64", "mass_T256", "wanda_sink_pass", "sparsegpt_sink_block", "elbo_request",
            "sampler_step"} <= set(st)
    assert st["wanda_sink_pass"]["passes"] == 1 and st["sparsegpt_sink_block"]["inputs"] == "clean"
    flops = pj.rehearsal_flops(pj.ModelShape(**out["shape"]), st, mod.ELBO, mod.SAMPLER,
                               blocksize=SPARSEGPT["blocksize"])
    assert set(flops) == set(st) and min(flops.values()) > 0


def test_sequential_mc_elbo_scales_only_the_sampled_multiple_choice_rows():
    """Known answer: with a fraction f of the MC rows, each multiple-choice task scored with
    mc_num > 1 costs f of its FLOPs; MMLU (mc_num 1), GSM8K (generation) and the perplexity
    are unchanged."""
    P = params.load(ROOT / "params-gpu.yaml")
    full = pj.evaluate_job(P, "x", "llada-8b-base", pj.H200)["per_task_flops"]
    part = pj.evaluate_job(P, "x", "llada-8b-base", pj.H200, mc_rows_fraction=0.25)["per_task_flops"]
    for task, f in full.items():
        sampled = task in P.evaluate.tasks and P.evaluate.tasks[task].mc_num > 1 and not pj.TASKS[task].generate
        assert part[task] == pytest.approx(0.25 * f if sampled else f), task
    assert part["hellaswag"] == pytest.approx(0.25 * full["hellaswag"]) and part["gsm8k"] == full["gsm8k"]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="mc_rows_fraction"):
            pj.evaluate_job(P, "x", "llada-8b-base", pj.H200, mc_rows_fraction=bad)


def test_sharded_evaluation_splits_compute_and_reloads_weights_per_rank():
    job = {"name": "evaluate:a", "kind": "evaluate", "seconds": 110.0, "io_seconds": 10.0, "peak_bytes": 1.0,
           "deps": ["prune:a"], "bf16_flops": 8.0}
    parts = pj.shard_job(job, 4)
    assert [p["name"] for p in parts] == [f"evaluate:a#{r}/4" for r in range(4)]
    assert all(p["seconds"] == pytest.approx(100 / 4 + 10) and p["deps"] == ["prune:a"] for p in parts)
    assert sum(p["bf16_flops"] for p in parts) == pytest.approx(8.0)
    assert pj.shard_job(job, 1) == [job]
    with pytest.raises(ValueError, match="shards"):
        pj.shard_job(job, 0)
    # in the study: sharding leaves the GPU time but for the extra weight loads, and cuts the
    # critical path of the longest evaluation about shards-fold
    P = params.load(ROOT / "params-gpu.yaml")
    one, eight = pj.project_study(P, pj.H200), pj.project_study(P, pj.H200, eval_shards=8)
    extra = sum(7 * j["io_seconds"] for j in one["jobs"] if j["kind"] == "evaluate")
    assert eight["total_seconds"] == pytest.approx(one["total_seconds"] + extra)
    c1, c8 = pj.schedule(one["jobs"], 64)["critical_path_s"], pj.schedule(eight["jobs"], 64)["critical_path_s"]
    assert c8 < c1 / 4
    table = pj.cost_table(pj.cost_scenarios(P, pj.H200, 0.2, gpus=(1, 8)))
    assert table.count("\n") == 5 and "H200-days" in table
