import pytest
import torch

from hf_earlyexit.evaluation import collect, map_batches, markdown_table, measure_points, plain_baseline
from tests.test_modeling_bypass_bert import padded_inputs, tiny_model


def test_plain_baseline_is_the_full_model():
    model = tiny_model(num_labels=3, exit_pooling="pooler", use_bypass=False)
    baseline = plain_baseline(model)
    assert type(baseline).__name__ == "BertForSequenceClassification"
    inputs = padded_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            baseline(**inputs).logits, model(**inputs, early_exit=False).logits, rtol=0, atol=1e-5
        )


def test_plain_baseline_of_a_cascade_is_its_last_member():
    from tests.test_modeling_cascade_bert import tiny_cascade

    cascade = tiny_cascade(num_labels=2, exit_pooling="pooler")
    baseline = plain_baseline(cascade)
    assert baseline.config.num_hidden_layers == cascade.full_depth_layers
    inputs = padded_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            baseline(**inputs).logits, cascade(**inputs, early_exit=False).logits, rtol=0, atol=1e-5
        )


def test_measure_points_reports_what_the_runs_give():
    model = tiny_model(num_labels=2)
    batches = [padded_inputs(batch_size=8, seed=s) for s in range(3)]
    labels = torch.randint(0, 2, (24,), generator=torch.Generator().manual_seed(0))
    points = measure_points(
        model,
        [("max_prob", {"exit_threshold": 0.52}), ("full", {"early_exit": False})],
        batches,
        labels,
        timing_batches={1: [padded_inputs(batch_size=1, seed=9)], 8: batches[:1]},
        rounds=1,
    )
    out = collect(model, batches, exit_threshold=0.52)
    assert points[0].metric == float((out["logits"].argmax(-1) == labels).float().mean())
    assert points[0].mean_exit_layer == pytest.approx(float(out["exit_layer"].float().mean()))
    full = collect(model, batches, early_exit=False)
    assert points[0].flops_speedup == pytest.approx(float(full["flops"].sum() / out["flops"].sum()))
    assert points[1].flops_speedup == pytest.approx(1.0) and points[1].layer_speedup == pytest.approx(1.0)
    assert set(points[0].wallclock_speedup) == {"1", "8"} and all(v > 0 for v in points[0].wallclock_speedup.values())
    # the FLOPs speed-up the wall-clock is compared with is that of the sentences timed at each size, not the eval set's
    for size, timed in {"1": [padded_inputs(batch_size=1, seed=9)], "8": batches[:1]}.items():
        spent = collect(model, timed, exit_threshold=0.52)["flops"].sum()
        reference = collect(model, timed, early_exit=False)["flops"].sum()
        assert points[0].timed_flops_speedup[size] == pytest.approx(float(reference / spent))
    assert points[1].timed_flops_speedup == {"1": pytest.approx(1.0), "8": pytest.approx(1.0)}
    assert points[0].timing_block_examples == 32
    table = markdown_table(points, batch_sizes=[1, 8])
    assert table.count("\n") == 4 and f"{100 * points[0].metric:.2f}" in table


def test_map_batches_keeps_order_and_splitting_in_one_process_changes_nothing():
    batches = [{"x": torch.full((2,), float(i))} for i in range(5)]
    expected = [float(i) * 2 for i in range(5)]
    for split in (False, True):
        results = map_batches(lambda batch: batch["x"].sum(), iter(batches), split_across_processes=split)
        assert [float(r) for r in results] == expected


def test_collect_split_in_one_process_is_the_plain_collect():
    model = tiny_model(num_labels=2).eval()
    batches = [padded_inputs(batch_size=4, seed=s) for s in range(3)]
    split = collect(model, batches, split_across_processes=True, exit_threshold=0.6)
    plain = collect(model, batches, exit_threshold=0.6)
    assert split.keys() == plain.keys() == {"logits", "exit_layer", "flops"}
    assert all(torch.equal(split[name], plain[name]) for name in plain)


def test_oracle_exits_are_the_first_agreeing_exit():
    from hf_earlyexit.evaluation import oracle_exits

    # predictions per exit (rows) for 4 examples: the last row is the full model's answer
    predictions = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1]])
    all_logits = torch.nn.functional.one_hot(predictions, 2).float()
    assert oracle_exits(all_logits).tolist() == [1, 2, 1, 2]


def test_oracle_point_keeps_the_full_model_answers_and_prices_exits_as_the_model():
    from hf_earlyexit.evaluation import oracle_point

    model = tiny_model(num_labels=2)
    batch = padded_inputs(batch_size=8, seed=3)
    labels = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        all_logits = model(**batch, output_all_exits=True).all_logits
    lengths = batch["attention_mask"].sum(-1)
    point = oracle_point(model, all_logits, lengths, labels)
    assert point["metric"] == float((all_logits[-1].argmax(-1) == labels).float().mean())
    # an early-exit run whose criterion happened to pick the oracle's exits would spend exactly these FLOPs
    first = (all_logits.argmax(-1) == all_logits[-1].argmax(-1)).int().argmax(0)
    spent = model.flops_per_exit(lengths)[first, torch.arange(8)]
    assert point["flops_speedup"] == pytest.approx(float(model.reference_flops(lengths).sum() / spent.sum()))
    assert sum(point["exit_fraction"]) == pytest.approx(1.0) and point["flops_speedup"] >= 1.0


def test_interleaved_batch_latency_times_every_batch_of_every_model():
    from hf_earlyexit.evaluation import interleaved_batch_latency

    calls = []
    batches = [{"input_ids": torch.zeros(n, 3)} for n in (1, 2, 4)]
    timed = interleaved_batch_latency(
        {"a": lambda b: calls.append(("a", b["input_ids"].shape[0])), "b": lambda b: calls.append(("b", 0))},
        batches,
        rounds=2,
        warmup=1,
        block_examples=1,
    )
    # warm-up and two rounds, each model once per batch, the order alternating from batch to batch
    assert len(calls) == 3 * 3 * 2
    assert [name for name, _ in calls[6:12]] == ["a", "b", "b", "a", "a", "b"]
    assert len(timed["a"]["rounds"]) == 2 and len(timed["a"]["batch_s"]) == 3
    assert timed["a"]["median_s"] >= 0 and timed["a"]["p90_ms_per_example"] >= 0


def test_interleaved_batch_latency_takes_turns_by_blocks_of_examples():
    from hf_earlyexit.evaluation import interleaved_batch_latency

    calls = []
    batches = [{"input_ids": torch.zeros(1, 3) + i} for i in range(5)]
    timed = interleaved_batch_latency(
        {name: lambda b, name=name: calls.append((name, int(b["input_ids"][0, 0]))) for name in "ab"},
        batches,
        rounds=1,
        warmup=0,
        block_examples=2,
    )
    # blocks of two one-example batches (and the last one alone): a runs a block, then b; the order alternates
    assert calls == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
        ("b", 2),
        ("b", 3),
        ("a", 2),
        ("a", 3),
        ("a", 4),
        ("b", 4),
    ]
    assert len(timed["b"]["batch_s"]) == 5
