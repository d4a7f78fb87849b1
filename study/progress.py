"""What a run of the pipeline tells and keeps: a line as each stage starts and ends, a heartbeat
with the last line of each running stage's log, the estimate of the time left (from the stages'
times in earlier runs), the timings table, and the error that names a failed stage."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


class Eta:
    """The time left, from each stage's seconds in earlier runs (`history.json` in the log
    directory: stage -> seconds of its last successful run). A stage never run before counts as
    the median of its stage group (the name before '@'), or of every known stage."""

    def __init__(self, log_dir: Path, need: dict[str, int], cores: int):
        self.path = log_dir / "history.json"
        try:
            self.seconds: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.seconds = {}
        self.need, self.cores = need, max(1, cores)

    def expected(self, stage: str) -> float | None:
        if stage in self.seconds:
            return self.seconds[stage]
        group = [v for k, v in self.seconds.items() if k.split("@")[0] == stage.split("@")[0]]
        known = group or list(self.seconds.values())
        return statistics.median(known) if known else None

    def left(self, remaining: set[str]) -> str:
        """'~N min left' for the stages in `remaining` (core-seconds over the cores), or ''."""
        est = [(self.expected(n), self.need.get(n, 1)) for n in remaining]
        if not remaining or any(e is None for e, _ in est):
            return ""
        return f", ~{sum(e * c for e, c in est) / self.cores / 60:.0f} min left"

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Remember the seconds of this run's successful stages."""
        self.seconds.update({r["stage"]: r["seconds"] for r in rows if r["returncode"] == 0})
        with contextlib.suppress(OSError):
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.seconds, indent=1, sort_keys=True))
            tmp.replace(self.path)


class Progress:
    """What both engines print and keep: a line as each stage starts and ends (with how many are
    done and the time left), every `heartbeat_s` seconds the running stages with the last line of
    their logs, and each finished stage's row of timings."""

    def __init__(self, run: set[str], log_dir: Path, eta: Eta, echo: Any, heartbeat_s: float):
        self.run, self.log_dir, self.eta, self.echo = run, log_dir, eta, echo
        self.heartbeat_s = heartbeat_s
        self.t0 = self.last_beat = time.time()
        self.done: set[str] = set()
        self.failed: list[str] = []
        self.timings: list[dict[str, Any]] = []

    def _say(self, text: str) -> None:
        self.echo(f"[{_clock(self.t0)}] {text}")

    def started(self, name: str, cores: int | None = None) -> None:
        what = f"{cores} core(s); " if cores is not None else ""
        self._say(f"start {name} ({what}{len(self.done)}/{len(self.run)} done)")

    def beat(self, running: dict[str, float | None]) -> None:
        """Every `heartbeat_s` seconds: each running stage (name -> its start, if known)."""
        if time.time() - self.last_beat < self.heartbeat_s:
            return
        self.last_beat = time.time()
        for n, t0 in running.items():
            since = f" for {_clock(t0)}" if t0 is not None else ""
            self._say(f"...   {n} running{since}: {last_log_line(self.log_dir / f'{n}.log')}")

    def ended(self, name: str, row: dict[str, Any]) -> None:
        """A stage's row (start and end in seconds since the epoch, returncode, node)."""
        seconds = row["end"] - row["start"]
        self.timings.append({**row, "start": row["start"] - self.t0, "end": row["end"] - self.t0,
                             "seconds": seconds})  # fmt: skip
        if row["returncode"] == 0:
            self.done.add(name)
            left = self.eta.left(self.run - self.done - set(self.failed))
            self._say(
                f"done  {name} in {seconds:.0f} s ({len(self.done)}/{len(self.run)} done{left})"
            )
        else:
            self.failed.append(name)
            log = self.log_dir / f"{name}.log"
            self._say(f"FAILED {name} (exit {row['returncode']}); log: {log}")

    def close(self) -> None:
        """Write the timings and remember this run's stage times (for the next run's estimate)."""
        _write_timings(self.log_dir / "timings.csv", self.timings)
        self.eta.record(self.timings)

    def raise_if_failed(self) -> None:
        if self.failed:
            raise_failed(self.log_dir, self.failed, self.run, self.done)


def raise_failed(log_dir: Path, failed: list[str], run: set[str], done: set[str]) -> None:
    """RuntimeError naming the first failed stage, the stages not run and the end of its log."""
    first = failed[0]
    tail = (log_dir / f"{first}.log").read_text(errors="replace")[-3000:]
    left = sorted(run - done - set(failed))
    raise RuntimeError(
        f"stage {first} failed; stages not run: {', '.join(left) or 'none'}\n"
        f"--- end of {log_dir / f'{first}.log'} ---\n{tail}"
    )


def last_log_line(path: Path, width: int = 100) -> str:
    """The last non-empty line of a stage's log, progress bars' carriage returns resolved."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [seg.strip() for line in tail.splitlines() for seg in line.split("\r")[-1:]]
    lines = [x for x in lines if x]
    return lines[-1][:width] if lines else ""


def _clock(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 60:3d}:{s % 60:02d}"


def _write_timings(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(
            f, ["stage", "start", "end", "seconds", "returncode", "node"], restval=""
        )
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
