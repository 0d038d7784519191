"""Measured vs FLOP-proportional speedup of compact structured models (prints ratios; numbers go
to the report by hand, never into metrics).

Models (random weights, built in-process; no checkpoint needed):
  * tiny-dlm: TinyLM of the study's tiny-dlm config (srclib.train.config.study_config from
    params.yaml: 4 layers, d=256, 4 heads, MLP 688, vocab 4100), timed at B=1 and B=8, T=192;
  * smollm2-135m: a Llama built from the real SmolLM2-135M config (hidden 576, intermediate 1536,
    30 layers, 9 heads, 3 KV heads, vocab 49152, tied embeddings), timed at B=1, T=192.
Each is compacted (srclib.models.structure.apply_compact) with a UNIFORM structure at ratio 0.3
and 0.5: every block removes round(ratio * n) of its n KV groups (at least one kept) and of its
MLP channels, the lowest indices (timing only: which units go does not matter); no compensation
bias.  One full forward (adapter.logits) of dense vs compact is timed interleaved
(srclib.efficiency.structured.structured_report).

    python benchmarks/structured_speed.py                  # threads=1, process clock, 10 repeats
    python benchmarks/structured_speed.py --threads 4 --clock wall --repeats 20 --models tiny-dlm

Columns: model, ratio, shape, achieved removed share of the block linear parameters, ideal
speedup (dense FLOPs / compact FLOPs of a full forward, attention and LM head included), measured
speedup (median dense step / median compact step) and measured/ideal.  On a shared machine keep
--threads 1 and the process clock (CPU seconds of this process).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the printed table

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srclib import params  # noqa: E402
from srclib.efficiency.structured import structured_report  # noqa: E402
from srclib.efficiency.timing import CLOCKS  # noqa: E402
from srclib.models import MODELS  # noqa: E402
from srclib.models.base import Adapter  # noqa: E402
from srclib.models.structure import Structure, apply_compact, block_linears, head_layout  # noqa: E402
from srclib.params import EfficiencyParams  # noqa: E402

RATIOS = (0.3, 0.5)
# the real SmolLM2-135M(-Instruct) config (its config.json); MODELS' standin_config is test size
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
SHAPES = {"tiny-dlm": [(1, 192), (8, 192)], "smollm2-135m": [(1, 192)]}


def tiny_dlm(seed: int) -> tuple[nn.Module, Adapter]:
    from srclib.models.tiny import TinyLM
    from srclib.train.config import study_config

    torch.manual_seed(seed)
    return TinyLM(study_config(params.load().train, causal=False, shift=True)).eval(), MODELS["tiny-dlm"]


def smollm2(seed: int) -> tuple[nn.Module, Adapter]:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", **SMOLLM2_135M)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg).eval(), MODELS["smollm2-135m"]


BUILDERS = {"tiny-dlm": tiny_dlm, "smollm2-135m": smollm2}


def n_removed(ratio: float, n: int) -> int:
    """round(ratio * n) units (halves up), keeping at least one."""
    return min(n - 1, max(0, math.floor(ratio * n + 0.5)))


def uniform_structure(model: nn.Module, adapter: Adapter, ratio: float) -> Structure:
    """Every block drops its lowest-index round(ratio * n) KV groups and MLP channels."""
    layout = head_layout(adapter, model)
    heads, channels = [], []
    for block in adapter.blocks(model):
        gate = block_linears(adapter, block)["gate"]
        h = torch.ones(layout.n_kv_heads, dtype=torch.bool)
        h[: n_removed(ratio, layout.n_kv_heads)] = False
        c = torch.ones(gate.out_features, dtype=torch.bool)
        c[: n_removed(ratio, gate.out_features)] = False
        heads.append(h)
        channels.append(c)
    return Structure(heads=heads, channels=channels, bias={})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="process", choices=sorted(CLOCKS),
                    help="CPU seconds of this process (robust on a shared CPU) or wall time")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for r in args.ratios:
        if not 0 < r < 1:
            raise SystemExit(f"--ratios must lie in (0, 1), got {r}")

    print(f"{'model':<14}{'ratio':>6}{'shape':>8}{'removed':>9}{'ideal x':>9}{'measured x':>12}{'meas/ideal':>12}"
          f"{'dense ms':>10}{'compact ms':>12}", flush=True)
    env = None
    for name in args.models:
        dense, adapter = BUILDERS[name](args.seed)
        cfg = EfficiencyParams(instances=[name], token_shapes=[list(s) for s in SHAPES[name]], repeats=args.repeats,
                               warmup=args.warmup, threads=args.threads, clock=args.clock,
                               memory_dtype="bfloat16")
        for ratio in args.ratios:
            compact = copy.deepcopy(dense)
            apply_compact(compact, adapter, uniform_structure(compact, adapter, ratio))
            rep = structured_report(compact, dense, adapter, cfg, seed=args.seed)
            env = rep["env"]
            for key, lat in rep["latency"].items():
                sp = lat["speedup"]
                print(f"{name:<14}{ratio:>6.2f}{key:>8}{rep['model']['removed_share']:>9.3f}{sp['ideal']:>9.2f}"
                      f"{sp['measured']:>12.2f}{sp['measured_over_ideal']:>12.2f}"
                      f"{1e3 * lat['step']['dense']['median_s']:>10.1f}"
                      f"{1e3 * lat['step']['compact']['median_s']:>12.1f}",
                      flush=True)
            del compact
        del dense
    if env is not None:
        print(f"# {env['device_description']}; torch {env['torch']}; threads {args.threads}; clock {args.clock}; "
              f"repeats {args.repeats} (+{args.warmup} warmup); load avg {env['loadavg_1m']} -> "
              f"{env['loadavg_1m_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
