"""`make figures` on a fresh clone: the stages that read only committed tables (figures, claims,
report) rerun with no model and no DVC cache, and what they make is what is committed — the
published claims are what the committed code computes from the committed tables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def figure_stages() -> list[str]:
    """The stages `make figures` reruns (the Makefile's FIGURE_STAGES)."""
    m = re.search(r"^FIGURE_STAGES := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile: no FIGURE_STAGES"
    return m.group(1).split()


def test_the_figure_stages_read_no_model_and_no_cached_file():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cached = {
        next(iter(o)) if isinstance(o, dict) else o
        for s in stages.values()
        for o in s.get("outs", [])
        if not (isinstance(o, dict) and next(iter(o.values())).get("cache") is False)
    }
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()  # fmt: skip
    for name in figure_stages():
        deps = stages[name]["deps"]
        assert not [d for d in deps if d.startswith("artifacts/")], name
        assert not [d for d in deps if d in cached], f"{name} reads a DVC-cached file"
        # and every one is in git: a fresh clone has it
        absent = [d for d in deps if not any(f == d or f.startswith(d.rstrip("/") + "/")
                                             for f in tracked)]  # fmt: skip
        assert not absent, f"{name} reads files git does not carry: {absent[:5]}"


def test_make_figures_on_a_fresh_clone_remakes_the_published_claims(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, tracked):
        if (ROOT / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tmp_path / rel)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CI": "true"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for pdf in (tmp_path / "figures").glob(
        "*.pdf"
    ):  # made again below, by the stages that draw them
        pdf.unlink()
    cmd = ["dvc", "repro", "--single-item", "--allow-missing", "--force", *figure_stages()]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*.pt"))
    for table in ("results/report/claims.csv", "results/aggregations/claims.csv",
                  "results/replicate/claims.csv", "results/ppo/gao_fits.csv",
                  "results/cheap/claims.csv", "results/diversity_map/claims.csv",
                  "results/diversity_map/summary.csv"):  # fmt: skip
        made, published = pd.read_csv(tmp_path / table), pd.read_csv(ROOT / table)
        pd.testing.assert_frame_equal(made, published, check_exact=False, rtol=1e-9)
    assert (tmp_path / "reports/index.html").stat().st_size > 100_000
    # the vector PDF of each figure these stages draw, made again
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = sorted(
        name for s in figure_stages() for o in stages[s].get("outs", [])
        if (name := next(iter(o)) if isinstance(o, dict) else o).endswith(".pdf")
    )  # fmt: skip
    made = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "figures").glob("*.pdf"))
    assert made == declared and len(made) >= 9, (made, declared)
    assert all((tmp_path / p).read_bytes().startswith(b"%PDF") for p in made)
    # the open questions' page: every part's figure, embedded (the page fetches nothing)
    page = (tmp_path / "reports/open_questions.html").read_text()
    assert page.count("<img") == 5 and page.count('src="data:image/png;base64') == 5
