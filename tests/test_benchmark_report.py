"""`python -m benchmarks.report --report_only` on small fabricated result files: RESULTS.md's tables, byte-identical
reruns, a missing token benchmark, and plots that are real images of the curves."""

import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from benchmarks.report import cli, load_benchmarks


MACHINE = {"processor": "Test CPU", "cpu_count": 2, "torch_threads": 2, "device": "cpu", "torch": "2.x",
           "transformers": "5.x"}  # fmt: skip


def point(method, settings, metric, flops, wall1, wall32):
    return {"method": method, "settings": settings, "metric_name": "accuracy", "metric": metric,
            "mean_exit_layer": 6 / flops, "layer_speedup": flops, "flops_speedup": flops,
            "wallclock_speedup": {"1": wall1, "32": wall32}, "latency_ms": {"1": 5.0, "32": 1.0}}  # fmt: skip


def bypass_results(shift=0.0):
    variants = {}
    for variant, base in (("bypass", 0.80 + shift), ("no_bypass", 0.78)):
        points = [point("full depth", {"early_exit": False}, 0.84, 1.0, 0.98, 0.99)]
        calibration = []
        for i, target in enumerate((1.5, 2.0, 3.0, 4.0)):
            settings = {"exit_criterion": "max_prob", "exit_threshold": 0.9 - 0.1 * i, "patience": 1}
            points.append(point("max_prob", settings, base - 0.02 * i, target + 0.05, target * 0.9, target * 0.7))
            calibration.append({"criterion": "max_prob", "target_flops_speedup": target, "settings": settings,
                                "reached_on_calibration": target < 4.0})  # fmt: skip
        variants[variant] = {"points": points, "calibration": calibration}
    return {"command": "python examples/benchmark_bypass.py", "machine": MACHINE, "variants": variants}


def cascade_results():
    def cell(accuracy, flops, reached=True, **extra):
        return {"accuracy": accuracy, "accuracy_std": 0.0, "flops_speedup": flops,
                "wallclock_speedup": {"1": flops * 0.95, "32": flops * 0.8}, "reached": reached, "seeds": 1, **extra}  # fmt: skip

    summary = {
        "cascade 1L->6L (joint)": {str(t): cell(0.82 - 0.01 * t, t + 0.1) for t in (1.5, 2.0, 3.0, 4.0)},
        "cascade 1L->6L (dar)": {str(t): cell(0.83 - 0.01 * t, t + 0.1, t < 4) for t in (1.5, 2.0, 3.0, 4.0)},
        "best static model": {"2.0": cell(0.75, 2.0, model="static 3L"), "3.0": cell(0.72, 3.0, model="static 2L")},
    }
    runs = [{"seed": 0, "models": {"full": {"kind": "static", "accuracy": 0.845}}}]
    return {"config": {"targets": [1.5, 2.0, 3.0, 4.0], "train_size": 3000, "epochs": 1.0}, "machine": MACHINE,
            "summary": summary, "runs": runs}  # fmt: skip


def token_results():
    rows = [{"method": m, "target": t, "metric": f - 0.02 * t, "flops_speedup": t, "wallclock_speedup": {"1": t}}
            for m, f in (("TOKEE (W=5)", 0.90), ("SENTEE", 0.88)) for t in (2.0, 3.0)]  # fmt: skip
    return {"dataset": "CoNLL-2003", "metric_name": "F1", "rows": rows, "machine": MACHINE, "full_metric": 0.905}


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    (root / "bypass").mkdir(parents=True)
    (root / "cascade").mkdir()
    (root / "bypass/results.json").write_text(json.dumps(bypass_results()))
    (root / "cascade/benchmark_cascade.json").write_text(json.dumps(cascade_results()))
    return root


def report(tmp_path, results_dir, name="report"):
    out = tmp_path / name
    argv = ["--report_only", "--results_dir", str(results_dir), "--output", str(out / "RESULTS.md")]
    assert cli([*argv, "--plots_dir", str(out / "plots")]) == 0
    return out


