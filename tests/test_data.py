import pytest

from hf_earlyexit.data import label_names_of, load_text_classification, phrases_within, read_conll
from tests.utils import SST2_DIR


def test_sst2_dev(repo_root):
    dataset = load_text_classification(SST2_DIR / "dev.tsv")
    assert len(dataset) == 872
    assert dataset[0] == {"text": "it 's a charming and often affecting journey . ", "label": 1}
    assert label_names_of(dataset) == ["0", "1"]
    assert sum(dataset["label"]) == 444


def test_subset_is_deterministic():
    a = load_text_classification(SST2_DIR / "dev.tsv", limit=50, seed=1)
    b = load_text_classification(SST2_DIR / "dev.tsv", limit=50, seed=1)
    c = load_text_classification(SST2_DIR / "dev.tsv", limit=50, seed=2)
    assert a["text"] == b["text"] and a["text"] != c["text"] and len(a) == 50


def test_pairs_csv_and_jsonl(tmp_path):
    (tmp_path / "pairs.csv").write_text('sentence1,sentence2,label\n"a, b",c,yes\nd,e,no\n')
    dataset = load_text_classification(tmp_path / "pairs.csv")
    assert dataset["text"] == ["a, b", "d"] and dataset["text_pair"] == ["c", "e"]
    assert label_names_of(dataset) == ["no", "yes"] and dataset["label"] == [1, 0]
    (tmp_path / "rows.jsonl").write_text('{"review": "good", "y": "pos"}\n{"review": "bad", "y": "neg"}\n')
    dataset = load_text_classification(
        tmp_path / "rows.jsonl", text_column="review", label_column="y", label_names=["neg", "pos"]
    )
    assert dataset["label"] == [1, 0]


def test_conll(tmp_path):
    (tmp_path / "x.txt").write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
    )
    dataset = read_conll(tmp_path / "x.txt")
    assert dataset["tokens"] == [["EU", "rejects"], ["Peter"]]
    names = dataset.features["tags"].feature.names
    assert names[0] == "O" and [names[t] for t in dataset["tags"][0]] == ["B-ORG", "O"]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda d: load_text_classification(d / "missing.tsv"), FileNotFoundError, "Data file not found"),
        (
            lambda d: load_text_classification(SST2_DIR / "dev.tsv", label_column="y"),
            ValueError,
            r"label column 'y' does not exist; the data has \['sentence', 'label'\]",
        ),
        (
            lambda d: load_text_classification(SST2_DIR / "dev.tsv", label_names=["neg"]),
            ValueError,
            "not in label_names",
        ),
        (lambda d: load_text_classification("glue"), ValueError, "also pass `split`"),
        (lambda d: read_conll(d / "missing.txt"), FileNotFoundError, "Data file not found"),
    ],
)
def test_bad_input(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path)


def test_ragged_tsv(tmp_path):
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\nok\t1\nno label here\n")
    with pytest.raises(ValueError, match="line 3: 1 fields where the header has 2"):
        load_text_classification(tmp_path / "bad.tsv")


def test_phrases_within_finds_the_held_out_sentences_phrases():
    held_out = ["a gripping , beautifully shot film about grief", "The plot never comes together"]
    texts = [
        "beautifully shot film",  # 0: a run of 3 words of the first sentence
        "a gripping , beautifully shot film about grief",  # 1: the whole sentence
        "shot film",  # 2: too short to count
        "beautifully film",  # 3: not consecutive
        "the PLOT never",  # 4: case does not matter
        "film about grief and loss",  # 5: runs past the end
        "never comes together the plot",  # 6: the words, in another order
    ]
    assert phrases_within(texts, held_out) == [0, 1, 4]
    assert phrases_within(texts, held_out, min_words=2) == [0, 1, 2, 4]
    assert phrases_within(texts, held_out, min_words=7) == [1]
    assert phrases_within(texts, []) == []
    with pytest.raises(ValueError, match="`min_words` must be at least 1, got 0"):
        phrases_within(texts, held_out, min_words=0)
