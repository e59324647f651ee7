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
"""Calibration of the taggers (SENTEE / TOKEE): the threshold and, for TOKEE, the window, for a target, on entity F1
by default. Candidates are scored by replaying the rule on one full-depth pass; TOKEE's shortlist is then run live,
since frozen words change what the others see (see [`calibrate_token`])."""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..evaluation import map_batches
from .result import (
    DEFAULT_MAX_OVERSHOOT,
    CalibrationResult,
    apply_calibration,
    check_calibration_labels,
    check_target,
    midpoints,
    outcome_message,
    pareto,
    select,
)


TOKEN_METRICS = ("f1", "token_accuracy")


@dataclass
class TokenCalibrationRecord:
    """One full pass of a [`BertForTokenEarlyExit`] over a calibration set, padded to one length.

    `batches` keeps the inputs (labels removed) for the live runs that check TOKEE candidates; a record made with
    `split_across_processes=True` shares those runs out between the processes too.
    """

    all_logits: torch.Tensor  # (num_exits, N, S, num_labels)
    attention_mask: torch.Tensor  # (N, S)
    word_ids: torch.Tensor | None  # (N, S)
    labels: torch.Tensor  # (N, S), -100 where no word starts
    batches: list[dict]
    batch_labels: list[torch.Tensor]
    split_across_processes: bool = False


def _pad_cat(tensors: list[torch.Tensor], dim: int, value) -> torch.Tensor:
    """Concatenate along dim 0 (dim 1 for stacked exits) after right-padding the sequence dimension `dim`."""
    length = max(t.shape[dim] for t in tensors)
    padded = []
    for t in tensors:
        pad = [0, 0] * (t.dim() - dim - 1) + [0, length - t.shape[dim]]
        padded.append(torch.nn.functional.pad(t, pad, value=value))
    return torch.cat(padded, dim=0 if dim == 1 else 1)


@torch.inference_mode()
def record_token(model, batches: Iterable[dict], split_across_processes: bool = False) -> TokenCalibrationRecord:
    """Run a [`BertForTokenEarlyExit`] once over `batches` (from [`encode_words`] with `labels`, right-padded) with
    every exit evaluated at full depth.

    With `split_across_processes=True` in a multi-process run, every process records a share of the batches and gets
    back the whole record, as [`record`] does; every process must call it.
    """
    batches = [dict(batch) for batch in batches]
    if any("labels" not in batch for batch in batches):
        raise ValueError("Every calibration batch needs `labels` (word tags on first word-pieces, -100 elsewhere).")
    if not batches:
        raise ValueError("The calibration set is empty.")
    word_ids = [batch.get("word_ids") for batch in batches]
    if any(w is None for w in word_ids) and not all(w is None for w in word_ids):
        raise ValueError("Some calibration batches have `word_ids` and others do not; give them to all or none.")
    inputs = [{key: value for key, value in batch.items() if key != "labels"} for batch in batches]
    labels = [batch["labels"] for batch in batches]
    for batch_labels in labels:
        check_calibration_labels(model, batch_labels, ignore_index=-100)
    masks = [
        batch["attention_mask"] if batch.get("attention_mask") is not None else torch.ones_like(batch["input_ids"])
        for batch in batches
    ]

    def run(batch):
        return model(**batch, output_all_exits=True).all_logits.float()

    was_training = model.training
    model.eval()
    try:
        logits = map_batches(run, inputs, split_across_processes)
    finally:
        model.train(was_training)
    return TokenCalibrationRecord(
        all_logits=_pad_cat(logits, 2, 0.0),
        attention_mask=_pad_cat(masks, 1, 0),
        word_ids=None if word_ids[0] is None else _pad_cat(word_ids, 1, -1),
        labels=_pad_cat(labels, 1, -100),
        batches=inputs,
        batch_labels=labels,
        split_across_processes=split_across_processes,
    )