def test_report_tables_machines_and_published_numbers(tmp_path, results_dir):
    out = report(tmp_path, results_dir)
    text = (out / "RESULTS.md").read_text()
    assert "## SST-2" in text and "| method | source | 1.5x | 2x | 3x | 4x |" in text
    # bypass: the measured point of each calibrated target, † where the calibration slice fell short
    assert "| BADGE multi-exit + bypasses (max_prob) | bypass | 80.00 (1.55x) | 78.00 (2.05x) | 76.00 (3.05x) | " \
           "74.00 (4.05x) † |" in text  # fmt: skip
    assert "| BADGE multi-exit, no bypass (max_prob) | bypass |" in text
    assert (
        "| cascade 1L->6L (dar) | cascade | 81.50 (1.60x) | 81.00 (2.10x) | 80.00 (3.10x) | 79.00 (4.10x) † |" in text
    )
    assert (
        "| static truncated (best per target) | cascade | - | 75.00 (2.00x, static 3L) | 72.00 (3.00x, static 2L) | - |"
        in text
    )
    # wall-clock at batch 1 / 32
    assert "| BADGE multi-exit + bypasses (max_prob) | bypass | 1.35x / 1.05x | 1.80x / 1.40x |" in text
    assert "Full model (no exit), dev accuracy: 84.00 (bypass run), 84.50 (cascade run)." in text
    assert "Test CPU, 2 cores, 2 torch threads" in text
    # the papers' numbers are labelled as theirs, with their backbone; BADGE has none to quote
    assert "Published numbers of the original papers (theirs" in text
    assert (
        "| CascadeBERT (Li et al., 2021), released code | 2-layer -> 12-layer BERT cascade, DAR | MRPC dev |" in text
    )
    assert "BADGE (Zhu et al., 2023): its text and code are not public (`docs/methods.md` section 1), so no numbers are " \
           "quoted." in text  # fmt: skip
    # the token benchmark is not there yet: said, not invented
    assert "Not run yet" in text and "token/results.json" in text and "CoNLL" not in text.split("## Machines")[0]
    assert (out / "plots/sst_2.png").is_file() and "![SST-2: accuracy against speed-up](plots/sst_2.png)" in text


def test_report_is_byte_identical_on_rerun(tmp_path, results_dir):
    first, second = report(tmp_path, results_dir, "a"), report(tmp_path, results_dir, "b")
    assert (first / "RESULTS.md").read_bytes() == (second / "RESULTS.md").read_bytes()
    assert (first / "plots/sst_2.png").read_bytes() == (second / "plots/sst_2.png").read_bytes()
    again = report(tmp_path, results_dir, "a")
    assert sorted(p.name for p in (again / "plots").iterdir()) == ["sst_2.png"]


def test_token_results_add_a_dataset_with_its_own_plot(tmp_path, results_dir):
    (results_dir / "token").mkdir()
    (results_dir / "token/results.json").write_text(json.dumps(token_results()))
    assert [b.source for b in load_benchmarks(results_dir)[0]] == ["bypass", "cascade", "token"]
    out = report(tmp_path, results_dir)
    text = (out / "RESULTS.md").read_text()
    assert "## CoNLL-2003" in text and "### F1 (%) at a target FLOPs speed-up" in text
    assert "| TOKEE (W=5) | token | - | 86.00 (2.00x) | 84.00 (3.00x) | - |" in text
    assert "Not run yet (no result file)" not in text
    sst2, conll = (matplotlib.image.imread(out / f"plots/{name}.png") for name in ("sst_2", "conll_2003"))
    assert sst2.shape != conll.shape or not np.array_equal(sst2, conll)
    # a row of panels per benchmark: SST-2 has two (bypass, cascade), CoNLL-2003 one; columns for FLOPs and for the
    # wall-clock at each timed batch size (SST-2: 1 and 32, the fabricated token file: 1 only)
    assert sst2.shape[0] > 1.7 * conll.shape[0] and sst2.shape[1] > conll.shape[1]


def test_plots_are_images_of_the_curves(tmp_path, results_dir):
    out = report(tmp_path, results_dir, "base")
    image = matplotlib.image.imread(out / "plots/sst_2.png")
    height, width = image.shape[:2]
    assert width >= 1000 and height >= 400
    colours = {tuple(np.round(pixel[:3], 2)) for pixel in image.reshape(-1, image.shape[-1])[::7]}
    assert len(colours) > 20  # curves in several colours, not a blank canvas

    # another method's numbers give another picture
    changed = tmp_path / "changed"
    shutil.copytree(results_dir, changed)
    (changed / "bypass/results.json").write_text(json.dumps(bypass_results(shift=-0.1)))
    other = matplotlib.image.imread(report(tmp_path, changed, "other") / "plots/sst_2.png")
    assert other.shape == image.shape and np.abs(other - image).sum() > 0


def test_no_results_yet_gives_a_report_that_says_so(tmp_path, capsys):
    out = report(tmp_path, tmp_path / "nowhere")
    text = (out / "RESULTS.md").read_text()
    assert "does not exist" in capsys.readouterr().err
    assert "Not run yet" in text and "bypass/results.json" in text and "cascade/benchmark_cascade.json" in text
    assert "| method | source |" not in text and not (out / "plots").exists()
    assert "Published numbers of the original papers" in text


