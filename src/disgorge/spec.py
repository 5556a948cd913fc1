"""Recipes: TOML files that fully determine a training run.

The spec dataclasses sit at the bottom of the package: they import neither torch nor any other layer, so every
layer (tasks, training, the workspace, the command line) can read and check a recipe. Names that only a registry
knows (the task, the model family and its parameters) are checked where the recipe is used: see
:func:`disgorge.tasks.check_recipe`.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from ._io import read_text, sha256_bytes
from .errors import DisgorgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class RecipeError(DisgorgeError):
    """A recipe that cannot be used as written."""


OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
"""Devices a recipe's ``train.device`` and ``--device`` name (``cuda:N`` picks one GPU; ``auto``: a GPU if any)."""
PRECISIONS = ("fp32", "bf16")
"""``train.precision``: full float32, or bfloat16 mixed precision through accelerate (language models)."""
MAX_SEED = 2**32 - 1
"""Largest seed anywhere (recipes, ``--seed``): seeds reach torch, numpy and scikit-learn, whose narrowest range is
``[0, 2**32)``."""
MAX_WIDTH = 1_000_000
"""Largest integer a recipe's ``[model]`` table may hold (a layer width, channel count, depth, length)."""
MAX_PARAMETERS = 1_000_000_000
"""Largest model a recipe may ask for, in parameters (4 GB of float32 weights, about 16 GB while training)."""
MAX_BATCH_SIZE = 10_000_000
"""Largest ``train.batch_size``."""
MAX_EPOCHS = 1_000_000
"""Largest ``train.epochs``."""


def check_device(name: Any, what: str = "device") -> str:
    """``name`` if it names a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), else a one-line error; whether
    this machine has it is :func:`disgorge.devices.resolve`'s question."""
    base, _, index = name.partition(":") if isinstance(name, str) else ("", "", "")
    if base not in DEVICES or (index and not (base == "cuda" and index.isdigit())) or (":" in name and not index):
        raise RecipeError(f"{what} must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    return name


TRANSFORMS = ("standardize", "minmax", "scale:K")
"""The preprocessing a recipe's ``[data] transform`` may name (``scale:K`` divides by the number K)."""


@dataclass(frozen=True)
class DataSpec:
    """Which records train the model (every active training record, optionally narrowed by source) and how their
    inputs are prepared: ``transform`` (``standardize``: zero mean and unit variance per feature; ``minmax``: each
    feature to [0, 1]; ``scale:K``: divided by K; empty: as stored), fitted on the training records only and kept
    with the model, and ``shape``, the shape each input is given to the network in (``[1, 28, 28]`` makes flat rows
    of 784 images for a ``cnn``)."""

    sources: tuple[str, ...] = ()
    exclude_sources: tuple[str, ...] = ()
    transform: str = ""
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.transform, str):
            raise RecipeError(f"data.transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")
        parse_transform(self.transform)
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_WIDTH for d in self.shape):
            raise RecipeError(f"data.shape must be a list of positive integers such as [1, 28, 28], got "
                              f"{list(self.shape)!r}")


def parse_transform(text: str) -> tuple[str, float | None]:
    """``(kind, divisor)`` of a ``[data] transform`` value: ``("scale", K)`` for ``scale:K``, ``(kind, None)``
    otherwise, ``("", None)`` for none; a one-line :class:`RecipeError` for anything else."""
    if text in ("", "standardize", "minmax"):
        return text, None
    kind, _, number = text.partition(":")
    if kind == "scale":
        try:
            divisor = float(number)
        except ValueError:
            divisor = math.nan
        if math.isfinite(divisor) and divisor > 0:
            return "scale", divisor
    raise RecipeError(f"data.transform must be one of {', '.join(TRANSFORMS)} (K a number > 0, e.g. scale:255), "
                      f"got {text!r}")


@dataclass(frozen=True)
class ModelSpec:
    """The model family and its parameters (checked by the family's builder)."""

    family: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or not self.family:
            raise RecipeError(f"model.family must be a family name such as 'mlp', got {self.family!r}")
        if not isinstance(self.params, dict):
            raise RecipeError(f"[model] must be a table of parameters, got {self.params!r}")
        for key, value in self.params.items():
            _check_model_value(f"model.{key}", value)
        _check_model_size(self.family, self.params)


