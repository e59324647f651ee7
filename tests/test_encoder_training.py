"""Families on encoders other than BERT, trained end to end on tiny models: examples/train_other_encoder.py on a tiny
RoBERTa with its own byte-level BPE tokenizer and real SST-2 sentences, and the train command on a tiny DistilBERT
checkpoint (token exit) and a tiny ELECTRA one (cascade)."""

import importlib.util
import json
import math

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
)

from tests.synthetic_data import train_main
from tests.test_cascade_encoders import bpe_tokenizer
from tests.utils import REPO_ROOT, sst2_rows, tiny_config_kwargs


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{sentence}\t{label}\n" for sentence, label in rows))
    return path


@pytest.fixture
def tiny_roberta(tmp_path):
    """A plain tiny RoBERTa checkpoint with a byte-level BPE tokenizer, as `FacebookAI/roberta-base` comes."""
    path = tmp_path / "roberta"
    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    config = RobertaConfig(
        **{**tiny_config_kwargs(), "vocab_size": len(tokenizer), "max_position_embeddings": 66},
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    RobertaModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", ["bypass", "cascade"])
def test_the_example_trains_a_family_on_roberta_end_to_end(family, tmp_path, tiny_roberta):
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", limit=200))
    dev = write_tsv(tmp_path / "dev.tsv", sst2_rows("dev", limit=32))
    out = tmp_path / "out"
    plain = RobertaModel.from_pretrained(tiny_roberta, add_pooling_layer=False)
    results = load_example("train_other_encoder").main(
        ["--model", str(tiny_roberta), "--train_file", str(train), "--dev_file", str(dev), "--output_dir", str(out)]
        + ["--train_size", "64", "--calibration_size", "48", "--batch_size", "16", "--max_length", "64"]
        + ["--learning_rate", "1e-3", "--head_learning_rate", "1e-3", "--target_speedup", "1.5", "--family", family]
    )

    model_class = {"bypass": "BertWithBypassExits", "cascade": "BertForCascadeClassification"}[family]
    assert (results["encoder"], results["model_class"]) == ("roberta", model_class)
    assert results["train"]["steps"] == 4 and math.isfinite(results["train"]["loss"])
    assert json.loads((out / "train_other_encoder.json").read_text()) == json.loads(json.dumps(results, default=str))
    full, calibrated = results["dev"]["full model"], results["dev"]["calibrated"]
    assert full["flops_speedup"] == pytest.approx(1.0) and full["mean_exit_layer"] == 4
    assert calibrated["settings"] == {} and calibrated["flops_speedup"] > 1.0  # the calibrated thresholds skip work
    assert results["calibration"]["settings"]["exit_threshold"] is not None
    assert results["pipeline_matches_model"] is True

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == model_class and model.config.id2label == {0: "negative", 1: "positive"}
    if family == "bypass":
        assert model.config.encoder_model_type == "roberta"
        encoder = model.base_model
    else:  # the first layer of the checkpoint and all of it
        assert [member["model_type"] for member in model.config.members] == ["roberta", "roberta"]
        assert model.exit_layers == [1, 5]
        encoder = model.members[-1].base_model
    assert type(encoder) is RobertaModel
    # trained from the checkpoint's weights: the encoder moved away from them, but not from a fresh initialisation
    start, trained = plain.state_dict(), encoder.state_dict()
    assert set(trained) == set(start)
    moved = [name for name in start if not torch.equal(start[name], trained[name])]
    assert moved and "embeddings.word_embeddings.weight" in moved
    closeness = [float((start[name] - trained[name]).abs().max()) for name in moved if name.endswith("weight")]
    # four Adam steps of at most 1e-3 from the checkpoint; a re-initialisation (std 0.02) would differ by ~0.1
    assert max(closeness) < 0.01


QUICK = [
    "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--max_steps", "3",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3",
    "--logging_steps", "1", "--max_train_samples", "24", "--max_eval_samples", "16", "--synthetic_data",
]  # fmt: skip


def test_the_train_command_trains_token_exit_on_a_distilbert_checkpoint(tmp_path):
    source = tmp_path / "distilbert"
    DistilBertModel(
        DistilBertConfig(vocab_size=99, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=64)
    ).save_pretrained(source)
    out = tmp_path / "token"
    results = train_main([*QUICK, "--family", "token", "--model_name_or_path", str(source), "--output_dir", str(out)])
    assert [step for step, _ in results["loss_curve"]] == [1, 2, 3]
    assert all(math.isfinite(loss) for _, loss in results["loss_curve"])
    assert 1.0 <= results["eval_metrics"]["eval_mean_exit_layer"] <= 4.0
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == "BertForTokenEarlyExit" and type(model.base_model) is DistilBertModel
    assert model.config.encoder_model_type == "distilbert" and model.exit_layers == [1, 2, 3, 4]


def test_the_train_command_cuts_a_cascade_from_an_electra_checkpoint(tmp_path):
    source = tmp_path / "electra"
    ElectraModel(ElectraConfig(**tiny_config_kwargs(), embedding_size=16)).save_pretrained(source)
    out = tmp_path / "cascade"
    results = train_main(
        [*QUICK, "--family", "cascade", "--model_name_or_path", str(source), "--member_layers", "1", "4"]
        + ["--output_dir", str(out)]
    )
    assert {"eval_accuracy_member_0", "eval_accuracy_member_1"} <= set(results["eval_metrics"])
    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "BertForCascadeClassification"
    assert [type(member.base_model) for member in model.members] == [ElectraModel, ElectraModel]
    assert [member["model_type"] for member in model.config.members] == ["electra", "electra"]
    assert model.exit_layers == [1, 5]  # cumulative: the second member reruns all four layers
