import copy
import dataclasses

import pytest
import yaml

from study.config import ConfigError, describe, load_params, params_from_dict
from tests.conftest import ROOT

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def write(tmp_path, raw):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_repository_params_load_every_profile(profile):
    params = load_params(ROOT / "params.yaml", profile)
    assert params.profile == profile
    from study.config.world import PreferencesConfig

    assert params.preferences.flip_rate == PreferencesConfig().flip_rate  # no profile changes it


def test_profile_overrides_apply_on_top_of_default():
    smoke = load_params(ROOT / "params.yaml", "smoke")
    assert smoke.sft.steps == RAW["smoke"]["sft"]["steps"]
    from study.config.world import SFTConfig

    assert smoke.sft.lr == SFTConfig().lr  # not overridden: the declared default
    assert load_params(ROOT / "params.yaml", "paper").sources.tokenizer == "policy"


def test_selected_profile_is_read_from_the_file(tmp_path):
    raw = copy.deepcopy(RAW)
    raw["profile"] = "smoke"
    assert load_params(write(tmp_path, raw)).profile == "smoke"


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml", "default")
    with pytest.raises(AttributeError):
        params.sft.steps = 3


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (
            lambda r: r["default"].setdefault("sft", {}).update(stepz=3),
            "default.sft.stepz: unknown key",
        ),
        (lambda r: r["smoke"]["sft"].update(stepz=3), "smoke.sft.stepz: unknown key"),
        (lambda r: r["default"].update(rewardz={}), "default.rewardz: unknown section"),
        (lambda r: r.update(profiles={}), "profiles: unknown top-level key"),
        (
            lambda r: r["default"].setdefault("sft", {}).update(steps="many"),
            "default.sft.steps: expected int, got str",
        ),
        (
            lambda r: r["default"].setdefault("sft", {}).update(steps=2.5),
            "default.sft.steps: expected int, got float",
        ),
        (
            lambda r: r["default"].setdefault("sources", {}).update(relabel_with_gold=1),
            "relabel_with_gold: expected bool",
        ),
        (lambda r: r["smoke"].update(sft=[1, 2]), "smoke.sft: must be a mapping"),
        (
            lambda r: r["default"].setdefault("sft", {}).update(n_head=3),
            "sft.n_head: must divide sft.n_embd",
        ),
        (
            lambda r: r["default"].setdefault("preferences", {}).update(flip_rate=0.5),
            "preferences.flip_rate",
        ),
        (
            lambda r: r["default"].setdefault("sampling", {}).update(max_new_tokens=200),
            "sampling.max_new_tokens: must be < sft.max_length",
        ),
        (
            lambda r: r["default"].setdefault("sources", {}).update(policy="gpt2"),
            "sources.tokenizer: a hub/directory policy",
        ),
        (
            lambda r: r["default"].setdefault("sources", {}).update(prompts="my/prompts"),
            "sources.gold: the embedded gold",
        ),
        (
            lambda r: r["default"].setdefault("sources", {}).update(prompt_template="no slot"),
            "sources.prompt_template",
        ),
        (lambda r: r.update(profile="huge"), "unknown profile 'huge'"),
        (lambda r: r["default"].setdefault("run", {}).update(seed=-1), "run.seed: must be >= 0"),
        (
            lambda r: r["default"].setdefault("ppo", {}).update(lr=float("inf")),
            "default.ppo.lr: must be a finite",
        ),
        (
            lambda r: r["default"].setdefault("ppo", {}).update(kl_coef="nan"),
            "default.ppo.kl_coef: must be a finite",
        ),
        (
            lambda r: r["default"].setdefault("bon", {}).update(n_prompts=500),
            "bon.n_prompts: must be <= world.n_eval_prompts (128)",
        ),
        # the selected profile is default: a broken paper block is found all the same
        (
            lambda r: r["paper"].setdefault("ppo", {}).update(steps="x"),
            "paper.ppo.steps: expected int",
        ),
        (
            lambda r: r["paper"].setdefault("bon", {}).update(n_prompts=10**6),
            "(profile paper): bon.n_prompts",
        ),
    ],
)
def test_bad_files_are_rejected_with_the_key_and_the_file(tmp_path, mutate, fragment):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_float_fields_accept_ints_and_exponent_strings():
    raw = copy.deepcopy(RAW)
    raw["default"].setdefault("sft", {})["lr"] = 1
    raw["default"].setdefault("sft", {})["weight_decay"] = "1e-3"  # what PyYAML makes of 1e-3
    params = params_from_dict(raw, "default")
    assert params.sft.lr == 1.0 and isinstance(params.sft.lr, float)
    assert params.sft.weight_decay == pytest.approx(1e-3)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_every_field_is_documented():
    for line in describe().splitlines():
        if line.startswith("  "):
            assert line.split(": ", 1)[1].strip(), line


