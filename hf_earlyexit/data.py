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
"""Reading local datasets into `datasets.Dataset`: GLUE-style TSV, CSV, JSON lines, CoNLL columns, or a Hub name.

The library never assumes where data lives: every function takes a path (or a `datasets` name) as an argument.
"""

import csv
import os
import random
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Sequence, Value, load_dataset


TEXT_COLUMN_CANDIDATES = ("sentence", "text", "sentence1", "#1 String", "question")
PAIR_COLUMN_CANDIDATES = {"sentence1": "sentence2", "#1 String": "#2 String", "question": "sentence"}
LABEL_COLUMN_CANDIDATES = ("label", "Quality", "labels")
# GLUE SST-2's classes in index order (its files hold 0 and 1)
SST2_LABEL_NAMES = ("negative", "positive")


def _read_delimited(path: Path, delimiter: str) -> Dataset:
    try:
        return _read_delimited_text(path, delimiter)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start} is not valid "
            "UTF-8. Convert it first, e.g. `iconv -f latin1 -t utf-8`."
        ) from None


def _read_delimited_text(path: Path, delimiter: str) -> Dataset:
    with open(path, encoding="utf-8-sig", newline="") as f:
        # GLUE files are not quoted: a quote character is part of the text
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty: expected a header row.")
        rows = []
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}, line {line_number}: {len(row)} fields where the header has {len(header)} ({header})."
                )
            rows.append(row)
    return Dataset.from_dict({name: [row[i] for row in rows] for i, name in enumerate(header)})


def read_table(path_or_name: str | os.PathLike, split: str | None = None, config_name: str | None = None) -> Dataset:
    """Read a table of examples.

    Args:
        path_or_name: A `.tsv` (GLUE style: tab-separated, header row, no quoting), `.csv`, `.json` or `.jsonl` file,
            or a `datasets` dataset: a name on the Hub or a local dataset folder (then `split` is required).
        split: Split of a `datasets` dataset, e.g. `"validation"`.
        config_name: Configuration of a `datasets` dataset, e.g. `"sst2"` of `"nyu-mll/glue"`.

    Raises:
        FileNotFoundError: `path_or_name` looks like a file path but does not exist.
    """
    path = Path(path_or_name)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv", ".json", ".jsonl", ".txt"):
        if not path.is_file():
            raise FileNotFoundError(f"Data file not found: {path}")
        if suffix == ".tsv":
            return _read_delimited(path, "\t")
        if suffix == ".csv":
            return _read_delimited(path, ",")
        if suffix in (".json", ".jsonl"):
            return load_dataset("json", data_files=str(path), split="train")
        raise ValueError(f"{path}: use `read_conll` for CoNLL column files.")
    if path.is_file():
        raise ValueError(f"Unsupported data file {path}: expected .tsv, .csv, .json or .jsonl.")
    if split is None:
        raise ValueError(f"{path_or_name!r} is not a local file; to read a `datasets` dataset, also pass `split`.")
    return load_dataset(str(path_or_name), config_name, split=split)


def _pick_column(dataset: Dataset, requested: str | None, candidates: tuple[str, ...], role: str) -> str:
    if requested is not None:
        if requested not in dataset.column_names:
            raise ValueError(f"{role} column {requested!r} does not exist; the data has {dataset.column_names}.")
        return requested
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise ValueError(f"Could not find a {role} column among {dataset.column_names}; name it explicitly.")


