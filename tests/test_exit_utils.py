import math

import pytest
import torch

from hf_earlyexit.models.bert import exit_utils as eu
from hf_earlyexit.models.bert.exit_utils import ExitRule


def test_max_prob_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [1e4, -1e4]])
    torch.testing.assert_close(eu.max_prob(logits), torch.tensor([0.5, 0.75, 1.0]))


def test_entropy_hand_computed():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e4, -1e4]])
    expected = torch.tensor([math.log(4.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    torch.testing.assert_close(eu.entropy(logits), expected)
    torch.testing.assert_close(eu.normalized_entropy(logits), expected / math.log(4.0))


@pytest.mark.parametrize("scale", [1e4, 1e6])
def test_criteria_finite_on_huge_logits(scale):
    logits = torch.tensor([[scale, -scale, 0.0], [scale, scale, -scale], [-scale, -scale, -scale]])
    other = torch.tensor([[-scale, scale, 0.0], [scale, scale, scale], [scale, 0.0, -scale]])
    values = [
        eu.max_prob(logits),
        eu.entropy(logits),
        eu.normalized_entropy(logits),
        eu.kl_divergence(logits, other),
        eu.js_divergence(logits, other),
        eu.divergence(logits, other, "symmetric_kl"),
    ]
    for value in values:
        assert torch.isfinite(value).all(), value
    # a one-hot distribution has zero entropy, a uniform one log C
    torch.testing.assert_close(eu.entropy(logits)[0], torch.tensor(0.0))
    torch.testing.assert_close(eu.entropy(logits)[2], torch.tensor(math.log(3.0)))
    # disjoint one-hot distributions: JSD reaches its bound log 2
    torch.testing.assert_close(eu.js_divergence(logits[:1], other[:1]), torch.tensor([math.log(2.0)]))


def test_divergences_hand_computed():
    p = torch.tensor([[math.log(0.8), math.log(0.2)]])
    q = torch.tensor([[math.log(0.5), math.log(0.5)]])
    kl_pq = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    kl_qp = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    m = [0.65, 0.35]
    jsd = 0.5 * (0.8 * math.log(0.8 / m[0]) + 0.2 * math.log(0.2 / m[1])) + 0.5 * (
        0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    )
    torch.testing.assert_close(eu.divergence(p, q, "kl"), torch.tensor([kl_pq]))
    torch.testing.assert_close(eu.divergence(p, q, "symmetric_kl"), torch.tensor([kl_pq + kl_qp]))
    torch.testing.assert_close(eu.divergence(p, q, "jsd"), torch.tensor([jsd]))
    # the true JSD is not F-PABEE's cross-entropy to the mixture (which adds the mean entropy)
    mean_entropy = 0.5 * (eu.entropy(p) + eu.entropy(q))
    assert not torch.allclose(eu.divergence(p, q, "jsd"), eu.divergence(p, q, "jsd") + mean_entropy)


def test_unknown_divergence():
    with pytest.raises(ValueError, match="Unknown divergence measure 'hellinger'"):
        eu.divergence(torch.zeros(1, 2), torch.zeros(1, 2), "hellinger")


def test_patience_sequences():
    # predictions per exit for 3 examples: A keeps class 0 from exit 0; B flips at exit 2; C alternates
    preds = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 0, 0], [0, 0, 1]])
    all_logits = torch.nn.functional.one_hot(preds, 2).float() * 5
    counters, fires = eu.patience(all_logits, patience=2)
    assert counters.tolist() == [[0, 0, 0], [1, 1, 0], [2, 0, 0], [3, 1, 0]]
    assert fires[:, 0].tolist() == [False, False, True, True]
    assert not fires[:, 2].any()
    rule = ExitRule.build("patience", None, num_exits=4, num_labels=2, patience=2)
    assert rule.simulate(all_logits).tolist() == [2, 3, 3]


def test_patience_regression_tolerance():
    values = torch.tensor([[1.0], [1.05], [1.5], [1.52], [1.53]]).unsqueeze(-1)  # (exits, batch=1, 1)
    counters, fires = eu.patience(values, patience=2, regression_tolerance=0.1)
    assert counters[:, 0].tolist() == [0, 1, 0, 1, 2]
    rule = ExitRule.build("patience", None, num_exits=5, num_labels=1, patience=2, regression_tolerance=0.1)
    assert rule.simulate(values).tolist() == [4]
    strict_rule = ExitRule.build("patience", None, num_exits=5, num_labels=1, patience=1, regression_tolerance=0.01)
    assert strict_rule.simulate(values).tolist() == [4]  # never within 0.01: the last exit answers


def test_rule_step_matches_simulate_per_example():
    torch.manual_seed(0)
    all_logits = torch.randn(5, 64, 3) * 2
    for criterion, threshold in [
        ("max_prob", 0.7),
        ("entropy", 0.8),
        ("normalized_entropy", [0.5, 0.6, 0.7, 0.8, 0.9]),
        ("patience", None),
        ("divergence", 0.2),
    ]:
        rule = ExitRule.build(criterion, threshold, num_exits=5, num_labels=3, patience=1)
        batched = rule.simulate(all_logits)
        one_by_one = torch.cat([rule.simulate(all_logits[:, i : i + 1]) for i in range(64)])
        assert torch.equal(batched, one_by_one), criterion
        assert len(batched.unique()) > 1, f"{criterion}: every example took the same exit"