def _token_metric(model, metric):
    from ..metrics import entity_scores, entity_types, word_tags

    if callable(metric):
        return "custom", metric
    if metric is None:
        metric = "f1" if entity_types(model.config.id2label.values()) else "token_accuracy"
    if metric not in TOKEN_METRICS:
        raise ValueError(f"`metric` must be one of {TOKEN_METRICS} or a callable, got {metric!r}.")
    if metric == "f1":

        def score(logits, labels):
            return entity_scores(*word_tags(logits, labels, model.config.id2label))["f1"]

    else:

        def score(logits, labels):
            words = labels != -100
            return int((logits.argmax(-1)[words] == labels[words]).sum()) / max(int(words.sum()), 1)

    return metric, score


class _TokenScorer:
    def __init__(self, model, rec: TokenCalibrationRecord, metric):
        self.model, self.rec = model, rec
        self.metric_name, self.metric = _token_metric(model, metric)
        self.lengths = rec.attention_mask.sum(-1)
        self.reference = float(model.reference_flops(self.lengths).sum())
        self.words = rec.labels != -100
        self.exit_layers = torch.tensor(model.exit_layers)

    def summary(self, logits, exit_layer, flops) -> dict:
        layers = float(exit_layer[self.words].sum())
        return {
            "metric": self.metric(logits, self.rec.labels),
            "flops_speedup": self.reference / float(flops.sum()),
            "layer_speedup": self.model.config.num_hidden_layers * int(self.words.sum()) / layers,
        }

    def replay(self, rule) -> dict:

        rec = self.rec
        index = rule.simulate(rec.all_logits, rec.attention_mask, rec.word_ids)
        logits = rec.all_logits.gather(0, index.clamp_min(0)[None, ..., None].expand_as(rec.all_logits[:1]))[0]
        exit_layer = torch.where(index >= 0, self.exit_layers[index.clamp_min(0)], 0)
        flops = self.model.token_flops(exit_layer, self.lengths)
        return self.summary(logits, exit_layer, flops)

    @torch.inference_mode()
    def live(self, settings: dict) -> dict:
        was_training = self.model.training
        self.model.eval()

        def run(batch):
            out = self.model(**batch, **settings)
            return {"logits": out.logits.float(), "exit_layer": out.exit_layer, "flops": out.flops}

        try:
            outs = map_batches(run, self.rec.batches, self.rec.split_across_processes)
        finally:
            self.model.train(was_training)
        logits = _pad_cat([out["logits"] for out in outs], 1, 0.0)
        exit_layer = _pad_cat([out["exit_layer"] for out in outs], 1, 0)
        flops = torch.cat([out["flops"] for out in outs])
        return self.summary(logits, exit_layer, flops)