def load_text_classification(
    path_or_name: str | os.PathLike,
    split: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    config_name: str | None = None,
) -> Dataset:
    """Load a text-classification dataset with columns `text`, optional `text_pair`, and integer `label`.

    Args:
        path_or_name: See [`read_table`].
        split: Split of a `datasets` dataset.
        text_column: Column with the text; guessed among `sentence`, `text`, `sentence1`, `#1 String`, ... if unset.
        text_pair_column: Column with the second text of a pair (e.g. MRPC); guessed from the text column if unset.
        label_column: Column with the label; guessed among `label`, `Quality`, `labels` if unset.
        label_names: Names of the classes in index order; labels given as names are mapped to their index. If unset,
            the names of a `ClassLabel` column are taken (as in `datasets` datasets such as GLUE), integer-like
            labels are used as they are and other labels are indexed in sorted order.
        limit: Keep a random subset of this many examples (drawn with `seed`); `None` keeps everything.
        seed: Seed of the subset.
        config_name: See [`read_table`].

    Returns:
        A `Dataset` with `text`, `label` (a `ClassLabel` carrying the class names, see [`label_names_of`]) and, for
        pairs, `text_pair`.
    """
    table = read_table(path_or_name, split, config_name)
    if len(table) == 0:
        raise ValueError(f"{path_or_name} holds no examples (columns {table.column_names}, no rows).")
    text_column = _pick_column(table, text_column, TEXT_COLUMN_CANDIDATES, "text")
    label_column = _pick_column(table, label_column, LABEL_COLUMN_CANDIDATES, "label")
    if text_pair_column is None:
        guess = PAIR_COLUMN_CANDIDATES.get(text_column)
        text_pair_column = guess if guess in table.column_names else None
    elif text_pair_column not in table.column_names:
        raise ValueError(f"text pair column {text_pair_column!r} does not exist; the data has {table.column_names}.")

    raw_labels = [str(value).strip() for value in table[label_column]]
    if label_names is None and isinstance(table.features[label_column], ClassLabel):
        label_names = table.features[label_column].names
    if label_names is None:
        if all(value.lstrip("-").isdigit() for value in raw_labels):
            labels = [int(value) for value in raw_labels]
            label_names = [str(i) for i in range(max(labels) + 1)] if labels else []
        else:
            label_names = sorted(set(raw_labels))
            labels = [label_names.index(value) for value in raw_labels]
    else:
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted(set(raw_labels) - set(index) - {str(i) for i in range(len(label_names))})
        if unknown:
            raise ValueError(f"labels {unknown[:5]} of column {label_column!r} are not in label_names {label_names}.")
        labels = [index[value] if value in index else int(value) for value in raw_labels]

    columns = {"text": [str(t) for t in table[text_column]], "label": labels}
    if text_pair_column is not None:
        columns["text_pair"] = [str(t) for t in table[text_pair_column]]
    dataset = Dataset.from_dict(columns)
    if limit is not None and limit < len(dataset):
        indices = sorted(random.Random(seed).sample(range(len(dataset)), limit))
        dataset = dataset.select(indices)
    return dataset.cast_column("label", ClassLabel(names=list(label_names)))


def phrases_within(texts: list[str], held_out: list[str], min_words: int = 3) -> list[int]:
    """Indices of the `texts` that are a run of at least `min_words` consecutive words of a `held_out` text.

    Phrase-level datasets hold the phrases of their sentences as examples of their own (GLUE SST-2's training set is
    mostly the labelled sub-phrases of its sentences). Holding out some sentences for calibration does not hold out
    their phrases: a model trained on those has read most of each held-out sentence with its labels, is more confident
    on it than on new text, and thresholds calibrated there leave more examples early than they do on new text. Drop
    these indices from the training set to make the held-out sentences as new as the dev set (see
    `benchmarks/calibration_overlap.py`). Words are compared case-insensitively, split on whitespace.

    Args:
        texts: The candidate training texts.
        held_out: The held-out texts (e.g. the calibration sentences).
        min_words: Shortest run that counts (shorter phrases, "the film", are common to any text).
    """
    if min_words < 1:
        raise ValueError(f"`min_words` must be at least 1, got {min_words}.")
    held = [text.lower().split() for text in held_out]
    starts: dict[tuple[str, ...], list[tuple[int, int]]] = {}  # first `min_words` words -> (held-out text, position)
    for h, words in enumerate(held):
        for position in range(len(words) - min_words + 1):
            starts.setdefault(tuple(words[position : position + min_words]), []).append((h, position))
    found = []
    for i, text in enumerate(texts):
        words = text.lower().split()
        if len(words) < min_words:
            continue
        candidates = starts.get(tuple(words[:min_words]), ())
        if any(held[h][position : position + len(words)] == words for h, position in candidates):
            found.append(i)
    return found


def label_names_of(dataset: Dataset, column: str = "label") -> list[str]:
    """Class names stored in a `ClassLabel` column (as written by the loaders here)."""
    feature = dataset.features[column]
    names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    if names is None:
        raise ValueError(f"Column {column!r} carries no class names.")
    return list(names)


