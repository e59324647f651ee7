import json
import logging
import random
import shutil
from dataclasses import dataclass

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    TextClassificationPipeline,
    pipeline,
)
from transformers.pipelines import PIPELINE_REGISTRY

import hf_earlyexit
from hf_earlyexit import BertWithBypassExits, EarlyExitSequenceClassifierOutput, EarlyExitTextClassificationPipeline
from hf_earlyexit.registration import register
from tests.test_modeling_bypass_bert import spread_thresholds, tiny_model
from tests.utils import TINY_BERT, WORDS, sst2_rows, tiny_config_kwargs


NUM_LAYERS = TINY_BERT["num_hidden_layers"]
MAX_POSITIONS = TINY_BERT["max_position_embeddings"]


def sentences(n=20, seed=0, max_words=30):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def model_answer(model, tokenizer, text, **forward_kwargs):
    """(label, score, exit_layer) of the model called directly on one text, truncated to the model's positions."""
    pair = text if isinstance(text, dict) else {"text": text}
    encoding = tokenizer(**pair, truncation=True, max_length=MAX_POSITIONS, return_tensors="pt")
    with torch.no_grad():
        out = model(**encoding, **forward_kwargs)
    probs = out.logits[0].softmax(-1)
    return model.config.id2label[int(probs.argmax())], float(probs.max()), int(out.exit_layer[0])


def assert_same_results(results, expected, atol=1e-5):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert got.keys() == want.keys()
        for key in want:
            if key == "score":
                assert got[key] == pytest.approx(want[key], abs=atol)
            else:
                assert got[key] == want[key], key


@pytest.fixture
def model():
    return tiny_model(num_labels=3)


@pytest.fixture
def texts():
    return sentences()


@pytest.fixture
def mixed_thresholds(model, tokenizer, texts):
    """Per-exit thresholds under which the texts leave at several different layers."""
    return spread_thresholds(model, tokenizer(texts, padding=True, return_tensors="pt"))


@pytest.fixture
def stock_model():
    return BertForSequenceClassification(BertConfig(**tiny_config_kwargs(num_labels=3))).eval()


class _CapturedWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# --- registration ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["text-classification", "sentiment-analysis"])
def test_pipeline_builds_the_exit_aware_class(task, model, tokenizer):
    pipe = pipeline(task, model=model, tokenizer=tokenizer)
    assert type(pipe) is EarlyExitTextClassificationPipeline


def test_registration_is_idempotent_silent_and_keeps_the_stock_entry():
    entry = PIPELINE_REGISTRY.supported_tasks["text-classification"]
    assert entry["impl"] is EarlyExitTextClassificationPipeline
    assert entry["pt"] == (AutoModelForSequenceClassification,)
    assert entry["type"] == "text"
    assert entry["default"]["model"][0] == "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    captured = _CapturedWarnings()
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(captured)
    try:
        register()
        register()
    finally:
        transformers_logger.removeHandler(captured)
    assert captured.messages == []
    assert PIPELINE_REGISTRY.supported_tasks["text-classification"] is entry
    # not marked as a custom pipeline: `pipe.save_pretrained` must not write `custom_pipelines` into stock models
    assert not hasattr(EarlyExitTextClassificationPipeline, "_registered_impl")


def test_package_exports_the_pipeline():
    assert "EarlyExitTextClassificationPipeline" in hf_earlyexit.__all__
    assert hf_earlyexit.__all__ == sorted(hf_earlyexit.__all__)


# --- thresholds and the other exit arguments -------------------------------------------------------------------------


def test_threshold_extremes_at_construction_and_call(model, tokenizer, texts):
    before = model.config.to_dict()
    always = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=0.0)
    assert [r["exit_layer"] for r in always(texts)] == [1] * len(texts)
    assert [r["exit_layer"] for r in always(texts, exit_threshold=1.0)] == [NUM_LAYERS] * len(texts)
    # the call's value did not stick: the construction-time value holds again
    assert [r["exit_layer"] for r in always(texts)] == [1] * len(texts)
    never = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=1.0)
    assert [r["exit_layer"] for r in never(texts, batch_size=16)] == [NUM_LAYERS] * len(texts)
    assert [r["exit_layer"] for r in never(texts, exit_threshold=0.0, batch_size=16)] == [1] * len(texts)
    assert model.config.to_dict() == before
    assert always._forward_params == {"exit_threshold": 0.0}


