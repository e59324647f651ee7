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
"""Threshold calibration: choose exit thresholds for a target FLOPs speed-up or a largest accuracy drop.

The model runs once over the calibration set with every exit evaluated (`output_all_exits=True`); every candidate
setting is then scored on those recorded logits with the same [`ExitRule`] the live forward uses, so no candidate
re-runs the model, and the expected accuracy and speed-up are exactly what the model measures on the same set.
Candidate thresholds sit halfway between consecutive observed scores, never on one, so the tiny numerical differences
between a full batch and a compacted sub-batch cannot flip a decision.

Sequence-labelling early exit ([`BertForTokenEarlyExit`], SENTEE / TOKEE) has its own search, [`calibrate_token`]
(which `calibrate` hands it to): entity F1 by default, and live runs to check TOKEE candidates (see there).

One result type ([`CalibrationResult`]) and one search skeleton (`result.py`: the target, the choice among scored
candidates, the frontier) serve every family; the family's task picks the part that records and scores candidates:
`sequence.py` for text classifiers, `token.py` for taggers.
"""

from collections.abc import Callable, Iterable

import torch

from ..families import family_of
from .result import (
    DEFAULT_MAX_OVERSHOOT,
    CalibrationResult,
    TokenCalibrationResult,
    apply_calibration,
    check_calibration_labels,
    check_target,
)
from .sequence import THRESHOLD_CRITERIA, CalibrationRecord, calibrate_sequence, record, score_settings
from .token import TOKEN_METRICS, TokenCalibrationRecord, calibrate_token, record_token, token_frontier


def calibrate(
    model,
    batches: Iterable[dict] | CalibrationRecord,
    *,
    target_speedup: float | None = None,
    max_accuracy_drop: float | None = None,
    criterion: str | None = None,
    per_exit: bool | None = None,
    max_candidates: int = 64,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    apply: bool = True,
    split_across_processes: bool = False,
    max_overshoot: float | None = DEFAULT_MAX_OVERSHOOT,
) -> CalibrationResult:
    """Choose exit thresholds for a target, from one recorded pass over a calibration set.

    Args:
        model: An early-exit model (any family, see the module docstring). A [`BertForTokenEarlyExit`] is handed
            to [`calibrate_token`] (`criterion` is then its `exit_mode`, `metric` its metric, entity F1 by default).
        batches: Tokenized batches with `labels` (e.g. from `hf_earlyexit.evaluation.make_batches` plus labels), or a
            [`CalibrationRecord`] from [`record`] to reuse one pass for several targets.
        target_speedup: FLOPs speed-up to reach (>= 1): the most accurate setting that reaches it is chosen, among
            those that land within `max_overshoot` above it.
        max_accuracy_drop: Largest accuracy drop allowed against the full model, as a fraction (0.01 = one point):
            the fastest setting within it is chosen. Give exactly one of the two targets.
        criterion: Exit criterion to calibrate; defaults to the model config's. For `patience` the patience is chosen;
            for `divergence` the threshold and patience (1 to 3).
        per_exit: Search one threshold per exit (per layer, or per stage of a cascade) rather than one for all.
            Defaults to per stage for cascades of more than two members, and one shared threshold otherwise.
        max_candidates: Candidate thresholds per search dimension.
        metric: `metric(logits, labels) -> float` to maximise instead of accuracy (higher is better).
        apply: Write the chosen settings into `model.config` (then `save_pretrained` saves them).
        split_across_processes: In a multi-process run, record the calibration set with each process running a share
            of the batches (see [`record`], [`record_token`]; a token model's live TOKEE checks are shared out too);
            every process then searches the same record and chooses the same setting.
        max_overshoot: With `target_speedup`, how far above the target a setting may land and still compete on
            accuracy, as a fraction of it (0.05: up to 5 % faster); when no setting lands that close, the slowest
            that reaches the target is chosen. On a calibration set of hundreds or a few thousand examples, a setting
            much faster than the target that scores higher is mostly luck: choosing it overshoots the target on new
            examples and costs accuracy there (`benchmarks/crossfit.py` measures both rules on SST-2). `None`: the
            most accurate setting at any speed-up above the target.

    Returns:
        A [`CalibrationResult`]. A target that cannot be reached is reported (`reached=False`, a warning) with the
        nearest reachable setting, never silently.
    """
    if family_of(model).is_token:
        if per_exit:
            raise ValueError(
                "`per_exit` is not supported for sequence-labelling early exit: SENTEE / TOKEE calibrate one "
                "threshold (and a window); see `calibrate_token`."
            )
        if split_across_processes and not isinstance(batches, TokenCalibrationRecord):
            batches = record_token(model, batches, split_across_processes=True)
        return calibrate_token(
            model,
            batches,
            target_speedup=target_speedup,
            max_accuracy_drop=max_accuracy_drop,
            exit_mode=criterion,
            max_candidates=max_candidates,
            metric=metric,
            apply=apply,
            max_overshoot=max_overshoot,
        )
    result = calibrate_sequence(
        model,
        batches,
        target_speedup=target_speedup,
        max_accuracy_drop=max_accuracy_drop,
        criterion=criterion,
        per_exit=per_exit,
        max_candidates=max_candidates,
        metric=metric,
        split_across_processes=split_across_processes,
        max_overshoot=max_overshoot,
    )
    if apply:
        apply_calibration(model, result)
    return result


__all__ = [
    "CalibrationRecord",
    "CalibrationResult",
    "THRESHOLD_CRITERIA",
    "TOKEN_METRICS",
    "TokenCalibrationRecord",
    "TokenCalibrationResult",
    "apply_calibration",
    "calibrate",
    "calibrate_token",
    "check_calibration_labels",
    "check_target",
    "record",
    "record_token",
    "score_settings",
    "token_frontier",
]
