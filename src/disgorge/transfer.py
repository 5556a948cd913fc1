"""Standard formats in and out of a workspace.

``export`` writes a model as a folder that loads without disgorge:

- a language model (task ``causal_lm``) as a Hugging Face folder: the network's and the tokenizer's
  ``save_pretrained`` (a ``word`` or ``char`` tokenizer as a ``tokenizers`` fast tokenizer giving the same ids, see
  :func:`~disgorge.models.language.hf_tokenizer`), so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it;
- a classifier as ``model.safetensors`` and ``config.json``, which lists the network as a sequence of torch layers
  (type and constructor arguments) after the input preprocessing; the loader in its README.md (:data:`LOADER`, plain
  torch and safetensors) rebuilds it, and the export runs that loader before the folder appears.

Both carry a README.md model card with the model's lineage: the sources and records it was trained on, its parent
chain, and the erasure requests behind it with their certificates' ids (the sha256 of a certificate's canonical JSON,
the bytes its signature covers). Sharded (SISA) models are refused: their aggregate has no single network to write.

``import`` registers a model trained elsewhere, in one of those two layouts, with the records it was trained on, as
a model of kind ``imported`` that ``forget`` unlearns like any other. Verification at the ``exact`` level needs a
model retrained without the forgotten records, so the import records whether one can be made and how (the
``imported`` block of the model's info and card): from the network before fine-tuning (``base``, a Hugging Face
folder that the recipe then names as ``family = "pretrained"``), from a declared recipe that trains from scratch (a
classifier's, or a ``gpt2`` language model's), or not at all (a fine-tuned language model without its base, a
classifier without its recipe), in which case its certificates can only be reference-free.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from . import _progress
from ._io import fsync_dir, read_regular, sha256_bytes
from .errors import DisgorgeError, InvalidRequest
from .evidence.certificate import software_versions
from .evidence.signing import canonical
from .ledger import ModelRow
from .models import preprocess
from .models.families import Reshape
from .models.language import LanguageModel, PretrainedFamily, WordTokenizer, hf_tokenizer
from .spec import RECIPE_TEMPLATES, DataSpec, ModelSpec, Recipe, TrainSpec
from .tasks import RecordDataset, Task, check_recipe, get_task
from .training.sharding import base_digest
from .workspace import Workspace

log = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "disgorge-classifier/1"
"""``config.json``'s ``format`` in an exported classifier folder."""
LM_FORMAT = "disgorge-causal-lm/1"
"""``disgorge.json``'s ``format`` in an exported language-model folder (next to the Hugging Face files)."""
LM_META = "disgorge.json"
"""The file of an exported language-model folder holding disgorge's facts: model id, tokenizer kind, recipe."""
WEIGHTS = "model.safetensors"
"""The weights file of an exported folder (a Hugging Face folder's, or a classifier's flat state dict)."""
CHECK_TOLERANCE = 1e-5
"""Largest difference allowed between disgorge's logits and those of the exported classifier's own loader."""

LOADER = '''\
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class Preprocess(nn.Module):
    """(x - shift) / scale, the statistics fitted on the training records, then the network's input shape."""

    def __init__(self, stats_shape, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("shift", torch.zeros(stats_shape))
        self.register_buffer("scale", torch.ones(stats_shape))

    def forward(self, x):
        return ((x - self.shift) / self.scale).reshape(x.shape[0], *self.shape)


def load(folder="."):
    """The exported network in eval mode: logits = net(x), x float32 of shape (N, *config["input_shape"])."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    layers = [Preprocess(**layer["args"]) if layer["type"] == "Preprocess" else
              getattr(nn, layer["type"])(**layer["args"]) for layer in config["layers"]]
    net = nn.Sequential(*layers)
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return net.eval()


net = load()  # run in the exported folder, or pass its path
'''
"""The classifier loader an export's README.md carries: plain torch and safetensors, no disgorge."""

LM_USAGE = '''\
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(".").eval()  # run in the exported folder, or pass its path
tokenizer = AutoTokenizer.from_pretrained(".")
ids = tokenizer(["Where does Alice live?"], add_special_tokens=False, return_tensors="pt").input_ids
bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
ids = torch.cat([torch.tensor([[bos]]), ids], dim=1)  # disgorge feeds [BOS] question answer [EOS]
logits = model(input_ids=ids).logits
'''
"""How an exported language model loads, as its README.md shows it."""


