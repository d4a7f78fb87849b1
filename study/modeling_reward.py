"""The K-head reward model as a Hugging Face sequence classifier: one encoder, ``Linear(d, K)``.

This file is self-contained (torch, transformers and huggingface_hub only): `save_pretrained`
copies it into every checkpoint and names it in ``config.json``'s ``auto_map``, so a saved reward
model loads in any Python with

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

and no import of this study. A custom class is needed, not ``<Encoder>ForSequenceClassification``,
for two reasons: the K heads carry a bias each (the standard classifiers' score layer has none, and
the heads' offsets enter the minimum over raw rewards), and the encoder is any ``AutoModel`` named
in the config, pooled at the last attended token.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


@strict
class RewardModelConfig(PreTrainedConfig):
    """Configuration of a K-head reward model: the encoder's own config (as a dict) and the heads."""

    model_type = "study_reward_model"
    encoder: dict | None = None
    head_init: str = "normal"
    head_init_std: float = 0.02


def init_heads(score: nn.Linear, mode: str, std: float = 0.02) -> None:
    """Draw the K heads (a Linear(d, K)) in place: 'normal' is N(0, std) weights and zero bias;
    'linear' is torch.nn.Linear's own default (Kaiming-uniform with a = sqrt(5), i.e.
    U(-1/sqrt(d), 1/sqrt(d)) for the weights, and the same bound for the bias)."""
    if mode == "normal":
        nn.init.normal_(score.weight, std=std)
        nn.init.zeros_(score.bias)
    elif mode == "linear":
        score.reset_parameters()
    else:
        raise ValueError(f"head_init: unknown mode {mode!r} (known: normal, linear)")


class MultiHeadRewardModel(PreTrainedModel):
    """One encoder, K linear heads: logits (B, K) from the hidden state at the last attended token.

    Without an ``attention_mask`` every token other than the pad token (``config.pad_token_id``)
    is attended, as in transformers' own sequence classifiers.
    """

    config_class = RewardModelConfig
    base_model_prefix = "encoder"

    def __init__(self, config: RewardModelConfig):
        super().__init__(config)
        if not config.encoder:
            raise ValueError("RewardModelConfig.encoder is empty: no encoder to build")
        enc_config = AutoConfig.for_model(**config.encoder)
        self.encoder = AutoModel.from_config(enc_config)
        hidden = getattr(enc_config, "hidden_size", None) or enc_config.n_embd
        self.score = nn.Linear(hidden, config.num_labels)  # K heads with a bias each
        self._position_ids = "position_ids" in inspect.signature(self.encoder.forward).parameters
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "score", None):
            init_heads(module, self.config.head_init, self.config.head_init_std)

    @property
    def k(self) -> int:
        return self.config.num_labels

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **_: object,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            pad = self.config.pad_token_id
            attention_mask = (
                torch.ones_like(input_ids) if pad is None else (input_ids != pad).long()
            )
        kwargs = {}
        if self._position_ids:  # count positions from the first real token (left padding)
            kwargs["position_ids"] = (attention_mask.cumsum(1) - 1).clamp(min=0)
        if "use_cache" in self.encoder.config:  # a decoder used as an encoder keeps no cache
            kwargs["use_cache"] = False
        h = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **kwargs
        ).last_hidden_state  # (B, T, H)
        t = attention_mask.shape[1]
        last = (attention_mask * torch.arange(t, device=attention_mask.device)).argmax(1)  # (B,)
        pooled = h[torch.arange(h.shape[0], device=h.device), last]  # (B, H)
        return SequenceClassifierOutput(logits=self.score(pooled))  # (B, K)

    def rewards(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rewards (K, B) of a batch of token ids (B, T)."""
        return self(input_ids, attention_mask).logits.T
