"""LoRA adapters (``peft``) on any model: fine-tune methods train only low-rank adapters and merge them back into
the weights afterwards (a plain model of the same architecture); per-shard adapters (SISA with ``adapter_rank``) keep
them, one per shard over a frozen base."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidRequest


def _inner(model: nn.Module) -> tuple[nn.Module, str | None]:
    """The module LoRA wraps: a language model's transformers network, or the model itself."""
    return (model.net, "net") if hasattr(model, "net") else (model, None)


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    """Freeze ``model`` and add rank-``rank`` LoRA adapters (alpha = 2 * rank) to every linear layer except the
    output head."""
    from peft import LoraConfig, get_peft_model

    inner, attr = _inner(model)
    # GPT-2 stores its projections transposed (transformers' Conv1D); peft must be told so.
    transposed = any(type(m).__name__ == "Conv1D" for m in inner.modules())
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                        fan_in_fan_out=transposed)
    try:
        wrapped = get_peft_model(inner, config)
    except ValueError as exc:
        raise InvalidRequest(f"cannot add LoRA adapters to {type(inner).__name__}: {exc}") from None
    if attr is None:
        return wrapped
    setattr(model, attr, wrapped)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights and drop them (the inverse of :func:`add_lora`'s wrapping)."""
    inner, attr = _inner(model)
    merged = inner.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    if attr is None:
        return merged
    setattr(model, attr, merged)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights alone (what a frozen base's shard learned)."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}
