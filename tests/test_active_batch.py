"""The bookkeeping every early-exit loop shares: rows and columns of the caller's batch through compaction."""

import torch

from hf_earlyexit.models.bert.active_batch import ActiveBatch, LayerOutputs


def test_rows_and_columns_map_back_to_the_callers_batch():
    # 4 rows, left and right padding: columns 0 and 5 are padding in every row
    attention_mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]])
    values = torch.arange(24).view(4, 6)
    batch = ActiveBatch(4, 6, attention_mask.device, example_thresholds=True)
    assert batch.recorded_rows is None and batch.threshold_rows.tolist() == [0, 1, 2, 3]

    attention_mask, values = batch.drop_padding_columns(attention_mask, values)
    assert batch.columns.tolist() == [1, 2, 3, 4]
    assert torch.equal(values, torch.arange(24).view(4, 6)[:, 1:5])

    out = torch.full((4,), -1)
    fires = torch.tensor([False, True, False, True])
    batch.scatter(fires, (out, torch.tensor([10, 11, 12, 13])))
    assert out.tolist() == [-1, 11, -1, 13]

    attention_mask, values, nothing = batch.drop_rows(~fires, attention_mask, values, None)
    assert nothing is None and batch.rows.tolist() == [0, 2] and batch.recorded_rows.tolist() == [0, 2]
    attention_mask, values = batch.drop_padding_columns(attention_mask, values)
    # rows 0 and 2 are real at columns 1..4 of the caller's batch, and column 1 is padding for row 2 only
    assert batch.columns.tolist() == [1, 2, 3, 4] and attention_mask.shape == (2, 4)
    # flat positions of the compacted (2, 4) layout -> the caller's (4, 6) layout
    positions = torch.tensor([0, 5, 7])  # (row 0, col 0), (row 1, col 1), (row 1, col 3)
    assert batch.caller_positions(positions, positions // 4, 4).tolist() == [0 * 6 + 1, 2 * 6 + 2, 2 * 6 + 4]
    # a model embedding the compacted columns keeps the caller's positions
    assert batch.position_ids(None).tolist() == [[1, 2, 3, 4], [1, 2, 3, 4]]

    batch.scatter(None, (out, torch.tensor([20, 22])))
    assert out.tolist() == [20, 11, 22, 13]
    assert batch.drop_rows(torch.tensor([False, False]), values) is None and batch.rows.numel() == 0


def test_nothing_is_dropped_or_mapped_while_recording_or_without_padding():
    attention_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    recording = ActiveBatch(2, 3, attention_mask.device, LayerOutputs(2, True, False))
    assert recording.drop_padding_columns(attention_mask)[0] is attention_mask
    assert recording.position_ids(None) is None and recording.threshold_rows is None
    full = torch.ones(2, 3, dtype=torch.long)
    plain = ActiveBatch(2, 3, full.device)
    assert plain.drop_padding_columns(full)[0] is full and plain.columns.tolist() == [0, 1, 2]
