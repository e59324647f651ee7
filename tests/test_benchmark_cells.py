"""The converged benchmarks' cell cache (`benchmarks/cells.py`) and the SST-2 benchmark on a tiny model."""

import dataclasses
import json
import math
import shutil

import pytest
import torch
from transformers import BertConfig, BertModel

from benchmarks.cells import Cell, CellStore
from hf_earlyexit import BertForCascadeClassification
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


def test_a_resumed_cell_reports_the_time_of_every_run(tmp_path):
    store = CellStore(tmp_path / "results", tmp_path / "runs", command="test")
    runs = []

    def cut_off_once(cell, run_dir):
        runs.append(run_dir)
        sum(i * i for i in range(200_000))  # some CPU time
        if len(runs) == 1:
            raise RuntimeError("cut off")
        return {}

    cell = Cell("x", "static", {"x": 1}, cut_off_once)
    with pytest.raises(RuntimeError):
        store.run([cell], log=lambda _: None)
    first = json.loads((runs[0] / "time_spent.json").read_text())
    assert first["seconds"] > 0 and first["cpu_seconds"] > 0
    store.run([cell], log=lambda _: None)
    stored = json.loads((tmp_path / "results" / "x.json").read_text())
    # the result counts both runs, and CPU time is recorded next to wall-clock time
    assert stored["seconds"] > first["seconds"] and stored["cpu_seconds"] > first["cpu_seconds"]


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
        "--assembled", "1-4", "--bypass", "bypass", "--ablations", "self_distillation", "--frozen_recipes", "two_stage", "--frozen_epochs", "0.5", "--targets", "1.5", "2", "--timing_sentences", "4",
        "--timing_rounds", "1", "--timing_batch_sizes", "1", "4", "--eval_batch_size", "16",
        "--results_dir", str(root / "results"), "--runs_dir", str(root / "runs"), *extra,
    ]  # fmt: skip


