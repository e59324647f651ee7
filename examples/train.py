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
"""Train an early-exit model with [`EarlyExitTrainer`], in one process or several (DDP).

Every exit recipe of every family runs through the same function, [`main`]: the multi-exit model (`--family bypass`,
recipes `joint`, `two_stage`, `alternating`, `distillation`) and the cascade (`--family cascade`, recipe `joint`).
A staged recipe's stage 2 continues from stage 1's output (`--model_name_or_path <stage 1 output_dir>`).

One process:

    python examples/train.py --family bypass --exit_recipe joint --output_dir runs/joint

Two processes on CPU (DDP over gloo), with the same global batch as one process at `--per_device_train_batch_size 16`:

    accelerate launch --multi_gpu --num_processes 2 examples/train.py --use_cpu \\
        --family bypass --exit_recipe joint --per_device_train_batch_size 8 --output_dir runs/joint

The same without `--use_cpu` on a machine with GPUs. Why `--multi_gpu` on a CPU: it is the launcher that starts the
processes (torchrun's); `--use_cpu` puts each of them on the CPU, where they join a gloo process group
(`ACCELERATE_USE_CPU=true` in the environment does the same as `--use_cpu`, and `torchrun --standalone
--nproc_per_node 2 examples/train.py --use_cpu ...` is the same launch without accelerate).

`accelerate launch --cpu --num_processes 2` starts a single process: accelerate's CPU launcher multiplies processes
only through MPI (`--mpirun_hostfile`), so without MPI it runs the script once, and that script trains alone. This
script refuses both silent failures (one process where several were asked for; several processes that joined no
group) with an error that says what to run.

`--tiny_model --synthetic_data` trains a tiny random BERT (hidden 32, 4 layers, no dropout) on synthetic token
sequences whose label is written in their first tokens: seconds per run, for tests and smoke runs.

Outputs in `--output_dir`, written by the main process only: the model (with its tokenizer when it has one) and
`results.json` (the dict `main` returns: loss curve, final training metrics, evaluation metrics).
"""

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, BertConfig, HfArgumentParser, PreTrainedModel, set_seed

from hf_earlyexit import (
    BertForCascadeClassification,
    BertWithBypassExits,
    BypassBertConfig,
    CascadeBertConfig,
    EarlyExitTrainer,
    EarlyExitTrainingArguments,
)
from hf_earlyexit.data import label_names_of, load_text_classification
from hf_earlyexit.utils import TINY_BERT, default_backbone


REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = "results.json"


