"""examples/benchmark_cascade.py on a tiny BERT and a few SST-2 sentences: the JSON's structure and its consistency."""

import importlib.util
import json

import pytest
import torch
from transformers import BertConfig, BertModel

from hf_earlyexit.model_card import write_model_card
from tests.utils import REPO_ROOT, sst2_rows, tiny_config_kwargs, tiny_tokenizer


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_cascade", REPO_ROOT / "examples" / "benchmark_cascade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{sentence}\t{label}\n" for sentence, label in rows))
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("benchmark")
    torch.manual_seed(0)
    backbone = tmp_path / "backbone"
    BertModel(BertConfig(**tiny_config_kwargs())).save_pretrained(backbone)
    tiny_tokenizer(tmp_path).save_pretrained(backbone)
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", limit=80))
    dev = write_tsv(tmp_path / "dev.tsv", sst2_rows("dev", limit=24))
    argv = ["--model", str(backbone), "--train", train, "--dev", dev, "--output_dir", str(tmp_path / "out")]
    # calibrating on the dev set itself (a test-only choice) makes the dev measurement predictable exactly
    argv += ["--calibration", dev, "--calibration_size", "0", "--train_size", "64", "--batch_size", "16"]
    argv += ["--targets", "1.5", "3", "--cascades", "1-4", "1-2-4", "--static_layers", "1", "2"]
    argv += ["--criteria", "max_prob", "patience", "--max_length", "24", "--learning_rate", "1e-3"]
    argv += ["--head_learning_rate", "3e-3", "--timing_batch_sizes", "1", "4", "--timing_sentences", "4"]
    argv += ["--timing_rounds", "1", "--eval_batch_size", "16"]  # dev in two batches
    returned = load_benchmark().main(argv)
    return returned, tmp_path / "out"


CASCADES = ["cascade 1L->4L (joint)", "cascade 1L->4L (dar)", "cascade 1L->2L->4L (joint)", "cascade 1L->2L->4L (dar)"]
ASSEMBLED = ["assembled 1L->4L", "assembled 1L->2L->4L"]


def test_files_and_structure(results):
    returned, out = results
    assert json.loads((out / "benchmark_cascade.json").read_text()) == json.loads(json.dumps(returned))
    assert returned["data"] == {"train": 64, "calibration": 24, "dev": 24, "timing": 4}
    assert set(returned["machine"]) >= {"processor", "cpu_count", "torch_threads", "torch", "transformers"}
    (run,) = returned["runs"]
    models = run["models"]
    assert set(models) == {*CASCADES, *ASSEMBLED, "static 1L", "static 2L", "full", "multi-exit"}
    for name in CASCADES + ASSEMBLED:
        assert {p["target"] for p in models[name]["points"]} == {1.5, 3.0}
        assert len(models[name]["exit_accuracy"]) == len(models[name]["member_layers"])
        assert models[name]["full_accuracy"] == models[name]["exit_accuracy"][-1]
    assert {(p["criterion"], p["target"]) for p in models["multi-exit"]["points"]} == {
        (c, t) for c in ("max_prob", "patience") for t in (1.5, 3.0)
    }
    assert len(models["multi-exit"]["exit_accuracy"]) == 4
    summary = returned["summary"]
    assert set(summary) == {
        *CASCADES,
        *ASSEMBLED,
        "multi-exit (max_prob)",
        "multi-exit (patience)",
        "best static model",
    }
    markdown = (out / "benchmark_cascade.md").read_text()
    assert "| method | 1.5x | 3.0x |" in markdown
    for method in summary:
        assert f"| {method} |" in markdown


def test_calibrated_points_are_consistent(results):
    (run,) = results[0]["runs"]
    for model in run["models"].values():
        for point in model.get("points", []):
            measured, expected = point["measured"], point["calibration"]
            assert 0.0 <= measured["metric"] <= 1.0
            assert set(measured["wallclock_speedup"]) == {"1", "4"} and min(measured["wallclock_speedup"].values()) > 0
            if point["reached"]:
                assert expected["flops_speedup"] >= point["target"]
                # calibrated on the very sentences measured: the real early-exit run gives what the calibration said
                assert measured["flops_speedup"] >= point["target"]
            assert measured["flops_speedup"] == pytest.approx(expected["flops_speedup"], rel=1e-9)
            assert measured["metric"] == pytest.approx(expected["accuracy"], abs=1e-9)
            assert expected["full_accuracy"] == pytest.approx(model["full_accuracy"], abs=1e-9)
            # layer speed-up against the 4-layer full model, cumulative for cascades
            assert measured["layer_speedup"] == pytest.approx(4 / measured["mean_exit_layer"])


def test_static_and_assembled_models(results):
    (run,) = results[0]["runs"]
    models = run["models"]
    for name, layers in (("static 1L", 1), ("static 2L", 2), ("full", 4)):
        measured = models[name]["measured"]
        assert measured["layer_speedup"] == 4 / layers
        # the heads cost the same at every depth, so the FLOPs speed-up is just under 4 / layers (1 for the full model)
        assert 4 / layers * 0.97 < measured["flops_speedup"] <= 4 / layers
        assert models[name]["accuracy"] == measured["metric"]
    # assembled cascades are made of exactly the models trained alone
    assert models["assembled 1L->4L"]["exit_accuracy"] == [models["static 1L"]["accuracy"], models["full"]["accuracy"]]
    assert models["assembled 1L->2L->4L"]["exit_accuracy"] == [
        models[name]["accuracy"] for name in ("static 1L", "static 2L", "full")
    ]
    best = results[0]["summary"]["best static model"]
    assert best["1.5"]["model"] in ("static 1L", "static 2L") and best["3.0"]["model"] == "static 1L"


def test_dar_cascades_were_labelled_after_their_warm_up(results):
    (run,) = results[0]["runs"]
    for name in CASCADES:
        labelled = [entry for entry in run["models"][name]["logs"] if "difficulty_hard_fraction_member_0" in entry]
        assert len(labelled) == (1 if "(dar)" in name else 0)
        assert run["models"][name]["steps"] == 4


def test_flagship_card_input_is_reproducible(results):
    returned, out = results
    card = json.loads((out / "card.json").read_text())
    flagship = returned["runs"][0]["models"]["cascade 1L->4L (dar)"]
    assert card["architecture"] == "BertForCascadeClassification"
    assert card["config"]["exit_criterion"] == "max_prob"
    # targets 1.5 and 3: the config holds the largest one up to 2x
    (chosen,) = [p for p in flagship["points"] if p["criterion"] == "max_prob" and p["target"] == 1.5]
    assert card["config"]["exit_threshold"] == chosen["settings"]["exit_threshold"]
    rows = card["card_data"]["evaluation"]
    assert rows[0]["metric"] == flagship["exit_accuracy"][-1]
    assert [row["metric"] for row in rows[1:]] == [p["measured"]["metric"] for p in flagship["points"]][
        : len(rows) - 1
    ]
    before = (out / "card.json").read_bytes()
    (out / "card.json").unlink()
    load_benchmark().main(["--output_dir", str(out), "--card_only"])
    assert (out / "card.json").read_bytes() == before
    assert "BertForCascadeClassification" in write_model_card(out / "card.json", out / "README.md")
