"""A synthetic metrics tree in the real formats, for the report, plotting, browser and animation tests.

``build_tree(root)`` writes a small tree: evaluate metrics through srclib.evaluation's own lm-eval
result parser, prune metrics through the real ``run_prune``, trajectories through
``save_trajectory`` and sink statistics through the real variance stage. ``VARIANCE`` /
``VARIANCE_UNITS`` are a hand-made metrics/variance.json and its per-prompt units file.
(tests/ is on sys.path: ``from report_tree import ...``.)
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import yaml

from srclib import params as P_
from srclib import paths
from srclib.files import write_json
from srclib.report import results

TASKS = {"arc_easy": True, "winogrande": False}  # task -> lm-eval reports acc_norm
N_ITEMS = 200


# =================================================================================================
# a synthetic metrics tree in the real formats
# =================================================================================================
def _inst(method: str, weighting: str, sparsity: float, pattern: str = "unstructured", seed: int = 0,
          model: str = "tiny-dlm") -> dict:
    """One params.yaml prune instance."""
    return dict(model=model, method=method, weighting=weighting, sparsity=sparsity, pattern=pattern, seed=seed)


def synthetic_params(instances: dict | None = None, seeds=(0, 1, 2)) -> P_.Params:
    data = yaml.safe_load((paths.ROOT / "params.yaml").read_text())
    data["evaluate"]["tasks"] = {t: {"num_fewshot": 0, "cfg": 0.0, "mc_num": 4, "limit": N_ITEMS} for t in TASKS}
    data["evaluate"]["dense"] = ["tiny-dlm", "tiny-ar", "smollm2-135m"]
    if instances is None:
        instances = {}
        for seed in seeds:
            for w in ("uniform", "sink"):
                instances[f"dlm-wanda-{w}-50-s{seed}"] = _inst("wanda", w, 0.5, seed=seed)
        instances.update({
            "dlm-magnitude-uniform-50-s0": _inst("magnitude", "uniform", 0.5),
            "dlm-wanda-stability-50-s0": _inst("wanda", "stability", 0.5),
            "dlm-wanda-uniform-50-2of4-s0": _inst("wanda", "uniform", 0.5, pattern="2:4"),
            "dlm-sparsegpt-uniform-70-s0": _inst("sparsegpt", "uniform", 0.7),
            "dlm-sparsegpt-sink-70-s0": _inst("sparsegpt", "sink", 0.7),
            "dlm-wanda-uniform-30-s0": _inst("wanda", "uniform", 0.3),
            "smol-wanda-uniform-50-s0": _inst("wanda", "uniform", 0.5, model="smollm2-135m"),
            "smol-wanda-sink-50-s0": _inst("wanda", "sink", 0.5, model="smollm2-135m"),
        })
    data["prune"]["instances"] = instances
    if "efficiency" in data:
        data["efficiency"]["instances"] = [sorted(instances)[0]]
    data["plot"] = {"headline_sparsities": [0.5, 0.7], "headline_methods": ["wanda", "sparsegpt"],
                    "seeds": list(seeds)}
    return P_.load_dict(data)


def default_accuracy(name: str, cfg: dict, task: str) -> float:
    """A deterministic, config-dependent accuracy in (0.3, 0.7)."""
    base = {"dense": 0.62, "magnitude": 0.40, "wanda": 0.50, "sparsegpt": 0.52}[cfg["method"]]
    base -= 0.2 * (cfg["sparsity"] - 0.5) if cfg["method"] != "dense" else 0.0
    base += 0.01 * cfg["seed"] + (0.03 if task == "winogrande" else 0.0)
    base += {"none": 0, "uniform": 0, "sink": 0.005, "stability": -0.005}[cfg["weighting"]]
    return round(base, 6)  # a multiple of 1 / N_ITEMS: the planted items reproduce it exactly


def eval_metrics_json(name: str, model: str, acc: dict[str, float], ppl: float | None,
                      causal: bool, stderr: dict[str, float] | None = None, params: P_.Params | None = None) -> dict:
    """An evaluate metrics file as run_evaluate writes it; the task entries come from
    srclib.evaluation's own parser of lm-eval results; with ``params``, the params it records
    (srclib.report.freshness.evaluate_sections: a run of those params)."""
    from srclib.report.freshness import evaluate_sections

    from srclib.evaluation.harness import parse_results as _parse_results

    results, n_samples = {}, {}
    for task, a in acc.items():
        se = (stderr or {}).get(task, math.sqrt(a * (1 - a) / (N_ITEMS - 1)))
        r = {"alias": task, "acc,none": a - 0.02, "acc_stderr,none": se}
        if TASKS.get(task, True):
            r.update({"acc_norm,none": a, "acc_norm_stderr,none": se})
        else:
            r = {"alias": task, "acc,none": a, "acc_stderr,none": se}
        results[task] = r
        n_samples[task] = {"effective": N_ITEMS, "original": 1000}
    parsed = _parse_results({"results": results, "versions": {t: 1.0 for t in acc}, "n-shot": {t: 0 for t in acc},
                             "n-samples": n_samples, "configs": {}})
    ppl_entry = None if ppl is None else {
        "kind": "exact" if causal else "elbo", "ppl": ppl, "nll_per_token": math.log(ppl),
        "n_windows": 64, "n_tokens": 8128, "seq_len": 128, "mc_num": None if causal else 8}
    return {"instance": name, "model": {"key": model, "causal": causal, "shift": not causal,
                                         "lm": "hf" if causal else "srclib-dlm",
                                         "likelihood": "exact" if causal else "mc-elbo"},
            "tasks": parsed, "ppl": ppl_entry,
            "provenance": {"git_commit": None, **({"params": evaluate_sections(params, name)} if params else {})}}


N_WINDOWS = 64
WINDOW_DEV = 0.1  # planted per-window NLL deviation (+-, the same for every checkpoint: CRN)


def item_latent(task: str) -> np.ndarray:
    """One latent difficulty per item in (0, 1), shared by every checkpoint: item i is correct
    when its latent is below the checkpoint's accuracy, so two checkpoints differ on exactly
    |a1 - a2| * N_ITEMS items, all in one direction."""
    rng = np.random.default_rng(sum(map(ord, task)))
    return (rng.permutation(N_ITEMS) + 0.5) / N_ITEMS


def eval_units_json(name: str, acc: dict[str, float], ppl: float | None) -> dict:
    """metrics/units/evaluate/<instance>.json as the evaluate stage writes it (split_units)."""
    tasks = {}
    for task, a in acc.items():
        u = item_latent(task)
        rec = {"doc_id": list(range(N_ITEMS)), "chance": 0.5 if task == "winogrande" else 0.25}
        rec["acc"] = [float(x < (a - 0.02 if TASKS.get(task, True) else a)) for x in u]
        if TASKS.get(task, True):
            rec["acc_norm"] = [float(x < a) for x in u]
        tasks[task] = rec
    units_ppl = None if ppl is None else {
        "kind": "elbo", "window_tokens": [127] * N_WINDOWS,
        "window_nll_per_token": [math.log(ppl) + WINDOW_DEV * (1 if w % 2 else -1) for w in range(N_WINDOWS)]}
    return {"instance": name, "tasks": tasks, "ppl": units_ppl}


def write_eval_tree(root: Path, params: P_.Params, accuracy=default_accuracy, stderr=None, units: bool = True) -> None:
    configs = results.instance_configs(params)
    for name, cfg in configs.items():
        causal = cfg["model"] != "tiny-dlm"
        acc = {t: accuracy(name, cfg, t) for t in params.evaluate.tasks}
        ppl = 100.0 * (1 + 3 * cfg["sparsity"]) + cfg["seed"]
        write_json(paths.eval_metrics(name, root=root),
                   eval_metrics_json(name, cfg["model"], acc, ppl, causal, stderr, params=params))
        up = paths.eval_units(name, root=root)
        if units:
            write_json(up, eval_units_json(name, acc, ppl))
        elif up.exists():
            up.unlink()


def synthetic_trajectory(kind: str, run: str, random_init: bool, *, S=6, L=2, B=3, P=4, G=6, seed=0):
    """A trajectory with planted sinks: AR sinks stay on position 0, DLM sinks move with the step."""
    from srclib.trajectories.store import Trajectory

    g = torch.Generator().manual_seed(seed)
    T = P + G
    mass = 1.0 + 0.05 * torch.rand(S, L, B, T, generator=g)  # (S, L, B, T)
    if kind == "ar":
        valid = torch.tensor([P + s for s in range(S)])
        mass[:, :, :, 0] += 0.0 if random_init else 5.0
    else:
        valid = torch.full((S,), T)
        for s in range(S):
            mass[s, :, :, (s * 3) % T] += 0.3 if random_init else 4.0
    mass = torch.where(torch.arange(T)[None, None, None, :] < valid[:, None, None, None], mass, torch.zeros_like(mass))
    prompt = torch.randint(3, 60, (B, P), generator=g)
    prompt[:, 0] = 0
    final = torch.cat([prompt, torch.randint(3, 60, (B, G), generator=g)], dim=1)
    meta = dict(format=1, model=run.removesuffix("-randinit"), run=run, kind=kind, causal=kind == "ar",
                shift=kind == "dlm", bos_id=0, mask_id=None if kind == "ar" else 63, has_bos=True,
                random_init=random_init, prompt_indices=list(range(B)), settings={})
    extra = {}
    if kind == "dlm":
        step_ids = final[None].repeat(S, 1, 1).clone()  # (S, B, T)
        for s in range(S):
            step_ids[s, :, P + s:] = 63
        extra["step_ids"] = step_ids
    else:
        pre = torch.zeros(L, B, T)
        pre[:, :, : P - 1] = 1.0
        extra["prefill_mass"] = pre
    return Trajectory(meta=meta, mass=mass, valid_len=valid, prompt_ids=prompt, final_ids=final, **extra)


RUNS = {"tiny-dlm": ("dlm", False), "tiny-dlm-randinit": ("dlm", True),
        "tiny-ar": ("ar", False), "tiny-ar-randinit": ("ar", True)}


def write_variance_tree(root: Path, params: P_.Params) -> dict:
    from srclib.stages import variance
    from srclib.trajectories.store import save_trajectory

    for i, (run, (kind, rnd)) in enumerate(RUNS.items()):
        save_trajectory(synthetic_trajectory(kind, run, rnd, seed=i), paths.trajectory_file(run, root=root))
    res = variance.sink_variance(params.variance, root=root)
    return {"metrics": res.metrics, "plots": res.plots}


def write_prune_tree(root: Path, params: P_.Params) -> None:
    """Real run_prune (magnitude: no calibration data) once per (model, sparsity, pattern); the
    metrics of each instance are that run's with the instance's spec, as run_prune writes them."""
    from srclib.models import MODELS
    from srclib.models.tiny import TinyLM, test_config
    from srclib.pruning.checkpoint import run_prune

    done: dict[tuple, dict] = {}
    for name, inst in params.prune.instances.items():
        key = (inst.model, inst.sparsity, inst.pattern)
        if key not in done:
            torch.manual_seed(0)
            spec = params.prune.spec(name).with_run(method="magnitude", weighting="uniform")
            out = root / ".prune-scratch" / f"{len(done)}"
            res = run_prune(model=(TinyLM(test_config()).eval(), None, MODELS["tiny-dlm"]), spec=spec,
                            out_dir=out / "pruned", metrics_path=out / "metrics.json", n_samples=1, seq_len=8,
                            seed=0)
            done[key] = res.metrics
        m = copy.deepcopy(done[key])
        m["instance"], m["model"] = name, inst.model
        m["spec"] = params.prune.spec(name).to_dict()
        m["calibration"]["seed"] = inst.seed
        write_json(paths.prune_metrics(name, root=root), m)


def write_train_tree(root: Path) -> None:
    for key, start in (("tiny-ar", 8.0), ("tiny-dlm", 9.0)):
        loss = [start * math.exp(-i / 30) + 4.0 + 0.1 * math.sin(i) for i in range(60)]
        write_json(paths.train_metrics(key, root=root), {"loss": loss, "ppl": 100.0})


def build_tree(root: Path, params: P_.Params | None = None, *, train: bool = True) -> P_.Params:
    params = params or synthetic_params()
    write_eval_tree(root, params)
    write_variance_tree(root, params)
    write_prune_tree(root, params)
    if train:
        write_train_tree(root)
    return params


# =================================================================================================
# hand-made variance metrics
# =================================================================================================
VARIANCE = {"runs": {  # a hand-made metrics/variance.json: a DLM, an AR, their random-init twins
    "tiny-dlm": {"kind_is_dlm": 1, "random_init": 0, "variance": 0.05, "variance_std": 0.01, "dominant_at_0_frac": 0.0},
    "tiny-dlm-randinit": {"kind_is_dlm": 1, "random_init": 1, "variance": 0.09, "variance_std": 0.03,
                          "dominant_at_0_frac": 0.0},
    "tiny-ar": {"kind_is_dlm": 0, "random_init": 0, "variance": 0.0, "variance_std": 0.0, "dominant_at_0_frac": 1.0},
    "tiny-ar-randinit": {"kind_is_dlm": 0, "random_init": 1, "variance": 0.03, "variance_std": 0.01,
                         "dominant_at_0_frac": 0.0},
}}
PROMPT_DEV = [-0.01, 0.0, 0.01, 0.0, -0.005, 0.005, 0.0, 0.0]  # per-prompt spread (mean 0), 8 prompts


def variance_unit_run(kind: str, twin: str | None, variance: float, strength: float, p0: float) -> dict:
    variant = "full" if kind == "dlm" else "newest"
    return {"kind": kind, "random_init": twin is None, "twin": twin, "n_prompts": 8, "per_prompt": {variant: {
        "variance": [max(0.0, variance + d) if variance else 0.0 for d in PROMPT_DEV],
        "dominant_share_x_uniform": [strength + 10 * d for d in PROMPT_DEV],
        "dominant_at_0_frac": [p0] * 8}}}


VARIANCE_UNITS = {"runs": {  # metrics/units/variance.json of the same runs: per-prompt values
    "tiny-dlm": variance_unit_run("dlm", "tiny-dlm-randinit", 0.05, 3.0, 0.0),
    "tiny-dlm-randinit": variance_unit_run("dlm", None, 0.09, 1.0, 0.0),
    "tiny-ar": variance_unit_run("ar", "tiny-ar-randinit", 0.0, 20.0, 1.0),
    "tiny-ar-randinit": variance_unit_run("ar", None, 0.03, 1.0, 0.0),
}}
