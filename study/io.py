"""Atomic writes, tidy tables that carry their provenance, and clear errors for missing artifacts.

Every file a stage writes goes to a temporary name beside its target and is renamed into place
only once complete, so an interrupted stage never leaves a half-written output that a later stage
could read. Tables are Parquet with the resolved parameters and the git revision in their schema
metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"study.provenance"


class MissingArtifactError(FileNotFoundError):
    """An input a stage needs does not exist; the message says which stage makes it."""


class ArtifactError(ValueError):
    """An input a stage needs exists but cannot be used: unreadable, or its content malformed."""


def require(path: str | Path, made_by: str) -> Path:
    """Return `path` if it exists, else raise naming it and the stage that produces it."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path}: missing artifact (made by {made_by}; run `dvc repro`)")
    return path


def git_revision(cwd: str | Path = ".") -> str:
    """The current commit, with '-dirty' if the work tree differs; 'unknown' outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(params: Any, timestamp: bool = False) -> dict[str, Any]:
    """What made a result: the resolved parameters and the git revision (and, if asked, the time;
    off by default so that the same run writes byte-identical tables), and where the models ran
    when that was not the CPU in float32."""
    resolved = params.to_dict() if hasattr(params, "to_dict") else params
    prov = {"git_revision": git_revision(), "params": resolved}
    placement = getattr(params, "placement", None)
    if placement is not None and not placement.is_default:
        prov["placement"] = dataclasses.asdict(placement)
    if timestamp:
        prov["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return prov


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories; on failure the temporary is removed and `path` is untouched.
    A temporary that a killed process left behind (no `finally` runs on SIGKILL) is removed by
    the next write of the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"{path}: nothing was written")
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_table(path: str | Path, df: pd.DataFrame, prov: dict[str, Any] | None = None) -> Path:
    """Write a tidy table as Parquet, with `prov` (see `provenance`) in its schema metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if prov is not None:
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(prov, default=str).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_table(path: str | Path, made_by: str = "an earlier stage") -> pd.DataFrame:
    """Read a table written by `write_table`; its provenance is in `df.attrs['provenance']`."""
    path = require(path, made_by)
    try:
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(PROVENANCE_KEY)
        prov = json.loads(raw) if raw else None
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ArtifactError(
            f"{path}: not a readable Parquet table ({type(e).__name__}: {str(e)[:200]}); "
            f"truncated or overwritten: rerun {made_by} with `dvc repro --force`"
        ) from e
    df = table.to_pandas()
    df.attrs["provenance"] = prov
    return df


PROMPT_SPLITS = ("rl", "eval")


def check_prompts(df: pd.DataFrame, where: str, fix: str, columns: tuple[str, ...]) -> None:
    """Raise ArtifactError naming `where`, the row and the column (and `fix`) unless `df` has
    `columns`, every `prompt` is non-empty text and every `split` (where there is one) is one of
    PROMPT_SPLITS."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ArtifactError(
            f"{where}: missing column(s) {', '.join(missing)} "
            f"(have: {', '.join(map(str, df.columns))}); {fix}"
        )
    for i, prompt in enumerate(df["prompt"]):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ArtifactError(
                f"{where}: row {i}: column 'prompt' must be non-empty text, got {prompt!r}; {fix}"
            )
    if "split" in df.columns:
        bad = ~df["split"].isin(PROMPT_SPLITS).to_numpy()
        if bad.any():
            i = int(bad.argmax())
            raise ArtifactError(
                f"{where}: row {i}: column 'split' is {df['split'].iloc[i]!r}, expected one of "
                f"{', '.join(PROMPT_SPLITS)}; {fix}"
            )


def load_prompts(world_dir: str | Path, split: str) -> list[str]:
    """The prompts of one split ('rl': PPO's, 'eval': the held-out ones) of a built world's
    `prompts.parquet`, checked: the `prompt` and `split` columns, every prompt non-empty text,
    every split one of PROMPT_SPLITS, and at least one prompt in `split`. Raises ArtifactError
    naming the file, the row and the column."""
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split must be one of {PROMPT_SPLITS}, got {split!r}")
    path = Path(world_dir) / "prompts.parquet"
    df = read_table(path, "the world stage")
    fix = "rebuild the world (dvc repro --force world) or correct the table"
    check_prompts(df, str(path), fix, ("prompt", "split"))
    prompts = df.loc[df["split"] == split, "prompt"].tolist()
    if not prompts:
        raise ArtifactError(f"{path}: no prompt in split {split!r} ({len(df)} rows); {fix}")
    return prompts


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """A table as CSV, for reading by eye; `write_table` is the form stages read back."""
    return write_text(path, df.to_csv(index=False))


CODE_PATHS = ("study", "notebooks", "params.yaml", "dvc.yaml")


def code_revision(paths: tuple[str, ...] = CODE_PATHS) -> str:
    """The commit whose code made a published file: 'commit abc1234', with ', plus uncommitted
    changes' when `paths` differ from it (outputs being written do not count), or 'no git
    commit' outside a repository with one."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short=10", "HEAD")
    if head.returncode != 0:
        return "no git commit"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths).stdout.strip()
    return f"commit {head.stdout.strip()}" + (", plus uncommitted changes" if dirty else "")


def save_figure(
    fig: Any, path: str | Path, profile: str | None = None, dpi: int = 130, pdf: bool = False
) -> Path:
    """Save a matplotlib figure atomically (the format follows the suffix), recording in the
    file's metadata the commit and the profile that made it and no date, so that the same figure
    is the same bytes; with `pdf`, a vector PDF of it beside it too (for papers)."""
    path = Path(path)
    made_by = f"study ({code_revision()}, profile {profile or 'as selected in params.yaml'})"
    metadata = {  # None drops the date matplotlib would write
        "png": {"Description": made_by},
        "svg": {"Description": made_by, "Date": None},
        "pdf": {"Subject": made_by, "CreationDate": None},
    }
    targets = [path, path.with_suffix(".pdf")] if pdf and path.suffix != ".pdf" else [path]
    for target in targets:
        fmt = target.suffix.lstrip(".").lower()
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt,
                        metadata=metadata.get(fmt))  # fmt: skip
    return path
