"""SISA training (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021): Sharded, Isolated, Sliced, Aggregated.

The training records are dealt to ``S`` shards; each shard's network is trained in isolation over ``L`` stages, stage
``l`` on the shard's slices ``0..l`` (a growing set), and its weights are checkpointed after each stage. The shards'
predictions are aggregated into one model. A removal retrains only the shards that held the records, from the
checkpoint before the first slice that held one of them, so the result equals, weight for weight, the same recipe
trained from scratch without the records:

- a record's shard and slice are a keyed hash of its id (or, for ``by = "source"``, its shard is a hash of its source's
  name), so removing records moves no other record;
- every stage seeds its own initialisation, shuffling and dropout from (recipe seed, shard, slice) and starts a fresh
  optimiser, so a stage's result depends only on its starting weights and its data;
- stages before the first slice holding a removed record saw exactly the same data either way.

Shards left without records have no network; the ensemble is the shards that have some.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pyroaring import BitMap
from torch import nn

from .._io import sha256_bytes
from ..errors import IntegrityError, InvalidRequest
from ..executors import Executor
from ..executors.local import LocalExecutor
from ..ledger import bitmap as bm
from ..models import adapters
from ..spec import Recipe, ShardingSpec
from ..tasks import RecordDataset, Task, get_task
from .loop import FitResult, fit, make_optimizer, mean_loss

VOTE_SMOOTHING = 1e-3
"""Under ``vote``, this much of the mean probability is added to the vote shares, so ties break by confidence and no
class has probability zero (a loss stays finite)."""


PER_SOURCE_IDS = 2**31
"""Shard ids under ``shards = 0`` (one shard per source): a hash of the source's name modulo this. With 1,000 sources
the chance that two share an id is about 1 in 4,300 (n^2 / 2^32); they would then share a shard, which stays
exact."""


def _hash(*parts: object) -> int:
    """A 64-bit integer from BLAKE2b of the parts (stable across processes and machines, unlike ``hash``)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stage_seed(seed: int, shard: int, stage: int) -> int:
    """The torch seed of one shard's stage (``stage = -1``: its initialisation)."""
    return _hash("sisa-seed", seed, shard, stage) % (2**32)


def assign(data: RecordDataset, spec: ShardingSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each record's shard and slice: keyed hashes of its id (its shard: of its source's name under ``by =
    "source"``), so that the assignment of one record never depends on which others exist."""
    if spec.by == "source" and data.sources is None:
        raise InvalidRequest("sharding by source needs each record's source; train through a workspace")
    keys = data.sources if spec.by == "source" else data.ids
    count = PER_SOURCE_IDS if spec.per_source else spec.shards  # one shard per source: a 31-bit id from its name
    shard = np.fromiter((_hash("sisa-shard", seed, k) % count for k in keys), dtype=np.int64, count=len(data))
    piece = np.fromiter((_hash("sisa-slice", seed, i) % spec.slices for i in data.ids), dtype=np.int64,
                        count=len(data))
    return shard, piece


@dataclass
class Layout:
    """Which records each shard's slices hold (``slices[s][l]``: record ids), for the shards that hold any."""

    slices: dict[int, list[BitMap]]

    @classmethod
    def of(cls, data: RecordDataset, spec: ShardingSpec, seed: int) -> Layout:
        """The layout of ``data`` under ``spec``."""
        shard, piece = assign(data, spec, seed)
        out: dict[int, list[BitMap]] = {}
        for s in sorted(set(shard.tolist())):
            mine = shard == s
            out[s] = [BitMap(data.ids[mine & (piece == sl)].tolist()) for sl in range(spec.slices)]
        return cls(out)

    def records(self, shard: int) -> BitMap:
        """Every record of one shard."""
        return BitMap.union(*self.slices[shard]) if self.slices[shard] else BitMap()

    def to_info(self) -> list[dict[str, Any]]:
        """JSON form: one entry per shard, its slices as serialised roaring bitmaps (hex)."""
        return [{"shard": s, "records": len(self.records(s)), "slices": [bm.dumps(b).hex() for b in parts]}
                for s, parts in self.slices.items()]

    @classmethod
    def from_info(cls, members: list[dict[str, Any]]) -> Layout:
        """The layout a model's ledger info records."""
        return cls({int(m["shard"]): [bm.loads(bytes.fromhex(h)) for h in m["slices"]] for m in members})


