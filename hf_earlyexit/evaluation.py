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
"""Measuring early exit: accuracy, layer and FLOPs speed-up, and wall-clock latency measured side by side.

This module runs models over batches and measures operating points; what a run is scored by (accuracy, speed-ups,
seqeval's entity scores) is in [`~hf_earlyexit.metrics`], how wall-clock time is taken in [`~hf_earlyexit.timing`].
Speed accounting follows `docs/methods.md` section 4 and always names its convention:

- layer speed-up: `L * N / sum(exit_layer)`, with `L` the depth of the full model (for a cascade, cumulative layers);
- FLOPs speed-up: `sum(FLOPs of the full model) / sum(FLOPs actually spent)`, per example from its real length;
- wall-clock speed-up: time of a plain transformers model of the same size and weights on the same batches, divided
  by the time of the early-exit model, measured in the same process with the same thread count, interleaved.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# the metrics were defined here before `hf_earlyexit.metrics`; importing them from here still works
from .metrics import (
    accuracy,
    entity_counts,
    entity_scores,
    entity_types,
    speed_summary,
    token_metric_name,
    word_tags,
)

# the timing primitives were defined here before `hf_earlyexit.timing`; importing them from here still works
from .timing import (
    TIMING_BLOCK_EXAMPLES,
    forward_all,
    forward_one,
    interleaved_batch_latency,
    interleaved_latency,
    machine_info,
    wallclock,
)


def make_batches(tokenizer, dataset, batch_size: int, max_length: int | None = None) -> list[dict]:
    """Tokenize a text-classification dataset (`text`, optional `text_pair`) into padded batches, in order."""
    batches = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        pair = rows.get("text_pair")
        encoded = tokenizer(
            rows["text"],
            pair,
            padding=True,
            truncation=True,
            max_length=max_length or tokenizer.model_max_length,
            return_tensors="pt",
        )
        batches.append(dict(encoded))
    return batches


def map_batches(
    function: Callable[[dict], Any], batches: Iterable[dict], split_across_processes: bool = False
) -> list:
    """`[function(batch) for batch in batches]`, optionally shared out between the processes of a distributed run.

    With `split_across_processes=True` under a multi-process launch (`accelerate launch`, `torchrun`), each process
    runs `function` on its own contiguous share of the batches ([`~accelerate.PartialState.split_between_processes`])
    and every process gets back the results of all batches, in the order of `batches`: tensors are exchanged through
    the CPU unchanged, so they are bit for bit what one process would have computed on the same batch. Every process
    must call it (it is a collective operation), with the same batches and the same model weights. In a
    single-process run it is the plain loop.

    Args:
        function: Runs on one batch; returns a picklable result (typically a dict of tensors).
        batches: The batches, in order.
        split_across_processes: Share the batches out and gather the results.
    """
    if not split_across_processes:
        return [function(batch) for batch in batches]
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    batches = list(batches)
    if state.num_processes == 1:
        return [function(batch) for batch in batches]
    with state.split_between_processes(list(range(len(batches)))) as mine:
        local = [(index, _to_device(function(batches[index]), "cpu")) for index in mine]
    results = sorted(gather_object(local), key=lambda pair: pair[0])
    return [_to_device(result, state.device) for _, result in results]


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    return value


@torch.inference_mode()
def collect(
    model,
    batches: Sequence[dict],
    fields: Sequence[str] = ("logits", "exit_layer", "flops"),
    *,
    split_across_processes: bool = False,
    **settings,
):
    """Run `model` over `batches` with forward `settings` and concatenate the requested per-example output fields.

    With `split_across_processes=True` in a multi-process run, every process runs a share of the batches and gets all
    the fields of every example back, in the order of `batches` (see [`map_batches`]).
    """

    def run(batch):
        out = model(**batch, **settings)
        return {name: getattr(out, name) for name in fields}

    outputs = map_batches(run, batches, split_across_processes)
    return {name: torch.cat([out[name] for out in outputs]) for name in fields}


@dataclass
class SweepPoint:
    """One operating point of an early-exit model on one dataset."""

    method: str
    settings: dict
    metric_name: str
    metric: float
    mean_exit_layer: float
    layer_speedup: float
    flops_speedup: float
    wallclock_speedup: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    # 90th percentile over the timed batches of the time per example (at batch size 1: per-sentence latency)
    latency_p90_ms: dict[str, float] = field(default_factory=dict)
    # the FLOPs speed-up over the examples timed at each batch size (often a subset of the evaluation set, whose
    # `flops_speedup` can differ): what the wall-clock speed-up at that size is to be compared with
    timed_flops_speedup: dict[str, float] = field(default_factory=dict)
    # how the timed batches were interleaved with the reference's: the models took turns every block of this many
    # examples (`None` in results measured before it was recorded, when they took turns at every batch)
    timing_block_examples: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SweepPoint":
        """The point of a `to_dict()` result that may carry more keys (e.g. [`measure_token_points`]'s)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def timed_flops_speedup(
    model,
    timing_batches: dict[int, Sequence[dict]] | None,
    reference_flops: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **settings,
) -> dict[str, float]:
    """The FLOPs speed-up of `model` with forward `settings` over the batches timed at each batch size, keyed as the
    wall-clock speed-ups are (`"1"`, `"32"`): the full model's FLOPs (`reference_flops(lengths)`, default
    `model.reference_flops`) over those the runs count, on the very examples that were timed."""
    reference_flops = reference_flops if reference_flops is not None else model.reference_flops
    speedups = {}
    for batch_size, batches in (timing_batches or {}).items():
        batches = [_without(batch, "labels") for batch in batches]
        spent = collect(model, batches, fields=("flops",), **settings)["flops"].double().sum()
        lengths = torch.cat([batch["attention_mask"].sum(-1) for batch in batches])
        full = reference_flops(lengths.to(spent.device)).double().sum()
        speedups[str(batch_size)] = float(full / spent)
    return speedups


