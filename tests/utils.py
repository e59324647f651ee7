"""Helpers shared by the tests: tiny configs, a tokenizer from a written vocab, real SST-2 sentences."""

import csv
from pathlib import Path

from transformers import BertTokenizerFast

from hf_earlyexit.utils import TINY_BERT


REPO_ROOT = Path(__file__).resolve().parent.parent
SST2_DIR = REPO_ROOT / "data" / "sst2"


WORDS = (
    "the a an film movie story acting plot good bad great awful boring fun funny dull sad happy long short "
    "not very is was it this that and but of to in with for on best worst love hate slow fast charming mess"
).split()


def tiny_config_kwargs(**overrides):
    return {**TINY_BERT, **overrides}


def tiny_tokenizer(directory: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over a 99-token vocabulary written to `directory`."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = special + WORDS + letters + [".", ",", "'", "!"]
    vocab = list(dict.fromkeys(vocab))[: TINY_BERT["vocab_size"]]
    vocab += [f"[unused{i}]" for i in range(TINY_BERT["vocab_size"] - len(vocab))]
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    # transformers 5 builds the WordPiece model from a `vocab` mapping (a `vocab_file` argument is silently ignored)
    return BertTokenizerFast(
        vocab={token: i for i, token in enumerate(vocab)},
        do_lower_case=True,
        model_max_length=TINY_BERT["max_position_embeddings"],
    )


def sst2_rows(split: str = "dev", limit: int | None = None) -> list[tuple[str, int]]:
    with open(SST2_DIR / f"{split}.tsv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        rows = [(sentence, int(label)) for sentence, label in reader]
    return rows[:limit] if limit else rows


def weights_only(checkpoint, target) -> Path:
    """A copy of `checkpoint` with only its config and weights, as a training script's `save_model` leaves a model
    saved without its tokenizer."""
    import shutil

    target = Path(target)
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(checkpoint, name), target / name)
    return target