@dataclass
class ModelArguments:
    family: str = field(default="bypass", metadata={"help": "Model family: 'bypass' (multi-exit) or 'cascade'."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A BERT checkpoint to start from, or a checkpoint of the family to continue (e.g. stage 1's "
            "output for stage 2). Defaults to the embedded all-MiniLM-L6-v2 (or a tiny random BERT with --tiny_model)."
        },
    )
    tiny_model: bool = field(
        default=False,
        metadata={"help": "Start from a tiny random BERT (hidden 32, 4 layers, vocab 99, no dropout) for tests."},
    )
    exit_layers: list[int] | None = field(
        default=None, metadata={"help": "bypass: layers that get an exit (default: every layer)."}
    )
    member_layers: list[int] | None = field(
        default=None,
        metadata={"help": "cascade: depth of each member cut from the backbone (default: 1 and all of its layers)."},
    )


@dataclass
class DataArguments:
    train_file: str = field(default=str(REPO_ROOT / "data" / "sst2" / "train.tsv"))
    validation_file: str = field(default=str(REPO_ROOT / "data" / "sst2" / "dev.tsv"))
    synthetic_data: bool = field(
        default=False,
        metadata={
            "help": "Synthetic token sequences instead of the files (for --tiny_model, which has no tokenizer)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep this many evaluation examples."})
    max_seq_length: int = field(default=128)


@dataclass(frozen=True)
class Family:
    """How the script builds a family's model: `build(model_args, source, num_labels)` with `source` the checkpoint
    (`None` for a tiny random model). Families registered in `FAMILIES` are selectable with `--family`."""

    build: Callable[[ModelArguments, str | None, int], PreTrainedModel]
    model_type: str


def _is_checkpoint_of(source: str, model_type: str) -> bool:
    return AutoConfig.from_pretrained(source).model_type == model_type


def build_bypass(model_args: ModelArguments, source: str | None, num_labels: int) -> PreTrainedModel:
    overrides = {} if model_args.exit_layers is None else {"exit_layers": model_args.exit_layers}
    if source is None:
        return BertWithBypassExits(BypassBertConfig(**TINY_BERT, num_labels=num_labels, **overrides))
    if overrides and _is_checkpoint_of(source, "bypass-bert"):
        raise ValueError(
            "`--exit_layers` builds new exits: give it with a plain BERT checkpoint, not a trained model."
        )
    return BertWithBypassExits.from_pretrained(source, num_labels=num_labels, **overrides)


def build_cascade(model_args: ModelArguments, source: str | None, num_labels: int) -> PreTrainedModel:
    if source is None:
        layers = model_args.member_layers or [1, TINY_BERT["num_hidden_layers"]]
        members = [BertConfig(**{**TINY_BERT, "num_hidden_layers": k}) for k in layers]
        return BertForCascadeClassification(CascadeBertConfig(members=members, num_labels=num_labels))
    if _is_checkpoint_of(source, "cascade-bert"):
        if model_args.member_layers is not None:
            raise ValueError("`--member_layers` cuts a plain BERT checkpoint, not a trained cascade.")
        return BertForCascadeClassification.from_pretrained(source, num_labels=num_labels)
    layers = model_args.member_layers or [1, AutoConfig.from_pretrained(source).num_hidden_layers]
    return BertForCascadeClassification.from_backbone(source, member_layers=layers, num_labels=num_labels)


FAMILIES: dict[str, Family] = {
    "bypass": Family(build_bypass, "bypass-bert"),
    "cascade": Family(build_cascade, "cascade-bert"),
}


def synthetic_classification(num_examples: int, seed: int, num_labels: int = 2, max_length: int = 10) -> Dataset:
    """Token sequences of mixed length over the tiny vocabulary whose label `c` is written as token `10 + c` in
    positions 1-3, so that every exit can learn it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (num_examples,), generator=generator)
    input_ids = torch.randint(20, TINY_BERT["vocab_size"], (num_examples, max_length), generator=generator)
    input_ids[:, 0] = 2
    input_ids[:, 1:4] = (10 + labels).unsqueeze(-1)
    lengths = torch.randint(5, max_length + 1, (num_examples,), generator=generator)
    attention_mask = (torch.arange(max_length) < lengths.unsqueeze(-1)).long()
    return Dataset.from_dict(
        {
            "input_ids": (input_ids * attention_mask).tolist(),
            "attention_mask": attention_mask.tolist(),
            "labels": labels.tolist(),
        }
    )


def load_data(data_args: DataArguments, tokenizer) -> tuple[Dataset, Dataset, list[str]]:
    """Tokenized training and evaluation sets and the class names."""
    if data_args.synthetic_data:
        train = synthetic_classification(data_args.max_train_samples or 64, seed=0)
        dev = synthetic_classification(data_args.max_eval_samples or 16, seed=1)
        return train, dev, ["0", "1"]
    if tokenizer is None:
        raise ValueError("Text files need a tokenizer: start from a checkpoint that has one, or use --synthetic_data.")
    train = load_text_classification(data_args.train_file, limit=data_args.max_train_samples)
    dev = load_text_classification(data_args.validation_file, limit=data_args.max_eval_samples)

    def tokenize(rows):
        pair = rows.get("text_pair")
        max_length = min(data_args.max_seq_length, tokenizer.model_max_length)
        return tokenizer(rows["text"], pair, truncation=True, max_length=max_length)

    def prepare(dataset):
        dataset = dataset.map(tokenize, batched=True)
        return dataset.rename_column("label", "labels").remove_columns(
            [c for c in ("text", "text_pair") if c in dataset.column_names]
        )

    return prepare(train), prepare(dev), label_names_of(train)


def check_launch(training_args: EarlyExitTrainingArguments) -> None:
    """Refuse the two ways a multi-process launch silently degrades into independent single-process runs."""
    requested = int(os.environ.get("WORLD_SIZE", "1"))
    if requested > 1 and training_args.world_size == 1:
        raise RuntimeError(
            f"This is one of {requested} processes (WORLD_SIZE={requested}), but it joined no process group, so each "
            "process would train alone. On a machine without GPUs pass `--use_cpu`: the processes then form a gloo "
            "group on the CPU."
        )
    launched_by_mpi = any(name in os.environ for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    cpu_launcher = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    # accelerate's CPU launcher sets MASTER_ADDR only when asked for several processes, then starts just this one
    if cpu_launcher and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ and not launched_by_mpi:
        raise RuntimeError(
            "`accelerate launch --cpu --num_processes N` started a single process: accelerate starts several CPU "
            "processes only through MPI. Launch with `accelerate launch --multi_gpu --num_processes N "
            "examples/train.py --use_cpu ...` instead (torchrun's launcher, each process on the CPU)."
        )


def parse_args(argv: list[str] | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, EarlyExitTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.family not in FAMILIES:
        raise ValueError(f"Unknown `--family` {model_args.family!r}; expected one of {sorted(FAMILIES)}.")
    return model_args, data_args, training_args


def main(argv: list[str] | None = None) -> dict:
    """Train and/or evaluate (`--do_train`, `--do_eval`; both when neither is given) and return the results.

    Returns:
        `dict` with `family`, `exit_recipe`, `exit_stage`, `world_size`, `process_index`,
        `ddp_find_unused_parameters` (as the arguments resolved it), `loss_curve` (`[step, loss]` of every logged
        training step, the loss averaged over all processes), `train_metrics`, `eval_metrics` and `output_dir`.
        Every process returns it; the main process also writes it to `<output_dir>/results.json`.
    """
    model_args, data_args, training_args = parse_args(argv)
    check_launch(training_args)
    do_train = training_args.do_train or not training_args.do_eval
    do_eval = training_args.do_eval or not training_args.do_train
    family = FAMILIES[model_args.family]

    # the same initial weights in every process (DDP also broadcasts rank 0's when it wraps the model)
    set_seed(training_args.seed)
    source = model_args.model_name_or_path
    if source is None and not model_args.tiny_model:
        source = default_backbone()
    if source is not None:
        source_type = AutoConfig.from_pretrained(source).model_type
        if source_type not in ("bert", family.model_type):
            raise ValueError(
                f"`--model_name_or_path` {source} holds a {source_type!r} model; `--family {model_args.family}` "
                f"starts from a BERT checkpoint or continues a {family.model_type!r} one."
            )
    tokenizer = AutoTokenizer.from_pretrained(source) if source is not None and not data_args.synthetic_data else None
    train_dataset, eval_dataset, label_names = load_data(data_args, tokenizer)
    model = family.build(model_args, source, len(label_names))
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}

    trainer = EarlyExitTrainer(
        model,
        training_args,
        train_dataset=train_dataset if do_train else None,
        eval_dataset=eval_dataset if do_eval else None,
        processing_class=tokenizer,
    )
    results = {
        "family": model_args.family,
        "exit_recipe": training_args.exit_recipe,
        "exit_stage": training_args.exit_stage,
        "world_size": training_args.world_size,
        "process_index": training_args.process_index,
        "output_dir": training_args.output_dir,
        "ddp_find_unused_parameters": training_args.ddp_find_unused_parameters,
        "loss_curve": [],
        "train_metrics": {},
        "eval_metrics": {},
    }
    if do_train:
        results["train_metrics"] = trainer.train().metrics
        results["loss_curve"] = [[log["step"], log["loss"]] for log in trainer.state.log_history if "loss" in log]
        trainer.save_model()  # writes from the main process only
        # the checkpoint is complete on disk when `main` returns, in every process (stage 2 may read it next)
        trainer.accelerator.wait_for_everyone()
    if do_eval:
        results["eval_metrics"] = trainer.evaluate()
    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
    trainer.accelerator.wait_for_everyone()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
