"""A PPO run's checkpoint: what it must match to be resumed, and reading it safely.

A checkpoint holds tensors and plain containers only (its tables as Parquet bytes), so it loads
with `torch.load(weights_only=True)` and never runs pickled code from disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from study.config import Params


def _digest(paths: list[Path]) -> str:
    """sha256 over the relative names and bytes of every file under `paths`, in a fixed order."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(f for f in Path(root).rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def run_fingerprint(
    params: Params, variant: str, seed: int, inputs: list[Path] | tuple[Path, ...] = ()
) -> str:
    """What a checkpoint must match to be resumed: the resolved parameters, the run, the code of
    the package and the bytes of its `inputs` (the SFT policy and the reward model it optimises):
    a checkpoint made by other settings, older code or another reward model is discarded."""
    code = _digest(sorted(Path(__file__).parent.rglob("*.py")))
    data = _digest([Path(p) for p in inputs])
    blob = json.dumps([params.to_dict(), variant, seed, code, data], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tables_to_bytes(**tables: pd.DataFrame) -> dict[str, torch.Tensor]:
    """DataFrames as Parquet bytes in uint8 tensors: what `torch.load(weights_only=True)` reads
    back exactly (no pickled objects in a checkpoint)."""
    import io

    out = {}
    for name, df in tables.items():
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        out[name] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    return out


def tables_from_bytes(blobs: dict[str, torch.Tensor]) -> dict[str, pd.DataFrame]:
    import io

    return {n: pd.read_parquet(io.BytesIO(t.numpy().tobytes())) for n, t in blobs.items()}


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The state saved at `path` if it exists, is readable and was made by this `fingerprint`;
    otherwise None, with a message. A checkpoint that cannot be read (truncated, corrupt, or not
    ours: only tensors and plain containers are loaded, never pickled code) is moved aside to
    `<name>.corrupt` so that the run starts fresh and the file stays for inspection."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise ValueError("not a PPO checkpoint of this study")
    except Exception as e:  # any unreadable file: the run must not stop on it
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        tqdm.write(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                   f"moved to {aside.name}, starting afresh")  # fmt: skip
        return None
    if state["fingerprint"] != fingerprint:
        tqdm.write(f"{path}: made by other parameters, code or reward model; starting afresh")
        return None
    return state
