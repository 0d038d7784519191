"""2:4 semi-structured sparsity on a GPU: does it buy time? (one prepared script, < 5 min on an H200)

    python benchmarks/gpu_semistructured.py [--repeats 50] [--warmup 10] [--out result.json]

Measures, in bfloat16, with CUDA events (warmup, then the median of ``repeats`` timed calls):

1. LLaDA-8B-shaped linears, weight (C_out, C_in) in {(4096, 4096): q/k/v/attn_out,
   (12288, 4096): ff_proj/up_proj, (4096, 12288): ff_out}, on 1x1024 and 8x1024 tokens:
   ``F.linear(x, W)`` dense (cuBLAS) vs ``F.linear(x, to_sparse_semi_structured(W))`` for each
   available backend (cuSPARSELt, torch's default, and CUTLASS), with W zeroed 2:4 by magnitude;
   outputs checked against the dense product; the compressed bytes torch actually stores.
2. One whole tiny-dlm-sized denoising step (4 layers, d=256, SwiGLU 688, vocab 4098, random init,
   2:4 by magnitude) on 1x192 and 8x192 tokens, dense vs every prunable linear swapped for a
   semi-structured one (weights zero-padded to the backend's minimum shape where needed; the
   padding is part of the timed work).  Needs srclib's model code (transformers); skipped with a
   reason otherwise.

Without CUDA (or on a GPU older than sm80, which has no sparse tensor cores) it prints a message
and exits 0.  The last stdout line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LINEAR_SHAPES = {"qkvo_4096x4096": (4096, 4096), "ff_up_12288x4096": (12288, 4096), "ff_out_4096x12288": (4096, 12288)}
TOKEN_SHAPES = {"1x1024": (1, 1024), "8x1024": (8, 1024)}
TINY_SHAPES = {"1x192": (1, 192), "8x192": (8, 192)}
DTYPE = torch.bfloat16


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def two_four(w: torch.Tensor) -> torch.Tensor:
    """Zero the 2 smallest |w| of every 4 consecutive inputs. w: (C_out, C_in)."""
    r, c = w.shape
    g = w.reshape(r, c // 4, 4)  # (C_out, C_in/4, 4)
    drop = torch.sort(g.abs(), dim=-1, stable=True).indices[..., :2]
    return g.scatter(-1, drop, 0).reshape(r, c)


def cuda_time(fn, repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "n": repeats}


def backends():
    """name -> context setter for SparseSemiStructuredTensor's backend (only those that work here)."""
    from torch.sparse import SparseSemiStructuredTensor

    out = {}
    for name, force in (("cusparselt", False), ("cutlass", True)):
        SparseSemiStructuredTensor._FORCE_CUTLASS = force
        try:
            w = two_four(torch.randn(128, 128, device="cuda", dtype=DTYPE))
            s = torch.sparse.to_sparse_semi_structured(w)
            F.linear(torch.randn(64, 128, device="cuda", dtype=DTYPE), s)
            torch.cuda.synchronize()
            out[name] = force
        except Exception as exc:  # backend not built/supported here
            log(f"backend {name} unavailable: {type(exc).__name__}: {exc}")
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return out


def set_backend(force: bool) -> None:
    torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = force