def token_stages_results():
    """The shape examples/benchmark_token.py writes: per stage, calibration entries and measured points."""

    def token_point(method, settings, f1, flops, **extra):
        data = point(method, settings, f1, flops, flops * 0.9, flops * 0.8)
        return {**data, "metric_name": "entity F1", **extra}

    tokee = {"exit_mode": "token", "exit_threshold": 0.1, "window_size": 5}
    points = [
        token_point("full depth", {"early_exit": False}, 0.90, 1.0),
        token_point("truncated 3", {"early_exit": False}, 0.80, 1.98, layers=3),
        token_point("truncated 1", {"early_exit": False}, 0.50, 5.6, layers=1),
        token_point("TOKEE", tokee, 0.88, 2.02, target=2.0),
    ]
    calibration = [
        {"mode": "token", "target_flops_speedup": 2.0, "settings": tokee, "reached_on_calibration": True},
        {"mode": "token", "target_flops_speedup": 3.0, "settings": tokee, "reached_on_calibration": False},
    ]
    return {"benchmark": "token_conll2003", "command": "python examples/benchmark_token.py", "machine": MACHINE,
            "stages": {"stage1": {"points": points, "calibration": calibration}}}  # fmt: skip


def test_token_results_as_benchmark_token_writes_them(tmp_path, results_dir):
    (results_dir / "token").mkdir()
    (results_dir / "token/results.json").write_text(json.dumps(token_stages_results()))
    text = (report(tmp_path, results_dir) / "RESULTS.md").read_text()
    assert "Full model (no exit), dev F1: 90.00 (token run, stage1)." in text
    assert "| TOKEE (stage1) | token | - | 88.00 (2.02x) | 88.00 (2.02x) † | - |" in text
    # the best static model per target, picked as the cascade benchmark picks it (the most accurate that meets it)
    assert (
        "| static truncated (best per target) (stage1) | token | 80.00 (1.98x, static 3L) | 80.00 (1.98x, static 3L) | "
        "50.00 (5.60x, static 1L) | 50.00 (5.60x, static 1L) |" in text
    )
    # how much of the FLOPs saving the clock sees: 0.9 and 0.8 of it in this fabricated file
    assert "| TOKEE (stage1) | token | - | 0.90 / 0.80 | 0.90 / 0.80 | - |" in text
    assert (
        "- token, TOKEE rows: batch 1: median 0.90, min 0.90, 2 of 2 cells at 0.9 or more; batch 32: median 0.80, "
        "min 0.80, 0 of 2 cells at 0.9 or more." in text
    )


def test_malformed_result_file_is_a_usage_error(tmp_path, results_dir, capsys):
    (results_dir / "token").mkdir()
    (results_dir / "token/results.json").write_text(json.dumps({"stages": {"stage1": {"points": []}}}))
    argv = ["--report_only", "--results_dir", str(results_dir), "--output", str(tmp_path / "R.md")]
    assert cli(argv) == 2
    assert "token/results.json: not the structure `examples/benchmark_token.py` writes" in capsys.readouterr().err


def quickstart_results():
    """The shape `hf-earlyexit quickstart` writes (the parts the report reads)."""
    models = {
        key: {
            "name": name,
            "full_depth": point("full depth", {"early_exit": False}, 0.83, 1.0, 1.1, 0.95),
            "calibrated": point("2x", {"exit_threshold": 0.9}, 0.80, 2.2, 2.3, 2.0),
        }
        for key, name in (("cascade", "CascadeBERT 1L->6L"), ("badge", "BADGE multi-exit + bypasses"))
    }
    return {"command": "hf-earlyexit quickstart ", "backbone_name": "all-MiniLM-L6-v2 (embedded)", "machine": MACHINE,
            "data": {"train": 4800, "calibration": 500, "dev": 872}, "elapsed_seconds": 612.0, "models": models}  # fmt: skip


