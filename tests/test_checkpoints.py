"""Saving and loading checkpoints (issue 17): a failed save leaves the previous checkpoint as it was, transformers'
`from_pretrained(None, config=..., state_dict=...)` works, and a checkpoint the class cannot load (another family, a
plain BERT for a cascade, a path that does not exist, a `bert` config holding exit heads) is named, not half-loaded."""

import errno
import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel, PreTrainedConfig
from transformers.utils import logging as transformers_logging

from hf_earlyexit import (
    BertForCascadeClassification,
    BertForTokenEarlyExit,
    BertWithBypassExits,
    BypassBertConfig,
    CascadeBertConfig,
    TokenExitBertConfig,
)
from hf_earlyexit.models.bert import configuration_early_exit_bert
from tests.test_modeling_bypass_bert import tiny_model as tiny_bypass
from tests.test_modeling_cascade_bert import tiny_cascade
from tests.test_modeling_token_exit_bert import tiny_model as tiny_token
from tests.utils import TINY_BERT, tiny_config_kwargs


FAMILIES = {"bypass": partial(tiny_bypass, num_labels=3), "cascade": tiny_cascade, "token": tiny_token}
CLASSES = {"bypass": BertWithBypassExits, "cascade": BertForCascadeClassification, "token": BertForTokenEarlyExit}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def inputs():
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, TINY_BERT["vocab_size"], (3, 9), generator=generator),
        "attention_mask": torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5]),
    }


def logits(model):
    with torch.no_grad():
        return model.eval()(**inputs()).logits


def hashes(folder) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


# --- atomic saves ----------------------------------------------------------------------------------------------------


def failing_after(real, fraction=0.5):
    """A writer that writes the first part of what it was asked to, then fails as a full disk does."""

    def write(*args, **kwargs):
        real(*args, **kwargs)
        path = Path(args[1] if len(args) > 1 else kwargs["filename"])
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_a_failure_while_writing_the_weights_leaves_the_previous_checkpoint(family, tmp_path, monkeypatch):
    old = FAMILIES[family]()
    old.save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")  # a file save_pretrained does not write: kept
    before, expected = hashes(tmp_path), logits(old)

    torch.manual_seed(1)
    new = FAMILIES[family](exit_threshold=0.5) if family != "token" else FAMILIES[family](exit_threshold=0.3)
    monkeypatch.setattr(
        transformers.modeling_utils, "safe_save_file", failing_after(transformers.modeling_utils.safe_save_file)
    )
    with pytest.raises(OSError, match="No space left"):
        new.save_pretrained(tmp_path)
    monkeypatch.undo()

    assert hashes(tmp_path) == before  # nothing of the new model, no temporary folder left behind
    reloaded = CLASSES[family].from_pretrained(tmp_path)
    torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=0)
    assert reloaded.config.to_dict() == CLASSES[family].from_pretrained(tmp_path).config.to_dict()


def test_a_failure_while_writing_the_config_leaves_the_previous_checkpoint(family, tmp_path, monkeypatch):
    old = FAMILIES[family]()
    old.save_pretrained(tmp_path)
    before, expected = hashes(tmp_path), logits(old)
    real = PreTrainedConfig.to_json_file

    def half_written(self, json_file_path, use_diff=True):
        real(self, json_file_path, use_diff)
        Path(json_file_path).write_text(Path(json_file_path).read_text()[:40])
        raise PermissionError(errno.EACCES, "Permission denied", str(json_file_path))

    monkeypatch.setattr(PreTrainedConfig, "to_json_file", half_written)
    with pytest.raises(PermissionError):
        FAMILIES[family]().save_pretrained(tmp_path)
    monkeypatch.undo()

    assert hashes(tmp_path) == before
    torch.testing.assert_close(logits(CLASSES[family].from_pretrained(tmp_path)), expected, rtol=0, atol=0)


def test_a_failure_in_the_remote_code_step_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from hf_earlyexit.models.bert import modeling_exit_heads

    FAMILIES["bypass"]().save_pretrained(tmp_path)
    before = hashes(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(modeling_exit_heads, "write_sharing_fields", broken)
    with pytest.raises(OSError, match="disk gone"):
        FAMILIES["bypass"]().save_pretrained(tmp_path, remote_code=True)
    assert hashes(tmp_path) == before


def test_a_successful_save_replaces_the_checkpoint_and_keeps_other_files(family, tmp_path):
    FAMILIES[family]().save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("card")
    torch.manual_seed(3)
    new = FAMILIES[family]()
    with torch.no_grad():
        for parameter in new.parameters():
            parameter.add_(0.01)
    new.save_pretrained(tmp_path)
    torch.testing.assert_close(logits(CLASSES[family].from_pretrained(tmp_path)), logits(new), rtol=0, atol=0)
    assert (tmp_path / "README.md").read_text() == "card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_a_smaller_save_removes_the_shards_of_a_larger_one(tmp_path):
    model = FAMILIES["bypass"]()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    torch.testing.assert_close(logits(BertWithBypassExits.from_pretrained(tmp_path)), logits(model), rtol=0, atol=0)


# --- from_pretrained(None, config=..., state_dict=...) ---------------------------------------------------------------


def test_from_pretrained_with_a_config_and_a_state_dict(family):
    model = FAMILIES[family]()
    loaded = CLASSES[family].from_pretrained(None, config=model.config, state_dict=model.state_dict())
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


# --- what a checkpoint holds -----------------------------------------------------------------------------------------


OTHER_FAMILY = [(family, saved) for family in sorted(FAMILIES) for saved in sorted(FAMILIES) if saved != family]


@pytest.mark.parametrize("family, saved", OTHER_FAMILY)
def test_another_familys_checkpoint_is_named(family, saved, tmp_path):
    FAMILIES[saved]().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"holds a {CLASSES[saved].__name__} checkpoint"):
        CLASSES[family].from_pretrained(tmp_path)


