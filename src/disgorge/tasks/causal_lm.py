"""Causal language modelling over Hugging Face ``transformers`` models: question answering and plain documents.

A record is either a question/answer pair (fields ``prompt`` and ``answer``; optionally ``key``, the words that make
the answer right, ``paraphrase`` and ``perturbed``, wrong answers separated by newlines, as TOFU has) or a document
(field ``text``). Text fields are UTF-8 bytes (``uint8`` arrays; :func:`text_field` makes them). The loss of a record
is the mean negative log-likelihood of its answer tokens given the question (of every token for a document).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidRequest
from ..ledger import Record
from ..models.language import LanguageModel, lm_family, require_lm
from ..models.language import prune_vocabulary as prune_word_vocabulary
from ..spec import DataSpec, ModelSpec
from .base import Batch, FigureSet, RecordDataset, Task
from .registry import TASKS

TEXT_COLUMNS = ("prompt", "answer", "key", "paraphrase", "perturbed")
TEXT_FIELDS = ("text", *TEXT_COLUMNS)  # the fields a language record may hold (a document's ``text`` or a question)
LM_FIGURES = FigureSet(
    keys=("forget_accuracy", "retain_accuracy", "test_accuracy", "forget_quality", "model_utility",
          "forget_truth_ratio", "retain_truth_ratio", "forget_prob", "retain_prob", "forget_rouge", "retain_rouge",
          "verbmem", "mia_loss", "mia_zlib", "mia_mink", "mia_minkpp", "privleak", "effect"),
    labels={"forget_accuracy": "forget answer acc.", "retain_accuracy": "retain answer acc.",
            "test_accuracy": "held-out answer acc.", "forget_quality": "forget quality (KS p)",
            "model_utility": "model utility", "forget_truth_ratio": "forget truth ratio",
            "retain_truth_ratio": "retain truth ratio", "forget_prob": "forget answer prob.",
            "retain_prob": "retain answer prob.", "forget_rouge": "forget ROUGE-L", "retain_rouge": "retain ROUGE-L",
            "verbmem": "verbatim memorisation", "mia_loss": "MIA AUC (LOSS)", "mia_zlib": "MIA AUC (zlib)",
            "mia_mink": "MIA AUC (Min-K%)", "mia_minkpp": "MIA AUC (Min-K%++)", "privleak": "privleak",
            "effect": "effect"},
    gap=("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_mink"),
    retain="retain_accuracy", test="test_accuracy", mia="mia_mink",
    units="Accuracies, verbatim memorisation, MIA AUCs and privleak in percent; probabilities, ROUGE-L, truth "
          "ratios, forget quality and model utility from 0 to 1.",
    bench=(("forget_accuracy", "forget acc."), ("retain_accuracy", "retain acc."), ("test_accuracy", "held-out acc."),
           ("forget_quality", "forget quality"), ("model_utility", "model utility"),
           ("forget_truth_ratio", "forget TR"), ("verbmem", "VerbMem"), ("mia_mink", "Min-K% AUC"),
           ("privleak", "privleak")),
    membership="mia_mink", verbatim="verbatim")


def text_field(text: str) -> np.ndarray:
    """A text as a record field (UTF-8 bytes)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def field_text(value: np.ndarray) -> str:
    """Inverse of :func:`text_field`."""
    return np.asarray(value, dtype=np.uint8).tobytes().decode("utf-8")