def test_quickstart_result_is_the_first_section(tmp_path, results_dir):
    text = (report(tmp_path, results_dir, "none") / "RESULTS.md").read_text()
    assert "## Quick start\n\nNot run yet (no `quickstart/results.json`" in text
    (results_dir / "quickstart").mkdir()
    (results_dir / "quickstart/results.json").write_text(json.dumps(quickstart_results()))
    text = (report(tmp_path, results_dir) / "RESULTS.md").read_text()
    section = text.split("## Quick start")[1].split("## SST-2")[0]
    assert "`hf-earlyexit quickstart` (what `make quickstart` runs)" in section
    assert "4800 SST-2 training sentences, 500 held out for calibration, 872 dev sentences" in section
    assert "10.2 min on Test CPU, 2 cores, 2 torch threads" in section
    # the table the quick start prints, a full and a calibrated row per model
    assert "| CascadeBERT 1L->6L | calibrated 2x | 80.00 | 2.20x | 2.20x | 2.30x | 2.00x |" in section
    assert "| BADGE multi-exit + bypasses | full model | 83.00 | 1.00x | 1.00x | 1.10x | 0.95x |" in section


def test_benchmark_runs_each_script_as_its_committed_result_records(tmp_path, monkeypatch):
    """`python -m benchmarks.report` reruns every benchmark with the arguments of the committed run, so that the report it
    regenerates is the one committed, not a run of the scripts' defaults."""
    import subprocess

    from benchmarks.report import REPO_ROOT, SOURCES

    for source in SOURCES.values():
        committed = json.loads((REPO_ROOT / "benchmarks/results" / source.result).read_text())
        folder = Path("benchmarks/results", source.result).parent
        assert committed["command"] == " ".join(source.command(folder)), source.script

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    results = REPO_ROOT / "benchmarks/results"
    argv = ["--only", "bypass", "token", "--results_dir", str(results)]
    assert cli([*argv, "--output", str(tmp_path / "RESULTS.md"), "--plots_dir", str(tmp_path / "plots")]) == 0
    assert [command[1:] for command in calls] == [
        [str(REPO_ROOT / "examples" / SOURCES[name].script), *SOURCES[name].command(results / name)[2:]]
        for name in ("bypass", "token")
    ]


def test_the_curve_sentence_says_when_the_budget_stops_short_of_the_curve():
    from benchmarks.converged import _budget_against_curve

    rising = [(1, 0.85), (2, 0.89), (3, 0.90), (4, 0.901), (5, 0.907)]
    assert _budget_against_curve(rising, {3.0}) == (
        "the models were trained for 3 epochs, fixed before this curve ran; it still rises past them, to 90.70 at "
        "epoch 5 (+0.70 over epoch 3 of the same schedule)"
    )
    peaked = [(1, 0.87), (2, 0.90), (3, 0.899)]
    assert _budget_against_curve(peaked, {2.0}) == "the budget of every model was chosen from it"


def test_the_token_curve_model_is_reported_with_its_calibrated_points():
    from benchmarks.converged import _curve_model_text

    def point(criterion, target, metric, speedup):
        return {"criterion": criterion, "target": target, "measured": {"metric": metric, "flops_speedup": speedup}}

    curve = {
        "cell": "curve-seed0",
        "settings": {"seed": 0},
        "result": {
            "points": [
                point("TOKEE", 3.0, 0.8977, 3.04),
                point("SENTEE", 1.5, 0.9043, 2.05),
                point("SENTEE", 2.0, 0.9043, 2.05),  # the same setting reached by two targets: listed once
                point("TOKEE", 2.0, 0.9068, 2.01),
            ],
        },
    }
    assert _curve_model_text(curve, 2) == (
        "The curve's model after epoch 2, calibrated on the slice and measured on dev as the stage-1 cells are "
        "(seed 0, `curve-seed0`): TOKEE 90.68 at 2.01x, 89.77 at 3.04x; SENTEE 90.43 at 2.05x."
    )
    curve["result"]["points"] = []  # a curve of the full model only (SST-2's)
    assert _curve_model_text(curve, 2) is None


def test_a_rerun_names_the_settings_it_changed_the_training_budget_included():
    from benchmarks.converged import _setting_changes

    def cell(kind, epochs, **extra):
        return {"kind": kind, "settings": {"data": {"train": "train.txt"}, "epochs": epochs, **extra}}

    earlier = [cell("curve", 5), cell("stage1", 3.0), cell("static", 3.0)]
    assert _setting_changes([cell("static", 5.0)], earlier) == ["`epochs` 5 (earlier: 3)"]
    assert _setting_changes([cell("static", 3.0), cell("curve", 5)], earlier) == []  # the curve's length is no budget
    frozen = cell("multi_exit", 1.0, first_stage="full-seed0")  # heads on a frozen model: their own epochs
    assert _setting_changes([cell("static", 3.0, calibration_exclusive_words=3), frozen], earlier) == [
        "`calibration_exclusive_words` 3 (earlier: absent)"
    ]
