"""Paper-width rehearsal on CPU, and the projection of the whole params-gpu.yaml study to H200s.

A benchmark, not a test (issue 14 item 5). Models are built from config, randomly initialised,
float32 on CPU, with the paper models' block and vocabulary but 2 blocks:

* LLaDA-8B: hidden 4096, 32 heads, SwiGLU 12288, vocab 126464 (a TinyLM with LLaDA's module
  names, as tests build LLaDA's stand-in; srclib.models ``llada-8b-base`` adapter);
* Dream-7B: hidden 3584, GQA 28/4, SwiGLU 18944, vocab 152064 (a stock Qwen2 from config, as tests
  build Dream's stand-in; ``dream-7b-base`` adapter: 4-D bidirectional mask, shifted logits).

Each model is measured in its own fresh subprocess (``--worker``), through srclib's own code paths:

1. attention-mass recording (srclib.pruning.calibration.record_pass_mass: blocks only, no LM head) of one
   noised pass at T = 1024, 2048, 4096; the log-log slope of peak memory over T (must be ~1);
2. the LM head's cost: one full forward (adapter.logits) vs the blocks-only forward at T = 1024
   (the head is linear in T: x4 at 4096);
3. one sink-aware Wanda calibration pass at T = 4096 (srclib.pruning.core.prune_model, the
   study's spec with a one-value t-grid: one noised pass, one-shot, weights from the same forward);
4. one MC-ELBO request (srclib.likelihood, prefix 96 + target 32 tokens, cfg 0.5) at mc_num 8
   (the study's 128 is 16x the rows: scaled by FLOPs);
5. one sampler step at gen length 256 (srclib.diffusion.generate, steps=1, 32 prompt tokens);
6. one sink-aware SparseGPT block at T = 4096 (prune_model on a view of the model that exposes
   block 0 only: mass pre-pass of one noised pass, Hessians of one clean window, OBS solve).

Each worker rewrites its record after every stage (``--worker NAME --out FILE``), so a run cut
short still leaves the finished stages; ``--from-workers FILE ...`` assembles such records.

Time is wall clock and process CPU time; peak memory is srclib.pruning.memory.PeakMemory (sampled
RSS of the worker, bytes beyond what was resident at entry: the model weights). Measured CPU
GFLOP/s per stage come from the FLOP counts of srclib.efficiency.projection. The parent then
projects the study (srclib.efficiency.projection.project_study) to one H200 and N = 2, 4, 8 GPUs
with ``dvc queue`` workers, prints the tables (markdown, as in the README) and writes
benchmarks/results/paper_rehearsal.json.

Usage (about 10 minutes on 2 cores; the projection alone, from the saved measurements, is instant)::

    nice -n 10 .venv/bin/python benchmarks/paper_rehearsal.py [--threads 2] [--models llada dream]
    .venv/bin/python benchmarks/paper_rehearsal.py --project-only [--mfu 0.35]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "paper_rehearsal.json"
SEQS = (1024, 2048, 4096)
ELBO = dict(prefix=96, target=32, mc_num=8, cfg=0.5)  # the study: mc_num 128 (x16 rows)
SAMPLER = dict(prompt=32, gen_length=256)
SAMPLER_RULE = ("temperature", "cfg_scale", "remasking")  # from the study's collect section

log = logging.getLogger("paper_rehearsal")


# ---- worker: one model, one fresh process ----------------------------------------------------------
def reduced(shape):
    """The same model family at test width (the suite's and ``--reduced``'s smoke run)."""
    import dataclasses

    return dataclasses.replace(shape, d=64, n_heads=4, n_kv=4 if shape.n_kv == shape.n_heads else 2,
                               head_dim=16, mlp=96, vocab=shape.vocab)


def build(name: str, small: bool = False):
    """(model float32 eval, adapter, shape) of a 2-block paper-width model built from config."""
    import torch

    from srclib.efficiency.projection import PAPER_SHAPES
    from srclib.models import MODELS

    shape = PAPER_SHAPES[name].with_layers(2)
    if small:
        shape = reduced(shape)
    torch.manual_seed(0)
    if name == "llada":
        from srclib.models.tiny import TinyLM, test_config

        adapter = MODELS["llada-8b-base"]
        cfg = test_config(causal=False, shift=False, vocab_size=shape.vocab, hidden_size=shape.d,
                          n_layers=shape.n_layers, n_heads=shape.n_heads, n_kv_heads=shape.n_kv,
                          mlp_hidden=shape.mlp, max_position_embeddings=max(SEQS) + 512,
                          mask_token_id=adapter.mask_token_id, bos_token_id=None, eos_token_id=None,
                          pad_token_id=None)
        model = TinyLM(cfg).eval()
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        adapter = MODELS["dream-7b-base"]
        cfg = AutoConfig.for_model(
            adapter.standin_model_type, vocab_size=shape.vocab, hidden_size=shape.d,
            intermediate_size=shape.mlp, num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
            num_key_value_heads=shape.n_kv, max_position_embeddings=max(SEQS) + 512, tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        model = AutoModelForCausalLM.from_config(cfg).eval()
    return model, adapter, shape


class _FirstBlock:
    """An adapter view whose model has only its first block (one SparseGPT block)."""

    def __init__(self, adapter) -> None:
        self._a = adapter

    def __getattr__(self, name):
        return getattr(self._a, name)

    def blocks(self, model):
        import torch.nn as nn

        return nn.ModuleList([self._a.blocks(model)[0]])


def _measure(fn):
    """(result, {wall_s, cpu_s, peak_delta_bytes, baseline_bytes}) of fn() under PeakMemory."""
    from srclib.pruning.memory import PeakMemory

    with PeakMemory("cpu", interval=0.002) as mem:
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return out, {"wall_s": wall, "cpu_s": cpu, "peak_delta_bytes": mem.result["peak_delta_bytes"],
                 "baseline_bytes": mem.result["baseline_bytes"]}


def worker(name: str, threads: int, small: bool = False, save=None) -> dict:
    """Measure one model; ``save(out)`` after every stage (a partial record survives an interruption)."""
    save = save or (lambda out: None)
    import dataclasses

    import torch

    from srclib.pruning import calibration as cal
    from srclib import params
    from srclib.diffusion import generate
    from srclib.likelihood import elbo_loglikelihood_batch, model_logits_fn
    from srclib.pruning.core import _adapter_forward, prune_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    global SEQS
    if small:
        SEQS = (64, 128, 256)
    model, adapter, shape = build(name, small)
    build_s = time.perf_counter() - t0
    mask_id = adapter.mask_id(model)
    blocks = adapter.blocks(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out: dict = {"model": name, "shape": dataclasses.asdict(shape), "threads": threads, "build_s": build_s,
                 "weights_bytes": weights, "stages": {}}
    g = torch.Generator().manual_seed(0)
    vocab_hi = min(shape.vocab, mask_id) - 1
    P = params.load(ROOT / "params-gpu.yaml")
    study_cal = P.prune.calibration  # noise_eps, the mass recorder's chunk_size

    def window(T: int) -> torch.Tensor:  # (1, T) clean ids
        return torch.randint(1, vocab_hi, (1, T), generator=g)

    def noised(T: int) -> torch.Tensor:  # one noised pass at t = 0.5, (1, T)
        return cal.noised_passes(window(T), [0.5], mask_id, study_cal.noise_eps, 0, keep_first=adapter.shift,
                                 noise="grid")[:, 0]

    fwd = _adapter_forward(model, adapter)
    st = out["stages"]
    # 1. attention-mass recording, blocks only
    for T in SEQS:
        ids = noised(T)
        # through the whole last block, as rehearsal_flops counts it (the pre-pass default stops earlier)
        mass, m = _measure(lambda: cal.record_pass_mass(model, blocks, ids, study_cal.chunk_size, forward=fwd,
                                                        stop_at_mass=False))
        assert tuple(mass.shape) == (shape.n_layers, 1, T)
        st[f"mass_T{T}"] = {"T": T, "batch": 1, **m}
        log.info("%s mass T=%d: %.1f s, +%.2f GB", name, T, m["wall_s"], m["peak_delta_bytes"] / 1e9)
        save(out)
    # 2. LM head: full forward vs blocks-only forward at T = 1024
    ids = noised(SEQS[0])
    with torch.no_grad():
        _, m_full = _measure(lambda: adapter.logits(model, ids))
        _, m_body = _measure(lambda: _blocks_only(model, blocks, ids, fwd))
    st["forward_full"] = {"T": SEQS[0], "batch": 1, **m_full}
    st["forward_blocks"] = {"T": SEQS[0], "batch": 1, **m_body}
    log.info("%s forward T=1024: full %.1f s +%.2f GB, blocks only %.1f s +%.2f GB", name, m_full["wall_s"],
             m_full["peak_delta_bytes"] / 1e9, m_body["wall_s"], m_body["peak_delta_bytes"] / 1e9)
    save(out)
    # 3. one sink-aware Wanda calibration pass (one-shot, weights from the same forward)
    study = P.prune
    base = study.spec(next(iter(study.instances)))
    wanda = dataclasses.replace(base.with_run(method="wanda", weighting="sink", sparsity=0.5, pattern="unstructured"),
                                calibration=dataclasses.replace(base.calibration, t_grid=[0.5]))
    T = max(SEQS)
    calib = cal.Calibration(windows=window(T), seed=0, windows_per_batch=1, mass_chunk_size=study_cal.chunk_size)
    rep, m = _measure(lambda: prune_model(model, adapter, wanda, calib))
    st["wanda_sink_pass"] = {"T": T, "passes": rep.n_passes, "inputs": rep.inputs, "seconds": rep.seconds,
                                   "cpu_seconds": rep.cpu_seconds, **m}
    log.info("%s sink Wanda pass: %.1f s, +%.2f GB %s", name, m["wall_s"], m["peak_delta_bytes"] / 1e9, rep.seconds)
    save(out)
    # 4. one MC-ELBO request
    fn = model_logits_fn(model, adapter)
    req = [(window(ELBO["prefix"])[0], window(ELBO["target"])[0])]
    _, m = _measure(lambda: elbo_loglikelihood_batch(
        fn, req, mask_id=mask_id, mc_num=ELBO["mc_num"], batch_size=ELBO["mc_num"], cfg=ELBO["cfg"],
        generator=torch.Generator().manual_seed(0), keep_first=adapter.shift))
    st["elbo_request"] = {**ELBO, **m}
    log.info("%s ELBO request (mc_num %d): %.1f s, +%.2f GB", name, ELBO["mc_num"], m["wall_s"],
             m["peak_delta_bytes"] / 1e9)
    save(out)
    # 5. one sampler step at gen length 256
    prompt = window(SAMPLER["prompt"])
    _, m = _measure(lambda: generate(model, prompt, steps=1, gen_length=SAMPLER["gen_length"],
                                     block_length=SAMPLER["gen_length"], mask_id=mask_id, adapter=adapter,
                                     **{k: getattr(P.collect, k) for k in SAMPLER_RULE}))
    st["sampler_step"] = {**SAMPLER, **m}
    log.info("%s sampler step: %.1f s, +%.2f GB", name, m["wall_s"], m["peak_delta_bytes"] / 1e9)
    save(out)
    # 6. one sink-aware SparseGPT block (last: the slowest; mass pre-pass of one noised pass, one clean window)
    sgpt = wanda.with_run(method="sparsegpt")
    calib = cal.Calibration(windows=window(T), seed=0, windows_per_batch=1, mass_chunk_size=study_cal.chunk_size)
    plain = cal.record_pass_mass  # its pre-pass through the whole block, as rehearsal_flops counts it
    cal.record_pass_mass = lambda *a, **kw: plain(*a, **{**kw, "stop_at_mass": False})
    try:
        rep, m = _measure(lambda: prune_model(model, _FirstBlock(adapter), sgpt, calib))
    finally:
        cal.record_pass_mass = plain
    st["sparsegpt_sink_block"] = {"T": T, "passes": rep.n_passes, "inputs": rep.inputs, "blocks": 1,
                                        "seconds": rep.seconds, "cpu_seconds": rep.cpu_seconds, **m}
    log.info("%s sink SparseGPT block: %.1f s, +%.2f GB %s", name, m["wall_s"], m["peak_delta_bytes"] / 1e9,
             rep.seconds)
    save(out)
    return out


def _blocks_only(model, blocks, ids, fwd) -> None:
    """One forward that ends after the last block (what calibration runs: no LM head)."""
    from srclib.pruning import calibration as cal

    with cal._eval(model), cal._stop_after(blocks[-1]):
        cal._forward(model, ids, fwd)


# ---- parent -----------------------------------------------------------------------------------------
def run_workers(names: list[str], threads: int, small: bool = False) -> dict:
    measured = {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "out.json"
            cmd = [sys.executable, __file__, "--worker", name, "--threads", str(threads), "--out", str(dest)] + (
                ["--reduced"] if small else [])
            log.info("worker: %s", " ".join(cmd))
            subprocess.run(cmd, check=True, cwd=ROOT)
            measured[name] = json.loads(dest.read_text())
    return measured


def analyse(measured: dict, mfu: float, fp32_eff: float) -> dict:
    """Measured tables (CPU GFLOP/s from the FLOP model, memory exponent) and the projection."""
    from srclib import params
    from srclib.efficiency import projection as pj

    P = params.load(ROOT / "params-gpu.yaml")
    rows, exps = [], {}
    for name, res in measured.items():
        shape = pj.ModelShape(**res["shape"])
        st = res["stages"]
        flops = pj.rehearsal_flops(shape, st, ELBO, SAMPLER, blocksize=P.prune.sparsegpt.blocksize)
        for key, s in st.items():
            f = flops.get(key)
            rows.append({"model": name, "stage": key, "wall_s": s["wall_s"], "cpu_s": s["cpu_s"],
                         "peak_gb": s["peak_delta_bytes"] / 1e9, "tflop": f / 1e12 if f else None,
                         "gflops_per_s": f / s["wall_s"] / 1e9 if f else None,
                         "gflop_per_cpu_s": f / s["cpu_s"] / 1e9 if f else None,
                         "per_block_s": s["wall_s"] / shape.n_layers if key.startswith(("mass_", "wanda_"))
                         else (s["wall_s"] if key.startswith("sparsegpt") else None)})
        seq = sorted((s for k, s in st.items() if k.startswith("mass_T")), key=lambda s: s["T"])
        Ts = [s["T"] for s in seq]
        exps[name] = {"T": Ts, "memory": pj.loglog_slope(Ts, [s["peak_delta_bytes"] for s in seq]),
                      "time": pj.loglog_slope(Ts, [s["wall_s"] for s in seq])}
        if "forward_full" not in st or "forward_blocks" not in st:
            continue
        full, body = st["forward_full"], st["forward_blocks"]
        head_s = full["wall_s"] - body["wall_s"]
        head_b = full["peak_delta_bytes"] - body["peak_delta_bytes"]
        k = Ts[-1] / full["T"]  # the head is linear in T
        exps[name]["lm_head"] = {"T": full["T"], "seconds": head_s, "bytes": head_b, "T_max": Ts[-1],
                                 "seconds_T_max": k * head_s, "bytes_T_max": k * head_b}
    gpu = pj.H200.with_efficiency(mfu, fp32_eff)
    proj = pj.project_study(P, gpu)
    sched = {n: pj.schedule(proj["jobs"], n) for n in (1, 2, 4, 8)}
    frac, source = adaptive_rows_fraction()
    costs = pj.cost_scenarios(P, gpu, frac)
    return {"measured": rows, "exponents": exps, "projection": proj, "schedule": sched, "gpu": gpu.describe(),
            "cost_scenarios": costs, "mc_rows_fraction": {"value": frac, "source": source}}


ADAPTIVE = ROOT / "benchmarks" / "results" / "adaptive_elbo.json"


def adaptive_rows_fraction(mc_num: int = 128, mc_min: int = 4, z: float = 3.0) -> tuple[float, str]:
    """The sequential MC-ELBO's measured rows per item / mc_num (benchmarks/adaptive_elbo.py): the
    largest over the stand-in tasks run at mc_num 128 and over lm-eval's two rankings, each with
    mc_rank set to the ranking reported (mc_min 4, z 3: its answers agree with the full budget as
    often as two full-budget runs agree with each other)."""
    runs = json.loads(ADAPTIVE.read_text())["runs"]
    fracs = {}
    for r in runs:
        if r["mc_num"] != mc_num:
            continue
        for c in r["curve"]:
            if c["z"] == z and c.get("mc_min") == mc_min and c.get("rank") in ("acc", "acc_norm"):
                fracs[f"{r['task']} {c['rank']}"] = c["rows_fraction"]
    if not fracs:
        raise ValueError(f"{ADAPTIVE}: no run at mc_num {mc_num}, mc_min {mc_min}, z {z} with mc_rank acc / acc_norm")
    worst = max(fracs, key=fracs.get)
    return fracs[worst], (f"{ADAPTIVE.relative_to(ROOT)}: stand-in, mc_num {mc_num}, mc_min {mc_min}, z {z:g}, "
                          "mc_rank = the metric reported; "
                          + ", ".join(f"{t} {f:.3f}" for t, f in sorted(fracs.items())) + f"; the largest ({worst})")


def tables(res: dict) -> str:
    from srclib.efficiency import projection as pj

    lines = ["| model | stage | wall s | CPU s | peak GB beyond weights | TFLOP | GFLOP/s (wall) | GFLOP per CPU-s "
             "| wall s per block |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["measured"]:
        f = lambda v, p=1: "" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"| {r['model']} | {r['stage']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_gb']:.2f} | "
                     f"{f(r['tflop'], 2)} | {f(r['gflops_per_s'], 0)} | {f(r['gflop_per_cpu_s'], 0)} | "
                     f"{f(r['per_block_s'])} |")
    lines += ["", "| model | T | peak-memory exponent in T | time exponent | LM head skipped (measured; linear in T) |",
              "| --- | --- | ---: | ---: | --- |"]
    for name, e in res["exponents"].items():
        h = e.get("lm_head")
        if h is None:
            continue
        lines.append(f"| {name} | {'/'.join(map(str, e['T']))} | {e['memory']:.2f} | {e['time']:.2f} | "
                     f"T={h['T']}: {h['seconds']:.1f} s, {h['bytes'] / 1e9:.2f} GB; T={h['T_max']}: "
                     f"{h['seconds_T_max']:.0f} s, {h['bytes_T_max'] / 1e9:.1f} GB per row |")
    lines += ["", pj.projection_table(res["projection"], res["schedule"], res["gpu"])]
    if "cost_scenarios" in res:
        lines += ["", f"Cost with the sequential MC-ELBO ({res['mc_rows_fraction']['source']}) and sharded "
                  "requests:", "", pj.cost_table(res["cost_scenarios"])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["llada", "dream"], choices=["llada", "dream"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mfu", type=float, default=0.35, help="fraction of the H200's bf16 dense peak reached")
    ap.add_argument("--fp32-eff", type=float, default=0.5, help="fraction of the fp32 peak (SparseGPT, recorder)")
    ap.add_argument("--project-only", action="store_true", help="reuse the measurements in the results JSON")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--from-workers", type=Path, nargs="+", default=None,
                    help="assemble the worker records written by --worker ... --out FILE")
    ap.add_argument("--reduced", action="store_true", help="test widths, T = 64..256 (a smoke run)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.worker:
        worker(a.worker, a.threads, a.reduced, save=lambda out: a.out.write_text(json.dumps(out, indent=1)))
        return
    if a.project_only:
        measured = json.loads(a.json.read_text())["raw"]
    elif a.from_workers:
        measured = {json.loads(f.read_text())["model"]: json.loads(f.read_text()) for f in a.from_workers}
    else:
        t0 = time.perf_counter()
        measured = run_workers(a.models, a.threads, a.reduced)
        log.info("rehearsal wall time %.0f s", time.perf_counter() - t0)
    res = analyse(measured, a.mfu, a.fp32_eff)
    res["raw"] = measured
    res["load_avg"] = os.getloadavg()
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1, default=float))
    print(tables(res))
    for name, e in res["exponents"].items():
        ok = "linear" if e["memory"] < 1.3 else "NOT linear"
        print(f"{name}: peak memory ~ T^{e['memory']:.2f} ({ok}); time ~ T^{e['time']:.2f}")
    print(f"wrote {a.json.relative_to(ROOT) if a.json.is_relative_to(ROOT) else a.json}")


if __name__ == "__main__":
    main()
