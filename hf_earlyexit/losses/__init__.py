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
"""Training objectives of the early-exit families, as `nn.Module`s (sentence-transformers style).

An [`ExitLoss`] is the one piece a model family plugs into [`EarlyExitTrainer`]: it says which batch columns it
reads, how the model is called, which parameters train, what the loss is (a dict of components), and what evaluation
reports. The trainer picks one from the model's `model_type` and `exit_recipe` through [`register_exit_loss`], or
takes one given explicitly (`EarlyExitTrainer(..., loss=...)`).

| module | what it holds |
| --- | --- |
| [`~hf_earlyexit.losses.base`] | [`ExitLoss`], the registry ([`register_exit_loss`], [`exit_loss_from_args`]), shared helpers |
| [`~hf_earlyexit.losses.multi_exit`] | multi-exit recipes: `joint`, `two_stage`, `alternating`, `distillation` (`docs/methods.md` section 1) |
| [`~hf_earlyexit.losses.cascade`] | cascade recipes: `joint`, `difficulty_aware` (`docs/methods.md` section 2) |
| [`~hf_earlyexit.losses.token`] | sequence-labelling recipes: `joint`, `self_sampling` (`docs/methods.md` section 3) |
| [`~hf_earlyexit.losses.distillation`] | `teacher_distillation` for cascades, multi-exit models and sequence labelling |

What evaluation reports is in [`~hf_earlyexit.metrics`]; the passes over the training set that two recipes need
(CascadeBERT's warm-up labelling, self-sampling's stage-1 logits) are in [`~hf_earlyexit.callbacks`].

Training each member on its own and assembling them afterwards needs no recipe: fine-tune one-member cascades (or
`BertForSequenceClassification`s) and pass them (their `members[0]`) to `BertForCascadeClassification.from_members`.
"""

from ..metrics import routing_metrics, token_classification_metrics
from .base import (
    OPTIONAL_TRAINING_ARGUMENTS,
    WEIGHT_SCHEMES,
    ExitLoss,
    check_training_options,
    exit_loss_from_args,
    register_exit_loss,
    registered_recipes,
    resolve_exit_weights,
    staged_recipes,
)
from .cascade import (
    DAR_RECIPE,
    DIFFICULTY_COLUMN,
    DIFFICULTY_SOURCES,
    EXAMPLE_INDEX_COLUMN,
    CascadeExitLoss,
    DifficultyAwareCascadeLoss,
    JointCascadeLoss,
    check_dar_settings,
    check_difficulty_values,
    difficulty_aware_ranking_loss,
)
from .distillation import (
    TEACHER_DISTILLATION_RECIPE,
    TEACHER_LOGITS_COLUMN,
    MultiExitTeacherDistillationLoss,
    TeacherDistillationLoss,
    TokenTeacherDistillationLoss,
    load_teacher,
    logit_distillation_loss,
    logit_distillation_terms,
    mix_distillation,
)
from .multi_exit import AlternatingExitLoss, DistillationExitLoss, JointExitLoss, MultiExitLoss, TwoStageExitLoss
from .token import (
    SANDWICH_AGGRESSIVE,
    SANDWICH_NO_EXIT,
    SELF_SAMPLING_DEPARTURES,
    SELF_SAMPLING_RECIPE,
    SELF_SAMPLING_REPLAY_CAP,
    SELF_SAMPLING_THRESHOLD_STEP,
    SELF_SAMPLING_THRESHOLDS,
    SELF_SAMPLING_WINDOWS,
    STAGE_ONE_INDEX_COLUMN,
    JointTokenExitLoss,
    SelfSamplingTokenLoss,
    TokenExitLoss,
    check_self_sampling_settings,
    masked_token_losses,
    token_cross_entropy,
)


# The built-in recipes are the families' own (`Family.recipes` in hf_earlyexit.registration).


__all__ = [
    "AlternatingExitLoss",
    "CascadeExitLoss",
    "DAR_RECIPE",
    "DIFFICULTY_COLUMN",
    "DIFFICULTY_SOURCES",
    "DifficultyAwareCascadeLoss",
    "DistillationExitLoss",
    "EXAMPLE_INDEX_COLUMN",
    "ExitLoss",
    "JointCascadeLoss",
    "JointExitLoss",
    "JointTokenExitLoss",
    "MultiExitLoss",
    "MultiExitTeacherDistillationLoss",
    "OPTIONAL_TRAINING_ARGUMENTS",
    "SANDWICH_AGGRESSIVE",
    "SANDWICH_NO_EXIT",
    "SELF_SAMPLING_DEPARTURES",
    "SELF_SAMPLING_RECIPE",
    "SELF_SAMPLING_REPLAY_CAP",
    "SELF_SAMPLING_THRESHOLDS",
    "SELF_SAMPLING_THRESHOLD_STEP",
    "SELF_SAMPLING_WINDOWS",
    "STAGE_ONE_INDEX_COLUMN",
    "SelfSamplingTokenLoss",
    "TEACHER_DISTILLATION_RECIPE",
    "TEACHER_LOGITS_COLUMN",
    "TeacherDistillationLoss",
    "TokenExitLoss",
    "TokenTeacherDistillationLoss",
    "TwoStageExitLoss",
    "WEIGHT_SCHEMES",
    "check_dar_settings",
    "check_difficulty_values",
    "check_self_sampling_settings",
    "check_training_options",
    "difficulty_aware_ranking_loss",
    "exit_loss_from_args",
    "load_teacher",
    "logit_distillation_loss",
    "logit_distillation_terms",
    "masked_token_losses",
    "mix_distillation",
    "register_exit_loss",
    "registered_recipes",
    "resolve_exit_weights",
    "routing_metrics",
    "staged_recipes",
    "token_classification_metrics",
    "token_cross_entropy",
]