def test_max_prob_rule_fires_at_threshold():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = 0.75
    rule = ExitRule.build("max_prob", 0.75, num_exits=2, num_labels=2)
    assert rule.step(0, logits, None, None)[0].item()
    rule = ExitRule.build("max_prob", 0.76, num_exits=2, num_labels=2)
    assert not rule.step(0, logits, None, None)[0].item()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(criterion="confidence", threshold=0.5), "Unknown exit criterion 'confidence'"),
        (dict(criterion="max_prob", threshold=1.5), r"in \[0, 1\], got 1.5"),
        (dict(criterion="max_prob", threshold=-0.1), r"in \[0, 1\], got -0.1"),
        (dict(criterion="normalized_entropy", threshold=2.0), r"in \[0, 1\]"),
        (dict(criterion="entropy", threshold=-0.2), "non-negative entropy/divergence, got -0.2"),
        (dict(criterion="divergence", threshold=-1.0), "non-negative"),
        (dict(criterion="entropy", threshold=[0.1, 0.2]), "has 2 values but the model has 4 exits"),
        (dict(criterion="max_prob", threshold="high"), "must be a number"),
        (dict(criterion="patience", threshold=None, patience=0), "`patience` must be an integer >= 1, got 0"),
        (dict(criterion="divergence", threshold=0.1, divergence="hellinger"), "Unknown divergence measure"),
    ],
)
def test_rule_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExitRule.build(num_exits=4, num_labels=2, **kwargs)


def test_regression_needs_patience():
    with pytest.raises(ValueError, match="num_labels=1 \\(regression\\); use 'patience'"):
        ExitRule.build("entropy", 0.1, num_exits=4, num_labels=1)


def test_encoder_layer_flops_by_hand():
    # n=5 positions, q=2 queries, d=4, f=8
    expected = 4 * 5 * 16 + 4 * 2 * 16 + 4 * 2 * 5 * 4 + 4 * 2 * 4 * 8
    assert eu.encoder_layer_flops(5, 4, 8, num_queries=2) == expected
    lengths = torch.tensor([5, 3])
    assert eu.encoder_layer_flops(lengths, 4, 8).tolist() == [
        eu.encoder_layer_flops(5, 4, 8),
        eu.encoder_layer_flops(3, 4, 8),
    ]
    assert eu.classifier_head_flops(4, 3, pooler=True, bypass_dim=2) == 2 * 4 * 3 + 2 * 16 + 4 * 4 * 2


def test_drop_padding_columns():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]])
    hidden = torch.arange(8).view(2, 4)
    trimmed_mask, trimmed = eu.drop_padding_columns(mask, hidden)
    assert trimmed_mask.tolist() == [[1, 1, 0], [0, 1, 1]]
    assert trimmed.tolist() == [[0, 1, 2], [4, 5, 6]]


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "normalized_entropy", "divergence"])
def test_per_example_thresholds_decide_as_each_example_alone(criterion):
    from hf_earlyexit.models.bert.exit_utils import ExitRule

    generator = torch.Generator().manual_seed(0)
    all_logits = torch.randn(4, 6, 3, generator=generator) * 2
    high = 1.0 if criterion in ("max_prob", "normalized_entropy") else 1.2
    thresholds = torch.rand(6, generator=generator) * high
    rule = ExitRule.build(criterion, None, num_exits=4, num_labels=3, patience=1)
    batched = rule.for_examples(thresholds, batch_size=6).simulate(all_logits)
    for row in range(6):
        alone = ExitRule.build(criterion, float(thresholds[row]), num_exits=4, num_labels=3, patience=1)
        assert int(batched[row]) == int(alone.simulate(all_logits[:, row : row + 1])[0])
    # `rows` picks the thresholds of the examples still in a shrunken batch
    per_exit = rule.for_examples(thresholds.unsqueeze(-1).expand(6, 4).contiguous(), batch_size=6)
    rows = torch.tensor([5, 1])
    fires, _ = per_exit.step(0, all_logits[0, rows], None, None, rows=rows)
    expected = [bool(rule.for_examples(thresholds, 6).step(0, all_logits[0], None, None)[0][r]) for r in (5, 1)]
    assert fires.tolist() == expected


@pytest.mark.parametrize(
    "thresholds, match",
    [
        (torch.tensor([0.5, 1.5]), r"must lie in \[0.0, 1.0\]"),
        (torch.tensor([0.5]), r"must have shape \(2,\) or \(2, 4\)"),
        (torch.tensor([[0.5, 0.5], [0.5, 0.5]]), r"must have shape \(2,\) or \(2, 4\)"),
        (torch.tensor([0.5, float("nan")]), "must be finite"),
        (torch.tensor([True, False]), "must be a float tensor"),
    ],
)
def test_bad_per_example_thresholds(thresholds, match):
    from hf_earlyexit.models.bert.exit_utils import ExitRule

    with pytest.raises(ValueError, match=match):
        ExitRule.build("max_prob", None, num_exits=4, num_labels=2).for_examples(thresholds, batch_size=2)
