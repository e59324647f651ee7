"""The README quotes benchmarks/RESULTS.md, not numbers of its own (RESULTS.md comes from the committed result files
through `python -m benchmarks.report --report_only`, which tests/test_benchmark_report.py checks)."""

import re

from tests.utils import REPO_ROOT


README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
RESULTS = (REPO_ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]


def test_the_quick_start_table_is_the_one_in_results():
    quickstart = README.split("## Install")[0]
    rows = [row for row in table_rows(quickstart) if "x |" in row]
    assert len(rows) == 4
    for row in rows:
        assert row in RESULTS


def test_every_measured_number_in_the_readme_tables_is_in_results():
    measured = set(re.findall(r"\d+\.\d\d", RESULTS))
    for row in table_rows(README):
        for number in re.findall(r"\d+\.\d\d", row):
            assert number in measured, f"{number} (README row {row[:60]!r}) is not in benchmarks/RESULTS.md"
