"""study.pipeline: the side-by-side runner of DVC's stages, on a toy DVC project of shell stages.

Each toy stage appends its start and end times to a file, so the tests read from the stages
themselves what ran, in what order and what overlapped."""

import csv
import itertools
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from study.engines import execute, execute_ray
from study.stage_graph import load_stages, plan, priorities, start_order

pytestmark = pytest.mark.processes

PARAMS = SimpleNamespace(run=SimpleNamespace(threads=1, wide_threads=2))
DVC = [sys.executable, "-m", "dvc"]


def _stage(
    name: str,
    deps: list[str],
    sleep: float = 2.5,
    extra: str = "",
    fail: bool = False,
    meet: str | None = None,
):
    """A shell stage that logs its start and end. With `meet`, it also waits (up to a minute) for
    stage `meet` to have started: two stages that meet each other end only once both are running,
    so they overlap if the runner starts them side by side, however slowly its workers start, and
    do not if it runs them one after the other."""
    body = f"echo start {name} $(date +%s.%N) >> events"
    if meet:
        body += (
            f" && touch {name}.up && for i in $(seq 600); do [ -e {meet}.up ] && break;"
            " sleep 0.1; done"
        )
    body += f" && sleep {sleep}"
    body += " && exit 3" if fail else ""
    body += f" && cat {' '.join(deps) or '/dev/null'} > {name}.txt"
    body += f" && echo end {name} $(date +%s.%N) >> events"
    deps_yaml = "".join(f"\n    - {d}" for d in deps)
    return textwrap.indent(
        f"{name}:\n  cmd: {body}\n  deps:\n    - events.keep{deps_yaml}\n  outs:\n    - {name}.txt\n"
        + extra,
        "  ",
    )


