"""The sink-dynamics animation (issue 14 item 7): its frames (srclib.trajectories.panels
.sink_dynamics_panels) against a plain-loop re-derivation on hand-made trajectories, the GIF and
HTML player (one frame per step, deterministic bytes), and the plot stage writing both and the
front page linking them."""

from __future__ import annotations

import gc
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from srclib import paths, plotting
from srclib.stages import plot
from srclib.trajectories import panels
from srclib.trajectories.store import Trajectory

from report_tree import build_tree  # tests/ is on sys.path

MASK = 63
SINK = dict(rule="zscore", alpha=5.0, kappa=2.0, eps=0.0)


def _traj(kind: str, run: str, *, S: int, L: int = 2, B: int = 2, P: int = 3, G: int = 5, seed: int = 0,
          random_init: bool = False) -> Trajectory:
    """Random positive masses (zero at keys that do not exist), a planted spike that moves with the
    step for a DLM and sits on position 0 for an AR run; DLM: the generated keys stay [MASK] until
    they are committed one per step."""
    g = torch.Generator().manual_seed(seed)
    T = P + G
    mass = 0.5 + torch.rand(S, L, B, T, generator=g)
    valid = torch.full((S,), T) if kind == "dlm" else torch.tensor([min(T, P + s) for s in range(S)])
    for s in range(S):
        mass[s, :, :, 0 if kind == "ar" else (2 * s + 1) % T] += 6.0
    mass = torch.where(torch.arange(T)[None, None, None, :] < valid[:, None, None, None], mass, torch.zeros_like(mass))
    prompt = torch.randint(4, 60, (B, P), generator=g)
    final = torch.cat([prompt, torch.randint(4, 60, (B, G), generator=g)], dim=1)
    meta = dict(format=1, model=run.removesuffix("-randinit"), run=run, kind=kind, causal=kind == "ar",
                shift=False, bos_id=0, mask_id=MASK if kind == "dlm" else None, has_bos=False,
                random_init=random_init, prompt_indices=list(range(B)), settings={})
    extra = {}
    if kind == "dlm":
        step_ids = final[None].repeat(S, 1, 1).clone()  # (S, B, T)
        for s in range(S):
            step_ids[s, :, P + s:] = MASK
        extra["step_ids"] = step_ids
    return Trajectory(meta=meta, mass=mass, valid_len=valid, prompt_ids=prompt, final_ids=final, **extra)


def _zscore_sinks(m: list[float], alpha: float, kappa: float) -> list[bool]:
    n = len(m)
    mean = sum(m) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in m) / n)
    return [1.0 / (1.0 + math.exp(-alpha * (x - mean - kappa * std))) >= 0.5 for x in m]


def _margin_sinks(m: list[float], eps: float) -> list[bool]:
    n = len(m)
    return [n > 1 and m[k] > (sum(m) - m[k]) / (n - 1) + eps for k in range(n)]


def _expected(t: Trajectory, prompt: int, n_frames: int, rule: str, alpha: float, kappa: float, eps: float):
    """Plain loops over frames, layers and keys (the docstring's definitions)."""
    S, L, _, T = t.shape
    m = t.mass.double().tolist()  # both kinds' primary variant is the stored mass (DLM full, AR newest)
    out = {k: [] for k in ("steps", "layers", "share", "sinks", "dominant", "masked", "n_keys")}
    for f in range(n_frames):
        s = 0 if n_frames == 1 else math.floor(f * (S - 1) / (n_frames - 1) + 0.5)
        n = int(t.valid_len[s])
        layers = [[float("nan")] * T for _ in range(L)]
        for lay in range(L):
            row = [m[s][lay][prompt][k] for k in range(n)]
            for k in range(n):
                layers[lay][k] = row[k] / sum(row) * n
        glob = [sum(m[s][lay][prompt][k] for lay in range(L)) for k in range(n)]
        share = [glob[k] / sum(glob) if k < n else float("nan") for k in range(T)]
        sk = _zscore_sinks(glob, alpha, kappa) if rule == "zscore" else _margin_sinks(glob, eps)
        dom = 0
        for k in range(n):
            if glob[k] > glob[dom]:
                dom = k
        masked = [t.kind == "dlm" and int(t.step_ids[s, prompt, k]) == MASK for k in range(T)]
        for key, v in (("steps", s), ("layers", layers), ("share", share), ("sinks", sk + [False] * (T - n)),
                       ("dominant", dom), ("masked", masked), ("n_keys", n)):
            out[key].append(v)
    return {k: np.array(v) for k, v in out.items()}


