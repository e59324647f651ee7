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
"""What the inference subcommands share: loading a checkpoint and its data, reporting usage errors."""

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class UsageError(ValueError):
    """A bad command-line argument: the command line prints the message and exits with status 2."""


def int_at_least(minimum: int, meaning: str = ""):
    """An argparse type for integers `>= minimum` (`meaning` says what the smallest means, e.g. "0: all"): argparse
    reports anything else as a usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}{meaning}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse calls the type in its messages
    return parse


# counts (batch sizes, lengths, rounds); sizes where 0 means "all"
positive_int = int_at_least(1)
size_or_all = int_at_least(0, " (0: all)")


def decode_text(data: bytes | str, source: str) -> str:
    """`data` as UTF-8 text (a byte-order mark is dropped), or a usage error naming `source` and the first byte that
    is not UTF-8."""
    if isinstance(data, str):
        text = data
    else:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise UsageError(
                f"{source} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} is not valid "
                "UTF-8. Convert it first, e.g. `iconv -f latin1 -t utf-8`."
            ) from None
    try:  # text decoded by Python with `surrogateescape` (command-line arguments) may hide undecodable bytes
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UsageError(
            f"{source} is not UTF-8 text: it holds undecodable bytes at character {error.start}. Convert it first, "
            "e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    return text


def read_standard_input() -> str:
    """Standard input as UTF-8 text (see [`decode_text`])."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    return decode_text(stream.read(), "standard input")


def model_max_positions(model) -> int:
    """The most positions the model takes: its `max_position_embeddings` (a cascade: its smallest member's)."""
    members = getattr(model.config, "members", None)
    if members:
        return min(member["max_position_embeddings"] for member in members)
    return model.config.max_position_embeddings


DEFAULT_MAX_SEQ_LENGTH = 128


def input_length(requested: int, model, tokenizer, option: str = "--max_seq_length") -> int:
    """`requested` word-pieces, capped at what the model and its tokenizer take; when the cap applies to a length the
    user asked for (not the default), a note on standard error says so."""
    from ..pipelines import _NO_LIMIT

    limits = [model_max_positions(model)]
    if isinstance(tokenizer.model_max_length, int) and 0 < tokenizer.model_max_length < _NO_LIMIT:
        limits.append(tokenizer.model_max_length)
    limit = min(limits)
    if requested > limit and requested != DEFAULT_MAX_SEQ_LENGTH:
        print(
            f"note: `{option}` {requested} is more than the model takes ({limit} positions): texts are truncated to "
            f"{limit} word-pieces.",
            file=sys.stderr,
        )
    return min(requested, limit)


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        required=required,
        help="Labelled examples: a GLUE-style .tsv, a .csv or .jsonl file, or a `datasets` name (with --split); for a "
        "token model, a CoNLL column file.",
    )
    group.add_argument("--split", default=None, help="Split of a `datasets` dataset, e.g. validation.")
    group.add_argument("--text_column", default=None, help="Text column (guessed: sentence, text, sentence1, ...).")
    group.add_argument("--text_pair_column", default=None, help="Second text of a pair (guessed for GLUE pairs).")
    group.add_argument("--label_column", default=None, help="Label column (guessed: label, Quality, labels).")
    group.add_argument(
        "--tag_column", type=int, default=-1, help="Token models: the CoNLL column of the tags (default: the last)."
    )
    group.add_argument("--max_samples", type=int, default=None, help="Keep a random subset of this many examples.")
    group.add_argument(
        "--max_seq_length",
        type=positive_int,
        default=DEFAULT_MAX_SEQ_LENGTH,
        help="Word-pieces per example at most (capped at the model's positions).",
    )
    group.add_argument("--batch_size", type=positive_int, default=32, help="Batch size of the accuracy runs.")


def add_tokenizer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="The model's tokenizer (a folder or Hub id), for a checkpoint saved without one (default: the checkpoint's).",
    )


