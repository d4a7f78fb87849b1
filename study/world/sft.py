"""The embedded SFT policy: a small GPT-2 built from a `transformers` config, trained on the corpus."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from study.config.world import SFTConfig
from study.device import CPU, Placement, on
from study.optim import length_grouped_batches, warmup_cosine

IGNORE = -100


def build_policy(cfg: SFTConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 sized by `cfg`, with the tokenizer's pad and EOS ids."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.max_length,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # GPT-2's tanh approximation of GELU as one fused kernel: the same function as
        # "gelu_new", which composes it from several
        activation_function="gelu_pytorch_tanh",
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = (
        "ForCausalLM"  # transformers cannot infer it from the class name GPT2LMHeadModel
    )
    return model


def encode_sft(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    responses: Sequence[str],
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Right-padded (ids, attention mask, labels), each (N_kept, T), and `kept`, (N,) bool.

    Labels are the response tokens and the final EOS; the query and the padding are IGNORE, so
    the policy learns to answer, not to write prompts. Examples longer than `max_length` are
    dropped (not cut), so that the policy never learns to stop mid-answer.
    """
    q = tokenizer(list(queries), add_special_tokens=True)["input_ids"]
    r = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows = []
    kept = np.zeros(len(q), dtype=bool)
    for i, (qi, ri) in enumerate(zip(q, r, strict=True)):
        seq = [*qi, *ri, tokenizer.eos_token_id]
        if len(seq) <= max_length:
            rows.append((seq, len(qi)))
            kept[i] = True
    if not rows:
        raise ValueError(f"every example is longer than sft.max_length={max_length}")
    width = max(len(s) for s, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (seq, n_query) in enumerate(rows):
        ids[i, : len(seq)] = torch.as_tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, n_query : len(seq)] = torch.as_tensor(seq[n_query:])
    return ids, mask, labels, kept


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up to `cfg.lr`, then cosine decay to 10% of it."""
    return warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr)


@torch.no_grad()
def eval_loss(
    model: GPT2LMHeadModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    placement: Placement = CPU,
) -> float:
    """Mean token cross-entropy of the labelled tokens (the model where it is)."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(ids), batch_size):
        sl = slice(s, s + batch_size)
        n = int((labels[sl][:, 1:] != IGNORE).sum())
        b_ids, b_mask, b_labels = on(model, ids[sl], mask[sl], labels[sl])
        with placement.autocast():
            loss = model(input_ids=b_ids, attention_mask=b_mask, labels=b_labels).loss
        total += float(loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def train_sft(
    model: GPT2LMHeadModel,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cfg: SFTConfig,
    seed: int,
    progress: bool = True,
    placement: Placement = CPU,
) -> pd.DataFrame:
    """AdamW with warm-up, cosine decay and gradient clipping; returns the loss history table.
    The model trains where it is, forward passes in `placement`'s precision."""
    ids, mask, labels = train
    rng = np.random.default_rng(seed)
    lengths = mask.sum(1).numpy()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = []
    batches: list[np.ndarray] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="sft", disable=not progress, mininterval=2.0)
    for step in bar:
        if not batches:
            batches = length_grouped_batches(lengths, cfg.batch_size, rng)
        idx = torch.as_tensor(batches.pop())
        # trim the batch to its longest row: most sequences are far shorter than max_length
        width = int(lengths[idx].max())
        b_ids, b_mask, b_labels = on(
            model, ids[idx, :width], mask[idx, :width], labels[idx, :width]
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with placement.autocast():
            loss = model(input_ids=b_ids, attention_mask=b_mask, labels=b_labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        row = {
            "step": step + 1,
            "train_loss": loss.item(),
            "grad_norm": float(grad_norm),
            "lr": lr_at(step, cfg),
        }
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["val_loss"] = eval_loss(model, *val, placement=placement)
            bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}")
        history.append(row)
    model.eval()
    return pd.DataFrame(history)
