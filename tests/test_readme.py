"""The README's result tables are what `study.readme` generates from the committed results."""

from __future__ import annotations

import pandas as pd
import pytest

from study.pages import PAGES, generated, rewrite, write_pages
from study.readme import blocks, claims_block, matched_kl_block
from tests.conftest import ROOT


def test_every_generated_block_of_the_pages_matches_the_committed_results():
    pages = {page: (ROOT / page).read_text() for page in PAGES}
    for name, body in blocks(ROOT).items():
        on = [page for page, text in pages.items() if generated(text, name) is not None]
        assert len(on) == 1, f"block '{name}' is on {on or 'no page'}: one of {PAGES} holds it"
        assert generated(pages[on[0]], name) == body, (
            f"{on[0]}: block '{name}' differs from the committed results: run python -m study.readme"
        )


def test_write_pages_names_a_block_no_page_holds_and_writes_nothing(tmp_path):
    for page in PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text(
            "<!-- generated: claims -->\nold\n<!-- /generated: claims -->\n"
        )
    with pytest.raises(ValueError, match="holds the generated block"):
        write_pages(tmp_path, blocks(tmp_path))
    assert all("old" in (tmp_path / page).read_text() for page in PAGES)


def test_rewrite_replaces_only_the_named_block():
    text = "a\n<!-- generated: x -->\nold\n<!-- /generated: x -->\nb\n<!-- generated: y -->\nkeep\n<!-- /generated: y -->\n"
    out = rewrite(text, {"x": "new\nlines"})
    assert generated(out, "x") == "new\nlines" and generated(out, "y") == "keep"
    missing = []
    rewrite(text, {"z": "..."}, missing.append)
    assert missing == ["z"]


def test_tables_by_hand():
    claims = pd.DataFrame({"claim": ["c | d"], "measure": ["m"], "measured": ["1 vs 2"],
                           "design": ["paired over 5 seeds"], "verdict": ["not supported"]})  # fmt: skip
    assert claims_block(claims).splitlines()[2] == (
        "| c \\| d | m | 1 vs 2 | paired over 5 seeds | **not supported** |"
    )
    runs = pd.DataFrame({"variant": ["single", "single"], "overoptimised": [True, False],
                         "gold_at_kl10": [1.0, float("nan")], "gold_final": [1.0, 3.0],
                         "kl_final": [12.0, 9.5]})  # fmt: skip
    row = matched_kl_block(runs, [10.0]).splitlines()[2]
    assert row == "| `single` | 2 | 1/2 | 1.00 (1/2 reached) | 2.00 ± 12.71 | 9.5–12.0 |"
    # the win rate against SFT, at the largest level every seed of every proxy variant reached
    runs = pd.DataFrame({"variant": ["single", "single", "gold", "gold"],
                         "overoptimised": [True, False, False, False],
                         "gold_at_kl5": [1.0, 2.0, 2.5, 2.5],
                         "gold_at_kl10": [1.0, 1.0, 2.6, float("nan")],
                         "gold_final": [1.0, 3.0, 2.7, 2.7], "kl_final": [12.0, 11.0, 11.0, 9.0]})  # fmt: skip
    wins = pd.DataFrame({"variant": ["single", "single", "gold", "gold"], "seed": [0, 1, 0, 1],
                         "win_rate_at_kl10": [0.4, 0.6, 0.7, float("nan")]})  # fmt: skip
    table = matched_kl_block(runs, [5.0, 10.0], wins).splitlines()
    assert table[0].endswith("| final KL | win rate vs SFT at KL 10 |")
    assert table[2].endswith("| 0.50 ± 1.27 |")  # mean 0.5, t(1) * sd / sqrt(2)
    assert table[3].endswith("| 0.70 (1/2 reached) |")


