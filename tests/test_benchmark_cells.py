"""The converged benchmarks' cell cache (`benchmarks/cells.py`) and the SST-2 benchmark on a tiny model."""

import json

import pytest
from transformers import BertConfig, BertModel

from benchmarks.cells import Cell, CellStore
from tests.utils import sst2_rows, tiny_config_kwargs, tiny_tokenizer


def counting_cell(name, calls, settings=None, needs=(), kind="static"):
    def run(cell, run_dir):
        calls.append(cell.name)
        assert run_dir.is_dir() and run_dir.name == f"{cell.name}-{cell.key}"
        return {"value": cell.settings["x"] * 2}

    return Cell(name, kind, settings or {"x": 1}, run, needs)


def test_finished_cells_are_skipped_and_changed_ones_redone(tmp_path):
    store = CellStore(tmp_path / "results", tmp_path / "runs", command="test")
    calls = []
    cells = [counting_cell("a", calls), counting_cell("b", calls, {"x": 2})]
    assert store.run(cells, log=lambda _: None) == {"a": "ran", "b": "ran"}
    stored = json.loads((tmp_path / "results" / "a.json").read_text())
    assert stored["settings"] == {"x": 1} and stored["result"] == {"value": 2} and stored["command"] == "test"
    # nothing changed: nothing runs again
    assert store.run(cells, log=lambda _: None) == {"a": "done", "b": "done"}
    # b's settings changed: only b runs, into a new checkpoint folder, and its file holds the new result
    cells[1] = counting_cell("b", calls, {"x": 5})
    assert store.run(cells, log=lambda _: None) == {"a": "done", "b": "ran"}
    assert calls == ["a", "b", "b"]
    assert json.loads((tmp_path / "results" / "b.json").read_text())["result"] == {"value": 10}
    assert store.missing(cells) == []


def test_selection_and_dependencies(tmp_path):
    store = CellStore(tmp_path / "results", tmp_path / "runs", command="test")
    calls = []
    cells = [counting_cell("full", calls, kind="full"), counting_cell("distilled", calls, needs=("full",), kind="d")]
    # the distilled cell waits for its teacher; the teacher is not selected
    assert store.run(cells, only=["d"], log=lambda _: None) == {"full": "skipped", "distilled": "blocked"}
    assert store.run(cells, only=["full", "distilled"], log=lambda _: None) == {"full": "ran", "distilled": "ran"}
    assert store.missing(cells) == [] and calls == ["full", "distilled"]


def test_a_failing_cell_leaves_no_result_file(tmp_path):
    store = CellStore(tmp_path / "results", tmp_path / "runs", command="test")

    def fails(cell, run_dir):
        raise RuntimeError("cut off")

    with pytest.raises(RuntimeError, match="cut off"):
        store.run([Cell("x", "static", {"x": 1}, fails)], log=lambda _: None)
    assert not (tmp_path / "results" / "x.json").exists()


