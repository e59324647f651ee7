"""`benchmarks/calibration_overlap.py`: how much of the calibration sentences the training set covers, and the
calibrated settings' speed-up on dev against the calibrated one, on hand-made files."""

import json

import pytest

from tests.utils import sst2_rows


def test_coverage_and_calibration_shift(tmp_path):
    from benchmarks import calibration_overlap

    assert calibration_overlap.covered("A gripping film about grief", {"gripping film", "about grief"}) == 0.4
    assert calibration_overlap.covered("a gripping film", set()) == 0.0
    # a training file of sentences and, as SST-2's, each sentence's phrase of its first four words
    sentences = sst2_rows("dev")[:30]
    phrases = [(" ".join(s.split()[:4]) + " ", label) for s, label in sentences]  # SST-2's texts end in a space
    lines = "".join(f"{text}\t{label}\n" for text, label in sentences[:20] + phrases)
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + lines)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in sentences[20:]))
    results = tmp_path / "results"
    results.mkdir()
    point = {"criterion": "max_prob", "settings": {"exit_threshold": 0.9}, "calibration": {}, "measured": {}}
    point["calibration"] = {"flops_speedup": 2.0, "full_accuracy": 0.95}
    point["measured"] = {"flops_speedup": 1.6}
    cell = {"cell": "multi_exit-x-seed0", "result": {"points": [point, {**point, "criterion": "patience"}]}}
    cell["result"]["exit_accuracy"] = [0.8, 0.9]
    (results / "multi_exit-x-seed0.json").write_text(json.dumps(cell))
    output = tmp_path / "out" / "overlap.json"
    result = calibration_overlap.main(
        ["--train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "dev.tsv"), "--calibration_size", "5"]
        + ["--calibration_min_words", "8", "--seeds", "0", "--results_dir", str(results), "--output", str(output)]
    )
    by_set = {row["set"]: row for row in result["overlap"]}
    kept = by_set["calibration slice, seed 0"]
    dropped = by_set["calibration slice, seed 0, phrases of 3+ words dropped"]
    # each held-out sentence's first four words stay in training, unless dropped (5 phrases, one per sentence)
    assert kept["training_examples_dropped"] == 0 and 0 < kept["median_covered"] < 1
    assert dropped["training_examples_dropped"] == 5 and dropped["median_covered"] < kept["median_covered"]
    assert by_set["dev (training set of seed 0)"]["training_examples_dropped"] is None
    [shift] = result["calibration_shift"]
    assert shift["dev_over_calibrated_speedup"] == pytest.approx(0.8) and shift["settings"] == 1
    assert shift["full_accuracy_calibration"] == 0.95 and shift["full_accuracy_dev"] == 0.9
    assert "| multi_exit-x-seed0 | 95.00 | 90.00 | 1 | 0.80 | 0.80 |" in output.with_suffix(".md").read_text()