def test_results_equal_the_model_on_each_text(model, tokenizer, texts, mixed_thresholds):
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer)
    results = pipe(texts, exit_threshold=mixed_thresholds)
    expected = [model_answer(model, tokenizer, t, exit_threshold=mixed_thresholds) for t in texts]
    assert len({layer for _, _, layer in expected}) >= 3  # the texts really leave at different layers
    assert_same_results(results, [{"label": lab, "score": s, "exit_layer": layer} for lab, s, layer in expected])
    # without exit arguments the config's settings apply, exactly as in a direct call
    expected = [model_answer(model, tokenizer, t) for t in texts]
    assert_same_results(pipe(texts), [{"label": lab, "score": s, "exit_layer": layer} for lab, s, layer in expected])


def test_batched_equals_one_at_a_time(model, tokenizer, texts, mixed_thresholds):
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=mixed_thresholds)
    singles = pipe(texts)
    batched = pipe(texts, batch_size=16)
    assert len({r["exit_layer"] for r in singles}) >= 3
    assert_same_results(batched, singles)
    batched_at_construction = pipeline(
        "text-classification", model=model, tokenizer=tokenizer, exit_threshold=mixed_thresholds, batch_size=16
    )
    assert_same_results(batched_at_construction(texts), singles)


@pytest.mark.parametrize(
    "settings",
    [
        {"exit_criterion": "entropy", "exit_threshold": 1.05},
        {"exit_criterion": "normalized_entropy", "exit_threshold": 0.97},
        {"exit_criterion": "patience", "patience": 1},
        {"exit_criterion": "patience", "patience": 2},
        {"exit_criterion": "divergence", "divergence": "kl", "exit_threshold": 0.001},
        {"exit_criterion": "divergence", "divergence": "symmetric_kl", "patience": 2, "exit_threshold": 0.01},
        {"early_exit": False, "exit_threshold": 0.0},
    ],
)
def test_every_exit_argument_reaches_the_model(settings, model, tokenizer, texts):
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, **settings)
    expected = [model_answer(model, tokenizer, t, **settings) for t in texts]
    expected = [{"label": lab, "score": s, "exit_layer": layer} for lab, s, layer in expected]
    assert_same_results(pipe(texts), expected)
    assert_same_results(pipe(texts, batch_size=16), expected)
    if settings.get("early_exit") is False:
        assert {r["exit_layer"] for r in expected} == {NUM_LAYERS}


def test_top_k_carries_the_exit_fields(model, tokenizer, texts):
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=0.0)
    every_label = pipe(texts[:3], top_k=None)
    for ranking, text in zip(every_label, texts[:3]):
        assert [r["exit_layer"] for r in ranking] == [1, 1, 1]
        assert sum(r["score"] for r in ranking) == pytest.approx(1.0, abs=1e-6)
        assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
        label, score, _ = model_answer(model, tokenizer, text, exit_threshold=0.0)
        assert (ranking[0]["label"], ranking[0]["score"]) == (label, pytest.approx(score, abs=1e-6))
    assert pipe(texts[0], top_k=None, exit_threshold=1.0)[0]["exit_layer"] == NUM_LAYERS
    assert [r["exit_layer"] for r in pipe(texts[0], top_k=2)] == [1, 1]


def test_bad_exit_value_is_reported_by_the_model(model, tokenizer):
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=1.5)  # not checked here
    with pytest.raises(ValueError, match=r"`exit_threshold` for criterion 'max_prob' .* \[0, 1\], got 1.5"):
        pipe("a good film")
    with pytest.raises(ValueError, match="`patience` must be an integer >= 1, got 0"):
        pipe("a good film", exit_threshold=0.5, exit_criterion="patience", patience=0)


