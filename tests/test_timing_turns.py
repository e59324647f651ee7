"""`benchmarks/timing_turns.py` on a tiny multi-exit model: one speed-up per block size and round, written out."""

import json

import torch
from transformers import BertConfig, BertModel

from hf_earlyexit import BertWithBypassExits
from tests.utils import sst2_rows, tiny_config_kwargs, tiny_tokenizer


def test_timing_turns_measures_every_block_size(tmp_path):
    from benchmarks import timing_turns

    tiny_tokenizer(tmp_path).save_pretrained(tmp_path / "bert")
    torch.manual_seed(0)
    BertModel(BertConfig(**tiny_config_kwargs(num_hidden_layers=4))).save_pretrained(tmp_path / "bert")
    BertWithBypassExits.from_pretrained(tmp_path / "bert", num_labels=2).save_pretrained(tmp_path / "model")
    rows = sst2_rows("dev", limit=6)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s[:60]}\t{label}\n" for s, label in rows))
    result = timing_turns.main(
        ["--checkpoint", str(tmp_path / "model"), "--tokenizer", str(tmp_path / "bert"), "--data", str(tmp_path / "dev.tsv")]
        + ["--settings", '{"exit_threshold": 0.5}', "--sentences", "6", "--blocks", "1", "6", "--rounds", "2"]
        + ["--output", str(tmp_path / "turns.json")]
    )  # fmt: skip
    assert set(result["wallclock_speedup_per_round"]) == {"1", "6"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["wallclock_speedup_per_round"].values())
    assert result["flops_speedup"] >= 1.0 and result["sentences"] == 6
    assert json.loads((tmp_path / "turns.json").read_text())["command"].startswith("python -m benchmarks.timing_turns")
    assert "| 6 |" in (tmp_path / "turns.md").read_text()
