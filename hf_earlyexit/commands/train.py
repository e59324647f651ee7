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
"""`hf-earlyexit train`: train an early-exit model with [`EarlyExitTrainer`], in one process or several (DDP).

Every exit recipe of every family runs through the same function, [`main`]: the multi-exit model (`--family bypass`,
recipes `joint`, `two_stage`, `alternating`, `distillation`), the cascade (`--family cascade`, recipes `joint` and
`difficulty_aware`) and the sequence-labelling model (`--family token`, recipes `joint` and `self_sampling`, on CoNLL
column files). A staged recipe's stage 2 (and `self_sampling`, after `joint`) continues from stage 1's output
(`--model_name_or_path <stage 1 output_dir>`).
`examples/train.py` is a thin wrapper around this module, for `accelerate launch` and `torchrun`.

One process:

    hf-earlyexit train --family bypass --exit_recipe joint --output_dir runs/joint

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

Every recipe trains in N processes as it does in one at the same global batch (tests/test_distributed.py compares
them): the per-example losses average over each process's share as DDP expects, and the losses that are not means
over examples (DAR's pairs, the token losses' means over words, self-sampling's sandwich) are computed on the global
batch (see `hf_earlyexit.distributed`).

Data: `--train_file` / `--validation_file` take GLUE-style TSV, CSV or JSON lines (columns guessed, or named with
`--text_column`, `--text_pair_column`, `--label_column`), CoNLL column files for `--family token`, or `--dataset_name`
reads a `datasets` dataset, from the Hub or a local folder (`--dataset_config_name`, `--train_split`,
`--validation_split`; e.g. `--dataset_name nyu-mll/glue --dataset_config_name sst2`), keeping its class names.

`--tiny_model` starts from a tiny random BERT (hidden 32, 4 layers, no dropout) without a tokenizer: the tests train it
in seconds on tokenized rows they give `main` (its `datasets` argument).

Outputs in `--output_dir`, written by the main process only: the model (with its tokenizer when it has one), its
model card (`README.md`) and `results.json` (the dict `main` returns: loss curve, final training metrics, evaluation
metrics).
"""

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed

from hf_earlyexit import (
    EarlyExitTrainer,
    EarlyExitTrainingArguments,
    encode_words,
)
from hf_earlyexit.data import DataCollatorForTokenEarlyExit, label_names_of, load_text_classification, read_conll
from hf_earlyexit.families import families
from hf_earlyexit.families import family as family_named
from hf_earlyexit.losses import registered_recipes
from hf_earlyexit.models.backbones import SUPPORTED_MODEL_TYPES
from hf_earlyexit.utils import default_backbone


RESULTS_FILE = "results.json"


def default_data_dir() -> Path:
    """`data/sst2` of the repository (the SST-2 copy shipped with it): next to the package in a source checkout or an
    editable install, else under the working directory."""
    shipped = Path(__file__).resolve().parents[2] / "data" / "sst2"
    return shipped if shipped.is_dir() else Path("data") / "sst2"


@dataclass
class ModelArguments:
    family: str = field(
        default="bypass",
        metadata={
            "help": "Model family: 'bypass' (multi-exit, BADGE), 'cascade' (CascadeBERT), 'token' (TOKEE), or another "
            "registered with hf_earlyexit.families.register_family."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A plain checkpoint (local path or Hub id) of a supported encoder (BERT, RoBERTa, XLM-R, ELECTRA, "
            "DistilBERT, DeBERTa-v2/-v3, ModernBERT) to start from, or a checkpoint of the family to continue "
            "(e.g. stage 1's output for stage 2). Defaults to the embedded all-MiniLM-L6-v2 (or a tiny random BERT "
            "with --tiny_model)."
        },
    )
    tiny_model: bool = field(
        default=False,
        metadata={
            "help": "Start from a tiny random BERT (hidden 32, 4 layers, vocab 99, no dropout) for tests; it has no "
            "tokenizer, so its data comes tokenized (`main(datasets=...)`)."
        },
    )
    exit_layers: list[int] | None = field(
        default=None, metadata={"help": "bypass, token: layers that get an exit (default: every layer)."}
    )
    member_layers: list[int] | None = field(
        default=None,
        metadata={"help": "cascade: depth of each member cut from the backbone (default: 1 and all of its layers)."},
    )
    use_bypass: bool = field(default=True, metadata={"help": "bypass: BADGE's block-wise bypass modules."})
    exit_pooling: str | None = field(
        default=None, metadata={"help": "bypass: what the exit heads read: 'cls', 'pooler' or 'mean' (the config's)."}
    )


@dataclass
class DataArguments:
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: GLUE-style TSV, CSV or JSON lines (CoNLL columns for --family token). Default: "
            "the SST-2 copy in data/sst2."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A `datasets` dataset (Hub name or local dataset folder) instead of the files."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of --dataset_name, e.g. `sst2` of `nyu-mll/glue`."}
    )
    train_split: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
    validation_split: str = field(default="validation", metadata={"help": "Split of --dataset_name to evaluate on."})
    text_column: str | None = field(default=None, metadata={"help": "Text column (guessed if unset)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text of a pair (guessed if unset)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (guessed if unset)."})
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Class names in index order, e.g. `negative positive` for SST-2 (the data's labels may be these "
            "names or their indices); saved as the model's id2label. Default: a ClassLabel's names, else the labels."
        },
    )
    tag_column: int = field(default=-1, metadata={"help": "--family token: CoNLL column of the tags (default: last)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep this many evaluation examples."})
    max_seq_length: int = field(default=128, metadata={"help": "Word-pieces per example at most."})


