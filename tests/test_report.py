"""srclib.report: results loading, the main table (order, uncertainty, noise marks), table files,
plot series, the index page and the plot stage on a synthetic metrics tree (tests/report_tree.py:
``build_tree(root)`` writes it in the real formats; test_plotting.py, test_browser.py and
test_animation.py use it too).
"""

from __future__ import annotations

import copy
import html.parser
import math
import re

import numpy as np
import pandas as pd
import pytest

from srclib import paths
from srclib.report import findings, index, loaders, render, results, series, tables
from srclib.stages import plot
from srclib.trajectories import panels
from srclib.files import read_json, write_json

from report_tree import (N_ITEMS, N_WINDOWS, PROMPT_DEV, RUNS, TASKS, VARIANCE,  # tests/ is on sys.path
                         VARIANCE_UNITS, WINDOW_DEV, build_tree, default_accuracy, item_latent, synthetic_params,
                         variance_unit_run, write_eval_tree, write_variance_tree)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    params = build_tree(root)
    return root, params


# =================================================================================================
# load_results
# =================================================================================================
def test_load_results_rows_configs_and_primary(tree):
    root, params = tree
    df = results.load_results(params, root=root)
    n_inst = len(params.prune.instances) + len(params.evaluate.dense)
    assert set(df["instance"]) == set(params.prune.instances) | set(params.evaluate.dense)
    # arc_easy: acc + acc_norm, winogrande: acc, one ppl row
    assert len(df) == n_inst * (2 + 1 + 1)
    dense = df[df["instance"] == "tiny-ar"]
    assert set(dense["method"]) == {"dense"} and set(dense["sparsity"]) == {0.0}
    prim = df[df["primary"]]
    assert dict(prim.drop_duplicates("task")[["task", "metric"]].values.tolist()) == {
        "arc_easy": "acc_norm", "winogrande": "acc", "ppl": "ppl_elbo"}
    assert set(prim.loc[prim["model"] == "tiny-ar", "metric"]) >= {"ppl_exact"}
    row = df[(df["instance"] == "dlm-wanda-sink-50-s2") & (df["task"] == "arc_easy") & df["primary"]].iloc[0]
    assert row["value"] == pytest.approx(default_accuracy("", dict(method="wanda", sparsity=0.5, seed=2,
                                                                    weighting="sink"), "arc_easy"))
    assert (row["model"], row["method"], row["weighting"], row["seed"]) == ("tiny-dlm", "wanda", "sink", 2)


def test_load_results_missing_file_names_it(tree, tmp_path):
    root, params = tree
    import shutil

    shutil.copytree(root / "metrics", tmp_path / "metrics")
    paths.eval_metrics("dlm-wanda-sink-50-s1", root=tmp_path).unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics/evaluate/dlm-wanda-sink-50-s1\.json"):
        results.load_results(params, root=tmp_path)


def test_load_results_missing_task_and_wrong_model(tree, tmp_path):
    root, params = tree
    import shutil

    shutil.copytree(root / "metrics", tmp_path / "metrics")
    f = paths.eval_metrics("tiny-ar", root=tmp_path)
    d = read_json(f)
    del d["tasks"]["winogrande"]
    write_json(f, d)
    with pytest.raises(ValueError, match=r"tiny-ar\.json.*winogrande"):
        results.load_results(params, root=tmp_path)
    d["tasks"]["winogrande"] = read_json(paths.eval_metrics("tiny-dlm", root=root))["tasks"]["winogrande"]
    d["model"]["key"] = "tiny-dlm"
    write_json(f, d)
    with pytest.raises(ValueError, match="stale"):
        results.load_results(params, root=tmp_path)


def test_primary_metric_prefers_acc_norm_and_needs_a_common_one():
    files = {"a": {"tasks": {"t": {"metrics": {"acc": 0.5, "acc_norm": 0.6}}}},
             "b": {"tasks": {"t": {"metrics": {"acc": 0.4, "acc_norm": None}}}}}
    assert results.primary_metrics(files, ["t"]) == {"t": "acc"}  # acc_norm not valued everywhere
    files["b"]["tasks"]["t"]["metrics"]["acc_norm"] = 0.3
    assert results.primary_metrics(files, ["t"]) == {"t": "acc_norm"}
    with pytest.raises(ValueError, match="task 'u'"):
        results.primary_metrics({"a": {"tasks": {"u": {"metrics": {"f1": 0.1}}}}}, ["u"])


