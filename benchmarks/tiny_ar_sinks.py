"""Does the tiny AR model grow an attention sink on [BOS] under some training recipe?

    .venv/bin/python benchmarks/tiny_ar_sinks.py [--minutes-per-recipe M] [--recipes a,b] [--probe-every 25]
                                                 [--json benchmarks/results/tiny_ar_sinks.json]

The embedded tiny-ar (params.yaml ``train:``; srclib.train) has no [BOS] sink: its attention is
local. Gu et al. (ICLR 2025, "When attention sink emerges in language models: an empirical view")
find sinks emerge only after effective optimisation on enough data, more with a larger learning
rate and with weight decay. This script trains the tiny AR under a few recipes on one thread and
follows every head's attention to key 0 ([BOS]) over training.

Training is srclib's own: the tokenizer (``srclib.train.tokenizer.train_tokenizer`` on the corpus
train split, as the train stage), the token streams and [BOS]-led windows, the model
(``srclib.train.config.tiny_config`` -> ``srclib.models.tiny.TinyLM``, seeded with ``train.seed``)
and the objective/optimiser/schedule (``srclib.train.recipes.train_ar`` -> ``srclib.train.loop``:
AdamW(0.9, 0.95), wd on matrices, clip 1.0, linear warmup + cosine). A recipe is params.yaml's
``train:`` section with a few fields replaced (``dataclasses.replace``). The probe hooks the model's
forward (a forward pre-hook, so ``train_ar`` runs unchanged and draws the same batches): every
``--probe-every`` optimizer steps, before the next step's forward, and after the last step.

Probe: the first 16 held-out windows of the validation stream (``eval_windows``: [BOS] + 127
tokens), no grad. Attention probabilities are recomputed eagerly per layer and head from the q/k
given to SDPA (float32 softmax of q k^T / sqrt(hd), causal), checked once per recipe against
``srclib.attention.key_mass`` (the study's recorder, summed over heads). Per layer x head, over
query positions q >= 8 of all 16 windows:
- ``bos_ratio``: mean of A[q, 0] * (q + 1) (the share on key 0 over its uniform-causal expectation
  1/(q+1); 1 = no preference),
- ``bos_share``: mean of A[q, 0],
- ``argmax0``: fraction of queries whose most-attended key is 0,
- ``local``: fraction of queries whose most-attended key is 0-3 tokens behind the query;
and the probe windows' next-token loss (tokens 1..127). After training: the held-out perplexity on
``train.eval_windows`` windows (``srclib.likelihood.causal_perplexity``, as the train stage).

Verdict (the study's criterion for a stable [BOS] sink): at the end of training some head has
argmax0 >= 0.9 while the same head of the random-init model (the step-0 probe) has argmax0 <= 0.1.
Also reported: the best head (highest final argmax0, ties by bos_ratio) and the number of heads
with bos_ratio >= 5.

Steps: the ``default`` recipe runs params.yaml's step count; the others fill their time budget
(``--minutes-per-recipe`` or the recipe's own), from a 9-step timing of the recipe on a throwaway
copy; a run that overruns its budget by 100% is stopped early (``truncated``). Results are written
after every recipe (merged by recipe name into an existing JSON). One thread (a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from srclib import params, paths  # noqa: E402
from srclib.attention import key_mass  # noqa: E402
from srclib.data.corpus import read_texts  # noqa: E402
from srclib.files import read_json, write_json  # noqa: E402
from srclib.likelihood import causal_perplexity, model_logits_fn  # noqa: E402
from srclib.models import get_adapter  # noqa: E402
from srclib.models.tiny import TinyLM  # noqa: E402
from srclib.params import Arch, Schedule, TrainParams, as_dict  # noqa: E402
from srclib.provenance import provenance  # noqa: E402
from srclib.train.config import max_len, tiny_config  # noqa: E402
from srclib.train.heldout import n_params  # noqa: E402
from srclib.train.recipes import train_ar  # noqa: E402
from srclib.train.tokenizer import eval_windows, token_stream, train_tokenizer  # noqa: E402

log = logging.getLogger("tiny_ar_sinks")

OUT = ROOT / "benchmarks" / "results" / "tiny_ar_sinks.json"
N_PROBE = 16  # held-out probe windows
Q_MIN = 8  # queries q >= Q_MIN enter the statistics
LOCAL = 3  # "local": argmax key within LOCAL tokens behind the query
SINK_ARGMAX, INIT_ARGMAX, RATIO_BAR = 0.9, 0.1, 5.0  # the criterion; the "strong preference" count
OVERRUN = 2.0  # stop a recipe at OVERRUN x its budget (shared machine)


@dataclass(frozen=True)
class Recipe:
    """params.yaml's ``train:`` with these fields replaced (None: as params). ``steps`` None: fill
    the time budget; ``minutes``: this recipe's budget when --minutes-per-recipe is not given."""

    why: str
    lr: float | None = None
    warmup: int | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    minutes: float = 10.0
    fixed_steps: bool = False  # True: params.yaml's step count, whatever the budget

    def train_params(self, base: TrainParams, steps: int) -> TrainParams:
        sched = Schedule(steps=steps, lr=self.lr or base.ar.lr,
                         warmup=base.ar.warmup if self.warmup is None else self.warmup,
                         min_lr=base.ar.min_lr if self.min_lr is None else self.min_lr)
        return dataclasses.replace(
            base, ar=sched, arch=Arch(**{**dataclasses.asdict(base.arch), **self.arch}),
            weight_decay=base.weight_decay if self.weight_decay is None else self.weight_decay,
            batch_size=self.batch_size or base.batch_size, seq_len=self.seq_len or base.seq_len)


