"""Sink statistics of a trajectory: the variance stage's computation (method.md 2).

``sink_statistics`` turns a trajectory into per-layer and global statistics (definitions in
srclib.sinks): normalised dominant-sink positional variance Var_tau[p(tau)] / T^2 with T the
final sequence length P + gen_length (the same T for DLM and AR runs), mean Jaccard stability
of consecutive sink sets, sinks per step, dominant mass share x T_tau (1 = uniform), fraction
of steps whose dominant key is position 0, and persistence (the fraction of the steps at which
a position EXISTS as a key that it is a sink; stable = persistence >= stability_threshold).
Statistics are computed per prompt and averaged over prompts (``*_std``: population std over
prompts); the global statistics of every variant also keep the per-prompt values
(``per_prompt``: stat -> B floats, None where a prompt has no value).
Sinks that exist: a step "has a sink" when its sink set is non-empty; ``sink_step_frac`` is the
share of such steps, ``variance_sink_steps`` and ``persistence_{max,pos0}_sink_steps`` the
variance and persistence over those steps only. ``bos_share``: the share of the step's mass on
position 0; ``dominant_share_x_uniform`` is the strength of the dominant key (1 = uniform).
Variants (``Trajectory.variants``): DLM ``full``; AR ``newest`` (the paper's), ``prefix_raw``,
``prefix_norm`` (both biased towards key 0 by construction: every query sees it, so a random
model's dominant key is 0; NOT evidence, store.BIASED_VARIANTS) and the bias-free
``prefix_expected`` (mass over its expectation under uniform causal attention). AR newest: the
dominant key's offset from the newest query (``offset_frac_0`` .. ``offset_frac_3``,
``offset_frac_ge4``, ``dominant_offset_mean``; a local n-gram head has offset 1-3).
Per head (``head_statistics``, from the trajectory's per-head shares): per layer x head x prompt
the mean over steps of the BOS share and of the strength (top share x keys, 1 = uniform).
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
from srclib.trajectories.store import BIASED_VARIANTS, PRIMARY_VARIANT, Trajectory

if TYPE_CHECKING:
    from srclib.params import VarianceParams

__all__ = ["sink_statistics", "statistics_table", "head_statistics", "PERSISTENCE_BINS", "OFFSET_BINS"]

PERSISTENCE_BINS = np.linspace(0.0, 1.0, 11)


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std(unbiased=False))


def _nanmean(x: np.ndarray) -> float:
    """Mean over the prompts where the value is defined; 0.0 where it is defined for none."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else 0.0


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


def _masked_variance(dom: torch.Tensor, keep: torch.Tensor, T_norm: int) -> np.ndarray:
    """Per prompt Var[p(tau)] / T^2 over the steps in ``keep`` (NaN where none). dom, keep: (S, B)."""
    out = np.full(dom.shape[1], np.nan)
    for b in range(dom.shape[1]):
        sel = dom[keep[:, b], b]
        if sel.numel():
            out[b] = float(position_variance(sel, T_norm))
    return out


