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
"""Training arguments of [`EarlyExitTrainer`]: which exit recipe, how exits are weighted, and the head learning rate."""

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .losses import (
    DAR_RECIPE,
    SELF_SAMPLING_RECIPE,
    TEACHER_DISTILLATION_RECIPE,
    WEIGHT_SCHEMES,
    check_dar_settings,
    check_self_sampling_settings,
    registered_recipes,
    staged_recipes,
)


@dataclass
class EarlyExitTrainingArguments(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] plus how the exits of an early-exit model are trained. Inference settings
    (criterion, thresholds) live in the model config instead; these arguments only shape training.

    Parameters:
        exit_recipe (`str`, *optional*, defaults to `"joint"`):
            The objective for the exits (`docs/methods.md` section 1):

            - `"joint"`: `sum_i w_i CE_i / sum_i w_i` over every exit in every step (PABEE, PCEE-BERT).
            - `"two_stage"` (DeeBERT): stage 1 trains the backbone and the final exit on the final loss; stage 2 freezes
              them and trains the other exits on `sum_{i<L} CE_i`. Needs `exit_stage`.
            - `"alternating"` (BERxiT): even optimizer steps train on the final loss only, odd steps on the sum of every
              exit's loss `sum_i CE_i` (unweighted).
            - `"distillation"` (FastBERT): stage 1 is two-stage's stage 1; stage 2 freezes the backbone and the final
              exit and trains the other exits on `sum_{i<L} KL(p_L || p_i)`, which needs no labels. Needs
              `exit_stage`.

            For cascades ([`BertForCascadeClassification`], `docs/methods.md` section 2):

            - `"joint"`: `sum_k CE_k` over the members (no weights: `exit_loss_weights` must not be a list).
            - `"difficulty_aware"` (CascadeBERT): `sum_k CE_k + dar_lambda * sum_{k<K-1} L_DAR(k)`, see the `dar_*`
              arguments and [`DifficultyAwareCascadeLoss`].
            - `"teacher_distillation"`: every member learns from a fine-tuned teacher's logits as well as from the
              labels (Hinton et al.); with a one-member cascade, the classic distilled smaller model. See the
              `distillation_*` arguments and [`TeacherDistillationLoss`].

            For sequence labelling ([`BertForTokenEarlyExit`], `docs/methods.md` section 3):

            - `"joint"`: stage 1, `sum_i w_i CE_i / sum_i w_i` over every exit's token loss.
            - `"self_sampling"`: stage 2, self-sampling fine-tuning of a stage-1 model (sampled TOKEE settings replayed
              on the stored stage-1 logits, the sandwich, copying forward, the loss on active words only); see the
              `self_sampling_*` arguments and [`SelfSamplingTokenLoss`].

            Families can register more recipes (see [`register_exit_loss`]).
        exit_loss_weights (`str` or `list[float]`, *optional*, defaults to `"linear"`):
            Exit weights `w_i` of the joint loss (used by `"joint"`):
            `"linear"` (`w_i` is the exit's layer number, PABEE and PCEE's "asc"), `"uniform"`, or one non-negative
            number per exit. On the command line: `--exit_loss_weights uniform` or `--exit_loss_weights 1 1 2 4`.
        exit_stage (`int`, *optional*):
            `1` or `2` for the staged recipes (`"two_stage"`, `"distillation"`); must be left unset otherwise. A staged
            recipe decides exactly which parameters train (it sets `requires_grad` on every parameter of the model).
        head_learning_rate (`float`, *optional*):
            Learning rate of the exit heads and bypass modules (every parameter outside the model's backbone,
            `model.base_model`). Defaults to `learning_rate`. Shallow exit heads usually want a higher rate than the
            backbone: on all-MiniLM-L6-v2 a first-layer head reached 77-79 % SST-2 accuracy at 2e-4 against 51-74 % at
            5e-5 (`docs/methods.md`). For a cascade it covers every member's head and every member but the last,
            encoder included (the same measurement: a 1-layer model trains better at 2e-4); only the last member's
            encoder trains at `learning_rate`.
        dar_lambda (`float`, *optional*):
            `exit_recipe="difficulty_aware"` only: the weight `lambda` of the DAR term. Defaults to 0.5 (CascadeBERT).
        dar_margin (`float`, *optional*):
            `exit_recipe="difficulty_aware"` only: the margin `m` of `max(0, c_hard - c_easy + m)`. Defaults to 0.5
            (the released script; its command-line default was 0.3).
        dar_difficulty (`str`, *optional*):
            `exit_recipe="difficulty_aware"` only: where the difficulty labels come from. `"warmup"` (default): after
            `dar_warmup_epochs` epochs of joint training without DAR, the trainer labels each training example hard for
            member `k` when member `k` predicts it wrongly, then trains on with DAR (needs a `datasets.Dataset`).
            `"column"`: a `difficulty` column of the training set, per example one 0/1 label shared by the non-final
            members or a list of one per non-final member (1 = hard). `"online"`: each member's current correctness on
            the batch.
        dar_warmup_epochs (`float`, *optional*):
            `exit_recipe="difficulty_aware"` only: epochs (fractions allowed) trained without DAR at the start, within
            the same learning-rate schedule; `ceil(dar_warmup_epochs x update steps per epoch)` optimizer steps. Defaults
            to 1 for `"warmup"` (must be > 0 and shorter than the training) and 0 for the other sources.
        gradient_equilibrium (`bool`, *optional*, defaults to `False`):
            `"joint"` and `"alternating"` (multi-exit models): rescale the gradients where each exit branches off the
            backbone so that the layers below average the exits' gradients instead of summing them (Li et al., 2019,
            https://arxiv.org/abs/1908.06294); shallow exits then pull the backbone less. Forward values are unchanged.
        self_distillation_weight (`float`, *optional*):
            `"joint"` (multi-exit models): weight `lambda >= 0` of a self-distillation term added to every exit but the
            last, `lambda T^2 KL(p_L^T || p_i^T)` against the final exit's detached distribution, in the same run.
            Unset: no self-distillation.
        self_distillation_temperature (`float`, *optional*):
            The temperature `T > 0` of self-distillation (needs `self_distillation_weight`). Defaults to 2.0.
        distillation_temperature (`float`, *optional*):
            `exit_recipe="teacher_distillation"` only: the temperature `T > 0` of the soft term. Defaults to 2.0.
        distillation_alpha (`float`, *optional*):
            `exit_recipe="teacher_distillation"` only: the weight of the soft term, in `[0, 1]` (the labels' cross-entropy
            gets `1 - alpha`). Defaults to 0.5.
        distillation_teacher (`str`, *optional*):
            `exit_recipe="teacher_distillation"` only: path or Hub id of the fine-tuned teacher classifier, run on every
            batch. Unset: the training set must carry a `teacher_logits` column (computed once beforehand).
        self_sampling_max_threshold (`float`, *optional*):
            `exit_recipe="self_sampling"` only: the largest threshold sampled (thresholds `0.01, 0.02, ...` up to it),
            in `[0.01, 1]`. Defaults to 0.5 (the paper's range).
        self_sampling_flooding (`float`, *optional*):
            `exit_recipe="self_sampling"` only: the flooding level `b >= 0`; each word's loss becomes
            `|CE - CE^old - b|` against its stage-1 loss at the same exit. Unset: no flooding.
        self_sampling_departures (`list[str]`, *optional*):
            `exit_recipe="self_sampling"` only: which of our variants to use instead of the released code's behaviour
            (see [`SelfSamplingTokenLoss`]): `fine_threshold_grid`, `flooding_per_exit`, `mean_over_active_words`,
            `config_replay_schedule`, `sandwich_both`. Unset: the released behaviour.

    Example:

    ```python
    >>> from hf_earlyexit import EarlyExitTrainingArguments

    >>> args = EarlyExitTrainingArguments(
    ...     output_dir="out", exit_recipe="two_stage", exit_stage=1, learning_rate=5e-5, head_learning_rate=2e-4
    ... )
    ```
    """

    exit_recipe: str = field(
        default="joint",
        metadata={
            "help": "How the exits are trained: 'joint' (weighted sum of every exit's loss; for cascades the sum of "
            "the members' losses), 'two_stage' (DeeBERT), 'alternating' (BERxiT), 'distillation' (FastBERT), "
            "'difficulty_aware' (CascadeBERT's DAR, cascades), or a recipe registered by a model family."
        },
    )
    # `list[str] | str` so that the command line takes both `uniform` and `1 2 3 4`; normalised in `__post_init__`.
    # A default factory because HfArgumentParser reads only that (not `default`) for a list-typed field.
    exit_loss_weights: list[str] | str = field(
        default_factory=lambda: "linear",
        metadata={
            "help": "Exit weights of the joint loss: 'linear' (w_i = layer number), 'uniform', or one number per exit."
        },
    )
    exit_stage: int | None = field(
        default=None,
        metadata={"help": "Stage (1 or 2) of the staged recipes 'two_stage' and 'distillation'."},
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the exit heads and bypass modules (everything outside the backbone). Defaults to "
            "`learning_rate`."
        },
    )

    dar_lambda: float | None = field(
        default=None,
        metadata={"help": "exit_recipe='difficulty_aware': weight lambda of the DAR term (default 0.5, CascadeBERT)."},
    )
    dar_margin: float | None = field(
        default=None,
        metadata={
            "help": "exit_recipe='difficulty_aware': margin m of the DAR ranking loss max(0, c_hard - c_easy + m) "
            "(default 0.5, the released CascadeBERT script)."
        },
    )
    dar_difficulty: str | None = field(
        default=None,
        metadata={
            "help": "exit_recipe='difficulty_aware': source of the difficulty labels: 'warmup' (default: the small "
            "members' errors after a warm-up without DAR), 'column' (a `difficulty` column of the training set) or "
            "'online' (each member's current correctness on the batch)."
        },
    )
    dar_warmup_epochs: float | None = field(
        default=None,
        metadata={
            "help": "exit_recipe='difficulty_aware': epochs trained without DAR first (default 1 with 'warmup', where "
            "the labels are computed at its end, 0 otherwise)."
        },
    )

    gradient_equilibrium: bool = field(
        default=False,
        metadata={"help": "joint / alternating: average the exits' gradients in the backbone (Li et al., 2019)."},
    )
    self_distillation_weight: float | None = field(
        default=None,
        metadata={"help": "joint: weight of the KL from the final exit added to every other exit (default: none)."},
    )
    self_distillation_temperature: float | None = field(
        default=None,
        metadata={"help": "joint: temperature of self-distillation (default 2.0 when its weight is set)."},
    )
    distillation_temperature: float | None = field(
        default=None,
        metadata={"help": "exit_recipe='teacher_distillation': temperature T > 0 of the soft term (default 2.0)."},
    )
    distillation_alpha: float | None = field(
        default=None,
        metadata={"help": "exit_recipe='teacher_distillation': weight of the soft term, in [0, 1] (default 0.5)."},
    )
    distillation_teacher: str | None = field(
        default=None,
        metadata={
            "help": "exit_recipe='teacher_distillation': path or Hub id of the fine-tuned teacher (default: a "
            "`teacher_logits` column of the training set)."
        },
    )

    self_sampling_max_threshold: float | None = field(
        default=None,
        metadata={"help": "exit_recipe='self_sampling': the largest sampled threshold, in [0.01, 1] (default 0.5)."},
    )
    self_sampling_flooding: float | None = field(
        default=None,
        metadata={
            "help": "exit_recipe='self_sampling': flooding level b >= 0 of |CE - CE_stage1 - b| (default: none)."
        },
    )

    self_sampling_departures: list[str] | None = field(
        default=None,
        metadata={
            "help": "exit_recipe='self_sampling': our variants instead of the released behaviour (fine_threshold_grid, "
            "flooding_per_exit, mean_over_active_words, config_replay_schedule, sandwich_both); default none."
        },
    )

    def __post_init__(self):
        self.exit_loss_weights = self._normalize_weights(self.exit_loss_weights)
        self.validate_exit_recipe()
        self.validate_head_learning_rate()
        self.validate_dar()
        self.validate_self_sampling()
        self.validate_distillation()
        self.validate_self_distillation()
        if self.exit_recipe == "alternating" and self.ddp_find_unused_parameters is None:
            # even steps leave the intermediate exits without gradient; DDP must be told to expect that
            self.ddp_find_unused_parameters = True
        super().__post_init__()

    @staticmethod
    def _normalize_weights(weights) -> str | list[float]:
        if isinstance(weights, (list, tuple)) and len(weights) == 1 and weights[0] in WEIGHT_SCHEMES:
            weights = weights[0]
        if isinstance(weights, str):
            if weights not in WEIGHT_SCHEMES:
                raise ValueError(
                    f"`exit_loss_weights` must be one of {WEIGHT_SCHEMES} or one number per exit, got {weights!r}."
                )
            return weights
        if not isinstance(weights, (list, tuple)) or not weights:
            raise ValueError(
                f"`exit_loss_weights` must be one of {WEIGHT_SCHEMES} or a non-empty list of numbers, got {weights!r}."
            )
        numbers = []
        for i, value in enumerate(weights):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"`exit_loss_weights[{i}]` must be a number, got {value!r}.") from None
            if isinstance(value, bool) or not math.isfinite(number) or number < 0:
                raise ValueError(f"`exit_loss_weights[{i}]` must be a finite number >= 0, got {value!r}.")
            numbers.append(number)
        if sum(numbers) == 0:
            raise ValueError(f"`exit_loss_weights` must not all be zero, got {numbers}.")
        return numbers

    def validate_exit_recipe(self):
        recipes = registered_recipes()
        if self.exit_recipe not in recipes:
            raise ValueError(f"Unknown `exit_recipe` {self.exit_recipe!r}; expected one of {recipes}.")
        staged = staged_recipes()
        if self.exit_recipe in staged:
            if self.exit_stage not in (1, 2) or isinstance(self.exit_stage, bool):
                raise ValueError(
                    f"`exit_recipe={self.exit_recipe!r}` trains in two stages: set `exit_stage` to 1 or 2, got "
                    f"{self.exit_stage!r}."
                )
        elif self.exit_stage is not None:
            raise ValueError(
                f"`exit_stage` is only used by the staged recipes {staged}; `exit_recipe={self.exit_recipe!r}` "
                f"has no stages, so leave it unset (got {self.exit_stage!r})."
            )
        if self.exit_recipe == "alternating" and self.ddp_find_unused_parameters is False:
            raise ValueError(
                "`exit_recipe='alternating'` trains only the final exit on even steps, so under DDP the other exits get "
                "no gradient then: `ddp_find_unused_parameters` must not be False."
            )

    def validate_dar(self):
        settings = {
            "dar_lambda": self.dar_lambda,
            "dar_margin": self.dar_margin,
            "dar_difficulty": self.dar_difficulty,
            "dar_warmup_epochs": self.dar_warmup_epochs,
        }
        if self.exit_recipe != DAR_RECIPE:
            given = {name: value for name, value in settings.items() if value is not None}
            if given:
                raise ValueError(
                    f"{sorted(given)} only apply to `exit_recipe={DAR_RECIPE!r}` (CascadeBERT's difficulty-aware "
                    f"training); `exit_recipe={self.exit_recipe!r}` does not use them, so leave them unset."
                )
            return
        if self.dar_lambda is None:
            self.dar_lambda = 0.5
        if self.dar_margin is None:
            self.dar_margin = 0.5
        if self.dar_difficulty is None:
            self.dar_difficulty = "warmup"
        check_dar_settings(self.dar_lambda, self.dar_margin, self.dar_difficulty, self.dar_warmup_epochs)

    def validate_self_sampling(self):
        settings = {
            "self_sampling_max_threshold": self.self_sampling_max_threshold,
            "self_sampling_flooding": self.self_sampling_flooding,
            "self_sampling_departures": self.self_sampling_departures,
        }
        if self.exit_recipe != SELF_SAMPLING_RECIPE:
            given = sorted(name for name, value in settings.items() if value is not None)
            if given:
                raise ValueError(
                    f"{given} only apply to `exit_recipe={SELF_SAMPLING_RECIPE!r}` (stage-2 self-sampling of "
                    f"sequence-labelling early exit); `exit_recipe={self.exit_recipe!r}` does not use them, so leave "
                    "them unset."
                )
            return
        if self.self_sampling_max_threshold is None:
            self.self_sampling_max_threshold = 0.5
        check_self_sampling_settings(
            self.self_sampling_max_threshold, self.self_sampling_flooding, self.self_sampling_departures or ()
        )

    def validate_distillation(self):
        settings = {
            "distillation_temperature": self.distillation_temperature,
            "distillation_alpha": self.distillation_alpha,
            "distillation_teacher": self.distillation_teacher,
        }
        if self.exit_recipe != TEACHER_DISTILLATION_RECIPE:
            given = sorted(name for name, value in settings.items() if value is not None)
            if given:
                raise ValueError(
                    f"{given} only apply to `exit_recipe={TEACHER_DISTILLATION_RECIPE!r}`; "
                    f"`exit_recipe={self.exit_recipe!r}` does not use them, so leave them unset."
                )
            return
        if self.distillation_temperature is None:
            self.distillation_temperature = 2.0
        if self.distillation_alpha is None:
            self.distillation_alpha = 0.5
        temperature, alpha = self.distillation_temperature, self.distillation_alpha
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not 0 < temperature < math.inf
        ):
            raise ValueError(f"`distillation_temperature` must be a finite number > 0, got {temperature!r}.")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"`distillation_alpha` must be a number in [0, 1], got {alpha!r}.")

    def validate_self_distillation(self):
        weight, temperature = self.self_distillation_weight, self.self_distillation_temperature
        if weight is None:
            if temperature is not None:
                raise ValueError(
                    "`self_distillation_temperature` is the temperature of self-distillation: set "
                    f"`self_distillation_weight` too (got a temperature of {temperature!r} and no weight)."
                )
            return
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ValueError(f"`self_distillation_weight` must be a finite number >= 0, got {weight!r}.")
        if temperature is None:
            self.self_distillation_temperature = 2.0
        elif (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not 0 < temperature < math.inf
        ):
            raise ValueError(f"`self_distillation_temperature` must be a finite number > 0, got {temperature!r}.")

    def validate_head_learning_rate(self):
        if self.head_learning_rate is None:
            return
        rate = self.head_learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"`head_learning_rate` must be a finite number > 0, got {rate!r}.")


__all__ = ["EarlyExitTrainingArguments"]
