"""A KV-cached sampler for GPT-2 policies: the distribution of Hugging Face `generate` (temperature,
top-k, top-p, multinomial draws), without its per-token overhead.

On the study's tiny policy a decoding step is a few small matrix products; `generate` spends about
7 ms a token around them (logits processors, stopping criteria, cache objects, masks rebuilt every
step), most of a PPO step's sampling time. This decoder reads the model's own weights, keeps the
keys and values of every layer in preallocated tensors and runs one token of the whole batch per
step, so sampling costs about what its arithmetic costs. It is exact: the logits it samples from
equal the model's own forward (`tests/test_decode.py`), and the filters follow `generate`'s order.

Only `GPT2LMHeadModel` with the standard block has this path (`supports`); any other policy (a
hub model of the `paper` profile) is sampled with `generate` by `study.generation.sample`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, PreTrainedModel

from study.config.world import SamplingConfig

_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


def supports(model: PreTrainedModel) -> bool:
    """Whether `model` is a GPT-2 whose blocks this decoder reproduces exactly."""
    if type(model) is not GPT2LMHeadModel:
        return False
    c = model.config
    return (
        c.activation_function in _ACTIVATIONS
        and not c.add_cross_attention
        and c.scale_attn_weights
        and not c.scale_attn_by_inverse_layer_idx
        and not c.reorder_and_upcast_attn
        and not model.training
    )


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then nucleus filtering of next-token logits (B, V), as `generate`'s warpers: tokens
    outside are set to -inf; at least one token is always kept."""
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - top_p
        remove[..., -1:] = False  # keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return logits


class _Cache:
    """Keys and values of every layer, (B, heads, L_max, head_dim), filled left to right."""

    def __init__(
        self, n_layer: int, b: int, heads: int, length: int, head_dim: int, device: torch.device
    ):
        self.k = torch.zeros(n_layer, b, heads, length, head_dim, device=device)
        self.v = torch.zeros(n_layer, b, heads, length, head_dim, device=device)


def _conv1d(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """GPT-2's Conv1D (x @ W + b, W stored (in, out)) on x (B, t, in), as one addmm."""
    out = torch.addmm(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight)
    return out.view(*x.shape[:-1], -1)


def _block_forward(
    block: torch.nn.Module,
    x: torch.Tensor,
    cache: _Cache,
    layer: int,
    start: int,
    attn_mask: torch.Tensor,
    heads: int,
    act,
) -> torch.Tensor:
    """One GPT-2 block on the new positions x (B, t, d), writing their keys and values at
    `start`; `attn_mask` (B, 1, t, start + t) says which keys each new position reads.

    Attention is written out (scores, mask, softmax, weighted sum): at one query position and a
    few dozen keys, the fused CPU kernels cost more in set-up than the arithmetic."""
    b, t, d = x.shape
    hd = d // heads
    attn = block.attn
    qkv = _conv1d(block.ln_1(x), attn.c_attn)  # (B, t, 3d)
    q, k, v = qkv.view(b, t, 3, heads, hd).permute(2, 0, 3, 1, 4)  # each (B, heads, t, hd)
    cache.k[layer, :, :, start : start + t] = k
    cache.v[layer, :, :, start : start + t] = v
    keys = cache.k[layer, :, :, : start + t]  # (B, heads, L, hd)
    values = cache.v[layer, :, :, : start + t]
    scores = (q @ keys.transpose(-1, -2)) * (1.0 / math.sqrt(hd))  # (B, heads, t, L)
    weights = scores.masked_fill(~attn_mask, float("-inf")).softmax(-1)
    y = (weights @ values).transpose(1, 2).reshape(b, t, d)  # (B, t, d)
    x = x + _conv1d(y, attn.c_proj)
    mlp = block.mlp
    return x + _conv1d(act(_conv1d(block.ln_2(x), mlp.c_fc)), mlp.c_proj)


@torch.no_grad()
def gpt2_hidden_stream(
    model: GPT2LMHeadModel, query_ids: torch.Tensor, query_mask: torch.Tensor, n_new: int
):
    """A generator over the final hidden states (B, H) that predict the next token of a
    left-padded batch: first after the query, then after each token sent into it
    (`hidden = stream.send(tokens)`, tokens (B,)). `model.lm_head(hidden)` are the logits."""
    c = model.config
    tr = model.transformer
    b, tq = query_ids.shape
    heads, d = c.n_head, c.n_embd
    act = _ACTIVATIONS[c.activation_function]
    length = tq + n_new
    if length > c.n_positions:
        raise ValueError(f"{tq} query + {n_new} new tokens exceed the policy's {c.n_positions}")
    dev = query_ids.device
    cache = _Cache(c.n_layer, b, heads, length, d // heads, dev)
    key_mask = torch.zeros(b, length, dtype=torch.bool, device=dev)
    key_mask[:, :tq] = query_mask.bool()
    positions = (query_mask.cumsum(1) - 1).clamp(min=0)  # (B, Tq): from each row's first token
    # the query: causal and padding masks; a padding position reads itself so no row is empty
    causal = torch.ones(tq, tq, dtype=torch.bool, device=dev).tril()
    eye = torch.eye(tq, dtype=torch.bool, device=dev)
    mask = (causal[None] & key_mask[:, None, :tq]) | eye[None]
    x = tr.wte(query_ids) + tr.wpe(positions)
    for i, block in enumerate(tr.h):
        x = _block_forward(block, x, cache, i, 0, mask[:, None], heads, act)
    hidden = tr.ln_f(x[:, -1])  # (B, H)
    pos = positions[:, -1]  # (B,)
    for step in range(n_new):
        tokens = yield hidden
        at = tq + step
        key_mask[:, at] = True
        pos = pos + 1
        x = tr.wte(tokens[:, None]) + tr.wpe(pos[:, None])  # (B, 1, d)
        step_mask = key_mask[:, None, None, : at + 1]  # (B, 1, 1, at + 1)
        for i, block in enumerate(tr.h):
            x = _block_forward(block, x, cache, i, at, step_mask, heads, act)
        hidden = tr.ln_f(x[:, -1])
    yield hidden


@torch.no_grad()
def gpt2_sample(
    model: GPT2LMHeadModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    cfg: SamplingConfig,
    eos_id: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled responses (B, max_new_tokens) of a left-padded batch, drawn from the global torch
    generator as `generate` draws them (after a row's EOS every token is `pad_id`), and the final
    hidden states (B, max_new_tokens, H) that predicted each of them, from which the rollout reads
    log-probabilities (and a shared value head its values) without another forward. Stops early
    once every row has ended; the rest is padding (hidden states 0)."""
    b, t_max = query_ids.shape[0], cfg.max_new_tokens
    dev = query_ids.device
    out = torch.full((b, t_max), pad_id, dtype=torch.long, device=dev)
    hiddens = torch.zeros(b, t_max, model.config.n_embd, device=dev)
    unfinished = torch.ones(b, dtype=torch.bool, device=dev)
    stream = gpt2_hidden_stream(model, query_ids, query_mask, t_max)
    hidden = next(stream)
    for t in range(t_max):
        hiddens[:, t] = hidden
        logits = model.lm_head(hidden).float() / cfg.temperature  # (B, V)
        scores = filter_logits(logits, cfg.top_k, cfg.top_p)
        tokens = torch.multinomial(scores.softmax(-1), 1).squeeze(1)  # (B,)
        tokens = torch.where(unfinished, tokens, pad_id)
        out[:, t] = tokens
        unfinished &= tokens != eos_id
        if not unfinished.any() or t + 1 == t_max:
            break
        hidden = stream.send(tokens)
    stream.close()
    return out, hiddens
