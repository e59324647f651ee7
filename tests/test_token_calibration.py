"""Threshold calibration of sequence-labelling early exit: what it expects is what a real early-exit run measures."""

import pytest
import torch

from hf_earlyexit.calibration import TokenCalibrationRecord, calibrate, calibrate_token, record_token
from hf_earlyexit.evaluation import entity_scores, word_tags
from hf_earlyexit.models.bert.token_exit_utils import word_layout
from tests.test_modeling_token_exit_bert import token_inputs
from tests.test_token_training import ner_model


def calibration_batches(model, num_batches=3, batch_size=12):
    batches = []
    for seed in range(num_batches):
        batch = token_inputs(batch_size, max_len=16, seed=50 + seed)
        _, starts = word_layout(batch["attention_mask"], batch["word_ids"])
        # labels: the full model's own answer, with some words changed, so that early answers can lose or keep F1
        with torch.no_grad():
            answer = model(**batch, early_exit=False).logits.argmax(-1)
        noise = torch.randint(0, model.num_labels, answer.shape, generator=torch.Generator().manual_seed(seed))
        flip = torch.rand(answer.shape, generator=torch.Generator().manual_seed(seed + 7)) < 0.2
        batch["labels"] = torch.where(starts, torch.where(flip, noise, answer), -100)
        batches.append(batch)
    return batches


def measure(model, batches, **settings):
    """Entity F1, word accuracy and FLOPs speed-up of real early-exit runs (the model's config unless overridden)."""
    predictions, references, correct, words, flops, reference = [], [], 0, 0, 0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            out = model(**inputs, **settings)
            full = model(**inputs, early_exit=False)
            p, r = word_tags(out.logits, batch["labels"], model.config.id2label)
            predictions += p
            references += r
            starts = batch["labels"] != -100
            correct += int((out.logits.argmax(-1) == batch["labels"])[starts].sum())
            words += int(starts.sum())
            flops += int(out.flops.sum())
            reference += int(full.flops.sum())
    return {
        "f1": entity_scores(predictions, references)["f1"],
        "token_accuracy": correct / words,
        "flops_speedup": reference / flops,
    }


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ner_model()


@pytest.mark.parametrize("target", [1.3, 2.0])
def test_tokee_target_is_reached_and_expected_equals_measured(model, target):
    batches = calibration_batches(model)
    result = calibrate_token(model, batches, target_speedup=target, window_sizes=[1, 3, 5])
    assert result.verified == "live" and result.metric_name == "f1"
    assert result.reached and result.expected_flops_speedup >= target
    assert model.config.exit_threshold == result.exit_threshold and model.config.window_size == result.window_size
    measured = measure(model, batches)  # the settings were applied to the config
    assert measured["f1"] == result.expected_metric
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)
    assert measured["flops_speedup"] >= target


@pytest.mark.parametrize("metric", ["f1", "token_accuracy"])
def test_sentee_replay_is_exact(model, metric):
    batches = calibration_batches(model)
    result = calibrate(model, batches, target_speedup=1.5, criterion="sentence", metric=metric)
    assert result.verified == "replay" and result.exit_mode == "sentence" and result.metric_name == metric
    measured = measure(model, batches)
    assert model.config.exit_mode == "sentence"
    assert measured[metric] == result.expected_metric
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)


def test_accuracy_drop_target_and_reusable_record(model):
    batches = calibration_batches(model)
    rec = record_token(model, batches)
    assert isinstance(rec, TokenCalibrationRecord) and rec.all_logits.shape[:2] == (4, 36)
    result = calibrate_token(model, rec, max_accuracy_drop=0.05, apply=False)
    assert model.config.exit_threshold == 0.1  # apply=False
    assert result.reached and result.expected_metric >= result.full_metric - 0.05
    measured = measure(model, batches, **result.forward_kwargs())
    assert measured["f1"] == result.expected_metric
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)
    unreachable = calibrate_token(model, rec, target_speedup=50.0, apply=False)
    assert not unreachable.reached and "cannot be reached" in unreachable.message


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, "exactly one calibration target"),
        ({"target_speedup": 2.0, "max_accuracy_drop": 0.1}, ValueError, "exactly one calibration target"),
        ({"target_speedup": 0.5}, ValueError, "`target_speedup`"),
        ({"max_accuracy_drop": 2.0}, ValueError, "`max_accuracy_drop`"),
        ({"target_speedup": 2.0, "window_sizes": [4]}, ValueError, "`window_sizes`"),
        ({"target_speedup": 2.0, "window_sizes": []}, ValueError, "`window_sizes`"),
        ({"target_speedup": 2.0, "exit_mode": "word"}, ValueError, "`exit_mode`"),
        ({"target_speedup": 2.0, "metric": "bleu"}, ValueError, "`metric`"),
        ({"target_speedup": 2.0, "max_live_checks": 0}, ValueError, "`max_live_checks`"),
    ],
)
def test_bad_input(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        calibrate_token(model, calibration_batches(model, num_batches=1), **kwargs)


def test_bad_input_through_calibrate(model):
    batches = calibration_batches(model, num_batches=1)
    with pytest.raises(ValueError, match="`per_exit`"):
        calibrate(model, batches, target_speedup=2.0, per_exit=True)
    unlabelled = [{k: v for k, v in batches[0].items() if k != "labels"}]
    with pytest.raises(ValueError, match="needs `labels`"):
        calibrate(model, unlabelled, target_speedup=2.0)
    with pytest.raises(ValueError, match="empty"):
        calibrate(model, [], target_speedup=2.0)


def test_tags_the_model_cannot_predict_are_refused(model):
    batches = calibration_batches(model, num_batches=1)
    labels = batches[0]["labels"].clone()
    labels[labels != -100] = model.config.num_labels + 2  # -100 (not a first word-piece) stays allowed
    bad = [{**batches[0], "labels": labels}]
    with pytest.raises(
        ValueError, match=rf"class ids in \[0, {model.config.num_labels}\).*got \[{model.config.num_labels + 2}\]"
    ):
        calibrate_token(model, bad, target_speedup=2.0)