SMALL = {"hidden_size": 128, "n_layers": 6, "n_heads": 4, "mlp_hidden": 344}  # head dim 32
RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        why="params.yaml train.ar as the train stage runs it (lr 1e-3, warmup 100, cosine to 1e-4, "
            "wd 0.1, batch 32, seq 128, 390 steps): the baseline, the same init and batches as tiny-ar",
        fixed_steps=True, minutes=22.0),
    "lr3e-3": Recipe(
        why="Gu et al.: sinks are weaker with small learning rates: 3x the peak lr on the study's "
            "architecture (warmup 50, cosine to 1e-4) for as many steps as the budget allows (at ~3 s "
            "a step on a shared core that is fewer than the default's 390)",
        lr=3e-3, warmup=50, minutes=8.0),
    "small-deep-b16": Recipe(
        why="more optimizer steps per CPU second: d=128, 6 layers, 4 heads (head dim 32), SwiGLU 344, "
            "batch 16 (~4x cheaper steps than d=256 batch 32), lr 3e-3, warmup 50",
        lr=3e-3, warmup=50, batch_size=16, arch=SMALL, minutes=8.0),
    "small-deep-b16-wd0.5": Recipe(
        why="Gu et al.: weight decay encourages the sink (their sweep rises up to wd ~0.5-1): "
            "small-deep-b16 with wd 0.5",
        lr=3e-3, warmup=50, batch_size=16, weight_decay=0.5, arch=SMALL, minutes=8.0),
    # optional (not in the default run)
    "nowd-lr2e-3": Recipe(
        why="the opposite control: no weight decay, lr 2e-3, warmup 50 (study architecture)",
        lr=2e-3, warmup=50, weight_decay=0.0, minutes=8.0),
    "small-deep": Recipe(
        why="d=128, 6 layers, batch 32, lr 3e-3, warmup 50", lr=3e-3, warmup=50, arch=SMALL, minutes=10.0),
    "seq256": Recipe(
        why="windows of 256 tokens (batch 16: the same tokens per step), lr 2e-3, warmup 50; probed on the "
            "same 128-token windows",
        lr=2e-3, warmup=50, seq_len=256, batch_size=16, minutes=10.0),
}
DEFAULT_RECIPES = ("default", "lr3e-3", "small-deep-b16", "small-deep-b16-wd0.5")


