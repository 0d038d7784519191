"""Structured pruning in the reports (issue 13, item 5): the paper's structured table, structured
rows kept out of the unstructured tables, the quality-vs-speedup series and figure, the structured
finding and the plot stage writing them.

Evaluate metrics are synthetic, written in the real format (report_tree.eval_metrics_json) with
planted accuracies and perplexities; every expected number is recomputed here with plain loops.
Params: a dict copy of params.yaml with structured instances (``structure``) through
srclib.params.load_dict. Efficiency rows are built by hand in the columns of
srclib.report.loaders.efficiency_rows (the stage test patches the loader to return them).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml

from srclib import params as P_
from srclib import paths, plotting
from srclib.files import write_json
from srclib.report import findings, index, results, series, tables

from report_tree import (N_ITEMS, N_WINDOWS, TASKS, WINDOW_DEV, eval_metrics_json,  # noqa: E402  (tests/ on sys.path)
                         eval_units_json, item_latent, write_variance_tree)

NAN = float("nan")
SEEDS = (0, 1, 2)
CODES = {"adaptive": "adapt", "uniform": "struct"}

# (method, structure, ratio, weighting) -> per seed (arc_easy, winogrande, ppl); tiny-dlm
STRUCT = {
    ("flap", "adaptive", 0.3, "uniform"): [(0.50, 0.60, 40.0), (0.52, 0.61, 41.0), (0.51, 0.62, 42.0)],
    ("flap", "adaptive", 0.3, "sink"): [(0.56, 0.66, 30.0), (0.57, 0.67, 31.0), (0.58, 0.65, 32.0)],
    ("flap", "adaptive", 0.3, "stability"): [(0.49, 0.58, 43.0)],
    ("wanda", "adaptive", 0.3, "uniform"): [(0.45, 0.55, 40.0), (0.47, 0.56, 41.0), (0.46, 0.57, 42.0)],
    ("wanda", "adaptive", 0.3, "sink"): [(0.455, 0.555, 45.0), (0.475, 0.565, 46.0), (0.465, 0.575, 47.0)],
    ("wanda", "uniform", 0.3, "uniform"): [(0.44, 0.54, 50.0)],
    ("wanda", "uniform", 0.3, "sink"): [(0.445, 0.545, 49.0)],
    ("magnitude", "uniform", 0.5, "uniform"): [(0.30, 0.50, 200.0)],
}
# unstructured tiny-dlm instances and the dense models: name -> (arc_easy, winogrande, ppl)
OTHER = {
    "dlm-wanda-uniform-50-s0": (0.48, 0.58, 60.0), "dlm-wanda-sink-50-s0": (0.49, 0.59, 58.0),
    "tiny-dlm": (0.62, 0.65, 20.0), "tiny-ar": (0.60, 0.63, 25.0), "smollm2-135m": (0.70, 0.68, 15.0),
    "smol-flap-uniform-30-adapt-s0": (0.66, 0.64, 18.0),
}


def _name(method: str, structure: str, ratio: float, weighting: str, seed: int) -> str:
    return f"dlm-{method}-{weighting}-{round(100 * ratio)}-{CODES[structure]}-s{seed}"


def _instances() -> dict[str, dict]:
    out = {}
    for (method, structure, ratio, weighting), per_seed in STRUCT.items():
        for seed in range(len(per_seed)):
            out[_name(method, structure, ratio, weighting, seed)] = dict(
                model="tiny-dlm", method=method, weighting=weighting, sparsity=ratio, pattern="unstructured",
                seed=seed, structure=structure)
    for w in ("uniform", "sink"):
        out[f"dlm-wanda-{w}-50-s0"] = dict(model="tiny-dlm", method="wanda", weighting=w, sparsity=0.5,
                                           pattern="unstructured", seed=0)
    out["smol-flap-uniform-30-adapt-s0"] = dict(model="smollm2-135m", method="flap", weighting="uniform",
                                                sparsity=0.3, pattern="unstructured", seed=0, structure="adaptive")
    return out


def _values(name: str) -> tuple[float, float, float]:
    if name in OTHER:
        return OTHER[name]
    for (method, structure, ratio, weighting), per_seed in STRUCT.items():
        for seed, v in enumerate(per_seed):
            if _name(method, structure, ratio, weighting, seed) == name:
                return v
    raise KeyError(name)


def structured_params() -> P_.Params:
    """Params from a params.yaml copy: two tasks, three dense models, the instances above."""
    data = yaml.safe_load((paths.ROOT / "params.yaml").read_text())
    data["evaluate"]["tasks"] = {t: {"num_fewshot": 0, "cfg": 0.0, "mc_num": 4, "limit": N_ITEMS} for t in TASKS}
    data["evaluate"]["dense"] = ["tiny-dlm", "tiny-ar", "smollm2-135m"]
    data["prune"]["instances"] = _instances()
    data["efficiency"]["instances"] = ["dlm-wanda-uniform-50-s0"]
    data["plot"] = {"headline_sparsities": [0.5], "headline_methods": ["wanda"], "seeds": list(SEEDS)}
    return P_.load_dict(data)


def write_evals(root: Path, params) -> None:
    for name, cfg in results.instance_configs(params).items():
        arc, wino, ppl = _values(name)
        causal = cfg["model"] != "tiny-dlm"
        acc = {"arc_easy": arc, "winogrande": wino}
        write_json(paths.eval_metrics(name, root=root),
                   eval_metrics_json(name, cfg["model"], acc, ppl, causal, params=params))
        write_json(paths.eval_units(name, root=root), eval_units_json(name, acc, ppl))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    params = structured_params()
    write_evals(root, params)
    return root, params, results.load_results(params, root=root)


# plain-loop statistics and formatting, independent of srclib.report
def _mean(xs):
    return sum(xs) / len(xs)


def _sd(xs):
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _se(a):
    return 100 * math.sqrt(a * (1 - a) / (N_ITEMS - 1))


def _cell(xs, mark=""):
    """mean ± sample sd over seeds (percent already applied), one decimal, plus the mark."""
    return f"{_mean(xs):.1f} ± {_sd(xs):.1f}{mark}"


def _items(key, task_index):
    """Seed-averaged per-item values of one configuration and task (the planted items: item i is
    correct when its latent is below the accuracy)."""
    task = ("arc_easy", "winogrande")[task_index]
    lat = item_latent(task)
    per = STRUCT[key]
    return [sum(float(lat[i] < v[task_index]) for v in per) / len(per) for i in range(N_ITEMS)]


def _acc_cell(key, task_index, mark=""):
    """accuracy ± standard error over items of the seed-averaged item values (plain loops)."""
    return (f"{100 * _mean(_items(key, task_index)):.1f} ± "
            f"{100 * _sd(_items(key, task_index)) / math.sqrt(N_ITEMS):.1f}{mark}")


def _avg_cell(key, mark=""):
    pooled = _items(key, 0) + _items(key, 1)  # equal item counts: the pooled mean is the task average
    return f"{100 * _mean(pooled):.1f} ± {100 * _sd(pooled) / math.sqrt(len(pooled)):.1f}{mark}"


def _ppl_cell(key, mark=""):
    """exp(mean NLL over seeds) ± the delta-method standard error over windows."""
    ppl = math.exp(_mean([math.log(v[2]) for v in STRUCT[key]]))
    se = ppl * WINDOW_DEV * math.sqrt(N_WINDOWS / (N_WINDOWS - 1)) / math.sqrt(N_WINDOWS)
    return f"{ppl:.1f} ± {se:.1f}{mark}"


def _col(key, i):
    per = STRUCT[key]
    return [100 * v[i] if i < 2 else v[i] for v in per]


def _avg(key):
    return [(100 * a + 100 * w) / 2 for a, w, _ in STRUCT[key]]


# =================================================================================================
# results: configs and labels
# =================================================================================================
def test_configs_patterns_and_labels(setup):
    root, params, df = setup
    cfg = results.instance_configs(params)
    assert cfg["dlm-flap-sink-30-adapt-s2"] == {"model": "tiny-dlm", "method": "flap", "weighting": "sink",
                                                 "sparsity": 0.3, "pattern": "structured-adaptive", "seed": 2}
    assert cfg["dlm-wanda-uniform-30-struct-s0"]["pattern"] == "structured-uniform"
    assert cfg["dlm-wanda-uniform-50-s0"]["pattern"] == "unstructured"
    assert results.is_structured("structured-uniform") and not results.is_structured("unstructured")
    assert not results.is_structured("2:4") and not results.is_structured("dense")
    assert [results.method_label(m, "structured-adaptive") for m in ("magnitude", "wanda", "flap")] == [
        "Magnitude-sp", "Wanda-sp", "FLAP"]
    assert results.method_label("wanda", "unstructured") == "Wanda" and results.METHOD_LABELS["flap"] == "FLAP"
    with pytest.raises(ValueError, match=r"method must be one of \['flap', 'magnitude', 'wanda'\]"):
        results.method_label("sparsegpt", "structured-uniform")
    assert results.pruned_models(df, structured=True) == ["tiny-dlm", "smollm2-135m"]
    assert results.pruned_models(df, structured=False) == ["tiny-dlm"]
    assert results.pruned_models(df) == ["tiny-dlm", "smollm2-135m"]


# =================================================================================================
# the structured table
# =================================================================================================
def test_structured_table_layout_values_and_marks(setup):
    root, params, df = setup
    t = tables.structured_table(df, params, "tiny-dlm")
    heads = [f"{c} {w}" for c in ("ARC-E", "WinoGrande", "Avg", "PPL") for w in ("base", "sink", "stability")]
    assert list(t.columns) == ["Method", "Structure", "Ratio", "Seeds", *heads]
    assert list(zip(t["Method"], t["Structure"], t["Ratio"], t["Seeds"])) == [
        ("Dense", "–", "0%", "1"),
        ("Wanda-sp", "uniform", "30%", "1"),
        ("Wanda-sp", "adaptive", "30%", "3"),
        ("FLAP", "adaptive", "30%", "1/3"),  # stability has one seed, uniform and sink three
        ("Magnitude-sp", "uniform", "50%", "1"),
    ]
    flap = t.iloc[3]
    fu, fs = ("flap", "adaptive", 0.3, "uniform"), ("flap", "adaptive", 0.3, "sink")
    # FLAP: +6 / +5 points on every seed (the same items move): marked; perplexity lower on every window: better
    assert flap["ARC-E base"] == _acc_cell(fu, 0) and flap["ARC-E base"].startswith("51.0 ± ")
    assert flap["ARC-E sink"] == _acc_cell(fs, 0, " ↑") and flap["ARC-E sink"].startswith("57.0 ± ")
    assert flap["WinoGrande sink"] == _acc_cell(fs, 1, " ↑")
    assert flap["Avg base"] == _avg_cell(fu) and flap["Avg sink"] == _avg_cell(fs, " ↑")
    assert flap["PPL base"] == _ppl_cell(fu) and flap["PPL sink"] == _ppl_cell(fs, " ↑")
    # stability (seed 0 only) against uniform's seed 0: 2 discordant items (McNemar p = 0.5) unmarked;
    # perplexity 43 vs 40 on every window: worse
    st = ("flap", "adaptive", 0.3, "stability")
    assert flap["ARC-E stability"] == _acc_cell(st, 0)
    assert flap["PPL stability"] == _ppl_cell(st, " ↓")
    wa = t.iloc[2]
    ws_ = ("wanda", "adaptive", 0.3, "sink")
    # Wanda-sp adaptive: +0.5 point = one item per seed (sign-flip p = 0.25) unmarked; perplexity higher: worse
    assert wa["ARC-E sink"] == _acc_cell(ws_, 0) and wa["ARC-E sink"].startswith("46.5 ± ")
    assert wa["PPL sink"] == _ppl_cell(ws_, " ↓")
    assert wa["ARC-E stability"] == "–"
    one = t.iloc[1]  # one seed per weighting: 1 discordant item each task
    k1 = ("wanda", "uniform", 0.3, "sink")
    assert one["ARC-E sink"] == _acc_cell(k1, 0) and one["Avg sink"] == _avg_cell(k1)
    assert one["PPL base"].startswith("50.0 ± ") and one["PPL sink"].startswith("49.0 ± ")
    assert one["PPL sink"].endswith("↑")
    mag = t.iloc[4]
    assert mag["ARC-E base"] == _acc_cell(("magnitude", "uniform", 0.5, "uniform"), 0) and mag["ARC-E sink"] == "–"
    assert mag["PPL base"].startswith("200.0 ± ")
    dense = t.iloc[0]
    assert dense["ARC-E base"].startswith("62.0 ± ") and dense["ARC-E sink"] == "–"
    assert dense["PPL base"].startswith("20.0 ± ") and dense["PPL sink"] == "–"
    assert "target share of the blocks' linear-layer parameters" in " ".join(t.attrs["footnotes"])
    assert "achieved_ratio" in " ".join(t.attrs["footnotes"]) and "MC-ELBO" in " ".join(t.attrs["footnotes"])
    assert "Baseline (uniform calibration) vs sink-aware" in t.attrs["caption"]
    # no stability row: base and sink columns only; an AR model's exact perplexity
    smol = tables.structured_table(df, params, "smollm2-135m")
    assert list(smol.columns) == ["Method", "Structure", "Ratio", "Seeds", "ARC-E base", "ARC-E sink",
                                  "WinoGrande base", "WinoGrande sink", "Avg base", "Avg sink", "PPL base", "PPL sink"]
    assert list(smol["Method"]) == ["Dense", "FLAP"] and smol.loc[1, "PPL base"].startswith("18.0 ± ")
    assert set(tables.structured_tables(df, params)) == {"structured_tiny-dlm", "structured_smollm2-135m"}
    with pytest.raises(ValueError, match="no structured instances"):
        tables.structured_table(df, params, "tiny-ar")


def test_structured_cells_diffs(setup):
    root, params, df = setup
    cells = tables.structured_table_cells(df, params, "tiny-dlm")
    assert set(cells["pattern"]) == {"dense", "structured-uniform", "structured-adaptive"}
    r = cells[(cells["method"] == "flap") & (cells["weighting"] == "sink") & (cells["column"] == "ppl")].iloc[0]
    geo = lambda key: math.exp(_mean([math.log(x) for x in _col(key, 2)]))  # noqa: E731  exp(mean NLL)
    assert r["diff"] == pytest.approx(geo(("flap", "adaptive", 0.3, "sink"))
                                      - geo(("flap", "adaptive", 0.3, "uniform")))
    assert r["diff"] == pytest.approx(-10.0, abs=0.01) and r["mark"] == 1 and r["structure"] == "adaptive"


# =================================================================================================
# the unstructured tables leave structured rows out
# =================================================================================================
def test_main_tables_exclude_structured_rows(setup):
    root, params, df = setup
    assert set(tables.main_tables(df, params)) == {"main_tiny-dlm"}  # smollm2 has structured instances only
    t = tables.main_table(df, params)  # the one model with unstructured instances
    assert list(zip(t["Method"], t["Weighting"], t["Sparsity"], t["Pattern"])) == [
        ("Dense", "–", "0%", "–"), ("Wanda", "uniform", "50%", "unstructured"),
        ("Wanda", "sink-aware", "50%", "unstructured")]
    cells = tables.main_table_cells(df, params, "tiny-dlm")
    assert not cells["pattern"].map(results.is_structured).any()
    sv = tables.sink_vs_uniform_table(df, params, "tiny-dlm")
    assert list(sv["Method"]) == ["Dense", "Wanda"] and sv.loc[1, "PPL uniform"].startswith("60.0 ± ")
    # the index grid sorts columns by PATTERN_ORDER and rows by METHOD_ORDER: structured rows fit in
    grid = "\n".join(index._grid_html(df, lambda stage, name: None))
    assert "FLAP" in grid and "30% structured-adaptive" in grid and 'data-instance="dlm-flap-sink-30-adapt-s2"' in grid
    # the sparsity series stay unstructured
    assert not series.accuracy_series(df)["method"].eq("flap").any()


# =================================================================================================
# quality vs speedup: the series and the figure
# =================================================================================================
def _eff_rows() -> pd.DataFrame:
    """Efficiency rows as srclib.report.loaders.efficiency_rows gives them (with the structured
    columns): two shapes, CSR for the unstructured instance, compact for the structured ones, and
    one measured instance without evaluate results."""
    rows = []
    for shape, csr, flap_u, flap_s in (("1x192", 2.0, (1.10, 1.40), (1.05, 1.40)),
                                       ("16x192", 4.0, (1.25, 1.50), (1.30, 1.50))):
        base = dict(shape=shape, mem_csr_int32_ratio=NAN, mem_csr_int64_ratio=NAN, mem_2to4_ratio=NAN)
        rows.append(dict(base, instance="dlm-wanda-uniform-50-s0", format="csr", kind="unstructured",
                         step_sparse_over_dense=csr, flops_ratio=0.5, measured_speedup=NAN, ideal_speedup=NAN,
                         measured_over_ideal=NAN, mem_csr_int32_ratio=0.9))
        for name, (m, i) in (("dlm-flap-uniform-30-adapt-s0", flap_u), ("dlm-flap-sink-30-adapt-s0", flap_s)):
            rows.append(dict(base, instance=name, format="compact", kind="structured", step_sparse_over_dense=1 / m,
                             flops_ratio=1 / i, measured_speedup=m, ideal_speedup=i, measured_over_ideal=m / i))
        rows.append(dict(base, instance="dlm-not-evaluated", format="csr", kind="unstructured",
                         step_sparse_over_dense=3.0, flops_ratio=0.4, measured_speedup=NAN, ideal_speedup=NAN,
                         measured_over_ideal=NAN))
    return pd.DataFrame(rows)


def test_tradeoff_series_values(setup, tmp_path):
    root, params, df = setup
    s = series.tradeoff_series(df, _eff_rows(), params)  # default: the largest B*T shape, 16x192
    assert list(s.columns) == series.TRADEOFF_COLUMNS
    assert list(s["instance"]) == ["tiny-dlm", "dlm-wanda-uniform-50-s0", "dlm-flap-sink-30-adapt-s0",
                                   "dlm-flap-uniform-30-adapt-s0"]
    assert list(s["kind"]) == ["dense", "unstructured", "structured", "structured"]
    by = s.set_index("instance")
    assert by.loc["dlm-wanda-uniform-50-s0", "measured_speedup"] == pytest.approx(1 / 4.0)  # CSR: 1 / step ratio
    assert math.isnan(by.loc["dlm-wanda-uniform-50-s0", "ideal_speedup"])
    assert by.loc["dlm-flap-sink-30-adapt-s0", "measured_speedup"] == pytest.approx(1.30)  # compact: measured
    assert by.loc["dlm-flap-sink-30-adapt-s0", "ideal_speedup"] == pytest.approx(1.50)
    assert (by.loc["tiny-dlm", "measured_speedup"], by.loc["tiny-dlm", "ideal_speedup"]) == (1.0, 1.0)
    assert by.loc["dlm-flap-sink-30-adapt-s0", "pattern"] == "structured-adaptive"
    # quality: the instance's own numbers (one seed, no averaging over seeds)
    for name in by.index:
        arc, wino, ppl = _values(name)
        assert by.loc[name, "ppl"] == pytest.approx(ppl)
        assert by.loc[name, "average"] == pytest.approx((100 * arc + 100 * wino) / 2)
    small = series.tradeoff_series(df, _eff_rows(), params, shape="1x192").set_index("instance")
    assert small.loc["dlm-wanda-uniform-50-s0", "measured_speedup"] == pytest.approx(0.5)
    assert small.loc["dlm-flap-uniform-30-adapt-s0", "measured_speedup"] == pytest.approx(1.10)
    with pytest.raises(ValueError, match=r"shape must be one of the measured token shapes \['1x192', '16x192'\]"):
        series.tradeoff_series(df, _eff_rows(), params, shape="8x192")
    back = pd.read_csv(series.write_series(s, tmp_path / "t.csv"))
    assert list(back.columns) == list(s.columns) and np.allclose(back["measured_speedup"], s["measured_speedup"])
    # an instance timed at the small shape only (efficiency.model_token_shapes) keeps its point by default
    rows = _eff_rows()
    rows = rows[~((rows["instance"] == "dlm-flap-sink-30-adapt-s0") & (rows["shape"] == "16x192"))]
    per = series.tradeoff_series(df, rows, params).set_index("instance")
    assert per.loc["dlm-flap-sink-30-adapt-s0", "measured_speedup"] == pytest.approx(1.05)  # its 1x192 value
    assert per.loc["dlm-flap-uniform-30-adapt-s0", "measured_speedup"] == pytest.approx(1.25)  # still 16x192


def _offsets(ax, gid):
    return [c.get_offsets() for c in ax.collections if c.get_gid() == gid]


def test_quality_vs_speedup_draws_every_point(setup):
    root, params, df = setup
    data = series.tradeoff_series(df, _eff_rows(), params)
    fig = plotting.quality_vs_speedup(data)
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and fig.get_suptitle()
    for ax, col in zip(axes, ("ppl", "average")):
        assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel()
        pts = np.concatenate(_offsets(ax, "points"))
        pruned = data[data["kind"] != "dense"]
        assert len(pts) == len(pruned) == 3
        want = sorted(zip(pruned["measured_speedup"], pruned[col]))
        np.testing.assert_allclose(sorted(map(tuple, pts)), want)
        ideal = np.concatenate(_offsets(ax, "ideal"))
        assert sorted(ideal[:, 0]) == pytest.approx([1.5, 1.5])  # structured points only
        (dense,) = _offsets(ax, "dense")
        np.testing.assert_allclose(dense, [[1.0, data.loc[data["kind"] == "dense", col].iloc[0]]])
        assert any(ln.get_xdata()[0] == 1.0 for ln in ax.get_lines())  # the dense-speed line
        # uniform hollow, sink-aware filled
        coll = {tuple(c.get_offsets()[0]): c for c in ax.collections if c.get_gid() == "points"}
        for r in pruned.itertuples():
            face = coll[(r.measured_speedup, getattr(r, col))].get_facecolors()
            filled = len(face) and face[0][3] > 0
            assert bool(filled) == (r.weighting == "sink"), r.instance
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    with pytest.raises(ValueError, match="nothing to plot"):
        plotting.quality_vs_speedup(data[data["kind"] == "dense"])
    with pytest.raises(ValueError, match="missing"):
        plotting.quality_vs_speedup(data.drop(columns="ppl"))
    assert matplotlib.colors.to_rgb(plotting.METHOD_COLORS["flap"]) not in [
        matplotlib.colors.to_rgb(c) for k, c in plotting.METHOD_COLORS.items() if k != "flap"]


# =================================================================================================
# findings
# =================================================================================================
def test_structured_finding(setup):
    root, params, df = setup
    f = findings.structured_sink_vs_uniform(df, params, "tiny-dlm")
    assert f.key == "structured-sink-vs-uniform/tiny-dlm"
    wu_, ws_ = ("wanda", "adaptive", 0.3, "uniform"), ("wanda", "adaptive", 0.3, "sink")
    assert f.verdict == "mixed"  # FLAP better, Wanda-sp's perplexity worse (both at p < 0.05)
    fu, fs = ("flap", "adaptive", 0.3, "uniform"), ("flap", "adaptive", 0.3, "sink")
    assert f.values["flap adaptive 0.3 average uniform"][0] == pytest.approx(_mean(_avg(fu)))
    assert f.values["flap adaptive 0.3 average sink"][0] == pytest.approx(_mean(_avg(fs)))
    t = f.tests["flap adaptive 0.3 average"]
    assert t["diff"] == pytest.approx(_mean(_avg(fs)) - _mean(_avg(fu))) and t["n"] == 2 * N_ITEMS
    line = next(x for x in f.lines if x.startswith("FLAP (adaptive) at ratio 30%"))
    assert f"Δ +{_mean(_avg(fs)) - _mean(_avg(fu)):.1f} points" in line and "holds" in line
    line = next(x for x in f.lines if x.startswith("Wanda-sp (adaptive) at ratio 30%"))
    assert "ELBO perplexity uniform 41.0" in line and "opposite" in line  # perplexity 46 vs 41
    want = _mean([math.log(v[2]) for v in STRUCT[ws_]]) - _mean([math.log(v[2]) for v in STRUCT[wu_]])
    assert f.tests["wanda adaptive 0.3 ppl"]["diff"] == pytest.approx(want)
    assert len(f.lines) == 3  # magnitude-sp has no sink row
    keys = [x.key for x in findings.findings(df, params, {"runs": {}}, _eff_rows())]
    assert keys[2:] == ["sink-vs-uniform/tiny-dlm", "structured-sink-vs-uniform/tiny-dlm",
                        "structured-sink-vs-uniform/smollm2-135m", "efficiency"]
    eff = findings.efficiency(_eff_rows())  # compact rows are not a sparse format: left out
    assert set(eff.values) == {f"{n} csr {s}" for n in ("dlm-wanda-uniform-50-s0", "dlm-not-evaluated")
                               for s in ("1x192", "16x192")}
    assert eff.verdict == "does not hold (slower than dense)"


# =================================================================================================
# the plot stage
# =================================================================================================
def _prune_metrics(name: str, inst) -> dict:
    spec = {"method": inst.method, "weighting": inst.weighting, "sparsity": inst.sparsity, "pattern": inst.pattern}
    m = {"instance": name, "model": inst.model, "spec": spec, "calibration": {"seed": inst.seed}}
    if getattr(inst, "structure", None):
        spec["structure"] = inst.structure
        m["structured"] = {"form": "compact", "structure": inst.structure, "target_ratio": inst.sparsity,
                           "achieved_ratio": inst.sparsity - 0.01, "kv_groups": [2, 2], "intermediate": [32, 30]}
        m["overall_sparsity"] = inst.sparsity - 0.01
    else:
        m["layer_sparsity"] = {f"model.blocks.{b}.{p}": inst.sparsity for b in (0, 1) for p in ("q_proj", "up_proj")}
        m["overall_sparsity"] = inst.sparsity
    return m


@pytest.mark.slow  # the whole plot stage (variance tree, every figure): ~10 s on a loaded machine
def test_plot_stage_writes_structured_outputs(setup, monkeypatch):
    from srclib.stages import plot

    root, params, df = setup
    for name, inst in params.prune.instances.items():
        write_json(paths.prune_metrics(name, root=root), _prune_metrics(name, inst))
    write_variance_tree(root, params)
    write_json(paths.efficiency_metrics(root=root), {"instances": {}})  # rows come from _eff_rows
    monkeypatch.setattr(plot.loaders, "efficiency_rows", lambda metrics: _eff_rows())
    res = plot.run(params, root=root)
    assert {"structured_tiny-dlm", "structured_smollm2-135m", "main_tiny-dlm"} <= set(res.tables)
    assert "main_smollm2-135m" not in res.tables
    names = {p.name for p in paths.tables_dir(root=root).iterdir()}
    assert {f"structured_tiny-dlm.{ext}" for ext in ("md", "html", "tex")} <= names
    assert "### structured_tiny-dlm" in res.markdown
    assert not [s for s in res.skipped if s.startswith(("quality_vs_speedup", "layer_sparsity"))]
    figs = paths.figures_dir(root=root)
    assert (figs / "quality_vs_speedup.png").stat().st_size > 1000 and "quality_vs_speedup" in res.figures
    assert (figs / "layer_sparsity.png").is_file()
    csv = pd.read_csv(res.series["quality_vs_speedup"])
    want = series.tradeoff_series(df, _eff_rows(), params)
    assert list(csv["instance"]) == list(want["instance"])
    np.testing.assert_allclose(csv["measured_speedup"], want["measured_speedup"])
    assert any(f.key == "structured-sink-vs-uniform/tiny-dlm" for f in res.findings)
    idx = res.index.read_text()  # the front page shows the structured tables and the figure
    assert "tiny-dlm: structured pruning" in idx and "figures/quality_vs_speedup.png" in idx
    assert 'data-key="structured-sink-vs-uniform/tiny-dlm"' in idx
