"""The front page in a real browser: headless Chromium (Debian's chromium + chromium-driver)
opens reports/index.html of a synthetic report tree built from temporary metrics files; the
findings come first and show the numbers computed from those metrics files, every link resolves
to a file, every image loads, the params are folded. Skipped when Chromium, its driver or
selenium is missing (``apt-get install -y chromium chromium-driver``; selenium is in the dev extra)."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from srclib import paths, plotting
from srclib.files import read_json, write_json
from srclib.report import findings, index, render, results, series, tables

from helpers import CHROMEDRIVER, CHROMIUM, FLAGS  # tests/ is on sys.path
from report_tree import VARIANCE, VARIANCE_UNITS, synthetic_params, write_eval_tree

missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"headless browser test needs {', '.join(missing)} "
                                                      "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A rendered report tree: evaluate and variance metrics, tables, figures, fake stage reports,
    then index.html built from them."""
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("site")
    params = synthetic_params()
    write_eval_tree(root, params)
    write_json(paths.variance_metrics(root=root), VARIANCE)
    write_json(paths.variance_units(root=root), VARIANCE_UNITS)
    df = results.load_results(params, root=root)
    tabs = {**tables.main_tables(df, params), "dense_models": tables.dense_table(df, params)}
    render.write_tables(tabs, paths.tables_dir(root=root))
    models = results.pruned_models(df)
    for stem, fig in (("accuracy_vs_sparsity", plotting.accuracy_vs_sparsity(series.accuracy_errors(df), models)),
                      ("perplexity_vs_sparsity",
                       plotting.perplexity_vs_sparsity(series.perplexity_series(df), models))):
        plotting.save_figure(fig, stem, paths.figures_dir(root=root))
        plt.close(fig)
    for stage, name in (("train", "train"), ("prune", "dlm-wanda-sink-50-s0"), ("evaluate", "dlm-wanda-sink-50-s0"),
                        ("plot", "plot")):
        p = paths.report_html(stage, name, root=root)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<!DOCTYPE html><html><head><title>{stage} {name}</title></head><body>ok</body></html>")
    variance = read_json(paths.variance_metrics(root=root))
    units = read_json(paths.variance_units(root=root))
    found = findings.findings(df, params, variance, variance_units=units)
    page = index.build_index(root, params, "0123abcd", findings=found,
                             tables={"sink_variance": tables.sink_variance_table(variance, units), **tabs},
                             results=df)
    return root, page, params


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _file(url: str) -> Path:
    u = urlparse(url)
    assert u.scheme == "file", f"non-local link {url}"
    return Path(unquote(u.path))


def _wait_images(drv, timeout: float = 10.0) -> list[dict]:
    js = "return Array.from(document.images).map(i => ({src: i.src, complete: i.complete, w: i.naturalWidth}))"
    deadline = time.monotonic() + timeout
    while True:
        imgs = drv.execute_script(js)
        if all(i["complete"] for i in imgs) or time.monotonic() > deadline:
            return imgs
        time.sleep(0.1)


def test_index_renders_links_resolve_images_load(site, driver):
    root, page, _ = site
    driver.get(page.as_uri())
    assert driver.title == index.TITLE
    assert "0123abcd" in driver.find_element("tag name", "body").text
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    assert len(hrefs) >= 4 + 9 + 4  # stage reports, 3 tables x 3 formats, 2 figures x (img link + PDF)
    for href in hrefs:
        target = _file(href)
        assert target.is_file(), f"dangling link {href}"
        assert root in target.parents, f"link leaves the report tree: {href}"
    raw = driver.execute_script("return Array.from(document.querySelectorAll('a[href], img[src]'))"
                                ".map(e => e.getAttribute('href') || e.getAttribute('src'))")
    assert all(not r.startswith(("/", "file:", "http")) for r in raw), raw  # relative links only
    imgs = _wait_images(driver)
    assert len(imgs) == 2
    for img in imgs:
        assert img["complete"] and img["w"] > 0, f"image did not load: {img['src']}"
    # the params are folded at the end: present, hidden until opened
    details = driver.find_element("css selector", "details#params")
    pre = details.find_element("tag name", "pre")
    assert not pre.is_displayed()
    details.find_element("tag name", "summary").click()
    assert pre.is_displayed() and "headline_sparsities" in pre.text and "instances" in pre.text


