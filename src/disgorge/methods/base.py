"""The Method protocol: one unlearning algorithm, a typed ``Config`` and one ``unlearn(model, request)`` entry."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import sys
import time
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import tomli_w
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import DisgorgeError, InvalidRequest
from ..models import adapters
from ..spec import TrainSpec
from ..tasks import RecordDataset, Task
from ..training.loop import FitResult, Guard, LossFn, fit, restore, snapshot, total_steps, warm_up

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


# Needs that are about the request's data or the model, checked by ``check``/the method, not task capabilities.
DATA_NEEDS = frozenset({"retain", "forget", "linear_model"})


class ConfigError(DisgorgeError):
    """A method configuration value that is out of range, of the wrong type, or unknown."""


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           choices: tuple[Any, ...] | None = None, positive: bool = False) -> Any:
    """A config field with help text and a range (``low``/``high`` inclusive; ``positive``: strictly > 0) that
    ``MethodConfig.__post_init__`` checks beside the field's declared type."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices,
                                            "positive": positive})


def lr_option(default: float) -> Any:
    """The learning-rate option every gradient method has (used with the recipe's optimiser)."""
    return option(default, "learning rate (the recipe's optimiser)", positive=True)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
OPTION_TYPES = tuple(_TYPE_NAMES)  # the types an option field may declare (each optionally ``| None``)


