"""Benchmarks of hf_earlyexit: cells (`cells.py`), the converged SST-2 benchmark (`sst2.py`) and its report
(`converged.py`). Run from the repository root, e.g. `python -m benchmarks.sst2 --list`."""
