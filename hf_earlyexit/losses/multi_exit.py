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
"""Recipes of multi-exit models ([`BertWithBypassExits`], `docs/methods.md` section 1): `outputs.all_logits` is
`(num_exits, batch, num_labels)`.

| recipe | class | objective |
| --- | --- | --- |
| `joint` | [`JointExitLoss`] | `sum_i w_i CE_i / sum_i w_i` (options: self-distillation, gradient equilibrium) |
| `two_stage` | [`TwoStageExitLoss`] | stage 1: `CE_L`; stage 2 (backbone and final exit frozen): `sum_{i<L} CE_i` |
| `alternating` | [`AlternatingExitLoss`] | even steps: `CE_L`; odd steps: `sum_i CE_i` (BERxiT) |
| `distillation` | [`DistillationExitLoss`] | stage 1: `CE_L`; stage 2 (frozen as above): `sum_{i<L} KL(p_L || p_i)` |
"""

import torch

from ..citations import CITATIONS
from ..metrics import routing_metrics
from ..models.bert.exit_utils import kl_divergence
from ..models.bert.modeling_exit_heads import problem_type_of, sequence_classification_loss, weighted_exit_loss
from .base import ExitLoss, require_softmax_classification, resolve_exit_weights


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
        if self_distillation_weight:
            require_softmax_classification(config, "Self-distillation")
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
        require_softmax_classification(config, "Self-distillation")

    def stage_two(self, outputs, inputs):
        teacher = outputs.all_logits[-1].detach()
        terms = {
            f"kl_exit_{layer}": kl_divergence(teacher, student).mean()
            for layer, student in zip(self.exit_layers[:-1], outputs.all_logits[:-1])
        }
        return {"loss": sum(terms.values()), **{name: term.detach() for name, term in terms.items()}}


__all__ = [
    "AlternatingExitLoss",
    "DistillationExitLoss",
    "JointExitLoss",
    "MultiExitLoss",
    "TwoStageExitLoss",
]
