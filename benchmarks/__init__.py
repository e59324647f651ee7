"""Benchmarks of hf_earlyexit, repository tooling (not in the wheel): cells (`cells.py`), the converged SST-2 and
CoNLL-2003 benchmarks (`sst2.py`, `conll.py`) and their section of the report (`converged.py`), and the report itself
(`report.py`: runs the scripts of `examples/`, then writes `RESULTS.md` and `plots/` from the result files). Run from
the repository root, e.g. `python -m benchmarks.sst2 --list` or `python -m benchmarks.report --report_only`."""