def _persistence(sinks: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(B, T) fraction of the chosen steps at which a key that exists is a sink (0 where it never
    exists on them). sinks: (S, B, T) bool (already False at missing keys), steps: (S, B, T) bool
    (the step counts for that prompt and key)."""
    count = steps.sum(0).double()  # (B, T)
    return (sinks & steps).sum(0).double() / count.clamp_min(1)


OFFSET_BINS = ("0", "1", "2", "3", ">=4")  # AR: tokens between the newest query and its dominant key
_OFFSET_KEYS = ("offset_frac_0", "offset_frac_1", "offset_frac_2", "offset_frac_3", "offset_frac_ge4")


def _stats_one(
    m: torch.Tensor, traj: Trajectory, cfg: dict[str, Any], groups: dict[str, torch.Tensor] | None,
    *, per_prompt: bool = False, offsets: bool = False,
):
    """Statistics of one (S, B, T) mass series: every scalar is the mean over prompts of a per-prompt
    value (``_std``: the population std over prompts). per_prompt: also return those values,
    ``out["per_prompt"][stat]`` = B floats (None where a prompt has no value, e.g. no sink step).
    offsets (AR newest query): the dominant key's distance from the query. Returns (json dict,
    arrays for plots/stable info)."""
    S, B, T = m.shape
    T_norm = traj.seq_len
    scores, dom, share = _series(m, traj.valid_len, cfg["rule"], cfg["alpha"], cfg["kappa"], cfg["eps"])
    ex = traj.exists()  # (S, T)
    sinks = sink_sets(scores) & ex[:, None, :]  # (S, B, T)
    has = sinks.any(-1)  # (S, B): the step has a sink (non-empty sink set)
    pp: dict[str, np.ndarray] = {}  # stat -> (B,) per-prompt values
    var = position_variance(dom.T, T_norm)  # (B,)
    pp["variance"] = var.numpy()
    jac = sink_jaccard(scores.permute(1, 0, 2)) if S >= 2 else torch.ones(B, dtype=torch.float64)  # (B,)
    pp["jaccard"] = jac.double().numpy()
    pp["sinks_per_step"] = sinks.sum(-1).double().mean(0).numpy()
    pp["dominant_share_x_uniform"] = share.mean(0).numpy()  # strength: 1 = uniform
    pp["dominant_at_0_frac"] = (dom == 0).double().mean(0).numpy()
    md = m.double()
    pp["bos_share"] = (md[..., 0] / md.sum(-1).clamp_min(1e-300)).mean(0).numpy()
    pp["sink_step_frac"] = has.double().mean(0).numpy()
    pp["variance_sink_steps"] = _masked_variance(dom, has, T_norm)
    exists = ex[:, None, :].expand(S, B, T)
    pers = _persistence(sinks, exists)  # (B, T) over the steps the key exists
    pp["persistence_max"] = pers.max(dim=-1).values.numpy()
    pp["persistence_pos0"] = pers[:, 0].numpy()
    pers_s = _persistence(sinks, exists & has[..., None])  # over the steps with a sink
    none = ~has.any(0).numpy()  # (B,) prompts without a sink step: undefined
    pp["persistence_max_sink_steps"] = np.where(none, np.nan, pers_s.max(dim=-1).values.numpy())
    pp["persistence_pos0_sink_steps"] = np.where(none, np.nan, pers_s[:, 0].numpy())
    ever = sinks.any(0)  # (B, T)
    stable = (pers >= cfg["stability_threshold"] - 1e-12) & ever  # (B, T)
    pp["n_stable"] = stable.sum(-1).double().numpy()
    pp["pos0_stable_frac"] = stable[:, 0].double().numpy()
    if offsets:  # AR: newest query at position valid_len - 1
        pp.update(_offset_stats(traj, dom))
    if groups is not None:
        pp.update(_group_stats(m, sinks, dom, groups, T_norm))
    out: dict[str, Any] = {k: _nanmean(v) for k, v in pp.items()}
    out["variance_std"] = float(np.std(pp["variance"]))
    out["jaccard_std"] = float(np.std(pp["jaccard"]))
    hist = np.histogram(pers[ever].numpy(), bins=PERSISTENCE_BINS)[0] if bool(ever.any()) else np.zeros(10)
    out["persistence_hist"] = [float(h) / max(1.0, float(hist.sum())) for h in hist]
    if per_prompt:
        out["per_prompt"] = {k: [None if np.isnan(x) else float(x) for x in v] for k, v in pp.items()}
    arrays = dict(dominant=dom.T.numpy(), stable=[stable[b].nonzero().flatten().tolist() for b in range(B)])
    return out, arrays


def _offset_stats(traj: Trajectory, dom: torch.Tensor) -> dict[str, np.ndarray]:
    """Per prompt (B,): how often the dominant key ``dom`` (S, B) sits at each distance from the
    newest query (AR: position valid_len - 1), and its mean distance."""
    pp: dict[str, np.ndarray] = {}
    off = (traj.valid_len[:, None] - 1 - dom).clamp_min(0)  # (S, B)
    for i, key in enumerate(_OFFSET_KEYS):
        hit = off >= i if i == len(_OFFSET_KEYS) - 1 else off == i
        pp[key] = hit.double().mean(0).numpy()
    pp["dominant_offset_mean"] = off.double().mean(0).numpy()
    return pp


def _group_stats(
    m: torch.Tensor, sinks: torch.Tensor, dom: torch.Tensor, groups: dict[str, torch.Tensor], T_norm: int,
) -> dict[str, np.ndarray]:
    """Per prompt (B,): the dominant key and the sinks per token class of ``groups`` (name -> (S, B, T)
    bool), the dominant position's variance within the mask and content classes, and the mask
    tokens' share of the mass over their share of the keys."""
    pp: dict[str, np.ndarray] = {}
    T = m.shape[-1]
    for name, g in groups.items():  # g: (S, B, T) bool
        on = g.gather(2, dom[..., None])[..., 0]  # (S, B) dominant key in the class
        rows = g.any(-1)  # (S, B) steps where the class is non-empty
        n_rows = rows.sum(0).double()  # (B,)
        frac = (on & rows).sum(0).double() / n_rows.clamp_min(1)
        pp[f"dominant_on_{name}_frac"] = np.where(n_rows.numpy() > 0, frac.numpy(), np.nan)
        pp[f"sinks_per_step_{name}"] = (sinks & g).sum(-1).double().mean(0).numpy()
    for name in ("mask", "content"):
        g = groups[name]
        rows = g.any(-1).all(0)  # (B,) prompts where the class is present at every step
        d = _restricted_dominant(m, g)  # (S, B)
        pp[f"variance_{name}"] = np.where(rows.numpy(), position_variance(d.T, T_norm).numpy(), np.nan)
    gm = groups["mask"]
    mass_share = (m * gm).sum(-1) / m.sum(-1)  # (S, B)
    count_share = gm.sum(-1).double() / T
    pp["mask_mass_ratio"] = (mass_share.double() / count_share.clamp_min(1e-12)).mean(0).numpy()
    return pp


