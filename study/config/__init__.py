"""Typed, validated parameters: the one reader of `params.yaml`.

Every parameter is declared once, in this package: its type, its default and its one line of
help, in a section (a frozen pydantic dataclass, so that a wrong type, an unknown key or a
non-finite number is refused by the library and reported with its dotted path). The sections
live by what they configure: `world` (sources, grammar, gold, SFT, sampling, preferences),
`reward` (the reward models and their evaluation), `policy` (PPO, best-of-n, RLOO) and `run`
(seed and threads, placement, the report); `base` holds what they are made of. This module
assembles them into `Params` and reads, checks and resolves the file. `params.yaml` holds a selector and
one block per profile, each only the values it changes::

    profile: default          # the profile `dvc repro` runs
    default: {reward: {...}}  # the study's choices, over the defaults declared here
    smoke:   {sft: {steps: 40}}       # overrides on top of `default`
    paper:   {sources: {...}}         # overrides on top of `default`

A profile resolves as these defaults, then `default`, then the profile's own block. Every
profile is checked whichever is selected (``params.yaml: smoke.sft.stepz: unknown key ...``);
``python -m study.config`` prints every field with its help, and ``python -m study.config
resolve`` writes the active profile, resolved, to `params.resolved.yaml`, the file every pipeline
stage declares its params from.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.config.base import (
    PROFILE_NAMES,
    ConfigError,
    _check,
    _section,
    field_default,
    with_override,
)
from study.config.policy import BoNConfig, PPOConfig, RLOOConfig
from study.config.reward import NOISE_RATES, RewardConfig, RewardEvalConfig
from study.config.run import PlacementConfig, ReportConfig, RunConfig
from study.config.world import (
    GoldConfig,
    PreferencesConfig,
    SamplingConfig,
    SFTConfig,
    SourcesConfig,
    WorldConfig,
)

__all__ = [
    "NOISE_RATES",
    "RESOLVED",
    "SECTIONS",
    "ConfigError",
    "Params",
    "describe",
    "load_params",
    "params_from_dict",
    "resolved_arms",
    "with_override",
    "with_overrides",
    "write_resolved",
]


@dataclass(frozen=True)
class Params:
    """One resolved profile: every section of `params.yaml`."""

    profile: str
    run: RunConfig
    sources: SourcesConfig
    world: WorldConfig
    gold: GoldConfig
    sft: SFTConfig
    sampling: SamplingConfig
    preferences: PreferencesConfig
    reward: RewardConfig
    reward_eval: RewardEvalConfig
    ppo: PPOConfig
    bon: BoNConfig
    rloo: RLOOConfig
    report: ReportConfig
    placement: PlacementConfig = field(default_factory=PlacementConfig)

    def __post_init__(self) -> None:
        _check(
            self.bon.n_prompts <= self.world.n_eval_prompts,
            "bon.n_prompts",
            f"must be <= world.n_eval_prompts ({self.world.n_eval_prompts}): best-of-n draws its "
            f"prompts from the held-out ones, got {self.bon.n_prompts}",
        )
        _check(
            self.sampling.max_new_tokens < self.sft.max_length,
            "sampling.max_new_tokens",
            f"must be < sft.max_length ({self.sft.max_length}) to leave room for the prompt",
        )
        for name in ("diversity_sweep", "diversity_common"):
            for opt in getattr(self.reward_eval, name):
                with_override(self.reward, opt, f"reward_eval.{name}")
        for name in self.reward.arms:  # every arm's overrides are valid keys and values
            self.reward.arm(name)

    def to_dict(self) -> dict[str, Any]:
        """Every section that decides what a result is: all but `placement` (where it runs)."""
        out = dataclasses.asdict(self)
        del out["placement"]
        return out


SECTIONS: dict[str, type] = {
    name: hint for name, hint in typing.get_type_hints(Params).items() if name != "profile"
}


def with_overrides(params: Params, options: Sequence[str], where: str = "overrides") -> Params:
    """`params` with 'section.key=value' overrides applied in order, each checked like params.yaml
    (`reward.k=8`, `reward.epochs_multihead=3`)."""
    for option in options:
        section, dot, rest = option.partition(".")
        if not dot or section not in SECTIONS:
            raise ConfigError(
                f"{where}: {option!r} is not 'section.key=value' with a section of params.yaml "
                f"({', '.join(SECTIONS)})"
            )
        cfg = with_override(getattr(params, section), rest, f"{where} ({section})")
        params = dataclasses.replace(params, **{section: cfg})
    return params


# ------------------------------------------------------------------------------------- validation


def _check_profile(raw: Any, where: str) -> None:
    """Sections, keys and types of one profile block (partial), over the declared defaults."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: a profile must be a mapping of sections, got {type(raw).__name__}"
        )
    for name, body in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{where}.{name}: unknown section (known: {', '.join(SECTIONS)})")
        try:
            _section(SECTIONS[name], {} if body is None else body, f"{where}.{name}")
        except ConfigError as e:
            if str(e).startswith(f"{where}."):
                raise
            # a check across fields of the section: it holds on the resolved profile, not here


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def params_from_dict(
    raw: dict[str, Any],
    profile: str | None = None,
    where: str = "params",
    all_profiles: bool = True,
) -> Params:
    """Validate a parsed `params.yaml` mapping and resolve one profile (default: its `profile`
    key): the declared defaults, then the `default` block, then the profile's own."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(raw).__name__}")
    for key, value in raw.items():
        if key == "profile":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: profile: expected str, got {type(value).__name__}")
            continue
        if key not in PROFILE_NAMES:
            raise ConfigError(
                f"{where}: {key}: unknown top-level key (known: profile, {', '.join(PROFILE_NAMES)})"
            )
        _check_profile(value, f"{where}: {key}")
    name = profile if profile is not None else raw.get("profile", "default")
    if name not in PROFILE_NAMES:
        raise ConfigError(
            f"{where}: profile: unknown profile {name!r} (known: {', '.join(PROFILE_NAMES)})"
        )
    if all_profiles:  # a broken profile is found now, not when it is first selected
        for other in PROFILE_NAMES:
            if other != name and (other == "default" or other in raw):
                params_from_dict(raw, profile=other, where=where, all_profiles=False)
    if name != "default" and name not in raw:
        raise ConfigError(f"{where}: profile {name!r} is selected but has no block in the file")
    resolved = _merge(raw.get("default") or {}, raw.get(name) or {} if name != "default" else {})
    sections = {}
    for sec, cls in SECTIONS.items():
        try:
            sections[sec] = _section(cls, resolved.get(sec) or {}, sec)
        except ConfigError as e:
            raise ConfigError(f"{where} (profile {name}): {e}") from None
    try:
        return Params(profile=name, **sections)
    except ConfigError as e:
        raise ConfigError(f"{where} (profile {name}): {e}") from None


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Read, validate and resolve `params.yaml`; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return params_from_dict(raw, profile=profile, where=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML itself keeps the
    last silently, so a duplicated parameter would change a run without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def describe() -> str:
    """Every field of every section with its help, for `python -m study.config`."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            lines.append(f"  {f.name} (default {field_default(f)!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


RESOLVED = "params.resolved.yaml"


def resolved_arms(reward: RewardConfig) -> dict[str, dict[str, Any]]:
    """Every reward-model arm (the three families and each named arm of `reward.arms`) as the
    section it trains with: {name: {family, every field of `reward` with the arm's overrides}}.
    A reward-model stage declares only its own arm's entry, so that adding or changing one arm
    leaves every other arm's models up to date."""
    out = {}
    for name in ("single", "multihead", "ensemble", *reward.arms):
        family, cfg = reward.arm(name)
        section = dataclasses.asdict(cfg)
        del section["arms"]  # an arm's section holds no arms (RewardConfig.arm)
        out[name] = {"family": family, **section}
    return out


def write_resolved(params_path: str | Path = "params.yaml", out: str | Path = RESOLVED) -> Path:
    """The active profile of `params_path`, validated (every profile is) and resolved, written as
    one mapping of sections, and every reward-model arm resolved (`arms`, `resolved_arms`): what
    the pipeline's stages declare as their params, so that a stage depends on the values it runs
    with, and an edit to a profile that is not active changes nothing it reads."""
    p = load_params(params_path)
    resolved = {
        **p.to_dict(),
        "arms": resolved_arms(p.reward),
        "placement": dataclasses.asdict(p.placement),
    }
    body = yaml.safe_dump(resolved, sort_keys=False)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(f"# written by `python -m study.config resolve` from {Path(params_path).name}: "
                   f"do not edit\n{body}")  # fmt: skip
    tmp.replace(out)
    return out