@dataclass(frozen=True)
class TrainSpec:
    """Optimiser and schedule."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 20
    device: str = "auto"
    precision: str = "fp32"
    checkpoints: int = 0  # weights kept after this many evenly spaced epochs (at most one per epoch) for TracIn-CP;
    # plain training only: a recipe with [sharding] or [privacy] keeps none

    def __post_init__(self) -> None:
        check_device(self.device, "train.device")
        if not isinstance(self.checkpoints, int) or isinstance(self.checkpoints, bool) or \
                not 0 <= self.checkpoints <= MAX_CHECKPOINTS:
            raise RecipeError(f"train.checkpoints must be an integer from 0 to {MAX_CHECKPOINTS}, got "
                              f"{self.checkpoints!r}")
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise RecipeError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _positive("train.lr", self.lr)
        _positive("train.batch_size", self.batch_size, integer=True, most=MAX_BATCH_SIZE)
        _positive("train.epochs", self.epochs, integer=True, most=MAX_EPOCHS)
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise RecipeError(f"train.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise RecipeError(f"train.momentum must be a number in [0, 1), got {self.momentum!r}")


MAX_CHECKPOINTS = 50
"""Most training checkpoints a recipe may keep (each is a copy of the weights)."""
AGGREGATES = ("mean_proba", "vote")
SHARD_BY = ("record", "source")
MAX_SHARDS = 1024
MAX_SLICES = 1000


@dataclass(frozen=True)
class ShardingSpec:
    """SISA training (Bourtoule et al., 2021): ``shards`` models trained in isolation on disjoint parts of the data,
    each over ``slices`` stages that add a part at a time and keep a checkpoint, so that a removal retrains only the
    shards that held the records, from the last checkpoint before the first of them. ``by = "source"`` keeps a
    source's records in one shard (``shards = 0``: one shard per source, so that no two sources ever share one);
    ``aggregate`` combines the shards' predictions (``mean_proba``: the mean of their
    probabilities, for language models too; ``vote``: majority vote, classifiers only). ``adapter_rank > 0`` makes
    each shard a LoRA adapter of that rank over the recipe's frozen pretrained network."""

    shards: int = 1
    slices: int = 1
    by: str = "record"
    aggregate: str = "mean_proba"
    adapter_rank: int = 0

    def __post_init__(self) -> None:
        if self.shards == 0 and self.by != "source":
            raise RecipeError("sharding.shards = 0 (one shard per source) needs by = 'source'")
        if not (self.per_source and type(self.shards) is int):
            _positive("sharding.shards", self.shards, integer=True, most=MAX_SHARDS)
        _positive("sharding.slices", self.slices, integer=True, most=MAX_SLICES)
        if self.by not in SHARD_BY:
            raise RecipeError(f"sharding.by must be one of {', '.join(SHARD_BY)}, got {self.by!r}")
        if self.aggregate not in AGGREGATES:
            raise RecipeError(f"sharding.aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if not isinstance(self.adapter_rank, int) or isinstance(self.adapter_rank, bool) or \
                not 0 <= self.adapter_rank <= 1024:
            raise RecipeError(f"sharding.adapter_rank must be an integer from 0 (whole networks) to 1024, got "
                              f"{self.adapter_rank!r}")

    @property
    def per_source(self) -> bool:
        """One shard per source (``shards = 0``, ``by = "source"``)."""
        return self.shards == 0 and self.by == "source"

    def epochs_per_slice(self, epochs: int) -> int:
        """Epochs of each slice stage: SISA's ``2e / (L + 1)``, so that a shard sees about as many examples over its
        ``L`` growing stages as ``e`` epochs over its whole data (at least one)."""
        return max(1, round(2 * epochs / (self.slices + 1)))


@dataclass(frozen=True)
class PrivacySpec:
    """Differentially private training (DP-SGD through opacus): the accountant's target ``epsilon`` at ``delta``,
    with each example's gradient clipped to ``max_grad_norm``."""

    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _positive("privacy.epsilon", self.epsilon)
        _positive("privacy.max_grad_norm", self.max_grad_norm)
        if not _finite(self.delta) or not 0 < self.delta < 1:
            raise RecipeError(f"privacy.delta must be a number in (0, 1), got {self.delta!r}")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a training run; the same recipe on the same ledger gives the same weights."""

    name: str
    task: str = "classification"
    seed: int = 0
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    sharding: ShardingSpec | None = None
    privacy: PrivacySpec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RecipeError("recipe needs a non-empty `name`")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise RecipeError(f"recipe `seed` must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {self.seed!r}")
        if not isinstance(self.task, str) or not self.task:
            raise RecipeError(f"recipe `task` must be a task name, got {self.task!r}")
        if self.sharded and self.privacy is not None:
            raise RecipeError("a recipe takes [sharding] or [privacy], not both yet: sharded removals are already "
                              "exact; drop one of the two tables")

    # -- (de)serialisation ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "recipe") -> Recipe:
        """Build and validate a recipe from parsed TOML."""
        raw = dict(raw)
        _check_keys(where, raw, {"name", "task", "seed", "data", "model", "train", "sharding", "privacy"})
        data = _section(where, raw, "data")
        _check_keys(f"{where} [data]", data, {f.name for f in fields(DataSpec)})
        for k in ("sources", "exclude_sources"):
            if not isinstance(data.get(k, []), list) or not all(isinstance(s, str) for s in data.get(k, [])):
                raise RecipeError(f"{where}: data.{k} must be a list of source names")
        if not isinstance(data.get("shape", []), list):
            raise RecipeError(f"{where}: data.shape must be a list of positive integers such as [1, 28, 28]")
        model = _section(where, raw, "model")
        family = model.pop("family", "mlp")
        train = _section(where, raw, "train")
        _check_keys(f"{where} [train]", train, {f.name for f in fields(TrainSpec)})
        optional = {}
        for name, spec in (("sharding", ShardingSpec), ("privacy", PrivacySpec)):
            if name in raw:
                table = _section(where, raw, name)
                _check_keys(f"{where} [{name}]", table, {f.name for f in fields(spec)})
                optional[name] = table
        try:
            return cls(
                name=raw.get("name", ""),
                task=raw.get("task", "classification"),
                seed=raw.get("seed", 0),
                data=DataSpec(**{k: v if k == "transform" else tuple(v) for k, v in data.items()}),
                model=ModelSpec(family=family, params=model),
                train=TrainSpec(**train),
                sharding=ShardingSpec(**optional["sharding"]) if "sharding" in optional else None,
                privacy=PrivacySpec(**optional["privacy"]) if "privacy" in optional else None,
            )
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from None
        except DisgorgeError as exc:
            raise RecipeError(f"{where}: {exc}") from None

    @classmethod
    def from_toml(cls, text: str, where: str = "recipe") -> Recipe:
        """Parse and validate TOML text."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{where} is not valid TOML: {exc}") from None
        except RecursionError:
            raise RecipeError(f"{where} is not a usable TOML file: it nests too deeply") from None
        return cls.from_dict(raw, where)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read and validate a recipe file."""
        p = Path(path)
        if p.exists() and not p.is_file():  # a folder, a FIFO (which would block the read) or a device
            raise RecipeError(f"recipe file {p} is not a regular file")
        text = read_text(p, "recipe file", RecipeError, missing=RecipeError)
        return cls.from_toml(text, where=f"recipe {path}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as written to TOML."""
        d = asdict(self)
        # Preprocessing left at its default stays out of the text, so recipes written before it keep their sha256.
        d["data"] = {k: v if k == "transform" else list(v) for k, v in d["data"].items()
                     if k in ("sources", "exclude_sources") or v}
        d["model"] = {"family": self.model.family, **self.model.params}
        # defaults stay out, so that older recipes keep their sha256
        for key, default in (("device", "auto"), ("precision", "fp32"), ("checkpoints", 0)):
            if d["train"][key] == default:
                del d["train"][key]
        for name in ("sharding", "privacy"):  # absent tables stay absent, so older recipes keep their sha256
            if d[name] is None:
                del d[name]
        return d

    @property
    def sharded(self) -> bool:
        """Whether the recipe trains SISA shards (a ``[sharding]`` table with more than one shard or slice, or
        adapters)."""
        s = self.sharding
        return s is not None and (s.shards != 1 or s.slices > 1 or s.adapter_rank > 0)

    def to_toml(self) -> str:
        """Canonical TOML text (sorted keys, so equal recipes give equal text)."""
        return tomli_w.dumps(_sorted(self.to_dict()))

    @property
    def sha256(self) -> str:
        """Hash of the canonical TOML text."""
        return sha256_bytes(self.to_toml().encode())

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some top-level fields changed."""
        return Recipe(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def _sorted(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _sorted(d[k]) for k in sorted(d)}
    return d


def _section(where: str, raw: dict[str, Any], name: str) -> dict[str, Any]:
    sec = raw.get(name, {})
    if not isinstance(sec, dict):
        raise RecipeError(f"{where}: [{name}] must be a table")
    return dict(sec)


def _check_keys(where: str, raw: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: "
                          f"{', '.join(sorted(known))})")


def _finite(value: Any) -> bool:
    """Whether ``value`` is a real number (not a bool) that is neither nan nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: Any, integer: bool = False, most: int | None = None) -> None:
    ok = isinstance(value, int) if integer else _finite(value)
    if not ok or isinstance(value, bool) or value <= 0:
        kind = "an integer" if integer else "a finite number"
        raise RecipeError(f"{name} must be {kind} > 0, got {value!r}")
    if most is not None and value > most:
        raise RecipeError(f"{name} must be at most {most:,}, got {value:,}")


