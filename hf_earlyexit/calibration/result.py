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
"""What every calibration shares: the one result type, the checks of a target, the choice among scored candidates
and the speed/metric frontier. The per-task parts (classification in `sequence.py`, SENTEE/TOKEE in `token.py`)
record one pass, score candidate settings on it and hand the scored points here."""

import logging
import math
from dataclasses import dataclass, field

import torch


logger = logging.getLogger("hf_earlyexit.calibration")


@dataclass
class CalibrationResult:
    """The chosen exit settings and what they are expected to give on the calibration set, for every family.

    Metrics are fractions in [0, 1]; speed-ups follow docs/methods.md section 4 (FLOPs against the full model, per
    example from its real length; layers against its depth, over words for a tagger).

    Args:
        settings: The chosen settings as forward arguments of the family (`exit_criterion`, `exit_threshold`,
            `patience` for classifiers; `exit_mode`, `exit_threshold`, `window_size` for taggers).
        metric_name: What was maximised: `accuracy`, `f1`, `token_accuracy` or `custom`.
        expected_metric, expected_flops_speedup, expected_layer_speedup: What the settings give on the set.
        full_metric: The full model's metric on the set.
        target: `{"flops_speedup": x}` or `{"max_accuracy_drop": x}`.
        reached: Whether a setting reached the target (else the nearest one is returned, with a warning).
        message: One line that says what was chosen.
        num_examples: Examples (sentences, for a tagger) in the set.
        frontier: The Pareto frontier of the settings searched, fastest first.
        verified: Taggers: `"live"` (the numbers come from real early-exit runs on the set) or `"replay"` (the rule
            replayed on the recorded full-depth logits, exact for SENTEE); `None` for classifiers (always exact).
    """

    settings: dict
    metric_name: str
    expected_metric: float
    expected_flops_speedup: float
    expected_layer_speedup: float
    full_metric: float
    target: dict
    reached: bool
    message: str
    num_examples: int
    frontier: list[dict] = field(default_factory=list)
    verified: str | None = None

    @property
    def is_token(self) -> bool:
        return "exit_mode" in self.settings

    # the settings and numbers under the names each task's callers know them by
    criterion = property(lambda self: self.settings.get("exit_criterion", self.settings.get("exit_mode")))
    exit_mode = property(lambda self: self.settings.get("exit_mode"))
    exit_threshold = property(lambda self: self.settings.get("exit_threshold"))
    patience = property(lambda self: self.settings.get("patience"))
    window_size = property(lambda self: self.settings.get("window_size"))
    expected_accuracy = property(lambda self: self.expected_metric)
    full_accuracy = property(lambda self: self.full_metric)
    num_sentences = property(lambda self: self.num_examples)

    def forward_kwargs(self) -> dict:
        """The settings as forward arguments (`model(**inputs, **result.forward_kwargs())`): `patience` only for the
        criteria that count agreeing exits (a cascade's `forward` has no such argument)."""
        kwargs = dict(self.settings)
        if kwargs.get("exit_criterion") not in ("patience", "divergence"):
            kwargs.pop("patience", None)
        if kwargs.get("exit_threshold") is None:
            kwargs.pop("exit_threshold", None)
        return kwargs

    def to_dict(self) -> dict:
        """The result as JSON-ready fields, in each task's own names (as `calibration.json` and cards keep them)."""
        numbers = {
            "expected_flops_speedup": self.expected_flops_speedup,
            "expected_layer_speedup": self.expected_layer_speedup,
        }
        outcome = {"target": self.target, "reached": self.reached, "message": self.message}
        if self.is_token:
            return {
                **self.settings,
                "metric_name": self.metric_name,
                "expected_metric": self.expected_metric,
                **numbers,
                "full_metric": self.full_metric,
                **outcome,
                "num_sentences": self.num_examples,
                "verified": self.verified,
                "frontier": self.frontier,
            }
        return {
            "criterion": self.criterion,
            "exit_threshold": self.exit_threshold,
            "patience": self.patience,
            "expected_accuracy": self.expected_metric,
            **numbers,
            "full_accuracy": self.full_metric,
            **outcome,
            "num_examples": self.num_examples,
            "frontier": self.frontier,
        }


# a tagger's result is the same type (kept as a name for the code that imports it)
TokenCalibrationResult = CalibrationResult


# How far above a target speed-up a setting may land and still compete on accuracy (`calibrate(max_overshoot=...)`)
DEFAULT_MAX_OVERSHOOT = 0.05


def check_target(
    target_speedup: float | None, max_accuracy_drop: float | None, max_overshoot: float | None = None
) -> dict:
    """Exactly one valid target, as the result's `target` dict (and a valid `max_overshoot`)."""
    if max_overshoot is not None and (
        isinstance(max_overshoot, bool) or not isinstance(max_overshoot, (int, float)) or not max_overshoot >= 0
    ):
        raise ValueError(
            f"`max_overshoot` is a fraction of the target speed-up (0.05: up to 5 % above it), >= 0 or None, got "
            f"{max_overshoot!r}."
        )
    if (target_speedup is None) == (max_accuracy_drop is None):
        raise ValueError("Give exactly one calibration target: `target_speedup` or `max_accuracy_drop`.")
    if target_speedup is not None and not (target_speedup >= 1.0 and math.isfinite(target_speedup)):
        raise ValueError(f"`target_speedup` is a FLOPs speed-up and must be >= 1, got {target_speedup}.")
    if max_accuracy_drop is not None and not 0.0 <= max_accuracy_drop <= 1.0:
        raise ValueError(f"`max_accuracy_drop` is a fraction in [0, 1] (0.01 = one point), got {max_accuracy_drop}.")
    if target_speedup is not None:
        return {"flops_speedup": target_speedup}
    return {"max_accuracy_drop": max_accuracy_drop}


