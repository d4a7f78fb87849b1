"""Benchmark: what one pipeline stage costs before it computes anything (the floor of a profile).

Every stage of dvc.yaml is `dvc repro` running `papermill <notebook>` (a fresh Jupyter kernel,
whose first code cell imports torch, transformers, pandas, matplotlib and the study's modules);
the executed notebooks are rendered to HTML afterwards, all in one process (`study.render`). None
of that depends on the profile, so it is the least any profile can take per stage, smoke included. Each part is timed
on its own, in fresh processes, as the median of `--repeats`:

* `papermill`: papermill executing a notebook of one parameters cell and one `pass` cell, wall
  clock: the Python and papermill start, a kernel started and shut down, the notebook written.
* `imports:<notebook>`: the modules that notebook's code cells import (the `import` and `from`
  lines of its source; IPython's are left out, the kernel has them), imported in a fresh
  interpreter and timed inside it.
* `render:<notebook>`: rendering that notebook as the pipeline last executed it (`reports/`,
  with its figures) to HTML with `study.render`'s exporter, in a process that has already
  rendered one page (what each page costs in the runner's one rendering process); the one-cell
  notebook where there is none.
* `dvc:<notebook>`: `dvc repro --dry --single-item` of that notebook's first stage in this
  repository, wall clock: DVC's start, this pipeline's graph, the stage's deps and outs hashed
  (from DVC's state database) and its status decided, without running it. A stage that runs also
  stores its outs in the cache and writes `dvc.lock`, which this leaves out.
* `dvc status`: `dvc status` of the whole repository, wall clock, for scale (the runner reads it
  once per call).

The floor of a stage is papermill + its notebook's imports, its page's rendering and dvc, summed over the
stages of dvc.yaml (each read from its command's notebook): a lower bound, since it leaves out
what DVC does after a command and what a kernel does between cells. It is the floor of stages run
one at a time; two side by side on the 2-core machine were measured no faster (see the README).
A reference GEMM (fp32, 1824x128 @ 128x512, the PPO update's largest on the default profile) on
`run.threads` threads gives the host's speed, so that runs on different hosts can be compared.

    .venv/bin/python benchmarks/stage_overhead.py            # --repeats 5 for steadier numbers

Writes `results/bench/stage_overhead.csv` (one row per part, then the floor of each notebook's
stages and of all of them, then the GEMM) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench" / "stage_overhead.csv"
BIN = Path(sys.executable).parent  # papermill, jupyter and dvc of this environment
NOTEBOOK = re.compile(r"papermill\s+(\S+\.ipynb)\s+(\S+\.ipynb)")


def wall(cmd: list[str], cwd: Path, repeats: int, ok: tuple[int, ...] = (0,)) -> float:
    """Median wall-clock seconds of `cmd`, each run a fresh process that must exit with one of
    `ok`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if done.returncode not in ok:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}"
            )
    return statistics.median(times)


def notebook_imports(path: Path) -> list[str]:
    """The modules that the code cells of `path` import, in order, without IPython's."""
    mods: list[str] = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            m = re.match(r"\s*(?:import|from)\s+([\w.]+)", line)
            if m and not m.group(1).startswith("IPython") and m.group(1) not in mods:
                mods.append(m.group(1))
    return mods