def test_sst2_benchmark_runs_every_kind_and_resumes_by_cell(tiny_sst2):
    from benchmarks import sst2

    status = sst2.main(sst2_args(tiny_sst2))
    assert set(status.values()) == {"ran"}
    assert set(status) == {
        "curve-seed0", "full-seed0", "static-1L-seed0", "distilled-1L-seed0", "cascade-1-4-dar-seed0",
        "multi_exit-bypass-seed0", "multi_exit-bypass-self_distillation-seed0", "multi_exit-frozen-two_stage-seed0",
        "assembled-1-4-seed0", "multi_exit-bypass-teacher-seed0",
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
    assembled = next((tiny_sst2 / "runs").glob("assembled-1-4-seed0-*"))
    assert BertForCascadeClassification.from_pretrained(assembled / "final").exit_layers == [1, 5]
    static = json.loads((results / "static-1L-seed0.json").read_text())["result"]["measured"]
    assert static["flops_speedup"] > 3
    # priced against the full size on the timed sentences too (not against the static model's own depth)
    assert set(static["timed_flops_speedup"]) == {"1", "4"} and min(static["timed_flops_speedup"].values()) > 3
    # the ablation cell's trainer used its option, the plain multi-exit cell's did not
    ablation = json.loads((results / "multi_exit-bypass-self_distillation-seed0.json").read_text())["result"]
    assert ablation["training"]["loss"]["self_distillation_weight"] == 1.0
    plain = json.loads((results / "multi_exit-bypass-seed0.json").read_text())["result"]
    assert plain["training"]["loss"] == {"class": "JointExitLoss", "weights": "linear"}
    # every exit learning the full model's answers too, from the logits the full cell saved
    taught = json.loads((results / "multi_exit-bypass-teacher-seed0.json").read_text())["result"]
    assert taught["training"]["loss"] == {
        "class": "MultiExitTeacherDistillationLoss", "weights": "linear", "distillation_temperature": 2.0,
        "distillation_alpha": 0.5,
    }  # fmt: skip
    # exits trained on the frozen full model: its last exit answers every dev sentence as the full model does
    frozen = json.loads((results / "multi_exit-frozen-two_stage-seed0.json").read_text())["result"]
    full = json.loads((results / "full-seed0.json").read_text())["result"]
    assert frozen["training"]["loss"] == {"class": "TwoStageExitLoss", "stage": 2}
    assert frozen["training"]["steps"] == math.ceil(plain["training"]["steps"] / 2)  # --frozen_epochs 0.5, --epochs 1
    assert frozen["dev_predictions"][-1] == full["dev_predictions"][-1] and len(frozen["dev_predictions"]) == 4

    # a rerun does nothing; a changed setting redoes exactly the cells it concerns
    before = (results / "static-1L-seed0.json").read_text()
    assert set(sst2.main(sst2_args(tiny_sst2)).values()) == {"done"}
    status = sst2.main(sst2_args(tiny_sst2, "--distillation_alpha", "0.9", "--only", "distilled"))
    assert status["distilled-1L-seed0"] == "ran" and status["static-1L-seed0"] == "skipped"
    assert (results / "static-1L-seed0.json").read_text() == before
    assert sst2.main(sst2_args(tiny_sst2, "--list")) == dict.fromkeys(status, True) | {"distilled-1L-seed0": False}
    # a calibration rule set on the command line concerns the cells that calibrate exits, and only them
    listed = sst2.main(sst2_args(tiny_sst2, "--calibration_max_overshoot", "0.05", "--list"))
    assert {name for name, done in listed.items() if not done} == {
        "distilled-1L-seed0", "cascade-1-4-dar-seed0", "multi_exit-bypass-seed0", "assembled-1-4-seed0",
        "multi_exit-bypass-self_distillation-seed0", "multi_exit-frozen-two_stage-seed0", "multi_exit-bypass-teacher-seed0",
    }  # fmt: skip

    # --remeasure: a finished cell measured again from its checkpoint, its training record kept
    cell = results / "multi_exit-bypass-seed0.json"
    earlier = json.loads(cell.read_text())
    status = sst2.main(sst2_args(tiny_sst2, "--remeasure", "--only", "multi_exit-bypass-seed0"))
    assert status["multi_exit-bypass-seed0"] == "remeasured" and status["static-1L-seed0"] == "skipped"
    again = json.loads(cell.read_text())
    assert again["result"]["training"] == earlier["result"]["training"]
    assert again["result"]["dev_predictions"] == earlier["result"]["dev_predictions"]
    assert again["result"]["remeasured"]["earlier_command"] == earlier["command"]
    assert again["seconds"] > earlier["seconds"]  # the measurement's time is added to the cell's
    # a model that no longer answers as the measured one did is refused, and the earlier file stays
    earlier["result"]["dev_predictions"][0] = "".join(
        "1" if c == "0" else "0" for c in earlier["result"]["dev_predictions"][0]
    )
    cell.write_text(json.dumps(earlier))
    with pytest.raises(RuntimeError, match="`dev_predictions` differs"):
        sst2.main(sst2_args(tiny_sst2, "--remeasure", "--only", "multi_exit-bypass-seed0"))
    assert json.loads(cell.read_text()) == earlier
    with pytest.raises(SystemExit):
        sst2.main(sst2_args(tiny_sst2, "--remeasure"))  # needs --only
    cell.write_text(json.dumps(again, indent=1, sort_keys=True) + "\n")


def test_converged_report_builds_from_the_cells_that_exist(tiny_sst2, tmp_path):
    from benchmarks import sst2
    from benchmarks.converged import best_row, load_cells, plot_benchmark, render_benchmark, rows_of

    sst2.main(sst2_args(tiny_sst2))  # done already by the test above when run together; otherwise runs them
    folder = tiny_sst2 / "results"
    text = "\n".join(render_benchmark("SST-2 (tiny)", folder, plan_names=["full-seed0", "static-2L-seed0"]))
    assert "| full model (1x) |" in text and "| best distilled |" in text and "**Oracle bound**" in text
    # missing: the planned cell that did not run, and the headline cells again for seeds 1 and 2
    missing = text.split("Cells not run yet")[1]
    assert "`static-2L-seed0`" in missing and "`full-seed1`" in missing and "`full-seed2`" in missing
    assert "`static-1L-seed0`" not in missing
    rows, curve = rows_of(load_cells(folder))
    assert curve["cell"] == "curve-seed0"
    assert "multi-exit + bypasses + self distillation (max_prob)" in rows
    assert "frozen full model + exits, two-stage (max_prob)" in rows
    # the multi-exit models side by side, one line each
    options = text.split("**Multi-exit training options**")[1].split("\n\n")[1].splitlines()[2:]
    assert [line.split(" | ")[0] for line in options] == [
        "| frozen full model + exits, two-stage",
        "| multi-exit + bypasses",
        "| multi-exit + bypasses + self distillation",
        "| multi-exit + bypasses, exits distilled from the full model",
    ]
    # the best static model at 2x is the most accurate one whose speed-up reaches 2x (within 1 %)
    name, points = best_row(rows, "static", 2.0)
    assert name == "static 1L" and points[0].flops_speedup > 3
    assert best_row(rows, "static", 10.0) is None
    # a training option on top of a recipe (issue 13's ablation) is not a headline candidate, however accurate
    ablation = rows["multi-exit + bypasses + self distillation (max_prob)"]
    assert ablation.ablation and not rows["multi-exit + bypasses (max_prob)"].ablation
    for point in ablation.points[1.5].values():
        point.accuracy, point.reached = 1.0, True
    assert best_row(rows, "multi_exit", 1.5)[0] != ablation.name
    assert best_row(rows, "multi_exit", 1.5, ablations=True)[0] == ablation.name
    # rows are compared on the seeds they share (paired), ties going to more seeds; the winner keeps all its seeds
    single, seeded = rows["multi-exit + bypasses (max_prob)"], rows["multi-exit + bypasses (entropy)"]
    single.points[1.5] = {0: dataclasses.replace(single.points[1.5][0], accuracy=0.8, reached=True)}
    seeded.points[1.5] = {
        seed: dataclasses.replace(seeded.points[1.5][0], accuracy=value, reached=True)
        for seed, value in ((0, 0.9), (1, 0.5))
    }
    name, points = best_row(rows, "multi_exit", 1.5)  # 0.9 against 0.8 on seed 0, though its mean is 0.7
    assert name == seeded.name and set(points) == {0, 1}
    seeded.points[1.5][0] = dataclasses.replace(seeded.points[1.5][0], accuracy=0.8)
    assert best_row(rows, "multi_exit", 1.5)[0] == seeded.name  # a tie on seed 0: the row with more seeds
    headline = text.split("**Headline**")[1].split("Every row")[0]
    assert "self distillation" not in headline
    # several seeds: mean ± std, and every row lists each seed's value
    from benchmarks.converged import Point, _cell_text, _seeds_text

    two = {0: Point(0.8, 2.0, {}, {}), 1: Point(0.9, 2.0, {}, {})}
    assert _cell_text(two) == "85.00 ± 5.00 (n=2), 2.00x"
    assert _cell_text(two, per_seed=True) == "85.00 ± 5.00 (seeds 0, 1: 80.00, 90.00), 2.00x"
    assert _seeds_text({1: {"s": 4.7}, 0: {"s": 4.5}}, "s", unit="x") == "4.60x (seeds 0, 1: 4.50x, 4.70x)"
    assert _seeds_text({0: {"m": 0.9}}, "m", 100) == "90.00"
    assert plot_benchmark("SST-2 (tiny)", folder, tmp_path / "plot.png").stat().st_size > 10_000


def test_a_rerun_is_reported_cell_by_cell_against_the_earlier_run(tiny_sst2):
    from benchmarks import sst2
    from benchmarks.converged import render_rerun

    sst2.main(sst2_args(tiny_sst2))  # the earlier run (done already when run with the tests above)
    rerun = tiny_sst2 / "rerun"
    only = ["--only", "full-seed0", "multi_exit-bypass-seed0"]
    changed = ["--calibration_exclusive_words", "3", "--results_dir", str(rerun), "--runs_dir", str(tiny_sst2 / "rr")]
    status = sst2.main(sst2_args(tiny_sst2, *changed, *only))
    assert status["full-seed0"] == status["multi_exit-bypass-seed0"] == "ran"
    plan = ["full-seed0", "static-1L-seed0", "multi_exit-bypass-seed0"]
    text = "\n".join(render_rerun("SST-2 (tiny), again", rerun, tiny_sst2 / "results", "Why.", plan))
    assert "Changed from the earlier run" in text and "`calibration_exclusive_words` 3 (earlier: absent)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    full = next(line for line in table if line.startswith("| full model |"))
    earlier = json.loads((tiny_sst2 / "results" / "full-seed0.json").read_text())["result"]["measured"]
    assert full.endswith(f"| {100 * earlier['metric']:.2f}, {earlier['flops_speedup']:.2f}x |")
    # a calibrated setting: where it landed on dev and the speed-up it was chosen for on the slice, in both runs
    point = next(
        p for p in json.loads((rerun / "multi_exit-bypass-seed0.json").read_text())["result"]["points"]
        if p["criterion"] == "entropy" and p["target"] == 2.0
    )  # fmt: skip
    line = next(line for line in table if line.startswith("| multi-exit + bypasses (entropy) | 2x | 0 |"))
    assert f"{point['measured']['flops_speedup']:.2f}x (slice {point['calibration']['flops_speedup']:.2f}x)" in line
    assert line.count("(slice ") == 2
    assert text.split("not rerun yet: ")[1].startswith("`static-1L-seed0`.")


def test_crossfit_calibrates_on_one_half_of_dev_and_scores_the_other(tiny_sst2, tmp_path):
    from benchmarks import crossfit, sst2
    from hf_earlyexit.evaluation import collect, make_batches

    sst2.main(sst2_args(tiny_sst2))  # the benchmark's cells (done already when run with the tests above)
    paths = ["--results_dir", str(tiny_sst2 / "results"), "--runs_dir", str(tiny_sst2 / "runs")]
    paths += ["--dev", str(tiny_sst2 / "dev.tsv"), "--model", str(tiny_sst2 / "model"), "--eval_batch_size", "16"]
    output = tmp_path / "crossfit.json"
    result = crossfit.main([*paths, "--targets", "1.5", "--repeats", "1", "--output", str(output)])
    assert set(result["cells"]) == {
        "cascade-1-4-dar-seed0", "assembled-1-4-seed0", "multi_exit-bypass-seed0",
        "multi_exit-bypass-self_distillation-seed0", "multi_exit-frozen-two_stage-seed0", "multi_exit-bypass-teacher-seed0",
    }  # fmt: skip
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))
    table = output.with_suffix(".md").read_text()
    assert "| best multi-exit |" in table and "| best static |" in table and "self distillation" in table

    # without the checkpoints, a rerun keeps the earlier run's entries of the cells whose settings did not change
    no_runs = [*paths, "--runs_dir", str(tmp_path / "no_runs"), "--targets", "1.5", "--repeats", "1"]
    again = crossfit.main([*no_runs, "--output", str(output)])
    assert again["cells"] == result["cells"] and again["carried_over"] == list(result["cells"])
    assert "Carried over from the earlier run" in output.with_suffix(".md").read_text()
    changed = tmp_path / "changed_settings"
    shutil.copytree(tiny_sst2 / "results", changed)
    cell = json.loads((changed / "multi_exit-bypass-seed0.json").read_text())
    cell["settings"]["lr"] *= 2
    (changed / "multi_exit-bypass-seed0.json").write_text(json.dumps(cell))
    again = crossfit.main([*no_runs, "--results_dir", str(changed), "--output", str(output)])
    assert again["without_checkpoint"] == ["multi_exit-bypass-seed0"]
    assert again["carried_over"] == [name for name in result["cells"] if name != "multi_exit-bypass-seed0"]
    # with the checkpoints, --cells cross-fits those cells again and keeps the others' entries
    output.write_text(json.dumps(result))
    again = crossfit.main([*paths, "--targets", "1.5", "--repeats", "1", "--cells", "multi_exit-bypass-seed0",
                           "--output", str(output)])  # fmt: skip
    assert "multi_exit-bypass-seed0" not in again["carried_over"]
    assert len(again["carried_over"]) == len(result["cells"]) - 1
    recomputed = again["cells"]["multi_exit-bypass-seed0"]
    assert "--cells multi_exit-bypass-seed0" in recomputed["computed_by"]["command"]  # each entry names its run
    assert result["cells"]["multi_exit-bypass-seed0"]["computed_by"]["command"] == result["command"]
    assert {**recomputed, "computed_by": None} == {**result["cells"]["multi_exit-bypass-seed0"], "computed_by": None}
    assert again["cells"] == {**result["cells"], "multi_exit-bypass-seed0": recomputed}
    legacy = json.loads(json.dumps(result))  # a file written before entries recorded the run that computed them
    for entry in legacy["cells"].values():
        del entry["computed_by"]
    output.write_text(json.dumps({**legacy, "command": "python -m benchmarks.crossfit --earlier"}))
    again = crossfit.main([*no_runs, "--output", str(output)])
    assert {entry["computed_by"]["command"] for entry in again["cells"].values()} == {
        "python -m benchmarks.crossfit --earlier"
    }
    output.write_text(json.dumps(result))  # another split count or other targets: nothing is carried over
    assert crossfit.main([*no_runs, "--repeats", "2", "--output", str(output)])["carried_over"] == []
    assert crossfit.main([*no_runs, "--targets", "2", "--output", str(output)])["carried_over"] == []

    # one criterion by hand: calibrated on one half of dev, the other half answered by a live early-exit run
    cell = json.loads((tiny_sst2 / "results" / "multi_exit-bypass-seed0.json").read_text())
    model = crossfit.AutoModelForSequenceClassification.from_pretrained(
        crossfit.checkpoint_of(cell, tiny_sst2 / "runs")
    )
    tokenizer = crossfit.load_tokenizer(None, backbone=str(tiny_sst2 / "model"))
    dev = crossfit.load_text_classification(tiny_sst2 / "dev.tsv")
    rec = crossfit.dev_record(model, tokenizer, dev, cell["settings"], 16)
    halves = torch.randperm(len(dev), generator=torch.Generator().manual_seed(0)).split(len(dev) // 2)
    correct, flops, full = 0, 0.0, 0.0
    for calibration, scored in (halves, halves[::-1]):
        settings = crossfit.calibrate(model, rec.select(calibration), target_speedup=1.5, criterion="entropy",
                                      apply=False).forward_kwargs()  # fmt: skip
        part = dev.select(scored.tolist())
        batches = make_batches(tokenizer, part, 16, cell["settings"]["data"]["max_length"])
        out, plain = collect(model, batches, **settings), collect(model, batches, early_exit=False)
        correct += int((out["logits"].argmax(-1) == torch.tensor(part["label"])).sum())
        flops, full = flops + float(out["flops"].sum()), full + float(plain["flops"].sum())
    entropy = result["cells"]["multi_exit-bypass-seed0"]["targets"]["1.5"]["entropy"]
    assert entropy["accuracy"] == pytest.approx(correct / len(dev))
    assert entropy["flops_speedup"] == pytest.approx(full / flops, rel=1e-9)

    # a checkpoint that does not answer as the measured model did is refused
    changed = tmp_path / "results"
    changed.mkdir()
    cell["result"]["dev_predictions"][0] = cell["result"]["dev_predictions"][0][::-1] + "0"
    (changed / "multi_exit-bypass-seed0.json").write_text(json.dumps(cell))
    (changed / "full-seed0.json").write_text((tiny_sst2 / "results" / "full-seed0.json").read_text())
    with pytest.raises(RuntimeError, match="not the measured model"):
        crossfit.main([*paths, "--results_dir", str(changed), "--targets", "1.5", "--repeats", "1"])
    with pytest.raises(SystemExit):
        crossfit.main([*paths, "--repeats", "0"])


@pytest.fixture(scope="module")
def tiny_conll(tmp_path_factory, tiny_sst2):
    """CoNLL-style files over the tiny vocabulary (no CoNLL-2003 text), and the tiny backbone."""
    import random

    root = tmp_path_factory.mktemp("tiny_conll")
    words = "the a film movie story good bad great love hate charming".split()
    rng = random.Random(0)
    for name, count in (("train.txt", 90), ("valid.txt", 30)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(count):
            previous = "O"
            for _ in range(rng.randint(2, 8)):
                word = rng.choice(words)
                kind = "PER" if word in ("love", "hate", "charming") else "LOC" if word in ("film", "movie") else None
                tag = "O" if kind is None else ("I-" if previous.endswith(kind) else "B-") + kind
                lines.append(f"{word} NN O {tag}")
                previous = tag
            lines.append("")
        (root / name).write_text("\n".join(lines) + "\n")
    return root, tiny_sst2 / "model"


def conll_args(root, model, *extra):
    return [
        "--model", str(model), "--train", str(root / "train.txt"), "--dev", str(root / "valid.txt"),
        "--calibration_size", "16", "--epochs", "1", "--curve_epochs", "2", "--stage2_epochs", "1",
        "--targets", "1.5", "2", "--windows", "3", "--live_checks", "2", "--timing_sentences", "4",
        "--timing_rounds", "1", "--timing_batch_sizes", "1", "4", "--eval_batch_size", "16",
        "--results_dir", str(root / "results"), "--runs_dir", str(root / "runs"), *extra,
    ]  # fmt: skip


def test_conll_benchmark_runs_every_kind(tiny_conll):
    from benchmarks import conll
    from benchmarks.converged import render_benchmark

    root, model = tiny_conll
    status = conll.main(conll_args(root, model))
    assert status == dict.fromkeys(
        ["curve-seed0", "stage1-seed0", "stage2-seed0", "static-2L-seed0", "static-3L-seed0"]
        + ["distilled-2L-seed0", "distilled-3L-seed0"],
        "ran",
    )
    curve = json.loads((root / "results" / "curve-seed0.json").read_text())["result"]["training"]
    assert [entry["epoch"] for entry in curve["dev_per_epoch"]] == [1, 2]
    stage2 = json.loads((root / "results" / "stage2-seed0.json").read_text())["result"]
    assert {p["criterion"] for p in stage2["points"]} == {"SENTEE", "TOKEE"} and len(stage2["exit_f1"]) == 4
    assert set(stage2["oracle"]) == {"token", "sentence"}
    for point in stage2["points"]:  # the FLOPs speed-up of the sentences timed, at each timed batch size
        measured = point["measured"]
        assert set(measured["timed_flops_speedup"]) == set(measured["wallclock_speedup"]) == {"1", "4"}
        assert all(value >= 1.0 - 1e-6 for value in measured["timed_flops_speedup"].values())
    # the teacher logits stay with the checkpoints (derived from research-only data), never in the results
    assert not list((root / "results").glob("*.safetensors"))
    text = "\n".join(render_benchmark("CoNLL (tiny)", root / "results"))
    assert "| best TOKEE |" in text and "| best distilled |" in text and "dev entity F1" in text
    assert set(conll.main(conll_args(root, model)).values()) == {"done"}


def test_token_oracle_keeps_the_full_depth_answers():
    import tempfile

    from hf_earlyexit.data import DataCollatorForTokenEarlyExit, tokenize_token_dataset
    from hf_earlyexit.evaluation import token_oracle_points, token_scores
    from tests.test_token_training import ner_dataset, ner_model

    tokenizer = tiny_tokenizer(tempfile.mkdtemp())
    model = ner_model().eval()
    rows = tokenize_token_dataset(ner_dataset(24), tokenizer)
    collator = DataCollatorForTokenEarlyExit(tokenizer)
    batches = [collator([rows[i] for i in range(start, start + 8)]) for start in (0, 8, 16)]
    oracle = token_oracle_points(model, batches)
    full = token_scores(model, batches, early_exit=False)
    for mode in ("token", "sentence"):
        assert oracle[mode]["metric"] == full["metric"]
        assert sum(oracle[mode]["exit_fraction"]) == pytest.approx(1.0)
    # a sentence waits for its slowest word: it leaves no earlier than its words do
    assert oracle["sentence"]["mean_exit_layer"] >= oracle["token"]["mean_exit_layer"]
    assert oracle["token"]["flops_speedup"] >= oracle["sentence"]["flops_speedup"]


def test_sst2_calibration_slice_can_leave_out_its_phrases_from_training(tiny_sst2, tmp_path):
    from transformers import AutoTokenizer

    from benchmarks import sst2

    # SST-2's training set holds its sentences' phrases as examples of their own: add each sentence's middle third
    sentences = sst2_rows("dev")[:40]
    rows = list(sentences)
    for sentence, label in sentences:
        words = sentence.split()
        rows.append((" ".join(words[len(words) // 3 : 2 * len(words) // 3 + 1]), label))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows))
    tokenizer = AutoTokenizer.from_pretrained(tiny_sst2 / "model")

    def data(*extra):
        args = sst2.parse_args(sst2_args(tiny_sst2, "--train", str(tmp_path / "train.tsv"), *extra))
        return sst2.Data(args, tokenizer, seed=0), sst2.common_settings(args, 0)["data"]

    def within(text, sentence):  # a run of consecutive words of the sentence
        return f" {text.lower()} " in f" {sentence.lower()} "

    kept, settings = data()
    assert "calibration_exclusive_words" not in settings  # the cells run before the option keep their settings
    held_out = {text for text, _ in rows} - set(kept.train_text["text"])
    assert len(held_out) == 16 and len(kept.train_text) == len(rows) - 16
    exclusive, settings = data("--calibration_exclusive_words", "3")
    assert settings["calibration_exclusive_words"] == 3
    # the same slice; gone from training: exactly the texts of 3 or more words found in a calibration sentence
    assert {text for text, _ in rows} - set(exclusive.train_text["text"]) >= held_out
    expected = [
        text
        for text in kept.train_text["text"]
        if len(text.split()) < 3 or not any(within(text, sentence) for sentence in held_out)
    ]
    assert exclusive.train_text["text"] == expected and len(expected) < len(kept.train_text)
