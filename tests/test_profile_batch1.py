"""The batch-1 profiler (`benchmarks/profile_batch1.py`) on a tiny model: every component is timed and accounted."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel

from tests.utils import sst2_rows, tiny_config_kwargs, tiny_tokenizer


def tiny_backbone(tmp_path, dev_rows: int = 0) -> None:
    """A tiny 6-layer BERT and its tokenizer in `tmp_path/model`; with `dev_rows`, that many SST-2 dev sentences in
    `tmp_path/dev.tsv`."""
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    BertModel(BertConfig(**tiny_config_kwargs(num_hidden_layers=6))).save_pretrained(tmp_path / "model")
    if dev_rows:
        rows = sst2_rows("dev", limit=dev_rows)
        text = "".join(f"{sentence[:60]}\t{label}\n" for sentence, label in rows)
        (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + text)


@pytest.mark.parametrize("family", ["bypass", "cascade"])
def test_profile_accounts_for_the_whole_forward(tmp_path, family):
    from benchmarks import profile_batch1

    tiny_backbone(tmp_path, dev_rows=8)
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
    assert (
        "| component | ms per sentence | share | calls per sentence | ms per call |"
        in (tmp_path / "profile.md").read_text()
    )
    # thresholds that never fire: every sentence runs every layer (and every exit head, or both cascade members)
    calls = result["calls_per_sentence"]
    if family == "bypass":
        assert calls["encoder layers"] == 6 and calls["exit heads"] == 6
    else:
        assert calls["cascade members"] == 2


def test_profile_of_token_exit_counts_calls_per_component(tmp_path):
    from benchmarks import profile_batch1

    tiny_backbone(tmp_path)
    lines = []
    for sentence, _ in sst2_rows("dev", limit=6):
        lines += [f"{word} NN O O" for word in sentence.split()[:12]] + [""]
    (tmp_path / "valid.txt").write_text("\n".join(lines) + "\n")
    # every word leaves at the first exit whose window is certain enough: with a threshold of 1.0 all do at once
    result = profile_batch1.main(
        ["--family", "token", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "valid.txt")]
        + ["--settings", '{"exit_mode": "token", "exit_threshold": 1.0}', "--sentences", "6", "--rounds", "1"]
    )
    components, calls = result["components_ms"], result["calls_per_sentence"]
    assert sum(components.values()) == pytest.approx(result["ms_per_sentence"]["early_exit"], rel=1e-9)
    assert calls["encoder layers"] == 1 and calls["exit heads"] == 1  # the first layer, then every word is done
    # every word left at the first exit, so no layer ran packed (a packed layer would be counted under its own name)
    assert "encoder layers, packed (frozen words skipped)" not in calls


def test_profile_under_int8_quantizes_both_models(tmp_path, monkeypatch):
    from benchmarks import compose, profile_batch1

    tiny_backbone(tmp_path, dev_rows=4)
    treated = []
    original = compose.treat
    monkeypatch.setattr(
        compose, "treat", lambda model, treatment: treated.append(treatment) or original(model, treatment)
    )
    result = profile_batch1.main(
        ["--family", "bypass", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "dev.tsv")]
        + ["--sentences", "4", "--rounds", "1", "--treatment", "int8", "--output", str(tmp_path / "profile.json")]
    )
    assert treated == ["int8", "int8"]  # the early-exit model and the plain one
    assert result["treatment"] == "int8" and ", int8:" in (tmp_path / "profile.md").read_text()
    assert sum(result["components_ms"].values()) == pytest.approx(result["ms_per_sentence"]["early_exit"], rel=1e-9)