# =================================================================================================
# uncertainty and noise
# =================================================================================================
def test_summarize_standard_errors_over_units(tree):
    """u is the standard error over the items / windows of the seed-averaged unit values,
    recomputed here by hand from the planted items."""
    root, params = tree
    df = results.load_results(params, root=root)
    s = results.summarize(df, seeds=[0, 1, 2])
    pick = lambda **kw: s[np.logical_and.reduce([s[k] == v for k, v in {"model": "tiny-dlm", **kw}.items()])].iloc[0]  # noqa: E731
    accs = [default_accuracy("", dict(method="wanda", sparsity=0.5, seed=k, weighting="uniform"), "arc_easy")
            for k in (0, 1, 2)]
    per_item = np.mean([item_latent("arc_easy") < a for a in accs], axis=0)  # (N_ITEMS,) seed-averaged
    r = pick(method="wanda", weighting="uniform", sparsity=0.5, pattern="unstructured", column="arc_easy")
    assert (r["n_seeds"], r["source"], r["seeds"]) == (3, "units", "0,1,2")
    assert r["mean"] == pytest.approx(100 * np.mean(accs))
    assert r["u"] == pytest.approx(100 * per_item.std(ddof=1) / math.sqrt(N_ITEMS))
    # 1 seed: the binomial standard error over items (ddof 1), in percent
    a = default_accuracy("", dict(method="sparsegpt", sparsity=0.7, seed=0, weighting="sink"), "winogrande")
    r = pick(method="sparsegpt", weighting="sink", sparsity=0.7, column="winogrande")
    assert (r["n_seeds"], r["source"]) == (1, "units")
    assert r["u"] == pytest.approx(100 * math.sqrt(a * (1 - a) * N_ITEMS / (N_ITEMS - 1) / N_ITEMS))
    # the average pools the items, weighted to the unweighted task mean
    r = pick(method="sparsegpt", weighting="sink", sparsity=0.7, column="average")
    cfg = dict(method="sparsegpt", sparsity=0.7, seed=0, weighting="sink")
    assert r["mean"] == pytest.approx(np.mean([100 * default_accuracy("", cfg, t) for t in TASKS]))
    # perplexity: exp(mean NLL) with the delta-method standard error over windows
    r = pick(method="sparsegpt", weighting="sink", sparsity=0.7, column="ppl")
    ppl = 100.0 * (1 + 3 * 0.7)
    sd = WINDOW_DEV * math.sqrt(N_WINDOWS / (N_WINDOWS - 1))
    assert r["mean"] == pytest.approx(ppl) and r["u"] == pytest.approx(ppl * sd / math.sqrt(N_WINDOWS))


def test_summarize_without_unit_values_falls_back(tmp_path):
    """Older results without units: one seed lm-eval's stderr, several the standard error over seeds."""
    params = synthetic_params()
    write_eval_tree(tmp_path, params, units=False)
    df = results.load_results(params, root=tmp_path)
    s = results.summarize(df, seeds=[0, 1, 2])
    pick = lambda **kw: s[np.logical_and.reduce([s[k] == v for k, v in {"model": "tiny-dlm", **kw}.items()])].iloc[0]  # noqa: E731
    vals = [100 * default_accuracy("", dict(method="wanda", sparsity=0.5, seed=k, weighting="uniform"), "arc_easy")
            for k in (0, 1, 2)]
    r = pick(method="wanda", weighting="uniform", sparsity=0.5, pattern="unstructured", column="arc_easy")
    assert (r["n_seeds"], r["source"]) == (3, "seeds")
    assert r["u"] == pytest.approx(np.std(vals, ddof=1) / math.sqrt(3))
    a = default_accuracy("", dict(method="sparsegpt", sparsity=0.7, seed=0, weighting="sink"), "winogrande")
    r = pick(method="sparsegpt", weighting="sink", sparsity=0.7, column="winogrande")
    assert (r["n_seeds"], r["source"]) == (1, "stderr")
    assert r["u"] == pytest.approx(100 * math.sqrt(a * (1 - a) / (N_ITEMS - 1)))
    r = pick(method="sparsegpt", weighting="sink", sparsity=0.7, column="ppl")
    assert r["source"] == "none" and math.isnan(r["u"])
    cells = tables.main_table_cells(df, params, "tiny-dlm")
    assert (cells["mark"] == 0).all() and cells["p_value"].isna().all()  # no units: no tests, no marks