# -- the aggregated model -----------------------------------------------------------------------------------------


def aggregate_log_probs(log_probs: torch.Tensor, how: str) -> torch.Tensor:
    """Combine the shards' log-probabilities ``[S, ..., C]`` into log-probabilities ``[..., C]``: the log of their
    mean probability (``mean_proba``), or of the vote shares with :data:`VOTE_SMOOTHING` of it (``vote``)."""
    mean = torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
    if how == "mean_proba":
        return mean
    votes = F.one_hot(log_probs.argmax(-1), log_probs.shape[-1]).to(log_probs.dtype).mean(0)
    return torch.log((votes + VOTE_SMOOTHING * mean.exp()) / (1 + VOTE_SMOOTHING))


class ShardedClassifier(nn.Module):
    """The shards' networks as one classifier whose scores are aggregated log-probabilities."""

    def __init__(self, members: Sequence[nn.Module], aggregate: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.aggregate = aggregate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregated log-probabilities ``[B, C]`` (the task reads them as logits)."""
        return aggregate_log_probs(torch.stack([F.log_softmax(m(x), dim=-1) for m in self.members]), self.aggregate)


class ShardedLMNet(nn.Module):
    """The shards' causal LMs (sharing one tokenizer) as one network: next-token log-probabilities averaged as
    probabilities, and greedy generation over them."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, use_cache: bool = False,
                position_ids: torch.Tensor | None = None) -> SimpleNamespace:
        """``.logits``: the aggregated next-token log-probabilities ``[B, T, V]``."""
        if output_hidden_states:
            raise InvalidRequest("a sharded language model has one hidden state per shard, not one; methods that "
                                 "steer activations cannot serve it (its removals retrain shards instead)")
        outs = [F.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).logits.float(), dim=-1) for m in self.members]
        return SimpleNamespace(logits=aggregate_log_probs(torch.stack(outs), "mean_proba"))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 pad_token_id: int, eos_token_id: int, use_cache: bool = True, **_: Any) -> torch.Tensor:
        """Greedy continuation of a left-padded batch under the aggregated next-token distribution (each shard keeps
        its own key/value cache; ``use_cache=False`` reruns the whole prefix each step, the reference behaviour)."""
        ids, mask = input_ids, attention_mask
        done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        caches: list[Any] = [None] * len(self.members)
        feed = ids
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            if use_cache:
                outs = []
                for i, m in enumerate(self.members):
                    name = _cache_name(m)
                    out = m(input_ids=feed, attention_mask=mask, position_ids=positions[:, -feed.shape[1]:],
                            use_cache=True, **{name: caches[i]})
                    caches[i] = getattr(out, name)
                    outs.append(F.log_softmax(out.logits[:, -1].float(), dim=-1))
                nxt = aggregate_log_probs(torch.stack(outs), "mean_proba").argmax(-1)
            else:
                nxt = self(ids, mask, position_ids=positions).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).to(mask.dtype)[:, None]], dim=1)
            feed = nxt[:, None]
            done |= nxt == eos_token_id
            if bool(done.all()):
                break
        return ids


def _cache_name(net: nn.Module) -> str:
    """What a transformers model calls its key/value cache, argument and output: ``cache`` from transformers 5,
    ``past_key_values`` before."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net  # a peft adapter forwards to its base
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _inner(model: nn.Module) -> nn.Module:
    """The network a shard trains: a language model's inner network (its wrapper holds the shared tokenizer), or the
    classifier itself."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) and hasattr(model, "tokenizer") else model


def assemble(task: Task, recipe: Recipe, data_info: dict[str, Any], nets: Sequence[nn.Module]) -> nn.Module:
    """One model from the shards' networks: a :class:`ShardedClassifier`, or for language models a freshly built
    wrapper (tokenizer, length) around a :class:`ShardedLMNet`."""
    spec = _spec(recipe)
    with torch.random.fork_rng(), torch.device("cpu"):
        host = task.build_model(recipe.model, data_info) if recipe.task == "causal_lm" else None
    if host is None or _inner(host) is host:
        return ShardedClassifier(nets, spec.aggregate)
    host.net = ShardedLMNet(nets)
    return host


