"""FLOP and memory model of the paper-scale study, projected to H200 GPUs (issue 14 item 5).

Pure Python (no torch): counts, not measurements. Conventions (stated once, used everywhere):

* A matmul of (m x k) by (k x n) costs 2 m k n FLOPs. A forward of B sequences of T tokens
  through L blocks costs B [L (2 P_blk T + 4 T^2 H hd) + 2 d V T] (``forward_flops``): the block
  linears (P_blk = d H hd + 2 d Hkv hd + H hd d + 3 d mlp), bidirectional attention (q k^T and
  A v over all T keys per head) and the LM head (omitted when the forward stops after the last
  block, as every calibration and mass pass does). Norms, RoPE, softmax and embeddings are not
  counted. ``torch.utils.flop_counter`` counts the same (tests/test_projection.py checks it).
* The attention-mass recorder recomputes q k^T in float32: 2 T^2 H hd per layer (``mass_flops``).
* SparseGPT per linear (C_in = C, rows = R, N calibration tokens): Hessian 2 N C^2; solve
  4/3 C^3 (Cholesky, Cholesky inverse, Cholesky again: C^3 / 3 each, the inverse 2/3) plus the
  OBS updates R C^2 (lazy block updates) + 2 R C b (inside the blocks); float32. Its column loop
  also costs ``GPU.column_latency_s`` per column (small kernels, latency-bound).
* Time: bfloat16 work at ``mfu`` x the dense bf16 peak, float32 work (recorder, SparseGPT) at
  ``fp32_eff`` x the fp32 peak; each job also loads (and prune saves) the bf16 weights at
  ``io_bytes_per_s``.
* Memory: bf16 weights (2 B per parameter) plus the stage's largest live activations (see each
  ``*_memory`` function), never more than one block's batch of activations at a time except
  where a stage stores them (sequential calibration stores block inputs of every pass).

Evaluation requests per task (``TASKS``) use the public split sizes, choices per item and typical
token lengths of the prompts (LLaDA tokenizer; few-shot prompts included): assumptions, stated
in the table, not measured here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "ModelShape", "PAPER_SHAPES", "MODEL_KEYS", "GPU", "H200", "TaskCost", "TASKS",
    "forward_flops", "mass_flops", "sparsegpt_flops", "loglog_slope", "rehearsal_flops",
    "prune_job", "evaluate_job", "shard_job", "collect_job", "efficiency_job", "project_study", "schedule",
    "projection_table", "cost_scenarios", "cost_table",
]

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """Widths of a Llama-style DLM: d, blocks, query / KV heads, head dim, SwiGLU width, vocab."""

    d: int
    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    mlp: int
    vocab: int
    tied: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name != "tied" and (not isinstance(v, int) or v < 1):
                raise ValueError(f"ModelShape.{f.name} must be a positive int, got {v!r}")
        if self.n_heads % self.n_kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv ({self.n_kv})")

    def with_layers(self, n_layers: int) -> "ModelShape":
        return dataclasses.replace(self, n_layers=n_layers)

    def linears(self) -> dict[str, tuple[int, int]]:
        """Role -> (C_out, C_in) of one block's prunable linears."""
        a, kv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        return {"q": (a, self.d), "k": (kv, self.d), "v": (kv, self.d), "o": (self.d, a),
                "gate": (self.mlp, self.d), "up": (self.mlp, self.d), "down": (self.d, self.mlp)}

    @property
    def block_params(self) -> int:
        return sum(r * c for r, c in self.linears().values())

    @property
    def params(self) -> int:
        """Block linears + embedding + LM head (norms, biases: negligible, not counted)."""
        return self.n_layers * self.block_params + self.d * self.vocab * (1 if self.tied else 2)

    def stash_width(self) -> int:
        """Distinct linear-input widths per block: attention input, o input, MLP input, down input."""
        return 2 * self.d + self.n_heads * self.head_dim + self.mlp


