"""``ssd``: selective synaptic dampening, a retraining-free edit of the weights the forget set relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ._tools import squared_gradients
from .base import Method, MethodConfig, UnlearnRequest, option
from .registry import register


@register
class SSD(Method):
    """Selective Synaptic Dampening (Foster et al., AAAI 2024). With diagonal importances ``I_f`` (forget) and
    ``I_d`` (the training data, estimated on retain), every weight with ``I_f > alpha * I_d`` is multiplied by
    ``min(lambda * I_d / I_f, 1)``. No gradient steps: one pass over each set."""

    name: ClassVar[str] = "ssd"
    family: ClassVar[str] = "parameter-level"
    summary: ClassVar[str] = "dampen weights far more important to the forget set than to the rest (no training)"
    paper: ClassVar[str] = ("Foster et al., Fast Machine Unlearning Without Retraining Through Selective Synaptic "
                            "Dampening, AAAI 2024")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain"})

    @dataclass
    class Config(MethodConfig):
        """SSD settings (the paper uses alpha 10, lambda 1; alpha 40 keeps retain accuracy on the bundled digits)."""

        alpha: float = option(40.0, "selection threshold: dampen where I_forget > alpha * I_data", low=0)
        dampening: float = option(1.0, "lambda: dampen to lambda * I_data / I_forget", low=0)
        batch_size: int = option(32, "batch size of the importance estimates", low=1)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        cfg = self.config
        i_forget = squared_gradients(model, request.task, request.forget, cfg.batch_size)
        i_data = squared_gradients(model, request.task, request.retain, cfg.batch_size)
        changed = 0
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n not in i_forget:
                    continue
                selected = i_forget[n] > cfg.alpha * i_data[n]
                factor = (cfg.dampening * i_data[n] / i_forget[n].clamp_min(1e-30)).clamp(max=1.0)
                p.mul_(torch.where(selected, factor, torch.ones_like(factor)))
                changed += int(selected.sum())
        self.report_ = {"dampened_weights": changed}
        return model