def build_sharded(task: Task, recipe: Recipe, data_info: dict[str, Any], shards: Sequence[int]) -> nn.Module:
    """The (untrained) aggregated model of a sharded recipe with networks for ``shards``."""
    return assemble(task, recipe, data_info, [_inner(_member(task, recipe, data_info, s)) for s in shards])


def members_of(model: nn.Module) -> list[nn.Module]:
    """The shards' networks of an aggregated model (a language model's inner networks)."""
    return list(_inner(model).members)


def _spec(recipe: Recipe) -> ShardingSpec:
    if recipe.sharding is None:
        raise InvalidRequest(f"recipe {recipe.name!r} has no [sharding] table")
    return recipe.sharding


def _member(task: Task, recipe: Recipe, data_info: dict[str, Any], shard: int) -> nn.Module:
    """One shard's freshly initialised network (seeded by the recipe seed and the shard): the recipe's network, or
    with ``adapter_rank`` its frozen pretrained network with a fresh LoRA adapter."""
    with torch.random.fork_rng(), torch.device("cpu"):
        torch.manual_seed(stage_seed(recipe.seed, shard, -1))
        model = task.build_model(recipe.model, data_info)
        rank = _spec(recipe).adapter_rank
        return adapters.add_lora(model, rank) if rank else model


def _trained_state(net: nn.Module, recipe: Recipe) -> dict[str, torch.Tensor]:
    """What a shard's training changes: its adapter's weights over a frozen base, else all its weights."""
    return adapters.adapter_state(net) if _spec(recipe).adapter_rank else net.state_dict()


def check_shardable(task: Task, recipe: Recipe, data_info: dict[str, Any]) -> None:
    """Refuse what sharding cannot serve: a vote over language models, and a vocabulary or preprocessing statistics
    learned from the records (every shard would depend on every record)."""
    spec = _spec(recipe)
    if recipe.task == "causal_lm" and spec.aggregate == "vote":
        raise InvalidRequest("language models aggregate by mean probability: set sharding.aggregate = 'mean_proba'")
    if "vocab" in data_info:
        raise InvalidRequest("a sharded language model needs a vocabulary that holds no record's words, since all "
                             "shards share it: set model.tokenizer = 'char', or use a pretrained network")
    if data_info.get("transform", {}).get("kind") in ("standardize", "minmax"):
        raise InvalidRequest(f"data.transform = {recipe.data.transform!r} is fitted on every training record, so every "
                             "shard would depend on all of them: use scale:K (fitted on nothing) with [sharding]")
    if spec.adapter_rank and recipe.model.family != "pretrained":
        raise InvalidRequest("per-shard adapters (sharding.adapter_rank) train over a frozen pretrained network: set "
                             "model.family = 'pretrained' and model.path, or adapter_rank = 0 for whole networks")


# -- training and retraining --------------------------------------------------------------------------------------


@dataclass
class ShardRun:
    """What training or retraining the shards did: the aggregated model, its layout, the checkpoint files
    (name -> safetensors bytes) and, per retrained shard, the first stage retrained."""

    model: nn.Module
    layout: Layout
    files: dict[str, bytes]
    result: FitResult
    retrained: dict[int, int] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)  # shards left without records: their networks are gone
    examples: int = 0  # example-passes the (re)training ran: its work, comparable with a monolithic run's


def checkpoint_name(shard: int, stage: int) -> str:
    """File name of a shard's checkpoint after ``stage`` (kept for every stage but the last, whose weights are the
    model's)."""
    return f"shard-{shard:04d}-slice-{stage:04d}.safetensors"


Reader = Callable[[str], bytes]
"""Reads a checkpoint file of the parent model by name (checked against its recorded sha256)."""


def fit_sharded(task: Task, recipe: Recipe, data: RecordDataset, data_info: dict[str, Any],
                executor: Executor | None = None, *, device: torch.device | str = "cpu") -> ShardRun:
    """Train every shard of ``recipe`` on ``data`` from its initialisation, as independent jobs on ``executor`` (in
    this process when None) on ``device``; bit-identical on the CPU for the same executor settings."""
    check_shardable(task, recipe, data_info)
    layout = Layout.of(data, _spec(recipe), recipe.seed)
    if not layout.slices:
        raise InvalidRequest(f"recipe {recipe.name!r} selects no training records")
    return _run(task, recipe, data, data_info, layout, {s: (0, None) for s in layout.slices}, {}, {}, executor,
                device)


