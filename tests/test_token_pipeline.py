"""The exit-aware token-classification pipeline (`pipeline("token-classification", ...)` after `import hf_earlyexit`)."""

import random

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, TokenClassificationPipeline, pipeline

import hf_earlyexit  # noqa: F401  (registers the exit-aware pipelines)
from hf_earlyexit import EarlyExitTokenClassificationPipeline, encode_words
from tests.test_modeling_token_exit_bert import tiny_model
from tests.utils import TINY_BERT, WORDS, tiny_config_kwargs


NUM_LAYERS = TINY_BERT["num_hidden_layers"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
LABELS = {"id2label": dict(enumerate(TAGS)), "label2id": {tag: i for i, tag in enumerate(TAGS)}}


def sentences(n=8, seed=0):
    """Texts of known words and of unknown ones (split into letter word-pieces by the tiny vocabulary)."""
    rng = random.Random(seed)
    pool = [*WORDS, "xqz", "blorf", "zut"]
    return [" ".join(rng.choice(pool) for _ in range(rng.randint(2, 12))) for _ in range(n)]


@pytest.fixture
def saved(tmp_path, tokenizer):
    model = tiny_model(num_labels=len(TAGS), **LABELS)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return model, str(tmp_path / "model")


def direct(model, tokenizer, text, **kwargs):
    """Per word-piece (tag, exit layer) of the model called on the text's words (the tokenizer's `word_ids`)."""
    batch = encode_words(tokenizer, [text.split()])
    with torch.no_grad():
        out = model(**batch, **kwargs)
    tags = [TAGS[i] for i in out.logits[0].argmax(-1).tolist()]
    return tags, out.exit_layer[0].tolist()


def test_pipeline_is_exit_aware_and_matches_the_model(saved, tokenizer):
    model, path = saved
    ner = pipeline("token-classification", model=path, tokenizer=tokenizer, exit_threshold=0.45, window_size=3)
    assert isinstance(ner, EarlyExitTokenClassificationPipeline)
    seen_layers = set()
    for text in sentences():
        tags, layers = direct(model, tokenizer, text, exit_threshold=0.45, window_size=3)
        results = ner(text, ignore_labels=[])
        assert [r["index"] for r in results] == list(range(1, len(tags) - 1))
        assert [r["entity"] for r in results] == tags[1:-1]
        assert [r["exit_layer"] for r in results] == layers[1:-1]
        seen_layers |= {r["exit_layer"] for r in results}
    assert len(seen_layers) >= 2, seen_layers


def test_threshold_per_call_overrides_construction(saved, tokenizer):
    _, path = saved
    ner = pipeline("ner", model=path, tokenizer=tokenizer, exit_threshold=0.0)
    text = sentences(1)[0]
    assert {r["exit_layer"] for r in ner(text, ignore_labels=[])} == {NUM_LAYERS}
    assert {r["exit_layer"] for r in ner(text, ignore_labels=[], exit_threshold=1.0)} == {1}
    assert {r["exit_layer"] for r in ner(text, ignore_labels=[], early_exit=False)} == {NUM_LAYERS}
    # SENTEE: one exit layer for the whole sentence
    assert len({r["exit_layer"] for r in ner(text, ignore_labels=[], exit_mode="sentence", exit_threshold=0.6)}) == 1
    # the construction setting is untouched by the calls, and the model's config too
    assert {r["exit_layer"] for r in ner(text, ignore_labels=[])} == {NUM_LAYERS}
    assert ner.model.config.exit_threshold == 0.1


def test_aggregated_entities_report_the_deepest_exit_of_their_pieces(saved, tokenizer):
    _, path = saved
    ner = pipeline("token-classification", model=path, tokenizer=tokenizer, exit_threshold=0.45, window_size=3)
    for text in sentences(seed=1):
        pieces = ner(text, ignore_labels=[])
        for strategy in ("simple", "first", "max"):
            entities = ner(text, ignore_labels=[], aggregation_strategy=strategy)
            assert entities
            for entity in entities:
                inside = [
                    p["exit_layer"] for p in pieces if entity["start"] <= p["start"] and p["end"] <= entity["end"]
                ]
                assert entity["exit_layer"] == max(inside)


def test_pre_split_words_use_the_tokenizers_word_ids(saved, tokenizer):
    model, path = saved
    ner = pipeline("token-classification", model=path, tokenizer=tokenizer, exit_threshold=0.45, window_size=3)
    for text in sentences(seed=2):
        _, layers = direct(model, tokenizer, text, exit_threshold=0.45, window_size=3)
        (results,) = ner([text.split()], is_split_into_words=True, ignore_labels=[])
        assert [r["exit_layer"] for r in results] == layers[1:-1]


def test_batched_calls_and_empty_input(saved, tokenizer):
    _, path = saved
    ner = pipeline("token-classification", model=path, tokenizer=tokenizer, aggregation_strategy="simple")
    texts = sentences()
    one_by_one = [ner(text, exit_threshold=0.45) for text in texts]
    batched = ner(texts, exit_threshold=0.45, batch_size=4)
    for got, want in zip(batched, one_by_one, strict=True):
        assert [{**r, "score": None} for r in got] == [{**r, "score": None} for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)
    assert ner([]) == []


def test_stock_token_classifier_is_unaffected(tmp_path, tokenizer):
    model = BertForTokenClassification(BertConfig(**tiny_config_kwargs(num_labels=len(TAGS), **LABELS))).eval()
    ours = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")
    stock = TokenClassificationPipeline(model=model, tokenizer=tokenizer, aggregation_strategy="simple")
    for text in sentences():
        got, want = ours(text, ignore_labels=[]), stock(text, ignore_labels=[])
        assert got == want and all("exit_layer" not in r for r in got)
    assert ours(sentences(3), ignore_labels=[]) == stock(sentences(3), ignore_labels=[])


def test_bad_exit_arguments(saved, tokenizer):
    _, path = saved
    ner = pipeline("token-classification", model=path, tokenizer=tokenizer)
    with pytest.raises(TypeError, match="patience"):  # not an exit argument of this family: as stock, a TypeError
        ner("the film", patience=2)
    with pytest.raises(ValueError, match="window_size"):
        ner("the film", window_size=4)
    with pytest.raises(ValueError, match="exit_mode"):
        ner("the film", exit_mode="word")
    with pytest.raises(ValueError, match="exit_threshold"):
        ner("the film", exit_threshold=1.5)


def test_derived_words_are_the_tokenizers_words_on_conll(saved, minilm):
    """On real CoNLL-2003 sentences and the MiniLM WordPiece tokenizer, the words the pipeline derives from raw text
    are the tokenizer's own `word_ids()` (the `##` continuation rule)."""
    from transformers import AutoTokenizer

    from hf_earlyexit.data import read_conll
    from tests.test_modeling_token_exit_bert import CONLL_VALID

    if not CONLL_VALID.is_file():
        pytest.skip("CoNLL-2003 is not in ../shared/data/conll2003")
    _, path = saved
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    ner = pipeline("token-classification", model=path, tokenizer=tokenizer)
    for words in read_conll(CONLL_VALID, limit=200)["tokens"]:
        text = " ".join(words)
        (model_inputs,) = ner.preprocess(text, **ner._preprocess_params)
        expected = [-1 if w is None else w for w in tokenizer(text).word_ids()]
        assert model_inputs["exit_word_ids"][0].tolist() == expected, text
