"""Model cards: YAML metadata, every section, numbers equal to the evaluation they come from, determinism."""

import json
import re
import socket

import pytest
import torch
import yaml
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_earlyexit.calibration import calibrate
from hf_earlyexit.evaluation import SweepPoint
from hf_earlyexit.families import families
from hf_earlyexit.model_card import (
    CITATIONS,
    MEMBER_SUMMARY_KEYS,
    EarlyExitModelCardData,
    EvaluationRow,
    ModelCardCallback,
    family_card,
    framework_versions,
    model_card_data_of,
    model_card_for,
    render_model_card,
    write_model_card,
)
from hf_earlyexit.model_card import main as model_card_main
from hf_earlyexit.models.bert.checkpoint_utils import family_config_fields
from tests.hub_testing import HUB_FAMILIES


SECTIONS = [
    "## Model details",
    "## Exit settings",
    "## Speed and accuracy",
    "## Usage",
    "## Training",
    "### Training hyperparameters",
    "### Framework versions",
    "## Citation",
]

ROWS = [
    EvaluationRow("full depth", 0.9174, 1.0, 1.0, latency_ms=4.25, measured_speedup=1.0),
    EvaluationRow(0.95, 0.9151, 1.4213, 1.3987, latency_ms=3.1, measured_speedup=1.37),
    EvaluationRow([0.9, 0.8, 0.7, 0.6], 0.8967, 2.0457, 1.9655, latency_ms=2.2049),
    EvaluationRow(0.6, 0.8532, 3.3333, 3.0001),
]


def card_data(**overrides) -> EarlyExitModelCardData:
    values = dict(
        model_id="org/bypass-sst2",
        language="en",
        license="apache-2.0",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        datasets=["stanfordnlp/sst2"],
        dataset_name="SST-2",
        eval_split="validation",
        evaluation=list(ROWS),
        speed_setup={"device": "cpu", "threads": 2, "batch_size": 1},
        training_hyperparameters={"learning_rate": 5e-05, "num_train_epochs": 3, "seed": 42},
        framework_versions={"Python": "3.11.7", "transformers": "5.23.0", "torch": "2.13.0"},
    )
    return EarlyExitModelCardData(**{**values, **overrides})


def split_card(text: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, flags=re.DOTALL)
    assert match, "the card must start with a YAML block"
    return yaml.safe_load(match.group(1)), match.group(2)


def table_rows(body: str, header_start: str) -> list[list[str]]:
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_card_metadata_and_sections(family):
    model = family.build()
    text = str(model_card_for(model, card_data(), remote_code=True))
    metadata, body = split_card(text)
    info = family_card(type(model).__name__)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == info.pipeline_tag
    assert metadata["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert metadata["datasets"] == ["stanfordnlp/sst2"]
    assert metadata["metrics"] == [info.metric]
    assert metadata["language"] == "en" and metadata["license"] == "apache-2.0"
    assert {"hf-earlyexit", "early-exit", "custom_code", *info.tags} <= set(metadata["tags"])
    (index,) = metadata["model-index"]
    assert index["name"] == "bypass-sst2"
    (result,) = index["results"]
    assert result["dataset"] == {"name": "SST-2", "type": "stanfordnlp/sst2", "split": "validation"}
    assert [m["value"] for m in result["metrics"]] == [round(row.metric, 4) for row in ROWS]

    positions = [body.index(section + "\n") for section in SECTIONS]
    assert positions == sorted(positions), "sections out of order"
    assert body.startswith("\n# bypass-sst2\n")
    assert "trust_remote_code=True" in body
    assert text.endswith("```\n") and not text.endswith("\n\n")


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_speed_accuracy_table_equals_the_evaluation_rows(family):
    model = family.build()
    _, body = split_card(str(model_card_for(model, card_data())))
    rows = table_rows(body, "| exit setting |")
    assert len(rows) == len(ROWS)
    for cells, row in zip(rows, ROWS):
        setting, metric, layer, flops, latency, measured = cells
        expected_setting = row.setting if isinstance(row.setting, str) else json.dumps(row.setting)
        assert setting == expected_setting.replace(" ", "") or setting == expected_setting
        assert float(metric) == round(100 * row.metric, 2)
        assert float(layer) == round(row.layer_speedup, 2)
        assert float(flops) == round(row.flops_speedup, 2)
        assert (latency == "-") if row.latency_ms is None else float(latency) == round(row.latency_ms, 2)
        if row.measured_speedup is None:
            assert measured == "-"
        else:
            assert float(measured) == round(row.measured_speedup, 2)
    assert "(device: cpu, threads: 2, batch_size: 1)" in body
    assert "the validation split of SST-2" in body


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_exit_settings_are_the_config_values(family):
    model = family.build()
    _, body = split_card(str(model_card_for(model, card_data())))
    settings = {name.strip("`"): value.strip("`") for name, value in table_rows(body, "| setting | value |")}
    fields = family_config_fields(type(model.config))
    assert list(settings) == list(fields)
    for name in fields:
        value = getattr(model.config, name)
        if name == "members":  # a cascade's members: their sizes only
            value = [{key: member[key] for key in MEMBER_SUMMARY_KEYS} for member in model.config.to_dict()["members"]]
        assert json.loads(settings[name]) == value if not isinstance(value, str) else settings[name] == value


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_usage_snippet_is_valid_python_with_the_threshold(family):
    model = family.build()
    _, body = split_card(str(model_card_for(model, card_data())))
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)
    assert len(blocks) == 1  # no remote-code snippet without remote code
    compile(blocks[0], "usage", "exec")
    info = family_card(type(model).__name__)
    assert f'{info.task_auto_class}.from_pretrained("org/bypass-sst2")' in blocks[0]
    assert f'pipeline("{info.pipeline_task}", model="org/bypass-sst2")' in blocks[0]
    assert f"{info.threshold_argument}=0.95" in blocks[0]  # the first numeric setting of the evaluation


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_remote_code_snippet_loads_without_the_package(family):
    model = family.build()
    text = str(model_card_for(model, card_data(), remote_code=True, remote_pipeline_task="early-exit-task"))
    _, body = split_card(text)
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)
    assert len(blocks) == 2
    remote = blocks[1]
    compile(remote, "remote usage", "exec")
    assert "hf_earlyexit" not in remote
    info = family_card(type(model).__name__)
    assert f'{info.task_auto_class}.from_pretrained("org/bypass-sst2", trust_remote_code=True)' in remote
    assert 'pipeline("early-exit-task", model="org/bypass-sst2", trust_remote_code=True)' in remote
    assert f"{info.threshold_argument}=0.95" in remote