def head_statistics(traj: Trajectory) -> dict[str, Any] | None:
    """Per layer x head x prompt means over steps of the BOS share and the strength (top share x
    number of keys, 1 = uniform) from the trajectory's per-head shares; None if not recorded.

    {"bos_share": L x H x B, "strength": L x H x B, "bos_share_mean": L x H, "strength_mean": L x H
    (means over prompts), "bos_share_max" / "strength_max": the largest head mean, "bos_share_argmax"
    / "strength_argmax": its [layer, head]}."""
    if traj.head_bos_share is None or traj.head_top_share is None:
        return None
    bos = traj.head_bos_share.double().mean(0)  # (L, H, B)
    n = traj.valid_len.double()[:, None, None, None]  # (S, 1, 1, 1) keys at each step
    strength = (traj.head_top_share.double() * n).mean(0)  # (L, H, B)
    out: dict[str, Any] = {"bos_share": bos.tolist(), "strength": strength.tolist()}
    for name, x in (("bos_share", bos), ("strength", strength)):
        mean = x.mean(-1)  # (L, H)
        flat = int(mean.flatten().argmax())
        out[f"{name}_mean"] = mean.tolist()
        out[f"{name}_max"] = float(mean.flatten()[flat])
        out[f"{name}_argmax"] = [flat // mean.shape[1], flat % mean.shape[1]]
    return out


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
    "stable_sinks": {variant: {"global": per-prompt lists of stable positions, "layers": [...]}},
    "heads": head_statistics(traj) (None without per-head shares)}; each variant's global stats
    hold ``per_prompt`` {stat: B values}.
    with_arrays: also return plot arrays, as (stats, arrays) with arrays = {"global_mass_norm":
    (B, S, T) per-step normalised global mass of the primary variant, "dominant": {variant: (B, S)
    global dominant positions}}.
    """
    if not 0.0 < cfg.stability_threshold <= 1.0:
        raise ValueError(f"stability_threshold must be in (0, 1], got {cfg.stability_threshold}")
    sink_scores(torch.ones(2), rule=cfg.rule, alpha=cfg.alpha, kappa=cfg.kappa, eps=cfg.eps)  # the rule name, early
    settings = dict(rule=cfg.rule, alpha=cfg.alpha, kappa=cfg.kappa, eps=cfg.eps,
                    stability_threshold=cfg.stability_threshold)
    S, L, B, T = traj.shape
    groups = _dlm_groups(traj) if traj.kind == "dlm" else None
    res: dict[str, Any] = dict(meta=traj.meta, seq_len=T, n_steps=S, n_layers=L, n_prompts=B,
                               settings=settings, variants={}, stable_sinks={})
    dominant: dict[str, np.ndarray] = {}
    variants = traj.variants()
    for vname, vm in variants.items():
        offsets = traj.kind == "ar" and vname == PRIMARY_VARIANT["ar"]
        g_stats, g_arr = _stats_one(vm.sum(1), traj, settings, groups, per_prompt=True, offsets=offsets)  # (S, B, T)
        layer_stats, layer_stable = [], []
        for layer in range(L):
            st, arr = _stats_one(vm[:, layer], traj, settings, groups, offsets=offsets)
            layer_stats.append(st)
            layer_stable.append(arr["stable"])
        res["variants"][vname] = {"global": g_stats, "layers": layer_stats}
        res["stable_sinks"][vname] = {"global": g_arr["stable"], "layers": layer_stable}
        dominant[vname] = g_arr["dominant"]
    res["heads"] = head_statistics(traj)
    if not with_arrays:
        return res
    gm = variants[PRIMARY_VARIANT[traj.kind]].sum(1)  # (S, B, T)
    norm = (gm / gm.sum(-1, keepdim=True).clamp_min(1e-30)).permute(1, 0, 2).numpy()  # (B, S, T)
    return res, {"global_mass_norm": norm, "dominant": dominant}


def statistics_table(stats_by_run: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, variant, layer) with every scalar statistic; layer "global" or "0".."L-1";
    ``primary`` marks the paper's variant (DLM full, AR newest); ``biased`` the AR prefix variants
    biased towards key 0 by construction (prefix_raw, prefix_norm: not evidence of a sink)."""
    rows = []
    for name, stats in stats_by_run.items():
        kind = stats["meta"]["kind"]
        for vname, v in stats["variants"].items():
            for layer, st in [("global", v["global"])] + list(enumerate(v["layers"])):
                row = {"run": name, "model": stats["meta"]["model"], "kind": kind,
                       "random_init": stats["meta"]["random_init"], "variant": vname, "layer": str(layer),
                       "primary": vname == PRIMARY_VARIANT[kind], "biased": vname in BIASED_VARIANTS}
                row.update({k: val for k, val in st.items() if not isinstance(val, (list, dict))})
                rows.append(row)
    return pd.DataFrame(rows)

