"""tools/relock_code.py: a code-only change recorded in dvc.lock as `dvc commit -f` records it
(byte for byte, on a toy project whose outputs are present), and nothing else recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

STAGES = textwrap.dedent(
    """\
    stages:
      a:
        matrix:
          seed: [0, 1]
        cmd: cat in.txt > a${item.seed}.txt
        deps: [in.txt, study/code.py, study/pkg]
        params: [{params.resolved.yaml: [x]}]
        outs: ["a${item.seed}.txt"]
    """
)


def _run(root, *args, ok=True):
    # the stages' `jupyter` is this environment's
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path}
    done = subprocess.run(
        [sys.executable, *args], cwd=root, capture_output=True, text=True, env=env
    )
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def _relock(root, *extra):
    return _run(root, str(ROOT / "tools" / "relock_code.py"), "--root", str(root), *extra, ok=False)


@pytest.fixture
def project(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed by dvc")
    root = tmp_path / "p"
    (root / "study" / "pkg").mkdir(parents=True)
    _run(root, "-m", "dvc", "init", "--no-scm", "-q")
    (root / "dvc.yaml").write_text(STAGES)
    (root / "in.txt").write_text("one\n")
    (root / "params.resolved.yaml").write_text("x: 1\n")
    (root / "study" / "code.py").write_text("A = 1\n")
    (root / "study" / "pkg" / "m.py").write_text("B = 2\n")
    _run(root, "-m", "dvc", "repro", "-q")
    return root


@pytest.mark.processes
def test_a_code_change_is_recorded_as_dvc_commit_records_it(project, tmp_path):
    (project / "study" / "code.py").write_text("A = 1  # the same result\n")
    (project / "study" / "pkg" / "m.py").write_text("B = 2  # the same result\n")
    (project / "study" / "new.py").write_text("C = 3\n")
    (project / "dvc.yaml").write_text(STAGES.replace("study/pkg]", "study/pkg, study/new.py]"))
    reference = tmp_path / "reference"
    shutil.copytree(project, reference)
    _run(reference, "-m", "dvc", "commit", "-f", "-q")  # DVC itself, with the outputs here
    done = _relock(project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 entries with new code hashes" in done.stdout
    assert (project / "dvc.lock").read_text() == (reference / "dvc.lock").read_text()
    assert "up to date" in _run(project, "-m", "dvc", "status").stdout
    assert "0 of 2 entries" in _relock(project).stdout  # nothing left to record


@pytest.mark.processes
def test_params_or_a_command_that_changed_are_refused_and_data_stays_stale(project):
    lock = (project / "dvc.lock").read_text()
    (project / "params.resolved.yaml").write_text("x: 2\n")
    (project / "study" / "code.py").write_text("A = 2\n")
    done = _relock(project)
    assert done.returncode == 1 and "refused: a@0: its params changed" in done.stdout
    assert (project / "dvc.lock").read_text() == lock  # nothing written
    (project / "params.resolved.yaml").write_text("x: 1\n")
    (project / "dvc.yaml").write_text(STAGES.replace("cat in.txt", "cat  in.txt"))
    assert "refused: a@1: its command changed" in _relock(project).stdout
    (project / "dvc.yaml").write_text(STAGES)
    (project / "in.txt").write_text("two\n")  # data, not code: still stale after a relock
    assert _relock(project).returncode == 0
    status = _run(project, "-m", "dvc", "status").stdout
    assert "in.txt" in status and "study/code.py" not in status


RENDERED = textwrap.dedent(
    """\
    stages:
      nb:
        cmd: python make_nb.py reports/nb.ipynb && jupyter nbconvert --to html --log-level WARN reports/nb.ipynb
        deps: [make_nb.py, study/code.py]
        outs: [reports/nb.ipynb, reports/nb.html, table.txt]
    """
)
MAKE_NB = (
    "import sys, nbformat\n"
    "nb = nbformat.v4.new_notebook()\n"
    "nb.cells = [nbformat.v4.new_markdown_cell('a result')]\n"
    "nbformat.write(nb, sys.argv[1])\n"
    "open('table.txt', 'w').write('1\\n')\n"
)


@pytest.mark.processes
def test_a_stage_that_no_longer_renders_its_notebook_is_recorded_as_dvc_commit_records_it(
    tmp_path,
):
    root = tmp_path / "p"
    (root / "study").mkdir(parents=True)
    (root / "reports").mkdir()
    _run(root, "-m", "dvc", "init", "--no-scm", "-q")
    (root / "dvc.yaml").write_text(RENDERED)
    (root / "make_nb.py").write_text(MAKE_NB)
    (root / "study" / "code.py").write_text("A = 1\n")
    _run(root, "-m", "dvc", "repro", "-q")
    assert (root / "reports" / "nb.html").exists()
    lock = (root / "dvc.lock").read_text()
    # the page kept as an output, or another file converted: refused
    unrendered = RENDERED.replace(
        " && jupyter nbconvert --to html --log-level WARN reports/nb.ipynb", ""
    )
    (root / "dvc.yaml").write_text(unrendered)
    assert "refused: nb: its outputs changed" in _relock(root).stdout
    (root / "dvc.yaml").write_text(RENDERED.replace("WARN reports/nb.ipynb", "WARN table.txt"))
    assert "refused: nb: its command changed" in _relock(root).stdout
    assert (root / "dvc.lock").read_text() == lock
    # the conversion gone with its page: the entry DVC itself records with the outputs here
    (root / "dvc.yaml").write_text(unrendered.replace("reports/nb.html, ", ""))
    reference = tmp_path / "reference"
    shutil.copytree(root, reference)
    _run(reference, "-m", "dvc", "commit", "-f", "-q")
    done = _relock(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of them no longer render their notebook to HTML" in done.stdout
    assert (root / "dvc.lock").read_text() == (reference / "dvc.lock").read_text()
    assert "up to date" in _run(root, "-m", "dvc", "status").stdout


@pytest.mark.processes
def test_check_dvc_yaml_passes_a_rewrite_of_the_text_and_names_a_changed_stage(tmp_path):
    """tools/check_dvc_yaml.py: the committed dvc.yaml and the same pipeline written out by PyYAML
    (block lists, no anchors, no comments) are the same stages; one dependency renamed is not."""
    import yaml

    sys.path.insert(0, str(ROOT / "tools"))
    from check_dvc_yaml import main

    text = (ROOT / "dvc.yaml").read_text()
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(yaml.safe_load(text), sort_keys=False))
    assert main([str(ROOT / "dvc.yaml"), str(tmp_path / "plain.yaml")]) == 0
    (tmp_path / "changed.yaml").write_text(text.replace("study/io.py", "study/io2.py", 1))
    assert main([str(ROOT / "dvc.yaml"), str(tmp_path / "changed.yaml")]) == 1


def test_a_default_changed_in_the_code_is_refused(tmp_path):
    """A default of study/config/ is a param, not code: if params.resolved.yaml is not what the
    code resolves now, relocking would keep results made with the old value."""
    sys.path.insert(0, str(ROOT / "tools"))
    from relock_code import _stale_resolved_params

    from study.config import write_resolved

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    resolved = write_resolved(tmp_path / "params.yaml", tmp_path / "params.resolved.yaml")
    assert _stale_resolved_params(tmp_path) is None
    old = resolved.read_text()
    resolved.write_text(old.replace("equivalence_margin: 0.2", "equivalence_margin: 0.3"))
    assert resolved.read_text() != old
    assert "not what params.yaml and study/config/ resolve to" in _stale_resolved_params(tmp_path)


def test_the_lock_records_the_code_of_this_tree():
    """Every dvc.lock entry's study/ hashes are this tree's: the committed results are recorded as
    made by the committed code (rerun, or relocked after a change shown not to move a number)."""
    done = _relock(ROOT, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("0 of ") and "entries with new code hashes" in done.stdout, (
        done.stdout
    )


@pytest.mark.processes
def test_a_narrower_params_declaration_is_recorded_only_with_the_values_it_ran_with(project):
    """A stage that declares a part of what it declared (x.a of x) is relocked with that part's
    value, when nothing it declared then has moved; a key it never recorded, a dropped part that
    moved since the run, or a declared part that moved, is refused."""
    (project / "params.resolved.yaml").write_text("x: {a: 1, b: 2}\ny: 3\n")
    _run(project, "-m", "dvc", "repro", "-q")
    (project / "dvc.yaml").write_text(STAGES.replace("[x]", "[x.a]"))
    (project / "params.resolved.yaml").write_text("x: {a: 1, b: 5}\ny: 3\n")  # b moved, a not
    assert "refused: a@0: its params changed (x, no longer declared" in _relock(project).stdout
    (project / "params.resolved.yaml").write_text("x: {a: 1, b: 2}\ny: 3\n")
    (project / "dvc.yaml").write_text(STAGES.replace("[x]", "[x.a, y]"))
    assert "refused: a@0: its params changed (y was not recorded)" in _relock(project).stdout
    (project / "dvc.yaml").write_text(STAGES.replace("[x]", "[x.a]"))
    done = _relock(project)
    assert done.returncode == 0 and "2 of them declare other params" in done.stdout, done.stdout
    assert "up to date" in _run(project, "-m", "dvc", "status").stdout
    (project / "params.resolved.yaml").write_text("x: {a: 4, b: 2}\ny: 3\n")
    assert "refused: a@0: its params changed (x.a)" in _relock(project).stdout


def test_an_arm_section_is_resolved_from_the_recorded_reward_section():
    """`arms.<name>` of a stage that recorded the whole `reward` (every arm) is that arm resolved
    from the recorded values: equal to the arm as resolved now when nothing moved, not equal
    once a shared field (reward.lr) did."""
    import dataclasses

    sys.path.insert(0, str(ROOT / "tools"))
    from relock_code import _plain, _value_when_run

    from study.config import resolved_arms
    from study.config.reward import RewardConfig

    reward = RewardConfig()
    recorded = {"reward": _plain(dataclasses.asdict(reward)), "run": {"seed": 0}}
    now = resolved_arms(reward)
    for arm in ("single", "multihead-3ep", "ensemble-lora"):
        assert _plain(_value_when_run(recorded, f"arms.{arm}")) == _plain(now[arm])
    assert _value_when_run(recorded, "run.seed") == 0
    moved = resolved_arms(dataclasses.replace(reward, lr=1e-3))
    assert _plain(_value_when_run(recorded, "arms.multihead-3ep")) != _plain(moved["multihead-3ep"])
    with pytest.raises(KeyError):
        _value_when_run(recorded, "ppo.lr")
    with pytest.raises(KeyError):
        _value_when_run(recorded, "arms.no-such-arm")
    # a field the record lacks (added to the code since the run) would take today's default
    partial = {"reward": {k: v for k, v in recorded["reward"].items() if k != "lora_rank"}}
    with pytest.raises(KeyError):
        _value_when_run(partial, "arms.ensemble-lora")
    unknown = {"reward": {**recorded["reward"], "removed_field": 1}}
    with pytest.raises(KeyError):
        _value_when_run(unknown, "arms.single")