def midpoints(values: torch.Tensor, max_candidates: int) -> list[float]:
    """Thresholds halfway between consecutive distinct values, plus one beyond each end."""
    distinct = torch.unique(values.flatten().double())
    distinct = distinct[torch.isfinite(distinct)]
    if distinct.numel() == 0:
        return []
    if distinct.numel() > max_candidates + 1:
        picks = torch.linspace(0, distinct.numel() - 2, max_candidates).round().long().unique()
        mids = (distinct[picks] + distinct[picks + 1]) / 2
    else:
        mids = (distinct[:-1] + distinct[1:]) / 2
    spread = float(distinct[-1] - distinct[0]) or 1.0
    ends = [float(distinct[0]) - 0.5 * spread, float(distinct[-1]) + 0.5 * spread]
    return sorted({*(float(m) for m in mids), *ends})


def select(
    points: list[dict], full_accuracy: float, target_speedup, max_accuracy_drop, max_overshoot: float | None = None
) -> tuple[dict, bool]:
    """The chosen point and whether it meets the target. For a speed-up target: the most accurate setting that reaches
    it, among those within `max_overshoot` above it (when none is, the slowest that reaches it); `None`: among all."""
    if target_speedup is not None:
        feasible = [p for p in points if p["flops_speedup"] >= target_speedup]
        if feasible and max_overshoot is not None:
            near = [p for p in feasible if p["flops_speedup"] <= target_speedup * (1 + max_overshoot)]
            if not near:
                return min(feasible, key=lambda p: (p["flops_speedup"], -p["accuracy"])), True
            feasible = near
        if feasible:
            return max(feasible, key=lambda p: (p["accuracy"], p["flops_speedup"])), True
        return max(points, key=lambda p: (p["flops_speedup"], p["accuracy"])), False
    floor = full_accuracy - max_accuracy_drop - 1e-12
    feasible = [p for p in points if p["accuracy"] >= floor]
    if feasible:
        return max(feasible, key=lambda p: (p["flops_speedup"], p["accuracy"])), True
    return max(points, key=lambda p: (p["accuracy"], p["flops_speedup"])), False


def outcome_message(
    *,
    description: str,
    reached: bool,
    target: dict,
    metric_name: str,
    metric: float,
    full_metric: float,
    flops_speedup: float,
    evidence: str,
    speed_target: bool,
) -> str:
    """What a calibration tells its user: the expected outcome when the target is met, otherwise a warning (also
    logged) naming the target and the best setting returned instead."""
    if reached:
        return (
            f"{description}: expected {metric_name} {metric:.4f} (full model {full_metric:.4f}) at "
            f"{flops_speedup:.2f}x FLOPs speed-up on {evidence}."
        )
    best = "fastest" if speed_target else "best-scoring"
    message = (
        f"target {target} cannot be reached on this set; returning the {best} setting found: {description}, "
        f"{metric_name} {metric:.4f} at {flops_speedup:.2f}x FLOPs speed-up."
    )
    logger.warning(message)
    return message


def pareto(points: list[dict]) -> list[dict]:
    """The accuracy / FLOPs speed-up frontier of the settings searched, fastest first."""
    frontier, best_accuracy = [], -math.inf
    for point in sorted(points, key=lambda p: (-p["flops_speedup"], -p["accuracy"])):
        if point["accuracy"] > best_accuracy:
            frontier.append(point)
            best_accuracy = point["accuracy"]
    return frontier


def check_calibration_labels(model, labels, ignore_index: int | None = None) -> None:
    """Refuses labels that the model cannot predict: the calibration would count them as errors at every exit and
    choose its thresholds on a wrong accuracy. Class ids in `[0, num_labels)` (or `ignore_index`) for a classifier;
    numbers for a regression model (`num_labels == 1`)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"Calibration `labels` must be a torch.Tensor, got {type(labels).__name__}.")
    num_labels = model.config.num_labels
    if num_labels == 1:
        return
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"Calibration `labels` must be class ids (integers), got dtype {labels.dtype}.")
    bad = (labels < 0) | (labels >= num_labels)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        names = [model.config.id2label[i] for i in range(num_labels)]
        raise ValueError(
            f"Calibration `labels` must be class ids in [0, {num_labels}) (the model's labels {names}), got "
            f"{sorted(set(labels[bad].tolist()))[:10]}."
        )


def apply_calibration(model, result: CalibrationResult) -> None:
    """Write a calibration's settings into `model.config` (validated like any config value). Only the settings the
    family's config declares are written: a cascade has no `patience`."""
    from ..models.bert.checkpoint_utils import family_config_fields

    config = model.config
    declared = family_config_fields(type(config))
    for name, value in result.settings.items():
        if name in declared:
            setattr(config, name, value)
    config.validate()