def _check_model_value(name: str, value: Any) -> None:
    """Numbers in ``[model]`` (also inside lists and tables) must be finite, and integers at most MAX_WIDTH."""
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, int) and abs(value) > MAX_WIDTH:
        raise RecipeError(f"{name}: {value:,} is too large; a model's widths, depths and lengths are capped at "
                          f"{MAX_WIDTH:,} (MAX_WIDTH)")
    if isinstance(value, list):
        for v in value:
            _check_model_value(name, v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_model_value(f"{name}.{k}", v)


def _check_model_size(family: str, params: dict[str, Any]) -> None:
    """Refuse a model that is over MAX_PARAMETERS before it is built: the weights between consecutive widths of a
    list (``hidden``, ``channels``) and a GPT-2's blocks are estimated from the recipe alone (the input and output
    layers, which depend on the data, are counted when the model is built)."""
    estimate = 0
    for value in params.values():
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            estimate += sum(abs(a) * abs(b) for a, b in itertools.pairwise(value))
    if family == "gpt2":
        layers, width = params.get("n_layer", 2), params.get("n_embd", 128)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (layers, width)):
            estimate += 12 * abs(layers) * width * width
    if estimate > MAX_PARAMETERS:
        raise RecipeError(f"[model] asks for about {estimate:,} parameters; models are capped at {MAX_PARAMETERS:,} "
                          "(MAX_PARAMETERS): use smaller widths")