class _ThresholdOnlyModel(BertWithBypassExits):
    """An early-exit model whose forward takes `exit_threshold` but no other exit argument (like a cascade)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, exit_threshold=None, **kwargs):
        return super().forward(input_ids, attention_mask, token_type_ids, exit_threshold=exit_threshold, **kwargs)


def test_exit_argument_the_model_does_not_take(tokenizer):
    model = _ThresholdOnlyModel(tiny_model().config).eval()
    message = r"_ThresholdOnlyModel.forward does not take `patience`, `divergence`; .* takes are `exit_threshold`"
    with pytest.raises(ValueError, match=message):
        pipeline("text-classification", model=model, tokenizer=tokenizer, patience=2, divergence="kl")
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=0.0)
    assert pipe("a good film")[0]["exit_layer"] == 1
    with pytest.raises(ValueError, match="does not take `early_exit`"):
        pipe("a good film", early_exit=False)
    with pytest.raises(ValueError, match="does not take `early_exit`"):
        pipe([], early_exit=False)


@dataclass
class _StagedOutput(EarlyExitSequenceClassifierOutput):
    exit_stage: torch.LongTensor | None = None


class _StagedModel(BertWithBypassExits):
    """Returns one more per-example exit field, as the cascade family does."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, exit_threshold=None, **kwargs):
        out = super().forward(input_ids, attention_mask, token_type_ids, exit_threshold=exit_threshold, **kwargs)
        return _StagedOutput(**out, exit_stage=(out.exit_layer - 1) // 2)


def test_every_declared_exit_field_is_carried(tokenizer, texts):
    model = _StagedModel(tiny_model(num_labels=3).config).eval()
    thresholds = spread_thresholds(model, tokenizer(texts, padding=True, return_tensors="pt"))
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=thresholds)
    singles = pipe(texts)
    assert_same_results(pipe(texts, batch_size=16), singles)
    assert all(r["exit_stage"] == (r["exit_layer"] - 1) // 2 for r in singles)
    assert {r["exit_stage"] for r in singles} == {0, 1}


def test_training_mode_is_warned_about(model, tokenizer, caplog):
    pipe = pipeline("text-classification", model=model.train(), tokenizer=tokenizer, exit_threshold=0.0)
    with caplog.at_level(logging.WARNING, logger="hf_earlyexit.pipelines"):
        pipe("a good film")
    assert "is in training mode" in caplog.text
    assert "model.eval()" in caplog.text


# --- edge inputs ------------------------------------------------------------------------------------------------------


def test_empty_list(model, tokenizer, stock_model):
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=0.5)
    assert pipe([]) == []
    assert pipe([], batch_size=16, top_k=None, exit_threshold=0.0) == []
    # the stock pipeline peeks at `inputs[0]`; with a stock model the plugin keeps that behaviour
    with pytest.raises(IndexError):
        TextClassificationPipeline(model=stock_model, tokenizer=tokenizer)([])
    with pytest.raises(IndexError):
        pipeline("text-classification", model=stock_model, tokenizer=tokenizer)([])


def test_empty_string_is_classified_like_any_text(model, tokenizer, mixed_thresholds):
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=mixed_thresholds)
    label, score, layer = model_answer(model, tokenizer, "", exit_threshold=mixed_thresholds)
    expected = {"label": label, "score": score, "exit_layer": layer}
    assert_same_results(pipe(""), [expected])
    assert_same_results(pipe(["", "a good film", ""], batch_size=16)[::2], [expected, expected])