def pad_texts(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes of each text, right-padded with zeros (``[N, W]`` uint8), and each one's length in bytes."""
    raw = [t.encode("utf-8") for t in texts]
    width = max((len(b) for b in raw), default=0)
    out = np.zeros((len(raw), max(width, 1)), dtype=np.uint8)
    for i, b in enumerate(raw):
        out[i, :len(b)] = np.frombuffer(b, dtype=np.uint8)
    return torch.from_numpy(out), torch.tensor([len(b) for b in raw], dtype=torch.long, device="cpu")


def texts(batch: Batch, column: str) -> list[str]:
    """The strings of one text column of a batch."""
    data, lengths = batch[column], batch[f"{column}_len"]
    return [bytes(row[:n].tolist()).decode("utf-8") for row, n in zip(data, lengths.tolist(), strict=True)]


def words(text: str) -> list[str]:
    """Lower-cased words (punctuation dropped): what answer matching compares."""
    return re.findall(r"\w+", text.lower())


def contains(haystack: str, needle: str) -> bool:
    """Whether the words of ``needle`` occur, in order and adjacent, in ``haystack``."""
    h, n = words(haystack), words(needle)
    return bool(n) and any(h[i:i + len(n)] == n for i in range(len(h) - len(n) + 1))


def _all_texts(data: RecordDataset) -> list[str]:
    """Every non-empty text of every text field of ``data`` (what a word vocabulary is trained on)."""
    return [t for c in TEXT_COLUMNS for t in texts(data.tensors, c) if t]


def _unwrap(model: nn.Module) -> LanguageModel:
    inner = getattr(model, "module", model)  # a distributed wrapper from accelerate
    if not isinstance(inner, LanguageModel):
        raise InvalidRequest(f"the causal_lm task needs a language model, got {type(inner).__name__}")
    return inner


@TASKS.register("causal_lm")
class CausalLMTask(Task):
    """Question answering and document modelling with a causal LM; answer-only loss for questions."""

    name: ClassVar[str] = "causal_lm"
    capabilities: ClassVar[frozenset[str]] = frozenset({"text", "hidden_states", "generation"})
    quick_accuracy_name: ClassVar[str] = "next-token accuracy"
    figures: ClassVar[FigureSet] = LM_FIGURES

    # -- data -----------------------------------------------------------------------------------------
    def dataset(self, records: Sequence[Record]) -> RecordDataset:
        """Pad each text column's bytes; documents become records with an empty prompt."""
        columns: dict[str, list[str]] = {c: [] for c in TEXT_COLUMNS}
        for r in records:
            if r.fields is None:
                raise InvalidRequest(f"record {r.id} was erased; its content is gone")
            f = r.fields
            if "text" in f:
                columns["prompt"].append("")
                columns["answer"].append(field_text(f["text"]))
            elif "prompt" in f and "answer" in f:
                columns["prompt"].append(field_text(f["prompt"]))
                columns["answer"].append(field_text(f["answer"]))
            else:
                raise InvalidRequest(f"record {r.id} is not a language record (needs field text, or prompt and "
                                     "answer)")
            for c in ("key", "paraphrase", "perturbed"):
                columns[c].append(field_text(f[c]) if c in f else "")
        tensors: dict[str, torch.Tensor] = {}
        for c, values in columns.items():
            tensors[c], tensors[f"{c}_len"] = pad_texts(values)
        return RecordDataset([r.id for r in records], **tensors)

    def user_records(self, data: Any, first_id: int = 0) -> list[Record]:
        """A list of dicts, each a document ``{"text": ...}`` or a question ``{"prompt": ..., "answer": ...}`` with
        optional ``key``, ``paraphrase`` and ``perturbed`` (a list of wrong answers), as JSON Lines ingest reads."""
        if not isinstance(data, (list, tuple)) or not all(isinstance(d, dict) for d in data):
            raise InvalidRequest("language-model data must be a list of dicts with 'text', or 'prompt' and 'answer'")
        out = []
        for i, item in enumerate(data):
            values = {k: "\n".join(v) if k == "perturbed" and isinstance(v, (list, tuple)) else v
                      for k, v in item.items() if k in ("text", *TEXT_COLUMNS)}
            if not all(isinstance(v, str) for v in values.values()):
                raise InvalidRequest(f"item {i}: text fields must be strings")
            out.append(Record(first_id + i, "user", "", {k: text_field(v) for k, v in values.items()}, {}, "train",
                              "active"))
        return out

    def data_info(self, data: RecordDataset, spec: ModelSpec | None = None,
                  prep: DataSpec | None = None) -> dict[str, Any]:
        """What the model family learns from the training texts (the word vocabulary, for ``word``); texts take no
        ``[data]`` preprocessing (:func:`~disgorge.tasks.check_recipe` refuses it)."""
        require_lm()
        if spec is None:
            return {}
        return lm_family(spec.family, spec.params).data_info(_all_texts(data))

    def retrained_info(self, data_info: dict[str, Any], retain: RecordDataset, spec: ModelSpec) -> dict[str, Any]:
        """The facts learned afresh from ``retain`` (for ``word``, a vocabulary of the retained texts alone), so a model
        retrained without some records never names what only they said."""
        return self.data_info(retain, spec)

    def prune_vocabulary(self, model: nn.Module, data_info: dict[str, Any],
                         retain: RecordDataset) -> tuple[nn.Module, dict[str, Any]]:
        """For a word vocabulary: drop the words no text of ``retain`` (any text field) uses, except the specials and
        the refusals' words, with their embedding and tied output rows (in place); the model then tokenises with the
        smaller vocabulary, and a text that used a dropped word reads ``[UNK]`` there. Other tokenizers unchanged."""
        _, info = prune_word_vocabulary(_unwrap(model), data_info, _all_texts(retain))
        return model, info

    def check_model(self, spec: ModelSpec) -> None:
        """The language-model family must be known and its parameters valid (a ``pretrained`` folder must exist)."""
        require_lm()
        lm_family(spec.family, spec.params)

    def build_model(self, spec: ModelSpec, info: dict[str, Any]) -> nn.Module:
        """The recipe's language model (``gpt2`` from a config, or ``pretrained`` from a local folder)."""
        require_lm()
        return lm_family(spec.family, spec.params).build(info)

    def accelerator(self, precision: str = "fp32") -> Any:
        """A Hugging Face ``accelerate`` Accelerator: one process here; ``accelerate launch`` with a config (several
        GPUs, FSDP, DeepSpeed) scales the same recipe out. It leaves device placement to disgorge (the model is
        already where ``--device`` put it, and batches follow the model) and runs ``bf16`` mixed precision when the
        recipe's ``train.precision`` asks for it."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        mixed = "bf16" if precision == "bf16" else "no"
        # accelerate keeps one process-wide state and refuses a second Accelerator with another precision; one
        # process here trains recipes of either kind, so the state is reset when the precision changes.
        if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
            AcceleratorState._reset_state(True)
        return Accelerator(device_placement=False, mixed_precision=mixed)

    # -- tokens ---------------------------------------------------------------------------------------
    def encode(self, model: nn.Module, prompts: Sequence[str], answers: Sequence[str]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[BOS] prompt answer [EOS]``, right-padded: ids ``[B, T]``, attention mask, and a mask of the target
        positions (``[B, T-1]``, shifted) that belong to the answer. Too long a pair loses the end of its answer."""
        lm = _unwrap(model)
        tok = lm.tokenizer
        p_ids, a_ids = tok.encode(prompts), tok.encode(answers)
        rows, targets = [], []
        for p, a in zip(p_ids, a_ids, strict=True):
            p = p[-(lm.max_length - 2):]
            a = ([*a, tok.eos_id])[:max(lm.max_length - 1 - len(p), 1)]
            rows.append([tok.bos_id, *p, *a])
            targets.append((len(p), len(a)))
        width = max(len(r) for r in rows)
        # Built on the CPU (token lists live there), then moved to the model in one copy each.
        ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long, device="cpu")
        attention = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
        answer = torch.zeros((len(rows), width - 1), dtype=torch.bool, device="cpu")
        for i, (row, (np_, na)) in enumerate(zip(rows, targets, strict=True)):
            ids[i, :len(row)] = torch.tensor(row, device="cpu")
            attention[i, :len(row)] = 1
            answer[i, np_:np_ + na] = True
        device = lm.device
        return ids.to(device), attention.to(device), answer.to(device)

    def token_logprobs(self, model: nn.Module, prompts: Sequence[str], answers: Sequence[str], *,
                       stats: bool = False) -> dict[str, torch.Tensor]:
        """Log-probability of each answer token (``logp``, ``mask``) and whether it is the model's top prediction
        (``argmax_ok``); with ``stats`` also the mean and standard deviation of the log-probability over the
        vocabulary at each position (Min-K%++)."""
        logits, targets, mask = self._next_token_logits(model, prompts, answers)
        logprobs = F.log_softmax(logits, dim=-1)
        out = {"logp": logprobs.gather(-1, targets[..., None]).squeeze(-1), "mask": mask,
               "argmax_ok": logits.argmax(-1) == targets}
        if stats:
            from ..evaluate.lm_metrics import vocab_logprob_moments

            out["mu"], out["sigma"] = vocab_logprob_moments(logprobs)
        return out

    def answer_logits(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next-token scores at each target position of the batch's records (``[B, T-1, V]``, float), the target
        tokens (``[B, T-1]``) and the mask of the positions that belong to the answer (``[B, T-1]``): what methods
        whose loss is defined per answer token (WGA, UNDIAL, PDU) read."""
        return self._next_token_logits(model, texts(batch, "prompt"), texts(batch, "answer"))

    def _next_token_logits(self, model: nn.Module, prompts: Sequence[str], answers: Sequence[str]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, attention, mask = self.encode(model, prompts, answers)
        return model(ids, attention).logits[:, :-1].float(), ids[:, 1:], mask

    def sequence_nll(self, model: nn.Module, prompts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """Mean negative log-likelihood of each answer's tokens given its prompt, ``[B]``."""
        return _mean_nll(self.token_logprobs(model, prompts, answers))

    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Answer-only mean token NLL of each record (every token for documents)."""
        return self.sequence_nll(model, texts(batch, "prompt"), texts(batch, "answer"))

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks, in order."""
        return _unwrap(model).blocks()

    def hidden_states(self, model: nn.Module, batch: Batch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations after block ``layer`` (``[B, T, D]``; negative counts from the last block) and the attention
        mask ``[B, T]``."""
        ids, attention, _ = self.encode(model, texts(batch, "prompt"), texts(batch, "answer"))
        hidden = model(ids, attention, output_hidden_states=True).hidden_states  # embeddings, then each block
        blocks = len(hidden) - 1
        index = layer + blocks if layer < 0 else layer
        if not 0 <= index < blocks:
            raise InvalidRequest(f"layer {layer} does not exist; the model has {blocks} blocks")
        return hidden[index + 1], attention

    def key_span(self, data: RecordDataset) -> RecordDataset:
        """The records with each answer cut to start at its key (the words that make it right): the text before the
        key moves into the prompt, so a loss on the answer is a loss on the fact, not on the sentence around it.
        Records without a key (or whose answer does not contain it) are unchanged."""
        prompts, answers, keys = (texts(data.tensors, c) for c in ("prompt", "answer", "key"))
        for i, (p, a, k) in enumerate(zip(prompts, answers, keys, strict=True)):
            at = a.find(k) if k else -1
            if at > 0:
                prompts[i], answers[i] = p + a[:at], a[at:]
        tensors = dict(data.tensors)
        tensors["prompt"], tensors["prompt_len"] = pad_texts(prompts)
        tensors["answer"], tensors["answer_len"] = pad_texts(answers)
        return RecordDataset(data.ids, **tensors)

    def with_answers(self, batch: Batch, answers: Sequence[str]) -> Batch:
        """The batch with new answers (the same questions)."""
        data, lengths = pad_texts(answers)
        return {**batch, "answer": data, "answer_len": lengths}

    # -- generation and evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model: nn.Module, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` (left-padded batch, key/value cache)."""
        lm = _unwrap(model)
        tok = lm.tokenizer
        encoded = [[tok.bos_id, *p][-(lm.max_length - 1):] for p in tok.encode(prompts)]
        width = max(len(e) for e in encoded)
        new = max(1, min(max_new_tokens, lm.max_length - width))
        ids = torch.full((len(encoded), width), tok.pad_id, dtype=torch.long, device="cpu")
        attention = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, width - len(e):] = torch.tensor(e, device="cpu")
            attention[i, width - len(e):] = 1
        out = lm.net.generate(input_ids=ids.to(lm.device), attention_mask=attention.to(lm.device),
                              max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_id,
                              eos_token_id=tok.eos_id)[:, width:].tolist()
        cut = [row[:row.index(tok.eos_id)] if tok.eos_id in row else row for row in out]
        return tok.decode(cut)

    def quick_accuracy(self, model: nn.Module, data: RecordDataset) -> float:
        """Share (percent) of answer tokens that are the model's top prediction under teacher forcing: a
        generation-free utility score for guards."""
        was_training = model.training
        model.eval()
        hits = total = 0
        with torch.no_grad():
            for i in range(0, len(data), 128):
                batch = data.tensors_slice(i, i + 128)
                out = self.token_logprobs(model, texts(batch, "prompt"), texts(batch, "answer"))
                hits += int((out["argmax_ok"] & out["mask"]).sum())
                total += int(out["mask"].sum())
        model.train(was_training)
        return 100.0 * hits / max(total, 1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: RecordDataset, batch_size: int = 128) -> dict[str, np.ndarray]:
        """Per record: ``loss`` (mean answer NLL), ``confidence`` (length-normalised answer probability),
        ``correct`` (the greedy answer contains the key, or reproduces the answer / the document's second half),
        ``rouge`` (ROUGE-L recall of that generation, TOFU's), ``verbatim`` (its ROUGE-L F1 without stemming,
        MUSE's VerbMem), the MIA scores ``mia_loss``, ``mia_zlib``, ``mia_mink``,
        ``mia_minkpp`` (higher = more member-like) and, for records with wrong answers, ``truth_ratio``."""
        from ..evaluate import lm_metrics as lm

        was_training = model.training
        model.eval()
        cols: dict[str, list[Any]] = {k: [] for k in ("loss", "confidence", "correct", "rouge", "mia_loss",
                                                      "mia_zlib", "mia_mink", "mia_minkpp", "truth_ratio",
                                                      "verbatim")}
        generations: list[str] = []
        for i in range(0, len(data), batch_size):
            batch = data.tensors_slice(i, i + batch_size)
            prompts, answers, keys = texts(batch, "prompt"), texts(batch, "answer"), texts(batch, "key")
            out = self.token_logprobs(model, prompts, answers, stats=True)
            mask = out["mask"]
            nll = _mean_nll(out)
            per_token = [row[m].cpu().numpy() for row, m in zip(out["logp"], mask, strict=True)]
            mus = [row[m].cpu().numpy() for row, m in zip(out["mu"], mask, strict=True)]
            sigmas = [row[m].cpu().numpy() for row, m in zip(out["sigma"], mask, strict=True)]
            cols["loss"].append(nll.cpu().numpy())
            cols["mia_loss"].append(lm.loss_score(per_token))
            cols["mia_zlib"].append(lm.zlib_score(per_token, answers))
            cols["mia_mink"].append(lm.mink_score(per_token, lm.MINK_K))
            cols["mia_minkpp"].append(lm.minkpp_score(per_token, mus, sigmas, lm.MINK_K))
            cols["truth_ratio"].append(self._truth_ratios(model, batch, prompts))
            # Questions are answered from the question; documents are continued from their first half.
            split = [_halves(a) if not p else (p, a) for p, a in zip(prompts, answers, strict=True)]
            targets = [t for _, t in split]
            budget = max(len(t) for t in _unwrap(model).tokenizer.encode(targets)) + 2
            generated = self.generate(model, [s for s, _ in split], budget)
            generations += generated
            cols["rouge"].append(lm.rouge_l_many(generated, targets, kind="recall"))
            cols["verbatim"].append(lm.verbmem_scores(generated, targets))
            cols["correct"].append(np.array([
                float(contains(g, k)) if k else float(words(g) == words(t))
                for g, t, k in zip(generated, targets, keys, strict=True)]))
        model.train(was_training)
        result = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
        result["confidence"] = lm.answer_probability(result["loss"])
        result["generation"] = np.array(generations, dtype=object)
        return result

    def split_figures(self, forget: dict[str, np.ndarray], retain: dict[str, np.ndarray],
                      test: dict[str, np.ndarray], *, seed: int = 0) -> dict[str, float]:
        """TOFU's and MUSE's figures of one model: answer accuracy (percent) per split, answer probability, ROUGE-L
        recall and truth ratio on forget and retain, model utility (their harmonic mean on retain), verbatim
        memorisation (MUSE's VerbMem: percent ROUGE-L F1 of the forget set's generations) and four MIA AUCs,
        forget vs held-out (percent; 50 = the forget set looks unseen)."""
        from ..evaluate import lm_metrics as lm
        from ..evaluate.metrics import accuracy, mia_auc

        def mean(values: np.ndarray) -> float:
            values = values[~np.isnan(values)] if len(values) else values
            return float(np.mean(values)) if len(values) else float("nan")

        out: dict[str, float] = {}
        for name, outs in (("forget", forget), ("retain", retain), ("test", test)):
            out[f"{name}_accuracy"] = accuracy(outs["correct"])
        for name, outs in (("forget", forget), ("retain", retain)):
            out[f"{name}_prob"] = mean(outs["confidence"])
            out[f"{name}_rouge"] = mean(outs["rouge"])
            # TOFU's forms: min(R, 1/R) on forget (1 = no preference left), max(0, 1 - R) on retain (1 = knows).
            score = lm.truth_ratio_forget_score if name == "forget" else lm.truth_ratio_score
            out[f"{name}_truth_ratio"] = score(outs["truth_ratio"])  # NaN (no wrong answers) dropped
        utility = [out["retain_prob"], out["retain_rouge"]]
        if not np.isnan(out["retain_truth_ratio"]):
            utility.append(out["retain_truth_ratio"])
        out["model_utility"] = lm.model_utility(utility)
        out["verbmem"] = lm.verbmem(forget["verbatim"])
        for attack in ("loss", "zlib", "mink", "minkpp"):
            out[f"mia_{attack}"] = mia_auc(forget[f"mia_{attack}"], test[f"mia_{attack}"])
        return out

    def relative_figures(self, forget: dict[str, np.ndarray], figures: dict[str, float | None],
                         reference_forget: dict[str, np.ndarray],
                         reference_figures: dict[str, float | None]) -> dict[str, float | None]:
        """Forget quality (KS-test p-value of forget-set truth ratios against the retrained model's) and MUSE's
        privleak (relative Min-K% AUC gap to the retrained model, percent)."""
        from ..evaluate import lm_metrics as lm

        quality = lm.forget_quality(forget["truth_ratio"], reference_forget["truth_ratio"])  # drops NaN ratios
        auc, ref_auc = figures.get("mia_mink"), reference_figures.get("mia_mink")
        leak = None if auc is None or ref_auc is None else lm.privleak(auc, ref_auc)
        return {"forget_quality": quality, "privleak": leak}

    def _truth_ratios(self, model: nn.Module, batch: Batch, prompts: list[str]) -> np.ndarray:
        from ..evaluate import lm_metrics as lm

        paraphrases, wrong = texts(batch, "paraphrase"), [w.split("\n") if w else [] for w in texts(batch, "perturbed")]
        ratios = np.full(len(prompts), np.nan)
        have = [i for i, (p, w) in enumerate(zip(paraphrases, wrong, strict=True)) if p and w]
        if not have:
            return ratios
        k = min(len(wrong[i]) for i in have)
        q = [prompts[i] for i in have]
        para = self.sequence_nll(model, q, [paraphrases[i] for i in have]).cpu().numpy()
        pert = np.stack([self.sequence_nll(model, q, [wrong[i][j] for i in have]).cpu().numpy() for j in range(k)], 1)
        ratios[have] = lm.truth_ratio(para, pert)
        return ratios


def _mean_nll(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean NLL of each row's masked (answer) tokens from :meth:`CausalLMTask.token_logprobs`, ``[B]``."""
    mask = out["mask"].float()
    return -(out["logp"] * mask).sum(1) / mask.sum(1).clamp(min=1)


def _halves(text: str) -> tuple[str, str]:
    """A document split at the word boundary nearest its middle: (prefix, continuation)."""
    parts = text.split(" ")
    cut = max(1, len(parts) // 2)
    return " ".join(parts[:cut]), " ".join(parts[cut:])
