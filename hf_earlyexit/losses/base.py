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
"""What every training objective is, and which one a trainer uses.

An [`ExitLoss`] is the one piece a model family plugs into [`EarlyExitTrainer`]: it says which batch columns it
reads, how the model is called, which parameters train, what the loss is (a dict of components), and what evaluation
reports. [`register_exit_loss`] names the loss of a `(model_type, exit_recipe)` pair; [`exit_loss_from_args`] builds
it for a trainer. The helpers shared by the recipes of several families live here too.
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


WEIGHT_SCHEMES: tuple[str, ...] = ("linear", "uniform")

# `register_exit_loss` fills these: (model_type, recipe) -> factory(model, args) -> ExitLoss; recipes run in stages
_EXIT_LOSSES: dict[tuple[str, str], Callable[[nn.Module, Any], "ExitLoss"]] = {}
_STAGED_RECIPES: set[str] = set()


class ExitLoss(nn.Module):
    """Base class of the training objectives [`EarlyExitTrainer`] runs.

    A subclass implements `forward` and may override the other hooks. The trainer calls, per batch:
    `outputs = model(**loss.model_inputs(inputs, step))`, then `loss(outputs, inputs, step)`; in evaluation (where
    `step` is `None`) it also calls `loss.metrics(model, outputs, inputs)`. Once, before training, it applies
    `loss.trainable_parameters(model)`. Nothing is carried from `model_inputs` to `forward`: what `forward` needs it
    reads from `inputs` and `outputs` (and from what the loss was given before, e.g. labels recorded over the training
    set).

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
        e.g. a column added to `trainer.train_dataset`, or a pass over the training set, now or at some step (the
        passes and the callbacks that schedule them are in [`~hf_earlyexit.callbacks`]). Does nothing by default."""

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
        name, so a mean is `(value, 1)` and a speed-up is `(reference cost, actual cost)`. See
        [`~hf_earlyexit.metrics`] for the ones the built-in families report.
        """
        return {}

    def get_config_dict(self) -> dict[str, Any]:
        """The settings of this loss, e.g. for a model card."""
        return {}


# --------------------------------------------------------------------------------------------------------------------
# Helpers shared by the recipes of several families
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


def require_softmax_classification(config, method: str) -> None:
    """Refuse a config whose labels are not single-label classes (`method` matches class distributions).

    Raises:
        ValueError: `num_labels < 2`, regression or multi-label classification.
    """
    if config.num_labels < 2 or config.problem_type in ("regression", "multi_label_classification"):
        raise ValueError(
            f"{method} matches class distributions (softmax), so it needs single-label classification with "
            f"num_labels >= 2; got num_labels={config.num_labels}, problem_type={config.problem_type!r}."
        )


def is_finite_number(value: Any) -> bool:
    """`True` for a finite `int` or `float` (not a `bool`): the check of every numeric training setting."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


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
    """Make `factory(model, args)` the loss of `exit_recipe=recipe` for models of `model_type`: a recipe added to a
    family (a family's own recipes are its `Family.recipes`, see [`~hf_earlyexit.families.register_family`]).

    Registering again replaces the previous factory; it takes precedence over the family's recipe of that name. A new recipe name becomes a valid `exit_recipe` of
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


def _family_recipes():
    """`(model_type, recipe, family)` of every recipe a registered family declares (`Family.recipes`)."""
    from ..families import families

    for family in families():
        for recipe in family.recipes:
            yield family.model_type, recipe, family


def registered_recipes(model_type: str | None = None) -> tuple[str, ...]:
    """Every recipe of the registered families and of `register_exit_loss` (or those of `model_type`), sorted."""
    pairs = [*_EXIT_LOSSES, *((family_type, recipe) for family_type, recipe, _ in _family_recipes())]
    return tuple(sorted({recipe for family_type, recipe in pairs if model_type in (None, family_type)}))


def staged_recipes() -> tuple[str, ...]:
    """The registered recipes that run in stages (need `exit_stage`), sorted."""
    from ..families import families

    return tuple(sorted(_STAGED_RECIPES | {recipe for family in families() for recipe in family.staged_recipes}))


def exit_loss_from_args(model: nn.Module, args) -> ExitLoss:
    """The [`ExitLoss`] of the model's family for `args.exit_recipe`: one given with [`register_exit_loss`], else the
    family's own (`Family.recipes`).

    Raises:
        ValueError: no loss is registered for that pair.
    """
    model_type = model.config.model_type
    factory = _EXIT_LOSSES.get((model_type, args.exit_recipe))
    if factory is None:
        family = next(
            (
                f
                for family_type, recipe, f in _family_recipes()
                if (family_type, recipe) == (model_type, args.exit_recipe)
            ),
            None,
        )
        factory = family.recipe(args.exit_recipe) if family is not None else None
    if factory is None:
        available = list(registered_recipes(model_type))
        raise ValueError(
            f"`exit_recipe={args.exit_recipe!r}` has no loss for models of type {model_type!r}; recipes registered for "
            f"that type: {available}. Register one with `register_exit_loss`, or pass `loss=` to the trainer."
        )
    return factory(model, args)