PAPER_SHAPES = {
    "llada": ModelShape(d=4096, n_layers=32, n_heads=32, n_kv=32, head_dim=128, mlp=12288, vocab=126464),
    "dream": ModelShape(d=3584, n_layers=28, n_heads=28, n_kv=4, head_dim=128, mlp=18944, vocab=152064),
}
MODEL_KEYS = {"llada-8b-base": "llada", "dream-7b-base": "dream"}  # params-gpu.yaml model -> shape


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_peak: float  # dense FLOP/s
    fp32_peak: float
    memory_bytes: float
    mfu: float = 0.35
    fp32_eff: float = 0.5
    io_bytes_per_s: float = 2e9  # checkpoint load / save
    column_latency_s: float = 5e-5  # SparseGPT: one column of the OBS loop (a few small kernels)

    def __post_init__(self) -> None:
        for name in ("mfu", "fp32_eff"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"GPU.{name} must lie in (0, 1], got {v!r}")

    def with_efficiency(self, mfu: float, fp32_eff: float) -> "GPU":
        return dataclasses.replace(self, mfu=mfu, fp32_eff=fp32_eff)

    def seconds(self, bf16_flops: float = 0.0, fp32_flops: float = 0.0) -> float:
        return bf16_flops / (self.mfu * self.bf16_peak) + fp32_flops / (self.fp32_eff * self.fp32_peak)

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# NVIDIA H200 SXM: 989 TFLOP/s dense BF16 (1979 with sparsity), 67 TFLOP/s FP32, 141 GB HBM3e
H200 = GPU(name="H200", bf16_peak=989e12, fp32_peak=67e12, memory_bytes=141e9)


@dataclass(frozen=True)
class TaskCost:
    """One lm-eval task: items, choices per item (generation: 1), tokens per request
    (context + continuation; generation: the prompt), continuation tokens."""

    items: int
    choices: int
    tokens: int
    target: int
    generate: bool = False


# public evaluation splits (lm-eval defaults) and typical request lengths with the few-shot
# prompts of params-gpu.yaml (MMLU 5-shot, WinoGrande 5-shot, GSM8K 4-shot): assumptions
TASKS = {
    "mmlu": TaskCost(items=14042, choices=4, tokens=620, target=1),
    "arc_easy": TaskCost(items=2376, choices=4, tokens=60, target=8),
    "arc_challenge": TaskCost(items=1172, choices=4, tokens=70, target=10),
    "piqa": TaskCost(items=1838, choices=2, tokens=60, target=25),
    "winogrande": TaskCost(items=1267, choices=2, tokens=230, target=8),
    "hellaswag": TaskCost(items=10042, choices=4, tokens=130, target=30),
    "gsm8k": TaskCost(items=1319, choices=1, tokens=900, target=0, generate=True),
}


# ---- FLOP counts -------------------------------------------------------------------------------------
def forward_flops(shape: ModelShape, T: int, batch: int = 1, head: bool = True, layers: int | None = None) -> float:
    """Matmul FLOPs of one forward of ``batch`` sequences of ``T`` tokens (module docstring)."""
    if T < 1 or batch < 1:
        raise ValueError(f"T and batch must be >= 1, got T={T}, batch={batch}")
    L = shape.n_layers if layers is None else layers
    per_layer = 2 * shape.block_params * T + 4 * T * T * shape.n_heads * shape.head_dim
    return float(batch * (L * per_layer + (2 * shape.d * shape.vocab * T if head else 0)))


def mass_flops(shape: ModelShape, T: int, batch: int = 1, layers: int | None = None) -> float:
    """The recorder's float32 recomputation of q k^T: 2 T^2 H hd per layer and sequence."""
    L = shape.n_layers if layers is None else layers
    return float(batch * L * 2 * T * T * shape.n_heads * shape.head_dim)


