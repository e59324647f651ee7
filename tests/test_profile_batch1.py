"""The batch-1 profiler (`benchmarks/profile_batch1.py`) on a tiny model: every component is timed and accounted."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel

from tests.utils import sst2_rows, tiny_config_kwargs, tiny_tokenizer


@pytest.mark.parametrize("family", ["bypass", "cascade"])
def test_profile_accounts_for_the_whole_forward(tmp_path, family):
    from benchmarks import profile_batch1

    tiny_tokenizer(tmp_path).save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    BertModel(BertConfig(**tiny_config_kwargs(num_hidden_layers=6))).save_pretrained(tmp_path / "model")
    rows = sst2_rows("dev", limit=8)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s[:60]}\t{label}\n" for s, label in rows))
    result = profile_batch1.main(
        ["--family", family, "--model", str(tmp_path / "model"), "--data", str(tmp_path / "dev.tsv")]
        + ["--sentences", "8", "--rounds", "1", "--output", str(tmp_path / "profile.json")]
    )
    components = result["components_ms"]
    assert "compaction" in components and "exit criterion" in components
    if family == "bypass":  # its loop branches on `bool(fires.any())` after every exit
        assert "host synchronisation" in components and "exit heads" in components
    # the parts add up to the measured time per sentence (the rest is what no wrapped piece took)
    assert sum(components.values()) == pytest.approx(result["ms_per_sentence"]["early_exit"], rel=1e-9)
    assert components["rest (Python, small ops of the loop)"] >= 0
    assert json.loads((tmp_path / "profile.json").read_text())["sentences"] == 8
    assert "| component | ms per sentence | share |" in (tmp_path / "profile.md").read_text()
