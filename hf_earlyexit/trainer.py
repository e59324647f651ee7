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
"""[`EarlyExitTrainer`]: a [`~transformers.Trainer`] that trains every exit of an early-exit model."""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_pt_utils import find_batch_size

from .losses import ExitLoss, check_training_options, exit_loss_from_args
from .training_args import EarlyExitTrainingArguments


class EarlyExitTrainer(Trainer):
    r"""
    Trains an early-exit model with one of the exit recipes of [`EarlyExitTrainingArguments`], logs every exit's
    loss, and evaluates every exit plus the model's own early exit.

    What it adds to [`~transformers.Trainer`]:

    - The loss comes from an [`ExitLoss`]: the one registered for the model's `model_type` and `args.exit_recipe`
      (see [`register_exit_loss`]), or the one passed as `loss`. Staged recipes set which parameters train before the
      optimizer is built, so frozen parameters are neither updated nor held by the optimizer.
    - Training logs carry the per-exit terms of the loss (`loss_exit_<layer>`, or `kl_exit_<layer>` for
      self-distillation), averaged over the same steps as `loss`.
    - Evaluation runs the model once per batch with every exit computed and reports, with the evaluation prefix:
      `accuracy_exit_<layer>` for every exit, and for the model's own exit criterion (its config's)
      `early_exit_accuracy`, `mean_exit_layer`, `layer_speedup` (`L N / sum of exit layers`) and `flops_speedup`
      (FLOPs of the full-depth model over FLOPs of the early-exit path, per example from its real length). Every value
      is a ratio of sums over the whole evaluation set (not a mean of batch means), gathered across processes.
      For sequence labelling ([`BertForTokenEarlyExit`]) evaluation runs the model's own early exit (the real packed
      skipping) and reports seqeval's entity `precision`, `recall`, `f1` (micro, and `f1_<type>` etc. per entity
      type of `config.id2label`; needs `seqeval`, extra `ner`), `token_accuracy`, and the exit statistics over words
      (see [`~hf_earlyexit.metrics.token_classification_metrics`]).
    - `head_learning_rate` gives exit heads and bypass modules (everything outside `model.base_model`) their own
      learning rate; for a cascade, every member's head and every member but the last (see
      [`CascadeExitLoss.head_parameter_names`]).
    - The exit loss may prepare more than batches: [`ExitLoss.setup`] runs at the end of `__init__`. The passes over
      the training set that two recipes need are in [`~hf_earlyexit.callbacks`]: CascadeBERT's difficulty-aware
      recipe adds an example index to the training set and a [`~hf_earlyexit.callbacks.DifficultyAwareSchedule`]
      that labels it after the warm-up; self-sampling records the stage-1 logits of every training sentence there and
      then ([`~hf_earlyexit.callbacks.record_exit_logits`]).

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The early-exit model, e.g. [`BertWithBypassExits`]. `model_init` is not supported: the loss is built from
            the model.
        args ([`EarlyExitTrainingArguments`], *optional*):
            Defaults to `EarlyExitTrainingArguments(output_dir="trainer_output")`.
        loss ([`ExitLoss`], *optional*):
            The objective. Defaults to the loss registered for the model's type and `args.exit_recipe`.
        data_collator, train_dataset, eval_dataset, processing_class, compute_metrics, callbacks, optimizers,
        optimizer_cls_and_kwargs, preprocess_logits_for_metrics:
            As for [`~transformers.Trainer`].

    Example:

    ```python
    >>> from hf_earlyexit import BertWithBypassExits, EarlyExitTrainer, EarlyExitTrainingArguments

    >>> model = BertWithBypassExits.from_pretrained("path/to/bert", num_labels=2)
    >>> args = EarlyExitTrainingArguments(output_dir="out", exit_recipe="joint", head_learning_rate=2e-4)
    >>> trainer = EarlyExitTrainer(model, args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer)
    >>> trainer.train()
    >>> trainer.evaluate()["eval_flops_speedup"]
    ```
    """

    # `compute_loss` returns a mean over its micro-batch, never normalised by `num_items_in_batch`, so
    # `training_step` must divide it by the number of gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel,
        args: EarlyExitTrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        loss: ExitLoss | None = None,
    ):
        if model is None:
            raise ValueError("`EarlyExitTrainer` needs a `model`: its exit loss is built from the model.")
        if args is None:
            args = EarlyExitTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, EarlyExitTrainingArguments):
            raise TypeError(
                f"`args` must be `EarlyExitTrainingArguments` (it carries the exit recipe), got {type(args).__name__}."
            )
        if optimizers[0] is not None and args.head_learning_rate is not None:
            raise ValueError(
                "`head_learning_rate` shapes the optimizer the trainer builds; with your own `optimizers`, set the "
                "learning rates of its parameter groups yourself and leave `head_learning_rate` unset."
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # `compute_loss` never hands loss kwargs to the model, so there is no point counting `num_items_in_batch`
        self.model_accepts_loss_kwargs = False
        self.exit_loss = loss if loss is not None else exit_loss_from_args(self.model, args)
        check_training_options(self.exit_loss, args)
        self._set_trainable_parameters()
        # metric name -> tensor([sum of numerators, sum of denominators]) since the last log / in this evaluation
        self._metrics: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self.exit_loss.setup(self)

    def _set_trainable_parameters(self) -> None:
        """Apply the loss's choice of trainable parameters (staged recipes) before DDP wraps the model and the
        optimizer is built: frozen parameters are then outside both."""
        trainable = self.exit_loss.trainable_parameters(self.model)
        if trainable is None:
            return
        if not trainable:
            raise ValueError(f"{type(self.exit_loss).__name__} leaves no parameter of the model to train.")
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(name in trainable)

    def _set_signature_columns_if_needed(self) -> None:
        # keep the columns the loss reads (e.g. a difficulty label) when unused columns are removed
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in self.exit_loss.input_columns if c not in self._signature_columns]

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The optimizer of [`~transformers.Trainer`], with the parameters the exit loss names as heads (by default
        the exit heads and bypass modules: every parameter outside `model.base_model`; see
        [`ExitLoss.head_parameter_names`]) moved to groups of their own at `head_learning_rate` when it is set. Weight
        decay is kept per parameter as the base class decides it."""
        creating = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if creating and self.args.head_learning_rate is not None:
            opt_model = self.accelerator.unwrap_model(self.model if model is None else model)
            head_names = self.exit_loss.head_parameter_names(opt_model)
            head_ids = {id(p) for name, p in opt_model.named_parameters() if name in head_names}
            for group in list(optimizer.param_groups):
                heads = [p for p in group["params"] if id(p) in head_ids]
                if heads:
                    group["params"] = [p for p in group["params"] if id(p) not in head_ids]
                    settings = {key: value for key, value in group.items() if key != "params"}
                    optimizer.add_param_group({**settings, "params": heads, "lr": self.args.head_learning_rate})
            optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Run the model as the exit loss asks and return the loss's `"loss"`; record its other components (training)
        or its evaluation metrics (evaluation). `num_items_in_batch` is not used: the loss is a per-batch mean."""
        step = self.state.global_step if model.training else None
        outputs = model(**self.exit_loss.model_inputs(inputs, step))
        components = self.exit_loss(outputs, inputs, step=step)
        loss = components.pop("loss")
        if model.training:
            batch_size = find_batch_size(inputs)
            for name, value in components.items():
                self._accumulate("train", name, value.detach().float() * batch_size, batch_size)
        else:
            self._record_evaluation(model, outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def _record_evaluation(self, model: nn.Module, outputs: Any, inputs: dict[str, Any]) -> None:
        metrics = self.exit_loss.metrics(self.accelerator.unwrap_model(model), outputs, inputs)
        if not metrics:
            return
        names = sorted(metrics)
        per_example = torch.stack([part.float() for name in names for part in metrics[name]], dim=-1)
        # `gather_for_metrics` drops the samples that the distributed sampler repeated to even out the last batch
        totals = self.accelerator.gather_for_metrics(per_example).sum(dim=0).view(len(names), 2)
        for name, total in zip(names, totals):
            self._accumulate("eval", name, total[0], total[1])

    def _accumulate(self, mode: str, name: str, numerator: torch.Tensor, denominator: torch.Tensor | float) -> None:
        pair = torch.stack(
            [numerator.float(), torch.as_tensor(denominator, dtype=torch.float, device=numerator.device)]
        )
        self._metrics[mode][name] = self._metrics[mode][name] + pair if name in self._metrics[mode] else pair

    def _pop_metrics(self, mode: str) -> dict[str, float]:
        """`sum(numerators) / sum(denominators)` of every recorded metric, then forget them."""
        recorded = self._metrics[mode]
        if not recorded:
            return {}
        names = sorted(recorded)
        totals = torch.stack([recorded[name] for name in names])
        if mode == "train":
            # training values are per process; evaluation ones were gathered batch by batch already
            totals = self.accelerator.reduce(totals, reduction="sum")
        recorded.clear()
        ratios = (totals[:, 0] / totals[:, 1]).tolist()
        return dict(zip(names, ratios))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # the periodic training log (the one with the running `loss`) gets the per-exit terms of the same steps
        if "loss" in logs:
            logs = {**logs, **self._pop_metrics("train")}
        super().log(logs, start_time)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._metrics["eval"].clear()
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        output.metrics.update(
            {f"{metric_key_prefix}_{name}": value for name, value in self._pop_metrics("eval").items()}
        )
        return output


__all__ = ["EarlyExitTrainer"]