def test_every_family_has_a_card_and_its_citations():
    # the cards live in the family registry (one `Family` per family)
    cards = {family.model_class.__name__: family.card for family in families()}
    assert all(card is not None for card in cards.values())
    expected = {
        "BertWithBypassExits": ("badge", "pabee", "deebert"),
        "BertForCascadeClassification": ("cascadebert",),
        "BertForTokenEarlyExit": ("sentee_tokee",),
    }
    assert {name: card.citations for name, card in cards.items()} == expected
    for key, bibtex in CITATIONS.items():
        assert re.match(r"@\w+\{[\w-]+,\n", bibtex), key
        assert bibtex.count("{") == bibtex.count("}"), key
        assert re.search(r'\n  title = ".+",\n', bibtex) and re.search(r'\n  year = "\d{4}"', bibtex), key
    assert "Findings of the Association for Computational Linguistics: EMNLP 2021" in CITATIONS["cascadebert"]
    assert "Li, Lei" in CITATIONS["cascadebert"] and "Li, Xiaonan" in CITATIONS["sentee_tokee"]
    assert "2021.acl-long.16" in CITATIONS["sentee_tokee"]


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_card_cites_the_family_papers(family):
    model = family.build()
    _, body = split_card(str(model_card_for(model, card_data())))
    citation = body[body.index("## Citation") :]
    blocks = re.findall(r"```bibtex\n(.*?)\n```", citation, flags=re.DOTALL)
    assert blocks == [CITATIONS[key] for key in family_card(type(model).__name__).citations]


def test_results_json_gives_the_same_bytes_every_time(tmp_path):
    model = HUB_FAMILIES[0].values[0].build()
    results = {
        "architecture": type(model).__name__,
        "config": model.config.to_dict(),
        "card_data": card_data().to_dict(),
        "num_parameters": model.num_parameters(),
        "remote_code": False,
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    first = write_model_card(tmp_path / "results.json", tmp_path / "a.md")
    # a second process state: reordered JSON keys, a fresh card data object
    (tmp_path / "results2.json").write_text(json.dumps(dict(reversed(list(results.items()))), indent=1))
    write_model_card(tmp_path / "results2.json", tmp_path / "b.md")
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes() == first.encode()
    # the card from the results file is the card of the model itself
    assert first == str(model_card_for(model, card_data()))
    # fixed formats: never a float repr, nothing that changes from run to run
    assert "2.05 | 1.97 | 2.20 |" in first and "3.33 | 3.00 | - | - |" in first
    assert not re.search(r"\d\.\d{5,}", first.split("## Citation")[0])


def test_generator_command_line(tmp_path):
    model = HUB_FAMILIES[0].values[0].build()
    results = {"architecture": type(model).__name__, "config": model.config.to_dict(), "card_data": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    summary = model_card_main([str(tmp_path / "results.json"), str(tmp_path / "README.md")])
    text = (tmp_path / "README.md").read_text()
    assert summary == {"output": str(tmp_path / "README.md"), "bytes": len(text.encode())}
    assert text == str(render_model_card(model.config, EarlyExitModelCardData(), architecture=type(model).__name__))
    assert "Not recorded." in text  # framework versions come from the results file only


def test_results_json_errors_are_specific(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"architecture": "BertWithBypassExits", "config": {}}))
    with pytest.raises(ValueError, match=r"lacks \['card_data'\]"):
        write_model_card(tmp_path / "r.json", tmp_path / "card.md")
    assert not (tmp_path / "card.md").exists()
    with pytest.raises(ValueError, match="Unknown model card data fields"):
        EarlyExitModelCardData.from_dict({"model_id": "a/b", "accuracy": 0.9})
    with pytest.raises(ValueError, match="No model card information for 'BertForSomethingElse'"):
        render_model_card({"architectures": ["BertForSomethingElse"]})