def import_seconds(mods: list[str], repeats: int) -> float:
    """Median seconds to import `mods` in a fresh interpreter (timed inside it)."""
    code = (
        "import importlib, time\nt = time.perf_counter()\n"
        f"for m in {mods!r}:\n    importlib.import_module(m)\n"
        "print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def one_cell_notebook(path: Path) -> None:
    """A notebook of a tagged parameters cell and one `pass` cell."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("pass")]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def render_seconds(notebook: Path, repeats: int) -> float:
    """Median seconds to render `notebook` to HTML with `study.render`'s exporter, in a process
    that has rendered it once already (the runner renders every page in one process)."""
    code = (
        "import time, nbformat\nfrom nbconvert import HTMLExporter\n"
        f"nb = nbformat.read({str(notebook)!r}, as_version=4)\nexporter = HTMLExporter()\n"
        "exporter.from_notebook_node(nb)\ntimes = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter()\n    exporter.from_notebook_node(nb)\n"
        "    times.append(time.perf_counter() - t)\n"
        "print(sorted(times)[len(times) // 2])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def gemm_gflops(threads: int) -> float:
    """fp32 GEMM throughput on `threads` threads (the PPO update's largest product)."""
    code = (
        "import time, torch\n"
        f"torch.set_num_threads({threads})\n"
        "a, b = torch.randn(1824, 128), torch.randn(128, 512)\n"
        "for _ in range(20): a @ b\n"
        "t = time.perf_counter()\n"
        "for _ in range(200): a @ b\n"
        "print(2 * 1824 * 128 * 512 * 200 / (time.perf_counter() - t) / 1e9)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )  # fmt: skip
    return float(done.stdout.strip())


def pipeline_notebooks() -> list[tuple[str, str, str]]:
    """(stage, its notebook, its executed report) for every stage of dvc.yaml that runs a
    notebook, in order."""
    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    try:
        rows = []
        for s in repo.index.stages:
            cmd = getattr(s, "cmd", None)
            if not cmd:
                continue
            m = NOTEBOOK.search(cmd if isinstance(cmd, str) else " ".join(cmd))
            if m is not None:  # a stage that runs no notebook (resolve_params) is left out
                rows.append((s.addressing, m.group(1), m.group(2)))
    finally:
        repo.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement")
    p.add_argument("--out", type=Path, default=OUT, help="the CSV to write")
    p.add_argument(
        "--reports",
        type=Path,
        default=ROOT,
        help="the project whose reports/ holds the executed notebooks to render (default: this "
        "one; a finished smoke project has them all)",
    )
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    import pandas as pd

    from study.config import load_params
    from study.io import write_csv

    threads = load_params(ROOT / "params.yaml", profile="default").run.threads
    stages = pipeline_notebooks()
    load_before = os.getloadavg()[0]
    rows = []

    def record(part: str, value: float, what: str, unit: str = "s") -> None:
        rows.append({"part": part, "value": value, "unit": unit, "what": what})
        print(f"{part:>26}: {value:7.2f} {unit:<7} {what}", flush=True)

    with tempfile.TemporaryDirectory(prefix="stage_overhead.") as tmp:
        work = Path(tmp)
        trivial = work / "one_cell.ipynb"
        one_cell_notebook(trivial)
        papermill = [str(BIN / "papermill"), str(trivial), str(work / "out.ipynb")]
        kernel = wall(
            [*papermill, "--cwd", str(work), "--log-level", "WARNING"], ROOT, args.repeats
        )
        record("papermill", kernel, "one parameters cell and one `pass` cell")
        trivial_html = render_seconds(work / "out.ipynb", args.repeats)
        record(
            "dvc status",
            # `dvc status -q` exits 1 when a stage is stale (or its outputs not in this cache)
            wall([str(BIN / "dvc"), "status", "-q"], ROOT, args.repeats, ok=(0, 1)),
            f"this repository ({len(stages)} stages)",
        )
        # --allow-missing: a stage whose upstream outputs are not in this cache is still planned
        dvc = [str(BIN / "dvc"), "repro", "--dry", "--allow-missing", "-q", "--single-item"]
        per_notebook: dict[str, tuple[float, float, float]] = {}
        for stage, nb, report in stages:
            if nb in per_notebook:
                continue
            mods = notebook_imports(ROOT / nb)
            imp = import_seconds(mods, args.repeats)
            record(f"imports:{Path(nb).stem}", imp, ", ".join(mods))
            executed = args.reports / report
            if executed.exists():
                conv = render_seconds(executed, args.repeats)
                what = f"{report} ({executed.stat().st_size // 1024} KiB)"
            else:
                conv, what = trivial_html, f"{report} absent: the one-cell notebook"
            record(f"render:{Path(nb).stem}", conv, what)
            repro = wall([*dvc, stage], ROOT, args.repeats)
            record(f"dvc:{Path(nb).stem}", repro, f"dvc repro --dry --single-item {stage}")
            per_notebook[nb] = (imp, conv, repro)

    executed = sorted((args.reports / "reports").glob("*.ipynb"))
    if executed:  # every page of a run, rendered as the runner renders them: one process
        with tempfile.TemporaryDirectory(prefix="stage_overhead.render.") as tmp:
            for nb in executed:
                shutil.copy2(nb, tmp)
            seconds = wall([sys.executable, "-m", "study.render", tmp], ROOT, 1)
        record("render:all", seconds, f"python -m study.render of {len(executed)} notebooks")
    floors = pd.DataFrame(
        [{"stage": s, "notebook": Path(nb).stem, "seconds": kernel + sum(per_notebook[nb])}
         for s, nb, _ in stages]
    )  # fmt: skip
    for nb, group in floors.groupby("notebook", sort=False):
        record(
            f"floor:{nb}",
            group["seconds"].sum(),
            f"{len(group)} stage(s) x {group['seconds'].iloc[0]:.2f} s",
        )
    record("floor:all", floors["seconds"].sum(), f"all {len(floors)} stages, one at a time")
    record("gemm", gemm_gflops(threads), f"fp32 1824x128 @ 128x512, {threads} threads", "GFLOP/s")
    table = pd.DataFrame(rows)
    table["repeats"] = args.repeats
    table["load_avg_1min_start"] = load_before
    table["load_avg_1min_end"] = os.getloadavg()[0]
    write_csv(args.out, table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
