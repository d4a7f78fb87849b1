"""Record in `dvc.lock` a change to the study's code that computes the same results.

    python tools/relock_code.py --check   # what would change, and any refusal; writes nothing
    python tools/relock_code.py           # rewrite the entries

A stage's lock entry records the hash of each file it depends on and of each output it made. When
a change to `study/` is shown to compute the same outputs (`benchmarks/same_numbers.py` runs both
revisions on this machine and compares every weight file and table), rerunning the study's hours
of stages would only write the same bytes again, and its models may not be on this machine at all.
This tool rewrites each entry's code dependencies (the paths under `study/`) as DVC hashes them
now, adds those `dvc.yaml` has come to declare and drops those it no longer declares. Everything
else stays as recorded: the command, the data dependencies and the outputs. A stage that declares
other params than it recorded (a narrower declaration: `arms.<name>` for the whole `reward`) is
rewritten only where every key it declares now has the value it had when the stage ran (the
recorded value of a key it declared then, or, for an arm's resolved section, that arm resolved
from the recorded `reward`, every field of which was recorded), and every key it no longer
declares still has its recorded value. A stage whose recorded command ended by converting its own
executed notebook to HTML (`&& jupyter nbconvert --to html --log-level WARN <its notebook>`,
which writes that page and nothing else) and whose page is no longer an output is recorded with
its command and outputs now: every other output is what the shorter command makes. Any other
difference is refused: a changed command, changed param values (a default changed in
`study/config/` included: `params.resolved.yaml` must be what the code resolves now), a new data
dependency, or an output added or removed. The result is the entry `dvc commit` would write were
the outputs here. Entries are written in place by DVC's own dumper (`study.lockfile.splice`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CODE = "study/"
# how a stage once converted its executed notebook to HTML at the end of its command
RENDER = " && jupyter nbconvert --to html --log-level WARN "


class Refused(RuntimeError):
    """A lock entry this tool must not rewrite: the change is not to code alone."""


def _code_dep(dep: Any) -> dict[str, Any]:
    """A dependency's lock data as DVC's `to_single_stage_lockfile` writes it, hashed now."""
    from dvc.output import _serialize_hi_to_dict, split_file_meta_from_cloud

    dep.save()
    out: dict[str, Any] = {"path": dep.def_path, "hash": "md5"}
    out.update(_serialize_hi_to_dict(dep.hash_info))
    meta = dep.meta.to_dict()
    meta.pop("isdir", None)
    out.update(split_file_meta_from_cloud(meta))
    return out


def _plain(value: Any) -> Any:
    """A parsed YAML value as plain JSON types (tuples as lists, ruamel's types as builtins)."""
    return json.loads(json.dumps(value))


def _at(value: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


def _value_when_run(recorded: dict[str, Any], key: str) -> Any:
    """What param `key` (dotted) was when the stage ran, from the values it recorded then: under
    a key it declared, or an arm's section resolved from the recorded `reward`; KeyError if the
    record does not say."""
    for old_key, value in recorded.items():
        if key == old_key or key.startswith(old_key + "."):
            return _at(value, key.split(".")[len(old_key.split(".")) :])
    section, _, arm = key.partition(".")
    if section == "arms" and arm and "reward" in recorded:
        import dataclasses

        from study.config import resolved_arms
        from study.config.base import ConfigError, _section
        from study.config.reward import RewardConfig

        reward = _plain(recorded["reward"])
        # every field recorded: a field added to the code since would take today's default
        if set(reward) != {f.name for f in dataclasses.fields(RewardConfig)}:
            raise KeyError(key)
        try:
            arms = resolved_arms(_section(RewardConfig, reward, "the recorded reward"))
        except ConfigError:
            raise KeyError(key) from None
        if arm in arms:
            return arms[arm]
    raise KeyError(key)


@functools.cache
def _params_file(root: Path, path: str) -> Any:
    """The params file `path` under `root` as it is now, parsed once per run of the tool."""
    import yaml

    return yaml.safe_load((root / path).read_text())


def _current(root: Path, path: str, key: str) -> Any:
    """The value of param `key` (dotted) in the params file `path` under `root` now."""
    return _at(_params_file(root, path), key.split("."))


def _params_as_run(name: str, now: dict[str, Any], old: dict[str, Any], root: Path) -> None:
    """Refuse unless every param the stage declares now has the value it had when it ran, and
    every param it declared then and no longer does still has its recorded value."""
    for path, values in now.items():
        for key, value in values.items():
            try:
                then = _value_when_run(old.get(path, {}), key)
            except KeyError:
                raise Refused(f"{name}: its params changed ({key} was not recorded); rerun it "
                              f"(dvc repro {name})") from None  # fmt: skip
            if _plain(then) != _plain(value):
                raise Refused(f"{name}: its params changed ({key}); rerun it (dvc repro {name})")
    for path, values in old.items():
        for key, value in values.items():
            if key in now.get(path, {}):
                continue
            try:
                moved = _plain(_current(root, path, key)) != _plain(value)
            except (KeyError, OSError):
                moved = True
            if moved:
                raise Refused(f"{name}: its params changed ({key}, no longer declared, moved "
                              f"since the run); rerun it (dvc repro {name})")  # fmt: skip


def _unrendered(cmd: Any, old: dict[str, Any], outs: set[str]) -> str | None:
    """The HTML page a stage no longer renders: its recorded command is `cmd` followed by the
    conversion of one of its outputs `outs`, an executed notebook, to the page beside it; None
    when the recorded command is not of that form."""
    was = old.get("cmd")
    if not isinstance(cmd, str) or not isinstance(was, str) or not was.startswith(cmd + RENDER):
        return None
    notebook = was[len(cmd + RENDER) :]
    if notebook not in outs or not notebook.endswith(".ipynb"):
        return None
    return notebook.removesuffix(".ipynb") + ".html"


def relocked(name: str, stage: Any, old: dict[str, Any]) -> dict[str, Any]:
    """`old` (the lock data of `stage`) with its code dependencies hashed now; `Refused` where
    anything else differs from what `dvc.yaml` and the params declare."""
    from dvc.dependency import ParamsDependency
    from dvc.stage.serialize import _serialize_params_values

    outs = {o.def_path for o in stage.outs}
    page = None
    if stage.cmd != old.get("cmd"):
        page = _unrendered(stage.cmd, old, outs)
        if page is None:
            raise Refused(f"{name}: its command changed; rerun it (dvc repro {name})")
    params = [d for d in stage.deps if isinstance(d, ParamsDependency)]
    for p in params:
        p.save()
    now = _serialize_params_values(params)
    if now != old.get("params", {}):
        _params_as_run(name, now, old.get("params", {}), Path(stage.repo.root_dir))
    recorded_outs = [o["path"] for o in old.get("outs", [])]
    if page is not None and page not in recorded_outs:
        raise Refused(f"{name}: its command changed; rerun it (dvc repro {name})")
    if sorted(outs) != sorted(p for p in recorded_outs if p != page):
        raise Refused(f"{name}: its outputs changed; rerun it (dvc repro {name})")
    recorded = {d["path"]: d for d in old.get("deps", [])}
    deps = []
    for dep in sorted((d for d in stage.deps if d not in params), key=lambda d: d.def_path):
        if dep.def_path.startswith(CODE):
            deps.append(_code_dep(dep))
        elif dep.def_path in recorded:
            deps.append(recorded[dep.def_path])
        else:
            raise Refused(
                f"{name}: a new data dependency {dep.def_path}; rerun it (dvc repro {name})"
            )
    dropped = [p for p in recorded if p not in {d["path"] for d in deps}]
    if any(not p.startswith(CODE) for p in dropped):
        raise Refused(f"{name}: data dependencies dropped ({dropped}); rerun it (dvc repro {name})")
    new = dict(old)
    if page is not None:
        new["cmd"] = stage.cmd
        new["outs"] = [o for o in old["outs"] if o["path"] != page]
    if now != old.get("params", {}):
        new["params"] = now
    if deps or "deps" in old:
        new["deps"] = deps
    return {k: new[k] for k in ("cmd", "deps", "params", "outs") if k in new}


def _stale_resolved_params(root: Path) -> str | None:
    """Why `params.resolved.yaml` is not what `params.yaml` and the declared defaults of
    `study/config/` resolve to now (a default changed with the code), or None. The stages read
    their params from that file, so a stale one would let a changed default pass as code."""
    import tempfile

    import yaml

    from study.config import write_resolved

    if not (root / "params.yaml").exists() or not (root / "params.resolved.yaml").exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_resolved(root / "params.yaml", Path(tmp) / "params.resolved.yaml")
        if yaml.safe_load(fresh.read_text()) == yaml.safe_load(
            (root / "params.resolved.yaml").read_text()
        ):
            return None
    return ("params.resolved.yaml is not what params.yaml and study/config/ resolve to now (a "
            "changed default?); rerun its stage (dvc repro resolve_params) and the stages it "
            "changes")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report only; write nothing")
    ap.add_argument("--root", type=Path, default=ROOT, help="the DVC project (default: this one)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dvc.repo import Repo
    from dvc.utils.serialize import parse_yaml

    from study.lockfile import splice

    stale = _stale_resolved_params(args.root)
    if stale:
        print(f"refused: {stale}")
        return 1
    lock_path = args.root / "dvc.lock"
    text = lock_path.read_text(encoding="utf-8")
    lock = parse_yaml(text, str(lock_path))["stages"]
    repo = Repo(str(args.root))
    entries, refused = {}, []
    for stage in repo.index.stages:
        name = stage.addressing
        if name not in lock:
            continue
        try:
            new = relocked(name, stage, lock[name])
        except Refused as e:
            refused.append(str(e))
            continue
        if new != lock[name]:
            entries[name] = new
    for line in refused:
        print(f"refused: {line}")
    changed = sorted({d["path"] for n in entries for d in entries[n]["deps"]} -
                     {d["path"] for n in entries for d in lock[n].get("deps", [])
                      if d in entries[n]["deps"]})  # fmt: skip
    print(
        f"{len(entries)} of {len(lock)} entries with new code hashes: {', '.join(changed) or '-'}"
    )
    declared = [n for n in entries if entries[n].get("params") != lock[n].get("params")]
    if declared:
        print(f"{len(declared)} of them declare other params, each with the value it ran with")
    unrendered = [n for n in entries if entries[n]["cmd"] != lock[n]["cmd"]]
    if unrendered:
        print(f"{len(unrendered)} of them no longer render their notebook to HTML")
    if refused:
        return 1
    if args.check or not entries:
        return 0
    result = splice(text, entries)
    if result is None:
        raise SystemExit(f"{lock_path}: not laid out as DVC writes it; nothing written")
    tmp = lock_path.with_name(f".{lock_path.name}.tmp")
    tmp.write_text(result[0], encoding="utf-8")
    tmp.replace(lock_path)
    print(f"{lock_path.name}: {len(entries)} entries rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
