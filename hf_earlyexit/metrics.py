# Copyright 2026 The hf-earlyexit Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""What early exit is scored by: accuracy, speed-ups and seqeval's entity scores.

Shared by the trainer's evaluation ([`ExitLoss.metrics`] returns the per-example pairs of [`routing_metrics`] and
[`token_classification_metrics`]), calibration and [`~hf_earlyexit.evaluation`]. The speed conventions are those of
`docs/methods.md` section 4:

- layer speed-up: `L * N / sum(exit_layer)`, with `L` the depth of the full model (for a cascade, cumulative layers);
- FLOPs speed-up: `sum(FLOPs of the full model) / sum(FLOPs actually spent)`, per example from its real length.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .models.bert.modeling_exit_heads import problem_type_of


# --------------------------------------------------------------------------------------------------------------------
# Sequence classification
# --------------------------------------------------------------------------------------------------------------------


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def speed_summary(exit_layer: torch.Tensor, flops: torch.Tensor, full_layers: int, full_flops: torch.Tensor) -> dict:
    """Layer and FLOPs speed-up of a run against the full model (`docs/methods.md` section 4)."""
    return {
        "mean_exit_layer": float(exit_layer.float().mean()),
        "layer_speedup": full_layers * exit_layer.numel() / float(exit_layer.sum()),
        "flops_speedup": float(full_flops.sum()) / float(flops.sum()),
    }