def model_options(model_args: ModelArguments) -> dict:
    """The command line's model options, as a family's `build` takes them."""
    return {
        "exit_layers": model_args.exit_layers,
        "member_layers": model_args.member_layers,
        "use_bypass": model_args.use_bypass,
        "exit_pooling": model_args.exit_pooling,
    }


def _data_sources(data_args: DataArguments) -> tuple[str, str | None, str, str | None]:
    """(train source, train split, validation source, validation split)."""
    if data_args.dataset_name is not None:
        if data_args.train_file or data_args.validation_file:
            raise ValueError("Give either `--dataset_name` or `--train_file` / `--validation_file`, not both.")
        return data_args.dataset_name, data_args.train_split, data_args.dataset_name, data_args.validation_split
    if data_args.dataset_config_name is not None:
        raise ValueError("`--dataset_config_name` names a configuration of `--dataset_name`: give both.")
    train = data_args.train_file or str(default_data_dir() / "train.tsv")
    validation = data_args.validation_file or str(default_data_dir() / "dev.tsv")
    for name, path in (("--train_file", train), ("--validation_file", validation)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"`{name}` {path}: no such file.")
    return train, None, validation, None


def load_data(data_args: DataArguments, tokenizer, task: str = "sequence") -> tuple[Dataset, Dataset, list[str]]:
    """Tokenized training and evaluation sets and the class names."""
    if tokenizer is None:
        raise ValueError(
            "Text files need a tokenizer: start from a checkpoint that has one (`--tiny_model` has none)."
        )
    max_length = min(data_args.max_seq_length, tokenizer.model_max_length)
    if task == "token":
        return _load_conll(data_args, tokenizer, max_length)
    train_source, train_split, dev_source, dev_split = _data_sources(data_args)
    columns = dict(
        config_name=data_args.dataset_config_name,
        text_column=data_args.text_column,
        text_pair_column=data_args.text_pair_column,
        label_column=data_args.label_column,
    )
    from hf_earlyexit.commands.common import name_the_option

    def load(source, split, option, **kwargs):
        try:
            return load_text_classification(source, split, **columns, **kwargs)
        except (ConnectionError, FileNotFoundError) as error:  # also a Hub dataset while offline
            raise ValueError(f"`{option}` {source!r}: {error}") from None
        except ValueError as error:
            message = str(error)
            if message.startswith("BuilderConfig"):  # `datasets`' words for an unknown configuration
                option = "--dataset_config_name"
            elif message.startswith("labels ") and data_args.class_names is not None:
                option = "--class_names"
            raise ValueError(name_the_option(message, option)) from None

    from_datasets = data_args.dataset_name is not None  # a Hub name or a local dataset folder
    train = load(
        train_source,
        train_split,
        "--dataset_name" if from_datasets else "--train_file",
        limit=data_args.max_train_samples,
        label_names=data_args.class_names,
    )
    label_names = label_names_of(train)
    dev = load(
        dev_source,
        dev_split,
        "--dataset_name" if from_datasets else "--validation_file",
        limit=data_args.max_eval_samples,
        label_names=label_names,
    )

    def tokenize(rows):
        return tokenizer(rows["text"], rows.get("text_pair"), truncation=True, max_length=max_length)

    def prepare(dataset):
        dataset = dataset.map(tokenize, batched=True)
        return dataset.rename_column("label", "labels").remove_columns(
            [c for c in ("text", "text_pair") if c in dataset.column_names]
        )

    return prepare(train), prepare(dev), label_names


def _load_conll(data_args: DataArguments, tokenizer, max_length: int) -> tuple[Dataset, Dataset, list[str]]:
    if data_args.dataset_name is not None:
        raise ValueError("--family token reads CoNLL column files: give `--train_file` and `--validation_file`.")
    if data_args.class_names is not None:
        raise ValueError("`--class_names` names text classes: --family token takes its tags from the CoNLL files.")
    if not data_args.train_file or not data_args.validation_file:
        raise ValueError("--family token needs `--train_file` and `--validation_file` (CoNLL column files).")
    train = read_conll(data_args.train_file, tag_column=data_args.tag_column, limit=data_args.max_train_samples)
    label_names = label_names_of(train, "tags")
    dev = read_conll(
        data_args.validation_file,
        tag_column=data_args.tag_column,
        label_names=label_names,
        limit=data_args.max_eval_samples,
    )

    def prepare(dataset):
        def encode(rows):
            encoded = encode_words(
                tokenizer, rows["tokens"], rows["tags"], max_length=max_length, padding=False, return_tensors=None
            )
            return dict(encoded)

        return dataset.map(encode, batched=True, remove_columns=["tokens", "tags"])

    return prepare(train), prepare(dev), label_names


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


