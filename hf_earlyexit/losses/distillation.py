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
"""Knowledge distillation from a fine-tuned teacher: the smaller-model baseline a user would train instead of an
early-exit model, for cascades ([`TeacherDistillationLoss`]) and sequence labelling
([`TokenTeacherDistillationLoss`]), and every exit of a multi-exit model learning from the full model
([`MultiExitTeacherDistillationLoss`]); each the `teacher_distillation` recipe of its family.

| recipe | class | objective |
| --- | --- | --- |
| `teacher_distillation` (cascades) | [`TeacherDistillationLoss`] | `sum_k alpha T^2 KL_T(teacher, member k) + (1 - alpha) CE_k` (Hinton et al.) |
| `teacher_distillation` (multi-exit) | [`MultiExitTeacherDistillationLoss`] | `sum_i w_i [alpha T^2 KL_T(teacher, exit i) + (1 - alpha) CE_i] / sum_i w_i` |
| `teacher_distillation` (tokens) | [`TokenTeacherDistillationLoss`] | every exit: `alpha T^2 KL_T(teacher, exit) + (1 - alpha) CE` per word |
"""

import torch
from torch import nn

from ..citations import CITATIONS
from ..distributed import sum_across_processes
from ..models.bert.exit_utils import kl_divergence
from .base import ExitLoss, require_softmax_classification
from .cascade import CascadeExitLoss
from .multi_exit import JointExitLoss
from .token import TokenExitLoss


TEACHER_DISTILLATION_RECIPE = "teacher_distillation"
TEACHER_LOGITS_COLUMN = "teacher_logits"


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> dict[str, torch.Tensor]:
    r"""Hinton et al.'s logit distillation (https://huggingface.co/papers/1503.02531), batch means:

    `loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)`

    The `T^2` keeps the soft term's gradients on the scale of the hard one when `T` changes.

    Args:
        student_logits: `(batch, num_labels)`.
        teacher_logits: `(batch, num_labels)`; no gradient flows into them.
        labels: `(batch,)` class indices.
        temperature: `T > 0`.
        alpha: Weight of the soft term, in `[0, 1]`.

    Returns:
        `{"loss": ..., "kl": ..., "ce": ...}` (`kl` without the `T^2`, `ce` at temperature 1).
    """
    kl, ce = (term.mean() for term in logit_distillation_terms(student_logits, teacher_logits, labels, temperature))
    return {"loss": mix_distillation(kl, ce, temperature, alpha), "kl": kl, "ce": ce}


def logit_distillation_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: `KL(softmax(t / T) || softmax(s / T))` (the teacher detached) and the cross-entropy at `T = 1`."""
    teacher = teacher_logits.detach().to(student_logits.dtype)
    kl = kl_divergence(teacher / temperature, student_logits / temperature)
    return kl, nn.functional.cross_entropy(student_logits, labels, reduction="none")


def mix_distillation(kl: torch.Tensor, ce: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """`alpha * T^2 * kl + (1 - alpha) * ce`."""
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def load_teacher(args, model, auto_class) -> nn.Module | None:
    """The `distillation_teacher` of the training arguments, loaded with `auto_class`, or `None` when unset."""
    if args.distillation_teacher is None:
        return None
    teacher = auto_class.from_pretrained(args.distillation_teacher)
    if teacher.config.num_labels != model.config.num_labels:
        raise ValueError(
            f"`distillation_teacher` {args.distillation_teacher!r} has {teacher.config.num_labels} labels, the "
            f"student {model.config.num_labels}: a teacher must predict the same labels."
        )
    return teacher


class _FromTeacher:
    """What the distillation losses do with their teacher: keep it out of the student's modules, keep the
    temperature and weight of the soft term, check that the training set or the teacher gives its logits, and put it
    on the training device."""

    def set_teacher(self, teacher: nn.Module | None, temperature: float, alpha: float) -> None:
        # not a submodule: the teacher is neither trained nor saved with the student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.temperature = temperature
        self.alpha = alpha

    def distillation_config(self) -> dict:
        return {"distillation_temperature": self.temperature, "distillation_alpha": self.alpha}

    def setup(self, trainer) -> None:
        columns = getattr(trainer.train_dataset, "column_names", None) or []
        if self.teacher is None and TEACHER_LOGITS_COLUMN not in columns:
            raise ValueError(
                f"`exit_recipe={TEACHER_DISTILLATION_RECIPE!r}` needs the teacher's logits: a {TEACHER_LOGITS_COLUMN!r} "
                "column in the training set, or `distillation_teacher` (a fine-tuned classifier's path or Hub id)."
            )
        if self.teacher is not None:
            self.teacher.to(trainer.args.device)

    def teacher_logits(self, inputs) -> torch.Tensor:
        """A sequence classifier's `(batch, num_labels)` logits of the batch: its `teacher_logits` column, else the
        teacher run on the batch's model inputs."""
        if TEACHER_LOGITS_COLUMN in inputs:
            return inputs[TEACHER_LOGITS_COLUMN]
        with torch.no_grad():
            return self.teacher(**ExitLoss.model_inputs(self, inputs)).logits


