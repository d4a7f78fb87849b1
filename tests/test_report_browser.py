"""The published report as a reader sees it: `reports/index.html` opened in headless Chromium
(Debian's `chromium` and `chromium-driver`; `.ci/run` installs them when missing). Every image
decodes, no script is fetched from the network, the claims table is the committed
`results/report/claims.csv`, every link names an executed notebook the pipeline makes, and no
progress bar or warning is printed in it."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from study.render import page_of
from tests.conftest import ROOT

# what a progress bar or a library warning leaves in an executed notebook's output
NOISE = re.compile(r"\d+%\|[^|]{0,60}\||\d+/\d+ \[\d\d:\d\d|\bit/s\]|Warning:|warnings\.warn")


def _driver():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver")
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--allow-file-access-from-files"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


def open_report(path: Path, screenshot: Path | None = None) -> dict:
    """What a browser shows of the report at `path`: its images (source kind, decoded or not),
    its tables (header cells, number of body rows), its relative links, its visible text and the
    scripts it fetches."""
    driver = _driver()
    try:
        driver.get(path.resolve().as_uri())
        # a loaded page: every element parsed and every image decoded (or failed) before counting
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script(
                "return document.readyState === 'complete' && "
                "Array.from(document.images).every(i => i.complete)"
            )
        )
        scripts = driver.execute_script(
            "return Array.from(document.scripts).map(s => s.src).filter(s => s)"
        )
        images = driver.execute_script(
            "return Array.from(document.images).map(i => "
            "[i.src.slice(0, 22), i.complete && i.naturalWidth > 0, i.naturalWidth])"
        )
        tables = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => ["
            "Array.from(t.querySelectorAll('thead th')).map(h => h.textContent.trim()),"
            "t.querySelectorAll('tbody tr').length])"
        )
        links = driver.execute_script(
            "return Array.from(document.links).map(a => a.getAttribute('href'))"
        )
        text = driver.execute_script("return document.body.innerText")
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    return {"images": images, "tables": tables, "links": links, "text": text, "scripts": scripts}


def check_report(path: Path, claims: pd.DataFrame, links_exist: bool) -> dict:
    """Assert what every published report must show; the browser's view of it."""
    seen = open_report(path)
    assert seen["images"], "the report shows no figure"
    in_file = path.read_text().count("<img ")
    assert len(seen["images"]) == in_file, f"{len(seen['images'])} of the {in_file} images shown"
    assert not seen["scripts"], (
        f"the report fetches scripts, unreachable offline: {seen['scripts']}"
    )
    broken = [src for src, ok, _ in seen["images"] if not ok]
    assert not broken, f"{len(broken)} image(s) do not load: {broken[:3]}"
    claim_tables = [rows for head, rows in seen["tables"] if {"claim", "verdict"} <= set(head)]
    assert claim_tables == [len(claims)], (seen["tables"], len(claims))
    for c in claims["claim"]:
        assert c in seen["text"], f"claim {c!r} is not shown"
    made = _executed_notebooks()
    local = [h for h in seen["links"] if h and not h.startswith(("http", "#", "mailto:"))]
    assert local, "the report links no executed notebook"
    for href in local:
        assert f"reports/{href}" in made, f"{href}: no pipeline stage makes it"
        if links_exist:
            assert (path.parent / href).is_file(), f"{href}: linked, but not made"
    noise = NOISE.findall(seen["text"])
    assert not noise, f"progress bars or warnings in the report: {noise[:5]}"
    return seen


def _executed_notebooks() -> set[str]:
    """The page of every `reports/*.ipynb` that a stage of dvc.yaml makes (foreach and matrix
    expanded by DVC), as `study.render` names it, and every page a stage renders itself."""
    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    try:
        outs = [Path(o.def_path) for s in repo.index.stages for o in s.outs]
        return {
            f"reports/{page_of(o.name) if o.suffix == '.ipynb' else o.name}"
            for o in outs
            if o.parts[0] == "reports" and o.suffix in (".ipynb", ".html")
        }
    finally:
        repo.close()


def test_noise_pattern_catches_progress_bars_and_warnings_only():
    assert NOISE.search("Executing:  31%|███       | 4/13 [00:04<00:09,  1.06s/cell]")
    assert NOISE.search("100%|##########| 60/60 [00:45<00:00, 1.3it/s]")
    assert NOISE.search("UserWarning: the attention mask is not set")
    assert not NOISE.search("gold at KL 10: 1.24 ± 0.10 (5 seeds, 80% of runs)")


def test_the_published_report_opens_in_a_browser_with_its_figures_and_claims():
    claims = pd.read_csv(ROOT / "results/report/claims.csv")
    seen = check_report(ROOT / "reports/index.html", claims, links_exist=False)
    assert len(seen["images"]) >= 5


if __name__ == "__main__":  # python -m tests.test_report_browser docs/report.png
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/report.png")
    open_report(ROOT / "reports/index.html", screenshot=out)
    print(f"wrote {out}")