def make_parser(prog: str | None = None) -> HfArgumentParser:
    parser = HfArgumentParser((ModelArguments, DataArguments, EarlyExitTrainingArguments), prog=prog)
    parser.description = __doc__.split("\n\n")[0].replace("`hf-earlyexit train`: ", "").strip()
    return parser


def parse_args(argv: list[str] | None, prog: str | None = None):
    parser = make_parser(prog)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    names = [registered.name for registered in families()]
    if model_args.family not in names:
        raise ValueError(f"Unknown `--family` {model_args.family!r}; expected one of {sorted(names)}.")
    recipes = registered_recipes(family_named(model_args.family).model_type)
    if training_args.exit_recipe not in recipes:
        raise ValueError(
            f"`--exit_recipe {training_args.exit_recipe}` does not train `--family {model_args.family}`; its recipes: "
            f"{list(recipes)}."
        )
    return model_args, data_args, training_args


Datasets = Callable[[DataArguments, str], tuple[Dataset, Dataset, list[str]]]


def main(argv: list[str] | None = None, prog: str | None = None, datasets: Datasets | None = None) -> dict:
    """Train and/or evaluate (`--do_train`, `--do_eval`; both when neither is given) and return the results.

    Args:
        argv: The command line's arguments (default: `sys.argv[1:]`).
        prog: The program's name in usage messages.
        datasets (*optional*): Builds the training and evaluation sets instead of the data options: called with the
            parsed [`DataArguments`] and the family's task (`"sequence"` or `"token"`), it returns both sets
            tokenized (and padded: no tokenizer is loaded or saved then) and the class names. The tests train the
            tokenizer-less `--tiny_model` this way.

    Returns:
        `dict` with `family`, `exit_recipe`, `exit_stage`, `world_size`, `process_index`,
        `ddp_find_unused_parameters` (as the arguments resolved it), `global_step`, `loss_curve` (`[step, loss]` of every logged
        training step, the loss averaged over all processes), `train_metrics`, `eval_metrics` and `output_dir`.
        Every process returns it; the main process also writes it to `<output_dir>/results.json`.
    """
    model_args, data_args, training_args = parse_args(argv, prog)
    check_launch(training_args)
    do_train = training_args.do_train or not training_args.do_eval
    do_eval = training_args.do_eval or not training_args.do_train
    chosen = family_named(model_args.family)

    # the same initial weights in every process (DDP also broadcasts rank 0's when it wraps the model)
    set_seed(training_args.seed)
    source = model_args.model_name_or_path
    if source is None and not model_args.tiny_model:
        source = default_backbone()
    if source is not None:
        source_type = AutoConfig.from_pretrained(source).model_type
        if source_type not in (*SUPPORTED_MODEL_TYPES, chosen.model_type):
            raise ValueError(
                f"`--model_name_or_path` {source} holds a {source_type!r} model; `--family {model_args.family}` "
                f"starts from a checkpoint of a supported encoder ({', '.join(SUPPORTED_MODEL_TYPES)}) or continues "
                f"a {chosen.model_type!r} one."
            )
    tokenizer = AutoTokenizer.from_pretrained(source) if source is not None and datasets is None else None
    if datasets is None:
        train_dataset, eval_dataset, label_names = load_data(data_args, tokenizer, chosen.task)
    else:
        train_dataset, eval_dataset, label_names = datasets(data_args, chosen.task)
    model = chosen.build(model_options(model_args), source, len(label_names))
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}

    extra = {}
    if chosen.task == "token" and tokenizer is not None:  # rows from `datasets` come padded already
        extra["data_collator"] = DataCollatorForTokenEarlyExit(tokenizer)
    from hf_earlyexit.commands.common import save_card
    from hf_earlyexit.model_card import ModelCardCallback, model_card_data_of

    trainer = EarlyExitTrainer(
        model,
        training_args,
        train_dataset=train_dataset if do_train else None,
        eval_dataset=eval_dataset if do_eval else None,
        processing_class=tokenizer,
        callbacks=[ModelCardCallback()],
        **extra,
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
        "global_step": 0,
    }
    if do_train:
        train_output = trainer.train()
        results["train_metrics"] = train_output.metrics
        results["global_step"] = train_output.global_step
        results["loss_curve"] = [[log["step"], log["loss"]] for log in trainer.state.log_history if "loss" in log]
        trainer.save_model()  # writes from the main process only
        if trainer.is_world_process_zero():
            card_data = model_card_data_of(model)
            if data_args.dataset_name:
                card_data.datasets = [data_args.dataset_name]
            save_card(training_args.output_dir, model, card_data)
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