# ---- the probe ----------------------------------------------------------------------------------
def head_stats(query: torch.Tensor, key: torch.Tensor, scale: float | None) -> dict[str, torch.Tensor]:
    """Per-head statistics of one causal SDPA call (no mask): each (H,) float64, plus the (B, T_k)
    key mass summed over heads and queries (for the check against srclib.attention.key_mass).

    query, key: (B, H, T, hd)."""
    q, k = query.detach().float(), key.detach().float()
    T = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    s = torch.matmul(q * scale, k.transpose(-1, -2))  # (B, H, T, T)
    s.masked_fill_(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(s, dim=-1)  # (B, H, T, T)
    qpos = torch.arange(Q_MIN, T)  # (nq,)
    rows = p[:, :, Q_MIN:]  # (B, H, nq, T)
    share0 = rows[..., 0]  # (B, H, nq)
    top = rows.argmax(-1)  # (B, H, nq)
    behind = qpos[None, None, :] - top  # (B, H, nq), >= 0
    return {
        "bos_share": share0.double().mean((0, 2)),
        "bos_ratio": (share0 * (qpos + 1)).double().mean((0, 2)),
        "argmax0": (top == 0).double().mean((0, 2)),
        "local": (behind <= LOCAL).double().mean((0, 2)),
        "mass": p.sum((1, 2)),  # (B, T)
    }


class Probe:
    """A forward pre-hook on the model: before training forward number ``every * i`` (i.e. after that
    many optimizer steps) it measures the model on the probe windows; a deadline stops training."""

    def __init__(self, model: TinyLM, windows: torch.Tensor, every: int, steps: int, deadline_s: float):
        self.model, self.windows, self.every, self.steps = model, windows, every, steps
        self.deadline_s = deadline_s
        self.curve: list[dict[str, Any]] = []
        self.step = 0  # optimizer steps taken
        self.active = False
        self.probe_s = 0.0
        self.t0 = time.perf_counter()
        self.checked = False
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if self.active or not module.training:
            return None
        if time.perf_counter() - self.t0 - self.probe_s > self.deadline_s:
            raise Deadline(self.step)
        if self.step % self.every == 0:
            self.measure()
        self.step += 1
        return None

    @torch.no_grad()
    def measure(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        calls: list[dict[str, torch.Tensor]] = []
        checks: list[tuple] = []
        original = F.scaled_dot_product_attention

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
            if attn_mask is not None or not is_causal:
                raise RuntimeError("the probe expects TinyLM's unmasked causal SDPA calls")
            calls.append(head_stats(query, key, scale))
            if not self.checked:
                checks.append((query, key, scale))
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, **kw)

        self.active = True
        was_training = self.model.training
        self.model.eval()
        F.scaled_dot_product_attention = sdpa
        try:
            logits = self.model(input_ids=self.windows).logits  # (N, T, V)
        finally:
            F.scaled_dot_product_attention = original
            self.model.train(was_training)
            self.active = False
        if not self.checked:  # the eager softmax against the study's recorder (summed over heads)
            for c, (q, k, sc) in zip(calls, checks):
                ref = key_mass(q, k, is_causal=True, scale=sc, chunk_size=params.load().collect.chunk_size)
                if not torch.allclose(c["mass"], ref, rtol=1e-4, atol=1e-3):
                    raise RuntimeError("eager attention disagrees with srclib.attention.key_mass")
            self.checked = True
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), self.windows[:, 1:].reshape(-1))
        per = {name: torch.stack([c[name] for c in calls]) for name in ("bos_ratio", "bos_share", "argmax0", "local")}
        row = {
            "step": self.step, "loss": float(loss),
            "max_bos_ratio": float(per["bos_ratio"].max()), "max_bos_share": float(per["bos_share"].max()),
            "max_argmax0": float(per["argmax0"].max()), "mean_local": float(per["local"].mean()),
            "heads_ratio_ge_5": int((per["bos_ratio"] >= RATIO_BAR).sum()),
            "per_head": {name: [[round(float(x), 5) for x in layer] for layer in v] for name, v in per.items()},
        }
        self.curve.append(row)
        self.probe_s += time.perf_counter() - t0
        log.info("step %4d  loss %.3f  max BOS ratio %.2f  max argmax@0 %.3f  heads ratio>=5: %d  local %.2f",
                 row["step"], row["loss"], row["max_bos_ratio"], row["max_argmax0"], row["heads_ratio_ge_5"],
                 row["mean_local"])
        return row


class Deadline(Exception):
    def __init__(self, step: int):
        super().__init__(f"time budget exceeded after {step} steps")
        self.step = step


# ---- one recipe ---------------------------------------------------------------------------------
def step_time(cfg: TrainParams, V: int, stream: torch.Tensor, bos: int) -> float:
    """Seconds per training step of this recipe's model: the mean of steps 3-8 of a throwaway copy,
    times 1.1 (a shared machine: the timing tends to be optimistic)."""
    torch.manual_seed(0)
    model = TinyLM(tiny_config(cfg.arch, V, causal=True, shift=False, max_len=max_len(cfg)))
    stamps: list[float] = []
    model.register_forward_pre_hook(lambda m, a: stamps.append(time.perf_counter()))
    quick = dataclasses.replace(cfg, ar=dataclasses.replace(cfg.ar, steps=9))
    train_ar(model, stream, quick, bos=bos, generator=torch.Generator().manual_seed(1))
    return 1.1 * statistics.mean(b - a for a, b in zip(stamps[2:], stamps[3:]))


