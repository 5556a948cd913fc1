"""Differentially private training of a recipe (DP-SGD through opacus): the recipe's ``[privacy]`` table.

Each optimiser step samples every training record independently with probability ``q`` (Poisson sampling), clips
each record's gradient to ``max_grad_norm``, adds Gaussian noise of ``noise_multiplier * max_grad_norm`` and steps;
the noise multiplier is the smallest that keeps the accountant's epsilon at ``delta`` within the recipe's target
after ``epochs / q`` steps. The sampling and the noise come from generators seeded by the recipe, so the same recipe
on the same records gives the same weights on the CPU, bit for bit (opacus's ``secure_mode``, a cryptographically
secure generator that cannot be seeded, is off).
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import DisgorgeError, InvalidRequest
from ..spec import PrivacySpec, Recipe
from ..tasks import Batch, RecordDataset, Task
from .loop import FitResult, fit, make_optimizer

log = logging.getLogger(__name__)

ACCOUNTANT = "rdp"
"""The privacy accountant (Rényi DP, Mironov 2017, as opacus computes it for the sampled Gaussian mechanism)."""
ALPHAS = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 512, 1024]
"""The Rényi orders the accountant tries: opacus's defaults and larger ones, which few-step, large-epsilon budgets
need for a tight bound."""
NOISE_SEED_OFFSET = 0x9E3779B9
"""The noise generator is seeded with ``recipe.seed + NOISE_SEED_OFFSET``: a stream apart from the sampling one."""
_QUIET = (
    "Secure RNG turned off",  # seeded on purpose: see the module's docstring
    "Optimal order is the largest alpha",  # the noise search tries tiny noise, for which any order is too small
    "Full backward hook is firing",  # the first layer's input needs no gradient; its per-example one is right
)
_ADVICE = {
    "BatchNorm": "replace BatchNorm by GroupNorm or LayerNorm (opacus.validators.ModuleValidator.fix does this)",
    "InstanceNorm": "set track_running_stats=False on the InstanceNorm layers",
    "LSTM": "use opacus.layers.DPLSTM", "GRU": "use opacus.layers.DPGRU", "RNN": "use opacus.layers.DPRNN",
    "MultiheadAttention": "use opacus.layers.DPMultiheadAttention",
}


class PrivacyUnsupported(InvalidRequest):
    """A network that opacus cannot train with differential privacy (a layer that mixes the examples of a batch, or
    one it computes no per-example gradient for)."""


def require_opacus() -> None:
    """Raise a one-line error when opacus (the ``dp`` extra) is not installed."""
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise DisgorgeError("a recipe's [privacy] table trains with opacus, which is not installed: "
                            "pip install 'disgorge[dp]'") from None


def check_private(task: Task, recipe: Recipe, model: nn.Module) -> None:
    """Refuse, with one line naming the layers and what to do, a network opacus cannot train privately
    (``opacus.validators.ModuleValidator``: batch normalisation, plain recurrent and attention layers)."""
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # the validator also asks for training mode, which training sets anyway
    try:
        if not ModuleValidator.validate(model, strict=False):
            return
        bad = [(name, type(m).__name__) for name, m in model.named_modules()
               if type(m) in ModuleValidator.VALIDATORS and ModuleValidator.VALIDATORS[type(m)](m)]
    finally:
        model.train(was_training)
    layers = ", ".join(f"{kind} ('{name}')" for name, kind in bad[:5]) + (f" and {len(bad) - 5} more"
                                                                         if len(bad) > 5 else "")
    advice = sorted({text for _, kind in bad for key, text in _ADVICE.items() if key in kind})
    families = "linear, mlp or cnn" if task.name == "classification" else "gpt2"
    raise PrivacyUnsupported(
        f"recipe {recipe.name!r}: opacus cannot train this {recipe.model.family!r} network with differential "
        f"privacy: {layers or 'its layers'} mix the examples of a batch or have no per-example gradient; "
        f"{'; '.join(advice) + ', or ' if advice else ''}use model family {families}, or drop [privacy]")


def fit_private(task: Task, recipe: Recipe, data: RecordDataset, info: dict[str, Any]
                ) -> tuple[nn.Module, FitResult]:
    """Build ``recipe``'s network and train it with DP-SGD at its ``[privacy]`` budget; bit-identical for the same
    inputs on the same CPU. The model returned is the plain network (opacus's wrapper and hooks removed), so its
    state dict loads into ``task.build_model`` again; ``result.info["privacy"]`` holds the epsilon spent.

    Runs on the CPU, in one process, without the task's accelerator (opacus computes per-example gradients
    itself). An empty Poisson batch still takes a step of pure noise, as DP-SGD must.
    """
    privacy = recipe.privacy
    if privacy is None:
        raise InvalidRequest(f"recipe {recipe.name!r} has no [privacy] table")
    require_opacus()
    from opacus import PrivacyEngine

    with torch.random.fork_rng(), warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        torch.manual_seed(recipe.seed)
        model = task.build_model(recipe.model, info)
        check_private(task, recipe, model)
        loader = _poisson_loader(task, data, recipe.train.batch_size, torch.Generator().manual_seed(recipe.seed))
        sigma = noise_multiplier(privacy, len(loader), recipe.train.epochs, recipe.name)
        if privacy.delta * len(data) >= 1:
            log.warning("recipe %s: privacy.delta %g is not below 1 / %d records, a guarantee that allows leaking "
                        "whole records", recipe.name, privacy.delta, len(data))
        engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=False)
        positions = _per_example_positions(model)
        try:
            wrapped, optimizer, _ = engine.make_private(
                module=model, optimizer=make_optimizer(model.parameters(), recipe.train), data_loader=loader,
                noise_multiplier=sigma, max_grad_norm=privacy.max_grad_norm, poisson_sampling=False,
                noise_generator=torch.Generator().manual_seed(recipe.seed + NOISE_SEED_OFFSET))
            try:
                result = fit(model, loader, _PrivateLoss(task, data, loader.collate_fn), optimizer,
                             epochs=recipe.train.epochs, description=f"train {recipe.name} (DP)")
            except (RuntimeError, ValueError, NotImplementedError) as exc:
                raise PrivacyUnsupported(f"recipe {recipe.name!r}: private training failed inside opacus: "
                                         f"{_first_line(exc)}") from exc
            finally:
                wrapped.to_standard_module()  # removes opacus's hooks and per-example gradients
        finally:
            if positions is not None:
                positions.remove()
        epsilon = float(engine.accountant.get_epsilon(delta=privacy.delta, alphas=ALPHAS))
    _strip(model)
    model.eval()
    result.info["privacy"] = {
        "epsilon": round(epsilon, 4), "target_epsilon": privacy.epsilon, "delta": privacy.delta,
        "max_grad_norm": privacy.max_grad_norm, "noise_multiplier": round(sigma, 6),
        "sample_rate": round(1 / len(loader), 6), "accountant": ACCOUNTANT}
    log.info("trained %s with DP-SGD: epsilon %.4f (target %g) at delta %g, noise multiplier %.4f", recipe.name,
             epsilon, privacy.epsilon, privacy.delta, sigma)
    return model, result


def noise_multiplier(privacy: PrivacySpec, steps_per_epoch: int, epochs: int, name: str = "recipe") -> float:
    """The smallest noise multiplier (within opacus's search tolerance) whose accountant epsilon at ``privacy.delta``
    after ``epochs * steps_per_epoch`` steps at sample rate ``1 / steps_per_epoch`` stays within
    ``privacy.epsilon``; a budget no noise can meet is a one-line error."""
    try:
        return _sigma(float(privacy.epsilon), float(privacy.delta), steps_per_epoch, epochs)
    except ValueError as exc:
        if "budget is too low" not in str(exc):
            raise
        raise InvalidRequest(f"recipe {name!r}: privacy.epsilon {privacy.epsilon:g} cannot be met at delta "
                             f"{privacy.delta:g} over {epochs} epoch(s) of {steps_per_epoch} steps: raise epsilon, "
                             "train fewer epochs or use a larger batch_size") from None


@functools.lru_cache(maxsize=64)
def _sigma(epsilon: float, delta: float, steps_per_epoch: int, epochs: int) -> float:
    """opacus's binary search for the noise multiplier (about a second; a retrained reference or a second run of the
    same recipe asks again)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=1 / steps_per_epoch,
                                      steps=epochs * steps_per_epoch, accountant=ACCOUNTANT, alphas=ALPHAS))