def test_long_text_is_truncated_to_the_model_positions(model, tokenizer, mixed_thresholds, tmp_path):
    long_text = " ".join(sentences(1, seed=1, max_words=1)[0] for _ in range(3 * MAX_POSITIONS))
    assert len(tokenizer(long_text)["input_ids"]) > MAX_POSITIONS
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=mixed_thresholds)
    label, score, layer = model_answer(model, tokenizer, long_text, exit_threshold=mixed_thresholds)
    expected = [{"label": label, "score": score, "exit_layer": layer}]
    assert_same_results(pipe(long_text), expected)
    assert_same_results(pipe([long_text, "a good film"], batch_size=16)[:1], expected)

    # the model's positions bound the length even when the tokenizer knows no maximum
    tokenizer.save_pretrained(tmp_path)
    unbounded = AutoTokenizer.from_pretrained(tmp_path, model_max_length=int(1e30))
    pipe_unbounded = pipeline("text-classification", model=model, tokenizer=unbounded)
    assert_same_results(pipe_unbounded(long_text, exit_threshold=mixed_thresholds), expected)

    # overridable: a shorter `max_length`, or no truncation at all (the model then refuses the input, naming the limit)
    short = tokenizer(long_text, truncation=True, max_length=10, return_tensors="pt")
    with torch.no_grad():
        out = model(**short, exit_threshold=mixed_thresholds)
    assert pipe(long_text, max_length=10)[0]["exit_layer"] == int(out.exit_layer[0])
    assert pipe(long_text, max_length=10)[0]["score"] == pytest.approx(float(out.logits.softmax(-1).max()), abs=1e-5)
    with pytest.raises(ValueError, match=f"positions but BertWithBypassExits has {MAX_POSITIONS} position embeddings"):
        pipe(long_text, truncation=False)


def test_text_pairs(model, tokenizer, texts, mixed_thresholds):
    pairs = [{"text": a, "text_pair": b} for a, b in zip(texts[::2], texts[1::2])]
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, exit_threshold=mixed_thresholds)
    expected = [model_answer(model, tokenizer, p, exit_threshold=mixed_thresholds) for p in pairs]
    expected = [{"label": lab, "score": s, "exit_layer": layer} for lab, s, layer in expected]
    assert_same_results([pipe(p) for p in pairs], expected)  # one dict: returned as the stock pipeline does
    assert_same_results(pipe(pairs), expected)
    assert_same_results(pipe(pairs, batch_size=16), expected)
    # a pair longer than the model's positions is truncated too
    long_pair = {"text": " ".join(texts), "text_pair": " ".join(texts)}
    label, score, layer = model_answer(model, tokenizer, long_pair, exit_threshold=mixed_thresholds)
    assert_same_results([pipe(long_pair)], [{"label": label, "score": score, "exit_layer": layer}])


# --- stock models are left alone ------------------------------------------------------------------------------------


def test_stock_model_behaves_as_without_the_plugin(stock_model, tokenizer, texts, monkeypatch):
    inputs = [*texts[:6], "", {"text": texts[0], "text_pair": texts[1]}]
    calls = [
        ({}, {}),
        ({"exit_threshold": 0.9}, {}),
        ({}, {"exit_threshold": 0.5, "patience": 3, "early_exit": False}),
        ({"exit_threshold": 0.9}, {"top_k": None}),
        ({}, {"batch_size": 16}),
        ({"exit_criterion": "entropy", "batch_size": 16}, {"top_k": 2, "exit_threshold": 0.1}),
    ]
    plugin_results = []
    for init_kwargs, call_kwargs in calls:
        pipe = pipeline("text-classification", model=stock_model, tokenizer=tokenizer, **init_kwargs)
        assert type(pipe) is EarlyExitTextClassificationPipeline
        assert not pipe.is_early_exit_model
        direct = TextClassificationPipeline(model=stock_model, tokenizer=tokenizer, **init_kwargs)
        # stock transformers hands unknown keyword arguments to the tokenizer; so does the plugin for stock models
        assert pipe._preprocess_params == direct._preprocess_params
        assert pipe._forward_params == direct._forward_params == {}
        results = [pipe(x, **call_kwargs) for x in inputs]
        assert results == [direct(x, **call_kwargs) for x in inputs]
        assert pipe(inputs[:6], **call_kwargs) == direct(inputs[:6], **call_kwargs)
        plugin_results.append(results)
    # and `pipeline()` itself, with the stock registry entry back in place, gives the same
    stock_entry = {**PIPELINE_REGISTRY.supported_tasks["text-classification"], "impl": TextClassificationPipeline}
    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, "text-classification", stock_entry)
    for (init_kwargs, call_kwargs), results in zip(calls, plugin_results):
        pipe = pipeline("text-classification", model=stock_model, tokenizer=tokenizer, **init_kwargs)
        assert type(pipe) is TextClassificationPipeline
        assert [pipe(x, **call_kwargs) for x in inputs] == results
    # exit arguments change nothing for a stock model
    assert plugin_results[1] == plugin_results[0]


