"""Overhead of recording attention mass during LLaDA sampling (goal: <= 1.3x).

Runs srclib.diffusion.generate on a random-init TinyLM of tiny-dlm's size (4 layers, d=256,
4 heads, vocab 4098, bidirectional, shifted logits) with and without srclib.attention.record_mass
(the recorder reads and resets the mass in on_step, exactly as srclib.trajectories.record does), and
prints the times and their ratio.  Usage:

    .venv/bin/python benchmarks/sampler_overhead.py [--batch 16] [--prompt 32] [--gen 64] [--steps 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from srclib.attention import record_mass
from srclib.diffusion import generate
from srclib import params
from srclib.models.tiny import TinyLM
from srclib.train.config import study_config


def build(seed: int = 0) -> TinyLM:
    cfg = study_config(params.load().train, causal=False, shift=True)  # the trained tiny-dlm's config
    torch.manual_seed(seed)
    return TinyLM(cfg).eval()


def run(model: TinyLM, prompt: torch.Tensor, gen: int, steps: int, record: bool, chunk_size: int) -> float:
    collect = params.load().collect  # the study's sampler rule
    kw = dict(steps=steps, gen_length=gen, block_length=gen, mask_id=4097, shift=True, temperature=collect.temperature,
              cfg_scale=collect.cfg_scale, remasking=collect.remasking)
    t0 = time.perf_counter()
    if record:
        kept = []
        with record_mass(chunk_size=chunk_size) as rec:

            def on_step(step, ids, info):
                kept.append(rec.mass.cpu())
                rec.reset()

            generate(model, prompt, on_step=on_step, **kw)
    else:
        generate(model, prompt, **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=params.load().collect.chunk_size)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); "
                    "1 is far less noisy on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 4096, (args.batch, args.prompt), generator=g)
    prompt[:, 0] = 4096
    run(model, prompt[:, :8], 8, 2, True, args.chunk_size)  # warm-up
    plain, rec = [], []
    for _ in range(args.repeats):  # interleaved, min of repeats: robust to other load on the machine
        plain.append(run(model, prompt, args.gen, args.steps, False, args.chunk_size))
        rec.append(run(model, prompt, args.gen, args.steps, True, args.chunk_size))
    a, b = min(plain), min(rec)
    print(f"threads={torch.get_num_threads()} batch={args.batch} T={args.prompt + args.gen} steps={args.steps}")
    print(f"without recording: {a:.3f} s ({a / args.steps * 1000:.1f} ms/step)")
    print(f"with recording:    {b:.3f} s ({b / args.steps * 1000:.1f} ms/step)")
    print(f"ratio: {b / a:.3f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