def _poisson_loader(task: Task, data: RecordDataset, batch_size: int, generator: torch.Generator) -> DataLoader:
    """A loader of ``ceil(n / batch_size)`` Poisson batches per epoch (each record in each batch with probability
    ``1 / steps``, drawn from ``generator``), collated as the task's own loader does; an empty draw is a batch with
    no rows."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    plain = task.loader(data, batch_size, shuffle=False)
    steps = len(plain)
    sampler = UniformWithReplacementSampler(num_samples=len(data), sample_rate=1 / steps, generator=generator,
                                            steps=steps)
    collate = plain.collate_fn
    return DataLoader(data, batch_sampler=sampler, collate_fn=_EmptySafe(collate, collate([data[0]])))


class _EmptySafe:
    """A collate function that turns an empty draw into a batch of the usual structure with no rows."""

    def __init__(self, collate: Callable[[list[Any]], Any], template: Any) -> None:
        self.collate, self.empty = collate, _no_rows(template)

    def __call__(self, items: list[Any]) -> Any:
        return self.collate(items) if items else self.empty


def _no_rows(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, Mapping):
        return {k: _no_rows(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_no_rows(v) for v in batch)
    return batch


class _PrivateLoss:
    """The mean per-example loss of a batch. An empty Poisson batch must still take a step (of noise alone), through
    opacus's per-example hooks: its loss is one training record's times zero, a loss of 0 with a graph whose
    per-example gradient is exactly zero (a plain mean over no rows would be NaN, which the loop takes for divergence,
    and the task may not run a batch with no rows)."""

    def __init__(self, task: Task, data: RecordDataset, collate: Callable[[list[Any]], Batch]) -> None:
        self.task, self.placeholder = task, collate([data[0]])

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if self.task.batch_size(batch) == 0:
            return self.task.per_example_loss(model, self.placeholder).sum() * 0.0
        return self.task.per_example_loss(model, batch).mean()


def _per_example_positions(model: nn.Module) -> Any:
    """Hugging Face language models look up their position embeddings with one row of positions broadcast over the
    batch, which gives opacus a per-example gradient of batch size 1; hand them the positions once per example
    (the same values). Returns the hook's handle, or None for a network without ``position_ids``."""
    for module in model.modules():
        try:
            parameters = inspect.signature(module.forward).parameters
        except (TypeError, ValueError):
            continue
        if "position_ids" in parameters and "input_ids" in parameters:
            return module.register_forward_pre_hook(_expand_positions, with_kwargs=True)
    return None


def _expand_positions(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                      ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ids = kwargs.get("input_ids")
    if kwargs.get("position_ids") is None and isinstance(ids, torch.Tensor) and ids.dim() == 2:
        kwargs["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    return args, kwargs


def _strip(model: nn.Module) -> None:
    """Drop what opacus's optimiser left on the parameters (summed gradients) and the gradients themselves."""
    for p in model.parameters():
        for attr in ("summed_grad", "grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["ACCOUNTANT", "ALPHAS", "PrivacyUnsupported", "check_private", "fit_private", "noise_multiplier",
           "require_opacus"]
