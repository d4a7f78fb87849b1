"""Where a stage's models run and in what precision: `placement` in params.yaml.

Every model stage calls `resolve(params.placement)` before it reads anything, so a device this
machine lacks, or a precision the device cannot compute in, stops it with the key named rather
than an hour later. Then models go to `Placement.device` once (`Placement.put`), inputs follow
the model they feed (`on`), and forward passes run under `Placement.autocast()`, which is no
context at all in float32: on the CPU default a stage computes exactly what it computes with no
placement code. Weights, optimiser states, rewards and the gold reward stay float32, and what
leaves a model for a table is a float32 CPU tensor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from study.config import ConfigError
from study.config.run import PlacementConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    """A resolved `placement`: a torch device, the autocast dtype, and the policy's checkpointing."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """Forward passes in `dtype` (bfloat16 autocast), or nothing in float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def policy_kwargs(self) -> dict[str, str]:
        """`from_pretrained` arguments for a policy that reads left-padded batches: eager attention
        in reduced precision. With bfloat16 autocast on CUDA, PyTorch's fused attention gives NaN
        gradients from the padding rows that see no key (the default world's PPO: a NaN gradient
        norm at step 29; 60 finite steps with eager attention, benchmarks/gpu_stages.py and
        docs/scaling.md); float32 keeps the model's default."""
        return {} if self.dtype == torch.float32 else {"attn_implementation": "eager"}

    def put(self, model: nn.Module) -> nn.Module:
        """`model` on this device (in place, as `nn.Module.to` does); its weights keep their dtype."""
        return model.to(self.device)

    def synchronize(self) -> None:
        """Wait for the device's queued work (a timing that ends here measures the work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __str__(self) -> str:
        return f"{self.device} in {str(self.dtype).removeprefix('torch.')}"


CPU = Placement(torch.device("cpu"))


def _torch_build() -> str:
    return f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})"


def _cuda(index: int | None, key: str) -> torch.device:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key}: {'cuda' if index is None else f'cuda:{index}'!r}, but this machine has no "
            f"CUDA device that {_torch_build()} can use; use placement.device: cpu or auto, or "
            "install a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ConfigError(
            f"{key}: 'cuda:{index}', but this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index if index is not None else torch.cuda.current_device())


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve(cfg: PlacementConfig) -> Placement:
    """The device and dtype `cfg` names, checked against this machine: a `ConfigError` naming the
    key where the device is absent or cannot compute in the dtype."""
    base, _, index = cfg.device.partition(":")
    if base == "auto":
        if torch.cuda.is_available():
            device = _cuda(None, "placement.device")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    elif base == "cuda":
        device = _cuda(int(index) if index else None, "placement.device")
    elif base == "mps":
        if not _mps_available():
            raise ConfigError(
                f"placement.device: 'mps', but {_torch_build()} sees no Apple MPS device here; "
                "use placement.device: cpu or auto"
            )
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    dtype = _DTYPES[cfg.dtype]
    if dtype == torch.bfloat16 and device.type == "cuda":
        with torch.cuda.device(device):
            if not torch.cuda.is_bf16_supported(including_emulation=False):
                raise ConfigError(
                    f"placement.dtype: 'bfloat16', but {torch.cuda.get_device_name(device)} "
                    "cannot compute in it; use placement.dtype: float32"
                )
    return Placement(device, dtype, cfg.gradient_checkpointing)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters, or for a
    scorer that is not a module)."""
    for p in getattr(model, "parameters", tuple)():
        return p.device
    return torch.device("cpu")


def on(model: nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` on `model`'s device: inputs follow the model they feed (no copy where they are)."""
    device = model_device(model)
    return tuple(t.to(device) for t in tensors)


def checkpoint_activations(model: nn.Module) -> int:
    """Turn on activation (gradient) checkpointing in every Hugging Face model inside `model`:
    their blocks recompute activations in the backward pass instead of keeping them (while
    training only, as transformers does). Returns how many models were switched."""
    from transformers import PreTrainedModel

    n = 0
    for m in model.modules():
        if not (isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing):
            continue
        # transformers 5 names it activation_checkpointing_*, earlier releases gradient_*
        if hasattr(m, "activation_checkpointing_enable"):
            if not m.is_activation_checkpointing:
                kwargs = {"activation_checkpointing_kwargs": {"use_reentrant": False}}
                m.activation_checkpointing_enable(**kwargs)
                n += 1
        elif not m.is_gradient_checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            n += 1
    return n
