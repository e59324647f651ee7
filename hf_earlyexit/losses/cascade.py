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
"""Recipes of cascades ([`BertForCascadeClassification`], `docs/methods.md` section 2): `outputs.all_logits` is
`(num_members, batch, num_labels)`.

| recipe | class | objective |
| --- | --- | --- |
| `joint` | [`JointCascadeLoss`] | `sum_k CE_k` over the members |
| `difficulty_aware` | [`DifficultyAwareCascadeLoss`] | `sum_k CE_k + lambda sum_{k<K-1} L_DAR(k)` (CascadeBERT) |
| `teacher_distillation` | [`~hf_earlyexit.losses.distillation.TeacherDistillationLoss`] | see there |

Training each member on its own and assembling them afterwards needs no recipe: fine-tune one-member cascades (or
`BertForSequenceClassification`s) and pass them (their `members[0]`) to `BertForCascadeClassification.from_members`.
"""

import torch

from ..callbacks import DifficultyAwareSchedule, add_example_index
from ..citations import CITATIONS
from ..distributed import gather_across_processes
from ..metrics import routing_metrics
from ..models.bert.exit_utils import max_prob
from ..models.bert.modeling_exit_heads import problem_type_of, sequence_classification_loss
from .base import ExitLoss, is_finite_number


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
    """CascadeBERT's difficulty-aware regularisation (DAR) of one member on one batch (`docs/methods.md` section 2).

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


def check_dar_settings(dar_lambda, margin, difficulty, warmup_epochs) -> None:
    """Validate the DAR settings (shared by [`DifficultyAwareCascadeLoss`] and the training arguments)."""
    for name, value in (("dar_lambda", dar_lambda), ("dar_margin", margin)):
        if not is_finite_number(value) or value < 0:
            raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    if difficulty not in DIFFICULTY_SOURCES:
        raise ValueError(f"`dar_difficulty` must be one of {DIFFICULTY_SOURCES}, got {difficulty!r}.")
    if warmup_epochs is not None:
        if not is_finite_number(warmup_epochs) or warmup_epochs < 0:
            raise ValueError(f"`dar_warmup_epochs` must be a finite number >= 0, got {warmup_epochs!r}.")
        if difficulty == "warmup" and warmup_epochs == 0:
            raise ValueError(
                "`dar_difficulty='warmup'` labels examples with the members trained without DAR, so "
                "`dar_warmup_epochs` must be > 0 (got 0); for labels from the start use 'column' or 'online'."
            )


class CascadeExitLoss(ExitLoss):
    """Shared behaviour of the cascade recipes: every member runs on every example, every member's loss is logged
    (`loss_member_<k>`, members numbered from 0, smallest first), and evaluation scores every member
    (`accuracy_member_<k>`), the routing by the model's own criterion (`early_exit_accuracy`, `mean_exit_layer`,
    `layer_speedup`, `flops_speedup`, in cumulative layers and FLOPs against the last member alone) and the share of
    examples each member answers (`exit_fraction_member_<k>`).

    `head_learning_rate` covers every member's head and every member but the last, encoder included: on
    all-MiniLM-L6-v2, a 1-layer model with a mean-pooling head reached 78.7 % SST-2 accuracy fine-tuned entirely at
    2e-4 against 73.6 % at 5e-5, while the full model is tuned at 5e-5 (`docs/methods.md` section 2). So the smaller
    members train at the head rate, and only the last member's encoder at `learning_rate`.

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
    r"""CascadeBERT's joint training with difficulty-aware regularisation (`docs/methods.md` section 2):

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

    The schedule and the labelling pass are a callback's, [`~hf_earlyexit.callbacks.DifficultyAwareSchedule`], which
    [`setup`] adds to the trainer: it sets `dar_start_step` when training starts and, with `"warmup"`, gives the loss
    its `difficulty_table` at that step. The loss only reads them.

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
        # optimizer step from which DAR applies (set by `DifficultyAwareSchedule` from the epoch length)
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

    def setup(self, trainer) -> None:
        """Check the difficulty source against the training set, index it (`"warmup"`), and add the schedule."""
        dataset = trainer.train_dataset
        if self.difficulty == "warmup" and dataset is not None:
            trainer.train_dataset = add_example_index(
                dataset,
                EXAMPLE_INDEX_COLUMN,
                "`dar_difficulty='warmup'` labels the training examples by their position",
                f"; give a `{DIFFICULTY_COLUMN}` column (`dar_difficulty='column'`) or use `dar_difficulty='online'`",
            )
        if self.difficulty == "column" and dataset is not None and hasattr(dataset, "column_names"):
            if DIFFICULTY_COLUMN not in dataset.column_names:
                raise ValueError(
                    f"`dar_difficulty='column'` needs a `{DIFFICULTY_COLUMN}` column in the training set; it has "
                    f"{dataset.column_names}."
                )
            check_difficulty_values(dataset[DIFFICULTY_COLUMN], self.num_members - 1)
        trainer.add_callback(DifficultyAwareSchedule(trainer, self, EXAMPLE_INDEX_COLUMN))

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


__all__ = [
    "CascadeExitLoss",
    "DifficultyAwareCascadeLoss",
    "JointCascadeLoss",
    "check_dar_settings",
    "check_difficulty_values",
    "difficulty_aware_ranking_loss",
]