def retrain_sharded(task: Task, recipe: Recipe, parent: nn.Module, parent_info: dict[str, Any],
                    retain: RecordDataset, forget: BitMap, read: Reader, executor: Executor | None = None, *,
                    device: torch.device | str = "cpu") -> ShardRun:
    """The parent sharded model without the ``forget`` records: each shard that held one is retrained from its
    checkpoint before the first slice holding one (from its initialisation when that is slice 0); the others, and
    the checkpoints before that slice, are kept as they are. A shard left without records is dropped."""
    spec = _spec(recipe)
    recorded, now = parent_info["sharding"].get("base_sha256"), base_digest(recipe)
    if recorded != now:
        raise IntegrityError(f"the pretrained network at {recipe.model.params.get('path')} changed since the model "
                             "was trained (its safetensors sha256 differ): retrained shards would start from another "
                             "base than the untouched ones. Restore that folder, or retrain the model")
    old = Layout.from_info(parent_info["sharding"]["members"])
    parents = dict(zip(old.slices, members_of(parent), strict=True))
    layout = Layout({s: [b - forget for b in parts] for s, parts in old.slices.items()
                     if any(b - forget for b in parts)})
    plan: dict[int, tuple[int, bytes | None]] = {}
    kept: dict[int, nn.Module] = {}
    copied: dict[str, bytes] = {}
    for s in layout.slices:
        hits = [stage for stage, b in enumerate(old.slices[s]) if b & forget]
        first = hits[0] if hits else spec.slices
        for stage in range(min(first, spec.slices - 1)):  # the clean checkpoints carry over, each read once
            copied[checkpoint_name(s, stage)] = read(checkpoint_name(s, stage))
        if hits:
            plan[s] = (first, copied[checkpoint_name(s, first - 1)] if first > 0 else None)
        else:
            kept[s] = parents[s]
    run = _run(task, recipe, retain, parent_info["data"], layout, plan, kept, copied, executor, device)
    run.dropped = sorted(set(old.slices) - set(layout.slices))
    return run


SHARD_THREADS = 1
"""Torch threads of every shard's training, in this process or a worker (parallelism comes from workers)."""


@dataclass
class ShardJob:
    """One shard's (re)training, picklable for an executor: its records (all slices, after any removal) and from
    which stage and weights it starts."""

    task: str
    recipe: Recipe
    data_info: dict[str, Any]
    shard: int
    first: int
    start: bytes | None
    data: RecordDataset
    slices: list[list[int]]
    device: str = "cpu"


def train_shard(job: ShardJob) -> dict[str, Any]:
    """Train one shard from ``job.first`` to its last stage: its trained weights and checkpoints as safetensors bytes,
    and what the loop did. A module-level function, so executors can run shards in other processes. It runs on one
    torch thread (:data:`SHARD_THREADS`): a CPU's floating-point sums depend on how many threads split them, and a
    shard's weights must not depend on how many shards run at once or where."""
    threads = torch.get_num_threads()
    torch.set_num_threads(SHARD_THREADS)
    try:
        return _train_shard(job)
    finally:
        torch.set_num_threads(threads)


def _train_shard(job: ShardJob) -> dict[str, Any]:
    task, recipe, spec = get_task(job.task), job.recipe, _spec(job.recipe)
    net = _member(task, recipe, job.data_info, job.shard)
    if job.start is not None:
        _load_trained(net, load_state(job.start))
    net.to(job.device)
    out: dict[str, Any] = {"shard": job.shard, "files": {}, "steps": 0, "epochs": 0, "rollbacks": 0, "losses": [],
                           "examples": 0}
    for stage in range(job.first, spec.slices):
        ids = [i for part in job.slices[:stage + 1] for i in part]
        if ids:
            part = job.data.subset(ids)
            done = _train_stage(task, recipe, net, part, stage_seed(recipe.seed, job.shard, stage),
                                spec.epochs_per_slice(recipe.train.epochs), f"shard {job.shard} slice {stage}")
            out["steps"] += done.steps
            out["epochs"] += done.epochs
            out["rollbacks"] += done.rollbacks
            out["losses"] += done.losses
            out["examples"] += done.epochs * len(part)
        if stage < spec.slices - 1:
            out["files"][checkpoint_name(job.shard, stage)] = serialize_state(_trained_state(net, recipe))
    out["state"] = serialize_state(_trained_state(net, recipe))
    return out


