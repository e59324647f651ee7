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
"""Calibration of the text classifiers (multi-exit models, cascades): every candidate setting scored on one recorded
pass with the same [`ExitRule`] the live forward uses, so the expected accuracy and speed-up are exactly what the
model measures on the same set. Candidate thresholds sit halfway between consecutive observed scores, never on one, so
the tiny numerical differences between a full batch and a compacted sub-batch cannot flip a decision.

Works for every family whose forward accepts `output_all_exits=True` and whose model provides `exit_layers` (encoder
layers computed when answering at each exit, cumulative for a cascade), `full_depth_layers`, `flops_per_exit(lengths)`
and `reference_flops(lengths)`.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

from ..evaluation import map_batches
from ..families import family_of
from ..models.bert.exit_utils import ExitRule, first_exit
from .result import (
    DEFAULT_MAX_OVERSHOOT,
    CalibrationResult,
    check_calibration_labels,
    check_target,
    midpoints,
    outcome_message,
    pareto,
    select,
)


THRESHOLD_CRITERIA = ("max_prob", "entropy", "normalized_entropy", "divergence")


@dataclass
class CalibrationRecord:
    """What one full pass over the calibration set recorded."""

    all_logits: torch.Tensor  # (num_exits, N, num_labels)
    labels: torch.Tensor  # (N,)
    exit_flops: torch.Tensor  # (num_exits, N): FLOPs of answering at each exit
    reference_flops: torch.Tensor  # (N,): FLOPs of the full model
    exit_layers: list[int]
    full_layers: int

    def __len__(self) -> int:
        return self.labels.numel()

    def select(self, indices) -> "CalibrationRecord":
        """The record of the examples at `indices` only (e.g. one fold of a cross-validation)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return replace(
            self,
            all_logits=self.all_logits[:, indices],
            labels=self.labels[indices],
            exit_flops=self.exit_flops[:, indices],
            reference_flops=self.reference_flops[indices],
        )


@torch.inference_mode()
def record(model, batches: Iterable[dict], split_across_processes: bool = False) -> CalibrationRecord:
    """Run `model` once over `batches` (tokenized dicts that include `labels`) with every exit evaluated.

    With `split_across_processes=True` in a multi-process run (`accelerate launch`, `torchrun`), every process records
    a share of the batches and gets back the whole record, identical to a single-process one and in the same order
    (see [`~hf_earlyexit.evaluation.map_batches`]); every process must call it.
    """
    if split_across_processes:
        # checked on every process before any of them waits for the others
        batches = list(batches)
        if any("labels" not in batch for batch in batches):
            raise ValueError("Every calibration batch needs `labels`.")
        for batch in batches:
            check_calibration_labels(model, batch["labels"])

    def run(batch):
        batch = dict(batch)
        if "labels" not in batch:
            raise ValueError("Every calibration batch needs `labels`.")
        labels = batch.pop("labels")
        check_calibration_labels(model, labels)
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        return {"labels": labels, "lengths": mask.sum(-1), "logits": model(**batch, output_all_exits=True).all_logits}

    was_training = model.training
    model.eval()
    try:
        outputs = map_batches(run, batches, split_across_processes)
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("The calibration set is empty.")
    lengths = torch.cat([out["lengths"] for out in outputs])
    return CalibrationRecord(
        all_logits=torch.cat([out["logits"] for out in outputs], dim=1).float(),
        labels=torch.cat([out["labels"] for out in outputs]),
        exit_flops=model.flops_per_exit(lengths),
        reference_flops=model.reference_flops(lengths),
        exit_layers=list(model.exit_layers),
        full_layers=model.full_depth_layers,
    )