def verdict(init: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    a0, a_init = final["per_head"]["argmax0"], init["per_head"]["argmax0"]
    ratio = final["per_head"]["bos_ratio"]
    heads = [(i, h) for i in range(len(a0)) for h in range(len(a0[i]))]
    best = max(heads, key=lambda lh: (a0[lh[0]][lh[1]], ratio[lh[0]][lh[1]]))
    sinks = [[i, h] for i, h in heads if a0[i][h] >= SINK_ARGMAX and a_init[i][h] <= INIT_ARGMAX]
    return {
        "stable_bos_sink": bool(sinks), "sink_heads": sinks,
        # argmax0 alone can be high in a near-uniform head: the sink heads whose ratio is also >= 5
        "sink_heads_ratio_ge_5": [lh for lh in sinks if ratio[lh[0]][lh[1]] >= RATIO_BAR],
        "best_head": list(best), "best_head_argmax0": a0[best[0]][best[1]],
        "best_head_bos_ratio": ratio[best[0]][best[1]], "best_head_init_argmax0": a_init[best[0]][best[1]],
        "best_head_bos_share": final["per_head"]["bos_share"][best[0]][best[1]],
        "max_bos_ratio": final["max_bos_ratio"], "heads_ratio_ge_5": final["heads_ratio_ge_5"],
        "init_max_argmax0": init["max_argmax0"], "init_max_bos_ratio": init["max_bos_ratio"],
        "criterion": f"some head: final argmax0 >= {SINK_ARGMAX} and its random-init argmax0 <= {INIT_ARGMAX}",
    }


def run_recipe(name: str, recipe: Recipe, base: TrainParams, data: dict[str, Any], minutes: float | None,
               every: int) -> dict[str, Any]:
    budget_s = 60.0 * (minutes if minutes is not None else recipe.minutes)
    V, bos, stream = data["V"], data["bos"], data["train_stream"]
    probe_cfg = recipe.train_params(base, base.ar.steps)
    if recipe.fixed_steps:
        steps, t_step = base.ar.steps, None
    else:
        t_step = step_time(probe_cfg, V, stream, bos)
        n_probe = budget_s / t_step / every
        steps = max(every, int((budget_s - 0.6 * n_probe) / t_step))  # ~0.6 s per probe at d=256
    cfg = recipe.train_params(base, steps)
    log.info("%s: %d steps (timed step %s s, budget %.1f min), lr %.1e, wd %.2f, batch %d, seq %d, arch %s",
             name, steps, f"{t_step:.2f}" if t_step else "-", budget_s / 60, cfg.ar.lr, cfg.weight_decay,
             cfg.batch_size, cfg.seq_len, dataclasses.asdict(cfg.arch))
    torch.manual_seed(cfg.seed)  # as srclib.train.twins: init, then the batch generator
    model = TinyLM(tiny_config(cfg.arch, V, causal=True, shift=False, max_len=max_len(cfg)))
    gen = torch.Generator().manual_seed(cfg.seed)
    probe = Probe(model, data["probe"], every, steps, OVERRUN * max(budget_s, (t_step or 0) * steps))
    t0, c0 = time.perf_counter(), time.process_time()
    truncated, record = False, None
    try:
        record = train_ar(model, stream, cfg, bos=bos, generator=gen)
    except Deadline as exc:
        log.warning("%s: %s (stopped; the cosine schedule did not finish)", name, exc)
        truncated = True
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    probe.handle.remove()
    model.eval()
    done = probe.step if truncated else steps
    probe.step = done
    if probe.curve[-1]["step"] != done:
        probe.measure()
    ppl = causal_perplexity(model_logits_fn(model, get_adapter("tiny-ar")), data["eval"])
    v = verdict(probe.curve[0], probe.curve[-1])
    last = probe.curve[-3:]
    v["argmax0_ge_0.9_last_3_probes"] = all(r["max_argmax0"] >= SINK_ARGMAX for r in last)
    train_wall = wall - probe.probe_s
    return {
        "why": recipe.why,
        "settings": {"lr": cfg.ar.lr, "warmup": cfg.ar.warmup, "min_lr": cfg.ar.min_lr, "steps": steps,
                     "weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip, "batch_size": cfg.batch_size,
                     "seq_len": cfg.seq_len, "arch": dataclasses.asdict(cfg.arch), "seed": cfg.seed,
                     "budget_min": budget_s / 60, "timed_step_s": t_step},
        "n_params": n_params(model),
        "steps": done, "truncated": truncated,
        "tokens_seen": done * cfg.batch_size * cfg.seq_len,
        "wall_s": wall, "train_wall_s": train_wall, "probe_wall_s": probe.probe_s, "cpu_s": cpu,
        "step_time_s": train_wall / max(done, 1),
        "train_loss_last_10": (sum(record["loss"][-10:]) / len(record["loss"][-10:])) if record else None,
        "final_probe_loss": probe.curve[-1]["loss"],
        "heldout_ppl": ppl, "heldout_loss": math.log(ppl), "heldout_windows": int(data["eval"].shape[0]),
        "verdict": v,
        "curve": [{k: r[k] for k in r if k != "per_head"} for r in probe.curve],
        "per_head_init": probe.curve[0]["per_head"],
        "per_head_final": probe.curve[-1]["per_head"],
    }


# ---- data, output -------------------------------------------------------------------------------
def load_data(base: TrainParams) -> dict[str, Any]:
    t0 = time.perf_counter()
    train_texts = read_texts(paths.corpus_file("train"))
    val_texts = read_texts(paths.corpus_file("validation"))
    tok = train_tokenizer(train_texts, base.tokenizer_vocab)  # as the train stage (deterministic)
    train_stream, val_stream = token_stream(tok, train_texts), token_stream(tok, val_texts)
    bos = tok.bos_token_id
    ev = eval_windows(val_stream, base.eval_windows, base.seq_len, bos)  # (N, 128); the probe: the first 16
    log.info("tokenizer + streams %.1f s: %d train tokens, %d validation tokens",
             time.perf_counter() - t0, train_stream.numel(), val_stream.numel())
    return {"V": len(tok), "bos": bos, "train_stream": train_stream, "eval": ev, "probe": ev[:N_PROBE].clone(),
            "train_tokens": int(train_stream.numel()), "validation_tokens": int(val_stream.numel())}


def table(recipes: dict[str, dict[str, Any]]) -> str:
    head = ("| recipe | steps | tokens | held-out loss (ppl) | best head (l,h) | its BOS ratio | its argmax@0 "
            "(init) | heads ratio>=5 | verdict |")
    lines = [head, "|" + "---|" * 9]
    for name, r in recipes.items():
        v = r["verdict"]
        lines.append(
            f"| {name} | {r['steps']}{' (cut)' if r['truncated'] else ''} | {r['tokens_seen'] / 1e6:.2f}M | "
            f"{r['heldout_loss']:.3f} ({r['heldout_ppl']:.0f}) | {tuple(v['best_head'])} | "
            f"{v['best_head_bos_ratio']:.2f} | {v['best_head_argmax0']:.3f} ({v['best_head_init_argmax0']:.3f}) | "
            f"{v['heads_ratio_ge_5']} | {'stable BOS sink' if v['stable_bos_sink'] else 'no sink'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes-per-recipe", type=float, default=None,
                    help="time budget of every non-default recipe (default: each recipe's own)")
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma list of {sorted(RECIPES)}")
    ap.add_argument("--probe-every", type=int, default=25, help="optimizer steps between probes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=OUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
    torch.set_num_threads(args.threads)
    base = params.load().train
    data = load_data(base)
    out = read_json(args.json) if args.json.is_file() else {}
    out.setdefault("recipes", {})
    out.update({
        "question": "does the tiny AR model grow a stable [BOS] attention sink under some training recipe?",
        "probe": {"windows": N_PROBE, "seq_len": int(data["probe"].shape[1]), "q_min": Q_MIN,
                  "every_steps": args.probe_every, "local_within": LOCAL,
                  "stats": "per layer x head over queries q >= q_min of the probe windows: bos_ratio = mean "
                           "A[q,0]*(q+1); bos_share = mean A[q,0]; argmax0 = share of queries whose top key "
                           "is 0; local = share whose top key is 0..local_within tokens behind"},
        "criterion": f"stable [BOS] sink: some head with final argmax0 >= {SINK_ARGMAX} and random-init "
                     f"argmax0 <= {INIT_ARGMAX}",
        "data": {"train_tokens": data["train_tokens"], "validation_tokens": data["validation_tokens"],
                 "vocab_size": data["V"]},
        "threads": args.threads,
    })
    for name in tqdm(names, desc="recipes"):
        minutes = None if RECIPES[name].fixed_steps else args.minutes_per_recipe
        out["recipes"][name] = run_recipe(name, RECIPES[name], base, data, minutes, args.probe_every)
        out["provenance"] = provenance(params={"train": as_dict(base)})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, out)
        log.info("%s done: %s", name, out["recipes"][name]["verdict"])
    print(table(out["recipes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