@pytest.fixture(scope="module")
def tiny_sst2(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sst2")
    (root / "model").mkdir()
    tiny_tokenizer(root / "model").save_pretrained(root / "model")
    BertModel(BertConfig(**tiny_config_kwargs())).save_pretrained(root / "model")
    rows = sst2_rows("dev")
    for name, part in (("train.tsv", rows[:160]), ("dev.tsv", rows[300:340])):
        lines = ["sentence\tlabel"] + [f"{sentence}\t{label}" for sentence, label in part]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def sst2_args(root, *extra):
    return [
        "--model", str(root / "model"), "--train", str(root / "train.tsv"), "--dev", str(root / "dev.tsv"),
        "--calibration_size", "16", "--calibration_min_words", "5", "--max_length", "64", "--epochs", "1",
        "--curve_epochs", "2", "--static_layers", "1", "--cascades", "1-4", "--cascade_recipes", "dar",
        "--assembled", "1-4", "--bypass", "bypass", "--targets", "1.5", "2", "--timing_sentences", "4",
        "--timing_rounds", "1", "--timing_batch_sizes", "1", "4", "--eval_batch_size", "16",
        "--results_dir", str(root / "results"), "--runs_dir", str(root / "runs"), *extra,
    ]  # fmt: skip


def test_sst2_benchmark_runs_every_kind_and_resumes_by_cell(tiny_sst2):
    from benchmarks import sst2

    status = sst2.main(sst2_args(tiny_sst2))
    assert set(status.values()) == {"ran"}
    assert set(status) == {
        "curve-seed0", "full-seed0", "static-1L-seed0", "distilled-1L-seed0", "cascade-1-4-dar-seed0",
        "multi_exit-bypass-seed0", "assembled-1-4-seed0",
    }  # fmt: skip
    results = tiny_sst2 / "results"
    curve = json.loads((results / "curve-seed0.json").read_text())
    assert [entry["epoch"] for entry in curve["result"]["training"]["dev_per_epoch"]] == [1.0, 2.0]
    assert curve["command"].startswith("python -m benchmarks.sst2")
    assert (results / "full-seed0.teacher.safetensors").is_file()
    cascade = json.loads((results / "cascade-1-4-dar-seed0.json").read_text())["result"]
    assert cascade["exit_layers"] == [1, 5] and len(cascade["dev_predictions"]) == 2
    assert {p["target"] for p in cascade["points"]} == {1.5, 2.0}
    assert set(cascade["points"][0]["measured"]["latency_p90_ms"]) == {"1", "1_reference", "4", "4_reference"}
    # the oracle loses nothing against the last member (a cascade's oracle can be slower than the last member alone:
    # an example the first member gets wrong pays for both)
    assert cascade["oracle"]["metric"] == cascade["exit_accuracy"][-1]
    assert sum(cascade["oracle"]["exit_fraction"]) == pytest.approx(1.0)
    static = json.loads((results / "static-1L-seed0.json").read_text())["result"]["measured"]
    assert static["flops_speedup"] > 3

    # a rerun does nothing; a changed setting redoes exactly the cells it concerns
    before = (results / "static-1L-seed0.json").read_text()
    assert set(sst2.main(sst2_args(tiny_sst2)).values()) == {"done"}
    status = sst2.main(sst2_args(tiny_sst2, "--distillation_alpha", "0.9", "--only", "distilled"))
    assert status["distilled-1L-seed0"] == "ran" and status["static-1L-seed0"] == "skipped"
    assert (results / "static-1L-seed0.json").read_text() == before
    assert sst2.main(sst2_args(tiny_sst2, "--list")) == dict.fromkeys(status, True) | {"distilled-1L-seed0": False}


def test_converged_report_builds_from_the_cells_that_exist(tiny_sst2, tmp_path):
    from benchmarks import sst2
    from benchmarks.converged import best_row, load_cells, plot_benchmark, render_benchmark, rows_of

    sst2.main(sst2_args(tiny_sst2))  # done already by the test above when run together; otherwise runs them
    folder = tiny_sst2 / "results"
    text = "\n".join(render_benchmark("SST-2 (tiny)", folder, expected=["full-seed0", "full-seed1"]))
    assert "| full model (1x) |" in text and "| best distilled |" in text and "**Oracle bound**" in text
    assert "Cells not run yet (1): `full-seed1`." in text
    rows, curve = rows_of(load_cells(folder))
    assert curve["cell"] == "curve-seed0"
    # the best static model at 2x is the most accurate one whose speed-up reaches 2x (within 1 %)
    name, points = best_row(rows, "static", 2.0)
    assert name == "static 1L" and points[0].flops_speedup > 3
    assert best_row(rows, "static", 10.0) is None
    assert plot_benchmark("SST-2 (tiny)", folder, tmp_path / "plot.png").stat().st_size > 10_000