def test_a_profile_needs_only_what_it_changes(tmp_path):
    """Defaults are declared once, in study/config/: a file without a default block, or with
    an empty one, resolves to them, and a value in the file overrides its default."""
    from study.config.policy import PPOConfig
    from study.config.reward import RewardConfig

    p = load_params(write(tmp_path, {"profile": "default"}))
    assert p.ppo == PPOConfig() and p.reward == RewardConfig()
    p = load_params(write(tmp_path, {"profile": "default", "default": {"ppo": {"steps": 7}}}))
    assert p.ppo.steps == 7 and p.ppo.lr == PPOConfig().lr


def test_a_key_written_twice_is_an_error_naming_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text + "  ppo:\n    steps: 3\n    kl_coef: 0.9\n    steps: 4\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: .*'steps' appears twice"):
        load_params(path)


@pytest.mark.parametrize("profile", ["default", "smoke", "paper"])
def test_a_stage_can_run_every_arm_on_its_own_section(profile):
    # a stage running an arm builds Params on the arm's section (study.rm_train); the other
    # arms' overrides must not land on top of it (a Laplace arm under `k=1` of an ensemble arm)
    params = load_params(ROOT / "params.yaml", profile)
    for name in ("single", "multihead", "ensemble", *params.reward.arms):
        family, cfg = params.reward.arm(name)
        assert cfg.arms == {}
        rebuilt = dataclasses.replace(params, reward=cfg)
        assert rebuilt.reward.arm(family) == (family, cfg)


def test_a_bad_override_of_an_arm_names_the_arm_and_the_key():
    params = load_params(ROOT / "params.yaml", "default")
    arms = {**params.reward.arms, "multihead-k0": {"family": "multihead", "overrides": ["k=0"]}}
    reward = dataclasses.replace(params.reward, arms=arms)
    with pytest.raises(ConfigError, match=r"reward\.arms\.multihead-k0 'k=0': reward\.k: must be"):
        dataclasses.replace(params, reward=reward)


@pytest.mark.parametrize("name", ["multihead-std0.5", "multihead_wide", "wide", "ensemble-x"])
def test_an_arm_name_is_its_family_and_a_tag_without_a_dot(name):
    """'<family>-<tag>' of the arm's own family, without '_' (variants are '<arm>_<aggregate>')
    or '.' (a stage declares its arm as the dotted param arms.<name>)."""
    raw = copy.deepcopy(RAW)
    raw["default"]["reward"] = {"arms": {name: {"family": "multihead", "overrides": []}}}
    with pytest.raises(ConfigError, match=rf"reward\.arms\.{name}: family must be .* or '\.'"):
        params_from_dict(raw)


def test_every_arm_resolves_to_the_section_it_trains_with_and_alone(tmp_path):
    """`params.resolved.yaml`'s `arms`: each family and named arm as {family, every reward field
    with its overrides}; adding an arm changes no other arm's entry, a change to a shared field
    (reward.lr) changes every one."""
    from study.config import write_resolved

    def arms(default: dict) -> dict:
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"profile": "default", "default": default}))
        return yaml.safe_load(write_resolved(path, tmp_path / "r.yaml").read_text())["arms"]

    base = arms({})
    assert base["single"]["family"] == "single" and "arms" not in base["single"]
    # multihead-3ep is the multi-head family with one override (the declared default arms)
    by_hand = {**base["multihead"], "epochs_multihead": 3}
    assert base["multihead-3ep"] == by_hand
    assert base["ensemble"] == {**base["single"], "family": "ensemble"}
    new = {"multihead-wide": {"family": "multihead", "overrides": ["head_init_std=0.5"]}}
    added = arms({"reward": {"arms": {**load_params(ROOT / "params.yaml").reward.arms, **new}}})
    assert {k: v for k, v in added.items() if k != "multihead-wide"} == base
    assert added["multihead-wide"] == {**base["multihead"], "head_init_std": 0.5}
    faster = arms({"reward": {"lr": 1e-3}})
    assert all(faster[name] != base[name] for name in base)