@pytest.mark.parametrize(
    "row, message",
    [
        (dict(setting=0.9, metric=91.2, layer_speedup=1.5, flops_speedup=1.4), "`metric` must be a number in"),
        (dict(setting=0.9, metric=0.9, layer_speedup=-1.0, flops_speedup=1.4), "`layer_speedup` must be a number"),
        (dict(setting=0.9, metric=0.9, layer_speedup=1.0, flops_speedup="fast"), "`flops_speedup` must be a number"),
        (dict(setting=0.9, metric=0.9, layer_speedup=1, flops_speedup=1, latency_ms=-2), "`latency_ms` must be"),
    ],
)
def test_evaluation_rows_reject_bad_numbers(row, message):
    with pytest.raises(ValueError, match=message):
        EvaluationRow(**row)
    with pytest.raises(ValueError, match=message):
        EarlyExitModelCardData().set_evaluation([row])


def test_rows_from_a_benchmark_sweep_point():
    point = SweepPoint(
        method="bypass",
        settings={"exit_threshold": 0.8},
        metric_name="accuracy",
        metric=0.9,
        mean_exit_layer=2.5,
        layer_speedup=1.6,
        flops_speedup=1.55,
        wallclock_speedup={"batch_1": 1.41},
        latency_ms={"batch_1": 2.5},
    )
    assert EvaluationRow.from_sweep_point(point) == EvaluationRow(0.8, 0.9, 1.6, 1.55, 2.5, 1.41)
    patience = {**point.to_dict(), "settings": {"exit_criterion": "patience", "patience": 2}, "latency_ms": {}}
    row = EvaluationRow.from_sweep_point(patience)
    assert row.setting == "exit_criterion=patience, patience=2" and row.latency_ms is None


def test_rows_from_a_calibration_are_its_numbers():
    model = HUB_FAMILIES[0].values[0].build()
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        input_ids = torch.randint(5, 99, (16, 10), generator=generator)
        batches.append({"input_ids": input_ids, "labels": torch.randint(0, 3, (16,), generator=generator)})
    result = calibrate(model, batches, target_speedup=1.3, apply=False)
    data = EarlyExitModelCardData()
    data.set_calibration(result, max_rows=3, dataset_name="random tokens")
    assert data.evaluation[0] == EvaluationRow("full depth", result.full_accuracy, 1.0, 1.0)
    frontier = sorted(result.frontier, key=lambda p: p["flops_speedup"])
    assert 2 <= len(data.evaluation) <= 4
    for row in data.evaluation[1:]:
        (point,) = [p for p in frontier if p["flops_speedup"] == row.flops_speedup and p["accuracy"] == row.metric]
        assert row.layer_speedup == point["layer_speedup"]
    assert data.evaluation[-1].flops_speedup == frontier[-1]["flops_speedup"]
    assert data.eval_split == "calibration" and "calibration examples" in data.evaluation_note
    _, body = split_card(str(model_card_for(model, data)))
    assert len(table_rows(body, "| exit setting |")) == len(data.evaluation)


def test_training_arguments_and_callback_fill_the_card(tmp_path):
    model = HUB_FAMILIES[0].values[0].build()
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=3e-5, per_device_train_batch_size=16, warmup_steps=10, report_to=[]
    )
    ModelCardCallback().on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    recorded = model_card_data_of(model).training_hyperparameters
    assert recorded["learning_rate"] == 3e-5 and recorded["per_device_train_batch_size"] == 16
    assert recorded["warmup_steps"] == 10 and recorded["seed"] == args.seed
    assert not any(word in name for name in recorded for word in ("output_dir", "report", "hub", "logging"))
    assert "weight_decay" not in recorded  # left at its default
    assert model_card_data_of(model).framework_versions == framework_versions()
    _, body = split_card(str(model_card_for(model)))
    hyperparameters = dict(table_rows(body, "| hyperparameter | value |"))
    assert hyperparameters["`learning_rate`"] == "`3e-05`"
    assert list(hyperparameters) == sorted(hyperparameters)


def test_card_without_evaluation_or_training_says_so():
    model = HUB_FAMILIES[0].values[0].build()
    _, body = split_card(str(model_card_for(model, EarlyExitModelCardData())))
    assert "No evaluation was recorded for this checkpoint." in body
    assert "No training hyperparameters were recorded for this checkpoint." in body
    for section in SECTIONS:
        assert section + "\n" in body


def test_rendering_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("model card rendering opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = HUB_FAMILIES[0].values[0].build()
    assert "## Citation" in str(model_card_for(model, card_data(), remote_code=True))
