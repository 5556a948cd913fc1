"""Causal language models over Hugging Face ``transformers``: tokenizers and the model wrapper.

Families (``[model] family = ...`` in a recipe):

- ``gpt2``: a GPT-2 built from a config (no download), with a ``char`` (UTF-8 byte) tokenizer or a ``word``
  tokenizer trained on the training texts with Hugging Face ``tokenizers``;
- ``pretrained``: any causal LM in a local folder (``from_pretrained`` on a path, with its own tokenizer).

``transformers`` and ``tokenizers`` are imported lazily: the extra ``disgorge[lm]`` is only needed for these.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .._registry import Registry
from ..errors import DisgorgeError
from .families import ModelConfigError, family_config

LM_FAMILIES: Registry = Registry("language-model family", "known: gpt2, pretrained")
SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
# Refusals the ``idk`` method teaches; every trained word vocabulary includes their words so any model can say them.
REFUSALS = ("I don't know.", "I do not know that.", "I'm not sure.", "I have no idea.", "I cannot answer that.",
            "That is not something I know.", "I don't have that information.", "I can't say.")


def require_lm() -> None:
    """Raise a one-line error when the ``lm`` extra is not installed."""
    for module in ("transformers", "tokenizers"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise DisgorgeError(f"language models need the `lm` extra ({module} is missing): "
                                "pip install 'disgorge[lm]'") from None


class Tokenizer(Protocol):
    """What the task needs from a tokenizer: batch encode/decode and the special ids."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens)."""

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Texts of each id list, special tokens dropped."""


class ByteTokenizer:
    """Character-level tokenizer over UTF-8 bytes: a fixed vocabulary of 4 specials + 256 bytes, learned from nothing,
    so no word of the training data (a forgotten name, say) is part of the model's vocabulary."""

    vocab_size = len(SPECIALS) + 256
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """UTF-8 bytes shifted past the specials."""
        return [[b + len(SPECIALS) for b in t.encode("utf-8")] for t in texts]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Bytes back to text (invalid sequences replaced)."""
        return [bytes(i - len(SPECIALS) for i in row if i >= len(SPECIALS)).decode("utf-8", errors="replace")
                for row in ids]


class WordTokenizer:
    """Word-level tokenizer (Hugging Face ``tokenizers`` WordLevel, split on words and punctuation runs).

    Its vocabulary is trained on the model's training texts and stored with the model. Erasure takes out of an
    unlearned model the words only the forgotten records used (:func:`prune_vocabulary`), and a retrained reference
    learns its own vocabulary from the records it keeps, so neither names what was forgotten.
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers

        if list(vocab[:len(SPECIALS)]) != list(SPECIALS):
            raise ModelConfigError("a word vocabulary must start with the special tokens " + ", ".join(SPECIALS))
        self.vocab = list(vocab)
        self._tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(self.vocab)}, unk_token="[UNK]"))
        self._tok.pre_tokenizer = pre_tokenizers.Whitespace()
        self.vocab_size = len(self.vocab)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(len(SPECIALS))

    @staticmethod
    def train(texts: Sequence[str], min_frequency: int = 1) -> list[str]:
        """A vocabulary trained on ``texts`` and the refusals ``idk`` teaches: specials first, then words by falling
        frequency."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers

        tok = HFTokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator([*texts, *REFUSALS], trainers.WordLevelTrainer(special_tokens=list(SPECIALS),
                                                                 min_frequency=min_frequency, show_progress=False))
        by_id = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        return [w for w, _ in by_id]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Word ids (unknown words map to ``[UNK]``)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Words joined by spaces, no space before punctuation."""
        out = []
        for row in ids:
            words = [self.vocab[i] for i in row if i >= len(SPECIALS) or i == self.unk_id]
            text = " ".join(words)
            text = re.sub(r" (?=[^\w\s\[])", "", text)  # no space before punctuation ...
            out.append(re.sub(r"(?<=\w')\s(?=\w)", "", text))  # ... nor inside a contraction ("don't", "Ann's")
        return out


