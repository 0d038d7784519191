"""Plot data of collected trajectories: what the variance stage's plots, the step x position
heatmaps and the sink-dynamics animation draw, computed from a Trajectory alone (used by the
collect and plot stages, so neither imports the other's code)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from srclib.sinks import dominant_positions, sink_scores, sink_sets
from srclib.trajectories.store import PRIMARY_VARIANT

__all__ = ["trajectory_plot_data", "heatmap_panels", "frame_steps", "sink_dynamics_panels"]


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


def frame_steps(n_steps: int, n_frames: int) -> np.ndarray:
    """(n_frames,) step of a run with n_steps steps shown at each frame of a common frame grid:
    frame f shows step round(f * (n_steps - 1) / (n_frames - 1)) (halves round up), so the first
    and last frames show every run's first and last step; n_frames = n_steps is the identity."""
    if n_steps < 1 or n_frames < 1:
        raise ValueError(f"n_steps and n_frames must be >= 1, got n_steps={n_steps}, n_frames={n_frames}")
    if n_frames == 1:
        return np.zeros(1, dtype=np.int64)
    f = np.arange(n_frames, dtype=np.int64)
    return (2 * f * (n_steps - 1) + (n_frames - 1)) // (2 * (n_frames - 1))


def sink_dynamics_panels(trajs: Mapping[str, Any], *, rule: str, alpha: float, kappa: float, eps: float,
                         prompt: int = 0, max_frames: int = 64) -> dict[str, dict[str, Any]]:
    """run -> what srclib.plotting.sink_dynamics_animation draws for it: one frame per step on a
    common grid of F = min(max_frames, the most steps of any run) frames (``frame_steps``: runs
    with other step counts are matched by their fraction of the trajectory), for ONE prompt
    (sink positions differ between prompts, so a mean over prompts would smear a moving sink).
    Mass: the run's primary variant (DLM full forward, AR newest query); keys that do not exist
    yet at a step (AR) are NaN.

    Per run: "layers" (F, L, T) mass share of each layer x number of existing keys (1 = uniform);
    "share" (F, T) share of the global mass (summed over layers), in [0, 1]; "sinks" (F, T) bool,
    the sink set of the global mass under the variance stage's rule ({k : s_k >= 0.5} over the
    existing keys, as srclib.trajectories.stats computes it); "dominant" (F,) argmax of the global
    mass (ties: lowest index); "masked" (F, T) bool, keys that are still [MASK] at that step (DLM;
    all False for AR); "steps" (F,) the run's step shown; "n_keys" (F,) existing keys; "n_steps",
    "kind", "random_init", "model", "prompt", "prompt_len".
    rule, alpha, kappa, eps: the sink rule (params.variance)."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if not trajs:
        return {}
    for run, t in trajs.items():
        if not 0 <= prompt < int(t.shape[2]):
            raise ValueError(f"prompt must be in [0, {int(t.shape[2])}) for run {run!r}, got {prompt}")
    sink_scores(torch.ones(2), rule=rule, alpha=alpha, kappa=kappa, eps=eps)  # the rule name, first
    n_frames = min(max_frames, max(int(t.shape[0]) for t in trajs.values()))
    out = {}
    for run, t in trajs.items():
        S, L, _, T = t.shape
        steps = frame_steps(S, n_frames)
        m = t.variants()[PRIMARY_VARIANT[t.kind]][:, :, prompt].double()  # (S, L, T)
        n_keys = t.valid_len.numpy().astype(np.int64)  # (S,)
        exists = t.exists().numpy()  # (S, T)
        g = m.sum(1)  # (S, T) global mass
        layers = (m / m.sum(-1, keepdim=True).clamp_min(1e-300)).numpy() * n_keys[:, None, None]
        share = (g / g.sum(-1, keepdim=True).clamp_min(1e-300)).numpy()
        sinks = np.zeros((S, T), dtype=bool)
        dom = np.zeros(S, dtype=np.int64)
        for s in range(S):
            n = int(n_keys[s])
            sinks[s, :n] = sink_sets(sink_scores(g[s, :n], rule=rule, alpha=alpha, kappa=kappa, eps=eps)).numpy()
            dom[s] = int(dominant_positions(g[s, :n]))
        if t.kind == "dlm" and t.step_ids is not None:
            masked = (t.step_ids[:, prompt] == int(t.meta["mask_id"])).numpy()  # (S, T)
        else:
            masked = np.zeros((S, T), dtype=bool)
        out[run] = {
            "layers": np.where(exists[:, None, :], layers, np.nan)[steps],
            "share": np.where(exists, share, np.nan)[steps], "sinks": sinks[steps], "dominant": dom[steps],
            "masked": masked[steps], "steps": steps, "n_keys": n_keys[steps], "n_steps": S, "kind": t.kind,
            "random_init": bool(t.meta.get("random_init")), "model": str(t.meta.get("model", run)),
            "prompt": prompt, "prompt_len": int(t.prompt_ids.shape[1]),
        }
    return out
