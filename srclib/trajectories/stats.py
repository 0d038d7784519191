"""Sink statistics of a trajectory: the variance stage's computation (method.md 2).

``sink_statistics`` turns a trajectory into per-layer and global statistics (definitions in
srclib.sinks): normalised dominant-sink positional variance Var_tau[p(tau)] / T^2 with T the
final sequence length P + gen_length (the same T for DLM and AR runs), mean Jaccard stability
of consecutive sink sets, sinks per step, dominant mass share x T_tau (1 = uniform), fraction
of steps whose dominant key is position 0, and persistence (the fraction of the steps at which
a position EXISTS as a key that it is a sink; stable = persistence >= stability_threshold).
Statistics are computed per prompt and averaged over prompts (``*_std``: std over prompts).
Variants (``Trajectory.variants``): DLM ``full``; AR ``newest`` (the paper's), ``prefix_raw``,
``prefix_norm``.
DLM key classes at step tau (from the ids the forward saw): [MASK] keys, content keys
(everything else), freshly committed keys (committed at step tau-1): the fraction of steps the
dominant key is of each class, sinks per step of each class, the positional variance of the
dominant key restricted to [MASK] / content keys, and the mass ratio of [MASK] keys (their mass
share over their count share).
Stable-sink info for the prune stage: per layer and global, the stable positions of every
prompt; the pruner itself judges stability on its own calibration pass with
``srclib.sinks.stability_weights``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
import torch

from srclib.sinks import (
    dominant_positions,
    dominant_share,
    position_variance,
    sink_jaccard,
    sink_scores,
    sink_sets,
)
from srclib.trajectories.store import PRIMARY_VARIANT, Trajectory

if TYPE_CHECKING:
    from srclib.params import VarianceParams

__all__ = ["sink_statistics", "statistics_table", "PERSISTENCE_BINS"]

PERSISTENCE_BINS = np.linspace(0.0, 1.0, 11)


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std(unbiased=False))


def _series(m: torch.Tensor, valid_len: torch.Tensor, rule: str, alpha: float, kappa: float, eps: float):
    """Per-step sink scores, dominant positions and shares over the valid keys. m: (S, B, T)."""
    S, B, T = m.shape
    scores = torch.zeros(S, B, T, dtype=torch.float32)
    dom = torch.zeros(S, B, dtype=torch.long)
    share = torch.zeros(S, B, dtype=torch.float64)
    for s in range(S):
        n = int(valid_len[s])
        row = m[s, :, :n]  # (B, n)
        scores[s, :, :n] = sink_scores(row, rule=rule, alpha=alpha, kappa=kappa, eps=eps).float()
        dom[s] = dominant_positions(row)
        share[s] = dominant_share(row).double() * n  # ratio to the uniform share 1/n
    return scores, dom, share


def _restricted_dominant(m: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """argmax over the keys in ``keep`` only. m, keep: (S, B, T) -> (S, B)."""
    neg = torch.full_like(m, float("-inf"), dtype=torch.float64)
    return dominant_positions(torch.where(keep, m.double(), neg))


def _stats_one(
    m: torch.Tensor, traj: Trajectory, cfg: dict[str, Any], groups: dict[str, torch.Tensor] | None
):
    """Statistics of one (S, B, T) mass series. Returns (json dict, arrays for plots/stable info)."""
    S, B, T = m.shape
    T_norm = traj.seq_len
    scores, dom, share = _series(m, traj.valid_len, cfg["rule"], cfg["alpha"], cfg["kappa"], cfg["eps"])
    ex = traj.exists()  # (S, T)
    sinks = sink_sets(scores) & ex[:, None, :]  # (S, B, T)
    var = position_variance(dom.T, T_norm)  # (B,)
    out: dict[str, Any] = {}
    out["variance"], out["variance_std"] = _mean_std(var)
    if S >= 2:
        jac = sink_jaccard(scores.permute(1, 0, 2))  # (B,)
        out["jaccard"], out["jaccard_std"] = _mean_std(jac)
    else:
        out["jaccard"], out["jaccard_std"] = 1.0, 0.0
    out["sinks_per_step"] = float(sinks.sum(-1).double().mean())
    out["dominant_share_x_uniform"] = float(share.mean())
    out["dominant_at_0_frac"] = float((dom == 0).double().mean())
    exists_steps = ex.sum(0).clamp_min(1)  # (T,)
    pers = sinks.sum(0).double() / exists_steps[None, :]  # (B, T) over the steps the key exists
    ever = sinks.any(0)  # (B, T)
    hist = np.histogram(pers[ever].numpy(), bins=PERSISTENCE_BINS)[0] if bool(ever.any()) else np.zeros(10)
    out["persistence_hist"] = [float(h) / max(1.0, float(hist.sum())) for h in hist]
    out["persistence_max"] = float(pers.max(dim=-1).values.mean())
    out["persistence_pos0"] = float(pers[:, 0].mean())
    stable = (pers >= cfg["stability_threshold"] - 1e-12) & ever  # (B, T)
    out["n_stable"] = float(stable.sum(-1).double().mean())
    out["pos0_stable_frac"] = float(stable[:, 0].double().mean())
    if groups is not None:
        for name, g in groups.items():  # g: (S, B, T) bool
            on = g.gather(2, dom[..., None])[..., 0]  # (S, B) dominant key in the class
            rows = g.any(-1)  # (S, B) steps where the class is non-empty
            out[f"dominant_on_{name}_frac"] = float(on[rows].double().mean()) if bool(rows.any()) else 0.0
            out[f"sinks_per_step_{name}"] = float((sinks & g).sum(-1).double().mean())
        for name in ("mask", "content"):
            g = groups[name]
            rows = g.any(-1).all(0)  # (B,) prompts where the class is present at every step
            d = _restricted_dominant(m, g)  # (S, B)
            v = position_variance(d.T, T_norm)[rows] if bool(rows.any()) else torch.zeros(1)
            out[f"variance_{name}"] = float(v.double().mean())
        gm = groups["mask"]
        mass_share = (m * gm).sum(-1) / m.sum(-1)  # (S, B)
        count_share = gm.sum(-1).double() / T
        out["mask_mass_ratio"] = float((mass_share.double() / count_share.clamp_min(1e-12)).mean())
    arrays = dict(dominant=dom.T.numpy(), stable=[stable[b].nonzero().flatten().tolist() for b in range(B)])
    return out, arrays


def _dlm_groups(traj: Trajectory) -> dict[str, torch.Tensor]:
    ids = traj.step_ids  # (S, B, T)
    mask = ids == int(traj.meta["mask_id"])
    fresh = torch.zeros_like(mask)
    fresh[1:] = mask[:-1] & ~mask[1:]  # committed at the previous step
    return {"mask": mask, "content": ~mask, "fresh": fresh}


def sink_statistics(traj: Trajectory, cfg: VarianceParams, *, with_arrays: bool = False):
    """Per-layer and global sink statistics of one trajectory (see the module docstring).

    cfg: the sink rule and stability threshold (params.VarianceParams: rule, alpha, kappa, eps,
    stability_threshold).

    Returns a JSON-serialisable dict {"meta", "seq_len", "n_steps", "n_layers", "n_prompts",
    "settings", "variants": {variant: {"global": stats, "layers": [stats per layer]}},
    "stable_sinks": {variant: {"global": per-prompt lists of stable positions, "layers": [...]}}}.
    with_arrays: also return plot arrays, as (stats, arrays) with arrays = {"global_mass_norm":
    (B, S, T) per-step normalised global mass of the primary variant, "dominant": {variant: (B, S)
    global dominant positions}}.
    """
    if not 0.0 < cfg.stability_threshold <= 1.0:
        raise ValueError(f"stability_threshold must be in (0, 1], got {cfg.stability_threshold}")
    sink_scores(torch.ones(2), rule=cfg.rule)  # validates the rule name early
    settings = dict(rule=cfg.rule, alpha=cfg.alpha, kappa=cfg.kappa, eps=cfg.eps,
                    stability_threshold=cfg.stability_threshold)
    S, L, B, T = traj.shape
    groups = _dlm_groups(traj) if traj.kind == "dlm" else None
    res: dict[str, Any] = dict(meta=traj.meta, seq_len=T, n_steps=S, n_layers=L, n_prompts=B,
                               settings=settings, variants={}, stable_sinks={})
    dominant: dict[str, np.ndarray] = {}
    variants = traj.variants()
    for vname, vm in variants.items():
        g_stats, g_arr = _stats_one(vm.sum(1), traj, settings, groups)  # global mass (S, B, T)
        layer_stats, layer_stable = [], []
        for layer in range(L):
            st, arr = _stats_one(vm[:, layer], traj, settings, groups)
            layer_stats.append(st)
            layer_stable.append(arr["stable"])
        res["variants"][vname] = {"global": g_stats, "layers": layer_stats}
        res["stable_sinks"][vname] = {"global": g_arr["stable"], "layers": layer_stable}
        dominant[vname] = g_arr["dominant"]
    if not with_arrays:
        return res
    gm = variants[PRIMARY_VARIANT[traj.kind]].sum(1)  # (S, B, T)
    norm = (gm / gm.sum(-1, keepdim=True).clamp_min(1e-30)).permute(1, 0, 2).numpy()  # (B, S, T)
    return res, {"global_mass_norm": norm, "dominant": dominant}


def statistics_table(stats_by_run: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, variant, layer) with every scalar statistic; layer "global" or "0".."L-1";
    ``primary`` marks the paper's variant (DLM full, AR newest)."""
    rows = []
    for name, stats in stats_by_run.items():
        kind = stats["meta"]["kind"]
        for vname, v in stats["variants"].items():
            for layer, st in [("global", v["global"])] + list(enumerate(v["layers"])):
                row = {"run": name, "model": stats["meta"]["model"], "kind": kind,
                       "random_init": stats["meta"]["random_init"], "variant": vname, "layer": str(layer),
                       "primary": vname == PRIMARY_VARIANT[kind]}
                row.update({k: val for k, val in st.items() if not isinstance(val, list)})
                rows.append(row)
    return pd.DataFrame(rows)