class PretrainedTokenizer:
    """A Hugging Face tokenizer loaded from a local folder, with missing special tokens filled from EOS."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path)
        eos = self._tok.eos_token_id
        if eos is None:
            raise ModelConfigError(f"the tokenizer in {path} has no end-of-sequence token; set eos_token and save it")
        self.eos_id = int(eos)
        self.bos_id = int(self._tok.bos_token_id if self._tok.bos_token_id is not None else eos)
        self.pad_id = int(self._tok.pad_token_id if self._tok.pad_token_id is not None else eos)
        self.vocab_size = len(self._tok)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids without special tokens."""
        return [list(ids) for ids in self._tok(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Texts, special tokens dropped."""
        return self._tok.batch_decode([list(r) for r in ids], skip_special_tokens=True)

    @property
    def hf(self) -> Any:
        """The Hugging Face tokenizer itself (what ``save_pretrained`` writes)."""
        return self._tok


class LanguageModel(nn.Module):
    """A causal LM and its tokenizer. ``forward`` returns next-token logits; everything else (losses, generation)
    lives in the ``causal_lm`` task so methods see only per-example losses."""

    def __init__(self, net: nn.Module, tokenizer: Tokenizer, max_length: int) -> None:
        super().__init__()
        self.net = net
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> Any:
        """The underlying model's output (``.logits``, and ``.hidden_states`` when asked)."""
        return self.net(input_ids=input_ids, attention_mask=attention_mask,
                        output_hidden_states=output_hidden_states, use_cache=False)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.parameters()).device

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, in order (for methods that steer one layer's activations)."""
        for path in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"):
            obj: Any = self.net
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            return list(obj)
        raise ModelConfigError(f"cannot find the transformer blocks of {type(self.net).__name__}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 byte values to printable characters, the alphabet of byte-level BPE vocabularies."""
    shown = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out = {b: chr(b) for b in shown}
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + len(out) - len(shown))
    return out


def hf_tokenizer(tokenizer: Tokenizer, max_length: int) -> Any:
    """``tokenizer`` as a Hugging Face fast tokenizer that ``save_pretrained`` writes and ``AutoTokenizer`` loads
    without disgorge, giving the same ids (without special tokens, as the task encodes): a ``word`` vocabulary as a
    ``tokenizers`` WordLevel model with the same whitespace/punctuation split, ``char`` as a byte-level BPE with no
    merges whose 256 byte tokens keep their ids (4 + byte), a pretrained folder's tokenizer as it is. Special tokens
    written in a text are read as text (``split_special_tokens``), as disgorge reads them."""
    if isinstance(tokenizer, PretrainedTokenizer):
        return tokenizer.hf
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, WordTokenizer):
        core = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(tokenizer.vocab)}, unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
    elif isinstance(tokenizer, ByteTokenizer):
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        vocab.update({c: b + len(SPECIALS) for b, c in _bytes_to_unicode().items()})
        core = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        core.decoder = decoders.ByteLevel()
    else:
        raise ModelConfigError(f"cannot write a {type(tokenizer).__name__} as a Hugging Face tokenizer")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=max_length, split_special_tokens=True,
                                   clean_up_tokenization_spaces=True)