def calibrate_token(
    model,
    batches: Iterable[dict] | TokenCalibrationRecord,
    *,
    target_speedup: float | None = None,
    max_accuracy_drop: float | None = None,
    exit_mode: str | None = None,
    window_sizes: Iterable[int] | None = None,
    max_candidates: int = 48,
    max_live_checks: int = 12,
    metric: str | Callable | None = None,
    apply: bool = True,
    max_overshoot: float | None = DEFAULT_MAX_OVERSHOOT,
) -> CalibrationResult:
    """Choose the threshold (and, for TOKEE, the window) of a [`BertForTokenEarlyExit`] for a target.

    The model runs once over the calibration set at full depth with every exit; candidate settings (thresholds halfway
    between observed word uncertainties, for each window) are scored by replaying the rule on those logits
    ([`TokenExitRule.simulate`]). For SENTEE the replay is what the live early exit does. For TOKEE it is not (frozen
    words stop updating, so the states of the others change), so the replay only shortlists: the `max_live_checks`
    candidates nearest the target run live over the calibration set, and the choice and the expected numbers come
    from those real runs, which the model then reproduces exactly on the same set.

    Args:
        model: A [`BertForTokenEarlyExit`].
        batches: Batches from [`encode_words`] with `labels` (and `word_ids`), or a [`TokenCalibrationRecord`].
        target_speedup: FLOPs speed-up to reach (>= 1); the best-scoring setting that reaches it is chosen, among
            those within `max_overshoot` above it (see [`~hf_earlyexit.calibration.calibrate`]).
        max_accuracy_drop: Largest drop of the metric against the full model, as a fraction (0.01 = one point of
            F1); the fastest setting within it is chosen. Give exactly one of the two targets.
        exit_mode: `"token"` (TOKEE) or `"sentence"` (SENTEE); defaults to the config's.
        window_sizes: TOKEE windows to search; defaults to the config's `window_size` alone.
        max_candidates: Candidate thresholds per window.
        max_live_checks: TOKEE candidates checked by live runs.
        metric: `"f1"` (entity F1 with seqeval, the default when `config.id2label` has IOB entity tags),
            `"token_accuracy"` (accuracy over words, the default otherwise), or `metric(logits, labels) -> float` on the
            padded `(N, seq, num_labels)` logits and `(N, seq)` labels (higher is better).
        apply: Write the chosen `exit_mode`, `exit_threshold` and `window_size` into `model.config`.
        max_overshoot: See [`~hf_earlyexit.calibration.calibrate`].
    """
    target = check_target(target_speedup, max_accuracy_drop, max_overshoot)
    exit_mode, windows = _token_search_space(model, exit_mode, window_sizes, max_candidates)
    if isinstance(max_live_checks, bool) or not isinstance(max_live_checks, int) or max_live_checks < 1:
        raise ValueError(f"`max_live_checks` must be an integer >= 1, got {max_live_checks!r}.")
    rec = batches if isinstance(batches, TokenCalibrationRecord) else record_token(model, batches)
    scorer = _TokenScorer(model, rec, metric)
    full, points = _token_replay_grid(model, scorer, exit_mode, windows, max_candidates)

    verified = "replay"
    if exit_mode == "token":
        verified = "live"
        # the candidates nearest the target on the replay, run for real
        if target_speedup is not None:
            distance = [abs(math.log(p["flops_speedup"] / target_speedup)) for p in points]
        else:
            floor = full["metric"] - max_accuracy_drop
            distance = [abs(p["metric"] - floor) for p in points]
        order = sorted(range(len(points)), key=lambda i: (distance[i], -points[i]["metric"]))
        shortlist = [points[i] for i in order[:max_live_checks]]
        points = [
            {
                **scorer.live(_token_settings(exit_mode, p)),
                "threshold": p["threshold"],
                "window_size": p["window_size"],
            }
            for p in shortlist
        ]
        full = scorer.live({"early_exit": False})
        points.append({**full, "threshold": 0.0, "window_size": windows[0]})

    renamed = [{**p, "accuracy": p["metric"]} for p in points]
    choice, reached = select(renamed, full["metric"], target_speedup, max_accuracy_drop, max_overshoot)
    description = f"{exit_mode} exit, threshold {choice['threshold']:.4g}"
    if exit_mode == "token":
        description += f", window {choice['window_size']}"
    message = outcome_message(
        description=description,
        reached=reached,
        target=target,
        metric_name=scorer.metric_name,
        metric=choice["metric"],
        full_metric=full["metric"],
        flops_speedup=choice["flops_speedup"],
        evidence=f"{rec.labels.shape[0]} sentences ({verified})",
        speed_target=target_speedup is not None,
    )
    result = CalibrationResult(
        settings={
            "exit_mode": exit_mode,
            "exit_threshold": float(choice["threshold"]),
            "window_size": int(choice["window_size"]),
        },
        metric_name=scorer.metric_name,
        expected_metric=choice["metric"],
        expected_flops_speedup=choice["flops_speedup"],
        expected_layer_speedup=choice["layer_speedup"],
        full_metric=full["metric"],
        target=target,
        reached=reached,
        message=message,
        num_examples=int(rec.labels.shape[0]),
        verified=verified,
        frontier=[{k: v for k, v in p.items() if k != "accuracy"} for p in pareto(renamed)],
    )
    if apply:
        apply_calibration(model, result)
    return result