TEXT_FORMAT = "disgorge-text-classifier/1"
"""``classifier.json``'s ``format`` in an exported text classifier (a Hugging Face encoder folder and its head)."""
TEXT_META = "classifier.json"
TEXT_HEAD = "head.safetensors"

TEXT_USAGE = '''\
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = Path(".")  # the exported folder
meta = json.loads((folder / "classifier.json").read_text())
encoder = AutoModel.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
head = torch.nn.Linear(encoder.config.hidden_size, meta["num_classes"])
head.load_state_dict(load_file(folder / "head.safetensors"))


def logits(texts):
    """Class scores: the mean of each text's token states (its real tokens), then the linear head."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=meta["max_length"], return_tensors="pt")
    states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    return head((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
'''
"""How an exported text classifier loads, as its README.md shows it (transformers and safetensors, no disgorge)."""


def _version() -> str | None:
    """The installed disgorge's version (package metadata)."""
    return software_versions().get("disgorge")


class TransferError(DisgorgeError):
    """A folder that cannot be exported to, or imported from, as asked."""


_hf_bars = _progress.hugging_face_bars


# -- a classifier as a plain torch sequence ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One layer of an exported classifier: its torch type and constructor arguments (JSON), the module of the
    disgorge network holding its state (None for a layer without state) and that module's path in the network."""

    type: str
    args: dict[str, Any]
    module: nn.Module | None = None
    path: str = ""

    def spec(self) -> dict[str, Any]:
        """What ``config.json`` lists for this layer."""
        return {"type": self.type, "args": self.args}


def _conv_args(m: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


LEAVES: dict[type, Any] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: _conv_args,
    nn.MaxPool2d: lambda m: {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                             "dilation": m.dilation, "ceil_mode": m.ceil_mode},
    nn.ReLU: lambda m: {},
    nn.Dropout: lambda m: {"p": m.p},
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
}
"""The torch layers an exported classifier may hold (those the ``linear``, ``mlp`` and ``cnn`` families build), with
the constructor arguments that rebuild each."""


def network_layers(model: nn.Module, path: str = "") -> list[Layer]:
    """The classifier ``model`` as the flat sequence of torch layers :data:`LOADER` rebuilds, in the order they run:
    its preprocessing, then every layer of its family's network. A layer of another kind is refused."""
    if isinstance(model, preprocess.Preprocessed):
        return network_layers(model.transform, f"{path}transform.") + network_layers(model.net, f"{path}net.")
    if isinstance(model, preprocess.Preprocess):
        return [Layer("Preprocess", {"stats_shape": list(model.shift.shape), "shape": list(model.shape)}, model,
                      path)]
    if isinstance(model, Reshape):
        return [Layer("Flatten", {"start_dim": 1, "end_dim": -1}),
                Layer("Unflatten", {"dim": 1, "unflattened_size": list(model.shape)}),
                *network_layers(model.net, f"{path}net.")]
    if type(model) is nn.Sequential:
        return [layer for name, child in model.named_children() for layer in network_layers(child, f"{path}{name}.")]
    args = LEAVES.get(type(model))
    if args is None:
        where = path.rstrip(".") or "the network"
        raise TransferError(f"cannot export a network holding a {type(model).__name__} ({where}); export writes the "
                            "layers of the linear, mlp and cnn families")
    return [Layer(type(model).__name__, args(model), model if model.state_dict() else None, path)]


def flat_state(layers: Sequence[Layer]) -> dict[str, torch.Tensor]:
    """The weights under the names of the loader's ``nn.Sequential`` (``<index>.<name>``)."""
    return {f"{i}.{name}": t.detach().cpu().contiguous().clone()
            for i, layer in enumerate(layers) if layer.module is not None
            for name, t in layer.module.state_dict().items()}


