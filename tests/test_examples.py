"""The benchmark scripts in examples/ run end to end on a tiny model and tiny data."""

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import BertConfig, BertModel

from hf_earlyexit.model_card import write_model_card
from tests.utils import REPO_ROOT, WORDS, sst2_rows, tiny_config_kwargs


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_backbone(tmp_path, tokenizer):
    path = tmp_path / "tiny-bert"
    BertModel(BertConfig(**tiny_config_kwargs())).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_tsv(path: Path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows))
    return path


def test_benchmark_bypass_runs_and_is_consistent(tmp_path, tiny_backbone):
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", limit=96))
    dev = write_tsv(tmp_path / "dev.tsv", sst2_rows("dev", limit=40))
    out = tmp_path / "out"
    results = load_example("benchmark_bypass").main(
        [
            "--model",
            str(tiny_backbone),
            "--train_file",
            str(train),
            "--dev_file",
            str(dev),
            "--output_dir",
            str(out),
            "--train_size",
            "64",
            "--calibration_size",
            "32",
            "--batch_size",
            "16",
            "--timing_size",
            "4",
            "--timing_size_batched",
            "8",
            "--timing_batch_size",
            "4",
            "--rounds",
            "1",
            "--criteria",
            "max_prob",
            "patience",
            "divergence",
            "--targets",
            "1.5",
            "3",
        ]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved["variants"]) == {"bypass", "no_bypass"}
    for variant in saved["variants"].values():
        points = variant["points"]
        assert points[0]["settings"] == {"early_exit": False}
        assert points[0]["flops_speedup"] == pytest.approx(1.0) and points[0]["mean_exit_layer"] == 4
        assert {p["method"] for p in points[1:]} <= {"max_prob", "patience", "divergence"}
        for p in points:
            assert set(p["wallclock_speedup"]) == {"1", "4"}
            assert 1.0 <= p["layer_speedup"] <= 4.0 and p["flops_speedup"] >= 0.99
        assert len(variant["dev_accuracy_per_exit"]) == 4
    assert "| method |" in (out / "results.md").read_text()

    # the flagship card's input: the divergence setting calibrated for 2x (or the largest target below it)
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"] == "BertWithBypassExits" and card["config"]["exit_criterion"] == "divergence"
    rows = card["card_data"]["evaluation"]
    measured = [p for p in saved["variants"]["bypass"]["points"] if p["method"] in ("full depth", "divergence")]
    assert [row["metric"] for row in rows] == [p["metric"] for p in measured]
    assert [row["flops_speedup"] for row in rows] == [p["flops_speedup"] for p in measured]
    assert [row["measured_speedup"] for row in rows] == [p["wallclock_speedup"]["1"] for p in measured]
    # written again from results.json alone, byte for byte
    before = (out / "card.json").read_bytes()
    (out / "card.json").unlink()
    load_example("benchmark_bypass").main(["--model", str(tiny_backbone), "--output_dir", str(out), "--card_only"])
    assert (out / "card.json").read_bytes() == before
    text = write_model_card(out / "card.json", tmp_path / "README.md")
    assert "divergence" in text and "BertWithBypassExits" in text