def stored_bytes(s) -> int:
    parts = [getattr(s, k, None) for k in ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask")]
    return sum(p.numel() * p.element_size() for p in parts if p is not None)


def bench_linears(bk: dict[str, bool], repeats: int, warmup: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    res = {}
    for lname, (cout, cin) in LINEAR_SHAPES.items():
        w = two_four(torch.randn(cout, cin, device="cuda", dtype=DTYPE, generator=g) * 0.02)
        for tname, (b, t) in TOKEN_SHAPES.items():
            x = torch.randn(b * t, cin, device="cuda", dtype=DTYPE, generator=g)  # (N, C_in)
            ref = F.linear(x, w)  # (N, C_out)
            dense = cuda_time(lambda: F.linear(x, w), repeats, warmup)
            entry = {"dense": dense, "flops_dense": 2 * cout * cin * b * t,
                     "dense_tflops": 2 * cout * cin * b * t / dense["median_ms"] / 1e9}
            for name, force in bk.items():
                set_backend(force)
                s = torch.sparse.to_sparse_semi_structured(w)
                y = F.linear(x, s)
                rel = float((y.float() - ref.float()).abs().max() / ref.float().abs().max())
                tm = cuda_time(lambda s=s: F.linear(x, s), repeats, warmup)
                entry[name] = {**tm, "speedup_vs_dense": dense["median_ms"] / tm["median_ms"],
                               "max_rel_err": rel, "stored_bytes": stored_bytes(s),
                               "dense_bytes": w.numel() * w.element_size()}
                entry[name]["stored_over_dense"] = entry[name]["stored_bytes"] / entry[name]["dense_bytes"]
                del s
            set_backend(False)
            res[f"{lname}@{tname}"] = entry
            log(f"{lname}@{tname}: dense {dense['median_ms']:.3f} ms; "
                + "; ".join(f"{n} x{entry[n]['speedup_vs_dense']:.2f}" for n in bk))
    return res


class SemiLinear(nn.Module):
    """y = x W^T with W 2:4 semi-structured, zero-padded to the backend's minimum (rows, cols)."""

    def __init__(self, lin: nn.Linear, min_rows: int, min_cols: int):
        super().__init__()
        w = lin.weight.detach()
        self.cout, self.cin = w.shape
        pr, pc = (-self.cout) % min_rows, (-self.cin) % min_cols
        self.pad_cols = pc
        w = F.pad(w, (0, pc, 0, pr))
        self.weight = torch.sparse.to_sparse_semi_structured(w)

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.cin)
        if self.pad_cols:
            x2 = F.pad(x2, (0, self.pad_cols))
        y = F.linear(x2, self.weight)
        return y[:, : self.cout].reshape(*lead, self.cout)


def bench_tiny_step(bk: dict[str, bool], repeats: int, warmup: int) -> dict:
    try:
        from srclib.models import get_adapter
        from srclib import params
        from srclib.models.tiny import TinyLM
        from srclib.train.config import study_config
    except Exception as exc:
        return {"skipped": f"srclib model code unavailable: {type(exc).__name__}: {exc}"}
    import copy

    torch.manual_seed(0)
    cfg = study_config(params.load().train, causal=False, shift=True)  # the trained tiny-dlm's config
    model = TinyLM(cfg).eval().to("cuda", DTYPE)
    ad = get_adapter("tiny-dlm")
    with torch.no_grad():
        for block in ad.blocks(model):
            for lin in ad.prunable(block).values():
                lin.weight.copy_(two_four(lin.weight))
    res = {}
    sparse_models = {}
    for name, force in bk.items():
        set_backend(force)
        sub = (torch.sparse.SparseSemiStructuredTensorCUTLASS if force
               else torch.sparse.SparseSemiStructuredTensorCUSPARSELT)
        cons = sub._DTYPE_SHAPE_CONSTRAINTS[DTYPE]
        sm = copy.deepcopy(model)
        for block in ad.blocks(sm):
            for lname, lin in list(ad.prunable(block).items()):
                parent_name, _, leaf = lname.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, leaf, SemiLinear(lin, cons.sparse_min_rows, cons.sparse_min_cols))
        sparse_models[name] = (sm, force)
    set_backend(False)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for tname, (b, t) in TINY_SHAPES.items():
            ids = torch.randint(0, cfg.vocab_size, (b, t), generator=g).cuda()
            ref = ad.logits(model, ids).float()
            dense = cuda_time(lambda: ad.logits(model, ids), repeats, warmup)
            entry = {"dense": dense}
            for name, (sm, force) in sparse_models.items():
                set_backend(force)
                out = ad.logits(sm, ids).float()
                rel = float((out - ref).abs().max() / ref.abs().max())
                tm = cuda_time(lambda: ad.logits(sm, ids), repeats, warmup)
                entry[name] = {**tm, "speedup_vs_dense": dense["median_ms"] / tm["median_ms"], "max_rel_err": rel}
            set_backend(False)
            res[tname] = entry
            log(f"tiny step {tname}: dense {dense['median_ms']:.3f} ms; "
                + "; ".join(f"{n} x{entry[n]['speedup_vs_dense']:.2f}" for n in sparse_models))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    result: dict = {"torch": torch.__version__}
    if not torch.cuda.is_available():
        log("gpu_semistructured: no CUDA device; nothing to measure (skipped)")
        result["skipped"] = "no CUDA"
        print(json.dumps(result))
        return 0
    cap = torch.cuda.get_device_capability()
    result.update(device=torch.cuda.get_device_name(), capability=list(cap), cuda=torch.version.cuda)
    if cap < (8, 0):
        log(f"gpu_semistructured: {result['device']} (sm{cap[0]}{cap[1]}) has no sparse tensor cores (skipped)")
        result["skipped"] = "compute capability < 8.0"
        print(json.dumps(result))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    bk = backends()
    result["backends"] = sorted(bk)
    if not bk:
        result["skipped"] = "no semi-structured backend works on this build"
        print(json.dumps(result))
        return 0
    with torch.inference_mode():
        result["linears"] = bench_linears(bk, args.repeats, args.warmup)
    result["tiny_dlm_step"] = bench_tiny_step(bk, args.repeats, args.warmup)
    result["settings"] = {"repeats": args.repeats, "warmup": args.warmup, "dtype": "bfloat16"}
    result["wall_s"] = round(time.time() - t0, 1)
    line = json.dumps(result, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