def _token_search_space(
    model, exit_mode: str | None, window_sizes: Iterable[int] | None, max_candidates: int
) -> tuple[str, list[int]]:
    """The checked exit mode (default: the config's) and windows (default: the config's; SENTEE has none to search),
    before anything runs."""
    from ..models.bert.token_exit_utils import EXIT_MODES, check_window_size

    config = model.config
    exit_mode = exit_mode or config.exit_mode
    if exit_mode not in EXIT_MODES:
        raise ValueError(f"`exit_mode` must be one of {EXIT_MODES}, got {exit_mode!r}.")
    windows = [config.window_size] if window_sizes is None else list(window_sizes)
    if not windows:
        raise ValueError("`window_sizes` must name at least one window.")
    windows = [check_window_size(w, "window_sizes") for w in windows]
    if exit_mode == "sentence":
        windows = [config.window_size]
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
        raise ValueError(f"`max_candidates` must be an integer >= 1, got {max_candidates!r}.")
    if len(model.exit_layers) < 2:
        raise ValueError("The model has a single exit: there is nothing to calibrate.")
    return exit_mode, windows


def _token_replay_grid(model, scorer: _TokenScorer, exit_mode: str, windows: list[int], max_candidates: int):
    """The full model's scores and every candidate `(threshold, window)` scored by replaying the rule on the record:
    thresholds halfway between the observed word uncertainties, for each window."""
    from ..models.bert.token_exit_utils import TokenExitRule, uncertainty_of, word_layout

    config, rec = model.config, scorer.rec

    def rule(threshold, window):
        return TokenExitRule.build(
            exit_mode,
            threshold,
            model.exit_layers,
            config.num_hidden_layers,
            window_size=window,
            sentence_pooling=config.sentence_pooling,
            threshold_schedule=config.threshold_schedule,
            threshold_cap=config.threshold_cap,
        )

    full = scorer.replay(rule(0.0, windows[0]))
    _, starts = word_layout(rec.attention_mask, rec.word_ids)
    # word uncertainties at the deciding exits (a SENTEE mean falls within their range, which the grid covers)
    observed = uncertainty_of(rec.all_logits[:-1])[:, starts]
    thresholds = [min(max(t, 0.0), 1.0) for t in midpoints(observed, max_candidates)]
    points = []
    for window in windows:
        for threshold in sorted(set(thresholds)):
            points.append({**scorer.replay(rule(threshold, window)), "threshold": threshold, "window_size": window})
    return full, points


def token_frontier(
    model,
    batches: Iterable[dict] | TokenCalibrationRecord,
    *,
    exit_mode: str | None = None,
    window_sizes: Iterable[int] | None = None,
    max_candidates: int = 48,
    metric: str | Callable | None = None,
) -> list[dict]:
    """The speed/metric frontier of SENTEE / TOKEE settings of a [`BertForTokenEarlyExit`] from one recorded pass,
    each candidate scored by replaying the rule on the full-depth logits (exact for SENTEE, an estimate for TOKEE; see
    [`calibrate_token`]), e.g. to choose the settings a sweep then measures for real.

    Args:
        model, batches, exit_mode, window_sizes, max_candidates, metric: As for [`calibrate_token`].

    Returns:
        The Pareto-optimal points, `{"threshold", "window_size", "metric", "flops_speedup", "layer_speedup"}` each.
    """
    exit_mode, windows = _token_search_space(model, exit_mode, window_sizes, max_candidates)
    rec = batches if isinstance(batches, TokenCalibrationRecord) else record_token(model, batches)
    _, points = _token_replay_grid(model, _TokenScorer(model, rec, metric), exit_mode, windows, max_candidates)
    return [
        {k: v for k, v in p.items() if k != "accuracy"}
        for p in pareto([{**p, "accuracy": p["metric"]} for p in points])
    ]


def _token_settings(exit_mode: str, point: dict) -> dict:
    return {"exit_mode": exit_mode, "exit_threshold": point["threshold"], "window_size": point["window_size"]}