class _Scorer:
    """Scores exit settings on a record: accuracy, FLOPs and layer speed-up."""

    def __init__(self, rec: CalibrationRecord, metric: Callable[[torch.Tensor, torch.Tensor], float] | None):
        self.rec = rec
        self.metric = metric or (lambda logits, labels: float((logits.argmax(-1) == labels).float().mean()))
        self.positions = torch.arange(rec.labels.numel())
        self.reference = float(rec.reference_flops.sum())
        self.layers = torch.tensor(rec.exit_layers)
        self.num_exits = len(rec.exit_layers)
        self._scores = {}

    def scores(self, rule: ExitRule) -> torch.Tensor:
        """Per-exit criterion scores `(num_exits - 1, N)` of a stateless criterion (the last exit never decides)."""
        if rule.criterion not in self._scores:
            self._scores[rule.criterion] = torch.stack(
                [rule.score(self.rec.all_logits[i]) for i in range(self.num_exits - 1)]
            )
        return self._scores[rule.criterion]

    def exit_index(self, rule: ExitRule) -> torch.Tensor:
        if rule.is_stateful:
            return rule.simulate(self.rec.all_logits)
        scores = self.scores(rule)
        fires = [rule.passes(scores[i], i) for i in range(self.num_exits - 1)]
        return first_exit(torch.stack([*fires, torch.ones_like(fires[0])]))

    def evaluate(self, rule: ExitRule) -> dict:
        index = self.exit_index(rule)
        logits = self.rec.all_logits[index, self.positions]
        flops = float(self.rec.exit_flops[index, self.positions].sum())
        return {
            "accuracy": self.metric(logits, self.rec.labels),
            "flops_speedup": self.reference / flops,
            "layer_speedup": self.rec.full_layers * index.numel() / float(self.layers[index].sum()),
        }


_SETTINGS = ("exit_criterion", "exit_threshold", "patience", "divergence", "regression_tolerance")


def score_settings(model, rec: CalibrationRecord, settings: dict) -> dict:
    """What exit settings give on a recorded set, without running the model again: `accuracy`, `flops_speedup` and
    `layer_speedup`, exactly what a live run with those settings measures on the same examples.

    Scores settings chosen on another set (thresholds calibrated on one fold, scored on the other), or settings typed
    by hand. `settings`: forward arguments of the family, as [`CalibrationResult.forward_kwargs`] gives them
    (`exit_criterion`, `exit_threshold`, `patience`); missing ones are the model config's.
    """
    if family_of(model).is_token:
        raise ValueError(
            "`score_settings` scores a classifier's exit settings; a tagger's are scored by `calibrate_token`'s "
            "replay (`token_frontier`)."
        )
    unknown = set(settings) - set(_SETTINGS)
    if unknown:
        raise ValueError(f"`settings` has {sorted(unknown)}; expected exit settings of a classifier: {_SETTINGS}.")
    rule = model.config.exit_rule(**settings)  # the rule a live forward with these settings uses
    return _Scorer(rec, None).evaluate(rule)


def _clip(criterion: str, value: float) -> float:
    if criterion in ("max_prob", "normalized_entropy"):
        return min(max(value, 0.0), 1.0)
    return max(value, 0.0)


def calibrate_sequence(
    model,
    batches: Iterable[dict] | CalibrationRecord,
    *,
    target_speedup: float | None,
    max_accuracy_drop: float | None,
    criterion: str | None,
    per_exit: bool | None,
    max_candidates: int,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None,
    split_across_processes: bool,
    max_overshoot: float | None = DEFAULT_MAX_OVERSHOOT,
) -> CalibrationResult:
    """The classification part of [`~hf_earlyexit.calibration.calibrate`] (see there for the arguments)."""
    target = check_target(target_speedup, max_accuracy_drop, max_overshoot)
    criterion = criterion or model.config.exit_criterion
    model.config.exit_rule(exit_criterion=criterion)  # the family refuses criteria it cannot use, with its own message
    rec = batches if isinstance(batches, CalibrationRecord) else record(model, batches, split_across_processes)
    scorer = _Scorer(rec, metric)
    num_exits = scorer.num_exits
    if num_exits < 2:
        raise ValueError("The model has a single exit: there is nothing to calibrate.")
    if per_exit is None:
        per_exit = getattr(model.config, "num_members", 0) > 2
    build = _rule_builder(model, criterion, num_exits)
    full_accuracy = scorer.metric(rec.all_logits[-1], rec.labels)

    points = _search(scorer, build, criterion, per_exit, max_candidates)
    choice, reached = select(points, full_accuracy, target_speedup, max_accuracy_drop, max_overshoot)
    message = outcome_message(
        description=f"criterion {criterion}",
        reached=reached,
        target=target,
        metric_name="accuracy",
        metric=choice["accuracy"],
        full_metric=full_accuracy,
        flops_speedup=choice["flops_speedup"],
        evidence=f"{rec.labels.numel()} examples",
        speed_target=target_speedup is not None,
    )
    threshold = choice["threshold"]
    if isinstance(threshold, list):  # in the family's convention (e.g. a cascade takes one per non-final member)
        threshold = threshold[: model.config.num_exit_thresholds]
    return CalibrationResult(
        settings={"exit_criterion": criterion, "exit_threshold": threshold, "patience": choice["patience"]},
        metric_name="accuracy" if metric is None else "custom",
        expected_metric=choice["accuracy"],
        expected_flops_speedup=choice["flops_speedup"],
        expected_layer_speedup=choice["layer_speedup"],
        full_metric=full_accuracy,
        target=target,
        reached=reached,
        message=message,
        num_examples=int(rec.labels.numel()),
        frontier=pareto(points),
    )


