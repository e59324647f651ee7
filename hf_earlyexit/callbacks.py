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
"""Passes over the training set that some exit recipes need, and the callback that schedules one.

[`EarlyExitTrainer`] trains batch by batch. Two recipes also need the model's answers on the whole training set:

- CascadeBERT's difficulty-aware recipe with warm-up labels: once the warm-up is over, one pass labels every example
  hard or easy for each non-final member by that member's errors ([`label_member_errors`]); [`DifficultyAwareSchedule`]
  runs it at the right step and hands the table to the loss;
- self-sampling (SENTEE / TOKEE stage 2): before training, one pass records the stage-1 model's logits at every exit
  for every sentence ([`record_exit_logits`]), which the loss replays.

Both look examples up by their row in the training set, through an index column that [`add_example_index`] adds (the
loss's `setup` does, when the trainer is built). The loss keeps what a pass produced and reads, for each batch, the rows
its index column names; it never runs the model outside its batch.
"""

import inspect
import logging
import math

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import has_length


logger = logging.getLogger(__name__)


def add_example_index(dataset, column: str, purpose: str, alternatives: str = ""):
    """`dataset` with a `column` holding each row's position (replacing a column of that name).

    Args:
        dataset (`datasets.Dataset`): The training set.
        column: The name of the index column.
        purpose: What the index is for, for the error message, e.g. "Self-sampling stores ... by its position".
        alternatives: The end of that message: what to do instead.

    Raises:
        ValueError: `dataset` is not a `datasets.Dataset` (rows have no stable position otherwise).
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"{purpose}, which needs a `datasets.Dataset` training set (got {type(dataset).__name__}){alternatives}."
        )
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, list(range(len(dataset))))


@torch.no_grad()
def label_member_errors(trainer, index_column: str) -> torch.Tensor:
    """Label every training example by the errors of the cascade's non-final members as they are now (evaluation mode,
    one pass that leaves the global random stream untouched): 1 (hard) where member `k` predicts it wrongly.

    Every process runs its share of the batches (the trainer's test dataloader over the training set) and every process
    gets the whole table back.

    Args:
        trainer ([`EarlyExitTrainer`]): Its model is a cascade; its training set has `index_column`.
        index_column: The column of each example's row, added by [`add_example_index`].

    Returns:
        `(num_examples, num_members - 1)` int8: 1 hard, 0 easy, -1 for an example the pass did not see.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    table = torch.full((len(trainer.train_dataset), model.config.num_members - 1), -1, dtype=torch.int8)
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
            index, wrong = trainer.accelerator.gather_for_metrics((batch[index_column], wrong))
            table[index.cpu()] = wrong.cpu().to(torch.int8)
    model.train(was_training)
    return table


@torch.no_grad()
def record_exit_logits(trainer, index_column: str, loss_columns: tuple[str, ...]) -> list[torch.Tensor]:
    """Run the model as it is now (evaluation mode, every exit, leaving the global random stream untouched) over the
    training set and keep every sentence's logits.

    In a multi-process run each process records a share of the batches and every process gets all of them back (see
    [`~hf_earlyexit.evaluation.map_batches`]).

    Args:
        trainer ([`EarlyExitTrainer`]): Its model is a [`BertForTokenEarlyExit`]; its training set has `index_column`
            and its collator pads every column the model takes.
        index_column: The column of each sentence's row, added by [`add_example_index`].
        loss_columns: Columns of the training set the model does not take (kept out of the model call).

    Returns:
        Per row of the training set, its `(num_exits, length, num_labels)` float32 logits at its `length` real
        positions, on the CPU.
    """
    from torch.utils.data import DataLoader

    from .evaluation import map_batches

    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    parameters = inspect.signature(model.forward).parameters
    dataset = trainer.train_dataset
    dataset = dataset.remove_columns(
        [c for c in dataset.column_names if c not in parameters and c not in loss_columns]
    )
    loader = DataLoader(dataset, batch_size=trainer.args.per_device_eval_batch_size, collate_fn=trainer.data_collator)
    device = next(model.parameters()).device

    def run(batch):
        inputs = {
            key: value.to(device)
            for key, value in batch.items()
            if key not in loss_columns and isinstance(value, torch.Tensor)
        }
        all_logits = model(**inputs, output_all_exits=True).all_logits.float().cpu()
        lengths = inputs["attention_mask"].sum(-1).tolist()
        index = batch[index_column].tolist()
        return [(i, all_logits[:, row, :length].clone()) for row, (i, length) in enumerate(zip(index, lengths))]

    stored: list[torch.Tensor | None] = [None] * len(dataset)
    with torch.random.fork_rng(devices=[]):
        # each process records a share of the batches and every process gets all of them back
        for sentences in map_batches(run, list(loader), split_across_processes=True):
            for i, logits in sentences:
                stored[i] = logits.cpu()
    model.train(was_training)
    return stored


class DifficultyAwareSchedule(TrainerCallback):
    """Turns CascadeBERT's DAR on after the warm-up of a [`DifficultyAwareCascadeLoss`].

    At the start of training it sets the loss's first DAR step (`dar_start_step`) from the warm-up epochs and the
    epoch length. With the `"warmup"` source it then labels the training set ([`label_member_errors`]) at the start of
    that step, after the last warm-up step was logged, evaluated and saved, and gives the table to the loss
    (`difficulty_table`); a run resumed past the warm-up is labelled at its first step, with the resumed members.

    Args:
        trainer ([`EarlyExitTrainer`]): The trainer (the pass runs its model over its training set).
        loss ([`DifficultyAwareCascadeLoss`]): The loss it schedules.
        index_column (`str`): The training set's column of example rows.
    """

    def __init__(self, trainer, loss, index_column: str):
        self.trainer = trainer
        self.loss = loss
        self.index_column = index_column

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
        table = label_member_errors(self.trainer, self.index_column)
        self.loss.difficulty_table = table
        known = table >= 0
        fractions = ((table == 1) & known).sum(dim=0) / known.sum(dim=0).clamp_min(1)
        # logged here rather than at the end of the last warm-up step, where a log would replace that step's own
        self.trainer.log({f"difficulty_hard_fraction_member_{k}": float(f) for k, f in enumerate(fractions)})


__all__ = ["DifficultyAwareSchedule", "add_example_index", "label_member_errors", "record_exit_logits"]