def nested_state(layers: Sequence[Layer], flat: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`flat_state`: the loader's weights under the disgorge network's names."""
    state, used = {}, set()
    for i, layer in enumerate(layers):
        if layer.module is None:
            continue
        for name in layer.module.state_dict():
            key = f"{i}.{name}"
            if key not in flat:
                raise TransferError(f"{where} has no tensor {key!r} ({layer.type} layer {i}); re-export the model")
            state[f"{layer.path}{name}"] = flat[key]
            used.add(key)
    extra = sorted(set(flat) - used)
    if extra:
        raise TransferError(f"{where} holds tensors no layer of config.json takes ({', '.join(extra[:3])}"
                            f"{' ...' if len(extra) > 3 else ''}); re-export the model")
    return state


def _json(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists), for comparisons with a file."""
    return json.loads(json.dumps(value))


# -- lineage ----------------------------------------------------------------------------------------------------------

def certificate_id(cert: dict[str, Any]) -> str:
    """A certificate's id: ``sha256:`` and the SHA-256 of its canonical JSON (every key but ``signature``, the bytes
    the signature covers), so the ledger's copy and the signed file give the same id."""
    return "sha256:" + sha256_bytes(canonical(cert))


def lineage(ws: Workspace, row: ModelRow) -> dict[str, Any]:
    """What a model card tells about a model's past: the sources and record count it was trained on, its parent chain
    (newest first), the erasure requests that made each unlearned model of the chain, with their certificates, and
    the import the chain starts from, if any."""
    chain: list[dict[str, Any]] = []
    erasures: list[dict[str, Any]] = []
    current: ModelRow | None = row
    root = row
    while current is not None:
        root = current
        chain.append({"model": current.id, "kind": current.kind, "method": current.method,
                      "request": current.request_id, "records": len(current.records), "status": current.status})
        if current.request_id is not None:
            req = ws.ledger.request(current.request_id)
            cert = req.results.get("certificates", {}).get(current.id)
            erasures.append({
                "request": req.id, "status": req.status, "records": len(req.records), "reason": req.reason,
                "purpose": req.results.get("purpose"), "sources": list(req.selector.get("sources") or []),
                "model": current.id, "parent": current.parent,
                "certificate": None if cert is None else {
                    "id": certificate_id(cert), "verdict": cert.get("verdict"), "evidence": cert.get("evidence"),
                    "file": f"reports/r{req.id}/{current.id}/certificate.json"}})
        current = ws.ledger.model(current.parent) if current.parent is not None else None
    return {"model": row.id, "records": len(row.records), "sources": ws.sources_of(row.records), "chain": chain,
            "erasures": erasures, "imported": root.info.get("imported") if root.kind == "imported" else None}


def lineage_lines(facts: dict[str, Any]) -> list[str]:
    """The card's lineage in markdown."""
    sources = facts["sources"]
    lines = ["## Lineage", "",
             f"Trained on {facts['records']} records from {len(sources)} source(s):", "",
             "| source | licence | origin | records |", "|---|---|---|---|",
             *[f"| {s['name']} | {s['license']} | {s['origin'] or '-'} | {s['records']} |" for s in sources], "",
             "Parent chain (newest first): " + " <- ".join(
                 f"`{c['model']}` ({c['kind']}" + (f", {c['method']} for request {c['request']}" if c["request"]
                                                    else "") + ")" for c in facts["chain"]) + ".", ""]
    if facts["erasures"]:
        lines += ["| erasure request | records | status | sources | model | certificate id | verdict | evidence |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in facts["erasures"]:
            cert = e["certificate"] or {}
            lines.append(f"| {e['request']} | {e['records']} | {e['status']} | {', '.join(e['sources']) or '-'} | "
                         f"{e['model']} | `{cert.get('id', '-')}` | {cert.get('verdict', '-')} | "
                         f"{cert.get('evidence', '-')} |")
        lines += ["", "A certificate's id is the sha256 of its canonical JSON (every key but `signature`, sorted, "
                  "compact, UTF-8): the bytes its Ed25519 signature covers.", ""]
    else:
        lines += ["No erasure request has changed this model.", ""]
    if facts["imported"]:
        lines += [f"The chain starts with a model imported from `{facts['imported']['folder']}`: "
                  f"{facts['imported']['reference_note']}.", ""]
    return lines


def export_card(ws: Workspace, row: ModelRow, recipe: Recipe, *, layout: str, usage: str,
                weights: dict[str, str]) -> str:
    """The README.md of an exported folder: front matter for model hubs, the lineage, and how to load it.
    ``weights`` are the sha256 of the exported weights files by name; the model's weights in the workspace (which
    certificates name) have the row's."""
    facts = lineage(ws, row)
    licenses = sorted({s["license"] for s in facts["sources"]})
    lm = recipe.task == "causal_lm"
    front: dict[str, Any] = {
        **({"library_name": "transformers", "pipeline_tag": "text-generation"} if lm else {}),
        "license": licenses[0].lower() if len(licenses) == 1 else "other",
        "tags": ["disgorge", recipe.task, recipe.model.family, "safetensors"]
        + (["unlearned"] if row.kind == "unlearned" else []),
        "datasets": [s["name"] for s in facts["sources"]],
        "disgorge": {"model_id": row.id, "kind": row.kind, "weights_sha256": weights,
                     "workspace_weights_sha256": row.weights_sha256,
                     "training_records": facts["records"], "parents": [c["model"] for c in facts["chain"][1:]],
                     "erasure_requests": [{"request": e["request"], "certificate": (e["certificate"] or {}).get("id")}
                                          for e in facts["erasures"]]},
    }
    if len(licenses) > 1:
        front["license_name"] = "multiple: " + ", ".join(licenses)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# Model {row.id}", "",
             f"A `{recipe.model.family}` {recipe.task} model exported by disgorge {_version()} ({row.kind}). "
             f"{layout}", "",
             *lineage_lines(facts),
             "## Load it", "",
             "```python", usage.rstrip(), "```", "",
             "## Recipe", "",
             "Weights: " + ", ".join(f"`{name}` sha256 `{digest}`" for name, digest in weights.items())
             + f"; in the workspace (and in its certificates) the model's weights have sha256 `{row.weights_sha256}`."
             " The disgorge recipe behind it:", "",
             "```toml", recipe.to_toml().rstrip(), "```", ""]
    return "\n".join(lines)


# -- export -----------------------------------------------------------------------------------------------------------

@dataclass
class Exported:
    """What an export wrote."""

    model: str
    folder: str
    format: str
    files: list[str] = field(default_factory=list)


def export_model(ws: Workspace, model_id: str, out_dir: str | Path) -> Exported:
    """Write model ``model_id`` as a folder ``out_dir`` that loads without disgorge (a new or empty folder; it appears
    complete or not at all). A language model becomes a Hugging Face folder, a classifier ``model.safetensors`` +
    ``config.json`` + a README.md whose loader rebuilds it; both READMEs carry the model's lineage."""
    out = Path(out_dir)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise TransferError(f"{out} exists and is not an empty folder; export writes a new folder")
    row = ws.ledger.model(model_id)
    recipe = ws.recipe_of(row)
    if recipe.sharded and "sharding" in row.info:
        raise TransferError(f"model {model_id} is sharded (SISA, {len(row.info['sharding']['members'])} shard(s)): its"
                            " prediction aggregates several networks, which no single standard folder holds; export "
                            "serves unsharded models")
    with _hf_bars() if recipe.task == "causal_lm" else contextlib.nullcontext():
        model, row, task = ws.load_model(model_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if task.name == "causal_lm":
            with _hf_bars():
                layout, usage, fmt = _write_lm(model, row, recipe, tmp), LM_USAGE, LM_FORMAT
        elif task.name == "text_classification":
            layout, usage, fmt = _write_text_classifier(model, task, row, recipe, tmp), TEXT_USAGE, TEXT_FORMAT
        else:
            layout, usage, fmt = _write_classifier(model, row, recipe, tmp), LOADER, CLASSIFIER_FORMAT
        weights = {p.name: sha256_bytes(read_regular(p, "exported weights")) for p in sorted(tmp.glob("*.safetensors"))}
        card = export_card(ws, row, recipe, layout=layout, usage=usage, weights=weights)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for path in tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()  # an empty folder the user made for it
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.iterdir())
    log.info("exported %s to %s (%s)", model_id, out, ", ".join(files))
    return Exported(model_id, str(out), fmt, files)


def _write_lm(model: nn.Module, row: ModelRow, recipe: Recipe, folder: Path) -> str:
    """The Hugging Face files of a language model and its ``disgorge.json``; returns the card's layout sentence."""
    if not isinstance(model, LanguageModel) or not hasattr(model.net, "save_pretrained"):
        raise TransferError(f"model {row.id} is not a Hugging Face causal LM ({type(model).__name__}); it cannot be "
                            "written with save_pretrained")
    kind = recipe.model.params.get("tokenizer", "word") if recipe.model.family == "gpt2" else "pretrained"
    tokenizer = hf_tokenizer(model.tokenizer, model.max_length)
    probe = ["Where does Alice live? She lives in Paris, 2024.", "\u00e9t\u00e9 [PAD] \u65e5\u672c"]
    expected = model.tokenizer.encode(probe)
    got = [list(ids) for ids in tokenizer(probe, add_special_tokens=False)["input_ids"]]
    if got != expected:
        raise TransferError(f"model {row.id}'s tokenizer cannot be written as a Hugging Face tokenizer that gives "
                            "the same ids")
    model.net.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = folder / "tokenizer_config.json"
    if kind != "pretrained" and config.is_file():  # the class name transformers 4 and 5 both know
        data = json.loads(config.read_text(encoding="utf-8"))
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    meta = {"format": LM_FORMAT, "model_id": row.id, "task": recipe.task, "family": recipe.model.family,
            "tokenizer": kind, "max_length": model.max_length, "weights_sha256": row.weights_sha256,
            "recipe": recipe.to_toml(), "disgorge_version": _version()}
    (folder / LM_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    what = {"word": "its word-level vocabulary as a `tokenizers` WordLevel tokenizer",
            "char": "its byte tokenizer as a byte-level BPE without merges (token = 4 + byte)",
            "pretrained": "its own tokenizer"}[kind]
    return (f"The folder is a Hugging Face causal LM (`save_pretrained`: `config.json`, `{WEIGHTS}`) with "
            f"{what}, loaded by `AutoModelForCausalLM` and `AutoTokenizer`; `{LM_META}` holds disgorge's facts.")


def _write_text_classifier(model: nn.Module, task: Task, row: ModelRow, recipe: Recipe, folder: Path) -> str:
    """A text classifier over a pretrained encoder: the encoder as a Hugging Face folder (LoRA adapters merged into
    its weights), its tokenizer, the head as ``head.safetensors`` and ``classifier.json``; checked by running
    :data:`TEXT_USAGE` on them before the folder appears. Returns the card's layout sentence."""
    from safetensors.torch import save as st_save

    encoder = copy.deepcopy(model.encoder).cpu()
    if callable(getattr(encoder, "merge_and_unload", None)):  # peft LoRA: folded into the weights
        encoder = encoder.merge_and_unload()
    encoder.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    (folder / TEXT_HEAD).write_bytes(st_save(head, metadata={"format": "pt"}))
    meta = {"format": TEXT_FORMAT, "model_id": row.id, "task": recipe.task, "family": recipe.model.family,
            "num_classes": int(model.head.out_features), "max_length": int(model.max_length), "pooling": "mean",
            "weights_sha256": row.weights_sha256, "base": row.info["data"].get("base"), "recipe": recipe.to_toml(),
            "disgorge_version": _version()}
    (folder / TEXT_META).write_text(json.dumps(_json(meta), indent=2) + "\n", encoding="utf-8")
    scope: dict[str, Any] = {"__name__": "disgorge_export_check"}
    with _hf_bars():
        exec(compile(TEXT_USAGE.replace('Path(".")', f"Path({str(folder)!r})"), "README.md", "exec"), scope)
    sample = ["Free entry: win a prize now!", "See you at lunch tomorrow?", "ok"]
    with torch.no_grad():
        ours = task.logits(model.eval(), task.batch_of(sample)).cpu()
        gap = float((scope["logits"](sample) - ours).abs().max())
    if not gap <= CHECK_TOLERANCE * max(1.0, float(ours.abs().max())):
        raise TransferError(f"the exported encoder and head do not reproduce model {row.id}'s logits (off by "
                            f"{gap:.3g}); nothing was written")
    return (f"The folder is the fine-tuned encoder as a Hugging Face folder (`save_pretrained`, with its tokenizer), "
            f"mean-pooled under a linear head (`{TEXT_HEAD}`); `{TEXT_META}` holds the class count, the token limit "
            "and disgorge's facts.")


def _write_classifier(model: nn.Module, row: ModelRow, recipe: Recipe, folder: Path) -> str:
    """``model.safetensors`` and ``config.json`` of a classifier, checked by running :data:`LOADER` on them before the
    folder appears; returns the card's layout sentence."""
    from safetensors.torch import save as st_save

    data = row.info["data"]
    layers = network_layers(model)
    config = {"format": CLASSIFIER_FORMAT, "task": recipe.task, "family": recipe.model.family,
              "params": _json(recipe.model.params), "input_shape": list(data["input_shape"]),
              "num_classes": int(data["num_classes"]), "preprocessing": data.get("transform"),
              "layers": [layer.spec() for layer in layers],
              "disgorge": {"model_id": row.id, "weights_sha256": row.weights_sha256, "recipe": recipe.to_toml(),
                           "version": _version()}}
    (folder / WEIGHTS).write_bytes(st_save(flat_state(layers), metadata={"format": "pt"}))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    scope: dict[str, Any] = {"__name__": "disgorge_export_check"}
    exec(compile(LOADER.replace("net = load()", f"net = load({str(folder)!r})"), "README.md", "exec"), scope)
    x = torch.randn(8, *data["input_shape"], generator=torch.Generator().manual_seed(0))
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    with torch.no_grad():
        gap = float((scope["net"](x) - model(x.to(device)).cpu()).abs().max())
    if not gap <= CHECK_TOLERANCE:
        raise TransferError(f"the exported network does not reproduce model {row.id}'s logits (off by {gap:.3g}); "
                            "nothing was written")
    return (f"`{WEIGHTS}` holds the weights and `config.json` lists the network as torch layers after the input "
            "preprocessing; the loader below rebuilds it with torch and safetensors alone.")


# -- import -----------------------------------------------------------------------------------------------------------

@dataclass
class ImportPlan:
    """A model read from a folder and checked, ready to register with its records (nothing written yet)."""

    task: str
    model: nn.Module
    recipe: Recipe
    data: dict[str, Any]
    note: dict[str, Any]
    folder_tokenizer: Any = None  # a language model folder's own tokenizer, compared with the model's on the records


def _declared_recipe(path: str | Path | None, folder_recipe: str | None, where: str) -> Recipe | None:
    """The recipe a model was trained with, if known: ``--recipe FILE``, else the one an export wrote."""
    if path is not None:
        return Recipe.load(path)
    if folder_recipe:
        return Recipe.from_toml(folder_recipe, where=f"the recipe in {where}")
    return None


def _default_train(task: str) -> TrainSpec:
    """The train settings of the task's recipe template (used when a folder says nothing of its training)."""
    return Recipe.from_toml(RECIPE_TEMPLATES[task]).train


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a regular file (a link, FIFO or folder in its place is refused), as a one-line error."""
    try:
        data = json.loads(read_regular(path, what).decode("utf-8"))
    except DisgorgeError as exc:
        raise TransferError(str(exc)) from None
    except ValueError as exc:
        raise TransferError(f"{what} {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TransferError(f"{what} {path} must hold a JSON object")
    return data


def read_import(folder: str | Path, *, base: str | Path | None = None, recipe: str | Path | None = None) -> ImportPlan:
    """Read and check a model folder to import: a Hugging Face causal LM (``config.json`` with ``model_type``, as
    ``save_pretrained`` writes it) or a classifier as :func:`export_model` writes it. ``base`` is the Hugging Face
    folder a language model was fine-tuned from, ``recipe`` a recipe file declaring how it was trained (else the one
    an export wrote into the folder, if any): a classifier takes its name, seed and train settings (the network and
    its preprocessing are the folder's), a language model its train settings and, without a base, a from-scratch
    family such as ``gpt2``. Nothing is written; every problem is a one-line :class:`TransferError` (or a recipe's
    :class:`~disgorge.spec.RecipeError`)."""
    path = Path(folder)
    if not path.is_dir():
        raise TransferError(f"{path} is not a folder; import takes a folder written by save_pretrained or by "
                            "`disgorge export`")
    config = _read_json(path / "config.json", "model config")
    if config.get("format") == CLASSIFIER_FORMAT:
        if base is not None:
            raise TransferError("--base serves fine-tuned language models; a classifier is retrained from its recipe")
        return _read_classifier(path, config, recipe)
    if "model_type" in config:
        with _hf_bars():
            return _read_lm(path, base, recipe)
    raise TransferError(f"{path / 'config.json'} is neither a Hugging Face model config (no model_type) nor a "
                        f"disgorge classifier's (format {CLASSIFIER_FORMAT!r})")


def _read_classifier(folder: Path, config: dict[str, Any], recipe_file: str | Path | None) -> ImportPlan:
    from safetensors.torch import load as st_load

    where = f"{folder / 'config.json'}"
    missing = [k for k in ("family", "params", "input_shape", "num_classes", "layers") if k not in config]
    if missing:
        raise TransferError(f"{where} lacks {', '.join(missing)}; re-export the model")
    shape, classes, facts = config["input_shape"], config["num_classes"], config.get("preprocessing")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                      for d in shape)):
        raise TransferError(f"{where}: input_shape must be a list of positive integers, got {shape!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise TransferError(f"{where}: num_classes must be an integer of at least 2, got {classes!r}")
    if facts is not None and not (isinstance(facts, dict) and isinstance(facts.get("kind"), str)
                                  and facts.get("input_shape") == shape and isinstance(facts.get("shape"), list)):
        raise TransferError(f"{where}: preprocessing must be null or the fitted facts of the input transform (kind, "
                            "input_shape, shape, shift, scale)")
    declared = _declared_recipe(recipe_file, (config.get("disgorge") or {}).get("recipe"), where)
    spec = ModelSpec(str(config["family"]), config["params"] if isinstance(config["params"], dict) else {})
    prep = DataSpec(transform=facts["kind"] if facts else "",
                    shape=tuple(facts["shape"]) if facts and facts["shape"] != shape else ())
    start = declared or Recipe(name=f"imported-{folder.name}"[:80] or "imported",
                               train=_default_train("classification"))
    if start.task != "classification":
        raise TransferError(f"the declared recipe trains a {start.task} model; {folder} holds a classifier")
    if start.sharding is not None:
        raise TransferError("the declared recipe is sharded; an imported classifier is one network: drop [sharding]")
    recipe = start.replace(model=spec, data=prep)  # the network and its preprocessing are the folder's
    task = check_recipe(recipe, where)
    data = {"input_shape": shape, "num_classes": classes, **({"transform": facts} if facts else {})}
    try:
        with torch.random.fork_rng():
            net = task.build_model(spec, data)
    except (DisgorgeError, KeyError, TypeError, ValueError) as exc:
        raise TransferError(f"{where} describes no network disgorge can build ({exc})") from None
    layers = network_layers(net)
    ours, theirs = _json([layer.spec() for layer in layers]), config["layers"]
    if ours != theirs:
        theirs = theirs if isinstance(theirs, list) else []
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                     min(len(ours), len(theirs)))
        raise TransferError(f"{where}: its layers do not match family {spec.family!r} with its params (layer {first}"
                            f" differs); the folder was changed or not written by `disgorge export`")
    try:
        flat = st_load(read_regular(folder / WEIGHTS, "model weights"))
    except DisgorgeError as exc:
        raise TransferError(str(exc)) from None
    except Exception as exc:  # safetensors' own error types for a malformed file
        raise TransferError(f"{folder / WEIGHTS} is not valid safetensors ({exc})") from None
    try:
        net.load_state_dict(nested_state(layers, flat, str(folder / WEIGHTS)))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise TransferError(f"{folder / WEIGHTS} does not fit the network config.json describes ({first})") from None
    net.eval()
    note = _note(folder, "classifier", base=None, declared=declared is not None,
                 reference=declared is not None,
                 reference_note=("a reference is retrained from scratch with the declared recipe on the records kept"
                                 if declared is not None else
                                 "how it was trained is unknown (no recipe), so no model retrained without forgotten "
                                 "records can be made: its certificates are reference-free; import it with --recipe "
                                 "FILE to allow one"))
    return ImportPlan("classification", net, recipe, data, note)


def _read_lm(folder: Path, base: str | Path | None, recipe_file: str | Path | None) -> ImportPlan:
    task = get_task("causal_lm")
    meta = _read_json(folder / LM_META, "disgorge facts") if (folder / LM_META).is_file() else {}
    declared = _declared_recipe(recipe_file, meta.get("recipe"), str(folder / LM_META))
    if declared is not None and declared.task != "causal_lm":
        raise TransferError(f"the declared recipe trains a {declared.task} model; {folder} holds a causal LM")
    if declared is not None and declared.sharding is not None:
        raise TransferError("the declared recipe is sharded; an imported language model is one network: drop "
                            "[sharding]")
    length = (declared.model.params.get("max_length") if declared is not None else None) or meta.get("max_length")
    params = {"max_length": length} if isinstance(length, int) and not isinstance(length, bool) else {}
    model = PretrainedFamily(path=str(folder.resolve()), **params).build({})
    params["max_length"] = model.max_length
    train = declared.train if declared is not None else _default_train("causal_lm")
    name = declared.name if declared is not None else f"imported-{folder.name}"[:80]
    data: dict[str, Any] = {}
    if base is not None:
        base_path = Path(base).resolve()
        spec = ModelSpec("pretrained", {"path": str(base_path), **params})
        how = "base"
        ref = (f"a reference fine-tunes the base network {base_path} on the records kept, with the "
               + ("declared recipe's" if declared is not None else "default (undeclared)") + " train settings")
    elif declared is not None and declared.model.family != "pretrained":
        spec = declared.model
        if spec.params.get("tokenizer", "word") == "word":
            vocab = [w for w, _ in sorted(model.tokenizer.hf.get_vocab().items(), key=lambda kv: kv[1])]
            data["vocab"] = vocab
            WordTokenizer(vocab)  # refuses a vocabulary that is not a disgorge word vocabulary
        how, ref = "recipe", (f"a reference is trained from scratch with the declared {spec.family} recipe on the "
                              "records kept")
    else:
        spec = ModelSpec("pretrained", {"path": str(folder.resolve()), **params})
        how = "none"
        ref = ("it was imported without the network it was fine-tuned from (--base), so no model retrained without "
               "forgotten records can be made: its certificates are reference-free")
    recipe = Recipe(name=name or "imported", task="causal_lm", seed=declared.seed if declared is not None else 0,
                    model=spec, train=train)
    check_recipe(recipe, f"the recipe of {folder}")
    net = model
    if how != "none":
        try:
            with torch.random.fork_rng():
                net = task.build_model(spec, data)
        except DisgorgeError as exc:
            raise TransferError(str(exc)) from None
        try:
            net.load_state_dict(model.state_dict())
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0].strip()
            source = f"the base network {spec.params.get('path')}" if how == "base" else "the declared recipe's network"
            raise TransferError(f"the model in {folder} does not fit {source} ({first[:300]})") from None
        net.eval()
    note = _note(folder, "hf-causal-lm", base=str(spec.params["path"]) if how == "base" else None,
                 declared=declared is not None, reference=how != "none", reference_note=ref)
    if how == "base":
        note["base_sha256"] = base_digest(recipe)
    return ImportPlan("causal_lm", net, recipe, data, note, folder_tokenizer=model.tokenizer)


def _note(folder: Path, layout: str, *, base: str | None, declared: bool, reference: bool,
          reference_note: str) -> dict[str, Any]:
    """The ``imported`` block of an imported model's info: where it came from and whether (and how) a model
    retrained without forgotten records can be made for ``exact`` verification."""
    return {"folder": str(folder.resolve()), "layout": layout, "base": base, "recipe": "declared" if declared
            else "default", "reference": reference, "reference_note": reference_note}


def _check_records(plan: ImportPlan, task: Task, data: RecordDataset) -> None:
    """Refuse records the model cannot have been trained on: another input shape or a class it lacks; texts its
    folder's tokenizer reads otherwise than the model's."""
    if plan.task == "classification":
        shape = list(data.tensors["x"].shape[1:])
        if shape != list(plan.data["input_shape"]):
            raise InvalidRequest(f"the records have input shape {shape} but the model takes "
                                 f"{plan.data['input_shape']}; they cannot be what it was trained on")
        top = int(data.tensors["y"].max())
        if top >= plan.data["num_classes"]:
            raise InvalidRequest(f"a record is labelled {top} but the model has {plan.data['num_classes']} classes; "
                                 "the records cannot be what it was trained on")
        return
    from .tasks.causal_lm import texts

    sample = [t for column in ("prompt", "answer") for t in texts(data.tensors_slice(0, 64), column) if t]
    if plan.folder_tokenizer is not None and \
            plan.folder_tokenizer.encode(sample) != plan.model.tokenizer.encode(sample):
        raise InvalidRequest("the folder's tokenizer reads the records otherwise than the "
                             + ("base network's" if plan.note["base"] else "recipe's") + " tokenizer; import with the "
                             "base the model was fine-tuned from")


def register_import(ws: Workspace, plan: ImportPlan, sources: Sequence[str]) -> ModelRow:
    """Record ``plan``'s model as trained on the live training records of ``sources`` (already in the ledger): check
    the records fit it, write its folder and insert its row, kind ``imported`` (the caller's transaction, if any,
    commits it). Its recipe selects those sources."""
    if not sources:
        raise InvalidRequest("name the records the model was trained on: --records FILE --source NAME (new records) or"
                             " --trained-on SOURCE (records already ingested)")
    ids = ws.ledger.record_ids(sources=list(sources), split="train")
    if not ids:
        raise InvalidRequest(f"source(s) {', '.join(sources)} hold no live training records")
    task = get_task(plan.task)
    _check_records(plan, task, ws.dataset(task, ids))
    recipe = plan.recipe.replace(data=dataclasses.replace(plan.recipe.data, sources=tuple(sources)))
    info = {"data": plan.data, "imported": plan.note}
    row = ws.save_model(model=plan.model, recipe=recipe, records=ids, info=info, kind="imported", seconds=0.0)
    try:
        ws.ledger.insert_model(row)
    except BaseException:
        shutil.rmtree(ws.model_dir(row.id), ignore_errors=True)
        raise
    log.info("imported %s from %s: %d training records of %d source(s); reference: %s", row.id,
             plan.note["folder"], len(ids), len(sources), plan.note["reference"])
    return row


__all__ = ["LOADER", "Exported", "ImportPlan", "TransferError", "certificate_id", "export_model", "lineage",
           "read_import", "register_import"]
