"""Cost of srclib.attention.record_mass: forward time with the recorder / plain forward, and the
recorder's peak extra memory as a function of chunk_size.

    .venv/bin/python benchmarks/attention_overhead.py [--threads 2] [--repeats 7] [--json out.json]

Models: a random-init TinyLM of tiny-dlm's config (srclib.train.config.study_config from params.yaml:
4 layers, d=256, 4 heads, vocab 4096 + 4 special tokens, bidirectional; inputs up to train.max_len)
and, when models/smollm2-135m exists, SmolLM2-135M (30 layers, GQA 9/3, causal). Sequence lengths
128 and 512. Times: median over ``repeats`` interleaved plain/recorded forwards (no_grad, fp32);
``--clock cpu --threads 1`` measures process CPU time, which other processes on a shared machine
barely disturb.
Memory: ``key_mass`` on the model's attention shape (B, H, T, head_dim), in a fresh subprocess per
chunk size: the peak growth of the resident set over the inputs, sampled every 0.2 ms by a thread
(torch's CPU allocator is invisible to tracemalloc; torch ops release the GIL). Inside a real forward the
recorder's temporaries usually fit in memory the forward itself has just freed, so the process peak grows by less
(often 0).
Goal: time ratio <= 1.3.
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

from srclib import params, paths  # noqa: E402
from srclib.attention import record_mass  # noqa: E402
from srclib.models.tiny import TinyLM  # noqa: E402
from srclib.train.config import study_config  # noqa: E402


def tiny_model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(study_config(params.load().train, causal=False, shift=True)).eval()


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_ratio(model, ids, repeats: int, chunk_size: int, clock: str = "wall") -> dict:
    now = CLOCKS[clock]
    forward(model, ids)  # warm-up
    with record_mass(chunk_size=chunk_size):
        forward(model, ids)
    plain, rec = [], []
    for _ in range(repeats):  # interleaved, so machine load drifts hit both alike
        t0 = now()
        forward(model, ids)
        plain.append(now() - t0)
        t0 = now()
        with record_mass(chunk_size=chunk_size):
            forward(model, ids)
        rec.append(now() - t0)
    p, r = statistics.median(plain), statistics.median(rec)
    return {"plain_s": p, "recorded_s": r, "ratio": r / p}


MEM_CHILD = r"""
import os, sys, threading, time, torch
sys.path.insert(0, {root!r})
from srclib.attention import key_mass
torch.set_num_threads({threads})
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
g = torch.Generator().manual_seed(0)
q = torch.randn({batch}, {heads}, {seq}, {hd}, generator=g)
k = torch.randn({batch}, {kv_heads}, {seq}, {hd}, generator=g)
key_mass(q[:, :, :8], k[:, :, :8], chunk_size=8)  # warm-up of the code path
peak, done = [0], threading.Event()
def sample():  # torch ops release the GIL: this thread sees the RSS while key_mass runs
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0002)
base = rss()
th = threading.Thread(target=sample)
th.start()
for _ in range(3):
    key_mass(q, k, is_causal={causal}, chunk_size={chunk})
done.set()
th.join()
print(max(0, peak[0] - base) / 2**20)
"""


# attention shapes per model: (query heads, key/value heads, head dim, causal)
ATTN_SHAPES = {"tiny-dlm (random init)": (4, 4, 64, False), "smollm2-135m": (9, 3, 64, True)}


def extra_memory_mb(name: str, batch: int, seq: int, chunk: int, threads: int) -> tuple[float, float]:
    """(measured peak-RSS growth of one key_mass call, analytic size of one score chunk), in MB."""
    heads, kv_heads, hd, causal = ATTN_SHAPES[name]
    code = MEM_CHILD.format(root=str(ROOT), batch=batch, heads=heads, kv_heads=kv_heads, seq=seq, hd=hd,
                            causal=causal, chunk=chunk, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    analytic = batch * heads * min(chunk, seq) * seq * 4 / 2**20
    return float(out.stdout.strip().splitlines()[-1]), analytic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--chunks", type=int, nargs="+", default=[32, 128, 256, 512])
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="cpu: process CPU time, robust to other load on the machine (use with --threads 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "batch": args.batch, "clock": args.clock, "load_avg_start": os.getloadavg(),
               "time": [], "memory": []}
    for name, build in MODELS.items():
        model = build()
        if model is None:
            print(f"{name}: not built (run the train stage); skipped")
            continue
        for seq in args.seqs:
            ids = torch.randint(4, 4000, (args.batch, seq), generator=torch.Generator().manual_seed(0))
            r = time_ratio(model, ids, args.repeats, chunk_size=256, clock=args.clock)
            results["time"].append({"model": name, "seq": seq, "chunk_size": 256, **r})
            print(f"{name:24s} seq {seq:4d}: plain {r['plain_s'] * 1e3:8.1f} ms  recorded "
                  f"{r['recorded_s'] * 1e3:8.1f} ms  ratio {r['ratio']:.3f}", flush=True)
        del model
        seq = max(args.seqs)
        for chunk in ([] if args.no_memory else args.chunks):
            mb, analytic = extra_memory_mb(name, args.batch, seq, chunk, args.threads)
            results["memory"].append({"model": name, "seq": seq, "chunk_size": chunk, "extra_peak_mb": mb,
                                      "score_chunk_mb": analytic})
            print(f"{name:24s} seq {seq:4d} chunk {chunk:4d}: recorder peak RSS {mb:8.1f} MB "
                  f"(one (B, H, chunk, T) float32 score block: {analytic:.1f} MB)", flush=True)
    results["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