def sparsegpt_flops(shape: ModelShape, tokens: int, blocksize: int,
                    layers: int | None = None) -> dict[str, float]:
    """Hessian accumulation and solve FLOPs of SparseGPT over ``layers`` blocks (float32)."""
    L = shape.n_layers if layers is None else layers
    hess = solve = cols = 0.0
    for rows, c in shape.linears().values():
        hess += 2.0 * tokens * c * c
        solve += 4.0 / 3.0 * c ** 3 + rows * c * c + 2.0 * rows * c * blocksize
        cols += c
    return {"hessian": L * hess, "solve": L * solve, "columns": L * cols}


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y on log x (the exponent of y ~ x^k)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("loglog_slope needs two or more (x, y) pairs of equal count")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError(f"loglog_slope needs positive values, got xs={list(xs)}, ys={list(ys)}")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def rehearsal_flops(shape: ModelShape, stages: Mapping[str, Any], elbo: Mapping[str, Any],
                    sampler: Mapping[str, Any], *, blocksize: int) -> dict[str, float]:
    """FLOPs of each measured rehearsal stage (benchmarks/paper_rehearsal.py), by its key;
    blocksize: SparseGPT's column block (the study's prune.sparsegpt.blocksize)."""
    out: dict[str, float] = {}
    for key, s in stages.items():
        T = s.get("T")
        if key.startswith("mass_T"):
            out[key] = forward_flops(shape, T, head=False) + mass_flops(shape, T)
        elif key == "forward_full":
            out[key] = forward_flops(shape, T)
        elif key == "forward_blocks":
            out[key] = forward_flops(shape, T, head=False)
        elif key.startswith("wanda"):
            out[key] = s["passes"] * (forward_flops(shape, T, head=False) + mass_flops(shape, T))
        elif key.startswith("sparsegpt"):
            sg = sparsegpt_flops(shape, s["passes"] * T, blocksize, layers=1)
            # pre-pass (one block, recorder) + catch/stats/re-run of one block + Hessian + solve
            out[key] = (forward_flops(shape, T, head=False, layers=1) + mass_flops(shape, T, layers=1)
                        + 2 * forward_flops(shape, T, head=False, layers=1) + sg["hessian"] + sg["solve"])
        elif key == "elbo_request":
            rows = elbo["mc_num"] * (2 if elbo["cfg"] > 0 else 1)
            out[key] = forward_flops(shape, elbo["prefix"] + elbo["target"], batch=rows)
        elif key == "sampler_step":
            out[key] = forward_flops(shape, sampler["prompt"] + sampler["gen_length"])
    return out


# ---- jobs of the study -------------------------------------------------------------------------------
def _job(name: str, kind: str, seconds: float, peak: float, deps: Iterable[str] = (), **detail: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "seconds": float(seconds), "peak_bytes": float(peak), "deps": list(deps),
            **detail}


def _weights(shape: ModelShape) -> float:
    return 2.0 * shape.params  # bfloat16


def _forward_peak(shape: ModelShape, rows: int, T: int, logits: bool) -> float:
    """Live activations of one bf16 forward of ``rows`` x T tokens: the residual stream, one
    block's q/k/v/MLP intermediates, and the logits (bf16, plus one float32 copy of the rows that
    are scored)."""
    tok = rows * T
    act = tok * (3 * shape.d + 3 * shape.mlp) * 2
    return act + (tok * shape.vocab * (2 + 4) if logits else 0)


def collect_job(P: Any, key: str, gpu: GPU) -> dict[str, Any]:
    """The collect stage for one paper model: n_prompts x steps sampler forwards (+ random twin)."""
    c = P.collect
    shape = PAPER_SHAPES[MODEL_KEYS[key]]
    T = c.prompt_tokens + c.gen_length + 1  # the special prefix
    runs = 2 if c.random_init_control else 1
    n = runs * c.n_prompts * c.steps * (2 if c.cfg_scale > 0 else 1)
    bf16 = n * forward_flops(shape, T)
    fp32 = n * mass_flops(shape, T)
    secs = gpu.seconds(bf16, fp32) + _weights(shape) / gpu.io_bytes_per_s
    return _job(f"collect:{key}", "collect", secs, _weights(shape) + _forward_peak(shape, c.n_prompts, T, True),
                bf16_flops=bf16, fp32_flops=fp32)


