# Copyright 2026 The hf_earlyexit Authors.
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

Multi-exit recipes (METHODS.md section 1), for [`BertWithBypassExits`]:

| recipe | class | objective |
| --- | --- | --- |
| `joint` | [`JointExitLoss`] | `sum_i w_i CE_i / sum_i w_i` (options: self-distillation, gradient equilibrium) |
| `two_stage` | [`TwoStageExitLoss`] | stage 1: `CE_L`; stage 2 (backbone and final exit frozen): `sum_{i<L} CE_i` |
| `alternating` | [`AlternatingExitLoss`] | even steps: `CE_L`; odd steps: `sum_i CE_i` (BERxiT) |
| `distillation` | [`DistillationExitLoss`] | stage 1: `CE_L`; stage 2 (frozen as above): `sum_{i<L} KL(p_L || p_i)` |

Cascade recipes (METHODS.md section 2), for [`BertForCascadeClassification`]:

| recipe | class | objective |
| --- | --- | --- |
| `joint` | [`JointCascadeLoss`] | `sum_k CE_k` over the members |
| `difficulty_aware` | [`DifficultyAwareCascadeLoss`] | `sum_k CE_k + lambda sum_{k<K-1} L_DAR(k)` (CascadeBERT) |
| `teacher_distillation` | [`TeacherDistillationLoss`] | `sum_k alpha T^2 KL_T(teacher, member k) + (1 - alpha) CE_k` (Hinton et al.) |

Sequence-labelling recipes (METHODS.md section 3), for [`BertForTokenEarlyExit`]:

| recipe | class | objective |
| --- | --- | --- |
| `joint` | [`JointTokenExitLoss`] | stage 1: `sum_i w_i CE_i / sum_i w_i` over token losses |
| `self_sampling` | [`SelfSamplingTokenLoss`] | stage 2: sampled TOKEE replay, sandwich, loss on active words only |
| `teacher_distillation` | [`TokenTeacherDistillationLoss`] | every exit: `alpha T^2 KL_T(teacher, exit) + (1 - alpha) CE` per word |

