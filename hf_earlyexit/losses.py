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
| `joint` | [`JointExitLoss`] | `sum_i w_i CE_i / sum_i w_i` |
| `two_stage` | [`TwoStageExitLoss`] | stage 1: `CE_L`; stage 2 (backbone and final exit frozen): `sum_{i<L} CE_i` |
| `alternating` | [`AlternatingExitLoss`] | even steps: `CE_L`; odd steps: the joint loss |
| `distillation` | [`DistillationExitLoss`] | stage 1: `CE_L`; stage 2 (frozen as above): `sum_{i<L} KL(p_L || p_i)` |

Cascade recipes (METHODS.md section 2), for [`BertForCascadeClassification`]:

| recipe | class | objective |
| --- | --- | --- |
| `joint` | [`CascadeJointLoss`] | `sum_k CE_k` over the members |
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .model_card import CITATIONS
from .models.bert.exit_utils import kl_divergence
from .models.bert.modeling_exit_heads import problem_type_of, sequence_classification_loss, weighted_exit_loss


WEIGHT_SCHEMES: tuple[str, ...] = ("linear", "uniform")

# `register_exit_loss` fills these: (model_type, recipe) -> factory(model, args) -> ExitLoss; recipes run in stages
_EXIT_LOSSES: dict[tuple[str, str], Callable[[nn.Module, Any], "ExitLoss"]] = {}
_STAGED_RECIPES: set[str] = set()


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
    """

    input_columns: tuple[str, ...] = ("labels",)
    citation: str = ""

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

    def __init__(self, config, exit_layers: list[int] | None = None):
        super().__init__()
        self.config = config
        self.exit_layers = list(exit_layers) if exit_layers is not None else config.resolved_exit_layers

    def trains_final_exit_only(self, step: int | None) -> bool:
        """Whether this training step optimises the final exit alone (never in evaluation)."""
        return False

    def model_inputs(self, inputs, step=None):
        all_exits = step is None or not self.trains_final_exit_only(step)
        return {**super().model_inputs(inputs, step), "output_all_exits": all_exits}

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
        if inputs.get("attention_mask") is not None:
            lengths = inputs["attention_mask"].sum(dim=-1)
        else:
            tokens = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
            lengths = torch.full_like(outputs.exit_layer, tokens.shape[1])
        flops = model.flops_per_exit(lengths)[exit_index, torch.arange(len(exit_index), device=exit_index.device)]
        # the reference is the full model, what its `early_exit=False` forward runs
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
            for layer, logits in zip(self.exit_layers, outputs.all_logits):
                name, score = _exit_score(logits, labels, problem_type)
                metrics[f"{name}_exit_{layer}"] = (score, ones)
            name, score = _exit_score(outputs.logits, labels, problem_type)
            metrics[f"early_exit_{name}"] = (score, ones)
        return metrics


class JointExitLoss(MultiExitLoss):
    """`L = sum_i w_i CE_i / sum_i w_i` over every exit (PABEE's joint training; PCEE-BERT's "asc" weights).

    With linear weights (`w_i` = layer number) this is exactly the default loss of [`BertWithBypassExits`].

    Args:
        config ([`BypassBertConfig`]): The model's config.
        weights (`str` or `list[float]`, *optional*, defaults to `"linear"`): `"linear"`, `"uniform"` or one number
            per exit.
    """

    citation = """@inproceedings{zhou2020bert,
  title = {{BERT} Loses Patience: Fast and Robust Inference with Early Exit},
  author = {Zhou, Wangchunshu and Xu, Canwen and Ge, Tao and McAuley, Julian and Xu, Ke and Wei, Furu},
  booktitle = {Advances in Neural Information Processing Systems},
  volume = {33},
  pages = {18330--18341},
  year = {2020}
}"""

    def __init__(self, config, weights: str | list[float] = "linear"):
        super().__init__(config)
        self.weights_setting = weights
        self.weights = resolve_exit_weights(weights, self.exit_layers)

    @classmethod
    def from_args(cls, model, args):
        return cls(model.config, args.exit_loss_weights)

    def joint_loss(self, outputs, inputs) -> torch.Tensor:
        problem_type = problem_type_of(self.config, inputs["labels"])
        return weighted_exit_loss(outputs.all_logits, inputs["labels"], problem_type, self.weights)

    def forward(self, outputs, inputs, step=None):
        return {"loss": self.joint_loss(outputs, inputs), **self.per_exit_losses(outputs, inputs)}

    def get_config_dict(self):
        return {"weights": self.weights_setting}


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

    citation = """@inproceedings{xin2020deebert,
  title = {{DeeBERT}: Dynamic Early Exiting for Accelerating {BERT} Inference},
  author = {Xin, Ji and Tang, Raphael and Lee, Jaejun and Yu, Yaoliang and Lin, Jimmy},
  booktitle = {Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics},
  pages = {2246--2251},
  year = {2020}
}"""

    def stage_two(self, outputs, inputs):
        loss = sum(self.exit_loss(logits, inputs) for logits in outputs.all_logits[:-1])
        return {"loss": loss, **self.per_exit_losses(outputs, inputs)}


class AlternatingExitLoss(JointExitLoss):
    """BERxiT's alternating training: even optimizer steps train on the final exit's loss only (the other exits get
    no gradient, so the optimizer leaves them untouched), odd steps on the joint loss `sum_i w_i CE_i / sum_i w_i`.

    The step is the optimizer step, so every micro-batch of a gradient accumulation uses the same objective. Evaluation
    (no step) reports the joint loss.

    Args:
        config ([`BypassBertConfig`]): The model's config.
        weights (`str` or `list[float]`, *optional*, defaults to `"linear"`): Exit weights of the odd steps.
    """

    citation = """@inproceedings{xin2021berxit,
  title = {{BERxiT}: Early Exiting for {BERT} with Better Fine-Tuning and Extension to Regression},
  author = {Xin, Ji and Tang, Raphael and Yu, Yaoliang and Lin, Jimmy},
  booktitle = {Proceedings of the 16th Conference of the European Chapter of the Association for Computational
               Linguistics: Main Volume},
  pages = {91--104},
  year = {2021}
}"""

    def trains_final_exit_only(self, step):
        return step is not None and step % 2 == 0

    def forward(self, outputs, inputs, step=None):
        if self.trains_final_exit_only(step):
            loss = self.exit_loss(self.final_logits(outputs), inputs)
        else:
            loss = self.joint_loss(outputs, inputs)
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

    citation = """@inproceedings{liu2020fastbert,
  title = {{FastBERT}: a Self-distilling {BERT} with Adaptive Inference Time},
  author = {Liu, Weijie and Zhou, Peng and Wang, Zhiruo and Zhao, Zhe and Deng, Haotang and Ju, Qi},
  booktitle = {Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics},
  pages = {6035--6044},
  year = {2020}
}"""

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


class CascadeJointLoss(MultiExitLoss):
    """CascadeBERT's joint training without difficulty-aware regularisation: `sum_k CE_k` over the members, every
    member trained on every example (the released code's objective with `lambda = 0`, and the cascade's own training
    loss). The per-member terms are logged as `loss_exit_<layer>`, `<layer>` being the cumulative depth at which that
    member answers, as in evaluation's `accuracy_exit_<layer>`.

    Args:
        config ([`CascadeBertConfig`]): The cascade's config.
    """

    citation = CITATIONS["cascadebert"]

    def __init__(self, config):
        depths = [member["num_hidden_layers"] for member in config.members]
        super().__init__(config, exit_layers=[sum(depths[: k + 1]) for k in range(len(depths))])

    @classmethod
    def from_args(cls, model, args):
        if args.exit_loss_weights != "linear":
            raise ValueError(
                "The cascade's joint loss sums its members' losses without weights; `exit_loss_weights` applies to "
                f"the multi-exit family only, got {args.exit_loss_weights!r}."
            )
        return cls(model.config)

    def forward(self, outputs, inputs, step=None):
        loss = sum(self.exit_loss(logits, inputs) for logits in outputs.all_logits)
        return {"loss": loss, **self.per_exit_losses(outputs, inputs)}


# --------------------------------------------------------------------------------------------------------------------
# Which loss a trainer uses
# --------------------------------------------------------------------------------------------------------------------


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


def registered_recipes() -> tuple[str, ...]:
    """Every recipe some model family registered, sorted."""
    return tuple(sorted({recipe for _, recipe in _EXIT_LOSSES}))


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
        available = sorted(recipe for family, recipe in _EXIT_LOSSES if family == model_type)
        raise ValueError(
            f"`exit_recipe={args.exit_recipe!r}` has no loss for models of type {model_type!r}; recipes registered for "
            f"that type: {available}. Register one with `register_exit_loss`, or pass `loss=` to the trainer."
        )
    return factory(model, args)


register_exit_loss("bypass-bert", "joint", JointExitLoss.from_args)
register_exit_loss("bypass-bert", "two_stage", TwoStageExitLoss.from_args, staged=True)
register_exit_loss("bypass-bert", "alternating", AlternatingExitLoss.from_args)
register_exit_loss("bypass-bert", "distillation", DistillationExitLoss.from_args, staged=True)
register_exit_loss("cascade-bert", "joint", CascadeJointLoss.from_args)


__all__ = [
    "AlternatingExitLoss",
    "CascadeJointLoss",
    "DistillationExitLoss",
    "ExitLoss",
    "JointExitLoss",
    "MultiExitLoss",
    "TwoStageExitLoss",
    "exit_loss_from_args",
    "register_exit_loss",
    "registered_recipes",
    "resolve_exit_weights",
    "staged_recipes",
]
