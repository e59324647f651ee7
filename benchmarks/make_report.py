"""Regenerates benchmarks/RESULTS.md and benchmarks/plots/ from the committed result files (the same as
`hf-earlyexit benchmark --report_only`); run from the repository root."""

import sys

from hf_earlyexit.cli import main


if __name__ == "__main__":
    sys.exit(main(["benchmark", "--report_only", *sys.argv[1:]]))
