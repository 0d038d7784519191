"""Plot data of collected trajectories: what the variance stage's plots and the step x position
heatmaps draw, computed from a Trajectory alone (used by the collect and plot stages, so neither
imports the other's code)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from srclib.sinks import dominant_positions
from srclib.trajectories.store import PRIMARY_VARIANT

__all__ = ["trajectory_plot_data", "heatmap_panels"]


def trajectory_plot_data(traj) -> dict[str, Any]:
    """What the variance stage's ``plots`` hold for one trajectory, from the trajectory alone:
    {"global_mass_norm": (B, S, T) per-step normalised global mass of the primary variant (zero at
    keys that do not exist yet), "dominant": {primary variant: (B, S) dominant key positions over
    the keys that exist (ties: lowest index)}, "prompt_len": P}."""
    variant = PRIMARY_VARIANT[traj.kind]
    gm = traj.variants()[variant].sum(1)  # (S, B, T)
    S, B, _ = gm.shape
    dom = torch.zeros(S, B, dtype=torch.long)
    for s in range(S):
        dom[s] = dominant_positions(gm[s, :, : int(traj.valid_len[s])])  # (B,)
    norm = (gm / gm.sum(-1, keepdim=True).clamp_min(1e-30)).permute(1, 0, 2)  # (B, S, T)
    return {"global_mass_norm": norm.numpy(), "dominant": {variant: dom.T.numpy()},
            "prompt_len": int(traj.prompt_ids.shape[1])}


def heatmap_panels(trajs: Mapping[str, Any], n_prompts: int = 2) -> dict[str, dict[str, Any]]:
    """run -> what srclib.plotting.trajectory_heatmaps draws for it: {"mass": (b, S, T) mass share
    x number of existing keys (1 = uniform; NaN at keys that do not exist yet), "kind",
    "random_init", "prompt_len"}, b = min(n_prompts, prompts of every run)."""
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if not trajs:
        return {}
    rows = min(n_prompts, min(int(t.shape[2]) for t in trajs.values()))
    out = {}
    for run, t in trajs.items():
        norm = trajectory_plot_data(t)["global_mass_norm"][:rows]  # (b, S, T)
        n_keys = t.valid_len.numpy().astype(float)[None, :, None]  # (1, S, 1)
        exists = t.exists().numpy()[None]  # (1, S, T)
        out[run] = {"mass": np.where(exists, norm * n_keys, np.nan), "kind": t.kind,
                    "random_init": bool(t.meta.get("random_init")), "prompt_len": int(t.prompt_ids.shape[1])}
    return out
