"""A five-minute taste of the whole study: `make demo` (or `python -m study.demo`).

The pipeline itself (the same DVC stages, notebooks and code as `make study`) on a reduced
default profile: a smaller world (fewer SFT steps, fewer pairs and prompts), K = 3, one seed, the
three headline arms (single RM, multi-head minimum, full-ensemble minimum) and gold, 30 PPO steps.
It runs in a copy of the project under a work directory, so the study's own outputs and DVC cache
are untouched, and writes `demo/gold_vs_kl.png`, `demo/runs.csv` and `demo/index.html`.

One seed and a small world show the loop, not a verdict: the study's claims rest on `make study`.
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

# what the demo changes in the default profile (everything else is the study's own)
DEMO = {
    "world": {"corpus_size": 6000, "n_rl_prompts": 512, "n_eval_prompts": 64},
    "sft": {"steps": 500, "eval_every": 250},
    "preferences": {"n_pairs": 1200, "n_samples_report": 200},
    "reward": {"k": 3},
    "ppo": {"steps": 30, "batch_size": 48, "n_norm_samples": 96, "checkpoint_every": 30},
}
# (label, PPO variant, DVC stage); gold is the ceiling a proxy is measured against
ARMS = [
    ("single RM", "single", "ppo_single@0"),
    ("multi-head, min over K heads", "multihead_min", "ppo_min@multihead-0"),
    ("full ensemble, min over K members", "ensemble_min", "ppo_min@ensemble-0"),
    ("gold reward (ceiling)", "gold", "ppo_gold@0"),
]
PROJECT = ("study", "notebooks", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore")


def demo_params(params: dict, overrides: dict = DEMO) -> dict:
    """`params` (a parsed params.yaml) with the default profile reduced by `overrides` and
    selected; every overridden key must exist (a typo is an error, not a silent no-op)."""
    import dataclasses

    from study.config import SECTIONS

    out = yaml.safe_load(yaml.safe_dump(params))
    out["default"] = out.get("default") or {}
    for section, values in overrides.items():
        for key, value in values.items():
            known = SECTIONS.get(section)
            if known is None or key not in {f.name for f in dataclasses.fields(known)}:
                raise KeyError(f"demo override {section}.{key}: no such parameter")
            out["default"].setdefault(section, {})[key] = value
    out["profile"] = "default"
    return out


def copy_code(root: Path, work: Path) -> None:
    """The code, notebooks, pipeline and params of `root` into `work` (over what is there: a
    project brought up to date keeps its results and DVC cache); the tests' projects too."""
    for name in PROJECT:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, work / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        elif src.exists():
            shutil.copy2(src, work / name)


def copy_project(root: Path, work: Path) -> None:
    """The code, notebooks and pipeline of `root` into `work` (a fresh git + DVC project), with
    the demo's params."""
    copy_code(root, work)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(demo_params(raw), sort_keys=False))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        if not (work / (".git" if cmd[0] == "git" else ".dvc")).exists():
            subprocess.run(cmd, cwd=work, check=True)


def figure(runs: dict[str, pd.DataFrame], path: Path) -> None:
    """Held-out gold against KL, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from study.plotting import colour, use_style

    use_style()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, variant, _ in ARMS:
        e = runs.get(variant)
        if e is None:
            continue
        ax.plot(e["kl"].clip(lower=0), e["gold"], "o-", color=colour(variant), ms=3, label=label)
    ax.set(xlabel="KL(policy || SFT), nats (estimator noise below 0 shown at 0)",
           ylabel="gold reward (held-out prompts)",
           title="Demo (1 seed, reduced world): gold as each arm optimises its reward")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per arm: gold at the start, its peak (and the KL there), at the last step, and the last KL."""
    rows = []
    for label, variant, _ in ARMS:
        e = runs.get(variant)
        if e is None:
            continue
        peak = e.loc[e["gold"].idxmax()]
        rows.append({
            "arm": label, "gold_start": e["gold"].iloc[0], "gold_peak": peak["gold"],
            "kl_at_peak": peak["kl"], "gold_last": e["gold"].iloc[-1], "kl_last": e["kl"].iloc[-1],
        })  # fmt: skip
    return pd.DataFrame(rows).round(3)


def report(runs_table: pd.DataFrame, png: Path, seconds: float, out: Path) -> None:
    """A one-page HTML report: what ran, the figure, the table."""
    img = base64.b64encode(png.read_bytes()).decode()
    changed = "; ".join(f"{s}.{k} = {v}" for s, values in DEMO.items() for k, v in values.items())
    out.write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<title>Reward overoptimisation: demo</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}</style></head>
<body><h1>Reward overoptimisation: a five-minute demo</h1>
<p>The study's own pipeline (world, reward models, PPO) on one seed of a reduced default profile
({html.escape(changed)}), in {seconds / 60:.1f} min. One seed on a small world shows the loop,
not a verdict: the claims rest on <code>make study</code> (reports/index.html).</p>
<img alt="gold against KL for each arm" src="data:image/png;base64,{img}">
{runs_table.to_html(index=False)}
</body></html>
""")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"), help="where the results go")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "study-demo",
        help="the project copy the pipeline runs in (kept: a second run reuses what is done)",
    )
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    t0 = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    copy_project(root, args.workdir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "study.pipeline", "--engine", "local", *[a[2] for a in ARMS]]
    print(f"demo: the pipeline in {args.workdir} ({' '.join(cmd[3:])})", flush=True)
    if subprocess.run(cmd, cwd=args.workdir, env=env).returncode != 0:
        print(
            f"demo: the pipeline failed; logs in {args.workdir}/.dvc/tmp/pipeline", file=sys.stderr
        )
        return 1
    runs = {}
    for _, variant, _ in ARMS:
        evals = args.workdir / f"results/ppo/{variant}/seed0/evals.parquet"
        runs[variant] = pd.read_parquet(evals).sort_values("step")
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "gold_vs_kl.png"
    figure(runs, png)
    t = table(runs)
    t.to_csv(args.out / "runs.csv", index=False)
    report(t, png, time.time() - t0, args.out / "index.html")
    print(t.to_string(index=False))
    print(f"demo: {(time.time() - t0) / 60:.1f} min; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
