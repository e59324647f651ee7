"""Synthetic data for the tiny random BERT (`TINY_BERT`, the train command's `--tiny_model`, which has no tokenizer):
token sequences whose labels every exit can learn, so that a training run takes seconds. Not part of the package: the
train command takes such data through its `datasets` argument, and [`train_main`] passes it there when the arguments
hold `--synthetic_data`, a flag of these tests (not of the command)."""

import torch
from datasets import Dataset

from hf_earlyexit.commands import train
from hf_earlyexit.utils import TINY_BERT


SYNTHETIC_DATA = "--synthetic_data"


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


SYNTHETIC_TAGS = ("O", "B-X", "I-X")


def synthetic_tagging(num_examples: int, seed: int, max_length: int = 12) -> Dataset:
    """Sentences of mixed length over the tiny vocabulary, padded to `max_length`, one word per position between
    [CLS] and [SEP]; a word's tag is its token id modulo 3, so that every exit can learn it."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(20, TINY_BERT["vocab_size"], (num_examples, max_length), generator=generator)
    lengths = torch.randint(4, max_length + 1, (num_examples,), generator=generator)
    positions = torch.arange(max_length)
    attention_mask = (positions < lengths.unsqueeze(-1)).long()
    words = attention_mask.bool() & (positions > 0) & (positions < lengths.unsqueeze(-1) - 1)
    input_ids[:, 0] = 2
    input_ids[positions == lengths.unsqueeze(-1) - 1] = 3
    return Dataset.from_dict(
        {
            "input_ids": (input_ids * attention_mask).tolist(),
            "attention_mask": attention_mask.tolist(),
            "labels": torch.where(words, input_ids % len(SYNTHETIC_TAGS), -100).tolist(),
            "word_ids": torch.where(words, positions - 1, -1).tolist(),
        }
    )


def synthetic_datasets(data_args: train.DataArguments, task: str) -> tuple[Dataset, Dataset, list[str]]:
    """Training and evaluation sets for the train command's `datasets` argument, `--max_train_samples` (default 64)
    and `--max_eval_samples` (default 16) examples long, and their class names."""
    train_size, eval_size = data_args.max_train_samples or 64, data_args.max_eval_samples or 16
    if task == "token":
        return synthetic_tagging(train_size, seed=0), synthetic_tagging(eval_size, seed=1), list(SYNTHETIC_TAGS)
    return synthetic_classification(train_size, seed=0), synthetic_classification(eval_size, seed=1), ["0", "1"]


def train_main(argv: list[str], prog: str | None = None) -> dict:
    """The train command's `main`, on [`synthetic_datasets`] when `argv` holds `--synthetic_data`."""
    synthetic = SYNTHETIC_DATA in argv
    argv = [arg for arg in argv if arg != SYNTHETIC_DATA]
    return train.main(argv, prog, datasets=synthetic_datasets if synthetic else None)


def parse_train_args(argv: list[str]):
    """The train command's `parse_args`, `--synthetic_data` left out."""
    return train.parse_args([arg for arg in argv if arg != SYNTHETIC_DATA])