def test_the_readme_claims_are_those_at_the_level_every_seed_reached():
    import pandas as pd

    from study.readme import headline_claims_block, matched_level

    claims = pd.DataFrame({
        "claim": ["over", "a", "b", "c", "d", "e"],
        "measure": ["PPO runs overoptimised (single)", "PPO gold at KL 2", "PPO gold at KL 5",
                    "PPO gold at KL 10", "BoN gold at the largest n", "PPO final gold"],
        "measured": ["4 of 5"] * 6, "design": ["paired"] * 6,
        "verdict": ["supported", "inconclusive", "supported",
                    "inconclusive (level reached by 1/5 and 5/5 seeds)", "supported", "supported"],
    })  # fmt: skip
    assert matched_level(claims) == 5.0
    block = headline_claims_block(claims)
    rows = [x.split(" | ")[0].strip("| ") for x in block.splitlines()[2:] if x.startswith("| ")]
    assert rows == ["over", "b", "d"]
    assert "3 further rows" in block
    assert matched_level(claims.iloc[[0, 3]]) is None


def test_the_replication_block_shows_the_matched_level_and_counts_agreement():
    import pandas as pd

    from study.readme import replicate_block

    side = pd.DataFrame({
        "claim": ["over", "a", "b", "c"],
        "measure": ["PPO runs overoptimised (single)", "PPO gold at KL 5", "PPO gold at KL 10",
                    "PPO final gold"],
        "verdict_A": ["supported", "supported", "inconclusive", "supported"],
        "verdict_B": ["supported", "inconclusive", "inconclusive", "supported"],
        "measured_all": ["8 of 10", "+0.4", "+0.9", "+0.3"],
        "verdict_all": ["supported", "supported",
                        "inconclusive (level reached by 2/10 and 10/10 seeds)", "supported"],
        "agree": [True, False, True, True],
    })  # fmt: skip
    block = replicate_block(side)
    rows = [x.split(" | ")[0].strip("| ") for x in block.splitlines()[2:] if x.startswith("| ")]
    assert rows == ["over", "a", "c"]  # KL 10 was not reached by every seed: not shown
    assert "2 of 3 verdicts shown agree" in block and "(3 of 4 over every row" in block


def test_in_short_states_each_comparison_at_the_level_every_seed_reached():
    from study.readme import in_short_block

    def row(measure, measured, verdict):
        return {"claim": "c", "measure": measure, "measured_all": measured,
                "verdict_all": verdict, "design_all": "paired over 10 seeds"}  # fmt: skip

    side = pd.DataFrame([
        row("PPO runs overoptimised (single)", "9 of 10 seeds", "supported"),
        row("PPO gold at KL 5", "ensemble_min 2.22 vs single 1.74: difference +0.48 ± 0.08",
            "supported"),
        row("PPO gold at KL 10", "ensemble_min 2.00 vs single 1.20: difference +0.80 ± 0.30",
            "inconclusive (level reached by 2/10 and 10/10 seeds)"),
        row("PPO gold at KL 5", "multihead_min 1.82 vs ensemble_min 2.22: difference -0.40 ± 0.18 "
            "(margin ±0.2)", "not supported"),
    ])  # fmt: skip
    assert in_short_block(side).splitlines() == [
        "- Optimising the single proxy overoptimises (gold peaks, then falls while the proxy "
        "rises) in 9 of 10 seeds: **supported**.",
        "- The full ensemble's minimum against one reward model: +0.48 ± 0.08 gold at KL 5, "
        "paired over 10 seeds: **supported**.",
        "- The same multi-head model as good as the ensemble (parity within ±0.2): -0.40 ± 0.18 "
        "gold at KL 5, paired over 10 seeds: **not supported**.",
    ]


def test_the_figures_block_links_each_figure_its_vector_copy_and_names_one_not_made(tmp_path):
    from study.readme import figures_block

    (tmp_path / "figures").mkdir()
    for name in ("a.png", "a.pdf", "b.png"):
        (tmp_path / "figures" / name).write_bytes(b"x")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  s:\n"
        "    cmd: papermill notebooks/s.ipynb reports/s.ipynb\n"
        "    outs: [figures/a.png, figures/a.pdf, figures/b.png, figures/c.png]\n"
    )
    rows = figures_block(tmp_path / "dvc.yaml").splitlines()[2:]  # no git here: what exists
    assert rows == [
        "| [`figures/a.png`](figures/a.png) ([PDF](figures/a.pdf)) | `s` | `notebooks/s.ipynb` |",
        "| [`figures/b.png`](figures/b.png) | `s` | `notebooks/s.ipynb` |",
        "| `figures/c.png` (not in git: `python -m study.pipeline s` makes it) | `s` "
        "| `notebooks/s.ipynb` |",
    ]
