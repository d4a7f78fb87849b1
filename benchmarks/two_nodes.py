"""Two Ray nodes against one: the headline's model stages of one seed, at smoke size.

    python benchmarks/two_nodes.py [--work /tmp/two_nodes]
    python benchmarks/two_nodes.py --engines 2            # the same 13 stages, local loop vs Ray
    python benchmarks/two_nodes.py --engines 1 --whole    # the four-seed smoke pipeline, both engines
    python benchmarks/two_nodes.py --engines 1 --whole --first ray --append   # the other order

Builds a smoke project (seeds 0 and 5 of every seed axis, one torch thread per stage), runs its
world stage, then runs the headline's model stages of seed 0 (a reward model of every headline
arm, PPO against each arm's minimum, and the gold control) under the Ray engine of
`study.pipeline`, every stage forced, twice: on one simulated node of one CPU, and on two
simulated nodes of one CPU each (`ray.cluster_utils.Cluster`, both on this machine, sharing its
filesystem as a cluster shares one). Writes the wall times, and where each stage ran, to
results/bench/two_nodes.csv. On a 2-core machine two one-CPU nodes can at best halve the wall time
of one; they cannot beat one node with both cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.config import load_params  # noqa: E402
from study.demo import copy_code  # noqa: E402
from study.engines import execute_ray  # noqa: E402
from study.stage_graph import load_stages, plan  # noqa: E402
from study.subgrid import write_restricted  # noqa: E402

TARGETS = ("rm", "ppo_single", "ppo_min", "ppo_gold")


def _project(work: Path, seeds: set[int]) -> Path:
    root = work / "project"
    shutil.rmtree(work, ignore_errors=True)
    root.mkdir(parents=True)
    copy_code(ROOT, root)
    write_restricted(root, seeds)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["smoke"]["run"] = {"threads": 1}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "study.pipeline", "--engine", "local", "world"]):  # fmt: skip
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def _time(root: Path, nodes: int) -> tuple[float, list[dict]]:
    import ray
    from ray.cluster_utils import Cluster

    os.chdir(root)
    params = load_params(root / "params.yaml")
    stages, stale = load_stages(root, params)
    names = {n for n in stages if n.split("@")[0] in TARGETS and n.endswith(("-0", "@0"))}
    run = plan(stages, stale | names, sorted(names)) & names
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20})  # fmt: skip
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        cluster.wait_for_nodes()
        t0 = time.perf_counter()
        timings = execute_ray(stages, run, 1, log_dir=root / f"logs{nodes}", echo=lambda *_: None,
                              force=True, address=cluster.address)  # fmt: skip
        return time.perf_counter() - t0, timings
    finally:
        ray.shutdown()
        cluster.shutdown()


def _engines(root: Path, repeats: int, whole: bool, first: str = "local") -> list[dict]:
    """The same stages on this machine's 2 cores under the local loop and under Ray, alternately:
    the headline's 13 model stages of seed 0, or (`whole`) every stage after the world. Each run
    starts from the same dvc.lock, so neither engine pays for a longer lock than the other."""
    from study.engines import execute

    os.chdir(root)
    params = load_params(root / "params.yaml")
    lock = (root / "dvc.lock").read_bytes()
    rows = []
    for i in range(repeats):
        order = ("local", "ray") if first == "local" else ("ray", "local")
        for engine in order if i % 2 == 0 else order[::-1]:
            (root / "dvc.lock").write_bytes(lock)
            stages, stale = load_stages(root, params)
            if whole:
                names = set(stages) - {"resolve_params", "world"}
            else:
                names = {
                    n for n in stages if n.split("@")[0] in TARGETS and n.endswith(("-0", "@0"))
                }
            run = plan(stages, stale | names, sorted(names)) & names
            go = execute if engine == "local" else execute_ray
            t0 = time.perf_counter()
            timings = go(stages, run, 2, log_dir=root / f"logs-{engine}", echo=lambda *_: None,
                         force=True)  # fmt: skip
            rows.append({"engine": engine, "cores": 2, "stages": len(run), "repeat": i,
                         "wall_s": round(time.perf_counter() - t0, 1),
                         "stage_s_sum": round(sum(t.get("seconds", 0.0) for t in timings), 1)})  # fmt: skip
            print(rows[-1], flush=True)
            if engine == "ray":
                import ray

                ray.shutdown()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/two_nodes"))
    ap.add_argument("--out", type=Path, default=ROOT / "results/bench/two_nodes.csv")
    ap.add_argument("--engines", type=int, default=0, metavar="N",
                    help="instead: N alternated runs of the local loop and of Ray, 2 cores "
                         "(results/bench/engines_smoke.csv)")  # fmt: skip
    ap.add_argument("--whole", action="store_true",
                    help="with --engines: every stage of a four-seed smoke project (seeds 0, 1, 5, "
                         "6, as the tests run it), not 13 (results/bench/engines_smoke_whole.csv)")  # fmt: skip
    ap.add_argument(
        "--first",
        choices=["local", "ray"],
        default="local",
        help="with --engines: the engine of each pair's first run (default local)",
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="with --engines: add the rows to the table instead of replacing it",
    )
    args = ap.parse_args()
    os.environ["PATH"] = (
        f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # papermill
    )
    root = _project(args.work, {0, 1, 5, 6} if args.whole else {0, 5})
    if args.engines:
        out = args.out.with_name("engines_smoke_whole.csv" if args.whole else "engines_smoke.csv")
        rows = pd.DataFrame(_engines(root, args.engines, args.whole, args.first))
        if args.append and out.exists():  # a later invocation: its pairs numbered after these
            before = pd.read_csv(out)
            rows["repeat"] += before["repeat"].max() + 1
            rows = pd.concat([before, rows], ignore_index=True)
        rows.to_csv(out, index=False)
        return 0
    rows = []
    for nodes in (1, 2):
        wall, timings = _time(root, nodes)
        row = {"nodes": nodes, "cpus_per_node": 1, "stages": len(timings), "wall_s": round(wall, 1),
               "nodes_used": len({t["node"] for t in timings}),
               "stage_s_sum": round(sum(t.get("seconds", 0.0) for t in timings), 1)}  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    rows[1]["ratio_to_one_node"] = round(rows[1]["wall_s"] / rows[0]["wall_s"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"two nodes / one node: {rows[1]['ratio_to_one_node']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
