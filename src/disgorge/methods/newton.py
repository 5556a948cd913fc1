"""``newton``: one Newton (influence) step on the retain objective; certified removal for L2-regularised
logistic regression."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import InvalidRequest
from ..training.loop import FitResult
from .base import Method, MethodConfig, UnlearnRequest, option
from .registry import register


class ResidualTooLarge(InvalidRequest):
    """The Newton step left a gradient residual above the configured bound: removal is not certified."""


@register
class Newton(Method):
    """One Newton step (Guo et al., ICML 2020, certified removal; Koh & Liang's influence functions).

    For a model whose only trainable layer is linear, trained with L2 weight decay ``lambda`` (the recipe's
    ``weight_decay``), the retain objective ``L(w) = mean CE over retain + lambda/2 ||w||^2`` is strongly convex.
    The step ``w' = w - H^-1 grad L(w)`` is solved by conjugate gradients with exact Hessian-vector products. The
    gradient residual ``||grad L(w')||`` is then measured exactly and reported (``report_``). Guo et al.'s formal
    (epsilon, delta) certificate also needs objective perturbation at training time, which disgorge's recipes do not
    add: the residual bound ``max_residual`` is the user's budget, and above it the method refuses and nothing is
    written.
    """

    name: ClassVar[str] = "newton"
    family: ClassVar[str] = "parameter-level"
    summary: ClassVar[str] = ("one Newton/influence step on the retain objective of an L2 logistic model; reports the "
                              "gradient residual and refuses above a bound")
    paper: ClassVar[str] = "Guo et al., Certified Data Removal from Machine Learning Models, ICML 2020"
    needs: ClassVar[frozenset[str]] = frozenset({"retain", "linear_model"})

    @dataclass
    class Config(MethodConfig):
        """Newton-step settings."""

        max_residual: float = option(1e-3, "refuse when ||grad of the retain objective|| after the step exceeds this",
                                     low=0)
        steps: int = option(1, "Newton steps (1 is Guo et al.'s removal; more for a large removal)", low=1)
        cg_iters: int = option(200, "conjugate-gradient iterations for H^-1 g", low=1)
        cg_tol: float = option(1e-9, "relative conjugate-gradient tolerance", low=0)

    def _check(self, request: UnlearnRequest) -> None:
        """Refuse unless the recipe has L2 weight decay (the objective must be strongly convex)."""
        if request.train.optimizer == "adamw":
            raise InvalidRequest("method 'newton' needs L2 regularisation in the objective; adamw's decoupled weight "
                                 "decay is not, so retrain with optimizer adam or sgd")
        if request.train.weight_decay <= 0:
            raise InvalidRequest("method 'newton' needs a model trained with L2 regularisation "
                                 "(recipe train.weight_decay > 0) so that the objective is strongly convex")

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        params = [p for p in model.parameters() if p.requires_grad]
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if len(linear) != 1 or sum(p.numel() for p in params) != sum(p.numel() for p in linear[0].parameters()):
            raise InvalidRequest("method 'newton' needs a linear model (recipe model.family = 'linear'); for deep "
                                 "networks its step is uncertified: use another method")
        task, lam = request.task, float(request.train.weight_decay)
        batch = next(iter(request.task.loader(request.retain, len(request.retain), shuffle=False)))

        def objective() -> torch.Tensor:
            reg = sum((p ** 2).sum() for p in params)
            return task.per_example_loss(model, batch).mean() + 0.5 * lam * reg

        def hvp(v: torch.Tensor) -> torch.Tensor:
            g = _flat(torch.autograd.grad(objective(), params, create_graph=True))
            return _flat(torch.autograd.grad(g @ v, params)).detach()

        before = float(_flat(torch.autograd.grad(objective(), params)).norm())
        iters, moved = 0, 0.0
        for _ in range(self.config.steps):
            grad = _flat(torch.autograd.grad(objective(), params)).detach()
            step, n = _conjugate_gradient(hvp, grad, self.config.cg_iters, self.config.cg_tol)
            iters, moved = iters + n, moved + float(step.norm())
            with torch.no_grad():
                offset = 0
                for p in params:
                    p.sub_(step[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
        residual = float(_flat(torch.autograd.grad(objective(), params)).norm())
        self.report_ = {"gradient_residual": residual, "residual_bound": self.config.max_residual,
                        "gradient_norm_before": before, "newton_steps": self.config.steps, "cg_iterations": iters,
                        "step_norm": moved}
        if residual > self.config.max_residual:
            raise ResidualTooLarge(
                f"newton: gradient residual {residual:.3g} exceeds the bound {self.config.max_residual:g}; removal is "
                "not certified. Raise -o max_residual=..., train longer to reach the optimum, or use another method")
        self.fit_result_ = FitResult(steps=self.config.steps, stopped="done")
        return model


def _flat(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _conjugate_gradient(hvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int,
                        tol: float) -> tuple[torch.Tensor, int]:
    """Solve ``H x = b`` for symmetric positive-definite ``H`` given only ``hvp(v) = H v``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    threshold = (tol * (b @ b)).clamp_min(1e-30)
    for i in range(iters):
        hp = hvp(p)
        alpha = rs / (p @ hp)
        x += alpha * p
        r -= alpha * hp
        rs_new = r @ r
        if rs_new <= threshold:
            return x, i + 1
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, iters
