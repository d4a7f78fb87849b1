"""DVC with a lock file written in time proportional to the stage, not to the pipeline.

After every stage, `dvc repro` parses the whole `dvc.lock` with ruamel's pure-Python round-trip
parser and dumps it again to change one entry: about 0.27 s per 1,000 lines of lock, 12-14 s a
stage once the study's ~300 stages are in it (docs/performance.md). `python -m study.lockfile
<dvc arguments>` runs DVC with one change: the stages a command records are dumped alone, by DVC's
own YAML dumper, and spliced into the file's text in place of their old entries (new stages at the
end of `stages`, where DVC's dict update puts them). Every other byte stays, so the file is the
one DVC's full rewrite makes; a lock laid out in any other way is left to DVC's own code.
`study.pipeline` runs each stage's `dvc repro --single-item` through it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

logger = logging.getLogger("dvc")
_TOP_KEY = re.compile(r"^\S")  # a top-level line: `schema: ...`, `stages:`
_STAGE_KEY = re.compile(r"^  \S")  # a stage's key line under `stages:`


def stage_blocks(text: str) -> dict[str, tuple[int, int]] | None:
    """Each stage entry of a lock file's text: its key line (as the dumper writes it, say
    `  rm@single-0:`) -> the (start, end) character offsets of its lines. None when the text is
    not laid out as DVC writes it (`stages:` the last top-level key, entries indented by two)."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    top = [i for i, line in enumerate(lines) if _TOP_KEY.match(line)]
    if not top or lines[top[-1]].rstrip("\n") != "stages:":
        return None
    blocks: dict[str, tuple[int, int]] = {}
    key, start = None, 0
    for i in range(top[-1] + 1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if _STAGE_KEY.match(line):
            if key is not None:
                blocks[key] = (offsets[start], offsets[i])
            key, start = line.rstrip("\n"), i
        elif key is None or not line.startswith("   "):
            return None  # neither a stage key nor inside one
    if key is not None:
        blocks[key] = (offsets[start], offsets[len(lines)])
    return blocks


def dump_entry(name: str, data: dict[str, Any]) -> str:
    """One stage's entry as DVC's dumper writes it inside `stages:` (indented by two)."""
    from dvc.utils.serialize import dumps_yaml

    text = dumps_yaml({"stages": {name: data}})
    head, _, body = text.partition("\n")
    if head != "stages:":
        raise ValueError(f"unexpected dump of stage {name!r}: {head!r}")
    return body


def splice(text: str, entries: dict[str, dict[str, Any]]) -> tuple[str, bool] | None:
    """`text` with each stage of `entries` (name -> its lock data) written in place of its old
    entry, or appended after the last; and whether any entry changed (compared as data, as DVC
    does). None when `text` is not a lock file laid out as DVC writes it."""
    from dvc.utils.serialize import parse_yaml

    blocks = stage_blocks(text)
    if blocks is None:
        return None
    changed = False
    for name, data in entries.items():
        entry = dump_entry(name, data)
        key = entry.partition("\n")[0]
        if key in blocks:
            start, end = blocks[key]
            old = text[start:end]
            if parse_yaml("stages:\n" + old, "dvc.lock").get("stages", {}).get(name) == data:
                continue  # the same data: DVC leaves the entry as it is
            text = text[:start] + entry + text[end:]
        else:
            text = text + ("" if text.endswith("\n") else "\n") + entry
        changed = True
        blocks = stage_blocks(text)
        if blocks is None:
            return None
    return text, changed


def patch() -> bool:
    """Make DVC's `Lockfile.dump_stages` splice (falling back to DVC's own code on a new, empty or
    differently laid-out lock file, or any other file system than the local one); whether it is
    patched. A DVC without the internals this relies on is left as it is, with a warning."""
    try:
        from dvc import dvcfile
        from dvc.stage import serialize
        from dvc.utils.serialize import dumps_yaml, parse_yaml  # noqa: F401  (used by splice)

        original = dvcfile.Lockfile.dump_stages
    except (ImportError, AttributeError) as e:
        print(f"study.lockfile: DVC's lock writer not found ({e}); DVC writes the lock itself",
              file=sys.stderr)  # fmt: skip
        return False
    if getattr(original, "_study_splice", False):
        return True

    def dump_stages(self: Any, stages: list, **kwargs: Any) -> None:
        if not stages:
            return
        path = os.fspath(self.path)
        if self.repo.fs.protocol != "local" or not os.path.exists(path):
            return original(self, stages, **kwargs)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        entries: dict[str, dict[str, Any]] = {}
        for stage in stages:
            entries.update(serialize.to_lockfile(stage, **kwargs))
        result = splice(text, entries)
        if result is None:
            return original(self, stages, **kwargs)
        new, changed = result
        if not changed:
            return
        logger.info("Updating lock file '%s'", self.relpath)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(tmp, path)
        self.repo.scm_context.track_file(self.relpath)

    dump_stages._study_splice = True  # type: ignore[attr-defined]
    dvcfile.Lockfile.dump_stages = dump_stages
    return True


def main(argv: list[str] | None = None) -> int:
    from dvc.cli import main as dvc_main

    patch()
    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
