"""``salun``: random labelling restricted to the weights most salient for the forget set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .base import Method, UnlearnRequest, option
from .random_label import GuardedRandomLabelOptions, random_label_fit
from .registry import register


@register
class SalUn(Method):
    """SalUn (Fan et al., ICLR 2024): weight saliency = |gradient of the forget loss|; the top ``ratio`` of weights
    (over the whole network) form a mask, and random-label unlearning updates only those weights."""

    name: ClassVar[str] = "salun"
    family: ClassVar[str] = "parameter-level"
    summary: ClassVar[str] = "random labelling on the weights whose forget-loss gradient is largest"
    paper: ClassVar[str] = ("Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency, "
                            "ICLR 2024")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain", "labels"})

    @dataclass
    class Config(GuardedRandomLabelOptions):
        """SalUn settings: random labelling's, plus the share of weights in the mask."""

        ratio: float = option(0.5, "share of weights in the saliency mask", low=0, high=1)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        self.mask_ = self.saliency_mask(model, request)
        mask = self.mask_

        def masked(m: nn.Module) -> None:
            for n, p in m.named_parameters():
                if p.grad is not None:
                    p.grad.mul_(mask[n])

        # weight decay would move the masked-out weights after the gradient mask: switch it off here
        unmasked = dataclasses.replace(request, train=dataclasses.replace(request.train, weight_decay=0.0))
        random_label_fit(self, model, unmasked, after_backward=masked)
        return model

    def saliency_mask(self, model: nn.Module, request: UnlearnRequest) -> dict[str, torch.Tensor]:
        """1 for the ``ratio`` share of weights with the largest |grad of the forget loss|, else 0."""
        task = request.task
        model.zero_grad(set_to_none=True)
        for batch in request.loader("forget", shuffle=False):
            task.per_example_loss(model, batch).sum().backward()
        grads = {n: p.grad.detach().abs() if p.grad is not None else torch.zeros_like(p)
                 for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        flat = torch.cat([g.flatten() for g in grads.values()])
        k = round(self.config.ratio * flat.numel())
        if k == 0:
            return {n: torch.zeros_like(g) for n, g in grads.items()}
        threshold = torch.topk(flat, k, sorted=True).values[-1]
        return {n: (g >= threshold).to(g.dtype) for n, g in grads.items()}
