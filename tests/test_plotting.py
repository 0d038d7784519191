"""srclib.plotting: one style, deterministic bytes, and each figure draws the numbers it is given
(checked against the inputs, not against another plotting call)."""

from __future__ import annotations


import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from srclib import plotting
from srclib.report import loaders, results, series
from srclib.trajectories import panels
from srclib.trajectories.store import PRIMARY_VARIANT
from srclib.files import read_json, write_json

from report_tree import RUNS, TASKS, build_tree, default_accuracy, write_variance_tree  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot-tree")
    params = build_tree(root)
    df = results.load_results(params, root=root)
    vm, vp = loaders.load_variance(root=root)
    trajs = loaders.load_trajectories(sorted(vp), root=root)
    for run, t in trajs.items():
        vp[run].update(panels.trajectory_plot_data(t))
    return dict(root=root, params=params, df=df, vm=vm, vp=vp, trajs=trajs, acc=series.accuracy_errors(df),
                ppl=series.perplexity_series(df), models=results.pruned_models(df),
                prune=loaders.load_prune_metrics(params, root=root),
                train=loaders.load_train_metrics(params.models, root=root))


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _series_lines(ax) -> dict:
    """label -> data line of every labelled series (errorbar containers and plain lines)."""
    out = {c.get_label(): c.lines[0] for c in ax.containers if hasattr(c, "lines")}
    out.update({ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")})
    return out


def _check_labelled(fig):
    fig.canvas.draw()
    axes = _visible_axes(fig)
    assert axes
    for ax in axes:
        assert ax.get_xlabel() or fig.get_supxlabel(), f"unlabelled x axis in {ax.get_title()!r}"
        assert ax.get_ylabel() or fig.get_supylabel(), f"unlabelled y axis in {ax.get_title()!r}"
    assert fig.get_suptitle()


# =================================================================================================
# style and saving
# =================================================================================================
def test_style_is_scoped():
    before = dict(matplotlib.rcParams)
    with plotting.style():
        assert matplotlib.rcParams["svg.hashsalt"] == "srclib"
        assert matplotlib.rcParams["font.family"] == ["DejaVu Sans"]
        assert matplotlib.rcParams["savefig.dpi"] == plotting.DPI
    assert dict(matplotlib.rcParams) == before


def test_one_colour_per_method_one_line_style_per_weighting():
    assert len(set(map(tuple, plotting.METHOD_COLORS.values()))) == len(plotting.METHOD_COLORS)
    assert len(set(plotting.WEIGHTING_STYLES.values())) == len(plotting.WEIGHTING_STYLES)
    assert set(plotting.METHOD_COLORS) >= {"dense", "magnitude", "wanda", "sparsegpt"}
    assert set(plotting.WEIGHTING_STYLES) >= {"uniform", "sink", "stability"}


def test_save_figure_deterministic_bytes(tree, tmp_path):
    fig = plotting.accuracy_vs_sparsity(tree["acc"], tree["models"])
    a = plotting.save_figure(fig, "acc", tmp_path / "a")
    b = plotting.save_figure(fig, "acc", tmp_path / "b")
    fig2 = plotting.accuracy_vs_sparsity(tree["acc"], tree["models"])  # built again from the same data
    c = plotting.save_figure(fig2, "acc", tmp_path / "c")
    for ext in ("png", "pdf"):
        assert a[ext].read_bytes() == b[ext].read_bytes() == c[ext].read_bytes(), ext
    assert a["png"].read_bytes().startswith(b"\x89PNG") and a["pdf"].read_bytes().startswith(b"%PDF")
    assert b"CreationDate" not in a["pdf"].read_bytes() and b"matplotlib" not in a["png"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["acc.pdf", "acc.png"]  # no temp files left
    with pytest.raises(ValueError, match="stem"):
        plotting.save_figure(fig, "../x", tmp_path)


# =================================================================================================
# each figure shows its data
# =================================================================================================
def test_accuracy_vs_sparsity_draws_the_series(tree):
    fig = plotting.accuracy_vs_sparsity(tree["acc"], tree["models"])
    _check_labelled(fig)
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["tiny-dlm", "smollm2-135m"]  # diffusion model first
    lines = _series_lines(axes[0])
    assert set(lines) == {"Dense", "Magnitude (uniform)", "Wanda (uniform)", "Wanda (sink-aware)", "Wanda (stability)",
                          "SparseGPT (uniform)", "SparseGPT (sink-aware)"}
    sink = lines["Wanda (sink-aware)"]
    assert sink.get_color() == matplotlib.colors.to_hex(plotting.METHOD_COLORS["wanda"]) or \
        matplotlib.colors.to_rgb(sink.get_color()) == pytest.approx(plotting.METHOD_COLORS["wanda"])
    assert sink.get_linestyle() == "--"
    # starts at the dense average, then the mean over seeds of each seed's task average
    dense = np.mean([100 * default_accuracy("", dict(method="dense", sparsity=0.0, seed=0, weighting="none"), t)
                     for t in TASKS])
    s50 = np.mean([np.mean([100 * default_accuracy("", dict(method="wanda", sparsity=0.5, seed=k, weighting="sink"), t)
                            for t in TASKS]) for k in (0, 1, 2)])
    np.testing.assert_allclose(sink.get_xdata(), [0, 50])
    np.testing.assert_allclose(sink.get_ydata(), [dense, s50])
    wu = lines["Wanda (uniform)"]
    np.testing.assert_allclose(wu.get_xdata(), [0, 30, 50])  # the 2:4 row is not on the curve


def test_perplexity_vs_sparsity_log_axis(tree):
    fig = plotting.perplexity_vs_sparsity(tree["ppl"], tree["models"])
    _check_labelled(fig)
    ax = _visible_axes(fig)[0]
    assert ax.get_yscale() == "log"
    ln = _series_lines(ax)["SparseGPT (sink-aware)"]
    np.testing.assert_allclose(ln.get_ydata(), [100.0, 100.0 * (1 + 3 * 0.7)])


def test_sink_variance_dlm_vs_ar(tree):
    vm, vp = tree["vm"], tree["vp"]
    fig = plotting.sink_variance_dlm_vs_ar(vm, vp)
    _check_labelled(fig)
    left, right = _visible_axes(fig)
    lines = {ln.get_label(): ln for ln in left.get_lines()}
    assert set(lines) == set(RUNS)
    for run, ln in lines.items():
        np.testing.assert_allclose(ln.get_ydata(), vp[run]["variance_per_layer"])
        assert ln.get_linestyle() == ("--" if RUNS[run][1] else "-")
        assert matplotlib.colors.to_rgb(ln.get_color()) == pytest.approx(plotting.KIND_COLORS[RUNS[run][0]])
    heights = [b.get_height() for b in right.patches]
    labels = [t.get_text() for t in right.get_xticklabels()]
    assert labels == ["tiny-dlm", "tiny-dlm-randinit", "tiny-ar", "tiny-ar-randinit"]
    np.testing.assert_allclose(heights, [vm["runs"][r]["variance"] for r in labels])
    assert heights[0] > 0.01 and heights[2] == pytest.approx(0.0)  # planted: DLM moves, AR stays


def test_sink_variance_accepts_run_variance_plots(tree):
    """The variance notebook passes the variance stage's own plots (no kind/random_init keys):
    the figures draw those numbers (per-layer variances, global variances, dominant positions)."""
    res = write_variance_tree(tree["root"], tree["params"])
    plots, metrics = res["plots"], res["metrics"]
    assert not any("kind" in p or "random_init" in p for p in plots.values())  # the case this test is about
    for i, p in enumerate(plots.values()):  # distinct values per run and layer: a swap or reversal shows
        p["variance_per_layer"] = (p["variance_per_layer"]
                                   + 0.01 * (i + 1) * (1 + np.arange(len(p["variance_per_layer"]))))
    fig = plotting.sink_variance_dlm_vs_ar(metrics, plots)
    _check_labelled(fig)
    left, right = _visible_axes(fig)
    lines = {ln.get_label(): ln for ln in left.get_lines()}
    assert set(lines) == set(RUNS)
    for run, ln in lines.items():
        v = np.asarray(plots[run]["variance_per_layer"], dtype=float)  # (L,)
        np.testing.assert_allclose(ln.get_ydata(), v)
        np.testing.assert_allclose(ln.get_xdata(), np.arange(len(v)) / (len(v) - 1))
        assert ln.get_linestyle() == ("--" if RUNS[run][1] else "-")  # kind and init read from the metrics
        assert matplotlib.colors.to_rgb(ln.get_color()) == pytest.approx(plotting.KIND_COLORS[RUNS[run][0]])
    labels = [t.get_text() for t in right.get_xticklabels()]
    np.testing.assert_allclose([b.get_height() for b in right.patches],
                               [metrics["runs"][r]["variance"] for r in labels])
    fig2 = plotting.sink_position_vs_step(plots, PRIMARY_VARIANT)
    _check_labelled(fig2)
    for ax in _visible_axes(fig2):
        run = ax.get_title().split(" (")[0]
        dom = plots[run]["dominant"][PRIMARY_VARIANT[RUNS[run][0]]]  # (B, S)
        bold = max(ax.get_lines(), key=lambda ln: ln.get_linewidth())
        np.testing.assert_array_equal(bold.get_ydata()[:-1], dom[0])  # prompt 0, each step


def test_trajectory_heatmaps(tree):
    trajs = {r: t for r, t in tree["trajs"].items() if not RUNS[r][1]}
    fig = plotting.trajectory_heatmaps(panels.heatmap_panels(trajs, n_prompts=2))
    _check_labelled(fig)
    axes = _visible_axes(fig)
    assert len(axes) == 4 and axes[0].get_title() == "tiny-dlm (DLM)" and axes[1].get_title() == "tiny-ar (AR)"
    for ax, run, b in zip(axes, ["tiny-dlm", "tiny-ar"] * 2, [0, 0, 1, 1]):
        img = np.ma.filled(ax.get_images()[0].get_array().astype(float), np.nan)  # (S, T)
        t = trajs[run]
        valid = t.valid_len.numpy()
        assert img.shape == (t.shape[0], t.seq_len)
        for s in range(img.shape[0]):
            row = img[s]
            assert np.isnan(row[valid[s]:]).all()  # keys that do not exist yet are blank
            # each step: share x number of keys, so the mean over existing keys is 1
            assert np.nanmean(row[: valid[s]]) == pytest.approx(1.0, rel=1e-5)
            gm = t.mass[s, :, b].sum(0).numpy()  # (T,) global mass, recomputed here
            np.testing.assert_allclose(row[: valid[s]], gm[: valid[s]] / gm.sum() * valid[s], rtol=1e-5)
    with pytest.raises(ValueError, match="n_prompts"):
        panels.heatmap_panels(trajs, n_prompts=0)


def test_sink_position_vs_step(tree):
    vp = tree["vp"]
    fig = plotting.sink_position_vs_step(vp, PRIMARY_VARIANT, prompt=1, variance_metrics=tree["vm"])
    _check_labelled(fig)
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["tiny-dlm (DLM)", "tiny-dlm-randinit (DLM)", "tiny-ar (AR)",
                                               "tiny-ar-randinit (AR)"]
    bold = max(axes[0].get_lines(), key=lambda ln: ln.get_linewidth())
    np.testing.assert_array_equal(bold.get_ydata()[:6], [(3 * s) % 10 for s in range(6)])  # planted DLM sink
    assert bold.get_ydata()[6] == bold.get_ydata()[5]  # the last step's value held for one step
    bold_ar = max(axes[2].get_lines(), key=lambda ln: ln.get_linewidth())
    assert (np.asarray(bold_ar.get_ydata()) == 0).all()
    with pytest.raises(ValueError, match="prompt must be in"):
        plotting.sink_position_vs_step(vp, PRIMARY_VARIANT, prompt=99)


def test_layer_sparsity(tree):
    prune = tree["prune"]
    fig = plotting.layer_sparsity(prune)
    _check_labelled(fig)
    axes = _visible_axes(fig)
    assert sorted(ax.get_title() for ax in axes) == ["smollm2-135m", "tiny-dlm"]
    ax = next(a for a in axes if a.get_title() == "tiny-dlm")
    lines = [ln for ln in ax.get_lines()]
    # one line per configuration (lowest seed): the tiny-dlm instances minus the 2 extra seeds x 2 weightings
    n_cfg = len({(m["spec"]["method"], m["spec"]["weighting"], m["spec"]["sparsity"], m["spec"]["pattern"])
                 for m in prune.values() if m["model"] == "tiny-dlm"})
    assert len(lines) == n_cfg
    m = prune["dlm-sparsegpt-sink-70-s0"]
    by_block: dict[int, list[float]] = {}
    for name, v in m["layer_sparsity"].items():
        by_block.setdefault(int(name.split(".blocks.")[1].split(".")[0]), []).append(v)
    expect = [np.mean(by_block[b]) for b in sorted(by_block)]
    assert any(np.allclose(ln.get_ydata(), expect) and ln.get_linestyle() == "--" for ln in lines)
    with pytest.raises(ValueError, match="no block index"):
        plotting._block_index("lm_head")


def test_loss_curves_dict_and_frame_agree(tree):
    train = tree["train"]
    fig = plotting.loss_curves(train, smooth=5)
    _check_labelled(fig)
    ax = _visible_axes(fig)[0]
    raw, avg = ax.get_lines()
    loss = np.array(train["tiny-ar"]["loss"])
    np.testing.assert_allclose(raw.get_ydata(), loss)
    np.testing.assert_allclose(raw.get_xdata(), np.arange(1, len(loss) + 1))
    i = 10  # centred window of 5: steps 9..13 (1-based) = indices 8..12
    assert avg.get_ydata()[i] == pytest.approx(loss[i - 2:i + 3].mean())
    frame = pd.DataFrame([{"model": k, "step": j + 1, "loss": v} for k, m in train.items()
                          for j, v in enumerate(m["loss"])])
    fig2 = plotting.loss_curves(frame, smooth=5)
    for a, b in zip(_visible_axes(fig), _visible_axes(fig2)):
        for la, lb in zip(a.get_lines(), b.get_lines()):
            np.testing.assert_allclose(la.get_ydata(), lb.get_ydata())
    with pytest.raises(ValueError, match="columns"):
        plotting.loss_curves(pd.DataFrame({"model": ["a"], "loss": [1.0]}))
    with pytest.raises(ValueError, match="no loss curves"):
        plotting.loss_curves({"smollm2-135m": {"ppl": 20.0}})


def test_efficiency_bars_from_a_real_report(tmp_path):
    from srclib.efficiency.sparse import zero_by_magnitude_
    from srclib.efficiency.timing import efficiency_report
    from srclib.params import EfficiencyParams
    from srclib.models import MODELS
    from srclib.models.tiny import TinyLM, test_config

    reports, nonzero = {}, {}
    for name, (sp, pattern) in {"a-50": (0.5, "unstructured"), "b-2of4": (0.5, "2:4")}.items():
        torch.manual_seed(0)
        m = TinyLM(test_config()).eval()
        zero_by_magnitude_(m, MODELS["tiny-dlm"], sp, pattern)
        cfg = EfficiencyParams(instances=[name], token_shapes=[[1, 16]], model_token_shapes={}, repeats=2, warmup=0,
                               threads=1, clock="wall", memory_dtype="bfloat16")
        reports[name] = efficiency_report(m, MODELS["tiny-dlm"], cfg)
        ws = [mod.weight for blk in m.model.transformer.blocks for mod in blk.modules()
              if isinstance(mod, torch.nn.Linear)]
        nonzero[name] = sum(int(torch.count_nonzero(w)) for w in ws) / sum(w.numel() for w in ws)
    write_json(tmp_path / "eff.json", {"instances": reports})
    fig = plotting.efficiency_bars(loaders.efficiency_rows(read_json(tmp_path / "eff.json")))
    _check_labelled(fig)
    left, right = _visible_axes(fig)
    flops = [p.get_height() for p in left.patches[:2]]  # the first bar group: FLOPs, one bar per instance
    # independent expectation: the nonzero fraction of the block linears' weights, counted here
    assert flops == pytest.approx([nonzero[n] for n in ("a-50", "b-2of4")], rel=1e-9)
    assert flops == pytest.approx([0.5, 0.5], abs=0.02)
    assert len(right.patches) == 2
    with pytest.raises(ValueError, match="instances"):
        loaders.efficiency_rows({})


def test_errors_on_empty_inputs():
    with pytest.raises(ValueError, match="no pruned instances"):
        plotting.accuracy_vs_sparsity(pd.DataFrame([dict(sparsity=0.0, accuracy=50.0, accuracy_u=1.0, n_seeds=1,
                                                         method="dense", weighting="none", model="m")]), [])
    with pytest.raises(ValueError, match="no runs"):
        plotting.sink_variance_dlm_vs_ar({"runs": {}}, {})
    with pytest.raises(ValueError, match="no prune metrics"):
        plotting.layer_sparsity({})
