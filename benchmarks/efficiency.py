"""Dense vs sparse (CSR) cost of one denoising step, on CPU or whatever device is given.

    python benchmarks/efficiency.py                       # in-process tiny-dlm-sized random model,
                                                          # zeroed 50% / 70% unstructured and 2:4
    python benchmarks/efficiency.py wanda50=pruned/X ...  # srclib checkpoint folders (name=dir or dir)

Options: --shapes 1x192,8x192 --repeats 20 --warmup 3 --threads N --memory-dtype bfloat16
--device cpu --clock wall|process --out results.json (the full reports; the study's own metrics come from the
efficiency stage, srclib.stages.efficiency, not from this script).
Prints one table row per (model, token shape): FLOP ratio, memory ratios, dense ms, CSR ms and
the CSR/dense time ratio (> 1: the sparse model is slower).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srclib.efficiency.accounting import DTYPES  # noqa: E402
from srclib.efficiency.sparse import zero_by_magnitude_  # noqa: E402
from srclib.efficiency.summary import report_rows  # noqa: E402
from srclib.efficiency.timing import CLOCKS, efficiency_report  # noqa: E402
from srclib.files import write_json  # noqa: E402
from srclib.params import EfficiencyParams  # noqa: E402

# name -> (sparsity, pattern) of the in-process models
SYNTHETIC = {
    "random-u50": (0.5, "unstructured"),
    "random-u70": (0.7, "unstructured"),
    "random-2:4": (0.5, "2:4"),
}


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shapes must look like 1x192,8x192, got {text!r}") from None


def _tiny_dlm_sized(seed: int):
    from srclib.models import get_adapter
    from srclib import params
    from srclib.models.tiny import TinyLM
    from srclib.train.config import study_config

    torch.manual_seed(seed)
    cfg = study_config(params.load().train, causal=False, shift=True)  # the trained tiny-dlm's config
    return TinyLM(cfg).eval(), get_adapter("tiny-dlm")


def _models(args):
    """Yield (name, model, adapter) one at a time (only one model in memory)."""
    if args.checkpoints:
        from srclib.models import load

        for item in args.checkpoints:
            name, _, folder = item.rpartition("=")
            model, _tok, adapter = load(folder)
            yield name or Path(folder).name, model, adapter
        return
    for name, (sparsity, pattern) in SYNTHETIC.items():
        model, adapter = _tiny_dlm_sized(args.seed)
        zero_by_magnitude_(model, adapter, sparsity, pattern)
        yield name, model, adapter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", help="checkpoint folders, as DIR or NAME=DIR")
    ap.add_argument("--shapes", type=_shapes, default=[(1, 192), (8, 192)])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--memory-dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                    help="wall time, or CPU seconds of this process (robust on a shared CPU)")
    ap.add_argument("--out", type=Path, default=None, help="write the full reports here (JSON)")
    args = ap.parse_args(argv)

    reports = {}
    header = (f"{'model':<14}{'shape':>7}{'sparsity':>9}{'2:4':>5}{'FLOPs':>7}{'mem csr32':>10}"
              f"{'mem csr64':>10}{'mem 2:4':>8}{'dense ms':>10}{'csr ms':>9}{'csr/dense':>10}"
              f"{'lin csr/dense':>14}{'lin share':>10}")
    print(header)
    for name, model, adapter in _models(args):
        cfg = EfficiencyParams(instances=[name], token_shapes=[list(s) for s in args.shapes], model_token_shapes={},
                               repeats=args.repeats,
                               warmup=args.warmup, threads=args.threads or torch.get_num_threads(),
                               clock=args.clock, memory_dtype=args.memory_dtype)
        rep = efficiency_report(model, adapter, cfg, device=args.device, seed=args.seed)
        reports[name] = rep
        for row, lat in zip(report_rows(name, rep), rep["latency"].values()):
            m24 = row["mem_2to4_ratio"]
            print(f"{name:<14}{row['shape']:>7}{row['sparsity']:>9.3f}{'y' if row['keeps_2_of_4'] else 'n':>5}"
                  f"{row['flops_ratio']:>7.3f}{row['mem_csr_int32_ratio']:>10.3f}{row['mem_csr_int64_ratio']:>10.3f}"
                  f"{'-' if m24 is None else f'{m24:.3f}':>8}{row['dense_step_ms']:>10.2f}{row['sparse_step_ms']:>9.2f}"
                  f"{row['step_sparse_over_dense']:>10.2f}{row['linears_sparse_over_dense']:>14.2f}"
                  f"{lat['linears']['dense_share_of_step']:>10.2f}", flush=True)
        del model
    env = next(iter(reports.values()))["env"]
    print(f"# {env['device_description']}; torch {env['torch']}; threads {env['threads']}; "
          f"load avg {env['loadavg_1m']} -> {env['loadavg_1m_after']}; memory dtype {args.memory_dtype}; "
          f"clock {args.clock}")
    if args.out:
        write_json(args.out, {"instances": reports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
