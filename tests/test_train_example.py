"""examples/train.py in one process: real text through a tokenizer, checkpoints that reload, and its errors. The
multi-process runs of every recipe are in test_distributed.py. `main` takes `--synthetic_data` here (see
tests/synthetic_data.py)."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from tests.synthetic_data import train_main as main
from tests.utils import TINY_BERT


QUICK = [
    "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--max_steps", "2",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3",
    "--logging_steps", "1", "--max_train_samples", "16", "--max_eval_samples", "12",
]  # fmt: skip


@pytest.fixture
def plain_bert(tmp_path, tokenizer):
    """A tiny plain BERT checkpoint with its tokenizer, as a pretrained backbone would come."""
    path = tmp_path / "bert"
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_bypass_on_sst2_text_saves_a_checkpoint_that_reloads(tmp_path, plain_bert):
    out = tmp_path / "bypass"
    results = main(
        [*QUICK, "--model_name_or_path", str(plain_bert), "--exit_layers", "2", "4", "--output_dir", str(out)]
    )

    assert [step for step, _ in results["loss_curve"]] == [1, 2]
    assert results["world_size"] == 1 and 2.0 <= results["eval_metrics"]["eval_mean_exit_layer"] <= 4.0
    assert set(results["eval_metrics"]) >= {"eval_accuracy_exit_2", "eval_accuracy_exit_4", "eval_flops_speedup"}
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert (model.config.model_type, model.exit_layers, model.config.id2label) == (
        "bypass-bert",
        [2, 4],
        {0: "0", 1: "1"},
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        out = model(**tokenizer(["a good film", "a dull mess"], padding=True, return_tensors="pt"))
    assert out.logits.shape == (2, 2)


def test_cascade_cut_from_a_plain_bert(tmp_path, plain_bert, caplog):
    out = tmp_path / "cascade"
    results = main(
        [*QUICK, "--family", "cascade", "--model_name_or_path", str(plain_bert), "--member_layers", "1", "3"]
        + ["--output_dir", str(out)]
    )
    caplog.clear()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    # the trainer writes `use_cache` and the tokenizer's special token ids into the config; that is no sign of a newer
    # version of the cascade
    assert "does not know" not in caplog.text
    assert (model.config.model_type, model.exit_layers) == ("cascade-bert", [1, 4])
    assert {"eval_accuracy_member_0", "eval_accuracy_member_1"} <= set(results["eval_metrics"])


def test_evaluation_only_leaves_the_checkpoint_alone(tmp_path):
    trained = tmp_path / "trained"
    main([*QUICK, "--tiny_model", "--synthetic_data", "--output_dir", str(trained)])
    before = (trained / "model.safetensors").read_bytes()
    evaluated = tmp_path / "evaluated"
    results = main(
        [*QUICK, "--synthetic_data", "--do_eval", "--model_name_or_path", str(trained), "--output_dir", str(evaluated)]
    )
    assert results["loss_curve"] == [] and results["train_metrics"] == {} and "eval_loss" in results["eval_metrics"]
    assert (trained / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--family", "deebert"], "Unknown `--family` 'deebert'; expected one of \\['bypass', 'cascade', 'token'\\]"),
        (["--tiny_model"], "Text files need a tokenizer"),
        (
            ["--synthetic_data", "--exit_layers", "1", "4", "--model_name_or_path", "{bypass}"],
            "`--exit_layers` builds",
        ),
        (
            ["--family", "cascade", "--model_name_or_path", "{bypass}"],
            "holds a 'bypass-bert' model; `--family cascade`",
        ),
        (
            [
                "--synthetic_data",
                "--family",
                "cascade",
                "--member_layers",
                "1",
                "4",
                "--model_name_or_path",
                "{cascade}",
            ],
            "`--member_layers` cuts a plain BERT checkpoint",
        ),
    ],
)
def test_bad_arguments(tmp_path, extra, message):
    checkpoints = {}
    for family in ("bypass", "cascade"):
        if any(f"{{{family}}}" in arg for arg in extra):
            checkpoints[family] = tmp_path / family
            main([*QUICK, "--tiny_model", "--synthetic_data", "--family", family, "--max_steps", "1"]
                 + ["--output_dir", str(checkpoints[family])])  # fmt: skip
    extra = [arg.format(**checkpoints) for arg in extra]
    with pytest.raises(ValueError, match=message):
        main([*QUICK, *extra, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