def read_conll(
    path: str | os.PathLike, tag_column: int = -1, label_names: list[str] | None = None, limit: int | None = None
) -> Dataset:
    """Read a CoNLL column file (one token per line, blank line between sentences, `-DOCSTART-` lines skipped).

    Args:
        path: The file, e.g. CoNLL-2003 `valid.txt` (`word POS chunk NER`).
        tag_column: Column holding the tag to predict (default: the last one).
        label_names: Tag names in index order; defaults to the sorted tags found, with `O` first.
        limit: Keep the first `limit` sentences.

    Returns:
        A `Dataset` with `tokens` (list of words) and `tags` (a `Sequence(ClassLabel)` of tag indices).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    sentences, tags, words, word_tags = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append(words)
                    tags.append(word_tags)
                    words, word_tags = [], []
                continue
            fields = line.split()
            if len(fields) < 2:
                raise ValueError(f"{path}, line {line_number}: expected a word and at least one tag, got {line!r}.")
            words.append(fields[0])
            word_tags.append(fields[tag_column])
    if words:
        sentences.append(words)
        tags.append(word_tags)
    if limit is not None:
        sentences, tags = sentences[:limit], tags[:limit]
    if label_names is None:
        found = sorted({t for sentence in tags for t in sentence})
        label_names = (["O"] if "O" in found else []) + [t for t in found if t != "O"]
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({t for sentence in tags for t in sentence} - set(index))
    if unknown:
        raise ValueError(f"tags {unknown[:5]} in {path} are not in label_names {label_names}.")
    features = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=label_names))})
    return Dataset.from_dict(
        {"tokens": sentences, "tags": [[index[t] for t in sentence] for sentence in tags]}, features=features
    )


def tokenize_token_dataset(dataset: Dataset, tokenizer, max_length: int | None = None) -> Dataset:
    """Tokenize a [`read_conll`] dataset (`tokens`, `tags`) for [`BertForTokenEarlyExit`].

    Each word's tag goes to its first word-piece (-100 elsewhere) and every position gets its word id (-1 for special
    tokens), through [`encode_words`]. Batch it with [`DataCollatorForTokenEarlyExit`].

    Returns:
        A `Dataset` with `input_ids`, `attention_mask`, `token_type_ids` (when the tokenizer makes them), `word_ids`
        and `labels`, one row per sentence, unpadded.
    """
    from .models.bert.token_exit_utils import encode_words

    for column in ("tokens", "tags"):
        if column not in dataset.column_names:
            raise ValueError(
                f"The dataset needs a `{column}` column (as `read_conll` returns); it has {dataset.column_names}."
            )

    def encode(rows):
        encoded = encode_words(
            tokenizer, rows["tokens"], rows["tags"], max_length=max_length, padding=False, return_tensors=None
        )
        return dict(encoded)

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def _pad_teacher_logits(rows: list):
    """`(batch, max words, num_labels)` from per-row lists of per-word logits (zeros after a row's last word)."""
    import torch

    if any(row is None for row in rows):
        raise ValueError("Some rows have `teacher_logits` and others do not; give them to every row or to none.")
    tensors = [torch.as_tensor(row, dtype=torch.float) for row in rows]
    num_labels = next((t.shape[-1] for t in tensors if t.numel()), 1)
    padded = torch.zeros(len(tensors), max(len(t) for t in tensors), num_labels)
    for i, t in enumerate(tensors):
        if t.numel():
            padded[i, : len(t)] = t
    return padded


class DataCollatorForTokenEarlyExit:
    """Pads token-classification rows with word ids: `labels` with -100 and `word_ids` with -1, the rest as the
    tokenizer pads them (transformers' `DataCollatorForTokenClassification` does not know `word_ids`). A
    `teacher_logits` column (per row, one list of logits per labelled word, for the `teacher_distillation` recipe) is
    padded with zeros to `(batch, max words, num_labels)`.

    Args:
        tokenizer: The model's tokenizer.
        pad_to_multiple_of: As for the tokenizer's `pad`.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorForTokenClassification

        self.collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.padding_side = tokenizer.padding_side

    def __call__(self, features: list[dict]) -> dict:
        import torch

        word_ids = [feature.get("word_ids") for feature in features]
        teacher = [feature.get("teacher_logits") for feature in features]
        rest = [
            {key: value for key, value in feature.items() if key not in ("word_ids", "teacher_logits")}
            for feature in features
        ]
        batch = self.collator(rest)
        if any(rows is not None for rows in teacher):
            batch["teacher_logits"] = _pad_teacher_logits(teacher)
        if all(ids is None for ids in word_ids):
            return batch
        if any(ids is None for ids in word_ids):
            raise ValueError("Some rows have `word_ids` and others do not; give them to every row or to none.")
        length = batch["input_ids"].shape[1]
        padded = []
        for ids in word_ids:
            ids = list(ids)
            fill = [-1] * (length - len(ids))
            padded.append(ids + fill if self.padding_side == "right" else fill + ids)
        batch["word_ids"] = torch.tensor(padded, dtype=torch.long)
        return batch
