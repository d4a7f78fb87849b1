import json

import pandas as pd
import pytest

from study.io import (
    ArtifactError,
    MissingArtifactError,
    atomic_path,
    load_prompts,
    read_table,
    require,
    write_json,
    write_table,
)


def test_atomic_file_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "world"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("2")
        raise KeyError("interrupted")
    assert (target / "a.txt").read_text() == "1"  # the complete old output survives
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_tables_carry_provenance(tmp_path):
    df = pd.DataFrame({"step": [1, 2], "gold": [0.5, 0.7]})
    write_table(tmp_path / "t.parquet", df, {"git_revision": "abc", "params": {"x": 1}})
    back = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, df)
    assert back.attrs["provenance"]["params"] == {"x": 1}


def test_missing_artifacts_name_the_file_and_the_stage(tmp_path):
    with pytest.raises(
        MissingArtifactError, match=r"nope.parquet: missing artifact \(made by the world stage"
    ):
        read_table(tmp_path / "nope.parquet", "the world stage")
    with pytest.raises(MissingArtifactError):
        require(tmp_path / "x", "somewhere")


def test_write_json(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1.5}


def test_reading_an_unbuilt_world_names_the_missing_file(tmp_path):
    from study.preferences import load_preferences
    from study.world.build import load_summary

    with pytest.raises(
        MissingArtifactError, match=r"summary\.json: missing artifact \(made by the world stage"
    ):
        load_summary(tmp_path)
    with pytest.raises(MissingArtifactError, match=r"preferences/val\.parquet: missing artifact"):
        load_preferences(tmp_path, "val")


def test_a_temporary_left_by_a_killed_write_is_removed_by_the_next_write(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from study.io import write_text

    target = tmp_path / "table.csv"
    code = (
        "import sys, time\nfrom study.io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_text('half')\n    print('writing', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)  # no finally runs: the temporary stays
    proc.wait()
    time.sleep(0.1)
    assert not target.exists() and len(list(tmp_path.glob(".table.csv.*.tmp"))) == 1
    (tmp_path / ".other.csv.x.tmp").mkdir()  # another file's write in progress: not touched
    write_text(target, "whole")
    assert target.read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [".other.csv.x.tmp"]


def test_code_revision_names_the_commit_and_uncommitted_code(tmp_path, monkeypatch):
    import subprocess

    from study.io import code_revision as provenance

    monkeypatch.chdir(tmp_path)
    assert provenance() == "no git commit"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert provenance() == f"commit {head}"
    (tmp_path / "results.csv").write_text("a\n")  # an output, untracked: not the code
    assert provenance() == f"commit {head}"
    (tmp_path / "study" / "a.py").write_text("x = 2\n")
    assert provenance() == f"commit {head}, plus uncommitted changes"


def test_a_figure_records_the_commit_and_profile_that_made_it(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from study.io import save_figure

    monkeypatch.chdir(tmp_path)  # no git here
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "f.png", "smoke")
    plt.close(fig)
    made_by = Image.open(tmp_path / "f.png").text["Description"]
    assert made_by == "study (no git commit, profile smoke)"


PROMPTS = pd.DataFrame(
    {"prompt": ["write a calm note .", "write a story .", "write a poem ."],
     "split": ["rl", "rl", "eval"]}
)  # fmt: skip


def test_the_prompts_of_a_split_are_read_in_the_tables_order(tmp_path):
    write_table(tmp_path / "prompts.parquet", PROMPTS)
    assert load_prompts(tmp_path, "rl") == ["write a calm note .", "write a story ."]
    assert load_prompts(tmp_path, "eval") == ["write a poem ."]
    with pytest.raises(ValueError, match="split must be one of"):
        load_prompts(tmp_path, "train")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (PROMPTS.iloc[:0], r"no prompt in split 'rl' \(0 rows\)"),
        (PROMPTS.drop(columns="split"), r"missing column\(s\) split \(have: prompt\)"),
        (PROMPTS.rename(columns={"prompt": "text"}), r"missing column\(s\) prompt"),
        (PROMPTS.assign(prompt=["a", None, "c"]), r"row 1: column 'prompt' must be non-empty text"),
        (PROMPTS.assign(prompt=["a", "  ", "c"]), r"row 1: column 'prompt' must be non-empty text"),
        (PROMPTS.assign(prompt=["a", "", "c"]), r"row 1: column 'prompt' must be non-empty text"),
        (PROMPTS.assign(prompt=[1.0, 2.0, float("nan")]), r"row 0: column 'prompt'.*got 1\.0"),
        (PROMPTS.assign(split=["rl", "train", "eval"]), r"row 1: column 'split' is 'train'"),
        (PROMPTS.assign(split=["eval", "eval", "eval"]), r"no prompt in split 'rl' \(3 rows\)"),
    ],
    ids=[
        "no-rows",
        "no-split",
        "no-prompt",
        "null",
        "blank",
        "empty-string",
        "numbers",
        "bad-split",
        "no-rl",
    ],
)
def test_a_malformed_prompts_table_names_the_file_the_row_and_the_fix(tmp_path, table, message):
    write_table(tmp_path / "prompts.parquet", table)
    with pytest.raises(ArtifactError, match=message) as e:
        load_prompts(tmp_path, "rl")
    assert str(tmp_path / "prompts.parquet") in str(e.value)
    assert "dvc repro --force world" in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_an_unreadable_table_names_the_file_and_the_stage_to_rerun(tmp_path, damage):
    path = write_table(tmp_path / "prompts.parquet", PROMPTS)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "text": b"prompt,split\na,rl\n", "empty": b""}[damage]
    )
    with pytest.raises(ArtifactError, match=r"prompts\.parquet: not a readable Parquet table") as e:
        load_prompts(tmp_path, "rl")
    assert "rerun the world stage" in str(e.value)


def test_a_figure_with_pdf_gets_a_vector_copy_and_both_are_the_same_bytes_when_saved_again(
    tmp_path,
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from study.io import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "a.png", "smoke", pdf=True)
    pdf = tmp_path / "a.pdf"
    assert pdf.read_bytes().startswith(b"%PDF") and b"profile smoke" in pdf.read_bytes()
    before = png.read_bytes(), pdf.read_bytes()
    save_figure(fig, tmp_path / "a.png", "smoke", pdf=True)
    assert (png.read_bytes(), pdf.read_bytes()) == before  # no date in either
    save_figure(fig, tmp_path / "b.png", "smoke")
    assert not (tmp_path / "b.pdf").exists()  # only when asked
    plt.close(fig)