def write_conll(path: Path, num_sentences: int, seed: int) -> Path:
    """CoNLL-2003-style lines (`word POS chunk NER`, IOB2), with a `-DOCSTART-` line and a leading blank line."""
    import random

    rng = random.Random(seed)
    entities = {"love": "PER", "hate": "PER", "film": "LOC", "movie": "LOC", "story": "ORG", "plot": "MISC"}
    lines = ["", "-DOCSTART- -X- -X- O", ""]
    for _ in range(num_sentences):
        previous = None
        for _ in range(rng.randint(2, 9)):
            word = rng.choice(WORDS)
            kind = entities.get(word)
            tag = "O" if kind is None else ("I-" if previous == kind else "B-") + kind
            previous = kind
            lines.append(f"{word} NN B-NP {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_benchmark_token_runs_and_is_consistent(tmp_path, tiny_backbone):
    train = write_conll(tmp_path / "train.txt", 72, seed=0)
    dev = write_conll(tmp_path / "valid.txt", 24, seed=1)
    out = tmp_path / "out"
    module = load_example("benchmark_token")
    argv = ["--model", str(tiny_backbone), "--train_file", str(train), "--dev_file", str(dev)]
    argv += ["--output_dir", str(out), "--train_size", "48", "--calibration_size", "24", "--batch_size", "16"]
    argv += ["--timing_size", "3", "--timing_size_batched", "8", "--timing_batch_size", "4", "--rounds", "1"]
    argv += ["--targets", "1.5", "3", "--windows", "3", "5", "--truncated_layers", "1", "2", "--threads", "1"]
    argv += ["--learning_rate", "1e-3", "--head_learning_rate", "3e-3"]
    results = module.main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved["stages"]) == {"stage1", "stage2"}
    assert saved["stages"]["stage2"]["training"]["recipe"] == "self_sampling"
    for stage, data in saved["stages"].items():
        assert data["plain_baseline_agrees_with_full_depth"]
        points = data["points"]
        full = points[0]
        assert full["method"] == "full depth" and full["flops_speedup"] == pytest.approx(1.0)
        assert full["mean_exit_layer"] == 4 and full["layer_speedup"] == pytest.approx(1.0)
        assert data["dev_f1_per_exit"]["4"] == pytest.approx(full["metric"])
        truncated = [p for p in points if p["method"].startswith("truncated")]
        assert [p["layers"] for p in truncated] == ([1, 2] if stage == "stage1" else [])
        for p in truncated:
            assert p["mean_exit_layer"] == p["layers"] and p["flops_speedup"] > 1.5
            assert p["metric"] == pytest.approx(data["dev_f1_per_exit"][str(p["layers"])])
        assert {p["method"] for p in points} - {"full depth", "truncated 1", "truncated 2"} <= {"TOKEE", "SENTEE"}
        assert {c["mode"] for c in data["calibration"]} == {"token", "sentence"}
        for p in points:
            assert set(p["wallclock_speedup"]) == {"1", "4"}
            assert 1.0 <= p["layer_speedup"] <= 4.0 and 0 <= p["metric"] <= 1
    assert "| method |" in (out / "results.md").read_text()

    # the flagship card's input: the stage-2 model with the TOKEE setting calibrated for 2x (here the 1.5x one)
    card = json.loads((out / "card.json").read_text())
    (chosen,) = [
        c
        for c in saved["stages"]["stage2"]["calibration"]
        if c["mode"] == "token" and c["target_flops_speedup"] == 1.5
    ]
    assert card["architecture"] == "BertForTokenEarlyExit"
    assert {k: card["config"][k] for k in chosen["settings"]} == chosen["settings"]
    measured = [p for p in saved["stages"]["stage2"]["points"] if p["method"] in ("full depth", "TOKEE")]
    assert [row["metric"] for row in card["card_data"]["evaluation"]] == [p["metric"] for p in measured]
    before = (out / "card.json").read_bytes()
    (out / "card.json").unlink()
    module.main(["--output_dir", str(out), "--card_only"])
    assert (out / "card.json").read_bytes() == before
    assert "BertForTokenEarlyExit" in write_model_card(out / "card.json", tmp_path / "README.md")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--windows", "4"], "--windows"),
        (["--targets", "0.5"], "--targets"),
        (["--threads", "0"], "--threads"),
        (["--calibration_size", "0"], "--calibration_size"),
        (["--train_file", "/nonexistent/train.txt"], "--train_file"),
    ],
)
def test_benchmark_token_bad_arguments(tmp_path, extra, message, capsys):
    train = write_conll(tmp_path / "train.txt", 4, seed=0)
    module = load_example("benchmark_token")
    with pytest.raises(SystemExit):
        module.parse_args(["--train_file", str(train), "--dev_file", str(train), *extra])
    assert message in capsys.readouterr().err


def test_serving_benchmark_prices_the_sentences_it_sends_and_names_ray_settings():
    serving = load_example("benchmark_serving")
    sentences = [f"s{i}" for i in range(5)]
    # one per request: the first `requests` sentences, cycling; several: consecutive groups, cycling
    assert serving.sentences_sent(sentences, 3, 1) == ["s0", "s1", "s2"]
    assert serving.sentences_sent(sentences, 3, 2) == ["s0", "s1", "s2", "s3", "s4", "s0"]
    output = {
        "model": "cascade", "served_settings": {}, "flops_speedup": 2.0, "sentences": 872, "sentences_sent": 256,
        "settings": {"threads": 1, "inputs_per_request": 1}, "in_process": {"predict_ms_per_sentence": 1.0,
        "forward_ms_per_sentence": 0.9}, "machine": {"processor": "cpu", "cpu_count": 2}, "summary": {},
        "results": {"early_exit": {}, "plain": {}}, "ray_serve_environment": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    }  # fmt: skip
    text = serving.render(output)
    assert "on the 256 sentences sent" in text and "`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`" in text
