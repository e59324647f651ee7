"""What the inference subcommands share: loading a checkpoint and its data, reporting usage errors."""

import argparse
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class UsageError(ValueError):
    """A bad command-line argument: the command line prints the message and exits with status 2."""


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        required=required,
        help="Labelled examples: a GLUE-style .tsv, a .csv or .jsonl file, or a `datasets` name (with --split).",
    )
    group.add_argument("--split", default=None, help="Split of a `datasets` dataset, e.g. validation.")
    group.add_argument("--text_column", default=None, help="Text column (guessed: sentence, text, sentence1, ...).")
    group.add_argument("--text_pair_column", default=None, help="Second text of a pair (guessed for GLUE pairs).")
    group.add_argument("--label_column", default=None, help="Label column (guessed: label, Quality, labels).")
    group.add_argument("--max_samples", type=int, default=None, help="Keep a random subset of this many examples.")
    group.add_argument("--max_seq_length", type=int, default=128, help="Word-pieces per example at most.")
    group.add_argument("--batch_size", type=int, default=32, help="Batch size of the accuracy runs.")


def load_checkpoint(path: str, token_models: bool = False):
    """An early-exit sequence classifier (bypass or cascade family), or with `token_models` also a token classifier
    (token family), and its tokenizer."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    import hf_earlyexit  # noqa: F401  (registers the families with the Auto classes)

    if not Path(path).exists() and os.sep in path:
        raise UsageError(f"`--model` {path}: no such checkpoint folder.")
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as error:
        raise UsageError(f"`--model` {path}: not a checkpoint folder or a reachable Hub id ({error}).") from None
    accepted = ("bypass-bert", "cascade-bert", "token-exit-bert") if token_models else ("bypass-bert", "cascade-bert")
    if config.model_type not in accepted:
        kind = "early-exit classifier" if token_models else "early-exit text classifier"
        raise UsageError(
            f"`--model` {path} holds a {config.model_type!r} model; this command takes an {kind} "
            f"({', '.join(repr(t) for t in accepted)}, e.g. the output of `hf-earlyexit train`)."
        )
    auto = (
        AutoModelForTokenClassification
        if config.model_type == "token-exit-bert"
        else AutoModelForSequenceClassification
    )
    model = auto.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def label_names(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def load_examples(args, model):
    """The examples of `--data` with their labels as the model's class indices."""
    from ..data import load_text_classification

    if args.max_samples is not None and args.max_samples < 1:
        raise UsageError(f"`--max_samples` must be >= 1, got {args.max_samples}.")
    try:
        return load_text_classification(
            args.data,
            args.split,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            label_names=label_names(model),
            limit=args.max_samples,
        )
    except FileNotFoundError as error:
        raise UsageError(f"`--data`: {error}") from None
    except ValueError as error:
        raise UsageError(name_the_option(str(error), data_option="--data")) from None


def name_the_option(message: str, data_option: str) -> str:
    """Prefixes a data-loading error with the command-line option it is about."""
    for role, option in (("text pair column", "--text_pair_column"), ("text column", "--text_column")):
        if message.startswith(role):
            return f"`{option}`: {message}"
    if message.startswith("label column") or message.startswith("Could not find a label"):
        return f"`--label_column`: {message}"
    if message.startswith("Could not find a text"):
        return f"`--text_column`: {message}"
    return f"`{data_option}`: {message}"


def batches_with_labels(tokenizer, dataset, batch_size: int, max_length: int) -> list[dict]:
    from ..evaluation import make_batches

    batches = make_batches(tokenizer, dataset, batch_size, max_length)
    labels = dataset["label"]
    return [
        dict(batch, labels=torch.tensor(labels[i * batch_size : (i + 1) * batch_size]))
        for i, batch in enumerate(batches)
    ]


@dataclass
class SweepInputs:
    """What `evaluate` and `calibrate` start from (see [`load_for_sweep`])."""

    model: Any
    tokenizer: Any
    criterion: str
    dataset: Any
    batches: list[dict]
    max_length: int


def load_for_sweep(args) -> SweepInputs:
    """The checkpoint `--model` and its tokenizer, the exit criterion (`--criterion`, checked against the family, or
    the config's), the labelled examples of `--data` and their batches (with labels)."""
    model, tokenizer = load_checkpoint(args.model)
    criterion = args.criterion or model.config.exit_criterion
    try:
        model.config.exit_rule(exit_criterion=criterion)
    except ValueError as error:
        raise UsageError(f"`--criterion` {criterion!r}: {error}") from None
    dataset = load_examples(args, model)
    max_length = min(args.max_seq_length, tokenizer.model_max_length)
    batches = batches_with_labels(tokenizer, dataset, args.batch_size, max_length)
    return SweepInputs(model, tokenizer, criterion, dataset, batches, max_length)


def without_labels(batches: list[dict]) -> list[dict]:
    return [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]


CARD_DATA_FILE = "model_card_data.json"


def load_card_data(checkpoint: str | Path):
    """The card data `train` saved with a checkpoint (training hyperparameters...), or fresh card data."""
    from ..model_card import EarlyExitModelCardData, framework_versions

    path = Path(checkpoint) / CARD_DATA_FILE
    if path.is_file():
        return EarlyExitModelCardData.from_dict(json.loads(path.read_text(encoding="utf-8")))
    return EarlyExitModelCardData(framework_versions=framework_versions())


def write_atomically(path: str | Path, text: str) -> None:
    """Writes `text` to a temporary file next to `path`, then replaces `path` with it: a crash never leaves a
    half-written file."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def dump_json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