def _planted(gain_by_seed_noise):
    """accuracy function: wanda sink vs uniform at 0.5 with a planted gain; the seed spread is
    set by ``noise`` (points); sparsegpt sink at 0.7 gains ``gain`` points on one seed."""
    def acc(name, cfg, task):
        a = default_accuracy(name, {**cfg, "seed": 0, "weighting": "uniform"}, task)
        gain, noise = gain_by_seed_noise.get(cfg["method"], (0.0, 0.0))
        if cfg["weighting"] == "sink":
            a += gain / 100
        if cfg["method"] != "dense":
            a += (noise / 100) * (cfg["seed"] - 1)  # sample std over seeds 0,1,2 = noise
        return a
    return acc


def test_marks_planted_cases(tmp_path):
    params = synthetic_params()
    # wanda: +0.5 point with seed spread 1 point: 1 item per seed differs -> no mark; sparsegpt (one
    # seed): +20 points = 40 discordant items, all one way -> marked by McNemar
    write_eval_tree(tmp_path, params, accuracy=_planted({"wanda": (0.5, 1.0), "sparsegpt": (20.0, 0.0),
                                                         "magnitude": (0, 0)}))
    df = results.load_results(params, root=tmp_path)
    cells = tables.main_table_cells(df, params, "tiny-dlm")
    w = cells[(cells["method"] == "wanda") & (cells["weighting"] == "sink") & (cells["sparsity"] == 0.5)]
    assert (w["diff"].loc[w["column"] == "arc_easy"].iloc[0]) == pytest.approx(0.5)
    per_task = w[w["column"].isin(list(TASKS))]  # 3 items one way per task: sign-flip p = 2/8 (9999 random flips)
    assert (per_task["mark"] == 0).all() and (per_task["p_value"].to_numpy() == pytest.approx(0.25, abs=0.02))
    # pooled over both tasks, 6 items all one way: p = 2 / 2^6 -> marked (a real, if tiny, effect)
    assert w.loc[w["column"] == "average", "p_value"].iloc[0] == pytest.approx(2 / 64, abs=0.01)
    g = cells[(cells["method"] == "sparsegpt") & (cells["weighting"] == "sink")].set_index("column")
    assert g.loc["arc_easy", "mark"] == 1 and g.loc["winogrande", "mark"] == 1 and g.loc["average", "mark"] == 1
    assert g.loc["arc_easy", "p_value"] == pytest.approx(2 * 0.5**40, rel=1e-6)  # exact McNemar, 40 vs 0
    assert g.loc["arc_easy", "effect"] == pytest.approx(20.0) and g.loc["arc_easy", "n_units"] == N_ITEMS
    assert g.loc["arc_easy", "low"] < 20.0 < g.loc["arc_easy", "high"] and g.loc["arc_easy", "mde"] > 0
    assert g.loc["ppl", "mark"] == 0 and g.loc["ppl", "p_value"] == pytest.approx(1.0)  # same windows, same NLL
    # +5 points with small seed noise: 10 items per seed, one way: marked; the table shows the arrow
    write_eval_tree(tmp_path, params, accuracy=_planted({"wanda": (5.0, 0.5), "sparsegpt": (0.0, 0.0),
                                                         "magnitude": (0, 0)}))
    df = results.load_results(params, root=tmp_path)
    cells = tables.main_table_cells(df, params, "tiny-dlm")
    w = cells[(cells["method"] == "wanda") & (cells["weighting"] == "sink") & (cells["sparsity"] == 0.5)
              & (cells["pattern"] == "unstructured")].set_index("column")
    assert w.loc["arc_easy", "mark"] == 1 and w.loc["arc_easy", "p_value"] < 0.01
    table = tables.main_table(df, params, "tiny-dlm")
    row = table[(table["Method"] == "Wanda") & (table["Weighting"] == "sink-aware")].iloc[0]
    assert row["ARC-E"].endswith("↑") and f"± {w.loc['arc_easy', 'u']:.1f}" in row["ARC-E"]
    # worse -> down arrow
    write_eval_tree(tmp_path, params, accuracy=_planted({"wanda": (-5.0, 0.5), "sparsegpt": (0.0, 0.0),
                                                         "magnitude": (0, 0)}))
    cells = tables.main_table_cells(results.load_results(params, root=tmp_path), params, "tiny-dlm")
    w = cells[(cells["method"] == "wanda") & (cells["weighting"] == "sink") & (cells["sparsity"] == 0.5)
              & (cells["pattern"] == "unstructured")].set_index("column")
    assert w.loc["arc_easy", "mark"] == -1
    assert w.loc["ppl", "mark"] == 0 and w.loc["ppl", "diff"] == pytest.approx(0.0)