def _accepts(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


@dataclass
class MethodConfig:
    """Base class of every method's ``Config``: typed fields with help text, each value checked on creation
    against the field's declared type (``int``, ``float``, ``str``, ``bool``, optionally ``| None``) and range.

    Options come in families, so a method takes only the options it uses: :class:`BudgetConfig` for methods that
    run the training loop, :class:`GuardedConfig` for those whose loop the retain guard watches,
    :class:`FineTuneConfig` for fine-tune methods (forget span, LoRA adapters).
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            kind, optional = option_type(hints[f.name])
            if value is None:
                if not optional:
                    raise ConfigError(f"option {f.name} must be set")
                continue
            if not _accepts(kind, value):
                raise ConfigError(f"option {f.name} must be {_TYPE_NAMES.get(kind, kind.__name__)}"
                                  f"{' (finite)' if kind is float else ''}, got {value!r}")
            if kind is float:
                value = float(value)
                setattr(self, f.name, value)
            meta = f.metadata
            if meta.get("positive") and value <= 0:
                raise ConfigError(f"option {f.name} must be > 0, got {value!r}")
            if meta.get("low") is not None and value < meta["low"]:
                raise ConfigError(f"option {f.name} must be >= {meta['low']}, got {value!r}")
            if meta.get("high") is not None and value > meta["high"]:
                raise ConfigError(f"option {f.name} must be <= {meta['high']}, got {value!r}")
            if meta.get("choices") is not None and value not in meta["choices"]:
                raise ConfigError(f"option {f.name} must be one of {', '.join(map(str, meta['choices']))}, "
                                  f"got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        """Build from plain values, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (None fields left out, as TOML has no null)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_toml(self) -> str:
        """TOML text of the config."""
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> MethodConfig:
        """Inverse of :meth:`to_toml`."""
        return cls.from_dict(tomllib.loads(text))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    # -- what the options ask of every run; the families below override ------------------------------
    def check(self, request: UnlearnRequest) -> None:
        """Refuse options this request cannot honour (none here)."""
        return None

    def forget_data(self, request: UnlearnRequest) -> RecordDataset:
        """The forget set the method's loss sees (all of it here)."""
        return request.forget

    def adapter_rank(self) -> int:
        """Rank of the LoRA adapters to train instead of the weights (0: none)."""
        return 0


def option_type(hint: Any) -> tuple[type, bool]:
    """A field's declared type and whether it may be None (``X | None``)."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


@dataclass
class BudgetConfig(MethodConfig):
    """Options of methods whose work runs through the training loop: a step and a time budget."""

    max_steps: int | None = option(None, "stop after this many optimiser steps", low=1)
    max_seconds: float | None = option(None, "stop after this many seconds of unlearning", low=0)
    stop: str = option("target", "stop once the request's decisive figures reach their held-out targets on a sample "
                                 "(target; where the request gives a rule), or always run the whole budget (budget)",
                       choices=("target", "budget"))
    checks: int = option(10, "how many times over its budget the target rule is measured", low=1)
    min_steps: int = option(100, "with a target rule in force, run at least this many steps of budget (more "
                                 "epochs on a small data set; the rule decides when the work is done)", low=0)


@dataclass
class GuardedConfig(BudgetConfig):
    """Options of loop methods watched by the retain guard."""

    max_retain_drop: float = option(5.0, "roll back and stop when accuracy on a retain sample falls more than this "
                                         "many points below the original's (100 turns the guard off)", low=0)


@dataclass
class FineTuneConfig(GuardedConfig):
    """Options of fine-tune methods: which part of a text answer the forget loss covers, and LoRA adapters."""

    forget_span: str = option("answer", "language models: the forget loss covers the whole answer (TOFU) or only "
                                        "its key, the words that make it right, and what follows",
                              choices=("answer", "key"))
    lora_rank: int = option(0, "train only LoRA adapters of this rank (peft), merged into the weights "
                               "afterwards; 0 trains every weight", low=0)

    def check(self, request: UnlearnRequest) -> None:
        """A key span needs text answers."""
        if self.forget_span != "answer" and "text" not in request.task.capabilities:
            raise InvalidRequest(f"forget_span={self.forget_span!r} needs text answers, which task "
                                 f"{request.task.name!r} does not have")

    def forget_data(self, request: UnlearnRequest) -> RecordDataset:
        """The forget set, with answers cut to their key under ``forget_span = "key"``."""
        return request.task.key_span(request.forget) if self.forget_span == "key" else request.forget

    def adapter_rank(self) -> int:
        """``lora_rank``."""
        return self.lora_rank


@dataclass(frozen=True)
class Reading:
    """What a stopping rule measured on the model being unlearned: ``score``, its distance to the request's targets
    in units of their limits (at most 1 on every figure: reached); ``done``, why the work is done (None: go on);
    ``past``, which figure went beyond its target, to the side opposite the original's (None: none did)."""

    score: float
    done: str | None = None
    past: str | None = None


@dataclass
class UnlearnRequest:
    """What a method needs to forget: the task, the forget and retain data, and the original training settings.

    A user with their own model builds this from their own datasets; the workspace builds it from the ledger.
    """

    task: Task
    forget: RecordDataset
    retain: RecordDataset
    train: TrainSpec = field(default_factory=TrainSpec)
    data_info: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    stop_rule: Callable[[nn.Module], Reading | str | None] | None = None
    """Measures the model being unlearned against the request's targets: a :class:`Reading`, a line saying why the
    work is done, or None (nothing measured: go on). The workspace builds one from held-out data and the request's
    probes (:mod:`disgorge.evidence.stopping`)."""

    def loader(self, which: str, *, batch_size: int | None = None, shuffle: bool = True) -> DataLoader:
        """A seeded DataLoader over ``forget`` or ``retain``."""
        data = getattr(self, which)
        generator = torch.Generator().manual_seed(self.seed + (0 if which == "retain" else 1))
        return self.task.loader(data, batch_size or self.train.batch_size, shuffle=shuffle, generator=generator)

    def cycle(self, which: str, *, batch_size: int | None = None) -> Iterator[Any]:
        """Endless batches from ``forget`` or ``retain`` (reshuffled each pass)."""
        loader = self.loader(which, batch_size=batch_size)
        while True:
            yield from loader


_WHY = {"done": "ran its whole budget of epochs", "max_steps": "reached max_steps",
        "max_seconds": "reached max_seconds", "guard": "the retain guard stopped it",
        "early_stop": "the method's own stopping test fired"}

REFINEMENTS = 4
"""How many times a run that went past its targets goes back to the closest state and approaches again, with
checks four times as dense (then, once checked at every step, at half the learning rate)."""


@dataclass
class _State:
    """A state of the run the rule measured: its score, step, weights and optimiser state."""

    score: float
    step: int
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


class _RuleCheck:
    """The loop's ``should_stop``: the method's own test, and the request's stopping rule measured every
    ``total / checks`` steps (its reason kept in ``why``). Done stops only a model that also keeps its utility
    (``utility``, the retain guard's check): reaching the forget targets by breaking the model is not done.

    A dose that suits one request overshoots a smaller one, so the states the rule measures are kept by their
    distance to the targets: when a figure goes past its target (membership AUC far below 50, say: the records
    became recognisable as *not* trained on), the run goes back to the closest state and approaches again with
    denser checks, and after :data:`REFINEMENTS` such returns ends on the closest state seen (``past``)."""

    def __init__(self, rule: Callable[[nn.Module], Reading | str | None] | None, model: nn.Module,
                 optimizer: torch.optim.Optimizer, total: int | None, checks: int,
                 own: Callable[[], bool] | None, utility: Callable[[nn.Module], bool] | None = None) -> None:
        self.rule, self.model, self.optimizer, self.total = rule, model, optimizer, total
        self.own, self.utility = own, utility
        self.every = max(1, math.ceil(total / checks)) if total else 10
        self.steps = self.last = self.refined = 0
        self.why, self.past, self.kept = "", False, None
        self.best: _State | None = None
        if rule is not None:
            first = self._read()
            self.best = self._state(first.score if first is not None else math.inf)

    def _read(self) -> Reading | None:
        out = self.rule(self.model) if self.rule is not None else None
        return Reading(0.0, done=out) if isinstance(out, str) else out

    def _state(self, score: float) -> _State:
        return _State(score, self.steps, snapshot(self.model), copy.deepcopy(self.optimizer.state_dict()))

    def _back(self, state: _State) -> None:
        restore(self.model, state.weights)
        self.optimizer.load_state_dict(copy.deepcopy(state.optimizer))

    def __call__(self) -> bool:
        self.steps += 1
        if self.own is not None and self.own():
            return True
        if self.rule is None or self.steps - self.last < self.every:
            return False
        self.last = self.steps
        reading = self._read()
        if reading is None:
            return False
        if reading.done:
            if self.utility is not None and not self.utility(self.model):
                return False
            self.why = reading.done
            return True
        if reading.past is None:
            if self.best is None or reading.score < self.best.score:
                self.best = self._state(reading.score)
            return False
        return self._went_past(reading)

    def _went_past(self, reading: Reading) -> bool:
        if self.best is not None and self.refined < REFINEMENTS:
            self.refined += 1
            self._back(self.best)
            if self.every > 1:
                self.every = max(1, self.every // 4)
            else:
                for group in self.optimizer.param_groups:
                    group["lr"] = group["lr"] / 2
            return False
        self._end_past(reading)
        return True

    def _end_past(self, reading: Reading) -> None:
        """Keep the closer of the current state and the closest one seen before, and say why."""
        self.past = True
        if self.best is None or reading.score <= self.best.score:
            self.kept = self.steps
            self.why = f"{reading.past}; no earlier state it measured was closer, so it kept this one"
            return
        self._back(self.best)
        self.kept = self.best.step
        self.why = (f"{reading.past}; after {self.refined} returns with denser checks it kept the state of step "
                    f"{self.best.step}, the closest to the targets it measured")

    def finish(self) -> None:
        """After the loop: a final state beyond its targets is replaced by the closest state seen."""
        if self.rule is None or self.why:
            return
        reading = self._read()
        if reading is not None and reading.past is not None:
            self._end_past(reading)


class Method(ABC):
    """An unlearning method. Parameters go in ``Config``; ``unlearn`` does the work and leaves the input intact.

    After ``unlearn``, ``fit_result_`` (what the training loop did; zero steps for methods without one),
    ``report_`` (method-specific figures, possibly empty) and ``seconds_`` describe the run (scikit-learn's
    trailing underscore). ``check`` and ``unlearn`` are final: a method adds its own refusals in ``_check`` and
    its algorithm in ``_unlearn``.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    summary: ClassVar[str]
    paper: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError("pass either a Config or keyword options, not both")
        self.config = config if config is not None else self.Config.from_dict(options)
        if not isinstance(self.config, self.Config):
            raise ConfigError(f"method {self.name!r} takes a {self.Config.__qualname__}, got {type(config).__name__}")

    def check(self, request: UnlearnRequest) -> None:
        """Refuse, before running, a request this method cannot serve: capabilities the task lacks, data the
        method needs and the request lacks, options the request cannot honour, then the method's own ``_check``."""
        missing = sorted(self.needs - request.task.capabilities - DATA_NEEDS)
        if missing:
            raise InvalidRequest(f"method {self.name!r} needs {', '.join(missing)}, which task "
                                 f"{request.task.name!r} does not offer; pick another method (`disgorge methods`)")
        for which in ("retain", "forget"):
            if which in self.needs and len(getattr(request, which)) == 0:
                raise InvalidRequest(f"method {self.name!r} needs {which} data and the {which} set is empty")
        self.config.check(request)
        self._check(request)

    def _check(self, request: UnlearnRequest) -> None:
        """The method's own refusals (none by default)."""
        return None

    def unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        """Return a new model with the forget set's effect removed; ``model`` itself is not changed."""
        self.check(request)
        warm_up()
        self.fit_result_ = FitResult()
        self.report_ = {}
        start = time.perf_counter()
        work = copy.deepcopy(model)
        request = dataclasses.replace(request, forget=self.config.forget_data(request))
        rank = self.config.adapter_rank()
        with torch.random.fork_rng():
            torch.manual_seed(request.seed)
            if rank:
                work = adapters.add_lora(work, rank)
            out = self._unlearn(work, request)
            if rank:
                out = adapters.merge_lora(out)
        self.seconds_ = time.perf_counter() - start
        out.eval()
        return out

    @abstractmethod
    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        """The algorithm, on a private copy of the model."""

    def fit(self, model: nn.Module, request: UnlearnRequest, loader: Iterable[Any], loss: LossFn,
            optimizer: torch.optim.Optimizer, *, epochs: int, guard: bool = True,
            should_stop: Callable[[], bool] | None = None, **kwargs: Any) -> FitResult:
        """The one training loop with this method's budget (``max_steps``, ``max_seconds``), the request's stopping
        rule (``stop = "target"``: measured ``checks`` times over the budget; ``stopped = "target"`` and the reason
        in ``report_["stopping"]`` when it fires) and, for guarded methods, the retain guard; the result is kept as
        ``fit_result_``."""
        cfg = self.config
        if not isinstance(cfg, BudgetConfig):
            raise TypeError(f"method {self.name!r} runs the training loop, so its Config must extend BudgetConfig")
        watch = self.retain_guard(model, request) if guard else None
        stop_rule = request.stop_rule if cfg.stop == "target" else None
        per_epoch = total_steps(loader, 1, None)
        if stop_rule is not None and per_epoch:
            # A small data set gives few steps per epoch, too small a dose to undo what training did; under a rule
            # the budget is only a ceiling, so it is raised to min_steps.
            epochs = max(epochs, math.ceil(cfg.min_steps / per_epoch))
        rule = _RuleCheck(stop_rule, model, optimizer, total_steps(loader, epochs, cfg.max_steps), cfg.checks,
                          should_stop, watch.check if watch is not None else None)
        result = fit(model, loader, loss, optimizer, epochs=epochs, max_steps=cfg.max_steps,
                     max_seconds=cfg.max_seconds, description=kwargs.pop("description", self.name),
                     guard=watch, accelerator=request.task.accelerator(request.train.precision),
                     should_stop=rule, **kwargs)
        rule.finish()
        if rule.past:
            result.stopped = "past"
        elif result.stopped == "early_stop" and rule.why:
            result.stopped = "target"
        if result.stopped == "guard" and isinstance(cfg, GuardedConfig):
            log.warning("%s: retain accuracy fell more than %g points below the original's; stopped after %d steps and "
                        "restored the last state that kept it (possibly the original weights: lower the learning "
                        "rate or raise max_retain_drop)", self.name, cfg.max_retain_drop, result.steps)
        self.report_["stopping"] = {"stopped": result.stopped, "steps": result.steps, "epochs": result.epochs,
                                    "budget_steps": rule.total, "why": rule.why or _WHY.get(result.stopped, ""),
                                    "returns": rule.refined, "kept_step": rule.kept}
        self.fit_result_ = result
        return result

    def retain_guard(self, model: nn.Module, request: UnlearnRequest, sample: int = 1024) -> Guard | None:
        """A guard that fails once accuracy on a fixed retain sample drops ``max_retain_drop`` points below where
        ``model`` starts; None for unguarded methods, when the guard is off, or with no retain data."""
        if not isinstance(self.config, GuardedConfig):
            return None
        limit = self.config.max_retain_drop
        if limit >= 100 or len(request.retain) == 0:
            return None
        generator = torch.Generator().manual_seed(request.seed + 3)
        n = min(sample, len(request.retain))
        picked = torch.randperm(len(request.retain), generator=generator, device="cpu")[:n].sort().values
        subset = request.retain.subset(request.retain.ids[picked.numpy()])
        task = request.task

        baseline = task.quick_accuracy(model, subset)
        return Guard(check=lambda m: task.quick_accuracy(m, subset) >= baseline - limit, every=10)

    fit_result_: FitResult
    seconds_: float
    report_: dict[str, Any]
