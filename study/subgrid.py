"""The pipeline on a subset of its seeds: dvc.yaml with every seed axis restricted.

Every stage, notebook and line of code stay the study's own; what changes is how many seeds each
arm runs on. Each matrix's `seed` axis (and each `foreach` item's `seed`) keeps only the kept
seeds, every dependency on a dropped seed's directory or report goes, and each summary notebook is
told, through papermill's `-y`, to read only the kept seeds: every list of integers among its
parameters' defaults is a list of seeds (tests/test_subgrid.py holds every notebook to that).

It makes a rehearsal of the whole pipeline affordable, at the smoke profile in the tests (DVC
rewrites the whole `dvc.lock` after every stage, so the pipeline's cost grows faster than its
number of stages). A handful of seeds is a rehearsal, never a result: the study's claims rest on
the full grid of dvc.yaml.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

# a path of one seed: `.../seed3`, `.../seed3/...`, or a rendered report `..._s3.html`
_SEED_PATH = re.compile(r"(?:/seed|_s)(\d+)(?=/|\.|$)")
_PAPERMILL = re.compile(r"papermill (notebooks/\S+\.ipynb) (\S+)")


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The literal defaults of the notebook's papermill `parameters` cell ({} without one)."""
    nb = json.loads(Path(path).read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return {
                node.targets[0].id: ast.literal_eval(node.value)
                for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            }
    return {}


def _is_seeds(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def keep_seeds(value: Any, keep: set[int], where: str) -> Any:
    """`value` with every list of integers (a list of seeds) restricted to `keep`, in dicts at
    any depth; a list that would be left empty is an error naming `where`."""
    if _is_seeds(value):
        kept = [s for s in value if s in keep]
        if not kept:
            raise ValueError(f"{where}: none of its seeds {value} is kept ({sorted(keep)})")
        return kept
    if isinstance(value, dict):
        return {k: keep_seeds(v, keep, f"{where}.{k}") for k, v in value.items()}
    return value


def seed_overrides(notebook: Path, keep: set[int] | list[int]) -> dict[str, Any]:
    """The notebook's parameters whose defaults name seeds, restricted to `keep` (for papermill's
    `-y`); {} when none changes."""
    changed = {}
    for key, value in notebook_parameters(notebook).items():
        kept = keep_seeds(value, set(keep), f"{Path(notebook).name}: parameter {key}")
        if kept != value:
            changed[key] = kept
    return changed


def _dropped(path: str, keep: set[int]) -> bool:
    return any(int(m) not in keep for m in _SEED_PATH.findall(path))


def restrict(spec: dict, keep: set[int] | list[int], root: Path) -> dict:
    """dvc.yaml's `spec` (parsed) with every seed axis restricted to `keep`; `root` is the
    project whose notebooks the stages run (their parameters' defaults are read there)."""
    keep = set(keep)
    out = copy.deepcopy(spec)
    for name, stage in out["stages"].items():
        if "matrix" in stage and "seed" in stage["matrix"]:
            stage["matrix"]["seed"] = keep_seeds(stage["matrix"]["seed"], keep, f"stage {name}")
        if "foreach" in stage:
            items = stage["foreach"]
            kept = {k: v for k, v in items.items() if "seed" not in v or v["seed"] in keep}
            if not kept:
                raise ValueError(f"stage {name}: none of its items is on a kept seed")
            stage["foreach"] = kept
        body = stage.get("do", stage)
        body["deps"] = [d for d in body.get("deps", []) if not _dropped(str(d), keep)]
        if "matrix" in stage or "foreach" in stage:
            continue  # one run per item: its notebook's parameters are the item's
        match = _PAPERMILL.search(body["cmd"])
        if match is None:
            continue
        changed = seed_overrides(root / match.group(1), keep)
        if changed:
            arg = f" -y {shlex.quote(json.dumps(changed))}"
            body["cmd"] = body["cmd"][: match.end()] + arg + body["cmd"][match.end() :]
    return out


def write_restricted(root: Path, keep: set[int] | list[int]) -> int:
    """Restrict `root`/dvc.yaml (a project copy's) to `keep` in place; the number of stages
    it then expands to."""
    path = Path(root) / "dvc.yaml"
    spec = restrict(yaml.safe_load(path.read_text()), keep, Path(root))
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=1000))
    return count_stages(spec)


def count_stages(spec: dict) -> int:
    """How many stages dvc.yaml's `spec` expands to (matrix products and foreach items)."""
    n = 0
    for stage in spec["stages"].values():
        if "matrix" in stage:
            size = 1
            for values in stage["matrix"].values():
                size *= len(values)
            n += size
        elif "foreach" in stage:
            n += len(stage["foreach"])
        else:
            n += 1
    return n