def test_ppl_lower_is_better_mark():
    """Perplexity is tested on NLL per token over the shared windows: a constant 20% lower
    perplexity on every window is marked better, although the windows' NLLs spread widely."""
    rows, units = [], {}
    dev = [0.5 * math.sin(w) for w in range(32)]  # a wide spread between windows, common to all checkpoints
    for w, vals in (("uniform", (100.0, 101.0, 102.0)), ("sink", (80.0, 81.0, 82.0))):
        for s, v in enumerate(vals):
            name = f"{w}{s}"
            rows.append(dict(instance=name, model="m", method="wanda", weighting=w, sparsity=0.5,
                             pattern="unstructured", seed=s, task="ppl", metric="ppl_elbo", value=v,
                             stderr=float("nan"), primary=True, file=""))
            units[name] = {"tasks": {}, "ppl": {"kind": "elbo", "window_nll_per_token": [math.log(v) + d for d in dev]}}
    df = pd.DataFrame(rows)
    df.attrs.update(units=units, tasks=[], primary={})
    params = synthetic_params()
    cells = tables.main_table_cells(df, params, "m").set_index(["weighting", "column"])
    assert cells.loc[("sink", "ppl"), "mark"] == 1 and cells.loc[("sink", "ppl"), "p_value"] < 1e-3
    want = np.mean([math.log(v) for v in (80.0, 81.0, 82.0)]) - np.mean([math.log(v) for v in (100.0, 101.0, 102.0)])
    assert cells.loc[("sink", "ppl"), "effect"] == pytest.approx(want)  # nats per token
    # without unit values nothing is tested, so nothing is marked
    df.attrs.clear()
    cells = tables.main_table_cells(df, params, "m").set_index(["weighting", "column"])
    assert cells.loc[("sink", "ppl"), "mark"] == 0 and cells.loc[("sink", "ppl"), "diff"] == pytest.approx(-20.0)


# =================================================================================================
# the main table: rows, columns, order
# =================================================================================================
def test_main_table_rows_columns_order(tree):
    root, params = tree
    df = results.load_results(params, root=root)
    t = tables.main_table(df, params, "tiny-dlm")
    assert list(t.columns) == ["Method", "Weighting", "Sparsity", "Pattern", "Seeds", "ARC-E", "WinoGrande",
                               "Avg", "PPL"]
    got = list(zip(t["Method"], t["Weighting"], t["Sparsity"], t["Pattern"], t["Seeds"]))
    assert got == [
        ("Dense", "–", "0%", "–", "1"),
        ("Wanda", "uniform", "30%", "unstructured", "1"),
        ("Magnitude", "uniform", "50%", "unstructured", "1"),
        ("Wanda", "uniform", "50%", "unstructured", "3"),
        ("Wanda", "sink-aware", "50%", "unstructured", "3"),
        ("Wanda", "stability", "50%", "unstructured", "1"),
        ("Wanda", "uniform", "50%", "2:4", "1"),
        ("SparseGPT", "uniform", "70%", "unstructured", "1"),
        ("SparseGPT", "sink-aware", "70%", "unstructured", "1"),
    ]
    # a cell: mean over seeds +- std, formatted with one decimal
    vals = [100 * default_accuracy("", dict(method="wanda", sparsity=0.5, seed=k, weighting="uniform"), "arc_easy")
            for k in (0, 1, 2)]
    assert t.loc[3, "ARC-E"].startswith(f"{sum(vals) / 3:.1f} ± ")
    notes = " ".join(t.attrs["footnotes"])
    assert "acc_norm" in notes and "WinoGrande acc" in notes and "standard error over the units" in notes
    assert "MC-ELBO" in notes
    smol = tables.main_table(df, params, "smollm2-135m")
    assert list(smol["Weighting"]) == ["–", "uniform", "sink-aware"]
    assert "exact" in " ".join(smol.attrs["footnotes"])
    assert set(tables.main_tables(df, params)) == {"main_smollm2-135m", "main_tiny-dlm"}
    with pytest.raises(ValueError, match="model must be given"):
        tables.main_table(df, params)
    with pytest.raises(ValueError, match="no evaluate results for model 'nope'"):
        tables.main_table_cells(df, params, "nope")


