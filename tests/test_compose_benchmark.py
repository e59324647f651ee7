"""The composition benchmark (`benchmarks/compose.py`) on a tiny checkpoint: every treatment is measured against fp32."""

import json

import pytest
import torch

from tests.test_modeling_bypass_bert import tiny_model
from tests.utils import sst2_rows, tiny_tokenizer


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(
        exit_criterion="max_prob", exit_threshold=0.5
    )  # two labels: max p >= 0.5 always, every example leaves early
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path / "model")
    rows = sst2_rows("dev", limit=12)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s[:60]}\t{label}\n" for s, label in rows))
    return tmp_path


def test_every_treatment_is_compared_with_fp32(checkpoint):
    from benchmarks import compose

    output = checkpoint / "compose.json"
    result = compose.main(
        ["--family", "bypass", "--checkpoint", str(checkpoint / "model"), "--data", str(checkpoint / "dev.tsv")]
        + ["--sentences", "12", "--batch_sizes", "1", "4", "--rounds", "1", "--threads", "1"]
        + ["--treatments", "fp32", "int8", "int8_layers", "bf16", "--output", str(output)]
    )
    rows = {row["treatment"]: row for row in result["rows"]}
    assert list(rows) == ["fp32", "int8", "int8_layers", "bf16"]
    assert rows["fp32"]["agreement_with_fp32"] == 1.0
    assert rows["fp32"]["speedup_vs_fp32"] == {"1": 1.0, "4": 1.0}
    for row in rows.values():
        assert set(row["wallclock_speedup"]) == {"1", "4"} and row["flops_speedup"] > 1.5
        assert 0.0 <= row["agreement_with_fp32"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
    assert json.loads(output.read_text())["sentences"] == 12
    table = output.with_suffix(".md").read_text()
    assert "| int8 |" in table and "| int8_layers |" in table and "| bf16 |" in table


def test_settings_override_the_checkpoints_exit_settings(checkpoint):
    from benchmarks import compose

    never = '{"exit_criterion": "max_prob", "exit_threshold": 1.0}'
    result = compose.main(
        ["--family", "bypass", "--checkpoint", str(checkpoint / "model"), "--data", str(checkpoint / "dev.tsv")]
        + ["--sentences", "4", "--batch_sizes", "2", "--rounds", "1", "--threads", "1", "--treatments", "fp32"]
        + ["--settings", never]
    )
    assert result["settings"] == {"exit_criterion": "max_prob", "exit_threshold": 1.0}
    assert result["rows"][0]["flops_speedup"] < 1.0  # nobody leaves early (the checkpoint alone: all leave at once)


def test_fp32_must_come_first(checkpoint, capsys):
    from benchmarks import compose

    with pytest.raises(SystemExit):
        compose.main(["--family", "bypass", "--checkpoint", str(checkpoint / "model"), "--treatments", "int8"])
    assert "--treatments: the first treatment must be fp32" in capsys.readouterr().err


def test_token_model_is_scored_once_per_word(tmp_path):
    from benchmarks import compose
    from hf_earlyexit import BertForTokenEarlyExit, TokenExitBertConfig
    from tests.utils import tiny_config_kwargs

    torch.manual_seed(0)
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path / "model")
    config = TokenExitBertConfig(**tiny_config_kwargs(num_hidden_layers=4, num_labels=3))
    BertForTokenEarlyExit(config).save_pretrained(tmp_path / "model")
    lines, words = [], 0
    for sentence, _ in sst2_rows("dev", limit=6):
        sentence_words = sentence.split()[:12]  # SST-2 words: the tiny vocabulary splits many into several pieces
        words += len(sentence_words)
        lines += [f"{word} NN O O" for word in sentence_words] + [""]
    (tmp_path / "valid.txt").write_text("\n".join(lines) + "\n")
    result = compose.main(
        ["--family", "token", "--checkpoint", str(tmp_path / "model"), "--data", str(tmp_path / "valid.txt")]
        + ["--sentences", "6", "--batch_sizes", "1", "3", "--rounds", "1", "--threads", "1", "--treatments", "fp32"]
        + ["--settings", '{"exit_mode": "token", "exit_threshold": 0.5, "window_size": 1}']
    )
    row = result["rows"][0]
    assert row["agreement_with_fp32"] == 1.0 and 0.0 <= row["accuracy"] <= 1.0
    assert row["words"] == words
