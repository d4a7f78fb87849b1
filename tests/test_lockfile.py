"""study.lockfile: DVC's lock file updated stage by stage, byte for byte what DVC's own full
rewrite (ruamel's round trip of the whole file) writes."""

from __future__ import annotations

import copy
import io
import itertools
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from dvc.utils.serialize import parse_yaml
from dvc.utils.serialize._yaml import _get_yaml, dumps_yaml, parse_yaml_for_update

from study.lockfile import splice, stage_blocks
from tests.conftest import ROOT


def _entry(i: int) -> dict:
    cmd = (
        f"mkdir -p reports && papermill notebooks/03_optimise.ipynb reports/03_{i}.ipynb -p variant "
        f"multihead_min -p seed {i} -p run True --cwd . --log-level WARNING"
    )  # long enough for the dumper to fold it over lines
    return {
        "cmd": cmd,
        "deps": [
            {"path": "study/config.py", "hash": "md5", "md5": f"{i:032x}", "size": 1000 + i},
            {
                "path": f"artifacts/rm/multihead/seed{i}",
                "hash": "md5",
                "md5": f"{i:032x}.dir",
                "size": 7,
                "nfiles": 4,
            },
        ],
        "params": {
            "params.resolved.yaml": {
                "profile": "default",
                "ppo.kl_coef": 0.05,
                "ppo.note": "yes",
                "ppo.steps": 60,
            }
        },
        "outs": [{"path": f"results/ppo/seed{i}", "hash": "md5", "md5": "e3b0" + "0" * 28}],
    }


NAMES = ["resolve_params", "rm@single-0", "ppo_min@multihead-1", "report"]


def _lock() -> str:
    return dumps_yaml({"schema": "2.0", "stages": {n: _entry(i) for i, n in enumerate(NAMES)}})


def _dvc_rewrite(text: str, entries: dict) -> str:
    """What DVC's `Lockfile.dump_stages` writes: the whole file parsed by ruamel's round trip,
    the entries updated, the whole file dumped."""
    data = parse_yaml_for_update(text, "dvc.lock")
    data["stages"].update(entries)
    out = io.StringIO()
    _get_yaml().dump(data, out)
    return out.getvalue()


def test_splicing_one_changed_stage_writes_the_bytes_of_dvcs_full_rewrite():
    text = _lock()
    assert len(text.splitlines()) > 80 and any(  # the fixture has folded commands
        line.startswith("      ") and "papermill" not in line for line in text.splitlines()
    )
    changed = copy.deepcopy(_entry(2))
    changed["deps"][1]["md5"] = "f" * 32 + ".dir"
    changed["params"]["params.resolved.yaml"]["ppo.steps"] = 61
    new = {"ppo_min@multihead-1": changed, "bon@single-3": _entry(9)}  # one changed, one new
    got, was_changed = splice(text, new)
    assert was_changed and got == _dvc_rewrite(text, new)
    assert parse_yaml(got, "dvc.lock")["stages"]["ppo_min@multihead-1"] == changed
    assert list(parse_yaml(got, "dvc.lock")["stages"]) == [*NAMES, "bon@single-3"]
    # the first and the last entry, each in place
    for name in ("resolve_params", "report"):
        entry = {name: _entry(5)}
        assert splice(text, entry) == (_dvc_rewrite(text, entry), True)


def test_the_patch_takes_on_the_pinned_dvc():
    """The DVC internals the splice relies on are there (a DVC upgrade that moves them fails here,
    where the runner would fall back to DVC's own, slower writer)."""
    from dvc.dvcfile import Lockfile

    from study.lockfile import patch

    original = Lockfile.dump_stages
    try:
        assert patch() is True and Lockfile.dump_stages._study_splice
        assert patch() is True and Lockfile.dump_stages is not original  # idempotent
    finally:
        Lockfile.dump_stages = original


def test_an_entry_with_the_same_data_changes_nothing():
    text = _lock()
    assert splice(text, {"rm@single-0": _entry(1)}) == (text, False)


def test_stage_blocks_cover_the_stages_and_a_lock_laid_out_otherwise_is_left_to_dvc():
    text = _lock()
    blocks = stage_blocks(text)
    assert list(blocks) == [f"  {n}:" for n in NAMES]
    spans = sorted(blocks.values())
    assert spans[0][0] == text.index("  resolve_params:") and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous
    assert stage_blocks("schema: '2.0'\n") is None  # no stages
    assert stage_blocks("stages:\n  a:\n    cmd: x\nschema: '2.0'\n") is None  # not the last key
    assert stage_blocks("stages:\n    a:\n      cmd: x\n") is None  # indented by four
    assert splice("stages:\n    a:\n      cmd: x\n", {"a": {"cmd": "y"}}) is None


@pytest.mark.processes
def test_dvc_through_the_splice_writes_the_lock_plain_dvc_writes(tmp_path):
    """The same toy project reproduced twice, by plain DVC and through `python -m study.lockfile`:
    the lock files are byte-identical at every step, and DVC reads the spliced one as up to date."""
    if shutil.which("git") is None:
        pytest.skip("git is needed by dvc")
    stages = textwrap.dedent(
        """\
        stages:
          a:
            cmd: cat in.txt > a.txt
            deps: [in.txt]
            outs: [a.txt]
          b:
            matrix:
              seed: [0, 1]
            cmd: cat a.txt > b${item.seed}.txt && echo ${item.seed} >> b${item.seed}.txt
            deps:
              - a.txt
            outs:
              - b${item.seed}.txt
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's study, wherever it runs
    roots = {}
    for how, dvc in (("plain", "dvc"), ("splice", "study.lockfile")):
        root = tmp_path / how
        root.mkdir()
        subprocess.run(
            [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True
        )
        (root / "dvc.yaml").write_text(stages)
        (root / "in.txt").write_text("one\n")
        roots[how] = (root, [sys.executable, "-m", dvc])

    def both(*args: str) -> None:
        for root, dvc in roots.values():
            done = subprocess.run([*dvc, *args], cwd=root, capture_output=True, text=True, env=env)
            assert done.returncode == 0, (dvc, args, done.stdout, done.stderr)
        locks = [(root / "dvc.lock").read_text() for root, _ in roots.values()]
        assert locks[0] == locks[1], args

    both("repro", "--single-item", "a")  # a new lock: DVC's own code writes it
    both("repro", "--single-item", "b@1")  # appended
    both("repro")  # b@0 appended, the rest unchanged
    for root, _ in roots.values():
        (root / "in.txt").write_text("two\n")
    both("repro", "--single-item", "a")  # replaced in place
    both("repro", "--single-item", "b@0")
    both("repro")
    root, _ = roots["splice"]
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True
    )
    assert "up to date" in status.stdout, status.stdout