class TeacherDistillationLoss(_FromTeacher, CascadeExitLoss):
    r"""Every member of a cascade learns from a fine-tuned teacher as well as from the labels:
    `sum_k [alpha T^2 KL(p_teacher^T || p_k^T) + (1 - alpha) CE_k]` (see [`logit_distillation_loss`]).

    With a one-member cascade this is the classic distilled smaller model (a DistilBERT-style student of the first
    `k` layers), the baseline an early-exit model has to beat. The teacher's logits come from a `teacher_logits`
    column of the training set (computed once, e.g. with `hf_earlyexit.evaluation.collect`; the cheapest on a CPU) or
    from `teacher` (a sequence classifier with the same labels, run in evaluation mode on every batch).

    Args:
        config ([`CascadeBertConfig`]): The model's config (single-label classification).
        temperature (`float`): `T`.
        alpha (`float`): Weight of the soft term.
        teacher (`nn.Module`, *optional*): Used when the batch has no `teacher_logits`.
    """

    input_columns = ("labels", TEACHER_LOGITS_COLUMN)
    citation = CITATIONS["distillation"]

    def __init__(self, config, temperature: float = 2.0, alpha: float = 0.5, teacher: nn.Module | None = None):
        super().__init__(config)
        require_softmax_classification(config, "Logit distillation")
        self.set_teacher(teacher, temperature, alpha)

    @classmethod
    def from_args(cls, model, args):
        from transformers import AutoModelForSequenceClassification

        cls.check_args(args)
        teacher = load_teacher(args, model, AutoModelForSequenceClassification)
        return cls(model.config, args.distillation_temperature, args.distillation_alpha, teacher)

    def forward(self, outputs, inputs, step=None):
        if step is None and self.teacher is None and TEACHER_LOGITS_COLUMN not in inputs:
            # evaluation data usually carries no teacher logits: report the labels' loss then
            return self.joint_terms(outputs, inputs)
        teacher = self.teacher_logits(inputs)
        terms = [
            logit_distillation_loss(logits, teacher, inputs["labels"], self.temperature, self.alpha)
            for logits in outputs.all_logits
        ]
        components = {"loss": sum(term["loss"] for term in terms)}
        for k, term in enumerate(terms):
            components[f"loss_member_{k}"] = term["loss"].detach()
            components[f"kl_member_{k}"] = term["kl"].detach()
        return components

    def get_config_dict(self):
        return self.distillation_config()


class MultiExitTeacherDistillationLoss(_FromTeacher, JointExitLoss):
    r"""Every exit of a multi-exit model learns from a fine-tuned teacher (typically the full model, fine-tuned on its
    own) as well as from the labels, the exits weighted as the `joint` recipe weights them:
    `sum_i w_i [alpha T^2 KL(p_teacher^T || p_i^T) + (1 - alpha) CE_i] / sum_i w_i` (see [`logit_distillation_loss`]).

    Joint training costs the last exit accuracy against a model fine-tuned for full depth alone; learning the
    teacher's answers, as the distilled smaller models do, is meant to win it back and to strengthen the shallow exits.
    The teacher's logits come from a `teacher_logits` column or from `teacher`, as for [`TeacherDistillationLoss`].
    In evaluation without teacher logits the loss is the joint recipe's.

    Args:
        config ([`BypassBertConfig`]): The model's config (single-label classification).
        temperature (`float`): `T`.
        alpha (`float`): Weight of the soft term.
        weights: As for [`JointExitLoss`].
        gradient_equilibrium (`bool`): As for [`JointExitLoss`].
        teacher (`nn.Module`, *optional*): Used when the batch has no `teacher_logits`.
    """

    input_columns = ("labels", TEACHER_LOGITS_COLUMN)
    citation = CITATIONS["distillation"]
    training_options = frozenset({"gradient_equilibrium"})

    def __init__(
        self,
        config,
        temperature: float = 2.0,
        alpha: float = 0.5,
        weights: str | list[float] = "linear",
        gradient_equilibrium: bool = False,
        teacher: nn.Module | None = None,
    ):
        super().__init__(config, weights, gradient_equilibrium=gradient_equilibrium)
        require_softmax_classification(config, "Logit distillation")
        self.set_teacher(teacher, temperature, alpha)

    @classmethod
    def from_args(cls, model, args):
        from transformers import AutoModelForSequenceClassification

        teacher = load_teacher(args, model, AutoModelForSequenceClassification)
        return cls(
            model.config,
            args.distillation_temperature,
            args.distillation_alpha,
            args.exit_loss_weights,
            gradient_equilibrium=args.gradient_equilibrium,
            teacher=teacher,
        )

    def forward(self, outputs, inputs, step=None):
        if step is None and self.teacher is None and TEACHER_LOGITS_COLUMN not in inputs:
            return super().forward(outputs, inputs, step)  # evaluation data without teacher logits: the labels' loss
        teacher = self.teacher_logits(inputs)
        terms = [
            logit_distillation_terms(logits, teacher, inputs["labels"], self.temperature)
            for logits in outputs.all_logits
        ]
        kl = torch.stack([term[0].mean() for term in terms])
        ce = torch.stack([term[1].mean() for term in terms])
        losses = mix_distillation(kl, ce, self.temperature, self.alpha)
        weights = torch.as_tensor(self.weights, dtype=losses.dtype, device=losses.device)
        components = {"loss": (weights * losses).sum() / weights.sum()}
        components.update({f"loss_exit_{layer}": value.detach() for layer, value in zip(self.exit_layers, losses)})
        components.update({f"kl_exit_{layer}": value.detach() for layer, value in zip(self.exit_layers, kl)})
        return components

    def get_config_dict(self):
        return {**super().get_config_dict(), **self.distillation_config()}


