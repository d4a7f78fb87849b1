"""How the study runs and reports: the base seed and threads, where models run, the report's
levels and thresholds."""

from __future__ import annotations

import dataclasses

from study.config.base import _check, _f, section


@section
class RunConfig:
    seed: int = _f(
        0, "Base seed of the world: corpus, SFT initialisation and data order, pairs, flips."
    )
    threads: int = _f(2, "torch intra-op threads; fixed so that CPU results repeat bit for bit.")

    def __post_init__(self) -> None:
        _check(
            self.seed >= 0, "run.seed", f"must be >= 0 (numpy seeds are unsigned), got {self.seed}"
        )
        _check(self.threads >= 1, "run.threads", "must be >= 1")

    @staticmethod
    def unknown_key_hint(key: str) -> str:
        """Where a key of `placement` written under `run` belongs."""
        if key in {f.name for f in dataclasses.fields(PlacementConfig)}:
            return f"; where models run is its own section: placement.{key}"
        return ""


@section
class ReportConfig:
    kl_levels: list[float] = _f(
        [2.0, 5.0, 10.0, 15.0],
        "KL levels (nats) at which variants' gold is compared on the gold-vs-KL frontier (matched KL); a run that never reaches a level has no value there.",
    )
    min_gain_lost: float = _f(
        0.25,
        "Overoptimisation, as counted in the report: after its peak, gold loses at least this share of its gain while the proxy ends above its value at the peak.",
    )

    claims_kl: float = _f(
        10.0,
        "The matched-KL level (one of kl_levels) at which the claims table compares variants' gold.",
    )
    equivalence_margin: float = _f(
        0.2,
        "Claims of parity ('as good as'): supported when the 95% interval of the difference in gold lies within ± this margin (0.2 is about a third of the SFT policy's per-response gold standard deviation), not supported when it lies wholly outside.",
    )

    def __post_init__(self) -> None:
        _check(
            len(self.kl_levels) >= 1 and all(k > 0 for k in self.kl_levels),
            "report.kl_levels",
            "must list KL levels > 0",
        )
        _check(0 < self.min_gain_lost <= 1, "report.min_gain_lost", "must be in (0, 1]")
        _check(
            self.claims_kl in self.kl_levels,
            "report.claims_kl",
            f"must be one of report.kl_levels {list(self.kl_levels)}",
        )
        _check(self.equivalence_margin > 0, "report.equivalence_margin", "must be > 0")


DEVICES = ("cpu", "cuda", "mps", "auto")
DTYPES = ("float32", "bfloat16")


@section
class PlacementConfig:
    """Where the models run and in what precision: how a result is computed, not what it is, so
    no stage declares it (switching device leaves results up to date; `dvc repro --force` remakes
    them there). A result records its placement where it is not the CPU in float32."""

    device: str = _f(
        "cpu",
        "Where every stage's models run: 'cpu', 'cuda', 'cuda:N' (one GPU), 'mps', or 'auto' "
        "(CUDA if torch sees one, else MPS, else the CPU).",
    )
    dtype: str = _f(
        "float32",
        "Precision of forward passes: 'float32', or 'bfloat16' (autocast; weights, optimiser "
        "states, rewards and the gold reward stay float32).",
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute the policy's activations in PPO's backward pass instead of keeping them."
    )
    processes: int = _f(
        1,
        "Data-parallel processes of each reward-model and PPO stage (study.data_parallel: one "
        "per GPU on CUDA); the same result as one process up to rounding.",
    )

    def __post_init__(self) -> None:
        base, colon, index = self.device.partition(":")
        _check(
            (base in DEVICES and not colon) or (base == "cuda" and index.isdigit()),
            "placement.device",
            f"must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}",
        )
        _check(
            self.dtype in DTYPES,
            "placement.dtype",
            f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}",
        )
        _check(self.processes >= 1, "placement.processes", f"must be >= 1, got {self.processes}")

    @property
    def is_default(self) -> bool:
        return self == PlacementConfig()