def exit_score(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> tuple[str, torch.Tensor]:
    """Per-example quality of one exit's answers: accuracy (exact match for multi-label) or squared error.

    Returns:
        `(name, (batch,) scores)`: `"accuracy"` or `"mse"`.
    """
    if problem_type == "regression":
        errors = (logits.float().view(labels.shape[0], -1) - labels.float().view(labels.shape[0], -1)) ** 2
        return "mse", errors.mean(dim=-1)
    if problem_type == "single_label_classification":
        return "accuracy", (logits.argmax(dim=-1) == labels.view(-1)).float()
    return "accuracy", ((logits > 0) == labels.bool()).all(dim=-1).float()


def routing_metrics(
    model: nn.Module, outputs: Any, inputs: dict[str, Any], exit_index: torch.Tensor, exit_names: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation metrics shared by the families, as per-example `(numerator, denominator)` pairs (see
    [`ExitLoss.metrics`]).

    `mean_exit_layer`, `layer_speedup` (`L N / sum of exit layers`, `L = model.full_depth_layers`) and `flops_speedup`
    (`model.reference_flops` over `model.flops_per_exit` at each example's exit, from its real length); with labels,
    the score of every exit's logits in `outputs.all_logits` (`accuracy_<exit name>`, or `mse_<exit name>`) and of the
    early-exit answer (`early_exit_accuracy`).

    Args:
        model: The unwrapped model (provides `full_depth_layers`, `reference_flops`, `flops_per_exit`).
        outputs: Its output with every exit computed (`all_logits`, `exit_layer`, `logits`).
        inputs: The batch.
        exit_index: `(batch,)` 0-based index of the exit that answered each example.
        exit_names: One name per exit, e.g. `exit_3` or `member_0`.
    """
    if inputs.get("attention_mask") is not None:
        lengths = inputs["attention_mask"].sum(dim=-1)
    else:
        tokens = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
        lengths = torch.full_like(outputs.exit_layer, tokens.shape[1])
    flops = model.flops_per_exit(lengths)[exit_index, torch.arange(len(exit_index), device=exit_index.device)]
    # the reference is the full-depth model (the `early_exit=False` forward)
    full_flops = model.reference_flops(lengths)
    ones = torch.ones_like(flops, dtype=torch.float)
    metrics = {
        "mean_exit_layer": (outputs.exit_layer.float(), ones),
        "layer_speedup": (torch.full_like(ones, model.full_depth_layers), outputs.exit_layer.float()),
        "flops_speedup": (full_flops.float(), flops.float()),
    }
    labels = inputs.get("labels")
    if labels is not None:
        problem_type = problem_type_of(model.config, labels)
        for exit_name, logits in zip(exit_names, outputs.all_logits):
            name, score = exit_score(logits, labels, problem_type)
            metrics[f"{name}_{exit_name}"] = (score, ones)
        name, score = exit_score(outputs.logits, labels, problem_type)
        metrics[f"early_exit_{name}"] = (score, ones)
    return metrics


# --------------------------------------------------------------------------------------------------------------------
# Sequence labelling: entity scores (seqeval's conlleval-style entities) and word-level predictions
# --------------------------------------------------------------------------------------------------------------------


def token_classification_metrics(
    model: nn.Module, outputs: Any, inputs: dict[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation metrics of sequence-labelling early exit, as per-sentence `(numerator, denominator)` pairs (see
    [`ExitLoss.metrics`]), from one run of the model's own early exit.

    Exit statistics count words (a word's first word-piece; positions labelled in `inputs["labels"]`, or the word
    starts of `word_ids` without labels): `mean_exit_layer`, `layer_speedup` (`L x words / sum of their exit layers`)
    and `flops_speedup` (FLOPs of the full-depth model, `early_exit=False`, over the FLOPs this run spent, per sentence
    from its real length). With labels: `token_accuracy` over labelled words and seqeval's entity scores
    (`precision`, `recall`, `f1`, and `precision_<type>`, `recall_<type>`, `f1_<type>` for every type of
    `config.id2label`), micro-averaged over the whole set, exactly as seqeval computes them (see [`entity_counts`]). A
    ratio with nothing to count (e.g. no predicted entity of a type) is NaN.
    """
    from .models.bert.token_exit_utils import word_layout

    config = model.config
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(inputs["input_ids"])
    labels = inputs.get("labels")
    if labels is not None:
        words = labels != -100
    else:
        words = word_layout(attention_mask, inputs.get("word_ids"))[1]
    lengths = attention_mask.sum(dim=-1)
    num_words = words.sum(dim=-1).float()
    depth_sum = (outputs.exit_layer * words).sum(dim=-1).float()
    metrics = {
        "mean_exit_layer": (depth_sum, num_words),
        "layer_speedup": (model.full_depth_layers * num_words, depth_sum),
        "flops_speedup": (model.reference_flops(lengths).float(), outputs.flops.float()),
    }
    if labels is None:
        return metrics
    correct = ((outputs.logits.argmax(-1) == labels) & words).sum(dim=-1).float()
    metrics["token_accuracy"] = (correct, num_words)
    types = entity_types(config.id2label.values())
    if types:
        predictions, references = word_tags(outputs.logits.detach().cpu(), labels.cpu(), config.id2label)
        counts = {
            key: value.to(labels.device).float()
            for key, value in entity_counts(predictions, references, types).items()
        }
        tp, pred, gold = (counts[key] for key in ("tp", "pred", "gold"))
        metrics["precision"] = (tp.sum(-1), pred.sum(-1))
        metrics["recall"] = (tp.sum(-1), gold.sum(-1))
        metrics["f1"] = (2 * tp.sum(-1), pred.sum(-1) + gold.sum(-1))
        for i, name in enumerate(types):
            metrics[f"precision_{name}"] = (tp[:, i], pred[:, i])
            metrics[f"recall_{name}"] = (tp[:, i], gold[:, i])
            metrics[f"f1_{name}"] = (2 * tp[:, i], pred[:, i] + gold[:, i])
    return metrics


def _get_entities():
    try:
        from seqeval.metrics.sequence_labeling import get_entities
    except ImportError as error:
        raise ImportError(
            "Entity precision, recall and F1 for token classification use seqeval, which is not installed: "
            "`pip install 'hf_earlyexit[ner]'` (or `pip install seqeval`)."
        ) from error
    return get_entities


def entity_types(label_names: Sequence[str]) -> list[str]:
    """The entity types of IOB-style tag names (`B-PER`, `I-PER`, ... -> `PER`), sorted; `O` and others skipped."""
    return sorted({name.split("-", 1)[1] for name in label_names if name[:2] in ("B-", "I-", "E-", "S-")})


def token_metric_name(config) -> str:
    """`"entity F1"` for IOB-style tags (NER, chunking), `"token accuracy"` otherwise (e.g. POS tags)."""
    return "entity F1" if entity_types(config.id2label.values()) else "token accuracy"


def entity_counts(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], types: Sequence[str]):
    """Per sentence and entity type: true positives, predicted and gold entities, as seqeval counts them.

    An entity is a `(type, first word, last word)` span found by seqeval's `get_entities` (the conlleval rules, its
    default mode); a true positive is a predicted span equal to a gold one. Sums of these counts over a set give
    exactly seqeval's micro-averaged scores, so they can be gathered batch by batch.

    Returns:
        `{"tp": (N, T), "pred": (N, T), "gold": (N, T)}` long tensors, columns in the order of `types`.
    """
    get_entities = _get_entities()
    column = {name: i for i, name in enumerate(types)}
    counts = {key: torch.zeros(len(predictions), len(types), dtype=torch.long) for key in ("tp", "pred", "gold")}
    for row, (predicted, gold) in enumerate(zip(predictions, references, strict=True)):
        if len(predicted) != len(gold):
            raise ValueError(f"Sentence {row}: {len(predicted)} predicted tags but {len(gold)} gold tags.")
        predicted_spans, gold_spans = set(get_entities(list(predicted))), set(get_entities(list(gold)))
        for key, spans in (("pred", predicted_spans), ("gold", gold_spans), ("tp", predicted_spans & gold_spans)):
            for entity_type, _, _ in spans:
                if entity_type in column:
                    counts[key][row, column[entity_type]] += 1
    return counts


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict:
    """Micro precision, recall and F1 over entities, and per type, as fractions in `[0, 1]` (seqeval's numbers).

    A ratio with nothing to count (no predicted entity for precision, no gold one for recall) is 0, as in seqeval.
    """
    types = sorted({t for tags in (*predictions, *references) for t in entity_types(tags)})
    counts = entity_counts(predictions, references, types)
    totals = {key: value.sum(dim=0) for key, value in counts.items()}

    def scores(tp, pred, gold):
        return {
            "precision": tp / pred if pred else 0.0,
            "recall": tp / gold if gold else 0.0,
            "f1": 2 * tp / (pred + gold) if pred + gold else 0.0,
            "support": gold,
        }

    result = scores(*(int(totals[key].sum()) for key in ("tp", "pred", "gold")))
    result["per_type"] = {
        name: scores(*(int(totals[key][i]) for key in ("tp", "pred", "gold"))) for i, name in enumerate(types)
    }
    return result


def word_tags(logits: torch.Tensor, labels: torch.Tensor, id2label: dict) -> tuple[list[list[str]], list[list[str]]]:
    """Predicted and gold tag names of every labelled position (a word's first word-piece), one list per sentence.

    Args:
        logits: `(batch, seq, num_labels)`.
        labels: `(batch, seq)` tag ids, -100 where there is no word start.
        id2label: The model config's `id2label`.
    """
    predicted = logits.argmax(-1)
    names = {int(k): v for k, v in id2label.items()}
    predictions, references = [], []
    for row in range(labels.shape[0]):
        keep = labels[row] != -100
        predictions.append([names[int(i)] for i in predicted[row][keep]])
        references.append([names[int(i)] for i in labels[row][keep]])
    return predictions, references


__all__ = [
    "accuracy",
    "entity_counts",
    "entity_scores",
    "entity_types",
    "exit_score",
    "routing_metrics",
    "speed_summary",
    "token_classification_metrics",
    "token_metric_name",
    "word_tags",
]