def _rule_builder(model, criterion: str, num_exits: int):
    config = model.config
    # the family's own comparison (a cascade answers on `max p > t`, multi-exit models on `>=`)
    strict_confidence = config.exit_rule(exit_criterion=criterion).strict_confidence

    def build(threshold=None, patience=None):
        return ExitRule.build(
            criterion,
            threshold,
            num_exits=num_exits,
            num_labels=config.num_labels,
            patience=patience if patience is not None else getattr(config, "patience", 1),
            divergence=getattr(config, "divergence", "jsd"),
            regression_tolerance=getattr(config, "regression_tolerance", 0.1),
            strict_confidence=strict_confidence,
        )

    return build


def _never_threshold(criterion: str):
    return {"max_prob": 1.0, "normalized_entropy": 0.0, "entropy": 0.0, "divergence": 0.0}.get(criterion)


def _point(scores: dict, threshold, patience: int) -> dict:
    return {**scores, "threshold": threshold, "patience": patience}


def _search(scorer, build, criterion, per_exit, max_candidates) -> list[dict]:
    num_exits = scorer.num_exits
    if criterion == "patience":
        return [_point(scorer.evaluate(build(patience=p)), None, p) for p in range(1, num_exits)]
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(f"Unknown exit criterion {criterion!r}; expected 'patience' or one of {THRESHOLD_CRITERIA}.")

    if criterion == "divergence":
        all_logits = scorer.rec.all_logits
        rule = build(threshold=0.0, patience=1)
        # divergence between consecutive exits; the first exit has no predecessor and never fires
        pairs = range(1, num_exits - 1) if num_exits > 2 else range(0)
        observed = torch.stack(
            [torch.zeros(all_logits.shape[1])] + [rule.score(all_logits[i], all_logits[i - 1]) for i in pairs]
        )
        patiences = range(1, min(3, num_exits - 1) + 1)
        pool = observed[1:]
    else:
        observed = scorer.scores(build(threshold=_never_threshold(criterion)))
        patiences = [1]
        pool = observed

    candidates = [_clip(criterion, t) for t in midpoints(pool, max_candidates)]
    points = [
        _point(scorer.evaluate(build(threshold=t, patience=p)), t, p)
        for p in patiences
        for t in sorted(set(candidates))
    ]
    if not per_exit or num_exits < 3:
        return points

    # one threshold per exit: coordinate ascent on accuracy - lambda * relative cost, for a range of lambdas; every
    # setting visited is kept, and the target picks from all of them
    grids = [[_clip(criterion, t) for t in midpoints(observed[i], max_candidates)] for i in range(num_exits - 1)]
    never = _never_threshold(criterion)
    for patience in patiences:
        for lam in [0.0, *torch.logspace(-3, 0, 16).tolist()]:

            def objective(point, lam=lam):
                return point["accuracy"] - lam / point["flops_speedup"]

            start = max((p for p in points if p["patience"] == patience), key=objective)
            thresholds = (
                list(start["threshold"])
                if isinstance(start["threshold"], list)
                else [start["threshold"]] * (num_exits - 1) + [never]
            )
            best = start
            for _ in range(3):
                improved = False
                for i in range(num_exits - 1):
                    for t in grids[i]:
                        trial = list(thresholds)
                        trial[i] = t
                        point = _point(scorer.evaluate(build(threshold=trial, patience=patience)), trial, patience)
                        points.append(point)
                        if objective(point) > objective(best) + 1e-12:
                            best, thresholds, improved = point, trial, True
                if not improved:
                    break
    return points
