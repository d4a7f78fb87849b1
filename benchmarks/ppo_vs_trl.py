"""Benchmark: seconds per PPO step of the study's PPO against TRL 1.12.0's `PPOTrainer`.

Both sides train the same tiny models, saved once with `save_pretrained` and loaded by each: a
GPT-2 policy (and its reference copy) of the default profile's size (`sft.n_layer`, `n_embd`,
`n_head` of params.yaml) over the embedded world's word-level tokenizer, a reward model and a
value model (GPT-2 sequence classifiers with one label on the policy's backbone, each with its own
head). Same prompts (the world's instructions), batch size, response length, PPO epochs and
minibatches, learning rate, KL coefficient, clip ranges, GAE settings, fp32, and
`torch.set_num_threads` on both sides; every hyperparameter but the response length comes from the
default profile's `ppo` and `sampling` sections.

The policy is made never to end a response: its end-of-sequence and pad logits sit near -20
(through the tied embedding rows and a final layer-norm bias; the other tokens stay near uniform),
so both sides generate and train on exactly `--response-length` tokens per response and neither
gains from shorter ones. The mean response length of each side is measured and reported all the
same (from our rollout's mask; on TRL's side from what its reward model is given).

What one step counts, timed in the process that runs it, after `--warmup` steps:

* **ours** (a step of `study.ppo_train`'s run, its update in `study.ppo_step`), in two sides that differ only in
  the value model (`ppo.value_model`): `ours`, the study's default, a value head on the policy's
  trunk; `ours_separate`, a critic with its own copy of the trunk, TRL's design (its head starts
  from the same weights as TRL's value head). Each: draw and format the prompts,
  `study.generation.sample` with the cached GPT-2 decoder (`study.decode`: the same draws as
  `generate`; cut at EOS, decode), `make_rollout` (reward-model scoring, the policy's
  log-probabilities, entropies and, for the shared head, values read from the decoder's hidden
  states, the reference forward and, for the separate critic, its forward, KL shaping, GAE) and
  `ppo_update` (PPO epochs x minibatches: forward and backward through the actor-critic, gradient
  clipping, one fused Adam step), plus setting the learning rates. Not counted: what `train_ppo`
  adds for the study (gold scoring of each batch, held-out evaluation, checkpoints).
* **TRL** (`trl.experimental.ppo.PPOTrainer.train`, stock): the time between consecutive
  `on_step_end` callbacks (the first from `on_train_begin`), i.e. one whole iteration of its loop:
  next batch from its data loader, generation with output scores (TRL takes the policy's log-probs
  from the generation logits, as ours takes them from the decoder's hidden states), reference,
  value and reward forwards, truncation, KL shaping, GAE, whitening, the PPO epochs over
  minibatches (policy and value forward and backward through `PolicyAndValueWrapper`, one AdamW
  step per minibatch), its per-step metrics and logging, the scheduler step, `gc.collect()` and
  `empty_cache()`.

Each step is also split in three at the same points on both sides (`*_steps.csv`, and medians in
the summary): sampling (ours: prompts, generation, cutting, decoding; TRL: the data loader's next
batch and generation), the rollout's forwards (up to the end of reward scoring; ours also shapes
and runs GAE in it), and the update (TRL's includes shaping, GAE and its metrics, logging and
`gc.collect()`); TRL's split points are taken by wrapping its module-level `batch_generation` and
`get_reward`, which only adds reading a clock.

Settings chosen on TRL's side so that it does the same work as ours and no more:
`per_device_train_batch_size` = batch size with `gradient_accumulation_steps=1` (one optimiser
step per minibatch of batch/minibatches rows, as ours; TRL splits minibatches into
gradient-accumulation micro-batches otherwise), `local_rollout_forward_batch_size` = batch size
(one rollout chunk, as ours), `bf16=False` (fp32, as ours; TRL's default bf16 is refused on a
CPU), `num_sample_generations=0`, no reporting and no checkpoints; the other hyperparameters as
ours. Left at TRL's defaults: `gradient_checkpointing=True` (never switched on: `PPOTrainer.train`
replaces the `Trainer.train` that would) and fused AdamW. TRL does not clip gradients in its PPO
loop; ours does. `stop_token="eos"`, as our sampler (moot here: no response ends).

The TRL side runs in its own environment, `benchmarks/.venv-trl112` (`bash
benchmarks/setup_trl112.sh`: TRL 1.12.0, the last release with PPO, where `PPOTrainer` lives in
`trl.experimental.ppo`; the same torch, transformers and tokenizers as the main environment). Each
run is a fresh process; the parent alternates them (ours, TRL, ours, TRL, ...) so that drift in the
machine's load falls on both sides, takes the median over all timed steps of each side and writes
`results/bench/ppo_vs_trl.csv` (one row per side) and `results/bench/ppo_vs_trl_steps.csv` (every
timed step). Process start-up and model loading are not counted on either side.

Both processes run with `OMP_WAIT_POLICY=PASSIVE` (`--omp-wait-policy`): on a 2-core machine shared
with other jobs, OpenMP's default of spinning idle threads made a 2-thread forward and backward of
this policy 14x slower than with passive waiting (2.9 s against 0.2 s, measured beside such a job),
a cost per parallel region rather than per unit of work, which would weigh the sides by how many
operators they launch rather than by what they compute. On an idle machine pass `--omp-wait-policy
""` to leave OpenMP's default.

    bash benchmarks/setup_trl112.sh                # once
    .venv/bin/python benchmarks/ppo_vs_trl.py      # --rounds 3 --steps 10 for steadier numbers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / "benchmarks" / ".venv-trl112" / "bin" / "python"
OUT = ROOT / "results" / "bench" / "ppo_vs_trl.csv"
SIDES = ("ours", "ours_separate", "trl")  # ours: the study's default, a shared-trunk value head
VALUE_MODELS = {"ours": "shared", "ours_separate": "separate"}
PHASES = ("sample_seconds", "rollout_seconds", "update_seconds")  # the parts of a step
NEVER_LOGIT = 20.0  # how far below the others the policy's EOS and pad logits sit
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# ------------------------------------------------------------------------------------ the models


def never_end(policy: Any, token_ids: list[int], seed: int) -> None:
    """Push the logits of `token_ids` (EOS, pad) to about -NEVER_LOGIT at every position.

    GPT-2's output layer is tied to its token embedding and has no bias, so the final layer norm
    gets a bias along a random unit direction d and those tokens' embedding rows become -d: their
    logit is -(LN(x) . d) - NEVER_LOGIT, about -20 +- 1; the other logits move by their small
    random projection on d (std ~0.4 at GPT-2's init).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(policy.config.n_embd, generator=g)
    d = d / d.norm()
    with torch.no_grad():
        policy.transformer.ln_f.bias.add_(NEVER_LOGIT * d)
        policy.transformer.wte.weight[token_ids] = -d


def build_models(work: Path, cfg: dict[str, Any], params: Any) -> None:
    """Tokenizer, policy, reward and value models and the prompts, saved under `work`."""
    import copy

    import numpy as np
    import torch
    from transformers import GPT2ForSequenceClassification

    from study.generation import format_queries
    from study.world.grammar import sample_instructions
    from study.world.sft import build_policy
    from study.world.tokenizer import train_tokenizer

    rng = np.random.default_rng(cfg["seed"])
    prompts = [ins.text for ins in sample_instructions(params.world, cfg["n_prompts"], rng)]
    queries = format_queries(prompts, cfg["template"])
    tok = train_tokenizer(queries)  # the world's whole vocabulary is always included
    policy = build_policy(params.sft, tok, cfg["seed"])
    never_end(policy, [tok.eos_token_id, tok.pad_token_id], cfg["seed"])
    policy.save_pretrained(work / "policy")
    tok.save_pretrained(work / "policy")
    for i, name in enumerate(("reward", "value"), start=1):
        torch.manual_seed(cfg["seed"] + i)  # each head its own draw
        config = copy.deepcopy(policy.config)
        config.num_labels, config.architectures = 1, None
        model = GPT2ForSequenceClassification(config)
        model.transformer.load_state_dict(policy.transformer.state_dict())
        model.save_pretrained(work / name)
        tok.save_pretrained(work / name)
    input_ids = tok(queries, add_special_tokens=True)["input_ids"]  # as study.generation.sample
    longest = max(map(len, input_ids)) + cfg["response_length"]
    if longest > policy.config.n_positions:
        raise ValueError(
            f"--response-length {cfg['response_length']}: prompt + response reach {longest} "
            f"tokens, beyond the policy's {policy.config.n_positions} positions (sft.max_length)"
        )
    (work / "prompts.json").write_text(json.dumps({"prompts": prompts, "input_ids": input_ids}))
    (work / "config.json").write_text(json.dumps(cfg, indent=2))


# ------------------------------------------------------------------------------------ our side


def run_ours(work: Path, out: Path, side: str = "ours") -> None:
    """Our PPO steps in this process (the main environment); per-step seconds to `out`.

    `side` picks the value model: `ours` the study's default (`ppo.value_model: shared`, a value
    head on the policy trunk), `ours_separate` a critic with its own trunk, as TRL's."""
    cfg = json.loads((work / "config.json").read_text())
    import torch

    torch.set_num_threads(cfg["threads"])
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from study.actor_critic import ActorCritic
    from study.config.world import SamplingConfig
    from study.generation import format_queries, sample
    from study.hub import load_tokenizer
    from study.ppo_step import make_optimizer, make_rollout, ppo_update, set_learning_rates
    from study.proxy import HeadNormaliser, proxy_reward_fn
    from study.reward_models import build_reward_model

    prompts = json.loads((work / "prompts.json").read_text())["prompts"]
    tok = load_tokenizer(str(work / "policy"), "benchmark policy")
    policy = AutoModelForCausalLM.from_pretrained(work / "policy").eval()
    ref = AutoModelForCausalLM.from_pretrained(work / "policy").eval().requires_grad_(False)
    # the same reward and value weights as TRL's side, in the study's own classes
    hf_rm = AutoModelForSequenceClassification.from_pretrained(work / "reward")
    rm = build_reward_model(str(work / "reward"), work / "policy", k=1, seed=cfg["seed"])
    hf_value = AutoModelForSequenceClassification.from_pretrained(work / "value")
    _assert_same(policy.transformer, hf_value.transformer, "value model's trunk")
    ac = ActorCritic(policy, VALUE_MODELS[side])  # a separate critic copies the policy trunk
    with torch.no_grad():
        rm.score.weight.copy_(hf_rm.score.weight)
        rm.score.bias.zero_()
        head = ac.value_head if side == "ours" else ac.critic.head
        head.weight.copy_(hf_value.score.weight)  # TRL's value head has no bias
        head.bias.zero_()
    _assert_same(rm.encoder, hf_rm.transformer, "reward model")
    rm = rm.eval().requires_grad_(False)
    ac = ac.eval()
    del hf_rm, hf_value

    reward_fn = proxy_reward_fn(rm, tok, tok, max_length=10_000)  # same vocabulary: ids as they are
    normaliser = HeadNormaliser.identity(1)
    sampling = SamplingConfig(
        temperature=cfg["temperature"],
        top_k=0,
        top_p=1.0,
        max_new_tokens=cfg["response_length"],
        batch_size=cfg["batch_size"],
    )
    optimizer = make_optimizer(ac, cfg["lr"], cfg["value_lr"])
    total = cfg["warmup"] + cfg["steps"]
    rows = []
    for step in range(total):
        t0 = time.perf_counter()
        set_learning_rates(optimizer, step, total, cfg["lr_warmup_steps"])
        # 1-2. a batch of prompts, responses sampled and cut at EOS
        rng = np.random.default_rng([cfg["seed"], 2, step])
        batch = [prompts[i] for i in rng.integers(len(prompts), size=cfg["batch_size"])]
        samples = sample(
            policy,
            tok,
            format_queries(batch, cfg["template"]),
            sampling,
            cfg["seed"] + step,
            decoder="auto",
        )
        t1 = time.perf_counter()
        # 3-6. score, log-probs, values, KL shaping, GAE
        ro = make_rollout(
            ac, ref, reward_fn, normaliser, samples, batch, "mean", 0.0,
            cfg["kl_coef"], cfg["gamma"], cfg["lam"], cfg["temperature"],
        )  # fmt: skip
        t2 = time.perf_counter()
        # 7. PPO epochs
        ppo_update(
            ac, optimizer, ro, cfg["ppo_epochs"], cfg["minibatches"],
            cfg["cliprange"], cfg["cliprange_value"], cfg["vf_coef"], cfg["grad_clip"],
            cfg["whiten_advantages"], cfg["temperature"],
            torch.Generator().manual_seed(cfg["seed"] + step),
        )  # fmt: skip
        t3 = time.perf_counter()
        rows.append(
            {
                "seconds": t3 - t0,
                "sample_seconds": t1 - t0,
                "rollout_seconds": t2 - t1,
                "update_seconds": t3 - t2,
                "response_length": ro.response_mask.float().sum(1).mean().item(),
            }
        )
    _check_updates(optimizer, total * cfg["ppo_epochs"] * cfg["minibatches"], side)
    _write_run(out, side, rows[cfg["warmup"] :], f"study.ppo_train ({VALUE_MODELS[side]} critic)")


def _check_updates(opt: Any, expected: int, side: str) -> None:
    """The optimiser took one step per minibatch per epoch per PPO step, no more, no fewer."""
    taken = {int(st["step"]) for st in opt.state.values()}
    if taken != {expected}:
        raise RuntimeError(f"{side}: optimiser steps {sorted(taken)}, expected {expected}")


def _assert_same(a: Any, b: Any, what: str) -> None:
    """Both modules hold the same weights (the study's loaders read the saved model as TRL's do)."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
        raise RuntimeError(f"{what}: the study's copy differs from the saved Hugging Face model")


# ------------------------------------------------------------------------------------ TRL's side


def run_trl(work: Path, out: Path) -> None:
    """TRL 1.12.0's PPOTrainer in this process (benchmarks/.venv-trl112); per-step seconds."""
    cfg = json.loads((work / "config.json").read_text())
    import torch

    torch.set_num_threads(cfg["threads"])
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(work / "policy")
    tok.padding_side = "left"  # TRL's collator pads the queries; generation needs them on the left
    policy = AutoModelForCausalLM.from_pretrained(work / "policy")
    ref = AutoModelForCausalLM.from_pretrained(work / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(work / "reward")
    value = AutoModelForSequenceClassification.from_pretrained(work / "value")
    ids = json.loads((work / "prompts.json").read_text())["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids})

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    # What TRL's loop calls, wrapped to record the time and the response lengths it trains on
    # (what its reward model is given) and nothing else: the end of generation and the end of the
    # rollout's forwards (the reward model's is its last) split a step as ours is split.
    lengths: list[float] = []
    generated: list[float] = []
    scored: list[float] = []
    batch_generation, get_reward = ppo_module.batch_generation, ppo_module.get_reward

    def timed_batch_generation(*args, **kwargs):
        out = batch_generation(*args, **kwargs)
        generated.append(time.perf_counter())
        return out

    def counting_get_reward(model, query_responses, pad_token_id, context_length):
        out = get_reward(model, query_responses, pad_token_id, context_length)
        if model is reward:
            scored.append(time.perf_counter())
            r = query_responses[:, context_length:] != pad_token_id
            lengths.append(r.float().sum(1).mean().item())
        return out

    ppo_module.batch_generation = timed_batch_generation
    ppo_module.get_reward = counting_get_reward

    timer = StepTimer()
    total = cfg["warmup"] + cfg["steps"]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        args = PPOConfig(
            output_dir=tmp,
            seed=cfg["seed"],
            per_device_train_batch_size=cfg["batch_size"],
            gradient_accumulation_steps=1,
            local_rollout_forward_batch_size=cfg["batch_size"],
            num_mini_batches=cfg["minibatches"],
            num_ppo_epochs=cfg["ppo_epochs"],
            total_episodes=cfg["batch_size"] * total,
            response_length=cfg["response_length"],
            stop_token="eos",
            temperature=cfg["temperature"],
            learning_rate=cfg["lr"],
            kl_coef=cfg["kl_coef"],
            cliprange=cfg["cliprange"],
            cliprange_value=cfg["cliprange_value"],
            vf_coef=cfg["vf_coef"],
            gamma=cfg["gamma"],
            lam=cfg["lam"],
            whiten_rewards=False,
            bf16=False,
            num_sample_generations=0,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=tok,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            train_dataset=dataset,
            value_model=value,
            callbacks=[timer],
        )
        trainer.train()
    _check_updates(
        trainer.optimizer.optimizer, total * cfg["ppo_epochs"] * cfg["minibatches"], "trl"
    )
    starts, ends = timer.marks[:-1], timer.marks[1:]
    if not len(ends) == len(generated) == len(scored) == total:
        raise RuntimeError(
            f"TRL ran {len(ends)} steps ({len(generated)} generated, {len(scored)} scored) "
            f"where {total} were asked for"
        )
    rows = [
        {
            "seconds": t3 - t0,
            "sample_seconds": t1 - t0,  # next batch from the data loader, generation
            "rollout_seconds": t2 - t1,  # log-probs, reference, value and reward forwards
            "update_seconds": t3 - t2,  # shaping, GAE, PPO epochs, metrics, logging, gc
            "response_length": n,
        }
        for t0, t1, t2, t3, n in zip(starts, generated, scored, ends, lengths, strict=True)
    ]
    _write_run(out, "trl", rows[cfg["warmup"] :], f"trl {trl.__version__} PPOTrainer")


def _write_run(out: Path, side: str, rows: list[dict[str, float]], implementation: str) -> None:
    import torch
    import transformers

    out.write_text(
        json.dumps(
            {
                "side": side,
                "implementation": implementation,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "steps": rows,
            }
        )
    )


# ------------------------------------------------------------------------------------ the parent


def bench_config(params: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The settings both sides read: the default profile's PPO and sampling, and the CLI's."""
    ppo = params.ppo
    batch = args.batch_size or ppo.batch_size
    if batch % ppo.minibatches:
        raise ValueError(f"--batch-size {batch} must divide into {ppo.minibatches} minibatches")
    return {
        "seed": params.run.seed,
        "threads": args.threads or params.run.threads,
        "template": params.sources.prompt_template,
        "n_prompts": 512,
        "n_layer": params.sft.n_layer,
        "n_embd": params.sft.n_embd,
        "n_head": params.sft.n_head,
        "batch_size": batch,
        "response_length": args.response_length,
        "temperature": params.sampling.temperature,
        "ppo_epochs": ppo.ppo_epochs,
        "minibatches": ppo.minibatches,
        "lr": ppo.lr,
        "value_lr": ppo.value_lr,
        "lr_warmup_steps": ppo.warmup_steps,
        "kl_coef": ppo.kl_coef,
        "gamma": ppo.gamma,
        "lam": ppo.lam,
        "cliprange": ppo.cliprange,
        "cliprange_value": ppo.cliprange_value,
        "vf_coef": ppo.vf_coef,
        "grad_clip": ppo.grad_clip,
        "whiten_advantages": ppo.whiten_advantages,
        "warmup": args.warmup,
        "steps": args.steps,
    }


def run_side(
    side: str, python: Path, work: Path, out: Path, log: Path, env: dict[str, str]
) -> dict[str, Any]:
    """One fresh process of `side`; its per-step record (its output goes to `log`)."""
    cmd = [str(python), str(Path(__file__).resolve()), "--side", side, "--workdir", str(work)]
    with log.open("w") as f:
        done = subprocess.run(
            [*cmd, "--result", str(out)],
            cwd=ROOT,
            env={**os.environ, **CHILD_ENV, **env},
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"the {side} side failed (exit {done.returncode}):\n{tail}")
    return json.loads(out.read_text())


def summarise(runs: list[dict[str, Any]], cfg: dict[str, Any]) -> tuple[Any, Any]:
    """(one row per side with the median step and the ratio, every timed step)."""
    import pandas as pd

    steps = pd.DataFrame(
        [
            {"side": r["side"], "round": r["round"], "step": i, **s}
            for r in runs
            for i, s in enumerate(r["steps"])
        ]
    )
    rows = []
    for side in SIDES:
        sel = steps[steps["side"] == side]
        first = next(r for r in runs if r["side"] == side)
        rows.append(
            {
                "side": side,
                "implementation": first["implementation"],
                "median_step_seconds": sel["seconds"].median(),
                "mean_step_seconds": sel["seconds"].mean(),
                "min_step_seconds": sel["seconds"].min(),
                "max_step_seconds": sel["seconds"].max(),
                **{f"median_{k}": sel[k].median() for k in PHASES},
                "timed_steps": len(sel),
                "rounds": sel["round"].nunique(),
                "warmup_steps_per_round": cfg["warmup"],
                "mean_response_length": sel["response_length"].mean(),
                "batch_size": cfg["batch_size"],
                "response_length": cfg["response_length"],
                "ppo_epochs": cfg["ppo_epochs"],
                "minibatches": cfg["minibatches"],
                "model": f"gpt2 {cfg['n_layer']}x{cfg['n_embd']}, {cfg['n_head']} heads",
                "threads": first["threads"],
                "torch": first["torch"],
                "transformers": first["transformers"],
            }
        )
    summary = pd.DataFrame(rows)
    trl = summary.loc[summary["side"] == "trl", "median_step_seconds"].item()
    summary["trl_over_side"] = trl / summary["median_step_seconds"]  # how many times faster
    return summary, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="alternations (ours, TRL) to run")
    p.add_argument("--steps", type=int, default=5, help="timed PPO steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed PPO steps first in every run")
    p.add_argument("--batch-size", type=int, default=0, help="prompts per step (0: ppo.batch_size)")
    p.add_argument("--response-length", type=int, default=48, help="new tokens per response")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: run.threads)")
    p.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY of both sides ('': OpenMP's default; see the docstring)",
    )
    p.add_argument("--trl-python", type=Path, default=TRL_PYTHON, help="the TRL 1.12 venv's python")
    p.add_argument("--out", type=Path, default=OUT, help="summary CSV (and <stem>_steps.csv)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child process
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        if args.side == "trl":
            run_trl(args.workdir, args.result)
        else:
            run_ours(args.workdir, args.result, args.side)
        return

    from study.config import load_params
    from study.io import write_csv

    if not args.trl_python.exists():
        sys.exit(f"{args.trl_python} not found: run `bash benchmarks/setup_trl112.sh` first")
    params = load_params(ROOT / "params.yaml", profile="default")
    cfg = bench_config(params, args)
    pythons = {**{side: Path(sys.executable) for side in VALUE_MODELS}, "trl": args.trl_python}
    env = {"OMP_WAIT_POLICY": args.omp_wait_policy} if args.omp_wait_policy else {}
    runs = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ppo_vs_trl.") as tmp:
        work = Path(tmp)
        build_models(work, cfg, params)
        for r in range(args.rounds):
            for side in SIDES:
                t0 = time.perf_counter()
                out, log = work / f"{side}{r}.json", work / f"{side}{r}.log"
                run = run_side(side, pythons[side], work, out, log, env)
                run["round"] = r
                runs.append(run)
                med = statistics.median(s["seconds"] for s in run["steps"])
                print(
                    f"round {r + 1}/{args.rounds} {side:>4}: median {med:.3f} s/step "
                    f"({time.perf_counter() - t0:.0f} s with start-up)",
                    flush=True,
                )
    summary, steps = summarise(runs, cfg)
    summary["omp_wait_policy"] = args.omp_wait_policy or "default"
    summary["load_avg_1min_start"] = load_before
    summary["load_avg_1min_end"] = os.getloadavg()[0]
    write_csv(args.out, summary)
    write_csv(args.out.with_name(f"{args.out.stem}_steps.csv"), steps)
    cols = ["side", "implementation", "median_step_seconds", "min_step_seconds", "timed_steps"]
    print(summary[[*cols, "mean_response_length"]].to_string(index=False, float_format="%.3f"))
    for side, ratio in zip(summary["side"], summary["trl_over_side"], strict=True):
        if side != "trl":
            print(f"TRL / {side} (median s/step): {ratio:.2f}x")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