def test_linked_table_page_renders(site, driver):
    root, _, _ = site
    page = paths.tables_dir(root=root) / "main_tiny-dlm.html"
    driver.get(page.as_uri())
    assert driver.title == "main_tiny-dlm"
    rows = driver.find_elements("css selector", "tbody tr")
    assert len(rows) == 9
    headers = [th.text for th in driver.find_elements("css selector", "thead th")]
    assert headers[:2] == ["Method", "Weighting"] and headers[-2:] == ["Avg", "PPL"]
    assert "±" in rows[3].text


def _mean_se(xs) -> tuple[float, float]:
    """Mean and standard error of the mean (ddof 1), written out here, not taken from srclib."""
    xs = [float(x) for x in xs]
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5


def test_findings_come_first_and_show_the_metrics(site, driver):
    """The findings section is the page's first section, and the numbers it shows are the ones
    computed here straight from the metrics and unit files (variance.json and its per-prompt
    values; metrics/units/evaluate/*.json: per-window NLL and per-item correctness)."""
    root, page, params = site
    driver.get(page.as_uri())
    h2 = [e.text for e in driver.find_elements("tag name", "h2")]
    assert h2[0] == "Findings" and h2.index("Figures") > h2.index("Headline tables")
    cards = {e.get_attribute("data-key"): e.text for e in driver.find_elements("css selector", "#findings .finding")}
    assert list(cards)[:2] == ["sink-motion", "bos-sinks"] and "sink-vs-uniform/tiny-dlm" in cards
    # sink motion: every run's normalised variance +- its standard error over the prompts
    runs = read_json(paths.variance_metrics(root=root))["runs"]
    uruns = read_json(paths.variance_units(root=root))["runs"]
    per_prompt = {run: next(iter(u["per_prompt"].values()))["variance"] for run, u in uruns.items()}
    for run in ("tiny-dlm", "tiny-ar"):
        se = _mean_se(per_prompt[run])[1]
        assert f"{runs[run]['variance']:.4f} ± {se:.4f}" in cards["sink-motion"], run
    # against its random-init twin: the paired difference of the per-prompt variances
    twin = _mean_se([b - a for a, b in zip(per_prompt["tiny-dlm-randinit"], per_prompt["tiny-dlm"])])[0]
    assert f"its random-init twin tiny-dlm-randinit, Var[p]/T²: Δ {twin:+.4f}" in cards["sink-motion"]
    assert "n = 8 prompts" in cards["sink-motion"] and "holds" in cards["sink-motion"]
    # sink-aware vs uniform, Wanda 50% on tiny-dlm over seeds 0..2: perplexity exp(mean NLL) over
    # the windows of the seed-averaged NLL (delta-method SE), average accuracy over the pooled items
    line = next(li.text for li in driver.find_elements("css selector", '[data-key="sink-vs-uniform/tiny-dlm"] li')
                if li.text.startswith("Wanda at 50%"))
    for weighting in ("uniform", "sink"):
        files = [read_json(paths.eval_units(f"dlm-wanda-{weighting}-50-s{k}", root=root)) for k in params.plot.seeds]
        nll = [sum(col) / len(col) for col in zip(*(f["ppl"]["window_nll_per_token"] for f in files))]
        m, se = _mean_se(nll)
        ppl = (math.exp(m), math.exp(m) * se)
        items = []
        for t in params.evaluate.tasks:
            metric = "acc_norm" if t == "arc_easy" else "acc"
            items += [100 * sum(col) / len(col) for col in zip(*(f["tasks"][t][metric] for f in files))]
        avg = _mean_se(items)
        label = "uniform" if weighting == "uniform" else "sink-aware"
        assert f"{label} {ppl[0]:.1f} ± {ppl[1]:.1f}" in line, (weighting, line)
        assert f"{label} {avg[0]:.1f} ± {avg[1]:.1f}" in line, (weighting, line)
    assert "p = " in line and "mde" in line
    # the grid: the linked instance shows its score and links both of its reports
    cell = driver.find_element("css selector", '[data-instance="dlm-wanda-sink-50-s0"]')
    assert {a.text for a in cell.find_elements("tag name", "a")} == {"eval", "prune"}
    # figures at readable size, each with a caption
    for fig in driver.find_elements("css selector", "#figures figure"):
        assert fig.find_element("tag name", "img").size["width"] >= 600
        assert fig.find_element("tag name", "figcaption").text