# what `AutoTokenizer.from_pretrained` reads from a folder: a checkpoint with none of them was saved without its tokenizer
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def load_tokenizer(config, path: str, tokenizer: str | None = None):
    """The tokenizer of the checkpoint `path` (`--model`, whose config is `config`), or `tokenizer` (`--tokenizer`)
    when given; a usage error naming the option when none loads (a checkpoint saved without its tokenizer) or when it
    has more tokens than the model's embeddings (not the model's tokenizer)."""
    from transformers import AutoTokenizer

    source, option = (tokenizer, "--tokenizer") if tokenizer is not None else (path, "--model")
    remedy = (
        ""
        if tokenizer is not None
        else " Pass the tokenizer it was trained with as `--tokenizer` (a folder or Hub id), or save it beside the "
        "model (`tokenizer.save_pretrained(<checkpoint>)`)."
    )
    if not Path(source).exists() and os.sep in source:
        raise UsageError(f"`{option}` {source}: no such folder.")
    if Path(source).is_dir() and not any(Path(source, name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(
            f"`{option}` {source}: the folder holds no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...).{remedy}"
        )
    try:
        loaded = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UsageError(f"`{option}` {source}: no tokenizer could be loaded ({reason}).{remedy}") from None
    vocab_size = getattr(config, "vocab_size", None)
    if isinstance(vocab_size, int) and len(loaded) > vocab_size:
        raise UsageError(
            f"`{option}` {source}: its tokenizer has {len(loaded)} tokens but the model's embeddings have {vocab_size}, "
            "so it is not the model's tokenizer (its ids would fall outside the embedding table)."
        )
    return loaded


def check_checkpoint_tokenizer(path: str, tokenizer: str | None = None) -> None:
    """That the checkpoint `path` (`--model`) has a config and a tokenizer (its own or `tokenizer`) that load: a usage
    error naming the option otherwise (see [`load_tokenizer`])."""
    load_tokenizer(load_config(path), path, tokenizer)


def load_config(path: str):
    """The config of the checkpoint `path` (`--model`), or a usage error."""
    from transformers import AutoConfig

    import hf_earlyexit  # noqa: F401  (registers the families with the Auto classes)

    if not Path(path).exists() and os.sep in path:
        raise UsageError(f"`--model` {path}: no such checkpoint folder.")
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as error:
        raise UsageError(f"`--model` {path}: not a checkpoint folder or a reachable Hub id ({error}).") from None


def load_checkpoint(path: str, token_models: bool = False, tokenizer: str | None = None):
    """An early-exit sequence classifier (bypass or cascade family), or with `token_models` also a token classifier
    (token family), and its tokenizer (the checkpoint's, or `tokenizer`: see [`load_tokenizer`])."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from ..families import families, family_of

    config = load_config(path)
    accepted = [f.model_type for f in families() if token_models or not f.is_token]
    if config.model_type not in accepted:
        kind = "early-exit classifier" if token_models else "early-exit text classifier"
        raise UsageError(
            f"`--model` {path} holds a {config.model_type!r} model; this command takes an {kind} "
            f"({', '.join(repr(t) for t in accepted)}, e.g. the output of `hf-earlyexit train`)."
        )
    loaded_tokenizer = load_tokenizer(config, path, tokenizer)  # before the weights: the cheaper check first
    auto = AutoModelForTokenClassification if family_of(config).is_token else AutoModelForSequenceClassification
    return auto.from_pretrained(path).eval(), loaded_tokenizer


def label_names(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def load_examples(args, model):
    """The examples of `--data` with their labels as the model's class indices (at least one)."""
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
    """What `evaluate` and `calibrate` start from (see [`load_for_sweep`]).

    For a token model (`is_token`), `criterion` is the exit mode (`token` for TOKEE, `sentence` for SENTEE),
    `dataset` holds the tokenized sentences and `batches` are padded by [`DataCollatorForTokenEarlyExit`].
    """

    model: Any
    tokenizer: Any
    criterion: str
    dataset: Any
    batches: list[dict]
    max_length: int
    is_token: bool = False

    def timing_batches(self, batch_sizes, size: int) -> dict[int, list[dict]]:
        """The first `size` examples batched at each batch size, without labels for a text model."""
        from ..evaluation import make_batches

        timed = self.dataset.select(range(min(size, len(self.dataset))))
        if self.is_token:
            return {batch_size: collate_token_rows(self.tokenizer, timed, batch_size) for batch_size in batch_sizes}
        return {
            batch_size: make_batches(self.tokenizer, timed, batch_size, self.max_length) for batch_size in batch_sizes
        }


def load_for_sweep(args) -> SweepInputs:
    """The checkpoint `--model` (any family) and its tokenizer, the exit criterion (`--criterion`, checked against the
    family, or the config's; a token model's exit mode), the labelled examples of `--data` and their batches (with
    labels)."""
    from ..families import family_of

    model, tokenizer = load_checkpoint(args.model, token_models=True, tokenizer=getattr(args, "tokenizer", None))
    if family_of(model).is_token:
        return _load_token_sweep(args, model, tokenizer)
    if getattr(args, "window_sizes", None):
        raise UsageError("`--window_sizes` is for token models (TOKEE's window); this checkpoint classifies texts.")
    criterion = args.criterion or model.config.exit_criterion
    try:
        model.config.exit_rule(exit_criterion=criterion)
    except ValueError as error:
        raise UsageError(f"`--criterion` {criterion!r}: {error}") from None
    dataset = load_examples(args, model)
    max_length = input_length(args.max_seq_length, model, tokenizer)
    batches = batches_with_labels(tokenizer, dataset, args.batch_size, max_length)
    return SweepInputs(model, tokenizer, criterion, dataset, batches, max_length)


def _load_token_sweep(args, model, tokenizer) -> SweepInputs:
    """A token model's sweep inputs: the sentences of the CoNLL file `--data`, tagged with the model's tag names."""
    import random

    from ..data import read_conll, tokenize_token_dataset
    from ..models.bert.token_exit_utils import EXIT_MODES, check_window_size

    criterion = args.criterion or model.config.exit_mode
    if criterion not in EXIT_MODES:
        raise UsageError(
            f"`--criterion` {criterion!r}: a token model's criterion is its exit mode, one of {list(EXIT_MODES)} "
            "('token' for TOKEE, 'sentence' for SENTEE)."
        )
    for window in getattr(args, "window_sizes", None) or []:
        try:
            check_window_size(window, "--window_sizes")
        except ValueError as error:
            raise UsageError(str(error)) from None
    if getattr(args, "window_sizes", None) and criterion == "sentence":
        raise UsageError("`--window_sizes` sets TOKEE's window; `--criterion sentence` (SENTEE) has none.")
    for option in ("split", "text_column", "text_pair_column", "label_column"):
        if getattr(args, option) is not None:
            raise UsageError(
                f"`--{option}` is for text classifiers; a token model reads a CoNLL column file (`--data`) with its "
                "tags in `--tag_column`."
            )
    if args.max_samples is not None and args.max_samples < 1:
        raise UsageError(f"`--max_samples` must be >= 1, got {args.max_samples}.")
    path = Path(args.data)
    if not path.is_file():
        raise UsageError(f"`--data` {args.data}: no such file (a token model reads a CoNLL column file).")
    try:
        sentences = read_conll(path, tag_column=args.tag_column, label_names=label_names(model))
    except IndexError:
        raise UsageError(f"`--tag_column` {args.tag_column}: {path} has fewer columns on some line.") from None
    except ValueError as error:
        raise UsageError(f"`--data` (tags from `--tag_column` {args.tag_column}): {error}") from None
    if len(sentences) == 0:
        raise UsageError(f"`--data` {args.data}: no sentences in the file.")
    if args.max_samples is not None and args.max_samples < len(sentences):
        # a random subset, drawn as for text data (seed 0), in file order
        sentences = sentences.select(sorted(random.Random(0).sample(range(len(sentences)), args.max_samples)))
    max_length = input_length(args.max_seq_length, model, tokenizer)
    rows = tokenize_token_dataset(sentences, tokenizer, max_length=max_length)
    batches = collate_token_rows(tokenizer, rows, args.batch_size)
    return SweepInputs(model, tokenizer, criterion, rows, batches, max_length, is_token=True)


def collate_token_rows(tokenizer, rows, batch_size: int) -> list[dict]:
    """Tokenized sentences in padded batches of `batch_size` (with `labels` and `word_ids`), in order."""
    from ..data import DataCollatorForTokenEarlyExit

    collator = DataCollatorForTokenEarlyExit(tokenizer)
    return [
        collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        for start in range(0, len(rows), batch_size)
    ]


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


def save_card(checkpoint: str | Path, model, card_data) -> None:
    """Writes the model card (`README.md`) rendered from `card_data`, and `card_data` itself (what the card says beyond
    the config, which [`load_card_data`] reads back to render it again), each through a temporary file."""
    from ..model_card import model_card_for

    checkpoint = Path(checkpoint)
    write_atomically(checkpoint / "README.md", str(model_card_for(model, card_data)))
    write_atomically(checkpoint / CARD_DATA_FILE, dump_json(card_data.to_dict()))


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
