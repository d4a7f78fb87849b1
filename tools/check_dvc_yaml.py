"""Are two dvc.yaml files the same pipeline? Every stage as DVC itself resolves it, compared.

    python tools/check_dvc_yaml.py git:b067144 dvc.yaml   # a revision's file against this one
    python tools/check_dvc_yaml.py old/dvc.yaml dvc.yaml

Each file is read by DVC's own parser (templates, matrices and YAML anchors expanded) in a scratch
project beside the other files it needs, and every stage is compared: its name and position, its
command, its dependencies in order, its params, its outputs with their flags, its meta and
description, and the dvc.lock entry DVC would derive from its definition. A rewrite of the file's
text (flow-style lists, anchors, comments) that passes leaves every stage, and so every lock entry
and every result, as it was. Exits non-zero naming each stage that differs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _text(spec: str) -> str:
    if spec.startswith("git:"):
        rev = spec.removeprefix("git:")
        return subprocess.run(["git", "show", f"{rev}:dvc.yaml"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout  # fmt: skip
    return Path(spec).read_text()


def stages(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, what DVC makes of it) for every stage of a dvc.yaml text, in order."""
    from dvc.repo import Repo
    from dvc.stage.serialize import to_pipeline_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root,
                       check=True)  # fmt: skip
        (root / "dvc.yaml").write_text(text)
        for name in ("params.yaml", "params.resolved.yaml"):  # for ${...} interpolation
            if (ROOT / name).exists():
                (root / name).write_text((ROOT / name).read_text())
        repo = Repo(str(root))
        try:
            out = []
            for s in repo.index.stages:
                data = to_pipeline_file(s)[s.name]
                out.append((s.name, {
                    "definition": data, "meta": s.meta, "desc": s.desc,
                    "outs": [(o.def_path, o.use_cache, o.persist, o.metric, o.plot) for o in s.outs],
                    "deps": [d.def_path for d in s.deps],
                }))  # fmt: skip
            return out
        finally:
            repo.close()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        raise SystemExit(__doc__)
    old, new = (stages(_text(a)) for a in args)
    bad = []
    if [n for n, _ in old] != [n for n, _ in new]:
        gone = sorted({n for n, _ in old} - {n for n, _ in new})
        added = sorted({n for n, _ in new} - {n for n, _ in old})
        bad.append(f"stage names or order differ (only in the first: {gone[:5]}; "
                   f"only in the second: {added[:5]})")  # fmt: skip
    new_by = dict(new)
    for name, data in old:
        if name in new_by and new_by[name] != data:
            keys = [k for k in data if data[k] != new_by[name].get(k)]
            bad.append(f"{name}: {', '.join(keys)} differ")
    for line in bad:
        print(line)
    print(
        f"{len(old)} and {len(new)} stages; {'all identical' if not bad else f'{len(bad)} differ'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
