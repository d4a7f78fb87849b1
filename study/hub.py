"""Loading models, tokenizers and data from a Hugging Face id or a local directory.

This is the code path of the `paper` profile and of anyone who points `sources` in `params.yaml`
at real models and data; the embedded world saves ordinary Hugging Face directories, so its
artifacts are loaded by the same functions. Nothing here reaches the network unless a source is a
hub id (and the machine can reach the hub).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from study.config import Params
from study.device import resolve
from study.io import MissingArtifactError
from study.world.gold import EmbeddedGold, GoldReward, GoldScores

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def _looks_local(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or Path(source).exists()
        or Path(source).suffix in TABLE_SUFFIXES
    )


def _check_local(source: str, key: str) -> None:
    if _looks_local(source) and not Path(source).expanduser().exists():
        raise MissingArtifactError(f"{key}: {source!r} does not exist (a local path was given)")


def _wrap(key: str, source: str, e: Exception) -> RuntimeError:
    return RuntimeError(f"{key}: could not load {source!r}: {type(e).__name__}: {e}")


def load_tokenizer(source: str, key: str = "sources.tokenizer") -> PreTrainedTokenizerBase:
    """AutoTokenizer from an id or directory; a tokenizer without pad uses EOS for padding."""
    _check_local(source, key)
    try:
        tok = AutoTokenizer.from_pretrained(
            str(Path(source).expanduser()) if _looks_local(source) else source
        )
    except Exception as e:
        raise _wrap(key, source, e) from e
    if tok.eos_token_id is None:
        raise ValueError(f"{key}: tokenizer {source!r} has no end-of-sequence token")
    if tok.pad_token_id is None:  # common for GPT-2/Pythia; responses are cut at EOS, so harmless
        tok.pad_token = tok.eos_token
    return tok


def load_policy(
    source: str, key: str = "sources.policy", dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """AutoModelForCausalLM from an id or directory."""
    _check_local(source, key)
    try:
        path = str(Path(source).expanduser()) if _looks_local(source) else source
        return (
            AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            if dtype
            else AutoModelForCausalLM.from_pretrained(path)
        )
    except Exception as e:
        raise _wrap(key, source, e) from e


def load_table(
    source: str, key: str, columns: Sequence[str], split: str | None = "train"
) -> pd.DataFrame:
    """A table from a Parquet/CSV/JSON(L) file, a `datasets.save_to_disk` directory, a directory
    of data files, or a hub dataset id; checks that `columns` are present."""
    _check_local(source, key)
    path = Path(source).expanduser()
    try:
        if path.is_file():
            kind = TABLE_SUFFIXES.get(path.suffix)
            if kind is None:
                raise ValueError(
                    f"unsupported file type {path.suffix!r} (use {', '.join(TABLE_SUFFIXES)})"
                )
            df = {"parquet": pd.read_parquet, "csv": pd.read_csv}.get(
                kind, lambda p: pd.read_json(p, lines=p.suffix == ".jsonl")
            )(path)
        else:
            import datasets  # imported here: slow to import and only this path needs it

            if path.is_dir() and (
                (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
            ):
                ds = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset(str(path) if path.is_dir() else source)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"no split {split!r} (has: {', '.join(ds)})")
                ds = ds[split]
            df = ds.to_pandas()
    except Exception as e:
        raise _wrap(key, source, e) from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{key}: {source!r} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})"
        )
    return df


class HubGold:
    """A gold reward from a sequence-classification reward model (e.g. a 1B+ RM on a GPU), scored
    in float32 whatever its checkpoint's dtype and the stage's precision."""

    components: tuple[str, ...] = ("model",)

    def __init__(self, source: str, template: str, batch_size: int = 32, device: str = "cpu"):
        _check_local(source, "sources.gold")
        try:
            path = str(Path(source).expanduser()) if _looks_local(source) else source
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch.float32
            ).eval()
        except Exception as e:
            raise _wrap("sources.gold", source, e) from e
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"sources.gold: {source!r} has num_labels={self.model.config.num_labels}; a gold reward model has 1"
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device
        self.model.to(self.device)
        self.template = template
        self.batch_size = batch_size

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool] | None = None,
    ) -> GoldScores:
        """The model's scalar score of each templated prompt + response; `finished` is not used."""
        texts = [
            f"{self.template.format(prompt=p)} {r}" for p, r in zip(prompts, responses, strict=True)
        ]
        # float32 even inside a stage's bfloat16 autocast: gold is the measure, not the model
        with torch.autocast(self.model.device.type, enabled=False):
            out = self._score(texts)
        total = torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
        return GoldScores(total=total, contributions={"model": total.copy()})

    def _score(self, texts: list[str]) -> list[torch.Tensor]:
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[s : s + self.batch_size], return_tensors="pt", padding=True, truncation=True
            )
            out.append(self.model(**enc.to(self.device)).logits[:, 0].float().cpu())
        return out


def make_gold(params: Params) -> GoldReward:
    """The gold reward named by `sources.gold`: the embedded world's, or a hub reward model."""
    if params.sources.gold == "embedded":
        return EmbeddedGold(params.gold)
    device = resolve(params.placement).device
    return HubGold(params.sources.gold, params.sources.prompt_template, device=str(device))