def _project(tmp_path: Path, stages: str) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    subprocess.run([*DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "events.keep").write_text("x\n")
    (root / "dvc.yaml").write_text("stages:\n" + stages)
    return root


def _events(root: Path) -> dict[str, tuple[float, float]]:
    times: dict[str, list[float]] = {}
    for line in (root / "events").read_text().splitlines():
        _, name, t = line.split()
        times.setdefault(name, []).append(float(t))
    return {n: (t[0], t[1]) for n, t in times.items() if len(t) == 2}


ENGINES = {"local": execute, "ray": execute_ray}


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    """Each scheduling test runs on both engines: the local loop and Ray on this machine."""
    return ENGINES[request.param]


def _run(root: Path, cores: int, monkeypatch, engine=execute, targets=None):
    monkeypatch.chdir(root)
    stages, stale = load_stages(root, PARAMS)
    run = plan(stages, stale, targets)
    engine(stages, run, cores, dvc=DVC, log_dir=root / "logs", echo=lambda *_: None)
    return stages, run


@pytest.fixture(autouse=True)
def _need_dvc():
    if shutil.which("git") is None:
        pytest.skip("git is needed by dvc")


def test_independent_stages_overlap_dependents_wait_and_a_second_run_does_nothing(
    tmp_path, monkeypatch, engine
):
    root = _project(
        tmp_path,
        _stage("a", [], meet="b")
        + _stage("b", [], meet="a")
        + _stage("c", ["a.txt", "b.txt"])
        + _stage("d", ["a.txt"], extra="  meta: {threads: run.wide_threads}\n"),
    )
    stages, run = _run(root, 2, monkeypatch, engine)
    assert run == {"a", "b", "c", "d"}
    assert stages["d"].cores == 2 and stages["c"].upstream == {"a", "b"}
    ev = _events(root)
    assert set(ev) == {"a", "b", "c", "d"}
    assert ev["a"][0] < ev["b"][1] and ev["b"][0] < ev["a"][1]  # a and b side by side
    assert ev["c"][0] >= max(ev["a"][1], ev["b"][1])  # c after both of its upstream
    # d takes both cores: nothing overlaps it
    assert all(ev[n][1] <= ev["d"][0] or ev[n][0] >= ev["d"][1] for n in "abc")
    assert (root / "c.txt").read_text() == ""  # a.txt and b.txt are empty: cat of both
    # DVC recorded every stage: its own status is clean and the runner plans nothing
    status = subprocess.run([*DVC, "status"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
    stages, stale = load_stages(root, PARAMS)
    assert stale == set() and plan(stages, stale) == set()
    # a changed dep reruns that stage and what is downstream of it only
    (root / "dvc.yaml").write_text(
        (root / "dvc.yaml").read_text().replace("sleep 2.5", "sleep 2.4", 1)
    )
    stages, stale = load_stages(root, PARAMS)
    assert plan(stages, stale) == {"a", "c", "d"}
    assert plan(stages, stale, ["c"]) == {"a", "c"}
    assert plan(stages, stale, ["a"], single_item=True) == {"a"}  # not what is downstream
    assert plan(stages, stale, ["c"], single_item=True) == set()  # c is stale only once a reruns
    assert plan(stages, stale, ["b"], force=True, single_item=True) == {"b"}
    assert plan(stages, stale, ["c"], force=True) == {"a", "b", "c"}


def test_one_core_runs_one_stage_at_a_time_and_exclusive_runs_alone(tmp_path, monkeypatch, engine):
    root = _project(
        tmp_path,
        _stage("a", [], sleep=1)
        + _stage("b", [], sleep=1)
        + _stage("x", [], sleep=1, extra="  meta: {exclusive: true}\n"),
    )
    _run(root, 1, monkeypatch, engine)
    ev = sorted(_events(root).values())
    assert all(e0 >= prev_end for (_, prev_end), (e0, _) in itertools.pairwise(ev))
    # changed commands (DVC's run cache would restore unchanged ones), on two cores: x alone, and
    # the local loop, which starts stages in its own order (a, b, then x), runs a and b side by
    # side. Ray grants its leases in an order of its own: it may run x between a and b, which is
    # a valid schedule, so under Ray the two are not made to meet.
    local = engine is execute
    (root / "events").unlink()
    (root / "dvc.yaml").write_text(
        "stages:\n"
        + _stage("a", [], meet="b" if local else None)
        + _stage("b", [], meet="a" if local else None)
        + _stage("x", [], extra="  meta: {exclusive: true}\n")
    )
    _run(root, 2, monkeypatch, engine)
    ev = _events(root)
    assert set(ev) == {"a", "b", "x"}
    if local:
        assert ev["a"][0] < ev["b"][1] and ev["b"][0] < ev["a"][1]
    assert all(ev[n][1] <= ev["x"][0] or ev[n][0] >= ev["x"][1] for n in "ab")


def test_a_failed_stage_is_named_its_downstream_never_starts_and_finished_work_is_kept(
    tmp_path, monkeypatch, engine
):
    root = _project(
        tmp_path,
        _stage("ok", [], sleep=2)
        + _stage("bad", [], sleep=0.2, fail=True)
        + _stage("after", ["bad.txt"]),
    )
    with pytest.raises(RuntimeError, match="stage bad failed; stages not run: after"):
        _run(root, 2, monkeypatch, engine)
    ev = _events(root)
    assert "ok" in ev and "after" not in ev  # the running stage finished; nothing downstream
    _stages, stale = load_stages(root, PARAMS)
    assert "ok" not in stale and {"bad", "after"} <= stale  # ok's result is recorded by DVC
    rows = {r["stage"]: r for r in csv.DictReader((root / "logs" / "timings.csv").open())}
    assert rows["bad"]["returncode"] != "0" and rows["ok"]["returncode"] == "0"


def test_on_one_core_no_stage_starts_after_a_failure(tmp_path, monkeypatch, engine):
    """The failed stage's core goes free at once; the next stage in line must not take it."""
    root = _project(
        tmp_path, _stage("bad", [], sleep=0.1, fail=True) + _stage("later", [], sleep=0.1)
    )
    with pytest.raises(RuntimeError, match="stage bad failed; stages not run: later"):
        _run(root, 1, monkeypatch, engine)
    assert "later" not in (root / "events").read_text()


def test_bad_targets_and_thread_params_are_named(tmp_path, monkeypatch):
    root = _project(tmp_path, _stage("a", [], extra="  meta: {threads: run.nope}\n"))
    monkeypatch.chdir(root)
    with pytest.raises(ValueError, match=r"stage a: meta.threads names 'run.nope'"):
        load_stages(root, PARAMS)
    (root / "dvc.yaml").write_text("stages:\n" + _stage("a", []))
    stages, stale = load_stages(root, PARAMS)
    with pytest.raises(ValueError, match="no pipeline stage 'b'"):
        plan(stages, stale, ["b"])


def test_a_matrix_stage_s_name_targets_all_of_its_items():
    from study.stage_graph import Stage

    st = {"w": Stage("w"), "r@a": Stage("r@a", {"w"}), "r@b": Stage("r@b", {"w"})}
    assert plan(st, set(st), ["r"]) == {"w", "r@a", "r@b"}
    assert plan(st, set(st), ["r"], single_item=True) == {"r@a", "r@b"}
    with pytest.raises(ValueError, match="no pipeline stage 'q'"):
        plan(st, set(st), ["q"])


def test_priorities_put_the_longest_chain_first():
    from study.stage_graph import Stage

    st = {
        "w": Stage("w"),
        "x": Stage("x", {"w"}),
        "y": Stage("y", {"x"}),
        "z": Stage("z", {"w"}),
    }
    assert priorities(st, set(st)) == {"w": 3, "x": 2, "y": 1, "z": 1}
    assert priorities(st, {"x", "y", "z"}) == {"x": 2, "y": 1, "z": 1}
    st["y"].order, st["z"].order = 2, 1  # ties go in dvc.yaml's order
    assert start_order(st, {"y", "z", "x"}, priorities(st, set(st))) == ["x", "z", "y"]
    st["z"].minutes = 5.0  # a long stage that nothing waits on goes before the longer chain
    assert priorities(st, set(st)) == {"w": 6, "x": 2, "y": 1, "z": 5}


def test_a_long_stage_reports_its_progress(tmp_path, monkeypatch):
    root = _project(tmp_path, _stage("slow", [], sleep=2.5))
    monkeypatch.chdir(root)
    stages, stale = load_stages(root, PARAMS)
    lines = []
    execute(stages, plan(stages, stale, None), 1, dvc=DVC, log_dir=root / "logs",
            echo=lines.append, heartbeat_s=0.8)  # fmt: skip
    beats = [x for x in lines if "running for" in x]
    assert beats and all(" slow running for " in x for x in beats)
    # a beat ends with the last line of the stage's log so far (here: the command DVC runs)
    assert any("> echo start slow" in x for x in beats), beats


def test_last_log_line_resolves_progress_bars(tmp_path):
    from study.progress import last_log_line

    log = tmp_path / "x.log"
    log.write_text("start\nExecuting:  10%|#\rExecuting:  50%|#####\r\n\n")
    assert last_log_line(log) == "Executing:  50%|#####"
    assert last_log_line(tmp_path / "missing.log") == ""


def test_force_reruns_an_up_to_date_stage_through_dvc(tmp_path, monkeypatch):
    root = _project(tmp_path, _stage("a", [], sleep=0.1))
    _run(root, 1, monkeypatch)
    monkeypatch.chdir(root)
    stages, stale = load_stages(root, PARAMS)
    assert not stale  # up to date: only --force makes DVC run it again
    run = plan(stages, stale, ["a"], force=True, single_item=True)
    execute(stages, run, 1, dvc=DVC, log_dir=root / "logs", echo=lambda *_: None, force=True)
    starts = [x for x in (root / "events").read_text().splitlines() if x.startswith("start a")]
    assert len(starts) == 2


def test_sigterm_stops_every_running_stage_and_leaves_no_process(tmp_path):
    import os
    import signal
    import time

    marker = f"sleep 41.{os.getpid()}"
    stage = _stage("long", [], sleep=0).replace("sleep 0", marker)
    root = _project(tmp_path, stage)
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", root / "params.yaml")
    runner = subprocess.Popen(
        [sys.executable, "-c", "import sys, study.pipeline as p; sys.exit(p.main(['-j', '1']))"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the stage's command runs
        if subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        runner.kill()
        pytest.fail(f"the stage never started: {runner.communicate()}")
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=30)
    assert runner.returncode == 130, out + err
    assert "interrupted" in err
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


def test_a_simulated_two_node_cluster_runs_stages_on_both_nodes(tmp_path, monkeypatch):
    """Two Ray nodes of one CPU each (ray.cluster_utils.Cluster, both on this machine): four
    independent one-core stages are placed on both, and DVC records every one of them."""
    from ray.cluster_utils import Cluster

    root = _project(tmp_path, "".join(_stage(n, [], sleep=2) for n in "abcd"))
    monkeypatch.chdir(root)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        cluster.wait_for_nodes()
        stages, stale = load_stages(root, PARAMS)
        timings = execute_ray(
            stages, plan(stages, stale), 2, dvc=DVC, log_dir=root / "logs",
            echo=lambda *_: None, address=cluster.address,
        )  # fmt: skip
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    assert sorted(r["stage"] for r in timings) == list("abcd")
    assert len({r["node"] for r in timings}) == 2, timings  # both nodes ran stages
    status = subprocess.run([*DVC, "status"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout


def test_a_stage_asking_for_a_gpu_the_cluster_lacks_is_refused_before_anything_runs(
    tmp_path, monkeypatch
):
    root = _project(
        tmp_path, _stage("cpu", [], sleep=0.1) + _stage("gpu", [], extra="  meta: {gpus: 1}\n")
    )
    monkeypatch.chdir(root)
    stages, stale = load_stages(root, PARAMS)
    assert stages["gpu"].gpus == 1
    with pytest.raises(
        ValueError, match=r"stage gpu asks for 1 GPU\(s\) \(meta.gpus, or placement.device: cuda"
    ):
        execute_ray(stages, plan(stages, stale), 2, dvc=DVC, log_dir=root / "logs")
    assert not (root / "events").exists()  # nothing started


def test_on_cuda_every_model_stage_asks_ray_for_a_gpu_unless_its_meta_says_otherwise(
    tmp_path, monkeypatch
):
    """A model stage is one that depends on study/device.py (each model stage resolves its
    placement there); under placement.device: cuda it asks for one GPU, the others for none."""
    root = _project(
        tmp_path,
        _stage("model", ["study/device.py"])
        + _stage("pinned", ["study/device.py"], extra="  meta: {gpus: 0}\n")
        + _stage("table", []),
    )
    (root / "study").mkdir()
    (root / "study" / "device.py").write_text("# a model stage's code\n")
    monkeypatch.chdir(root)
    wanted = {"cuda": 1, "cuda:1": 0, "cpu": 0}
    for device, gpus in wanted.items():
        params = SimpleNamespace(run=PARAMS.run, placement=SimpleNamespace(device=device))
        stages, _ = load_stages(root, params)
        got = {n: stages[n].gpus for n in ("model", "pinned", "table")}
        assert got == {"model": gpus, "pinned": 0, "table": 0}, device
    assert load_stages(root, PARAMS)[0]["model"].gpus == 0  # params without a placement
    params = SimpleNamespace(run=PARAMS.run, placement=SimpleNamespace(device="cuda", processes=4))
    assert load_stages(root, params)[0]["model"].gpus == 4  # one GPU per data-parallel process


def test_the_time_left_comes_from_earlier_runs_and_is_printed_as_stages_end(tmp_path, monkeypatch):
    from study.progress import Eta

    eta = Eta(tmp_path, {"rm@a-0": 2, "rm@b-0": 2, "ppo@a-0": 1, "new": 1}, cores=2)
    assert eta.left({"rm@a-0"}) == ""  # nothing known yet: no guess
    eta.record([{"stage": "rm@a-0", "seconds": 120.0, "returncode": 0},
                {"stage": "rm@b-0", "seconds": 240.0, "returncode": 0},
                {"stage": "ppo@a-0", "seconds": 999.0, "returncode": 1}])  # fmt: skip
    again = Eta(tmp_path, eta.need, cores=2)  # read back from history.json
    assert again.expected("rm@a-0") == 120.0
    assert again.expected("rm@c-0") == 180.0  # never run: the median of its group
    assert again.expected("ppo@a-0") == 180.0  # a failed run is not a timing: every known stage
    # (120 s x 2 cores + 240 s x 2 cores) over 2 cores = 6 min
    assert again.left({"rm@a-0", "rm@b-0"}) == ", ~6 min left"

    root = _project(tmp_path, _stage("a", [], sleep=0.1) + _stage("b", ["a.txt"], sleep=0.1))
    (root / "logs").mkdir()
    (root / "logs" / "history.json").write_text('{"a": 60, "b": 600}')
    monkeypatch.chdir(root)
    stages, stale = load_stages(root, PARAMS)
    lines = []
    execute(stages, plan(stages, stale), 1, dvc=DVC, log_dir=root / "logs", echo=lines.append)
    done = [x for x in lines if " done " in x]
    assert "(1/2 done, ~10 min left)" in done[0] and "(2/2 done)" in done[1], done


def test_a_program_missing_from_path_is_named_before_anything_runs(tmp_path, monkeypatch, capsys):
    from study.pipeline import main
    from study.stage_graph import Stage, missing_tools

    st = {"a": Stage("a", cmd="mkdir -p x && no-such-tool-xyz run 'a b' && echo ok"),
          "b": Stage("b", cmd="cd x; OMP_NUM_THREADS=1 other-missing-tool -q | sort")}  # fmt: skip
    assert missing_tools(st, {"a"}) == ["no-such-tool-xyz"]
    assert missing_tools(st, {"a", "b"}) == ["no-such-tool-xyz", "other-missing-tool"]
    root = _project(tmp_path, _stage("a", []).replace("cmd: echo", "cmd: no-such-tool-xyz && echo"))
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text("profile: default\n")
    monkeypatch.setattr("study.config.load_params", lambda _p: PARAMS)
    assert main(["--engine", "local"]) == 2
    assert "need no-such-tool-xyz, not found on PATH" in capsys.readouterr().err
    assert not (root / "events").exists()


def test_a_repository_another_dvc_command_holds_is_named_not_a_traceback(
    tmp_path, monkeypatch, capsys
):
    from study.pipeline import main

    root = _project(tmp_path, _stage("a", [], meet="nobody", sleep=30))
    held = subprocess.Popen([*DVC, "repro", "a"], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        for _ in range(300):  # until the stage's command runs (DVC holds its outs' lock)
            if (root / "a.up").exists():
                break
            time.sleep(0.1)
        monkeypatch.chdir(root)
        (root / "params.yaml").write_text("profile: default\n")
        monkeypatch.setattr("study.config.load_params", lambda _p: PARAMS)
        assert main(["--engine", "local", "--dry"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: another DVC command is running here"), err
        assert f"(PID {held.pid})" in err and "Traceback" not in err
    finally:
        os.killpg(held.pid, signal.SIGKILL)
        held.wait()


def test_pages_are_rendered_after_a_run_and_a_failed_one_but_never_by_a_dry_run(
    tmp_path, monkeypatch
):
    import nbformat

    from study.pipeline import main

    root = _project(tmp_path, _stage("ok", [], sleep=0.1) + _stage("bad", [], sleep=0.1, fail=True))
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text("profile: default\n")
    monkeypatch.setattr("study.config.load_params", lambda _p: PARAMS)
    (root / "reports").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), root / "reports" / "02_rm_s0.ipynb")
    page = root / "reports" / "02_rm_s0.html"
    assert main(["--engine", "local", "--dry"]) == 0 and not page.exists()  # runs nothing
    assert main(["--engine", "local"]) == 1  # bad fails: what finished still gets its page
    assert page.exists()
    page.unlink()
    (root / "dvc.yaml").write_text((root / "dvc.yaml").read_text().replace(" && exit 3", ""))
    assert main(["--engine", "local"]) == 0 and page.exists()
    page.unlink()
    assert main(["--engine", "local", "--dry"]) == 0 and not page.exists()  # up to date
    assert main(["--engine", "local"]) == 0 and page.exists()  # up to date: the pages only