# =================================================================================================
# frames
# =================================================================================================
@pytest.mark.parametrize("n_steps, n_frames, expected", [
    (5, 5, [0, 1, 2, 3, 4]), (5, 3, [0, 2, 4]), (4, 3, [0, 2, 3]), (3, 5, [0, 1, 1, 2, 2]),
    (7, 4, [0, 2, 4, 6]), (10, 1, [0]), (1, 3, [0, 0, 0])])
def test_frame_steps_known_answers(n_steps, n_frames, expected):
    # (4, 3): frame 1 sits at 1.5 -> 2 (halves round up); (3, 5): 0.5 -> 1, 1.5 -> 2
    assert panels.frame_steps(n_steps, n_frames).tolist() == expected


@pytest.mark.parametrize("rule", ["zscore", "margin"])
def test_frames_equal_plain_loop_rederivation(rule):
    sink = dict(SINK, rule=rule, eps=0.05)
    trajs = {"dlm-a": _traj("dlm", "dlm-a", S=6, seed=1), "ar-b": _traj("ar", "ar-b", S=4, L=3, seed=2)}
    got = panels.sink_dynamics_panels(trajs, prompt=1, max_frames=5, **sink)
    assert sorted(got) == ["ar-b", "dlm-a"]
    for run, t in trajs.items():
        exp, g = _expected(t, 1, 5, **sink), got[run]
        np.testing.assert_array_equal(g["steps"], exp["steps"])
        np.testing.assert_allclose(g["layers"], exp["layers"], rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(g["share"], exp["share"], rtol=1e-6, equal_nan=True)
        for key in ("sinks", "dominant", "masked", "n_keys"):
            np.testing.assert_array_equal(g[key], exp[key], err_msg=f"{run} {key}")
        assert (g["kind"], g["model"], g["prompt"], g["prompt_len"], g["n_steps"]) == (t.kind, run, 1, 3, t.shape[0])
    # the planted spikes: the DLM's sink moves with the step, the AR run's stays on position 0
    assert got["dlm-a"]["dominant"].tolist() == [(2 * s + 1) % 8 for s in exp_steps(6, 5)]
    assert got["ar-b"]["dominant"].tolist() == [0] * 5
    # AR keys appear one per step; the DLM's generated keys leave [MASK] one per step
    assert np.isnan(got["ar-b"]["share"][0, 3:]).all() and got["ar-b"]["n_keys"].tolist() == [3, 4, 5, 5, 6]
    assert got["dlm-a"]["masked"].sum(1).tolist() == [5 - s for s in exp_steps(6, 5)]


def exp_steps(S: int, F: int) -> list[int]:
    return [math.floor(f * (S - 1) / (F - 1) + 0.5) for f in range(F)]


def test_frames_are_capped_and_default_to_every_step():
    trajs = {"d": _traj("dlm", "d", S=9)}
    assert panels.sink_dynamics_panels(trajs, **SINK)["d"]["steps"].tolist() == list(range(9))
    assert panels.sink_dynamics_panels(trajs, max_frames=4, **SINK)["d"]["steps"].tolist() == [0, 3, 5, 8]
    assert panels.sink_dynamics_panels({}, **SINK) == {}


def test_frames_bad_inputs_are_named():
    trajs = {"d": _traj("dlm", "d", S=3)}
    with pytest.raises(ValueError, match=r"prompt must be in \[0, 2\) for run 'd', got 2"):
        panels.sink_dynamics_panels(trajs, prompt=2, **SINK)
    with pytest.raises(ValueError, match="max_frames must be >= 1, got 0"):
        panels.sink_dynamics_panels(trajs, max_frames=0, **SINK)
    with pytest.raises(ValueError, match=r"unknown sink rule 'top'; allowed rules: \['margin', 'zscore'\]"):
        panels.sink_dynamics_panels(trajs, **dict(SINK, rule="top"))
    with pytest.raises(ValueError, match="n_steps and n_frames must be >= 1"):
        panels.frame_steps(0, 3)


# =================================================================================================
# the animation
# =================================================================================================
@pytest.fixture(scope="module")
def four_runs():
    trajs = {"tiny-dlm": _traj("dlm", "tiny-dlm", S=6, seed=3), "tiny-ar": _traj("ar", "tiny-ar", S=6, seed=4),
             "tiny-dlm-randinit": _traj("dlm", "tiny-dlm-randinit", S=6, seed=5, random_init=True),
             "big-ar": _traj("ar", "big-ar", S=4, L=3, seed=6)}
    return panels.sink_dynamics_panels(trajs, **SINK)


def test_animation_layout_and_last_frame_draws_the_panels(four_runs, tmp_path):
    anim = plotting.sink_dynamics_animation(four_runs)
    written = plotting.save_animation(anim, "dyn", tmp_path, dpi=20)
    fig = anim._fig  # after saving, every artist holds the last frame
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    # DLMs first beside the AR runs; the random-init twin under its model; big-ar has 4 steps: 6 frames
    assert [t.split("\n")[0] for t in titles] == ["tiny-dlm (DLM)", "big-ar (AR)", "tiny-ar (AR)",
                                                  "tiny-dlm-randinit (DLM, random init)"]
    assert [t.split("\n")[1] for t in titles] == ["step 6 of 6", "step 4 of 4", "step 6 of 6", "step 6 of 6"]
    assert sum(not ax.get_visible() for ax in fig.axes) == 4  # no random-init twin for the two AR models
    p = four_runs["tiny-dlm"]
    ax_h, ax_b = fig.axes[0], fig.axes[3]  # the (4, 3) grid row by row: tiny-dlm's heatmap above its bars
    assert ax_h.get_title().startswith("tiny-dlm (DLM)") and ax_b.get_ylabel() == "share of mass (%)"
    np.testing.assert_allclose(ax_h.images[0].get_array(), p["layers"][-1])
    done, todo = [a for a in ax_b.patches]
    share = 100 * p["share"][-1]
    np.testing.assert_allclose(done.get_data().values + todo.get_data().values, share)
    np.testing.assert_allclose(todo.get_data().values, np.where(p["masked"][-1], share, 0.0))
    sink_pts, dom_pt = ax_b.collections
    assert sorted(sink_pts.get_offsets()[:, 0].tolist()) == np.flatnonzero(p["sinks"][-1]).tolist()
    assert dom_pt.get_offsets()[0, 0] == p["dominant"][-1]
    assert set(written) == {"gif", "html"}


def test_runs_of_one_model_in_one_row_get_their_own_columns(four_runs):
    # a random-weight model (random_init from its marker) beside its random-init twin: both random
    rnd = {"my-ar": {**four_runs["tiny-ar"], "model": "my-ar", "random_init": True},
           "my-ar-randinit": {**four_runs["tiny-ar"], "model": "my-ar", "random_init": True}}
    anim = plotting.sink_dynamics_animation(rnd)
    titles = [ax.get_title().split("\n")[0] for ax in anim._fig.axes if ax.get_title()]
    assert titles == ["my-ar (AR, random init)", "my-ar-randinit (AR, random init)"]
    with pytest.warns(UserWarning, match="deleted without rendering"):  # drawn, not saved: on purpose
        del anim
        gc.collect()


def test_gif_has_one_frame_per_step_and_bytes_are_deterministic(four_runs, tmp_path):
    two = panels.sink_dynamics_panels({"d": _traj("dlm", "d", S=3, seed=7), "a": _traj("ar", "a", S=3, seed=8)}, **SINK)
    first = plotting.save_animation(plotting.sink_dynamics_animation(two), "dyn", tmp_path / "a", dpi=40)
    second = plotting.save_animation(plotting.sink_dynamics_animation(two), "dyn", tmp_path / "b", dpi=40)
    with Image.open(first["gif"]) as im:
        assert im.format == "GIF" and im.n_frames == 3
        assert im.info["loop"] == 0 and im.info["duration"] == 1000 / plotting.ANIMATION_FPS == 200
    text = first["html"].read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("data:image/png;base64,") == 3
    assert f"anim{plotting.ANIMATION_ID} = new Animation" in text.replace("var ", "")
    assert not re.search(r"[0-9a-f]{32}", text.split("data:image")[0])  # no random element id
    assert "http" not in text and "fa fa-" not in text  # self-contained: no CDN icon font
    for ext in ("gif", "html"):
        assert first[ext].read_bytes() == second[ext].read_bytes(), ext
    assert not list((tmp_path / "a").glob(".*"))  # atomic writes leave no temporary file


def test_animation_bad_inputs(four_runs, tmp_path):
    with pytest.raises(ValueError, match="no trajectories to animate"):
        plotting.sink_dynamics_animation({})
    with pytest.raises(ValueError, match="fps must be > 0"):
        plotting.sink_dynamics_animation(four_runs, fps=0)
    uneven = {"a": four_runs["tiny-dlm"], "b": {**four_runs["tiny-ar"], "steps": four_runs["tiny-ar"]["steps"][:3]}}
    with pytest.raises(ValueError, match=r"same number of frames, got \[3, 6\]"):
        plotting.sink_dynamics_animation(uneven)
    anim = plotting.sink_dynamics_animation(four_runs)
    with pytest.raises(ValueError, match="stem must be a plain file stem"):
        plotting.save_animation(anim, "../x", tmp_path)
    with pytest.warns(UserWarning, match="deleted without rendering"):  # refused before any frame is drawn
        del anim
        gc.collect()


# =================================================================================================
# the plot stage and the front page
# =================================================================================================
@pytest.mark.slow  # a full plot stage on a synthetic tree: ~10 s
def test_plot_stage_writes_the_animation_and_the_index_links_it(tmp_path):
    params = build_tree(tmp_path, train=False)
    res = plot.run(params, root=tmp_path)
    figs = paths.figures_dir(root=tmp_path)
    gif, player = figs / f"{plot.ANIMATION_STEM}.gif", figs / f"{plot.ANIMATION_STEM}.html"
    with Image.open(gif) as im:
        assert im.n_frames == 6  # the synthetic trajectories' steps
    assert player.read_text().count("data:image/png;base64,") == 6
    assert (res.animation.gif, res.animation.html) == (gif, player)
    assert 'src="data:image/gif;base64,' in res.animation._repr_html_()
    text = res.index.read_text()
    fig_html = re.search(r'<figure id="fig-sink_dynamics">.*?</figure>', text).group(0)
    assert '<img src="figures/sink_dynamics.gif"' in fig_html and 'href="figures/sink_dynamics.html"' in fig_html
    assert text.index('id="fig-sink_dynamics"') < text.index('id="fig-trajectory_heatmaps"')  # headline first
    assert (figs / "trajectory_heatmaps.png").is_file()  # the static version stays for print


def test_html_player_works_offline_in_a_browser(four_runs, tmp_path):
    """Headless Chromium (skipped without it, as tests/test_browser.py): the player shows a frame,
    the slider spans every frame and the step buttons move it."""
    from helpers import CHROMEDRIVER, CHROMIUM, FLAGS

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install -y chromium chromium-driver)")
    import time

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    two = panels.sink_dynamics_panels({"d": _traj("dlm", "d", S=3, seed=7), "a": _traj("ar", "a", S=3, seed=8)}, **SINK)
    page = plotting.save_animation(plotting.sink_dynamics_animation(two), "dyn", tmp_path, dpi=30)["html"]
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        drv.get(page.as_uri())
        ident = plotting.ANIMATION_ID
        slider = drv.find_element("id", f"_anim_slider{ident}")
        img = drv.find_element("id", f"_anim_img{ident}")
        deadline = time.monotonic() + 10
        while not drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img):
            assert time.monotonic() < deadline, "the player's first frame did not load"
            time.sleep(0.1)
        assert slider.get_attribute("max") == "2"
        drv.find_element("css selector", "button[title='Pause']").click()
        drv.find_element("css selector", "button[title='First frame']").click()
        assert slider.get_attribute("value") == "0"
        drv.find_element("css selector", "button[title='Next frame']").click()
        assert slider.get_attribute("value") == "1"
        assert drv.find_element("css selector", "button[title='Play']").text == "\u25b6"
        requests = drv.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert not [r for r in requests if not r.startswith(("file:", "data:"))], requests
    finally:
        drv.quit()