def test_a_checkpoint_of_another_model_type_is_named(family, tmp_path):
    # RoBERTa and the other supported encoders load (tests/test_encoders.py); an architecture without a backbone is
    # named, with the ones the families start from
    config = {**tiny_config_kwargs(), "model_type": "gpt2", "architectures": ["GPT2Model"]}
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds a 'gpt2' model.*bert, roberta, xlm-roberta, electra"):
        CLASSES[family].from_pretrained(tmp_path)


def test_a_plain_bert_checkpoint_is_not_a_cascade(tmp_path):
    BertModel(BertConfig(**tiny_config_kwargs())).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="plain BERT checkpoint.*from_backbone"):
        BertForCascadeClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="plain BERT checkpoint"):
        CascadeBertConfig.from_pretrained(tmp_path)


def relabel_as_bert(folder):
    path = Path(folder, "config.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "bert"}))


def test_a_bert_labelled_early_exit_checkpoint_loads_with_a_warning_through_its_class(family, tmp_path, caplog):
    model = FAMILIES[family]()
    model.save_pretrained(tmp_path)
    relabel_as_bert(tmp_path)
    transformers_logging.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger=configuration_early_exit_bert.logger.name):
        loaded = CLASSES[family].from_pretrained(tmp_path)
    assert f"says model_type 'bert' but holds {CLASSES[family].__name__} settings" in caplog.text
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("family, saved", OTHER_FAMILY)
def test_a_bert_labelled_checkpoint_of_another_family_is_refused(family, saved, tmp_path):
    FAMILIES[saved]().save_pretrained(tmp_path)
    relabel_as_bert(tmp_path)
    with pytest.raises(ValueError, match=f"holds the settings of a {CLASSES[saved].__name__} checkpoint"):
        CLASSES[family].from_pretrained(tmp_path)


def test_what_the_auto_classes_do_with_a_bert_labelled_checkpoint(tmp_path):
    """Documented, not ours to change: transformers picks its own BERT classes for model_type 'bert', reports the exit
    heads as unused weights and the classifier as new. Loading through our class (above) warns and keeps the heads."""
    FAMILIES["bypass"]().save_pretrained(tmp_path)
    relabel_as_bert(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "BertForSequenceClassification"


@pytest.mark.parametrize("path", ["runs/bypass/best", "./nowhere", "/no/such/folder", "~/no-such-checkpoint"])
def test_a_local_path_that_does_not_exist_is_named(family, path):
    with pytest.raises(FileNotFoundError, match="does not exist: no such checkpoint folder"):
        CLASSES[family].from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLASSES[family].config_class.from_pretrained(path)


def test_a_path_object_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertWithBypassExits.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertForCascadeClassification.from_backbone(tmp_path / "missing", member_layers=[1])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertForCascadeClassification.from_members(["./missing-small", "./missing-large"])


def test_auto_model_still_loads_every_family(family, tmp_path):
    model = FAMILIES[family]()
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is CLASSES[family]


# --- num_labels ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: BypassBertConfig(**tiny_config_kwargs(num_labels=0)), "num_labels must be >= 1"),
        (lambda: TokenExitBertConfig(**tiny_config_kwargs(num_labels=1)), "num_labels must be >= 2"),
        (lambda: TokenExitBertConfig(**tiny_config_kwargs(num_labels=0)), "num_labels must be >= 2"),
        (
            lambda: CascadeBertConfig(members=[BertConfig(**tiny_config_kwargs())], num_labels=0),
            "needs num_labels >= 2",
        ),
    ],
)
def test_configs_refuse_num_labels_their_heads_cannot_have(build, message):
    with pytest.raises(StrictDataclassError, match=message):
        build()


@pytest.mark.parametrize("num_labels", [0, 1, -2, 2.5, True])
def test_from_backbone_refuses_num_labels_below_two(num_labels):
    backbone = BertModel(BertConfig(**tiny_config_kwargs()))
    with pytest.raises(ValueError, match=f"num_labels must be an integer >= 2 .* got {num_labels!r}"):
        BertForCascadeClassification.from_backbone(backbone, member_layers=[1, 4], num_labels=num_labels)
    assert BertForCascadeClassification.from_backbone(backbone, member_layers=[1, 4], num_labels=3).num_labels == 3


def test_cascade_config_without_arguments_is_cascadeberts_own_setting():
    config = CascadeBertConfig()
    assert [member["num_hidden_layers"] for member in config.members] == [2, 12]
    assert {member["hidden_size"] for member in config.members} == {768}
    assert config.vocab_size == 30522 and config.num_labels == 2
    with pytest.raises(StrictDataclassError, match="`members` must list at least one"):
        CascadeBertConfig(members=[])