class TokenTeacherDistillationLoss(_FromTeacher, TokenExitLoss):
    r"""Logit distillation for sequence labelling: every exit learns from a fine-tuned teacher's per-word logits as
    well as from the labels, `sum_i w_i [alpha T^2 KL(p_teacher^T || p_i^T) + (1 - alpha) CE_i] / sum_i w_i` over the
    labelled words (see [`logit_distillation_loss`]). With a model of a single exit (`num_hidden_layers=k`,
    `exit_layers=[k]`) it is the distilled `k`-layer tagger, the baseline early exit has to beat.

    The teacher's logits come from a `teacher_logits` column (per sentence, one list of logits per labelled word in
    order, padded by [`~hf_earlyexit.data.DataCollatorForTokenEarlyExit`]) or from `teacher` (a token classifier with
    the same labels, run on every batch). Means are over the global batch's words in a multi-process run.

    Args:
        config ([`TokenExitBertConfig`]): The model's config.
        temperature (`float`): `T`.
        alpha (`float`): Weight of the soft term.
        weights: As for [`TokenExitLoss`].
        teacher (`nn.Module`, *optional*): Used when the batch has no `teacher_logits`.
    """

    input_columns = ("labels", TEACHER_LOGITS_COLUMN)

    def __init__(self, config, temperature=2.0, alpha=0.5, weights="linear", teacher: nn.Module | None = None):
        super().__init__(config, weights)
        self.set_teacher(teacher, temperature, alpha)

    @classmethod
    def from_args(cls, model, args):
        from transformers import AutoModelForTokenClassification

        teacher = load_teacher(args, model, AutoModelForTokenClassification)
        return cls(
            model.config, args.distillation_temperature, args.distillation_alpha, args.exit_loss_weights, teacher
        )

    def teacher_word_logits(self, inputs) -> torch.Tensor:
        """`(words, num_labels)`: the teacher's logits of every labelled word of the batch, row by row."""
        labelled = inputs["labels"] != -100
        if TEACHER_LOGITS_COLUMN in inputs:
            padded = inputs[TEACHER_LOGITS_COLUMN]
            counts = labelled.sum(dim=-1)
            if padded.shape[1] < int(counts.max()):
                raise ValueError(
                    f"`teacher_logits` hold {padded.shape[1]} words for a sentence with {int(counts.max())} labelled "
                    "words: give one list of logits per labelled word."
                )
            return padded[torch.arange(padded.shape[1], device=counts.device) < counts.unsqueeze(-1)]
        encoded = {key: inputs[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in inputs}
        with torch.no_grad():
            return self.teacher(**encoded).logits[labelled]

    def forward(self, outputs, inputs, step=None):
        if outputs.all_logits is None:
            return self.eval_loss(outputs, inputs)
        labelled = inputs["labels"] != -100
        teacher = self.teacher_word_logits(inputs)
        labels = inputs["labels"][labelled]
        per_word = [
            torch.stack(logit_distillation_terms(logits[labelled], teacher, labels, self.temperature))
            for logits in outputs.all_logits
        ]
        # means over the global batch's words, as the other token losses (see `masked_token_losses`)
        sums = sum_across_processes(torch.stack([terms.sum(dim=-1) for terms in per_word]))  # (exits, 2)
        words = sum_across_processes(labelled.sum()).clamp_min(1)
        kl, ce = sums[:, 0] / words, sums[:, 1] / words
        losses = mix_distillation(kl, ce, self.temperature, self.alpha)
        components = {"loss": self.weighted_mean(losses), **self.per_exit_losses(losses)}
        components.update({f"kl_exit_{layer}": value.detach() for layer, value in zip(self.exit_layers, kl)})
        return components

    def get_config_dict(self):
        return {**super().get_config_dict(), **self.distillation_config()}


__all__ = [
    "MultiExitTeacherDistillationLoss",
    "TeacherDistillationLoss",
    "TokenTeacherDistillationLoss",
    "load_teacher",
    "logit_distillation_loss",
    "logit_distillation_terms",
    "mix_distillation",
]
