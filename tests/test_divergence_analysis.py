"""The divergence analysis (`benchmarks/divergence.py`): each criterion's choice of the examples that leave first."""

import torch

from benchmarks.divergence import compare


def test_divergence_picks_stable_unsure_examples_and_max_prob_confident_ones():
    # 4 examples, 3 exits, 2 labels: examples 0-1 are unsure and unchanged between exits 1 and 2 (divergence 0) and
    # wrong; examples 2-3 flip from unsure to confident between exits 1 and 2 and are right
    unsure, confident = [0.1, -0.1], [4.0, -4.0]
    exit_1 = torch.tensor([unsure, unsure, [0.0, 0.0], [0.0, 0.0]])
    exit_2 = torch.tensor([unsure, unsure, confident, confident])
    all_logits = torch.stack([exit_1, exit_2, exit_2])
    labels = torch.tensor([1, 1, 0, 0])
    rows = {row["criterion"]: row for row in compare(all_logits, labels, fractions=[0.5], measure="jsd")}
    assert rows["max_prob"]["accuracy"] == 1.0 and rows["max_prob"]["share_below_0.6"] == 0.0
    assert rows["divergence (jsd)"]["accuracy"] == 0.0 and rows["divergence (jsd)"]["share_below_0.6"] == 1.0
    assert rows["entropy"]["accuracy"] == 1.0
    assert {row["exit"] for row in rows.values()} == {2}
