"""``rmu``: Representation Misdirection for Unlearning — steer one layer's activations on forget data to a random
direction, keep them on retain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import InvalidRequest
from ..training.loop import make_optimizer
from ._tools import frozen_copy
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class RMU(Method):
    """RMU (Li et al., The WMDP Benchmark, ICML 2024). With ``h`` the activations after block ``layer``:
    ``|| h(forget) - c * u ||^2 + alpha * || h(retain) - h_original(retain) ||^2`` averaged over tokens, where ``u``
    is a fixed random unit vector and ``c`` scales it relative to the layer's typical activation norm. Only the
    blocks ``layer - update_blocks + 1 .. layer`` are trained, as in the paper (which trains three MLPs)."""

    name: ClassVar[str] = "rmu"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "push one layer's forget activations to a random direction, keep retain activations"
    paper: ClassVar[str] = ("Li et al., The WMDP Benchmark: Measuring and Reducing Malicious Use with Unlearning, "
                            "ICML 2024")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain", "hidden_states"})

    @dataclass
    class Config(FineTuneConfig):
        """RMU settings."""

        epochs: int = option(3, "passes over the retain set (forget batches cycle alongside)", low=1)
        lr: float = lr_option(3e-3)
        layer: int = option(-1, "block whose output is steered (negative counts from the last block)")
        update_blocks: int = option(1, "how many blocks up to `layer` are trained", low=1)
        steering: float = option(4.0, "c: the target's norm, in units of the layer's mean activation norm on forget "
                                      "data", positive=True)
        alpha: float = option(10.0, "weight of the retain activation-matching term", low=0)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        blocks = task.blocks(model)
        layer = cfg.layer if cfg.layer >= 0 else len(blocks) + cfg.layer
        if not 0 <= layer < len(blocks):
            raise InvalidRequest(f"rmu: layer {cfg.layer} does not exist; the model has {len(blocks)} blocks")
        before = {id(p): p.requires_grad for p in model.parameters()}
        trained = [p for b in blocks[max(0, layer - cfg.update_blocks + 1):layer + 1] for p in b.parameters()
                   if before[id(p)]]  # under LoRA only the adapters were trainable, and stay the only ones
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trained:
            p.requires_grad_(True)
        original = frozen_copy(model)
        with torch.no_grad():
            hidden, mask = task.hidden_states(model, next(iter(request.loader("forget"))), layer)
            scale = hidden.norm(dim=-1)[mask.bool()].mean()
        direction = torch.rand(hidden.shape[-1], generator=torch.Generator().manual_seed(request.seed), device="cpu")
        target = (cfg.steering * scale * direction / direction.norm()).to(hidden.device)
        forget_batches = request.cycle("forget")
        optimizer = make_optimizer(trained, request.train, lr=cfg.lr)

        def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            mask = mask.float()
            return (values * mask).sum() / mask.sum().clamp(min=1)

        def loss(m: nn.Module, retain_batch: dict[str, torch.Tensor]) -> torch.Tensor:
            h_f, mask_f = task.hidden_states(m, next(forget_batches), layer)
            value = token_mean((h_f - target).square().mean(-1), mask_f)
            if cfg.alpha:
                h_r, mask_r = task.hidden_states(m, retain_batch, layer)
                with torch.no_grad():
                    h_o, _ = task.hidden_states(original, retain_batch, layer)
                value = value + cfg.alpha * token_mean((h_r - h_o).square().mean(-1), mask_r)
            return value

        try:
            self.fit(model, request, request.loader("retain"), loss, optimizer, epochs=cfg.epochs)
        finally:
            for p in model.parameters():
                p.requires_grad_(before[id(p)])
        return model