def test_dense_and_variance_tables(tree):
    root, params = tree
    df = results.load_results(params, root=root)
    d = tables.dense_table(df, params)
    assert list(d["Model"]) == ["tiny-dlm", "tiny-ar", "smollm2-135m"]
    assert list(d["PPL kind"]) == ["elbo", "exact", "exact"]
    vm = read_json(paths.variance_metrics(root=root))
    v = tables.sink_variance_table(vm)
    assert list(v["Run"]) == ["tiny-dlm", "tiny-dlm-randinit", "tiny-ar", "tiny-ar-randinit"]
    assert list(v["Kind"]) == ["DLM", "DLM", "AR", "AR"]
    # planted: AR sink fixed at position 0 -> variance 0; DLM sink moves -> variance > 0
    assert v.loc[2, "Var[p]/T²"].startswith("0.0000")
    assert float(v.loc[0, "Var[p]/T²"].split()[0]) > 0.01


# =================================================================================================
# table files
# =================================================================================================
def test_write_tables_formats_and_determinism(tree, tmp_path):
    root, params = tree
    df = results.load_results(params, root=root)
    tabs = {**tables.main_tables(df, params), "dense_models": tables.dense_table(df, params)}
    a = render.write_tables(tabs, tmp_path / "a")
    b = render.write_tables({k: tabs[k] for k in reversed(list(tabs))}, tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    assert {p.suffix for p in a} == {".md", ".html", ".tex"} and len(a) == 9
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    md = (tmp_path / "a" / "main_tiny-dlm.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 9 and all(ln.count("|") == 10 for ln in lines)
    assert "standard error over the units" in md
    tex = (tmp_path / "a" / "main_tiny-dlm.tex").read_text()
    assert "\\begin{tabular}{llrrrrrrr}" in tex and "\\toprule" in tex and "$\\pm$" in tex
    assert "%" not in tex.replace("\\%", "").split("\n", 1)[1]  # every percent sign escaped
    assert tex.count("\\\\") == 10
    page = (tmp_path / "a" / "main_tiny-dlm.html").read_text()
    parser = _Tags()
    parser.feed(page)
    assert parser.counts["tr"] == 10 and parser.counts["th"] == 9 and parser.counts["title"] == 1


def test_latex_escape():
    assert render.latex_escape("a_b 50% & x±y ↑ –") == "a\\_b 50\\% \\& x$\\pm$y $\\uparrow$ --"


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}
        self.links: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        a = dict(attrs)
        self.links += [a[k] for k in ("href", "src") if k in a]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


# =================================================================================================
# plot series
# =================================================================================================
def test_accuracy_series(tree, tmp_path):
    root, params = tree
    df = results.load_results(params, root=root)
    s = series.accuracy_series(df)
    assert list(s.columns) == ["sparsity", "accuracy", "method", "weighting", "model"]
    assert "2:4" not in set(s.get("pattern", []))
    r = s[(s["model"] == "tiny-dlm") & (s["method"] == "wanda") & (s["weighting"] == "sink") & (s["sparsity"] == 0.5)]
    exp = np.mean([np.mean([100 * default_accuracy("", dict(method="wanda", sparsity=0.5, seed=k, weighting="sink"), t)
                            for t in TASKS]) for k in (0, 1, 2)])
    assert len(r) == 1 and r["accuracy"].iloc[0] == pytest.approx(exp)
    d = s[s["method"] == "dense"]
    assert set(d["model"]) == {"tiny-dlm", "tiny-ar", "smollm2-135m"} and set(d["sparsity"]) == {0.0}
    # wanda uniform at 0.5: only the unstructured row enters (2:4 excluded)
    assert len(s[(s["model"] == "tiny-dlm") & (s["method"] == "wanda") & (s["weighting"] == "uniform")
                 & (s["sparsity"] == 0.5)]) == 1
    p1 = series.write_series(s, tmp_path / "a.csv")
    p2 = series.write_series(series.accuracy_series(df), tmp_path / "b.csv")
    assert p1.read_bytes() == p2.read_bytes()
    back = pd.read_csv(p1)
    assert list(back.columns) == list(s.columns) and np.allclose(back["accuracy"], s["accuracy"])


def test_variance_series_and_plot_data_match_run_variance(tree):
    root, params = tree
    res = write_variance_tree(root, params)  # rerun: same files, and the in-memory plots
    metrics, plots = loaders.load_variance(root=root)
    assert metrics == read_json(paths.variance_metrics(root=root))
    s = series.variance_series(plots)
    assert list(s.columns) == ["layer", "variance", "model"]
    assert set(s["model"]) == set(RUNS) and len(s) == 2 * len(RUNS)
    s2 = series.variance_series(res["plots"])
    pd.testing.assert_frame_equal(s, s2)
    trajs = loaders.load_trajectories(RUNS, root=root)
    for run, traj in trajs.items():
        mine = panels.trajectory_plot_data(traj)
        theirs = res["plots"][run]
        np.testing.assert_allclose(mine["global_mass_norm"], theirs["global_mass_norm"], rtol=1e-6, atol=1e-7)
        variant = next(iter(mine["dominant"]))
        np.testing.assert_array_equal(mine["dominant"][variant], theirs["dominant"][variant])
    # planted sinks: AR dominant at 0 throughout; DLM dominant at (3 s) mod T
    ar = panels.trajectory_plot_data(trajs["tiny-ar"])["dominant"]["newest"]
    assert (ar == 0).all()
    dlm = panels.trajectory_plot_data(trajs["tiny-dlm"])["dominant"]["full"]
    assert (dlm == np.array([(3 * s) % 10 for s in range(6)])[None, :]).all()


# =================================================================================================
# index page and the stage
# =================================================================================================
def test_sink_findings_from_the_per_prompt_values():
    f = findings.sink_motion(VARIANCE, VARIANCE_UNITS)
    assert f.verdict == "holds"
    line = next(x for x in f.lines if x.startswith("tiny-dlm 0.0500 ± "))
    assert "vs tiny-ar (AR) 0.0000 ± 0.0000" in line and "n = 8 prompts" in line and line.endswith(": holds")
    c = f.tests["tiny-dlm vs tiny-ar"]  # paired on the 8 prompts: every difference is 0.05 + dev
    assert c["diff"] == pytest.approx(0.05) and c["n"] == 8 and c["p_value"] == pytest.approx(2 / 256)
    assert any(x.startswith("tiny-dlm: strength (top share × T) 3.00 vs its random-init twin") and
               x.endswith("has a sink") for x in f.lines)
    assert any(x.startswith("context: tiny-dlm vs its random-init twin tiny-dlm-randinit") for x in f.lines)
    assert f.values["tiny-dlm"][1] == pytest.approx(np.std(np.array(PROMPT_DEV) + 0.05, ddof=1) / math.sqrt(8))
    assert findings.bos_sinks(VARIANCE, VARIANCE_UNITS).verdict == "holds"
    # an AR model without a sink: the DLM-vs-AR comparison is untestable, and says why
    no_sink = copy.deepcopy(VARIANCE_UNITS)
    no_sink["runs"]["tiny-ar"] = variance_unit_run("ar", "tiny-ar-randinit", 0.04, 7.0, 0.0)
    f = findings.sink_motion(VARIANCE, no_sink)
    assert f.verdict == "untestable here"
    assert "tiny-dlm vs tiny-ar (AR): untestable here (tiny-ar has no stable [BOS] sink)" in f.lines
    assert findings.bos_sinks(VARIANCE, no_sink).verdict == "does not hold"
    # a DLM no stronger than its twin has no sink: untestable
    weak = copy.deepcopy(VARIANCE_UNITS)
    weak["runs"]["tiny-dlm"] = variance_unit_run("dlm", "tiny-dlm-randinit", 0.05, 1.0, 0.0)
    f = findings.sink_motion(VARIANCE, weak)
    assert f.verdict == "untestable here" and any("no sink beyond its random-init twin" in x for x in f.lines)
    # without per-prompt values nothing is testable
    assert findings.sink_motion(VARIANCE).verdict == "untestable here"


def test_pruning_findings_are_paired_tests(tmp_path):
    params = synthetic_params()
    for planted, verdict in (((5.0, 0.5), "holds"), ((0.0, 1.0), "no difference larger than the stated mde"),
                             ((-5.0, 0.5), "opposite")):
        write_eval_tree(tmp_path, params, accuracy=_planted({"wanda": planted, "sparsegpt": (0.0, 0.0)}))
        df = results.load_results(params, root=tmp_path)
        f = findings.sink_vs_uniform(df, params, "tiny-dlm")
        assert f.verdict == verdict, planted
        uni, sink = f.values["wanda 0.5 average uniform"], f.values["wanda 0.5 average sink"]
        assert sink[0] - uni[0] == pytest.approx(planted[0])
        t = f.tests["wanda 0.5 arc_easy"]
        assert t["diff"] == pytest.approx(planted[0]) and t["n"] == N_ITEMS and t["low"] <= t["diff"] <= t["high"]
    line = next(x for x in f.lines if x.startswith("Wanda at 50%"))
    assert "ARC-E accuracy (%) uniform" in line and "p = " in line and "mde" in line and "opposite" in line
    md = findings.findings_markdown([f])
    assert md.startswith("- **Sink-aware calibration prunes the diffusion LM tiny-dlm") and "*opposite*" in md
    assert "standard error over independent units" in md


def test_pruning_findings_untestable_where_the_dense_model_is_at_chance(tmp_path):
    params = synthetic_params()
    def acc(name, cfg, task):  # the dense model at chance on ARC-E (0.25 of 4 choices)
        if task == "arc_easy":
            return 0.25
        return _planted({"wanda": (5.0, 0.5)})(name, cfg, task)
    write_eval_tree(tmp_path, params, accuracy=acc)
    df = results.load_results(params, root=tmp_path)
    f = findings.sink_vs_uniform(df, params, "tiny-dlm")
    line = next(x for x in f.lines if x.startswith("Wanda at 50%"))
    assert "ARC-E accuracy (%) uniform 25.0" in line
    assert "untestable here (the dense tiny-dlm is at chance on arc_easy (accuracy 0.250 vs chance 0.250" in line
    assert "wanda 0.5 arc_easy" not in f.tests and "wanda 0.5 winogrande" in f.tests
    assert f.verdict == "holds"  # WinoGrande (+5 points, above chance) still answers


def test_build_index_front_page(tmp_path):
    params = synthetic_params()
    write_eval_tree(tmp_path, params)
    df = results.load_results(params, root=tmp_path)
    found = findings.findings(df, params, VARIANCE, variance_units=VARIANCE_UNITS)
    (paths.figures_dir(root=tmp_path)).mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (4, 3), "red").save(paths.figures_dir(root=tmp_path) / "a_fig.png")
    (paths.figures_dir(root=tmp_path) / "a_fig.pdf").write_bytes(b"%PDF-1.4\n")
    paths.tables_dir(root=tmp_path).mkdir(parents=True)
    for ext in ("md", "html", "tex"):
        (paths.tables_dir(root=tmp_path) / f"t1.{ext}").write_text("x")
    for stage, name in (("plot", "plot"), ("prune", "dlm-wanda-sink-50-s0"), ("evaluate", "dlm-wanda-sink-50-s0"),
                        ("train", "train")):
        p = paths.report_html(stage, name, root=tmp_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("<html></html>")
    build = lambda: index.build_index(tmp_path, params, "abc123 <dirty>", findings=found,  # noqa: E731
                                      tables={"sink_variance": tables.sink_variance_table(VARIANCE)}, results=df)
    text = build().read_text()
    idx = paths.index_html(root=tmp_path)
    parser = _Tags()
    parser.feed(text)
    assert not parser.errors and not parser.stack
    assert parser.counts["img"] == 1 and parser.counts["pre"] == 1 and parser.counts["details"] == 1
    assert "abc123 &lt;dirty&gt;" in text and "headline_sparsities" in text
    for link in parser.links:
        assert not link.startswith(("/", "http:", "https:")), link
        assert (idx.parent / link).is_file(), link
    assert {"html/plot/plot.html", "html/prune/dlm-wanda-sink-50-s0.html", "html/evaluate/dlm-wanda-sink-50-s0.html",
            "html/train/train.html", "figures/a_fig.png", "figures/a_fig.pdf", "tables/t1.md", "tables/t1.html",
            "tables/t1.tex"} <= set(parser.links)
    # the front page's order: findings, tables, figures, instance grid, other reports, params (folded)
    marks = ['id="findings"', 'id="tables"', 'id="figures"', 'id="instances"', 'id="stages"', "<details"]
    assert [text.index(m) for m in marks] == sorted(text.index(m) for m in marks)
    assert "has a sink" in text and "Var[p]/T²" in text
    # a grid cell: seed, average accuracy and perplexity computed here from the planted accuracies
    cfg = dict(method="wanda", sparsity=0.5, seed=0, weighting="sink")
    avg = np.mean([100 * default_accuracy("", cfg, t) for t in TASKS])
    cell = re.search(r'data-instance="dlm-wanda-sink-50-s0"><span class="score">([^<]*)</span>', text).group(1)
    assert cell == f"s0 {avg:.1f} / {100.0 * (1 + 3 * 0.5):.1f}"
    assert 'data-instance="dlm-wanda-sink-50-s1"' in text  # listed without links: its reports do not exist
    assert build().read_text() == text  # deterministic


@pytest.mark.slow  # two full plot stages: ~5 s on an idle machine, 25 s under load
def test_run_plot_end_to_end(tree):
    import matplotlib.pyplot as plt

    root, params = tree
    open_before = len(plt.get_fignums())
    res = plot.run(params, root=root)
    assert len(plt.get_fignums()) == open_before  # the stage closes every figure it saved
    figs = paths.figures_dir(root=root)
    for stem in ("accuracy_vs_sparsity", "sink_variance_dlm_vs_ar", "trajectory_heatmaps", "layer_sparsity",
                 "perplexity_vs_sparsity", "sink_position_vs_step", "loss_curves"):
        assert (figs / f"{stem}.png").stat().st_size > 1000, stem
        assert (figs / f"{stem}.pdf").read_bytes().startswith(b"%PDF"), stem
    assert set(res.figures) >= {"accuracy_vs_sparsity", "loss_curves"}
    assert res.skipped and res.skipped[0].startswith("efficiency_bars")
    assert {p.name for p in paths.tables_dir(root=root).iterdir()} >= {
        "main_tiny-dlm.md", "main_tiny-dlm.tex", "main_tiny-dlm.html", "dense_models.md", "sink_variance.html"}
    for name in ("accuracy_vs_sparsity", "variance_per_layer"):
        assert paths.plot_series(name, root=root).is_file()
    assert "| Method |" in res.markdown
    html_repr = res.figures._repr_html_()
    assert html_repr.count("data:image/png;base64,") == len(res.figures)
    idx = res.index.read_text()
    assert "figures/trajectory_heatmaps.png" in idx and "html/plot/plot.html" in idx
    assert re.search(r"<code>[0-9a-f]{40}|<code>unknown", idx)
    assert res.interpretation == findings.findings_markdown(res.findings) and "tiny-dlm" in res.interpretation
    outputs = lambda: {p: p.read_bytes() for d in (paths.tables_dir(root=root), paths.figures_dir(root=root))  # noqa: E731
                       for p in d.iterdir()} | {p: p.read_bytes() for p in res.series.values()}
    before = outputs()
    plot.run(params, root=root)
    after = outputs()
    assert before == after
