"""The flagship model cards in model_cards/ are what `model_cards/make_cards.py` writes from the committed benchmark
results, byte for byte, and their tables are those results."""

import importlib.util
import json

import pytest

from tests.test_model_card import split_card, table_rows
from tests.utils import REPO_ROOT


def load_make_cards():
    spec = importlib.util.spec_from_file_location("make_cards", REPO_ROOT / "model_cards" / "make_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FLAGSHIPS = load_make_cards().FLAGSHIPS


def test_the_three_flagship_cards_are_listed():
    assert set(FLAGSHIPS) == {"badge-sst2", "cascadebert-sst2", "tokee-conll2003"}


@pytest.mark.parametrize("name", sorted(FLAGSHIPS))
def test_committed_card_is_regenerated_byte_for_byte(name):
    assert (REPO_ROOT / FLAGSHIPS[name]).is_file(), f"{FLAGSHIPS[name]} is not committed"
    assert (REPO_ROOT / "model_cards" / name / "README.md").is_file()
    assert load_make_cards().main(["--check", "--only", name]) == {name: "unchanged"}


@pytest.mark.parametrize("name", sorted(FLAGSHIPS))
def test_card_metadata_and_table_are_the_benchmark_results(name):
    results = json.loads((REPO_ROOT / FLAGSHIPS[name]).read_text())
    metadata, body = split_card((REPO_ROOT / "model_cards" / name / "README.md").read_text())
    assert metadata["library_name"] == "transformers" and "early-exit" in metadata["tags"]
    assert metadata["model-index"][0]["name"] == results["card_data"]["model_id"].split("/")[-1]
    rows = results["card_data"]["evaluation"]
    cells = table_rows(body, "| exit setting |")
    assert len(cells) == len(rows)
    for cell, row in zip(cells, rows):
        assert float(cell[1]) == round(100 * row["metric"], 2)
        assert float(cell[3]) == round(row["flops_speedup"], 2)


def test_check_reports_a_card_that_differs(tmp_path):
    make_cards = load_make_cards()
    name = "badge-sst2"
    (tmp_path / "benchmarks/results/bypass").mkdir(parents=True)
    (tmp_path / FLAGSHIPS[name]).write_bytes((REPO_ROOT / FLAGSHIPS[name]).read_bytes())
    assert make_cards.main(["--only", name], root=tmp_path) == {name: "written"}
    assert make_cards.main(["--check", "--only", name], root=tmp_path) == {name: "unchanged"}
    card = tmp_path / "model_cards" / name / "README.md"
    card.write_text(card.read_text().replace("accuracy", "acc", 1))
    assert make_cards.main(["--check", "--only", name], root=tmp_path) == {name: "differs"}


def test_missing_results_name_the_benchmark(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/results/cascade/card.json"):
        load_make_cards().main(["--only", "cascadebert-sst2"], root=tmp_path)


@pytest.mark.parametrize("name", sorted(FLAGSHIPS))
def test_card_encoder_line_names_depth_and_width(name):
    card = (REPO_ROOT / "model_cards" / name / "README.md").read_text()
    (line,) = [line for line in card.splitlines() if line.startswith("- **Encoder:**")]
    assert "None" not in line
    config = json.loads((REPO_ROOT / FLAGSHIPS[name]).read_text())["config"]
    for member in config.get("members") or [config]:
        assert str(member["num_hidden_layers"]) in line and f"hidden size {member['hidden_size']}" in line


def test_cascade_encoder_line_with_members_of_different_widths():
    from hf_earlyexit.model_card import _encoder_text

    members = [{"num_hidden_layers": 1, "hidden_size": 16}, {"num_hidden_layers": 4, "hidden_size": 32}]
    assert _encoder_text({"members": members}) == (
        "a cascade of 2 BERT models, 1 layer of hidden size 16 and 4 layers of hidden size 32"
    )
    assert _encoder_text({"num_hidden_layers": 6, "hidden_size": 384}) == "6 layers, hidden size 384"