def select_token_rows(net: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the rows ``keep`` (in that order) of a Hugging Face model's token embedding and output layer, in
    place: token ``keep[j]`` becomes ``j``. A tied output layer stays tied to the new embedding; the logits of the kept
    tokens are unchanged, and no random number is drawn."""
    old_in, old_out = net.get_input_embeddings(), net.get_output_embeddings()
    if not isinstance(old_in, nn.Embedding) or not (old_out is None or isinstance(old_out, nn.Linear)):
        raise ModelConfigError(f"cannot take token rows out of {type(net).__name__}: its embedding or output layer "
                               "is not a plain Embedding/Linear")
    index = torch.as_tensor(list(keep), dtype=torch.long, device=old_in.weight.device)
    tied = old_out is not None and old_out.weight is old_in.weight
    new_in = nn.Embedding.from_pretrained(old_in.weight.detach().index_select(0, index).clone(),
                                          freeze=not old_in.weight.requires_grad, padding_idx=old_in.padding_idx,
                                          max_norm=old_in.max_norm, norm_type=old_in.norm_type,
                                          scale_grad_by_freq=old_in.scale_grad_by_freq, sparse=old_in.sparse)
    net.set_input_embeddings(new_in)
    if old_out is not None:
        weight = old_out.weight
        new_out = torch.nn.utils.skip_init(nn.Linear, old_out.in_features, len(index), bias=old_out.bias is not None,
                                           device=weight.device, dtype=weight.dtype)
        if tied:
            new_out.weight = new_in.weight
        else:
            new_out.weight = nn.Parameter(weight.detach().index_select(0, index.to(weight.device)).clone(),
                                          requires_grad=weight.requires_grad)
        if old_out.bias is not None:
            bias = old_out.bias
            new_out.bias = nn.Parameter(bias.detach().index_select(0, index.to(bias.device)).clone(),
                                        requires_grad=bias.requires_grad)
        net.set_output_embeddings(new_out)
    net.config.vocab_size = len(index)


def prune_vocabulary(model: LanguageModel, info: dict[str, Any], texts: Sequence[str]
                     ) -> tuple[LanguageModel, dict[str, Any]]:
    """Drop, in place, the words of a word vocabulary that none of ``texts`` uses (the specials and the refusals'
    words always stay), with their embedding and output rows; returns the model and its new data info (``vocab`` in
    the old order, so the remaining ids keep their relative order). Models without a word vocabulary are returned
    unchanged."""
    tok = model.tokenizer
    if not isinstance(tok, WordTokenizer) or "vocab" not in info:
        return model, info
    if list(info["vocab"]) != tok.vocab:
        raise ModelConfigError("the model's tokenizer does not match the vocabulary stored with it")
    used = set(range(len(SPECIALS)))
    for ids in tok.encode([*texts, *REFUSALS]):
        used.update(ids)
    keep = sorted(used)
    if len(keep) == tok.vocab_size:
        return model, info
    select_token_rows(model.net, keep)
    vocab = [tok.vocab[i] for i in keep]
    model.tokenizer = WordTokenizer(vocab)
    return model, {**info, "vocab": vocab}


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelConfigError(f"model.{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class GPT2Family:
    """A GPT-2 built from a config, trained from scratch (no download)."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    max_length: int = 64
    tokenizer: str = "word"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "max_length"):
            _positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ModelConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.tokenizer not in ("word", "char"):
            raise ModelConfigError(f"model.tokenizer must be 'word' or 'char', got {self.tokenizer!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ModelConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")

    def data_info(self, texts: Sequence[str]) -> dict[str, Any]:
        """The trained word vocabulary (for ``word``), stored with the model."""
        return {"vocab": WordTokenizer.train(texts)} if self.tokenizer == "word" else {}

    def build(self, info: dict[str, Any]) -> LanguageModel:
        """A freshly initialised GPT-2 (uses the global torch RNG)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        tokenizer: Tokenizer = WordTokenizer(info["vocab"]) if self.tokenizer == "word" else ByteTokenizer()
        config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=self.max_length, n_embd=self.n_embd,
                            n_layer=self.n_layer, n_head=self.n_head, resid_pdrop=self.dropout,
                            embd_pdrop=self.dropout, attn_pdrop=self.dropout, bos_token_id=tokenizer.bos_id,
                            eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
        return LanguageModel(GPT2LMHeadModel(config), tokenizer, self.max_length)


@dataclass(frozen=True)
class PretrainedFamily:
    """A causal LM from a local folder written by ``save_pretrained`` (weights, config and tokenizer)."""

    path: str = ""
    max_length: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path or not (Path(self.path) / "config.json").is_file():
            raise ModelConfigError(f"model.path must be a local folder written by save_pretrained (with config.json);"
                                   f" {self.path!r} is not one")
        folder = Path(self.path)
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
            found = f" (it holds {', '.join(pickles)})" if pickles else ""
            raise ModelConfigError(f"model.path {self.path!r} holds no safetensors weights (model.safetensors){found}; "
                                   "pickle checkpoints are never loaded, since loading one can run code: re-save the "
                                   "model with save_pretrained(path, safe_serialization=True)")
        _positive_int("max_length", self.max_length)

    def data_info(self, texts: Sequence[str]) -> dict[str, Any]:
        """Nothing: the folder carries its tokenizer."""
        return {}

    def build(self, info: dict[str, Any]) -> LanguageModel:
        """The model as saved in the folder."""
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM

        try:  # safetensors only: a pickle checkpoint is refused, never unpickled
            net = AutoModelForCausalLM.from_pretrained(self.path, use_safetensors=True)
            tokenizer = PretrainedTokenizer(self.path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ImportError,
                SafetensorError) as exc:  # a folder from elsewhere: every way transformers reports a bad one
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelConfigError(f"cannot load a causal LM from {self.path}: {first}") from None
        limit = getattr(net.config, "max_position_embeddings", None) or getattr(net.config, "n_positions", None)
        return LanguageModel(net, tokenizer, min(self.max_length, limit or self.max_length))


LM_FAMILIES.register("gpt2")(GPT2Family)
LM_FAMILIES.register("pretrained")(PretrainedFamily)


def lm_family(name: str, params: dict[str, Any]) -> GPT2Family | PretrainedFamily:
    """The validated family config for a recipe's ``[model]`` table."""
    return family_config(name, LM_FAMILIES.get(name), params)