RECIPE_TEMPLATES = {
    "classification": '''\
# A disgorge recipe: everything that determines a training run. The same recipe on the same ledger gives the same
# weights on the CPU, bit for bit. Train it with `disgorge train recipe.toml`. Every field has a default but `name`.
name = "my-classifier"         # a label for the models trained from it
task = "classification"        # classification | causal_lm
seed = 0                       # seeds the initialisation and the shuffling

[data]
# Which records train the model: the live training records (split "train") of these sources; empty means all.
sources = []                   # e.g. ["lab-2024", "clinic-b"]  (see `disgorge sources`)
exclude_sources = []           # e.g. ["withdrawn-2025"]
# How inputs are prepared, fitted on the training records only and kept inside the model (every later use of the
# model applies it; an erasure refits it on what is kept). Standardizing makes training and unlearning defaults
# independent of the inputs' raw scale (pixels at 0-255, counts, money); delete the line to use inputs as stored.
transform = "standardize"      # standardize (zero mean, unit variance per feature) | minmax | scale:K (divide by K)
# shape = [1, 28, 28]          # the shape the network sees: flat rows of 784 pixels become images for a cnn

[model]
family = "mlp"                 # linear | mlp | cnn
hidden = [128]                 # mlp: the hidden layers' widths
dropout = 0.0                  # mlp, cnn: dropout probability in [0, 1)
# family = "cnn" takes channels = [16, 32] and hidden = 64, for image inputs (C, H, W) or (H, W);
# family = "linear" (logistic regression) takes no parameter.

[train]
optimizer = "adam"             # adam | adamw | sgd
lr = 0.001                     # learning rate
weight_decay = 0.0             # L2 (adam, sgd) or decoupled (adamw); > 0 lets `--method newton` serve a linear model
momentum = 0.9                 # sgd only
batch_size = 64
epochs = 20
# device = "auto"              # auto (a GPU if there is one) | cpu | cuda | cuda:N | mps; --device overrides it
# checkpoints = 5              # keep the weights at 5 evenly spaced epochs: `disgorge attribute` traces through them

# Optional: train so that removals are exact (SISA). A removal then retrains only the shards that held the records,
# from the last slice before them; the result equals this recipe trained without them. Costs some accuracy.
# [sharding]
# shards = 8                   # networks trained in isolation (0 with by = "source": one per source)
# slices = 4                   # stages per shard, each checkpointed (a removal restarts from the one before it)
# by = "source"                # record | source (a source's records share one shard, so forgetting it touches one)
# aggregate = "mean_proba"     # mean_proba | vote

# Optional: differentially private training (opacus; not with [sharding]). The spent epsilon goes into the card.
# [privacy]
# epsilon = 8.0
# delta = 1e-5
# max_grad_norm = 1.0
''',
    "causal_lm": '''\
# A disgorge recipe for a causal language model over records {"text": ...} or {"prompt": ..., "answer": ...}
# (`disgorge ingest FILE.jsonl`). The same recipe on the same ledger gives the same weights on the CPU.
# Train it with `disgorge train recipe.toml`. Every field has a default but `name`.
name = "my-language-model"     # a label for the models trained from it
task = "causal_lm"
seed = 0                       # seeds the initialisation and the shuffling

[data]
sources = []                   # the live training records of these sources; empty means all
exclude_sources = []

[model]
family = "gpt2"                # gpt2: built from this config and trained from scratch (nothing is downloaded)
n_layer = 2
n_embd = 128
n_head = 4                     # must divide n_embd
max_length = 64                # tokens per record; a longer answer loses its end
tokenizer = "word"             # word: a vocabulary trained on your texts | char: UTF-8 bytes, no word of the data
dropout = 0.0
# family = "pretrained" loads a local folder written by save_pretrained instead:
#   path = "/path/to/model-folder"  and  max_length = 128

[train]
optimizer = "adamw"            # adam | adamw | sgd
lr = 0.002
weight_decay = 0.0
momentum = 0.9                 # sgd only
batch_size = 32
epochs = 50
# device = "auto"              # auto (a GPU if there is one) | cpu | cuda | cuda:N | mps; --device overrides it
# precision = "bf16"           # bfloat16 mixed precision through accelerate (default fp32)
# checkpoints = 5              # keep the weights at 5 evenly spaced epochs: `disgorge attribute` traces through them

# Optional: exact removals by design (SISA). Sharded language models need tokenizer = "char" or a pretrained network
# (all shards share one vocabulary, so it must hold no record's words).
# [sharding]
# shards = 0                   # 0 with by = "source": one shard per source
# by = "source"
# adapter_rank = 8             # family = "pretrained" only: each shard is a LoRA adapter over the frozen network
''',
}
"""Commented recipes for users' own data, by task (``disgorge recipe --template TASK``)."""
