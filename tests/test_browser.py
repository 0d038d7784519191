"""The report index in a real browser: headless Chromium (Debian's chromium + chromium-driver)
opens reports/index.html of a synthetic report tree; the page renders, every link resolves to a
file, every image loads. Skipped when Chromium, its driver or selenium is missing
(``apt-get install -y chromium chromium-driver``; selenium is in the dev extra)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from srclib import paths, plotting, report

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"headless browser test needs {', '.join(missing)} "
                                                      "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A rendered report tree: tables, figures, fake stage reports, then index.html."""
    import matplotlib.pyplot as plt

    from test_report import synthetic_params, write_eval_tree

    root = tmp_path_factory.mktemp("site")
    params = synthetic_params()
    write_eval_tree(root, params)
    df = report.load_results(params, root=root)
    report.write_tables({**report.main_tables(df, params), "dense_models": report.dense_table(df, params)},
                        paths.tables_dir(root=root))
    for stem, fig in (("accuracy_vs_sparsity", plotting.accuracy_vs_sparsity(df)),
                      ("perplexity_vs_sparsity", plotting.perplexity_vs_sparsity(df))):
        plotting.save_figure(fig, stem, paths.figures_dir(root=root))
        plt.close(fig)
    for stage, name in (("train", "train"), ("prune", "dlm-wanda-sink-50-s0"), ("plot", "plot")):
        p = paths.report_html(stage, name, root=root)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<!DOCTYPE html><html><head><title>{stage} {name}</title></head><body>ok</body></html>")
    index = report.build_index(root, params, "0123abcd")
    return root, index


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
    root, index = site
    driver.get(index.as_uri())
    assert driver.title == "Sink-aware pruning study: report index"
    assert "0123abcd" in driver.find_element("tag name", "body").text
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    assert len(hrefs) >= 3 + 9 + 4  # stage reports, 3 tables x 3 formats, 2 figures x (img link + PDF)
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
    # the params dump is on the page
    pre = driver.find_element("tag name", "pre").text
    assert "headline_sparsities" in pre and "instances" in pre


def test_linked_table_page_renders(site, driver):
    root, _ = site
    page = paths.tables_dir(root=root) / "main_tiny-dlm.html"
    driver.get(page.as_uri())
    assert driver.title == "main_tiny-dlm"
    rows = driver.find_elements("css selector", "tbody tr")
    assert len(rows) == 9
    headers = [th.text for th in driver.find_elements("css selector", "thead th")]
    assert headers[:2] == ["Method", "Weighting"] and headers[-2:] == ["Avg", "PPL"]
    assert "±" in rows[3].text
