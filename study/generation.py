"""Sampling responses from a causal-LM policy: the one place queries are formatted and answers cut.

Queries are left-padded so every response starts at the same column; a response is truncated
after its first end-of-sequence token, and one that never produced it within `max_new_tokens` is
marked unfinished (the gold reward penalises it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from study.config.world import SamplingConfig
from study.decode import gpt2_sample, supports
from study.device import CPU, Placement


def format_queries(prompts: Sequence[str], template: str) -> list[str]:
    """Each prompt as the policy sees it (`sources.prompt_template`, e.g. '{prompt} <sep>')."""
    return [template.format(prompt=p) for p in prompts]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> (ids, mask), both (B, T_max), padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row of (B, T); T where a row has none. Returns (B,)."""
    t = bools.shape[-1]
    positions = torch.arange(t, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, t).min(dim=-1).values


def truncate_at_eos(
    response_ids: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each response up to and including its first EOS; pad the rest.

    response_ids: (B, T). Returns ids (B, T), mask (B, T) with 1 on kept tokens, finished (B,).
    """
    eos_at = first_true_indices(response_ids == eos_id)  # (B,)
    t = response_ids.shape[1]
    positions = torch.arange(t, device=response_ids.device).unsqueeze(0)  # (1, T)
    mask = positions <= eos_at.unsqueeze(1)  # (B, T): through the EOS; all T if none
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask.long(), eos_at < t


@dataclass
class Samples:
    """A batch of sampled responses. Tensors are on the CPU."""

    query_ids: torch.Tensor  # (B, Tq) left-padded
    query_mask: torch.Tensor  # (B, Tq)
    response_ids: torch.Tensor  # (B, T) through the first EOS, then pad
    response_mask: torch.Tensor  # (B, T) 1 on response tokens, EOS included
    texts: list[str]  # decoded responses, special tokens removed
    finished: np.ndarray  # (B,) bool: the response ended with EOS
    # (B, T, H) final hidden states that predicted each response token, from the cached decoder
    # (study.decode) only; sampled without gradient by the model as it was when sampling
    hidden: torch.Tensor | None = None


def decode_responses(
    tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor, mask: torch.Tensor
) -> list[str]:
    return [
        tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True).strip()
        for ids, m in zip(response_ids, mask, strict=True)
    ]


def _generate(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cfg: SamplingConfig,
    pad_id: int,
    eos_id: int,
) -> torch.Tensor:
    """Hugging Face `generate` with the sampling settings of `cfg`: (B, Tq + T) ids on the CPU."""
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    ).cpu()


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    cfg: SamplingConfig,
    seed: int,
    progress: bool = False,
    decoder: str = "generate",
    placement: Placement = CPU,
) -> Samples:
    """Sample one response per query with the sampling settings of `cfg`, seeded by `seed`.

    `decoder`: ``generate`` (Hugging Face `generate`, what the world's data were sampled with) or
    ``auto`` (the KV-cached decoder of `study.decode` where the model is a GPT-2 it supports,
    `generate` otherwise): the same distribution, several times faster on small policies.
    The model samples where it is, in `placement`'s precision; the samples come back on the CPU.
    """
    if decoder not in ("generate", "auto"):
        raise ValueError(f"decoder {decoder!r}: expected 'generate' or 'auto'")
    if not queries:
        raise ValueError("no queries to sample from")
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cached = decoder == "auto" and supports(model)
    torch.manual_seed(seed)
    encoded = tokenizer(list(queries), add_special_tokens=True)["input_ids"]
    chunks = []
    starts = range(0, len(queries), cfg.batch_size)
    for start in tqdm(starts, desc="sampling", disable=not progress, leave=False):
        q_ids, q_mask = left_pad(encoded[start : start + cfg.batch_size], pad_id)
        if cached:
            with placement.autocast():
                r, h = gpt2_sample(model, q_ids.to(device), q_mask.to(device), cfg, eos_id, pad_id)
            r_ids, r_mask, finished = truncate_at_eos(r.cpu(), eos_id, pad_id)
            chunks.append((q_ids, q_mask, r_ids, r_mask, finished, h.float().cpu()))
            continue
        with placement.autocast():
            out = _generate(model, q_ids.to(device), q_mask.to(device), cfg, pad_id, eos_id)
        r = out[:, q_ids.shape[1] :]
        if r.shape[1] < cfg.max_new_tokens:  # generate stops early when every row has ended
            fill = torch.full((r.shape[0], cfg.max_new_tokens - r.shape[1]), pad_id)
            r = torch.cat([r, fill], dim=1)
        r_ids, r_mask, finished = truncate_at_eos(r, eos_id, pad_id)
        chunks.append((q_ids, q_mask, r_ids, r_mask, finished, None))
    model.train(was_training)
    q_width = max(c[0].shape[1] for c in chunks)

    def widen(x: torch.Tensor, value: int) -> torch.Tensor:  # left-pad query chunks to one width
        return torch.nn.functional.pad(x, (q_width - x.shape[1], 0), value=value)

    query_ids = torch.cat([widen(c[0], pad_id) for c in chunks])
    query_mask = torch.cat([widen(c[1], 0) for c in chunks])
    response_ids = torch.cat([c[2] for c in chunks])
    response_mask = torch.cat([c[3] for c in chunks])
    finished = torch.cat([c[4] for c in chunks]).numpy()
    hidden = torch.cat([c[5] for c in chunks]) if cached else None
    return Samples(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        texts=decode_responses(tokenizer, response_ids, response_mask),
        finished=finished,
        hidden=hidden,
    )