def test_stock_model_long_text_fails_as_without_the_plugin(stock_model, tokenizer):
    long_text = "good " * (2 * MAX_POSITIONS)
    for pipe_class in (TextClassificationPipeline, EarlyExitTextClassificationPipeline):
        with pytest.raises(RuntimeError, match="must match the size"):
            pipe_class(model=stock_model, tokenizer=tokenizer)(long_text)
    assert pipeline("text-classification", model=stock_model, tokenizer=tokenizer, truncation=True)(long_text) == (
        TextClassificationPipeline(model=stock_model, tokenizer=tokenizer, truncation=True)(long_text)
    )


# --- shipping the pipeline with a checkpoint --------------------------------------------------------------------------


@pytest.mark.parametrize("declared_task", ["text-classification", "early-exit-text-classification"])
def test_pipeline_file_works_as_remote_code(declared_task, model, tokenizer, texts, tmp_path):
    """The pipeline file is self-contained: declared in `custom_pipelines`, `trust_remote_code=True` loads it."""
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["custom_pipelines"] = {
        declared_task: {
            "impl": "pipelines.EarlyExitTextClassificationPipeline",
            "pt": ["AutoModelForSequenceClassification"],
            "type": "text",
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(tmp_path)
    shutil.copy(hf_earlyexit.pipelines.__file__, tmp_path / "pipelines.py")

    # with a single declared task, `pipeline()` takes it from the config
    pipe = pipeline(model=str(tmp_path), trust_remote_code=True, exit_threshold=0.0)
    assert type(pipe).__name__ == "EarlyExitTextClassificationPipeline"
    assert type(pipe) is not EarlyExitTextClassificationPipeline  # the checkpoint's copy
    assert [r["exit_layer"] for r in pipe(texts, exit_threshold=1.0, batch_size=16)] == [NUM_LAYERS] * len(texts)
    assert [r["exit_layer"] for r in pipe(texts)] == [1] * len(texts)

    if declared_task == "text-classification":
        # transformers then refuses the task without `trust_remote_code`, even with the plugin imported...
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            pipeline("text-classification", model=str(tmp_path))
        # ...unless the class is given
        pipe = pipeline("text-classification", model=str(tmp_path), pipeline_class=EarlyExitTextClassificationPipeline)
    else:
        pipe = pipeline("text-classification", model=str(tmp_path))
    assert type(pipe) is EarlyExitTextClassificationPipeline
    assert [r["exit_layer"] for r in pipe(texts, exit_threshold=0.0)] == [1] * len(texts)


# --- the real MiniLM backbone on SST-2 dev sentences ----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_pipeline(minilm):
    torch.manual_seed(0)
    model = BertWithBypassExits.from_pretrained(minilm, num_labels=2).eval()
    return pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(minilm))


@pytest.mark.slow
def test_minilm_on_sst2(minilm_pipeline):
    pipe = minilm_pipeline
    model, tokenizer = pipe.model, pipe.tokenizer
    num_layers = model.config.num_hidden_layers
    dev = [sentence for sentence, _ in sst2_rows("dev", limit=32)]
    assert [r["exit_layer"] for r in pipe(dev, exit_threshold=0.0, batch_size=16)] == [1] * len(dev)
    assert [r["exit_layer"] for r in pipe(dev, exit_threshold=1.0, batch_size=16)] == [num_layers] * len(dev)

    thresholds = spread_thresholds(model, tokenizer(dev, padding=True, return_tensors="pt"))
    singles = pipe(dev, exit_threshold=thresholds)
    assert len({r["exit_layer"] for r in singles}) >= 3
    assert_same_results(pipe(dev, exit_threshold=thresholds, batch_size=16), singles)
    for result, sentence in zip(singles, dev):
        encoding = tokenizer(sentence, truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**encoding, exit_threshold=thresholds)
        assert result["exit_layer"] == int(out.exit_layer[0])
        assert result["score"] == pytest.approx(float(out.logits.softmax(-1).max()), abs=1e-5)
        assert result["label"] == model.config.id2label[int(out.logits.argmax())]
