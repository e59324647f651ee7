"""Writes the model cards of the flagship checkpoints from the committed benchmark results, byte for byte.

    python model_cards/make_cards.py           # (re)writes model_cards/<name>/README.md
    python model_cards/make_cards.py --check   # exits 1 if a committed card differs from what its results give

Each benchmark saves its flagship model's card input (`card.json`: config, measured evaluation rows, training
hyperparameters, framework versions) beside its results; `hf_earlyexit.model_card.write_model_card` renders it and
reads nothing else, so every number in a card is one of the benchmark's.
"""

import argparse
import sys
import tempfile
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
# card folder -> card input written by the benchmark that trained the model
FLAGSHIPS = {
    "badge-sst2": "benchmarks/results/bypass/card.json",  # examples/benchmark_bypass.py
    "cascadebert-sst2": "benchmarks/results/cascade/card.json",  # examples/benchmark_cascade.py
    "tokee-conll2003": "benchmarks/results/token/card.json",  # examples/benchmark_token.py
}


def main(argv: list[str] | None = None, root: Path = REPO_ROOT) -> dict[str, str]:
    """Returns `{card folder: "written" | "unchanged" | "differs"}`."""
    from hf_earlyexit.model_card import write_model_card

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed cards, write nothing")
    parser.add_argument("--only", nargs="+", choices=sorted(FLAGSHIPS), help="some of the cards only")
    args = parser.parse_args(argv)
    status = {}
    for name in args.only or FLAGSHIPS:
        results = root / FLAGSHIPS[name]
        if not results.is_file():
            raise FileNotFoundError(f"{results} is missing: run the benchmark that writes it (see {FLAGSHIPS[name]}).")
        card = root / "model_cards" / name / "README.md"
        before = card.read_bytes() if card.is_file() else None
        if args.check:
            with tempfile.TemporaryDirectory() as scratch:
                text = write_model_card(results, Path(scratch) / "README.md")
            status[name] = "unchanged" if before == text.encode("utf-8") else "differs"
        else:
            card.parent.mkdir(parents=True, exist_ok=True)
            text = write_model_card(results, card)
            status[name] = "unchanged" if before == text.encode("utf-8") else "written"
        print(f"{card.relative_to(root)}: {status[name]}")
    return status


if __name__ == "__main__":
    sys.exit(1 if "differs" in main().values() else 0)
