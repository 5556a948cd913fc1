"""``undial``: self-distillation from the original model with the forgotten target's logit lowered (UNDIAL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidRequest
from ..tasks.base import Batch
from ._tools import check_token_logits, fit_forget_with_retain, frozen_copy, masked_mean, token_logits
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


def adjusted_teacher(teacher_logits: torch.Tensor, targets: torch.Tensor, strength: float) -> torch.Tensor:
    """UNDIAL's distillation target: ``softmax(z - strength * onehot(target))`` at each position (``[..., V]``)."""
    shift = F.one_hot(targets, teacher_logits.shape[-1]).to(teacher_logits.dtype)
    return F.softmax(teacher_logits - strength * shift, dim=-1)


@register
class UNDIAL(Method):
    """UNDIAL (Dong et al., NAACL 2025). The teacher is the frozen original model with the logit of each forget target
    (each answer token of a language model, the label of a classifier) lowered by ``strength`` (the paper's gamma):
    ``q = softmax(z_orig - gamma * onehot(y))``. The student minimises the cross-entropy ``-sum_v q_v log p_theta(v)``
    to that adjusted distribution at every forget target, so the target's probability falls while the rest of the
    distribution stays the original's: a bounded objective, unlike gradient ascent. The paper distils on the forget
    set alone (``retain_weight = 0``); by default the retain cross-entropy is added beside it, which the small bundled
    language models need to keep their retain answers."""

    name: ClassVar[str] = "undial"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "distil the original's outputs with the forgotten target's logit lowered, on forget"
    paper: ClassVar[str] = ("Dong et al., UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in "
                            "Large Language Models, NAACL 2025")
    needs: ClassVar[frozenset[str]] = frozenset({"forget"})

    @dataclass
    class Config(FineTuneConfig):
        """UNDIAL settings."""

        epochs: int = option(30, "passes over the forget set (retain batches cycle alongside)", low=1)
        lr: float = lr_option(3e-4)
        strength: float = option(10.0, "how far the target's logit is lowered in the teacher (gamma)", positive=True)
        retain_weight: float = option(1.0, "weight of the retain cross-entropy term (0: the paper's forget-only "
                                           "distillation)", low=0)

    def _check(self, request: UnlearnRequest) -> None:
        """Per-target scores are needed, and retain data when the retain term is on."""
        check_token_logits(self, request.task)
        if self.config.retain_weight and len(request.retain) == 0:
            raise InvalidRequest(f"method {self.name!r} with retain_weight > 0 needs retain data and the retain set is "
                                 "empty")

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, strength, teacher = request.task, self.config.strength, frozen_copy(model)

        def forget_loss(m: nn.Module, batch: Batch) -> torch.Tensor:
            with torch.no_grad():
                t_logits, targets, _ = token_logits(task, teacher, batch)
                soft = adjusted_teacher(t_logits, targets, strength)
            logits, _, mask = token_logits(task, m, batch)
            cross_entropy = -(soft * F.log_softmax(logits, dim=-1)).sum(-1)
            return masked_mean(cross_entropy, mask)

        return fit_forget_with_retain(self, model, request, forget_loss, over="forget")