Training each member on its own and assembling them afterwards needs no recipe: fine-tune one-member cascades (or
`BertForSequenceClassification`s) and pass them (their `members[0]`) to `BertForCascadeClassification.from_members`.
"""

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import has_length

from .citations import CITATIONS
from .distributed import gather_across_processes, global_batch_share, sum_across_processes
from .models.bert.exit_utils import kl_divergence, max_prob
from .models.bert.modeling_exit_heads import problem_type_of, sequence_classification_loss, weighted_exit_loss


WEIGHT_SCHEMES: tuple[str, ...] = ("linear", "uniform")

# `register_exit_loss` fills these: (model_type, recipe) -> factory(model, args) -> ExitLoss; recipes run in stages
_EXIT_LOSSES: dict[tuple[str, str], Callable[[nn.Module, Any], "ExitLoss"]] = {}
_STAGED_RECIPES: set[str] = set()

logger = logging.getLogger(__name__)


class ExitLoss(nn.Module):
    """Base class of the training objectives [`EarlyExitTrainer`] runs.

    A subclass implements `forward` and may override the other hooks. The trainer calls, per batch:
    `outputs = model(**loss.model_inputs(inputs, step))`, then `loss(outputs, inputs, step)`; in evaluation (where
    `step` is `None`) it also calls `loss.metrics(model, outputs, inputs)`. Once, before training, it applies
    `loss.trainable_parameters(model)`.

    Attributes:
        input_columns (`tuple[str, ...]`): Batch columns the loss reads and the model does not take (the trainer keeps
            them in the dataset and does not pass them to the model).
        citation (`str`): BibTeX of the method's paper.
        training_options (`frozenset[str]`): The optional [`EarlyExitTrainingArguments`] it honours, e.g.
            `gradient_equilibrium`; the trainer refuses any other of [`OPTIONAL_TRAINING_ARGUMENTS`] that is set.
    """

    input_columns: tuple[str, ...] = ("labels",)
    citation: str = ""
    # optional training arguments this objective honours (the trainer refuses the others when they are set)
    training_options: frozenset[str] = frozenset()

    def model_inputs(self, inputs: dict[str, Any], step: int | None = None) -> dict[str, Any]:
        """The keyword arguments of the model call for this batch (by default the batch minus `input_columns`).

        Args:
            inputs: The whole batch.
            step: The optimizer step in training, `None` in evaluation.
        """
        return {key: value for key, value in inputs.items() if key not in self.input_columns}

    def trainable_parameters(self, model: nn.Module) -> set[str] | None:
        """Names of the parameters this objective trains, or `None` to leave `requires_grad` as the user set it."""
        return None

    def head_parameter_names(self, model: nn.Module) -> set[str]:
        """Names of the parameters that train at `head_learning_rate` when it is set: by default every parameter
        outside `model.base_model` (exit heads, bypass modules)."""
        backbone = {id(p) for p in model.base_model.parameters()}
        return {name for name, p in model.named_parameters() if id(p) not in backbone}

    def setup(self, trainer) -> None:
        """Called once at the end of [`EarlyExitTrainer`]'s `__init__`, for objectives that need more than a batch:
        e.g. a column added to `trainer.train_dataset`, or a callback (`trainer.add_callback`) that runs a pass over
        the training set at some step. Does nothing by default."""

    def forward(self, outputs: Any, inputs: dict[str, Any], step: int | None = None) -> dict[str, torch.Tensor]:
        """The loss of one batch.

        Args:
            outputs: The model's output for `model_inputs(inputs, step)`.
            inputs: The whole batch, `input_columns` included.
            step: The optimizer step (`state.global_step`, the same for every micro-batch of a gradient accumulation);
                `None` in evaluation.

        Returns:
            `{"loss": scalar to minimise, **components}`: components are detached scalars that the trainer logs.
        """
        raise NotImplementedError

    def metrics(self, model: nn.Module, outputs: Any, inputs: dict[str, Any]) -> dict[str, tuple[torch.Tensor, ...]]:
        """What evaluation reports, as per-example `(numerator, denominator)` tensors of shape `(batch,)`.

        The trainer gathers them over the evaluation set and reports `sum(numerator) / sum(denominator)` for each
        name, so a mean is `(value, 1)` and a speed-up is `(reference cost, actual cost)`.
        """
        return {}

    def get_config_dict(self) -> dict[str, Any]:
        """The settings of this loss, e.g. for a model card."""
        return {}


# --------------------------------------------------------------------------------------------------------------------
# Multi-exit recipes (BertWithBypassExits): `outputs.all_logits` is `(num_exits, batch, num_labels)`
# --------------------------------------------------------------------------------------------------------------------


def resolve_exit_weights(weights: str | list[float], exit_layers: list[int]) -> list[float]:
    """One weight per exit from `"linear"` (the exit's layer number), `"uniform"` or an explicit list.

    Raises:
        ValueError: an unknown scheme, or a list whose length is not the number of exits.
    """
    if weights == "linear":
        return [float(layer) for layer in exit_layers]
    if weights == "uniform":
        return [1.0] * len(exit_layers)
    if isinstance(weights, str):
        raise ValueError(
            f"`exit_loss_weights` must be one of {WEIGHT_SCHEMES} or one number per exit, got {weights!r}."
        )
    if len(weights) != len(exit_layers):
        raise ValueError(
            f"`exit_loss_weights` has {len(weights)} values but the model has {len(exit_layers)} exits (at layers "
            f"{exit_layers}); give exactly one weight per exit."
        )
    return [float(w) for w in weights]


def _exit_score(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> tuple[str, torch.Tensor]:
    """Per-example quality of one exit's answers: accuracy (exact match for multi-label) or squared error."""
    if problem_type == "regression":
        errors = (logits.float().view(labels.shape[0], -1) - labels.float().view(labels.shape[0], -1)) ** 2
        return "mse", errors.mean(dim=-1)
    if problem_type == "single_label_classification":
        return "accuracy", (logits.argmax(dim=-1) == labels.view(-1)).float()
    return "accuracy", ((logits > 0) == labels.bool()).all(dim=-1).float()


class MultiExitLoss(ExitLoss):
    """Shared behaviour of the recipes of models whose forward returns every exit's logits in `all_logits`
    (`(num_exits, batch, num_labels)`): the model computes every exit (only the final one on the steps where a recipe
    trains it alone, so that the other exits get no gradient at all), every computed exit's loss is reported, and
    evaluation scores every exit and the model's own early exit from one forward.

    Evaluation reads the cost protocol every family provides (`exit_layers`, `full_depth_layers`,
    `flops_per_exit(lengths)`, `reference_flops(lengths)`), so the same metrics serve the multi-exit model and the
    cascade.

    Args:
        config: The model's config.
        exit_layers (`list[int]`, *optional*): Encoder layers paid when answering at each exit (cumulative for a
            cascade); defaults to the multi-exit config's `resolved_exit_layers`.
    """

    def __init__(self, config, exit_layers: list[int] | None = None, gradient_equilibrium: bool = False):
        super().__init__()
        self.config = config
        self.exit_layers = list(exit_layers) if exit_layers is not None else config.resolved_exit_layers
        self.gradient_equilibrium = bool(gradient_equilibrium)

    def trains_final_exit_only(self, step: int | None) -> bool:
        """Whether this training step optimises the final exit alone (never in evaluation)."""
        return False

    def model_inputs(self, inputs, step=None):
        all_exits = step is None or not self.trains_final_exit_only(step)
        model_inputs = {**super().model_inputs(inputs, step), "output_all_exits": all_exits}
        if self.gradient_equilibrium and step is not None:
            model_inputs["gradient_equilibrium"] = True
        return model_inputs

    @staticmethod
    def final_logits(outputs) -> torch.Tensor:
        return outputs.logits if outputs.all_logits is None else outputs.all_logits[-1]

    def exit_loss(self, logits: torch.Tensor, inputs) -> torch.Tensor:
        """The supervised loss of one exit's `(batch, num_labels)` logits (cross-entropy for classification)."""
        return sequence_classification_loss(logits, inputs["labels"], problem_type_of(self.config, inputs["labels"]))

    def per_exit_losses(self, outputs, inputs) -> dict[str, torch.Tensor]:
        """Detached `loss_exit_<layer>` of every computed exit, for the logs."""
        if outputs.all_logits is None:
            return {f"loss_exit_{self.exit_layers[-1]}": self.exit_loss(outputs.logits.detach(), inputs)}
        all_logits = outputs.all_logits.detach()
        return {
            f"loss_exit_{layer}": self.exit_loss(logits, inputs) for layer, logits in zip(self.exit_layers, all_logits)
        }

    def metrics(self, model, outputs, inputs):
        exit_layers = torch.tensor(self.exit_layers, device=outputs.exit_layer.device)
        exit_index = torch.searchsorted(exit_layers, outputs.exit_layer)
        names = [f"exit_{layer}" for layer in self.exit_layers]
        return routing_metrics(model, outputs, inputs, exit_index, names)


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
            name, score = _exit_score(logits, labels, problem_type)
            metrics[f"{name}_{exit_name}"] = (score, ones)
        name, score = _exit_score(outputs.logits, labels, problem_type)
        metrics[f"early_exit_{name}"] = (score, ones)
    return metrics


class JointExitLoss(MultiExitLoss):
    """`L = sum_i w_i CE_i / sum_i w_i` over every exit (PABEE's joint training; PCEE-BERT's "asc" weights).

    With linear weights (`w_i` = layer number) this is exactly the default loss of [`BertWithBypassExits`].

    Two options make the shallow exits stronger without dragging the backbone:

    - self-distillation (`self_distillation_weight = lambda > 0`): every exit but the last also learns the final
      exit's answer, `CE_i + lambda T^2 KL(p_L^T || p_i^T)` with the final exit's distribution detached (a teacher that
      learns nothing from its students), in one joint run (unlike FastBERT's two-stage `distillation` recipe);
    - gradient equilibrium (`gradient_equilibrium=True`, Li et al., 2019): the backbone averages the exits' gradients
      instead of summing them (see [`~hf_earlyexit.models.bert.modeling_exit_heads.full_depth_exit_logits`]).

    Args:
        config ([`BypassBertConfig`]): The model's config.
        weights (`str` or `list[float]`, *optional*, defaults to `"linear"`): `"linear"`, `"uniform"` or one number
            per exit.
        gradient_equilibrium (`bool`, *optional*, defaults to `False`): See above.
        self_distillation_weight (`float`, *optional*, defaults to 0): `lambda`; 0 leaves it out.
        self_distillation_temperature (`float`, *optional*, defaults to 2.0): `T`.
    """

    citation = CITATIONS["pabee"]
    training_options = frozenset({"gradient_equilibrium", "self_distillation_weight", "self_distillation_temperature"})

    def __init__(
        self,
        config,
        weights: str | list[float] = "linear",
        gradient_equilibrium: bool = False,
        self_distillation_weight: float = 0.0,
        self_distillation_temperature: float = 2.0,
    ):
        super().__init__(config, gradient_equilibrium=gradient_equilibrium)
        self.weights_setting = weights
        self.weights = resolve_exit_weights(weights, self.exit_layers)
        if self_distillation_weight and (
            config.num_labels < 2 or config.problem_type in ("regression", "multi_label_classification")
        ):
            raise ValueError(
                "Self-distillation matches class distributions (softmax), so it needs single-label classification "
                f"with num_labels >= 2; got num_labels={config.num_labels}, problem_type={config.problem_type!r}."
            )
        self.self_distillation_weight = float(self_distillation_weight)
        self.self_distillation_temperature = float(self_distillation_temperature)

    @classmethod
    def from_args(cls, model, args):
        return cls(
            model.config,
            args.exit_loss_weights,
            gradient_equilibrium=args.gradient_equilibrium,
            self_distillation_weight=args.self_distillation_weight or 0.0,
            self_distillation_temperature=args.self_distillation_temperature or 2.0,
        )

    def joint_loss(self, outputs, inputs) -> torch.Tensor:
        problem_type = problem_type_of(self.config, inputs["labels"])
        return weighted_exit_loss(outputs.all_logits, inputs["labels"], problem_type, self.weights)

    def self_distillation_terms(self, outputs) -> torch.Tensor:
        """`(num_exits,)`: `T^2 KL(p_L^T || p_i^T)` per exit, batch means (0 for the last exit)."""
        temperature = self.self_distillation_temperature
        teacher = outputs.all_logits[-1].detach() / temperature
        terms = [kl_divergence(teacher, logits / temperature).mean() for logits in outputs.all_logits[:-1]]
        return temperature**2 * torch.stack([*terms, outputs.all_logits.new_zeros(())])

    def forward(self, outputs, inputs, step=None):
        loss = self.joint_loss(outputs, inputs)
        components = self.per_exit_losses(outputs, inputs)
        if self.self_distillation_weight:
            kl = self.self_distillation_terms(outputs)
            weights = torch.as_tensor(self.weights, dtype=kl.dtype, device=kl.device)
            loss = loss + self.self_distillation_weight * (weights * kl).sum() / weights.sum()
            components.update({f"kl_exit_{layer}": term.detach() for layer, term in zip(self.exit_layers, kl[:-1])})
        return {"loss": loss, **components}

    def get_config_dict(self):
        config = {"weights": self.weights_setting}
        if self.gradient_equilibrium:
            config["gradient_equilibrium"] = True
        if self.self_distillation_weight:
            config["self_distillation_weight"] = self.self_distillation_weight
            config["self_distillation_temperature"] = self.self_distillation_temperature
        return config


class _StagedExitLoss(MultiExitLoss):
    """Stage 1 trains the backbone and the final exit on the final exit's loss; stage 2 trains the other exits."""

    def __init__(self, config, stage: int):
        super().__init__(config)
        if len(self.exit_layers) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two exits; the model has only its final one.")
        if isinstance(stage, bool) or stage not in (1, 2):
            raise ValueError(f"`stage` must be 1 or 2, got {stage!r}.")
        self.stage = stage

    @classmethod
    def from_args(cls, model, args):
        return cls(model.config, args.exit_stage)

    def trains_final_exit_only(self, step):
        return self.stage == 1

    def trainable_parameters(self, model):
        """Stage 1: the backbone and the final exit. Stage 2: every other parameter.

        The final exit is its head plus the bypass module of its block. That bypass stays frozen in stage 2 so that
        stage 2 cannot change a single final answer; an intermediate exit of the last block then trains its head only.
        """
        final_modules = [model.exit_heads[-1]]
        if getattr(model, "bypasses", None) is not None:
            # the block index the model uses for its last exit's bypass
            final_modules.append(model.bypasses[(self.exit_layers[-1] - 1) // model.config.bypass_block_size])
        stage_one = {id(p) for module in [model.base_model, *final_modules] for p in module.parameters()}
        return {name for name, p in model.named_parameters() if (id(p) in stage_one) == (self.stage == 1)}

    def forward(self, outputs, inputs, step=None):
        if self.stage == 1:
            loss = self.exit_loss(self.final_logits(outputs), inputs)
            return {"loss": loss, **self.per_exit_losses(outputs, inputs)}
        return self.stage_two(outputs, inputs)

    def stage_two(self, outputs, inputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def get_config_dict(self):
        return {"stage": self.stage}


class TwoStageExitLoss(_StagedExitLoss):
    """DeeBERT's two-stage training.

    Stage 1 trains the backbone and the final exit on the final exit's loss `CE_L` (the other exits are frozen).
    Stage 2 freezes the backbone and the final exit and trains the other exits on `sum_{i<L} CE_i`, so the final
    exit's answers stay exactly those of stage 1.

    Args:
        config ([`BypassBertConfig`]): The model's config.
        stage (`int`): 1 or 2.
    """

    citation = CITATIONS["deebert"]

    def stage_two(self, outputs, inputs):
        loss = sum(self.exit_loss(logits, inputs) for logits in outputs.all_logits[:-1])
        return {"loss": loss, **self.per_exit_losses(outputs, inputs)}


class AlternatingExitLoss(MultiExitLoss):
    """BERxiT's alternating training: even optimizer steps train on the final exit's loss `CE_L` only (the other exits
    get no gradient, so the optimizer leaves them untouched), odd steps on the sum of every exit's loss `sum_i CE_i`
    (BERxiT's objective: a sum, not a mean, so an odd step weighs the exits together `L` times as much as an even step
    weighs the final one). Evaluation (no step) reports the odd steps' `sum_i CE_i`.

    The step is the optimizer step, so every micro-batch of a gradient accumulation uses the same objective.
    `exit_loss_weights` does not apply (the sum is unweighted, as in BERxiT); a list of weights is refused.

    Args:
        config ([`BypassBertConfig`]): The model's config.
        gradient_equilibrium (`bool`, *optional*, defaults to `False`): As for [`JointExitLoss`], on the odd steps.
    """

    citation = CITATIONS["berxit"]

    training_options = frozenset({"gradient_equilibrium"})

    @classmethod
    def from_args(cls, model, args):
        if isinstance(args.exit_loss_weights, list):
            raise ValueError(
                "`exit_recipe='alternating'` sums the exits' losses unweighted on odd steps (BERxiT's `sum_i CE_i`); "
                f"`exit_loss_weights` is for the 'joint' recipe, got {args.exit_loss_weights}."
            )
        return cls(model.config, gradient_equilibrium=args.gradient_equilibrium)

    def trains_final_exit_only(self, step):
        return step is not None and step % 2 == 0

    def forward(self, outputs, inputs, step=None):
        if self.trains_final_exit_only(step):
            loss = self.exit_loss(self.final_logits(outputs), inputs)
        else:
            loss = sum(self.exit_loss(logits, inputs) for logits in outputs.all_logits)
        return {"loss": loss, **self.per_exit_losses(outputs, inputs)}


class DistillationExitLoss(_StagedExitLoss):
    """FastBERT's self-distillation.

    Stage 1 is [`TwoStageExitLoss`]'s stage 1 (backbone and final exit on `CE_L`). Stage 2 freezes the backbone and
    the final exit and trains every other exit to match the final one: `sum_{i<L} KL(p_L || p_i)`, each term averaged
    over the batch. Stage 2 reads no labels, so it can run on unlabelled text.

    Why two stages rather than `CE_L + sum_i KL` in one run: it is FastBERT's own schedule; with the teacher frozen
    the KL terms cannot drag the backbone (and with it the final answers) towards what shallow exits can express; and
    only then do the exits need no labels at all, whereas a single run would still need them for `CE_L`.

    Args:
        config ([`BypassBertConfig`]): The model's config (single-label classification).
        stage (`int`): 1 or 2.
    """

    citation = CITATIONS["fastbert"]

    def __init__(self, config, stage: int):
        super().__init__(config, stage)
        if config.num_labels < 2 or config.problem_type in ("regression", "multi_label_classification"):
            raise ValueError(
                "Self-distillation matches class distributions (softmax), so it needs single-label classification with "
                f"num_labels >= 2; got num_labels={config.num_labels}, problem_type={config.problem_type!r}."
            )

    def stage_two(self, outputs, inputs):
        teacher = outputs.all_logits[-1].detach()
        terms = {
            f"kl_exit_{layer}": kl_divergence(teacher, student).mean()
            for layer, student in zip(self.exit_layers[:-1], outputs.all_logits[:-1])
        }
        return {"loss": sum(terms.values()), **{name: term.detach() for name, term in terms.items()}}


# --------------------------------------------------------------------------------------------------------------------
# Cascade recipes (BertForCascadeClassification): `outputs.all_logits` is `(num_members, batch, num_labels)`
# --------------------------------------------------------------------------------------------------------------------

DAR_RECIPE = "difficulty_aware"
DIFFICULTY_SOURCES: tuple[str, ...] = ("warmup", "column", "online")
DIFFICULTY_COLUMN = "difficulty"
# the row position of each training example, added by the `"warmup"` source to look its label up in a batch
EXAMPLE_INDEX_COLUMN = "dar_example_index"


def difficulty_aware_ranking_loss(
    confidence: torch.Tensor,
    hard: torch.Tensor,
    margin: float,
    generator: torch.Generator | None = None,
    partners: torch.Tensor | None = None,
) -> torch.Tensor:
    """CascadeBERT's difficulty-aware regularisation (DAR) of one member on one batch (METHODS.md section 2).

    With `E` the easy examples and `H` the hard ones: every easy example `e` draws a hard partner `h(e)` uniformly with
    replacement, and `L_DAR = mean_e max(0, c_h(e) - c_e + m)`: an easy example should be more confident than a hard
    one by at least the margin. `L_DAR = 0` when `E` or `H` is empty.

    The draw: `partners = torch.randint(len(H), (len(E),), generator=generator)` on the CPU, so the same generator
    state gives the same partners on any device; `partners[i]` is the position, among the hard examples in batch
    order, of the partner of the `i`-th easy example in batch order.

    Args:
        confidence (`torch.Tensor` of shape `(batch,)`): The member's confidence `max_c p(c)`, with its gradient.
        hard (`torch.Tensor` of shape `(batch,)`): `True` (or 1) for the hard examples.
        margin (`float`): `m`.
        generator (`torch.Generator`, *optional*): A CPU generator for the partner draw (the global one if unset).
        partners (`torch.LongTensor` of shape `(num_easy,)`, *optional*): Given partners instead of a draw.

    Returns:
        A scalar tensor (a zero connected to `confidence` when there is nothing to rank, so `backward` still works).

    Example:

    ```python
    >>> confidence = torch.tensor([0.9, 0.6, 0.8, 0.55, 0.7])
    >>> hard = torch.tensor([False, True, False, True, False])
    >>> # pairs (0, 3), (2, 1), (4, 3): (0.15 + 0.3 + 0.35) / 3
    >>> difficulty_aware_ranking_loss(confidence, hard, margin=0.5, partners=torch.tensor([1, 0, 1]))
    tensor(0.2667)
    ```
    """
    hard = hard.bool()
    easy_index = (~hard).nonzero(as_tuple=True)[0]
    hard_index = hard.nonzero(as_tuple=True)[0]
    if easy_index.numel() == 0 or hard_index.numel() == 0:
        return confidence.sum() * 0.0
    if partners is None:
        partners = torch.randint(hard_index.numel(), (easy_index.numel(),), generator=generator)
    partner_index = hard_index[partners.to(hard_index.device)]
    return torch.clamp(confidence[partner_index] - confidence[easy_index] + margin, min=0.0).mean()


def check_difficulty_values(values: list, num_terms: int) -> None:
    """Check a `difficulty` column: per example either one label shared by every non-final member, or a list of
    `num_terms` labels (one per non-final member, smallest first); a label is 0 (easy) or 1 (hard), as an int or bool.

    Raises:
        ValueError: naming the first bad row.
    """
    shared = None
    for row, value in enumerate(values):
        is_list = isinstance(value, (list, tuple))
        if shared is None:
            shared = not is_list
        if is_list == shared:
            raise ValueError(
                f"`{DIFFICULTY_COLUMN}` column, row {row}: {value!r} mixes forms; give every row one label (shared by the "
                f"non-final members) or every row a list of {num_terms} (one per non-final member)."
            )
        labels = list(value) if is_list else [value]
        if is_list and len(labels) != num_terms:
            raise ValueError(
                f"`{DIFFICULTY_COLUMN}` column, row {row}: {len(labels)} labels, but the cascade has {num_terms} non-final "
                f"member(s); give one label per non-final member, or a single label shared by all."
            )
        if any(isinstance(label, float) or label not in (0, 1) for label in labels):
            raise ValueError(
                f"`{DIFFICULTY_COLUMN}` column, row {row}: labels must be 0 (easy) or 1 (hard), got {value!r}."
            )


class CascadeExitLoss(ExitLoss):
    """Shared behaviour of the cascade recipes: every member runs on every example, every member's loss is logged
    (`loss_member_<k>`, members numbered from 0, smallest first), and evaluation scores every member
    (`accuracy_member_<k>`), the routing by the model's own criterion (`early_exit_accuracy`, `mean_exit_layer`,
    `layer_speedup`, `flops_speedup`, in cumulative layers and FLOPs against the last member alone) and the share of
    examples each member answers (`exit_fraction_member_<k>`).

    `head_learning_rate` covers every member's head and every member but the last, encoder included: on
    all-MiniLM-L6-v2, a 1-layer model with a mean-pooling head reached 78.7 % SST-2 accuracy fine-tuned entirely at
    2e-4 against 73.6 % at 5e-5, while the full model is tuned at 5e-5 (METHODS.md section 5). So the smaller members
    train at the head rate, and only the last member's encoder at `learning_rate`.

    Args:
        config ([`CascadeBertConfig`]): The model's config.
    """

    citation = CITATIONS["cascadebert"]

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_members = config.num_members

    @staticmethod
    def check_args(args) -> None:
        if isinstance(args.exit_loss_weights, list):
            raise ValueError(
                "Cascade recipes sum the members' losses unweighted (CascadeBERT's `sum_k CE_k`); `exit_loss_weights` "
                f"is for multi-exit models, got {args.exit_loss_weights}."
            )

    def model_inputs(self, inputs, step=None):
        return {**super().model_inputs(inputs, step), "output_all_exits": True}

    def head_parameter_names(self, model):
        last = self.num_members - 1
        return {
            name
            for name, _ in model.named_parameters()
            if name.startswith("members.") and (".head." in name or int(name.split(".")[1]) < last)
        }

    def member_losses(self, outputs, inputs) -> list[torch.Tensor]:
        """The supervised loss of each member, smallest first."""
        problem_type = problem_type_of(self.config, inputs["labels"])
        return [sequence_classification_loss(logits, inputs["labels"], problem_type) for logits in outputs.all_logits]

    def joint_terms(self, outputs, inputs) -> dict[str, torch.Tensor]:
        """`{"loss": sum_k CE_k, "loss_member_<k>": detached CE_k}`."""
        losses = self.member_losses(outputs, inputs)
        return {"loss": sum(losses), **{f"loss_member_{k}": loss.detach() for k, loss in enumerate(losses)}}

    def metrics(self, model, outputs, inputs):
        names = [f"member_{k}" for k in range(self.num_members)]
        metrics = routing_metrics(model, outputs, inputs, outputs.exit_stage, names)
        ones = torch.ones_like(outputs.exit_stage, dtype=torch.float)
        for k, name in enumerate(names):
            metrics[f"exit_fraction_{name}"] = ((outputs.exit_stage == k).float(), ones)
        return metrics


class JointCascadeLoss(CascadeExitLoss):
    """Joint training of a cascade without DAR: `L = sum_k CE_k` over the members, each on every example. This is the
    model's own default training loss (`BertForCascadeClassification(..., labels=...)` in training mode).

    Args:
        config ([`CascadeBertConfig`]): The model's config.
    """

    @classmethod
    def from_args(cls, model, args):
        cls.check_args(args)
        return cls(model.config)

    def forward(self, outputs, inputs, step=None):
        return self.joint_terms(outputs, inputs)


class DifficultyAwareCascadeLoss(CascadeExitLoss):
    r"""CascadeBERT's joint training with difficulty-aware regularisation (METHODS.md section 2):

    `L = sum_k CE_k + lambda * sum_{k < K-1} L_DAR(k)`

    where `L_DAR(k)` is [`difficulty_aware_ranking_loss`] on member `k`'s confidence `max_c p_k(c)` against member
    `k`'s own difficulty labels (1 = hard). The last member has no DAR term: it answers everything that reaches it.
    DAR is a training term; evaluation reports `L = sum_k CE_k` (the labels describe training examples).

    Where the difficulty labels come from (`difficulty`):

    - `"warmup"` (default, our choice for the released code's precomputed file): the first `warmup_epochs` epochs
      train the members jointly without DAR; then one pass over the training set, in evaluation mode, labels an
      example hard for member `k` when member `k` predicts it wrongly; training continues with DAR against those
      labels, which stay fixed. The switch happens between two optimizer steps, after `ceil(warmup_epochs x update
      steps per epoch)` steps, inside the same learning-rate schedule. The trainer adds a `dar_example_index` column
      to the training set (a `datasets.Dataset`) to look the labels up.
    - `"column"`: a `difficulty` column of the training set gives the labels (see [`check_difficulty_values`]: one
      0/1 label per example shared by every non-final member, or a list of one per non-final member).
    - `"online"`: member `k`'s current correctness on the batch (its prediction, detached) is the label.

    With `"column"` and `"online"`, `warmup_epochs` (default 0) delays DAR by that many epochs. Examples without a
    label (none, unless the labelling pass dropped a last incomplete batch) take part in neither side.

    The partners are drawn from a generator of the loss seeded with `seed` (the trainer's `args.seed`), one draw per
    non-final member per batch, in member order, so a run is reproducible under its seed and enabling DAR does not
    change the global random stream (dropout, data order). In a multi-process run the batch is the global one: every
    process gathers the confidences and labels of all processes' shares (see [`~hf_earlyexit.distributed`]) and makes
    the same draw from the same generator, so two processes train exactly as one process on the whole batch. A run
    resumed from a checkpoint after the warm-up relabels the training set with the resumed model.

    Args:
        config ([`CascadeBertConfig`]): The model's config; at least two members, single-label classification.
        dar_lambda (`float`, *optional*, defaults to 0.5): `lambda`.
        margin (`float`, *optional*, defaults to 0.5): The ranking margin `m` (0.5 in the released script).
        difficulty (`str`, *optional*, defaults to `"warmup"`): `"warmup"`, `"column"` or `"online"`.
        warmup_epochs (`float`, *optional*): Epochs without DAR first; defaults to 1 for `"warmup"` (where it must be
            positive) and 0 otherwise.
        seed (`int`, *optional*, defaults to 0): Seed of the partner draws.

    Example:

    ```python
    >>> args = EarlyExitTrainingArguments(
    ...     output_dir="out", exit_recipe="difficulty_aware", num_train_epochs=3, dar_warmup_epochs=1,
    ...     learning_rate=5e-5, head_learning_rate=2e-4,
    ... )
    >>> trainer = EarlyExitTrainer(cascade, args, train_dataset=train)  # a datasets.Dataset
    >>> trainer.train()  # epoch 1: sum_k CE_k; then labels from the small members' errors; epochs 2-3: + 0.5 DAR
    ```
    """

    def __init__(
        self,
        config,
        dar_lambda: float = 0.5,
        margin: float = 0.5,
        difficulty: str = "warmup",
        warmup_epochs: float | None = None,
        seed: int = 0,
    ):
        super().__init__(config)
        if self.num_members < 2:
            raise ValueError("Difficulty-aware training needs a cascade of at least two members; this one has one.")
        if config.num_labels < 2 or config.problem_type not in (None, "single_label_classification"):
            raise ValueError(
                "Difficulty-aware training ranks confidences max_c p(c) and labels examples by correctness, so it needs "
                f"single-label classification; got num_labels={config.num_labels}, problem_type={config.problem_type!r}."
            )
        check_dar_settings(dar_lambda, margin, difficulty, warmup_epochs)
        self.dar_lambda = float(dar_lambda)
        self.margin = float(margin)
        self.difficulty = difficulty
        self.warmup_epochs = float(warmup_epochs if warmup_epochs is not None else difficulty == "warmup")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        extra = {"warmup": (EXAMPLE_INDEX_COLUMN,), "column": (DIFFICULTY_COLUMN,), "online": ()}[difficulty]
        self.input_columns = ("labels", *extra)
        # optimizer step from which DAR applies (set by the trainer's callback from the epoch length)
        self.dar_start_step = 0
        # "warmup": `(num_training_examples, num_members - 1)` int8 labels (1 hard, 0 easy, -1 unknown) once labelled
        self.difficulty_table: torch.Tensor | None = None

    @classmethod
    def from_args(cls, model, args):
        cls.check_args(args)
        return cls(
            model.config,
            dar_lambda=args.dar_lambda,
            margin=args.dar_margin,
            difficulty=args.dar_difficulty,
            warmup_epochs=args.dar_warmup_epochs,
            seed=args.seed,
        )

    def get_config_dict(self):
        return {
            "dar_lambda": self.dar_lambda,
            "margin": self.margin,
            "difficulty": self.difficulty,
            "warmup_epochs": self.warmup_epochs,
        }

    # --- the objective ----------------------------------------------------------------------------------------------

    def dar_active(self, step: int | None) -> bool:
        """Whether this training step adds DAR (never in evaluation)."""
        if step is None:
            return False
        if self.difficulty == "warmup":
            return self.difficulty_table is not None
        return step >= self.dar_start_step

    def hard_labels(self, outputs, inputs) -> torch.Tensor:
        """`(batch, num_members - 1)` labels of this batch: 1 hard, 0 easy, -1 unknown."""
        num_terms = self.num_members - 1
        if self.difficulty == "online":
            predictions = outputs.all_logits[:-1].detach().argmax(dim=-1)
            return (predictions != inputs["labels"].view(1, -1)).T.to(torch.int8)
        if self.difficulty == "warmup":
            index = inputs.get(EXAMPLE_INDEX_COLUMN)
            if index is None:
                raise ValueError(
                    f"The batch has no `{EXAMPLE_INDEX_COLUMN}` column: with `dar_difficulty='warmup'` the trainer adds it "
                    "to a `datasets.Dataset` training set; other training sets need `dar_difficulty='column'`."
                )
            return self.difficulty_table[index.cpu()].to(inputs["labels"].device)
        labels = inputs.get(DIFFICULTY_COLUMN)
        if labels is None:
            raise ValueError(
                f"`dar_difficulty='column'` needs a `{DIFFICULTY_COLUMN}` column in the training set; this batch has "
                f"none (columns: {sorted(inputs)})."
            )
        labels = torch.as_tensor(labels)
        batch_size = inputs["labels"].shape[0]
        if labels.shape == (batch_size,):
            labels = labels.unsqueeze(-1).expand(batch_size, num_terms)
        if labels.shape != (batch_size, num_terms):
            raise ValueError(
                f"`{DIFFICULTY_COLUMN}` has shape {tuple(labels.shape)} in a batch of {batch_size}; expected "
                f"({batch_size},) (one label shared by the non-final members) or ({batch_size}, {num_terms})."
            )
        if not ((labels == 0) | (labels == 1)).all():
            raise ValueError(
                f"`{DIFFICULTY_COLUMN}` labels must be 0 (easy) or 1 (hard), got {labels.unique().tolist()}."
            )
        return labels.to(device=inputs["labels"].device, dtype=torch.int8)

    def forward(self, outputs, inputs, step=None):
        terms = self.joint_terms(outputs, inputs)
        if not self.dar_active(step):
            return terms
        num_terms = self.num_members - 1
        confidence = torch.stack([max_prob(logits) for logits in outputs.all_logits[:-1]], dim=-1)
        labels = self.hard_labels(outputs, inputs).to(confidence.dtype)
        # the partners come from the global batch: a multi-process run pairs what one process would pair
        batch, _ = gather_across_processes(torch.cat([confidence, labels], dim=-1))
        confidence, hard = batch[:, :num_terms], batch[:, num_terms:].round().to(torch.int8)
        dar = []
        for k in range(num_terms):
            known = hard[:, k] >= 0
            dar.append(
                difficulty_aware_ranking_loss(confidence[known, k], hard[known, k] == 1, self.margin, self.generator)
            )
            terms[f"dar_member_{k}"] = dar[-1].detach()
            terms[f"hard_fraction_member_{k}"] = (hard[known, k] == 1).float().mean().nan_to_num(0.0)
        terms["loss"] = terms["loss"] + self.dar_lambda * sum(dar)
        return terms

    # --- the schedule and the labelling pass ------------------------------------------------------------------------

    def setup(self, trainer) -> None:
        dataset = trainer.train_dataset
        if self.difficulty == "warmup" and dataset is not None:
            from datasets import Dataset

            if not isinstance(dataset, Dataset):
                raise ValueError(
                    "`dar_difficulty='warmup'` labels the training examples by their position, which needs a "
                    f"`datasets.Dataset` training set (got {type(dataset).__name__}); give a `{DIFFICULTY_COLUMN}` column "
                    "(`dar_difficulty='column'`) or use `dar_difficulty='online'`."
                )
            if EXAMPLE_INDEX_COLUMN in dataset.column_names:
                dataset = dataset.remove_columns(EXAMPLE_INDEX_COLUMN)
            trainer.train_dataset = dataset.add_column(EXAMPLE_INDEX_COLUMN, list(range(len(dataset))))
        if self.difficulty == "column" and dataset is not None and hasattr(dataset, "column_names"):
            if DIFFICULTY_COLUMN not in dataset.column_names:
                raise ValueError(
                    f"`dar_difficulty='column'` needs a `{DIFFICULTY_COLUMN}` column in the training set; it has "
                    f"{dataset.column_names}."
                )
            check_difficulty_values(dataset[DIFFICULTY_COLUMN], self.num_members - 1)
        trainer.add_callback(_DifficultyAwareSchedule(trainer, self))

    @torch.no_grad()
    def label_training_set(self, trainer) -> torch.Tensor:
        """Label every training example by the current non-final members' errors (evaluation mode, one pass) and keep
        the labels for DAR. Returns the `(num_examples, num_members - 1)` table (1 hard, 0 easy, -1 unknown)."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        table = torch.full((len(trainer.train_dataset), self.num_members - 1), -1, dtype=torch.int8)
        # the pass must not move the global random stream that dropout and data order use
        with torch.random.fork_rng(devices=[]), trainer.compute_loss_context_manager():
            for batch in trainer.get_test_dataloader(trainer.train_dataset):
                attention_mask = batch.get("attention_mask")
                member_inputs = {
                    "input_ids": batch["input_ids"],
                    "attention_mask": attention_mask
                    if attention_mask is not None
                    else torch.ones_like(batch["input_ids"]),
                    "token_type_ids": batch.get("token_type_ids"),
                }
                # only the members that get a DAR term run: the last one is the most expensive
                wrong = torch.stack(
                    [member(**member_inputs).argmax(-1) != batch["labels"] for member in model.members[:-1]], dim=-1
                )
                index, wrong = trainer.accelerator.gather_for_metrics((batch[EXAMPLE_INDEX_COLUMN], wrong))
                table[index.cpu()] = wrong.cpu().to(torch.int8)
        model.train(was_training)
        self.difficulty_table = table
        return table


class _DifficultyAwareSchedule(TrainerCallback):
    """Turns DAR on after the warm-up: sets the loss's first DAR step from the epoch length, and with the `"warmup"`
    source labels the training set at the start of that step (after the last warm-up step was logged, evaluated and
    saved; a run resumed past the warm-up is labelled at its first step)."""

    def __init__(self, trainer, loss: DifficultyAwareCascadeLoss):
        self.trainer = trainer
        self.loss = loss

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None and has_length(train_dataloader):
            steps_per_epoch = max(math.ceil(len(train_dataloader) / args.gradient_accumulation_steps), 1)
        else:
            steps_per_epoch = state.max_steps
        # round first: 0.3 x 10 must give 3 steps, not 4
        self.loss.dar_start_step = math.ceil(round(self.loss.warmup_epochs * steps_per_epoch, 6))
        if self.loss.difficulty == "warmup" and self.loss.dar_start_step >= state.max_steps:
            raise ValueError(
                f"`dar_warmup_epochs={self.loss.warmup_epochs}` is {self.loss.dar_start_step} optimizer steps, but the "
                f"training has {state.max_steps}: DAR would never apply. Lower `dar_warmup_epochs` or train longer."
            )

    def on_step_begin(self, args, state, control, **kwargs):
        if (
            self.loss.difficulty != "warmup"
            or self.loss.difficulty_table is not None
            or state.global_step < self.loss.dar_start_step
        ):
            return
        if state.global_step > self.loss.dar_start_step:
            logger.warning(
                "Resuming after the DAR warm-up: the training set is labelled again, with the resumed model's members."
            )
        table = self.loss.label_training_set(self.trainer)
        known = table >= 0
        fractions = ((table == 1) & known).sum(dim=0) / known.sum(dim=0).clamp_min(1)
        # logged here rather than at the end of the last warm-up step, where a log would replace that step's own
        self.trainer.log({f"difficulty_hard_fraction_member_{k}": float(f) for k, f in enumerate(fractions)})


def check_dar_settings(dar_lambda, margin, difficulty, warmup_epochs) -> None:
    """Validate the DAR settings (shared by [`DifficultyAwareCascadeLoss`] and the training arguments)."""
    for name, value in (("dar_lambda", dar_lambda), ("dar_margin", margin)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    if difficulty not in DIFFICULTY_SOURCES:
        raise ValueError(f"`dar_difficulty` must be one of {DIFFICULTY_SOURCES}, got {difficulty!r}.")
    if warmup_epochs is not None:
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, (int, float))
            or not math.isfinite(warmup_epochs)
            or warmup_epochs < 0
        ):
            raise ValueError(f"`dar_warmup_epochs` must be a finite number >= 0, got {warmup_epochs!r}.")
        if difficulty == "warmup" and warmup_epochs == 0:
            raise ValueError(
                "`dar_difficulty='warmup'` labels examples with the members trained without DAR, so "
                "`dar_warmup_epochs` must be > 0 (got 0); for labels from the start use 'column' or 'online'."
            )


# --------------------------------------------------------------------------------------------------------------------
# Knowledge distillation from a fine-tuned teacher (the smaller-model baseline a user would train instead)
# --------------------------------------------------------------------------------------------------------------------

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


class TeacherDistillationLoss(CascadeExitLoss):
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
        if config.num_labels < 2 or config.problem_type in ("regression", "multi_label_classification"):
            raise ValueError(
                "Logit distillation matches class distributions (softmax), so it needs single-label classification "
                f"with num_labels >= 2; got num_labels={config.num_labels}, problem_type={config.problem_type!r}."
            )
        self.temperature = temperature
        self.alpha = alpha
        # not a submodule: the teacher is neither trained nor saved with the student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False) if teacher is not None else None

    @classmethod
    def from_args(cls, model, args):
        from transformers import AutoModelForSequenceClassification

        cls.check_args(args)
        teacher = load_teacher(args, model, AutoModelForSequenceClassification)
        return cls(model.config, args.distillation_temperature, args.distillation_alpha, teacher)

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
        if TEACHER_LOGITS_COLUMN in inputs:
            return inputs[TEACHER_LOGITS_COLUMN]
        with torch.no_grad():
            return self.teacher(**self.model_inputs(inputs)).logits

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
        return {"distillation_temperature": self.temperature, "distillation_alpha": self.alpha}


# --------------------------------------------------------------------------------------------------------------------
# Sequence-labelling recipes (BertForTokenEarlyExit): `outputs.all_logits` is `(num_exits, batch, seq, num_labels)`
# --------------------------------------------------------------------------------------------------------------------


SELF_SAMPLING_RECIPE = "self_sampling"
# the sampling space of the released code (LeeSureman/Sequence-Labeling-Early-Exit): windows 3, 5, ..., 15 words and
# this threshold grid, bounded by `max_threshold`
SELF_SAMPLING_WINDOWS: tuple[int, ...] = (3, 5, 7, 9, 11, 13, 15)
SELF_SAMPLING_THRESHOLDS: tuple[float, ...] = (0.01, 0.03, 0.05, *(round(0.05 * k, 2) for k in range(2, 11)))
SELF_SAMPLING_THRESHOLD_STEP = 0.01
# the released replay schedule: tau in the lower half of the layers, min(2 tau, 0.5) in the upper half
SELF_SAMPLING_REPLAY_CAP = 0.5
# our departures from the released self-sampling, each off by default (see `SelfSamplingTokenLoss`)
SELF_SAMPLING_DEPARTURES: dict[str, str] = {
    "fine_threshold_grid": "thresholds 0.01, 0.02, ... up to max_threshold instead of the released grid",
    "flooding_per_exit": "flooding on each exit's mean loss instead of on each word's loss",
    "mean_over_active_words": "each exit's loss is the mean over its active words instead of their sum divided by "
    "all labelled words",
    "config_replay_schedule": "the replay follows the model config's threshold schedule instead of the released "
    "one (tau, then min(2 tau, 0.5) in the upper half of the layers)",
    "sandwich_both": "the most aggressive sandwich member takes both the smallest window and max_threshold instead "
    "of one of the two by coin flip",
}
# the sandwich: instances per batch forced to the most aggressive setting, and to no exit
SANDWICH_AGGRESSIVE = 2
SANDWICH_NO_EXIT = 4
STAGE_ONE_INDEX_COLUMN = "self_sampling_example_index"


def token_cross_entropy(all_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(num_exits, batch, seq)` cross-entropy of every exit at every position (meaningless where `labels` is -100:
    mask it)."""
    num_exits, _, _, num_labels = all_logits.shape
    return torch.nn.functional.cross_entropy(
        all_logits.reshape(-1, num_labels).float(),
        labels.clamp_min(0).unsqueeze(0).expand(num_exits, -1, -1).reshape(-1),
        reduction="none",
    ).view(all_logits.shape[:3])


def masked_token_losses(
    all_logits: torch.Tensor,
    labels: torch.Tensor,
    active: torch.Tensor | None = None,
    across_processes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per exit, the mean cross-entropy over the labelled positions (active at that exit, when `active` is given).

    Args:
        all_logits: `(num_exits, batch, seq, num_labels)`.
        labels: `(batch, seq)`, -100 where there is nothing to predict.
        active: Optional `(num_exits, batch, seq)` bool.
        across_processes: In a multi-process run, average over the positions of the global batch (every process's
            share; see [`~hf_earlyexit.distributed.sum_across_processes`]) rather than over this process's share,
            whose number of labelled words differs from the other shares'.

    Returns:
        `(losses, counts)`, both `(num_exits,)`: the mean loss (0 where an exit has no position to score) and the
        number of positions it averages.
    """
    labelled = (labels != -100).unsqueeze(0).expand(all_logits.shape[0], -1, -1)
    keep = labelled if active is None else labelled & active
    per_position = token_cross_entropy(all_logits, labels)
    sums, counts = (per_position * keep).sum(dim=(1, 2)), keep.sum(dim=(1, 2))
    if across_processes:
        totals = sum_across_processes(torch.stack([sums, counts.to(sums.dtype)]))
        sums, counts = totals[0], totals[1].round().long()
    return sums / counts.clamp_min(1), counts


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
    `config.id2label`), micro-averaged over the whole set, exactly as seqeval computes them (see
    [`~hf_earlyexit.evaluation.entity_counts`]). A ratio with nothing to count (e.g. no predicted entity of a type)
    is NaN.
    """
    from .evaluation import entity_counts, entity_types, word_tags
    from .models.bert.exit_utils import encoder_layer_flops
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
    reference = (
        config.num_hidden_layers * encoder_layer_flops(lengths, config.hidden_size, config.intermediate_size)
        + lengths * model.head_flops()
    )
    metrics = {
        "mean_exit_layer": (depth_sum, num_words),
        "layer_speedup": (config.num_hidden_layers * num_words, depth_sum),
        "flops_speedup": (reference.float(), outputs.flops.float()),
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


class TokenExitLoss(ExitLoss):
    """Shared behaviour of the recipes of [`BertForTokenEarlyExit`]: training computes every exit at every position;
    evaluation runs the model's own early exit (its config's rule, the real packed skipping) and reports
    [`token_classification_metrics`].

    Args:
        config ([`TokenExitBertConfig`]): The model's config.
        weights (`str` or `list[float]`, *optional*, defaults to `"linear"`): Exit weights `w_i`: `"linear"` (the
            layer number, the paper's `sum_i i L_i / sum_i i`), `"uniform"` or one number per exit.
    """

    citation = """@inproceedings{li2021accelerating,
  title = {Accelerating {BERT} Inference for Sequence Labeling via Early-Exit},
  author = {Li, Xiaonan and Shao, Yunfan and Sun, Tianxiang and Yan, Hang and Qiu, Xipeng and Huang, Xuanjing},
  booktitle = {Proceedings of the 59th Annual Meeting of the Association for Computational Linguistics},
  pages = {189--199},
  year = {2021}
}"""

    def __init__(self, config, weights: str | list[float] = "linear"):
        super().__init__()
        self.config = config
        self.exit_layers = config.resolved_exit_layers
        self.weights_setting = weights
        self.weights = resolve_exit_weights(weights, self.exit_layers)

    def model_inputs(self, inputs, step=None):
        return {**super().model_inputs(inputs, step), "output_all_exits": step is not None}

    def eval_loss(self, outputs, inputs) -> dict[str, torch.Tensor]:
        return {"loss": sequence_classification_loss(outputs.logits, inputs["labels"], "single_label_classification")}

    def per_exit_losses(self, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detached `loss_exit_<layer>` of every exit, from the `(num_exits,)` losses of the batch, for the logs."""
        return {f"loss_exit_{layer}": loss for layer, loss in zip(self.exit_layers, losses.detach())}

    def metrics(self, model, outputs, inputs):
        return token_classification_metrics(model, outputs, inputs)

    def get_config_dict(self):
        return {"weights": self.weights_setting}


class JointTokenExitLoss(TokenExitLoss):
    """Stage 1 of sequence-labelling early exit: `L = sum_i w_i CE_i / sum_i w_i` over every exit, `CE_i` the mean
    token cross-entropy of exit `i` over labelled positions (with linear weights, the model's own training loss).

    In a multi-process run the mean is over the labelled words of the global batch (every process's share), so two
    processes train exactly as one does on the whole batch, though their shares hold different numbers of words.
    """

    @classmethod
    def from_args(cls, model, args):
        return cls(model.config, args.exit_loss_weights)

    def forward(self, outputs, inputs, step=None):
        if outputs.all_logits is None:
            return self.eval_loss(outputs, inputs)
        losses, _ = masked_token_losses(outputs.all_logits, inputs["labels"], across_processes=True)
        weights = torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)
        loss = (weights * losses).sum() / weights.sum()
        return {"loss": loss, **self.per_exit_losses(losses)}


class SelfSamplingTokenLoss(TokenExitLoss):
    """Stage 2 of sequence-labelling early exit: self-sampling fine-tuning (Li et al., ACL 2021; METHODS.md section 3).

    Before training ([`setup`]), the model as it is (the stage-1 model) runs once over the training set with every
    exit computed, and its per-exit logits are stored per sentence. Every training step then, per sentence of the
    batch:

    1. samples a TOKEE setting: a window `W` from `windows` and a threshold `tau` from the released grid `0.01, 0.03,
       0.05, 0.1, 0.15, ..., 0.5` up to `max_threshold`; the "sandwich" sets 2 sentences of the batch (chosen at
       random) to the most aggressive setting (a coin flip per sentence: the smallest window, or `max_threshold`) and
       4 others to no exit (`tau = 0`); batches smaller than 6 take them in that order;
    2. replays the TOKEE rule on the stored stage-1 logits ([`TokenExitRule.simulate`]) with the released schedule
       (`tau` for the exits in the lower half of the layers, `min(2 tau, 0.5)` in the upper half) to get each word's
       exit layer (word-pieces follow their word, special tokens their sentence);
    3. runs the model with copying, `h_i = m_i * Layer_i(h_{i-1}) + (1 - m_i) * h_{i-1}` (the model's `active_depth`
       argument), so that an exited word's state stays as it was when it left;
    4. the loss at exit `i` is the sum of the cross-entropies of the labelled words still active there (exit layer
       >= layer `i`) divided by the number of labelled words of the batch, and `L = sum_i w_i L_i / sum_i w_i`, `w_i`
       the layer number by default. With `flooding = b`, each word's term becomes `|CE - CE^old - b|`, `CE^old` its
       stage-1 loss at that exit from the stored logits (keeps it near its stage-1 loss plus `b` instead of pushing
       it further down).

    That is the released code's behaviour. `departures` names any of our variants to use instead (each was the
    library's behaviour before the released one was matched; kept for the ablation in `benchmarks/conll.py`):

    - `"fine_threshold_grid"`: thresholds `0.01, 0.02, ...` up to `max_threshold`;
    - `"flooding_per_exit"`: flooding on each exit's loss, `|L_i - L_i^old - b|`;
    - `"mean_over_active_words"`: `L_i` is the mean over the words active at exit `i`, and exits without active words
      leave the weighted mean;
    - `"config_replay_schedule"`: the replay follows the model config's `threshold_schedule` and `threshold_cap`;
    - `"sandwich_both"`: the most aggressive member takes both the smallest window and `max_threshold`.

    Evaluation runs the model's own early exit, as for stage 1.

    The training set must be a `datasets.Dataset` of tokenized rows (e.g. [`tokenize_token_dataset`]) batched by a
    collator that pads `word_ids` ([`DataCollatorForTokenEarlyExit`]); the trainer's collator also serves the
    recording pass.

    The stored logits take `num_exits x (sentence length) x num_labels` floats per sentence (about 80 MB for the
    14k CoNLL-2003 training sentences with 6 exits and 9 tags). In a multi-process run each process records a share
    of the training set and every process keeps all of it.

    In a multi-process run the batch is the global one: the settings are drawn for all the processes' shares together
    (the same draw in every process, each taking its own rows) and the per-exit means run over the global batch's
    words, so two processes train exactly as one process on the whole batch.

    Args:
        config ([`TokenExitBertConfig`]): The model's config.
        max_threshold (`float`, *optional*, defaults to 0.5): Largest sampled threshold, in `[0.01, 1]`.
        flooding (`float`, *optional*): The flooding level `b` (>= 0); `None` trains without flooding.
        windows (`tuple[int, ...]`, *optional*): Windows to sample from (odd, >= 1), defaults to 3, 5, ..., 15.
        weights: As for [`TokenExitLoss`].
        seed (`int`, *optional*, defaults to 0): Seed of the sampling.
        departures (`tuple[str, ...]`, *optional*): Our variants to use instead of the released behaviour (above).
    """

    input_columns = ("labels", STAGE_ONE_INDEX_COLUMN)

    def __init__(
        self,
        config,
        max_threshold: float = 0.5,
        flooding: float | None = None,
        windows: tuple[int, ...] = SELF_SAMPLING_WINDOWS,
        weights: str | list[float] = "linear",
        seed: int = 0,
        departures: tuple[str, ...] = (),
    ):
        super().__init__(config, weights)
        check_self_sampling_settings(max_threshold, flooding, departures)
        from .models.bert.token_exit_utils import check_window_size

        if not windows:
            raise ValueError("`windows` must name at least one window size.")
        self.windows = tuple(check_window_size(w, "windows") for w in windows)
        self.max_threshold = float(max_threshold)
        self.flooding = None if flooding is None else float(flooding)
        self.departures = frozenset(departures)
        if "fine_threshold_grid" in self.departures:
            steps = max(int(round(self.max_threshold / SELF_SAMPLING_THRESHOLD_STEP)), 1)
            self.thresholds = tuple(round(SELF_SAMPLING_THRESHOLD_STEP * k, 6) for k in range(1, steps + 1))
        else:
            self.thresholds = tuple(t for t in SELF_SAMPLING_THRESHOLDS if t <= self.max_threshold + 1e-9) or (
                self.max_threshold,
            )
        self.generator = torch.Generator().manual_seed(seed)
        # example index -> `(num_exits, length, num_labels)` stage-1 logits, filled by `record_stage_one`
        self.stage_one_logits: list[torch.Tensor] | None = None
        self._replay: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_args(cls, model, args):
        return cls(
            model.config,
            max_threshold=args.self_sampling_max_threshold,
            flooding=args.self_sampling_flooding,
            weights=args.exit_loss_weights,
            seed=args.seed,
            departures=tuple(args.self_sampling_departures or ()),
        )

    def get_config_dict(self):
        return {
            "weights": self.weights_setting,
            "max_threshold": self.max_threshold,
            "flooding": self.flooding,
            "windows": list(self.windows),
            "thresholds": list(self.thresholds),
            "sandwich": {"most_aggressive": SANDWICH_AGGRESSIVE, "no_exit": SANDWICH_NO_EXIT},
            "departures": sorted(self.departures),
        }

    # --- stage-1 logits ---------------------------------------------------------------------------------------------

    def setup(self, trainer) -> None:
        dataset = trainer.train_dataset
        if dataset is None:
            return
        from datasets import Dataset

        if not isinstance(dataset, Dataset):
            raise ValueError(
                "Self-sampling stores the stage-1 logits of every training sentence by its position, which needs a "
                f"`datasets.Dataset` training set (got {type(dataset).__name__})."
            )
        if STAGE_ONE_INDEX_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(STAGE_ONE_INDEX_COLUMN)
        trainer.train_dataset = dataset.add_column(STAGE_ONE_INDEX_COLUMN, list(range(len(dataset))))
        self.record_stage_one(trainer)

    @torch.no_grad()
    def record_stage_one(self, trainer) -> list[torch.Tensor]:
        """Run the model as it is now (evaluation mode, every exit) over the training set and store its logits."""
        from torch.utils.data import DataLoader

        from .evaluation import map_batches

        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        parameters = inspect.signature(model.forward).parameters
        dataset = trainer.train_dataset
        dataset = dataset.remove_columns(
            [c for c in dataset.column_names if c not in parameters and c not in self.input_columns]
        )
        loader = DataLoader(
            dataset, batch_size=trainer.args.per_device_eval_batch_size, collate_fn=trainer.data_collator
        )
        device = next(model.parameters()).device

        def run(batch):
            inputs = {
                key: value.to(device)
                for key, value in batch.items()
                if key not in self.input_columns and isinstance(value, torch.Tensor)
            }
            all_logits = model(**inputs, output_all_exits=True).all_logits.float().cpu()
            lengths = inputs["attention_mask"].sum(-1).tolist()
            index = batch[STAGE_ONE_INDEX_COLUMN].tolist()
            return [(i, all_logits[:, row, :length].clone()) for row, (i, length) in enumerate(zip(index, lengths))]

        stored: list[torch.Tensor | None] = [None] * len(dataset)
        with torch.random.fork_rng(devices=[]):
            # each process records a share of the batches and every process gets all of them back
            for sentences in map_batches(run, list(loader), split_across_processes=True):
                for i, logits in sentences:
                    stored[i] = logits.cpu()
        model.train(was_training)
        self.stage_one_logits = stored
        return stored

    def batch_stage_one(self, inputs) -> torch.Tensor:
        """`(num_exits, batch, seq, num_labels)` stored stage-1 logits of this batch (zero at padding)."""
        if self.stage_one_logits is None:
            raise ValueError(
                "Self-sampling has no stage-1 logits: `EarlyExitTrainer` records them when it is built with a training "
                "set; outside it, call `record_stage_one(trainer)` first."
            )
        index = inputs.get(STAGE_ONE_INDEX_COLUMN)
        if index is None:
            raise ValueError(
                f"The batch has no `{STAGE_ONE_INDEX_COLUMN}` column (the trainer adds it to the training set)."
            )
        attention_mask = inputs["attention_mask"]
        batch_size, seq_len = attention_mask.shape
        first = self.stage_one_logits[int(index[0])]
        out = first.new_zeros(first.shape[0], batch_size, seq_len, first.shape[-1])
        for row, i in enumerate(index.tolist()):
            logits = self.stage_one_logits[i]
            positions = attention_mask[row].nonzero().squeeze(-1).cpu()
            if len(positions) != logits.shape[1]:
                raise ValueError(
                    f"Training sentence {i} has {len(positions)} positions in this batch but {logits.shape[1]} when its "
                    "stage-1 logits were recorded: the training set must not change between them."
                )
            out[:, row, positions] = logits
        return out.to(attention_mask.device)

    # --- sampling and replay ----------------------------------------------------------------------------------------

    def sample_settings(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sentence of a batch, a window `(batch,)` long and a threshold `(batch,)` float (0: no exit), with the
        sandwich (see the class docstring)."""
        windows = torch.tensor(self.windows)[torch.randint(len(self.windows), (batch_size,), generator=self.generator)]
        thresholds = torch.tensor(self.thresholds)[
            torch.randint(len(self.thresholds), (batch_size,), generator=self.generator)
        ]
        order = torch.randperm(batch_size, generator=self.generator)
        aggressive = order[:SANDWICH_AGGRESSIVE]
        no_exit = order[SANDWICH_AGGRESSIVE : SANDWICH_AGGRESSIVE + SANDWICH_NO_EXIT]
        largest = self.thresholds[-1]
        if "sandwich_both" in self.departures:
            windows[aggressive], thresholds[aggressive] = min(self.windows), largest
        else:  # the released code: per sentence, a coin flip between the smallest window and the largest threshold
            smallest_window = torch.rand(len(aggressive), generator=self.generator) < 0.5
            windows[aggressive[smallest_window]] = min(self.windows)
            thresholds[aggressive[~smallest_window]] = largest
        thresholds[no_exit] = 0.0
        return windows, thresholds

    def replay(
        self,
        all_logits: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None,
        windows: torch.Tensor,
        thresholds: torch.Tensor,
    ) -> torch.Tensor:
        """`(batch, seq)` exit layer of every position under each sentence's own TOKEE setting, replayed on
        `all_logits` (0 at padding)."""
        from .models.bert.token_exit_utils import TokenExitRule

        config = self.config
        exit_index = torch.full(attention_mask.shape, -1, dtype=torch.long, device=attention_mask.device)
        settings = torch.stack([windows.float(), thresholds.float()], dim=-1)
        for window, threshold in torch.unique(settings, dim=0).tolist():
            rows = ((windows == int(window)) & (thresholds.float() == threshold)).nonzero().squeeze(-1)
            rows = rows.to(attention_mask.device)
            if "config_replay_schedule" in self.departures:
                schedule = {"threshold_schedule": config.threshold_schedule, "threshold_cap": config.threshold_cap}
            else:
                schedule = {"threshold_schedule": "paper", "threshold_cap": SELF_SAMPLING_REPLAY_CAP}
            rule = TokenExitRule.build(
                "token",
                float(threshold),
                self.exit_layers,
                config.num_hidden_layers,
                window_size=int(window),
                **schedule,
            )
            exit_index[rows] = rule.simulate(
                all_logits[:, rows], attention_mask[rows], None if word_ids is None else word_ids[rows]
            )
        layers = torch.tensor(self.exit_layers, device=exit_index.device)
        return torch.where(exit_index >= 0, layers[exit_index.clamp_min(0)], 0)

    def model_inputs(self, inputs, step=None):
        if step is None:
            self._replay = None
            return super().model_inputs(inputs, step)
        stage_one = self.batch_stage_one(inputs)
        attention_mask = inputs["attention_mask"]
        # one draw for the global batch, of which this process takes its own rows: the sandwich is per global batch
        # and a multi-process run samples what one process on the whole batch samples
        total, start = global_batch_share(attention_mask.shape[0], attention_mask.device)
        windows, thresholds = self.sample_settings(total)
        windows, thresholds = (t[start : start + attention_mask.shape[0]] for t in (windows, thresholds))
        depth = self.replay(stage_one, attention_mask, inputs.get("word_ids"), windows, thresholds)
        self._replay = {"stage_one": stage_one, "depth": depth, "windows": windows, "thresholds": thresholds}
        model_inputs = {key: value for key, value in inputs.items() if key not in self.input_columns}
        return {**model_inputs, "output_all_exits": True, "active_depth": depth}

    def forward(self, outputs, inputs, step=None):
        if outputs.all_logits is None:
            return self.eval_loss(outputs, inputs)
        labels = inputs["labels"]
        layers = torch.tensor(self.exit_layers, device=labels.device)
        active = outputs.exit_layer.unsqueeze(0) >= layers.view(-1, 1, 1)
        keep = (labels != -100).unsqueeze(0) & active
        stage_one = None
        if self.flooding is not None:
            if self._replay is None:
                raise ValueError("Flooding compares with the stage-1 logits of the batch: call `model_inputs` first.")
            stage_one = self._replay["stage_one"].to(outputs.all_logits.device)
        per_word = token_cross_entropy(outputs.all_logits, labels)
        old_per_word = None if stage_one is None else token_cross_entropy(stage_one, labels)
        per_exit_flooding = "flooding_per_exit" in self.departures
        terms = {}
        if old_per_word is not None and not per_exit_flooding:  # the released flooding, word by word
            gap = per_word - old_per_word
            terms["flooding_gap"] = (gap.detach() * keep).sum() / keep.sum().clamp_min(1)
            per_word = (gap - self.flooding).abs()
        # sums over the global batch's words (every process's share, see `masked_token_losses`)
        totals = sum_across_processes(torch.stack([(per_word * keep).sum(dim=(1, 2)), keep.sum(dim=(1, 2)).float()]))
        sums, counts = totals[0], totals[1]
        words = sum_across_processes((labels != -100).sum()).clamp_min(1)
        mean_over_active = "mean_over_active_words" in self.departures
        denominators = counts.clamp_min(1) if mean_over_active else words
        losses = sums / denominators
        if old_per_word is not None and per_exit_flooding:
            old = sum_across_processes((old_per_word * keep).sum(dim=(1, 2))) / denominators
            terms["flooding_gap"] = ((losses - old).detach() * (counts > 0)).sum() / (counts > 0).sum().clamp_min(1)
            losses = (losses - old - self.flooding).abs()
        weights = torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)
        if mean_over_active:  # an exit without active words has no mean: it leaves the weighted mean
            weights = weights * (counts > 0)
        loss = (weights * losses).sum() / weights.sum().clamp_min(1e-12)
        terms.update(self.per_exit_losses(losses))
        for layer, count in zip(self.exit_layers, counts):
            terms[f"active_words_exit_{layer}"] = count / words
        return {"loss": loss, **terms}


class TokenTeacherDistillationLoss(TokenExitLoss):
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
        self.temperature = temperature
        self.alpha = alpha
        # not a submodule: the teacher is neither trained nor saved with the student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False) if teacher is not None else None

    @classmethod
    def from_args(cls, model, args):
        from transformers import AutoModelForTokenClassification

        teacher = load_teacher(args, model, AutoModelForTokenClassification)
        return cls(
            model.config, args.distillation_temperature, args.distillation_alpha, args.exit_loss_weights, teacher
        )

    setup = TeacherDistillationLoss.setup

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
        weights = torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)
        components = {"loss": (weights * losses).sum() / weights.sum(), **self.per_exit_losses(losses)}
        components.update({f"kl_exit_{layer}": value.detach() for layer, value in zip(self.exit_layers, kl)})
        return components

    def get_config_dict(self):
        return {
            **super().get_config_dict(),
            "distillation_temperature": self.temperature,
            "distillation_alpha": self.alpha,
        }


def check_self_sampling_settings(max_threshold, flooding, departures=()) -> None:
    """Validate the self-sampling settings (shared by [`SelfSamplingTokenLoss`] and the training arguments)."""
    if (
        isinstance(max_threshold, bool)
        or not isinstance(max_threshold, (int, float))
        or not math.isfinite(max_threshold)
        or not SELF_SAMPLING_THRESHOLD_STEP <= max_threshold <= 1
    ):
        raise ValueError(
            f"`self_sampling_max_threshold` must be a number in [{SELF_SAMPLING_THRESHOLD_STEP}, 1] (thresholds are "
            f"sampled from {SELF_SAMPLING_THRESHOLD_STEP} up to it), got {max_threshold!r}."
        )
    if flooding is not None and (
        isinstance(flooding, bool)
        or not isinstance(flooding, (int, float))
        or not math.isfinite(flooding)
        or flooding < 0
    ):
        raise ValueError(
            f"`self_sampling_flooding` must be a finite number >= 0 (or None for none), got {flooding!r}."
        )
    unknown = [name for name in departures if name not in SELF_SAMPLING_DEPARTURES]
    if unknown:
        raise ValueError(
            f"Unknown `self_sampling_departures` {unknown}; expected some of {sorted(SELF_SAMPLING_DEPARTURES)} (none: "
            "the released behaviour)."
        )


# --------------------------------------------------------------------------------------------------------------------
# Which loss a trainer uses
# --------------------------------------------------------------------------------------------------------------------


# the optional training arguments an objective may honour, with the value that means "unset"
OPTIONAL_TRAINING_ARGUMENTS: dict[str, Any] = {
    "gradient_equilibrium": False,
    "self_distillation_weight": None,
    "self_distillation_temperature": None,
}


def check_training_options(loss: ExitLoss, args) -> None:
    """Refuse the optional training arguments that are set but that `loss` does not honour (never ignore them)."""
    ignored = [
        name
        for name, unset in OPTIONAL_TRAINING_ARGUMENTS.items()
        if getattr(args, name, unset) != unset and name not in loss.training_options
    ]
    if ignored:
        raise ValueError(
            f"{ignored} do not apply to `exit_recipe={args.exit_recipe!r}` ({type(loss).__name__}); "
            f"it honours {sorted(loss.training_options) or 'none of them'}."
        )


def register_exit_loss(
    model_type: str, recipe: str, factory: Callable[[nn.Module, Any], ExitLoss], staged: bool = False
) -> None:
    """Make `factory(model, args)` the loss of `exit_recipe=recipe` for models of `model_type`.

    Registering again replaces the previous factory. A new recipe name becomes a valid `exit_recipe` of
    [`EarlyExitTrainingArguments`] created afterwards.

    Args:
        model_type: The `model_type` of the family's config, e.g. `"bypass-bert"`.
        recipe: The `exit_recipe` name.
        factory: Builds the loss from the model and the [`EarlyExitTrainingArguments`].
        staged: The recipe runs in stages and needs `exit_stage` (1 or 2); other recipes refuse one.

    Example:

    ```python
    >>> register_exit_loss("cascade-bert", "difficulty_aware", DifficultyAwareLoss.from_args)
    ```
    """
    _EXIT_LOSSES[(model_type, recipe)] = factory
    if staged:
        _STAGED_RECIPES.add(recipe)


def registered_recipes(model_type: str | None = None) -> tuple[str, ...]:
    """Every recipe some model family registered (or the family of `model_type`), sorted."""
    return tuple(sorted({recipe for family, recipe in _EXIT_LOSSES if model_type in (None, family)}))


def staged_recipes() -> tuple[str, ...]:
    """The registered recipes that run in stages (need `exit_stage`), sorted."""
    return tuple(sorted(_STAGED_RECIPES))


def exit_loss_from_args(model: nn.Module, args) -> ExitLoss:
    """The [`ExitLoss`] registered for the model's `model_type` and `args.exit_recipe`.

    Raises:
        ValueError: no loss is registered for that pair.
    """
    model_type = model.config.model_type
    factory = _EXIT_LOSSES.get((model_type, args.exit_recipe))
    if factory is None:
        available = list(registered_recipes(model_type))
        raise ValueError(
            f"`exit_recipe={args.exit_recipe!r}` has no loss for models of type {model_type!r}; recipes registered for "
            f"that type: {available}. Register one with `register_exit_loss`, or pass `loss=` to the trainer."
        )
    return factory(model, args)


register_exit_loss("bypass-bert", "joint", JointExitLoss.from_args)
register_exit_loss("bypass-bert", "two_stage", TwoStageExitLoss.from_args, staged=True)
register_exit_loss("bypass-bert", "alternating", AlternatingExitLoss.from_args)
register_exit_loss("bypass-bert", "distillation", DistillationExitLoss.from_args, staged=True)
register_exit_loss("cascade-bert", "joint", JointCascadeLoss.from_args)
register_exit_loss("cascade-bert", DAR_RECIPE, DifficultyAwareCascadeLoss.from_args)
register_exit_loss("cascade-bert", TEACHER_DISTILLATION_RECIPE, TeacherDistillationLoss.from_args)
register_exit_loss("token-exit-bert", "joint", JointTokenExitLoss.from_args)
register_exit_loss("token-exit-bert", SELF_SAMPLING_RECIPE, SelfSamplingTokenLoss.from_args)
register_exit_loss("token-exit-bert", TEACHER_DISTILLATION_RECIPE, TokenTeacherDistillationLoss.from_args)


__all__ = [
    "AlternatingExitLoss",
    "CascadeExitLoss",
    "DifficultyAwareCascadeLoss",
    "DistillationExitLoss",
    "ExitLoss",
    "JointCascadeLoss",
    "JointExitLoss",
    "JointTokenExitLoss",
    "MultiExitLoss",
    "OPTIONAL_TRAINING_ARGUMENTS",
    "SelfSamplingTokenLoss",
    "TeacherDistillationLoss",
    "TokenExitLoss",
    "TokenTeacherDistillationLoss",
    "TwoStageExitLoss",
    "check_difficulty_values",
    "check_training_options",
    "check_self_sampling_settings",
    "difficulty_aware_ranking_loss",
    "exit_loss_from_args",
    "logit_distillation_loss",
    "masked_token_losses",
    "register_exit_loss",
    "registered_recipes",
    "resolve_exit_weights",
    "routing_metrics",
    "staged_recipes",
    "token_classification_metrics",
]