def _run(task: Task, recipe: Recipe, data: RecordDataset, data_info: dict[str, Any], layout: Layout,
         plan: dict[int, tuple[int, bytes | None]], kept: dict[int, nn.Module], copied: dict[str, bytes],
         executor: Executor | None, device: torch.device | str = "cpu") -> ShardRun:
    """Train the shards in ``plan`` (shard -> (first stage, checkpoint to start it from or None for the
    initialisation)) as independent jobs on ``executor`` (in this process when None), keep the networks in
    ``kept``, and assemble them in shard order."""
    spec = _spec(recipe)
    started = time.perf_counter()
    jobs = [ShardJob(task.name, recipe, data_info, s, first, start, data.subset(layout.records(s)),
                     [sorted(b) for b in layout.slices[s]], str(device)) for s, (first, start) in plan.items()]
    runner = executor or LocalExecutor(workers=1)
    done = runner.map(train_shard, jobs, description=f"train {len(jobs)} shard(s)")
    files = dict(copied)
    result = FitResult()
    members: dict[int, nn.Module] = dict(kept)
    for out in done:
        net = _member(task, recipe, data_info, out["shard"])
        _load_trained(net, load_state(out["state"]))
        members[out["shard"]] = _inner(net.eval())
        files.update(out["files"])
        result.steps += out["steps"]
        result.epochs += out["epochs"]
        result.rollbacks += out["rollbacks"]
        result.losses += out["losses"]
    examples = sum(out["examples"] for out in done)
    order = sorted(members)
    model = assemble(task, recipe, data_info, [members[s] for s in order]).to(device)
    model.eval()
    result.seconds = time.perf_counter() - started
    files = dict(sorted(files.items()))
    result.info["sharding"] = {
        "shards": spec.shards, "slices": spec.slices, "by": spec.by, "aggregate": spec.aggregate,
        "epochs_per_slice": spec.epochs_per_slice(recipe.train.epochs), "adapter_rank": spec.adapter_rank,
        "members": [{**m, "sha256": sha256_bytes(serialize_state(_trained_state(members[m["shard"]], recipe)))}
                    for m in Layout({s: layout.slices[s] for s in order}).to_info()],
        "checkpoints": {name: sha256_bytes(b) for name, b in files.items()}, "examples": examples,
        "base_sha256": base_digest(recipe)}
    return ShardRun(model, layout, files, result, {s: first for s, (first, _) in plan.items()}, examples=examples)


def _train_stage(task: Task, recipe: Recipe, net: nn.Module, data: RecordDataset, seed: int, epochs: int,
                 description: str) -> FitResult:
    """One stage of one shard: a fresh optimiser and shuffling seeded by ``seed``, ``epochs`` passes over
    ``data``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        loader = task.loader(data, recipe.train.batch_size, shuffle=True, generator=generator)
        optimizer = make_optimizer(net.parameters(), recipe.train)
        out = fit(net, loader, mean_loss(task), optimizer, epochs=epochs, description=description,
                  accelerator=task.accelerator(recipe.train.precision))
    net.eval()
    return out


def serialize_state(state: dict[str, torch.Tensor]) -> bytes:
    """Safetensors bytes of a state dict (equal weights give equal bytes)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu().clone() for k, v in state.items()}, metadata={"format": "pt"})


def load_state(data: bytes) -> dict[str, torch.Tensor]:
    """A state dict from safetensors bytes."""
    from safetensors.torch import load

    return load(data)


def base_digest(recipe: Recipe) -> str | None:
    """SHA-256 of a pretrained network's weights files (``[model] family = "pretrained"``), which every shard starts
    from; None for networks built from the recipe alone."""
    path = recipe.model.params.get("path") if recipe.model.family == "pretrained" else None
    if not isinstance(path, str):
        return None
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.safetensors")):
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _load_trained(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint into a shard's network: all of it, or an adapter's weights over its frozen base."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any("lora_" in k for k in missing) or (missing and not any("lora_" in k for k in state)):
        raise IntegrityError(f"a slice checkpoint does not fit its shard's network (missing {len(missing)} and "
                             f"{len(unexpected)} unexpected weights); retrain the model with `disgorge train`")
