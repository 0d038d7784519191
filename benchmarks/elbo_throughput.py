"""MC-ELBO evaluation throughput vs the raw batched forward of the same model (goal: >= 0.8x).

Model: a random-init TinyLM of tiny-dlm's config (``srclib.train.config.study_config`` from
params.yaml's ``train:``: 4 layers, d=256, 4 heads, SwiGLU 688, vocab 4096 + 4 special tokens,
bidirectional, shifted logits), float32. Both sides run forward passes of ``--batch`` rows of
``--seq-len`` tokens:

* raw:  ``model(input_ids)`` on random ids, nothing else;
* ELBO: ``srclib.likelihood.elbo_loglikelihood_batch`` on requests of ``seq_len - target_len``
  prefix + ``target_len`` target tokens, ``mc_num`` rows each, packed ``--batch`` rows per forward
  (the mask draws, the noising, the gather of masked-position logits and the CE included).

Throughput = sequences (rows) per second; the ratio ELBO / raw is printed. Usage::

    .venv/bin/python benchmarks/elbo_throughput.py [--batch 32] [--seq-len 128] [--target-len 32]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from srclib.likelihood import elbo_loglikelihood_batch, model_logits_fn
from srclib.models import get_adapter
from srclib import params
from srclib.models.tiny import TinyLM
from srclib.train.config import study_config

TINY_DLM = study_config(params.load().train, causal=False, shift=True)  # the trained tiny-dlm's config


# wall: what a user waits; cpu: CPU time of this process (steadier on a shared machine)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _best_interleaved(fns, repeats: int, clock) -> list[float]:
    """Best-of-``repeats`` time of each function on ``clock``, runs interleaved (a, b, a, b, ...)
    so that load from other processes hits both sides alike."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = clock()
            fn()
            best[i] = min(best[i], clock() - t)
    return best


def run(batch: int = 32, seq_len: int = 128, target_len: int = 32, mc_num: int = 8,
        n_requests: int = 16, repeats: int = 5, seed: int = 0, threads: int | None = None,
        clock: str = "wall") -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = TinyLM(TINY_DLM).eval()
    adapter = get_adapter("tiny-dlm")
    fn = model_logits_fn(model, adapter)
    g = torch.Generator().manual_seed(seed)
    rows = n_requests * mc_num
    if rows % batch:
        raise ValueError(f"n_requests * mc_num ({rows}) must be a multiple of --batch ({batch})")
    ids = torch.randint(4, 4096, (batch, seq_len), generator=g)  # (B, T)
    reqs = [(torch.cat([torch.tensor([0]), torch.randint(4, 4096, (seq_len - target_len - 1,), generator=g)]),
             torch.randint(4, 4096, (target_len,), generator=g)) for _ in range(n_requests)]

    def raw():
        with torch.no_grad():
            for _ in range(rows // batch):
                model(input_ids=ids)

    def elbo():
        gens = [torch.Generator().manual_seed(i) for i in range(n_requests)]
        elbo_loglikelihood_batch(fn, reqs, mask_id=TINY_DLM.mask_token_id, mc_num=mc_num, batch_size=mc_num,
                                 generator=gens, keep_first=True, forward_batch=batch)

    t_raw, t_elbo = _best_interleaved([raw, elbo], repeats, CLOCKS[clock])
    out = {"batch": batch, "seq_len": seq_len, "target_len": target_len, "mc_num": mc_num,
           "rows": rows, "threads": torch.get_num_threads(), "clock": clock,
           "raw_seq_per_s": rows / t_raw, "elbo_seq_per_s": rows / t_elbo, "ratio": t_raw / t_elbo}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--target-len", type=int, default=32)
    p.add_argument("--mc-num", type=int, default=8)
    p.add_argument("--n-requests", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    a = p.parse_args()
    r = run(a.batch, a.seq_len, a.target_len, a.mc_num, a.n_requests, a.repeats,
            threads=a.threads, clock=a.clock)
    print(json.dumps(r, indent=2))
    print(f"MC-ELBO {r['elbo_seq_per_s']:.1f} seq/s vs raw forward {r['raw_seq_per_s']:.1f} seq/s: "
          f"ratio {r['ratio']:.3f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