def oracle_exits(all_logits: torch.Tensor) -> torch.Tensor:
    """The oracle's exits: for every example, the first exit (or cascade member) whose prediction equals the last
    one's. Leaving there changes no answer of the full model, so its speed-up is the most any exit criterion can reach
    at zero loss against the full model (the limit the measured curves are compared with).

    Args:
        all_logits: `(num_exits, batch, num_labels)`, every exit's logits (`output_all_exits=True`).

    Returns:
        `(batch,)` exit indices.
    """
    predictions = all_logits.argmax(dim=-1)
    agrees = predictions == predictions[-1]  # the last row is all true
    return agrees.int().argmax(dim=0)  # the first true entry


def oracle_point(model, all_logits: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> dict:
    """Metric and speed-ups of the oracle's exits ([`oracle_exits`]) for a model's recorded `all_logits` on examples
    of real `lengths`, priced as the model prices its exits (`flops_per_exit`, `exit_layers`)."""
    exit_index = oracle_exits(all_logits)
    columns = torch.arange(exit_index.numel())
    flops = model.flops_per_exit(lengths)[exit_index, columns]
    exit_layer = torch.tensor(model.exit_layers)[exit_index]
    answers = all_logits[exit_index, columns]
    return {
        "metric": accuracy(answers, labels),
        **speed_summary(exit_layer, flops, model.full_depth_layers, model.reference_flops(lengths)),
        "exit_fraction": torch.bincount(exit_index, minlength=all_logits.shape[0]).div(exit_index.numel()).tolist(),
    }


def plain_baseline(model):
    """The stock transformers model that the wall-clock speed-ups are measured against: `model.plain_baseline()`, the
    full model of `model` (what `early_exit=False` runs), same size and same encoder weights, as a
    `BertForSequenceClassification` with the last exit's (or the last member's) classifier."""
    return model.plain_baseline()


def measure_points(
    model,
    points: Sequence[tuple[str, dict]],
    eval_batches: Sequence[dict],
    labels: torch.Tensor,
    timing_batches: dict[int, Sequence[dict]] | None = None,
    reference=None,
    rounds: int = 3,
    metric: Callable[[torch.Tensor, torch.Tensor], float] = accuracy,
    metric_name: str = "accuracy",
    progress: Callable[[str], None] | None = None,
) -> list[SweepPoint]:
    """Measure operating points of an early-exit model on real runs of its early-exit path.

    For every `(method, settings)` point: the metric, mean exit layer and layer / FLOPs speed-up come from running the
    model with `settings` over `eval_batches`; the wall-clock speed-up at each batch size of `timing_batches` is the
    time of `reference` (default: [`plain_baseline`]) over the time of the model with `settings`, on the same batches,
    the two taking turns every block of 32 examples in this process ([`interleaved_batch_latency`]); `latency_p90_ms` is the 90th percentile
    of the time per example over the timed batches (per sentence at batch size 1).

    Args:
        model: An early-exit model in eval mode (any sequence-classification family).
        points: `(method name, forward settings)` pairs, e.g. `("max_prob", {"exit_threshold": 0.9})`.
        eval_batches: Tokenized batches of the evaluation set, in order.
        labels: The evaluation labels, in the same order.
        timing_batches: Batch size to the tokenized batches timed at that size (often a subset of the evaluation set).
        reference: The model to time against; defaults to `plain_baseline(model)`.
        rounds: Timed rounds per point (the median counts).
        metric: `metric(logits, labels) -> float`.
        metric_name: Its name in the results.
        progress: Called with a short line before each point.
    """
    lengths = torch.cat([batch["attention_mask"].sum(-1) for batch in eval_batches])
    full_flops = model.reference_flops(lengths)
    reference = reference if reference is not None else (plain_baseline(model) if timing_batches else None)
    results = []
    for method, settings in points:
        if progress is not None:
            progress(f"{method} {settings}")
        out = collect(model, eval_batches, **settings)
        speedups, latency, p90 = wallclock(
            forward_one(model, **settings), forward_one(reference), timing_batches, rounds
        )
        point = SweepPoint(
            method=method,
            settings=dict(settings),
            metric_name=metric_name,
            metric=metric(out["logits"], labels),
            **speed_summary(out["exit_layer"], out["flops"], model.full_depth_layers, full_flops),
            wallclock_speedup=speedups,
            latency_ms=latency,
            latency_p90_ms=p90,
            timed_flops_speedup=timed_flops_speedup(model, timing_batches, **settings),
            timing_block_examples=TIMING_BLOCK_EXAMPLES if timing_batches else None,
        )
        results.append(point)
    return results


# --------------------------------------------------------------------------------------------------------------------
# Sequence labelling: operating points of SENTEE / TOKEE measured on real early-exit runs
# --------------------------------------------------------------------------------------------------------------------


def plain_token_baseline(model):
    """The stock transformers model the wall-clock speed-ups of a [`BertForTokenEarlyExit`] are measured against:
    `model.plain_baseline()`, a `BertForTokenClassification` with its encoder and its last exit head, which computes
    what `early_exit=False` computes."""
    return model.plain_baseline()


def _without(batch: dict, *names: str) -> dict:
    return {key: value for key, value in batch.items() if key not in names}


def token_reference_flops(model, full_config=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The FLOPs speed-ups' reference of a token model: per sentence of each length, the full-depth model of
    `full_config` (default: the model's own full depth, priced by its encoder's cost model; another config, e.g. the
    full size a static tagger is compared with, by BERT's)."""
    from .models.bert.exit_utils import classifier_head_flops, encoder_layer_flops

    if full_config is None or full_config is model.config:
        return model.reference_flops
    return lambda lengths: (
        full_config.num_hidden_layers
        * encoder_layer_flops(lengths, full_config.hidden_size, full_config.intermediate_size)
        + lengths * classifier_head_flops(full_config.hidden_size, full_config.num_labels)
    )


@torch.inference_mode()
def token_scores(model, batches: Sequence[dict], full_config=None, **settings) -> dict:
    """Entity scores (seqeval, micro), word accuracy and exit statistics of real runs of a [`BertForTokenEarlyExit`]
    with forward `settings` over labelled batches (`labels` on first word-pieces, -100 elsewhere).

    Exit statistics count words. The FLOPs reference is the full-depth model of `full_config` (default: the model's
    own config; a truncated model passes the config of the model it was cut from), per sentence from its real length.

    Returns:
        `dict` with `f1`, `precision`, `recall`, `f1_per_type`, `token_accuracy`, `metric` (F1 for IOB-style tags,
        else word accuracy; see [`token_metric_name`]), `mean_exit_layer`, `layer_speedup` and `flops_speedup`.
    """
    full_config = full_config if full_config is not None else model.config
    full_layers = full_config.num_hidden_layers
    full_flops = token_reference_flops(model, full_config)
    predictions, references = [], []
    correct = words = depth = flops = reference = 0
    for batch in batches:
        labels = batch["labels"]
        out = model(**_without(batch, "labels"), **settings)
        predicted, gold = word_tags(out.logits, labels, model.config.id2label)
        predictions += predicted
        references += gold
        starts = labels != -100
        correct += int((out.logits.argmax(-1) == labels)[starts].sum())
        words += int(starts.sum())
        depth += int(out.exit_layer[starts].sum())
        flops += int(out.flops.sum())
        reference += int(full_flops(batch["attention_mask"].sum(-1)).sum())
    scores = entity_scores(predictions, references) if entity_types(model.config.id2label.values()) else None
    result = {
        "f1": scores["f1"] if scores else None,
        "precision": scores["precision"] if scores else None,
        "recall": scores["recall"] if scores else None,
        "f1_per_type": {name: s["f1"] for name, s in scores["per_type"].items()} if scores else {},
        "token_accuracy": correct / words,
        "mean_exit_layer": depth / words,
        "layer_speedup": full_layers * words / depth,
        "flops_speedup": reference / flops,
    }
    result["metric"] = result["f1"] if scores else result["token_accuracy"]
    return result


@torch.inference_mode()
def token_oracle_points(model, batches: Sequence[dict]) -> dict:
    """The oracle bound of a [`BertForTokenEarlyExit`] on labelled batches, from one full-depth run with every exit:
    each word leaves at the first exit whose prediction equals the last exit's (`"token"`), or each sentence at the
    first exit where all its words do (`"sentence"`). The predictions stay the full depth's, so the metric does too;
    the speed-ups are the most TOKEE / SENTEE could reach at no loss.

    The token oracle prices words as TOKEE does (`token_exit_flops`: a word's pieces stop where the word does,
    special tokens run until the sentence's last word leaves), but reads every exit's prediction from the full-depth
    run: a real TOKEE run freezes the words that left, which changes what the others see, so its predictions can
    differ from these.

    Returns:
        `{"token": {...}, "sentence": {...}}`, each with `metric`, `mean_exit_layer`, `layer_speedup`,
        `flops_speedup` and `exit_fraction` (share of words leaving at each exit).
    """

    exit_layers = torch.tensor(model.exit_layers)
    totals = {
        mode: {"flops": 0, "layers": 0, "counts": torch.zeros(len(exit_layers))} for mode in ("token", "sentence")
    }
    reference = words = 0
    for batch in batches:
        labels = batch["labels"]
        all_logits = model(**_without(batch, "labels"), output_all_exits=True, early_exit=False).all_logits
        predictions = all_logits.argmax(-1)
        starts = labels != -100
        first = (predictions == predictions[-1]).int().argmax(dim=0)  # (batch, seq): first agreeing exit
        lengths = batch["attention_mask"].sum(-1)
        reference += int(model.reference_flops(lengths).sum())
        words += int(starts.sum())
        # a word's exit goes to all its pieces; the sentence's exit is its slowest word's
        word_ids = batch["word_ids"]
        word_exit = torch.zeros(labels.shape[0], labels.shape[1] + 1, dtype=torch.long)
        word_exit.scatter_(1, torch.where(starts, word_ids, labels.shape[1]), torch.where(starts, first, 0))
        sentence_exit = torch.where(starts, first, 0).amax(dim=-1, keepdim=True)
        real = batch["attention_mask"].bool()
        for mode in ("token", "sentence"):
            if mode == "token":
                position_exit = torch.where(word_ids >= 0, word_exit.gather(1, word_ids.clamp_min(0)), sentence_exit)
            else:
                position_exit = sentence_exit.expand_as(labels)
            exit_layer = torch.where(real, exit_layers[position_exit], 0)
            flops = model.token_flops(exit_layer, lengths)
            totals[mode]["flops"] += int(flops.sum())
            totals[mode]["layers"] += int(exit_layer[starts].sum())
            totals[mode]["counts"] += torch.bincount(position_exit[starts], minlength=len(exit_layers)).float()
    metric = token_scores(model, batches, early_exit=False)["metric"]
    return {
        mode: {
            "metric": metric,
            "mean_exit_layer": total["layers"] / words,
            "layer_speedup": model.full_depth_layers * words / total["layers"],
            "flops_speedup": reference / total["flops"],
            "exit_fraction": (total["counts"] / words).tolist(),
        }
        for mode, total in totals.items()
    }


def token_wallclock(
    model, reference, timing_batches: dict[int, Sequence[dict]], rounds: int = 3, **settings
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Wall-clock speed-up of `model` with `settings` over `reference` (e.g. [`plain_token_baseline`]), latency per
    sentence in milliseconds and its 90th percentile over the timed batches, per timed batch size: the same batches,
    the two models taking turns every block of 32 sentences ([`interleaved_batch_latency`]), medians over rounds."""
    model_batches = {
        size: [_without(batch, "labels") for batch in batches] for size, batches in timing_batches.items()
    }
    plain = {id(batch): _without(batch, "word_ids") for batches in model_batches.values() for batch in batches}

    def run_reference(batch):
        with torch.inference_mode():
            reference(**plain[id(batch)])

    return wallclock(forward_one(model, **settings), run_reference, model_batches, rounds)


def measure_token_points(
    model,
    points: Sequence[tuple[str, dict]],
    eval_batches: Sequence[dict],
    timing_batches: dict[int, Sequence[dict]] | None = None,
    reference=None,
    rounds: int = 3,
    full_config=None,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """[`measure_points`] for a [`BertForTokenEarlyExit`]: every `(method, settings)` point run for real over the
    labelled `eval_batches` ([`token_scores`]) and timed against `reference` (default: [`plain_token_baseline`]) at
    each batch size of `timing_batches` ([`token_wallclock`]).

    Returns:
        One dict per point: the fields of [`SweepPoint`] (`metric` is entity F1, or word accuracy for tags that are
        not IOB-style) plus `precision`, `recall`, `f1_per_type` and `token_accuracy`.
    """
    reference = reference if reference is not None else (plain_token_baseline(model) if timing_batches else None)
    metric_name = token_metric_name(model.config)
    results = []
    for method, settings in points:
        if progress is not None:
            progress(f"{method} {settings}")
        scores = token_scores(model, eval_batches, full_config, **settings)
        speedups, latency, p90 = (
            token_wallclock(model, reference, timing_batches, rounds, **settings) if timing_batches else ({}, {}, {})
        )
        point = SweepPoint(
            method=method,
            settings=dict(settings),
            metric_name=metric_name,
            metric=scores["metric"],
            mean_exit_layer=scores["mean_exit_layer"],
            layer_speedup=scores["layer_speedup"],
            flops_speedup=scores["flops_speedup"],
            wallclock_speedup=speedups,
            latency_ms=latency,
            latency_p90_ms=p90,
            timed_flops_speedup=timed_flops_speedup(
                model, timing_batches, token_reference_flops(model, full_config), **settings
            ),
            timing_block_examples=TIMING_BLOCK_EXAMPLES if timing_batches else None,
        ).to_dict()
        point.update({key: scores[key] for key in ("precision", "recall", "f1_per_type", "token_accuracy")})
        results.append(point)
    return results


def markdown_table(points: Sequence[SweepPoint], batch_sizes: Sequence[int] = ()) -> str:
    """A Markdown table of sweep points: metric, layer and FLOPs speed-up, wall-clock speed-up per batch size."""
    header = [
        "method",
        "settings",
        points[0].metric_name if points else "metric",
        "mean exit layer",
        "layer ×",
        "FLOPs ×",
    ]
    header += [f"wall-clock × (bs {bs})" for bs in batch_sizes]
    rows = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |",
    ]
    for p in points:
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in p.settings.items()) or "-"
        cells = [p.method, settings, f"{100 * p.metric:.2f}", f"{p.mean_exit_layer:.2f}"]
        cells += [f"{p.layer_speedup:.2f}", f"{p.flops_speedup:.2f}"]
        cells += [
            f"{p.wallclock_speedup[str(bs)]:.2f}" if str(bs) in p.wallclock_speedup else "-" for bs in batch_sizes
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


__all__ = [
    "SweepPoint",
    "accuracy",
    "collect",
    "entity_counts",
    "entity_scores",
    "entity_types",
    "forward_all",
    "forward_one",
    "interleaved_batch_latency",
    "interleaved_latency",
    "machine_info",
    "make_batches",
    "map_batches",
    "markdown_table",
    "measure_points",
    "measure_token_points",
    "oracle_exits",
    "timed_flops_speedup",
    "token_reference_flops",
    "oracle_point",
    "plain_baseline",
    "plain_token_baseline",
    "speed_summary",
    "token_metric_name",
    "token_oracle_points",
    "token_scores",
    "token_wallclock",
    "wallclock",
    "word_tags",
]
