"""Cost of srclib.attention.record_mass: forward time with the recorder / plain forward, and the
recorder's peak extra memory as a function of chunk_size.

    .venv/bin/python benchmarks/attention_overhead.py [--threads 2] [--repeats 7] [--json out.json]

Models: a random-init tiny-dlm-sized TinyLM (4 layers, d=256, 4 heads, vocab 4100, bidirectional)
and, when models/smollm2-135m exists, SmolLM2-135M (30 layers, GQA 9/3, causal). Sequence lengths
128 and 512. Times: median over ``repeats`` interleaved plain/recorded forwards (no_grad, fp32).
Memory: the recorder's allocations are measured in a fresh subprocess per chunk size as the growth
of peak RSS (ru_maxrss) from a plain forward to a recorded forward of the same input (torch's CPU
allocator is invisible to tracemalloc). Goal: time ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from srclib import paths  # noqa: E402
from srclib.attention import record_mass  # noqa: E402
from srclib.models.tiny import TinyConfig, TinyLM  # noqa: E402


def tiny_model() -> TinyLM:
    torch.manual_seed(0)
    cfg = TinyConfig(vocab_size=4100, hidden_size=256, n_layers=4, n_heads=4, mlp_hidden=688,
                     max_position_embeddings=1024, causal=False, shift_logits=True, mask_token_id=3)
    return TinyLM(cfg).eval()


def smollm2_model():
    folder = paths.model_dir("smollm2-135m")
    if not (folder / "config.json").is_file():
        return None
    from srclib.models import load

    return load(folder, dtype="float32")[0]


MODELS = {"tiny-dlm (random init)": tiny_model, "smollm2-135m": smollm2_model}


def forward(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def time_ratio(model, ids, repeats: int, chunk_size: int) -> dict:
    forward(model, ids)  # warm-up
    with record_mass(chunk_size=chunk_size):
        forward(model, ids)
    plain, rec = [], []
    for _ in range(repeats):  # interleaved, so machine load drifts hit both alike
        t0 = time.perf_counter()
        forward(model, ids)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with record_mass(chunk_size=chunk_size):
            forward(model, ids)
        rec.append(time.perf_counter() - t0)
    p, r = statistics.median(plain), statistics.median(rec)
    return {"plain_s": p, "recorded_s": r, "ratio": r / p}


MEM_CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {root!r})
sys.argv = ["x"]
from benchmarks.attention_overhead import MODELS, forward
from srclib.attention import record_mass
torch.set_num_threads({threads})
model = MODELS[{name!r}]()
ids = torch.randint(4, 4000, ({batch}, {seq}), generator=torch.Generator().manual_seed(0))
forward(model, ids); forward(model, ids)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with record_mass(chunk_size={chunk}):
    forward(model, ids)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024.0)
"""


def extra_memory_mb(name: str, batch: int, seq: int, chunk: int, threads: int) -> float:
    code = MEM_CHILD.format(root=str(ROOT), name=name, batch=batch, seq=seq, chunk=chunk, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--chunks", type=int, nargs="+", default=[32, 128, 256, 512])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "batch": args.batch, "load_avg_start": os.getloadavg(), "time": [],
               "memory": []}
    for name, build in MODELS.items():
        model = build()
        if model is None:
            print(f"{name}: not built (run the train stage); skipped")
            continue
        for seq in args.seqs:
            ids = torch.randint(4, 4000, (args.batch, seq), generator=torch.Generator().manual_seed(0))
            r = time_ratio(model, ids, args.repeats, chunk_size=256)
            results["time"].append({"model": name, "seq": seq, "chunk_size": 256, **r})
            print(f"{name:24s} seq {seq:4d}: plain {r['plain_s'] * 1e3:8.1f} ms  recorded "
                  f"{r['recorded_s'] * 1e3:8.1f} ms  ratio {r['ratio']:.3f}", flush=True)
        del model
        seq = max(args.seqs)
        for chunk in args.chunks:
            mb = extra_memory_mb(name, args.batch, seq, chunk, args.threads)
            results["memory"].append({"model": name, "seq": seq, "chunk_size": chunk, "extra_peak_mb": mb})
            print(f"{name:24s} seq {seq:4d} chunk {chunk:4d}: extra peak RSS {mb:8.1f} MB", flush=True)
    results["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