def prune_job(P: Any, instance: str, gpu: GPU) -> dict[str, Any]:
    """One prune instance: calibration forwards, statistics, pruning; time and peak memory.

    Windows per forward: the study's prune.calibration.windows_per_batch.
    Passes: noised (n_samples x |t-grid|) or clean (n_samples) per ``PruneSpec.inputs_for``; a
    sink / stability weighting on clean windows adds a mass-only pre-pass of the noised passes.
    One-shot: one blocks-only forward per pass; sequential: block 0's inputs are caught (a full
    blocks forward when the weights come from that forward's mass), then every block runs twice
    (statistics, then its pruned outputs). One-shot with weights from the same forward stashes
    every linear's inputs of one batch; when that exceeds the budget (half the free memory) the
    code streams (srclib.pruning.core: a mass pre-pass), which the model follows.
    """
    from srclib.pruning import plan  # torch-free: the run's decisions

    spec = P.prune.spec(instance)
    inst = P.prune.instance(instance)
    shape = PAPER_SHAPES[MODEL_KEYS[inst.model]]
    cal = P.prune.calibration
    T, N, n_t = cal.seq_len, cal.n_samples, len(cal.t_grid)
    inputs = plan.inputs_for(spec, True)
    passes = N * (n_t if inputs == "noised" else 1)
    needs_mass = spec.run.weighting != "uniform"
    batch = cal.windows_per_batch * (n_t if inputs == "noised" else 1)  # the run's (prune.calibration)
    fwd = forward_flops(shape, T, head=False)
    rec = mass_flops(shape, T)
    bf16 = fp32 = 0.0
    weights = _weights(shape)
    live = _forward_peak(shape, batch, T, False) + (batch * T * shape.mlp * 4 * 3)  # + float32 feed copies
    mask_bytes = batch * T * T if inst.model.startswith("dream") else 0  # Dream's 4-D bool mask per batch
    stash = 0.0
    streamed = False
    prepass = 0
    if needs_mass and inputs == "clean":
        prepass = N * n_t
    if method_one_shot := plan.one_shot(spec):
        bf16 += passes * fwd
        if needs_mass and inputs == "noised":
            fp32 += passes * rec
            stash = batch * T * shape.n_layers * shape.stash_width() * 2
            if stash > 0.5 * (gpu.memory_bytes - weights):  # srclib.pruning.memory.stash_budget
                streamed, stash, prepass = True, 0.0, passes
    else:
        stored = passes * T * shape.d * 2 + (passes // batch) * mask_bytes
        online = needs_mass and inputs == "noised"
        bf16 += passes * ((fwd if online else 0) + 2 * fwd)
        fp32 += passes * rec if online else 0
        stash = stored
    bf16 += prepass * fwd
    fp32 += prepass * rec
    sg = {"hessian": 0.0, "solve": 0.0, "columns": 0.0}
    stats_bytes = 0.0
    if spec.run.method == "sparsegpt":
        sg = sparsegpt_flops(shape, passes * T, spec.sparsegpt.blocksize)
        fp32 += sg["hessian"] + sg["solve"]
        stats_bytes = sum(c * c * 4 for _, c in shape.linears().values()) + 4 * shape.mlp ** 2 * 4
    elif method_one_shot:
        stats_bytes = shape.n_layers * sum(c * 8 for _, c in shape.linears().values())
    secs = (gpu.seconds(bf16, fp32) + sg["columns"] * gpu.column_latency_s
            + 2 * weights / gpu.io_bytes_per_s)
    peak = weights + live + stash + stats_bytes + mask_bytes
    return _job(f"prune:{instance}", "prune", secs, peak, model=inst.model, method=spec.run.method,
                weighting=spec.run.weighting, one_shot=method_one_shot, inputs=inputs, passes=passes,
                prepass_passes=prepass, streamed=streamed, stash_bytes=stash, bf16_flops=bf16, fp32_flops=fp32)


def evaluate_job(P: Any, name: str, model_key: str, gpu: GPU, deps: Iterable[str] = (),
                 tasks: Mapping[str, TaskCost] = TASKS, mc_rows_fraction: float = 1.0) -> dict[str, Any]:
    """lm-eval on one model: every task's requests x mc_num rows (x2 with cfg), generation tasks
    steps x (prompt + gen_length) forwards, plus the ELBO perplexity windows.

    ``mc_rows_fraction``: mean rows per item of the sequential MC-ELBO (srclib-dlm ``mc_adaptive``)
    as a fraction of mc_num, applied to the multiple-choice tasks scored with mc_num > 1 (1: the
    full-budget estimator; the perplexity and generation are not affected)."""
    if not 0 < mc_rows_fraction <= 1:
        raise ValueError(f"mc_rows_fraction must be in (0, 1], got {mc_rows_fraction!r}")
    E = P.evaluate
    sampler = E.sampler  # generation settings of the evaluation
    shape = PAPER_SHAPES[MODEL_KEYS[model_key]]
    bf16 = 0.0
    per_task: dict[str, float] = {}
    peak = 0.0
    for task, ts in E.tasks.items():
        tc = tasks[task]
        mult = 2 if ts.cfg > 0 else 1
        if tc.generate:
            T = tc.tokens + sampler.gen_length
            f = tc.items * sampler.steps * mult * forward_flops(shape, T)
            peak = max(peak, _forward_peak(shape, E.batch_size * mult, T, True))
        else:
            frac = mc_rows_fraction if ts.mc_num > 1 and tc.choices > 1 else 1.0
            rows = tc.items * tc.choices * ts.mc_num * frac * mult
            f = rows * forward_flops(shape, tc.tokens)
            peak = max(peak, _forward_peak(shape, min(E.batch_size, ts.mc_num) * mult, tc.tokens, True))
        per_task[task] = f
        bf16 += f
    ppl = E.ppl.n_windows * E.ppl.mc_num * forward_flops(shape, E.ppl.seq_len)
    per_task["ppl"] = ppl
    bf16 += ppl
    peak = max(peak, _forward_peak(shape, E.batch_size, E.ppl.seq_len, True))
    io = _weights(shape) / gpu.io_bytes_per_s
    return _job(f"evaluate:{name}", "evaluate", gpu.seconds(bf16) + io, _weights(shape) + peak, deps,
                bf16_flops=bf16, per_task_flops=per_task, io_seconds=io)


def shard_job(job: Mapping[str, Any], shards: int) -> list[dict[str, Any]]:
    """One evaluation split over ``shards`` processes (srclib.evaluation.distributed: each rank
    scores every shards-th batch of requests): ``shards`` jobs of 1/shards of the compute each,
    every one loading the weights itself; same deps. ``shards = 1`` returns the job unchanged."""
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an int >= 1, got {shards!r}")
    if shards == 1:
        return [dict(job)]
    io = job.get("io_seconds", 0.0)
    compute = job["seconds"] - io
    return [{**job, "name": f"{job['name']}#{r}/{shards}", "seconds": compute / shards + io,
             "bf16_flops": job.get("bf16_flops", 0.0) / shards} for r in range(shards)]


def efficiency_job(P: Any, gpu: GPU) -> dict[str, Any]:
    """Timed forwards of the efficiency instances (dense and pruned, every token shape)."""
    E = P.efficiency
    bf16, peak, deps = 0.0, 0.0, []
    for inst in E.instances:
        shape = PAPER_SHAPES[MODEL_KEYS[P.prune.instance(inst).model]]
        for B, T in E.token_shapes:
            bf16 += 2 * (E.repeats + E.warmup) * forward_flops(shape, T, batch=B)
            peak = max(peak, 2 * _weights(shape) + _forward_peak(shape, B, T, True))
        deps.append(f"prune:{inst}")
    secs = gpu.seconds(bf16) + sum(2 * _weights(PAPER_SHAPES[MODEL_KEYS[P.prune.instance(i).model]])
                                   for i in E.instances) / gpu.io_bytes_per_s
    return _job("efficiency", "efficiency", secs, peak, deps, bf16_flops=bf16)


def project_study(P: Any, gpu: GPU = H200, mc_rows_fraction: float = 1.0, eval_shards: int = 1) -> dict[str, Any]:
    """Every GPU job of the study (paper models only: the tiny models stay on CPU), per stage.
    ``mc_rows_fraction``: see ``evaluate_job``; ``eval_shards``: processes per evaluation
    (``shard_job``; jobs named ``evaluate:<name>#<rank>/<shards>``)."""
    jobs = [collect_job(P, k, gpu) for k in P.collect.models if k in MODEL_KEYS]

    def evaluation(name: str, key: str, deps: list[str]) -> list[dict[str, Any]]:
        return shard_job(evaluate_job(P, name, key, gpu, deps=deps, mc_rows_fraction=mc_rows_fraction), eval_shards)

    for inst in P.prune.instances:
        if P.prune.instance(inst).model in MODEL_KEYS:
            jobs.append(prune_job(P, inst, gpu))
            jobs += evaluation(inst, P.prune.instance(inst).model, [f"prune:{inst}"])
    for key in P.evaluate.dense:
        if key in MODEL_KEYS:
            jobs += evaluation(f"{key}-dense", key, [])
    if any(P.prune.instance(i).model in MODEL_KEYS for i in P.efficiency.instances):
        jobs.append(efficiency_job(P, gpu))
    stages: dict[str, dict[str, float]] = {}
    for j in jobs:
        s = stages.setdefault(j["kind"], {"jobs": 0, "seconds": 0.0, "max_job_seconds": 0.0, "peak_bytes": 0.0})
        s["jobs"] += 1
        s["seconds"] += j["seconds"]
        s["max_job_seconds"] = max(s["max_job_seconds"], j["seconds"])
        s["peak_bytes"] = max(s["peak_bytes"], j["peak_bytes"])
    over = [j["name"] for j in jobs if j["peak_bytes"] > gpu.memory_bytes]
    return {"jobs": jobs, "stages": stages, "total_seconds": sum(j["seconds"] for j in jobs),
            "over_memory": over, "gpu": gpu.name}


def schedule(jobs: Sequence[Mapping[str, Any]], workers: int) -> dict[str, Any]:
    """List schedule of ``jobs`` on ``workers`` identical GPUs (``dvc queue`` workers): whenever a
    worker is free it takes the ready job (all deps finished) with the longest critical path
    below it. Returns makespan, critical path (longest dependency chain) and per-worker busy time."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    by = {j["name"]: j for j in jobs}
    for j in jobs:
        for d in j["deps"]:
            if d not in by:
                raise ValueError(f"job {j['name']!r} depends on unknown job {d!r}")
    children: dict[str, list[str]] = {n: [] for n in by}
    for j in jobs:
        for d in j["deps"]:
            children[d].append(j["name"])
    tail: dict[str, float] = {}

    def below(n: str) -> float:  # the job plus its longest chain of dependents
        if n not in tail:
            tail[n] = by[n]["seconds"] + max((below(c) for c in children[n]), default=0.0)
        return tail[n]

    finish: dict[str, float] = {}
    free = [0.0] * workers
    busy = [0.0] * workers
    pending = set(by)
    while pending:
        ready = [n for n in pending if all(d in finish for d in by[n]["deps"])]
        w = min(range(workers), key=lambda i: free[i])
        # start time on worker w: when it is free and the job's deps are done
        n = max(ready, key=lambda n: (below(n), -max((finish[d] for d in by[n]["deps"]), default=0.0), n))
        start = max([free[w]] + [finish[d] for d in by[n]["deps"]])
        finish[n] = start + by[n]["seconds"]
        free[w] = finish[n]
        busy[w] += by[n]["seconds"]
        pending.remove(n)
    critical = max((below(n) for n in by if not by[n]["deps"]), default=0.0)
    return {"workers": workers, "makespan_s": max(finish.values(), default=0.0), "critical_path_s": critical,
            "busy_s": busy}


def _h(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h" if seconds < 3 * 86400 else f"{seconds / 86400:,.1f} d"


def projection_table(proj: Mapping[str, Any], sched: Mapping[int, Mapping[str, Any]], gpu: Mapping[str, Any]) -> str:
    """Markdown: per stage (jobs, GPU time, longest job, peak memory) and the total on N GPUs."""
    lines = [f"Projection ({gpu['name']}: bf16 at {gpu['mfu']:.0%} of {gpu['bf16_peak'] / 1e12:.0f} TFLOP/s, "
             f"fp32 at {gpu['fp32_eff']:.0%} of {gpu['fp32_peak'] / 1e12:.0f} TFLOP/s, "
             f"checkpoints at {gpu['io_bytes_per_s'] / 1e9:.0f} GB/s)",
             "", "| stage | jobs | GPU time, all jobs | longest job | peak memory (of 141 GB) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for kind, s in proj["stages"].items():
        lines.append(f"| {kind} | {s['jobs']} | {_h(s['seconds'])} | {_h(s['max_job_seconds'])} | "
                     f"{s['peak_bytes'] / GB:.0f} GB |")
    lines.append(f"| **total** | {sum(s['jobs'] for s in proj['stages'].values())} | "
                 f"**{_h(proj['total_seconds'])}** | | |")
    lines += ["", "| GPUs (`dvc queue` workers) | wall time | critical path (prune -> evaluate of one instance) |",
              "| ---: | ---: | ---: |"]
    for n, s in sorted(sched.items()):
        lines.append(f"| {n} | {_h(s['makespan_s'])} | {_h(s['critical_path_s'])} |")
    if proj["over_memory"]:
        lines.append(f"\nOver {gpu['memory_bytes'] / GB:.0f} GB: {', '.join(proj['over_memory'])}")
    return "\n".join(lines)


def cost_scenarios(P: Any, gpu: GPU, mc_rows_fraction: float, gpus: Sequence[int] = (1, 8, 64),
                   shards_per_eval: int = 8) -> list[dict[str, Any]]:
    """The study's GPU time and wall time on N GPUs, for the full-budget MC-ELBO and the sequential
    one (``mc_rows_fraction``), with and without request sharding. N GPUs: a list schedule over N
    workers; sharded, every evaluation is min(N, shards_per_eval) processes (one node's GPUs under
    ``accelerate launch``) and instances spread over the ``dvc queue`` workers."""
    rows = []
    for label, frac in (("full MC-ELBO", 1.0), (f"sequential MC-ELBO ({mc_rows_fraction:.3f} of the rows)",
                                                mc_rows_fraction)):
        for sharded in (False, True):
            walls = {}
            total = None
            for n in gpus:
                shards = min(n, shards_per_eval) if sharded else 1
                proj = project_study(P, gpu, mc_rows_fraction=frac, eval_shards=shards)
                if n == 1:
                    total = proj["total_seconds"]
                walls[n] = schedule(proj["jobs"], n)["makespan_s"]
            if total is None:
                total = project_study(P, gpu, mc_rows_fraction=frac)["total_seconds"]
            rows.append({"estimator": label, "mc_rows_fraction": frac, "sharded": sharded,
                         "gpu_seconds": total, "wall_s": walls})
    return rows


def cost_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown of ``cost_scenarios``: GPU time (1 GPU) and wall time per number of GPUs."""
    gpus = sorted(rows[0]["wall_s"])
    walls = " | ".join(f"wall, {n} GPU{'s' if n > 1 else ''}" for n in gpus)
    lines = [f"| estimator | requests sharded | GPU time (1 GPU) | {walls} |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in gpus) + " |"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {'yes (min(N, 8) per evaluation)' if r['sharded'] else 'no'} | "
                     f"{r['gpu_seconds'] / 86400:.1f} H200-days | "
                     + " | ".join(_h(r["wall_s"][n]) for n in gpus) + " |")
    return "\n".join(lines)
