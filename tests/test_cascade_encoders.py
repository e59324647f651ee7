"""Cascades of classifiers you already have: members of different architectures and vocabularies, each reading the
text through its own tokenizer, in a batch of real SST-2 sentences, answer exactly as each member's own pipeline; the
saved cascade carries every tokenizer (pipeline, server, reload)."""

import copy

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    pipeline,
)

from hf_earlyexit import BertForCascadeClassification, CascadeForSequenceClassification
from tests.utils import sst2_rows, tiny_config_kwargs, tiny_tokenizer


LABELS = {0: "negative", 1: "positive"}
SENTENCES = [sentence for sentence, _ in sst2_rows("dev", limit=24)]


def bpe_tokenizer(max_length: int = 64) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (RoBERTa's kind: `<s> ... </s>`, pad id 1) learnt on SST-2 training sentences."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [sentence for sentence, _ in sst2_rows("train", limit=2000)],
        vocab_size=300,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>", cls_token="<s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=max_length,
        **specials,
    )


def labelled(config):
    config.id2label, config.label2id = dict(LABELS), {name: i for i, name in LABELS.items()}
    return config


def spread_head(model, *names):
    """Classifier weights large enough that the confidences spread (a fresh head answers about 0.5 everywhere)."""
    torch.manual_seed(7)
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A small BERT classifier with a WordPiece tokenizer (99 tokens) and a larger RoBERTa classifier with a byte-level
    BPE one (300 tokens, another pad id), each saved with its tokenizer, as fine-tuned classifiers come."""
    root = tmp_path_factory.mktemp("members")
    torch.manual_seed(0)
    small = spread_head(
        BertForSequenceClassification(labelled(BertConfig(**tiny_config_kwargs(num_hidden_layers=2)))), "classifier"
    )
    small.save_pretrained(root / "bert")
    tiny_tokenizer(root).save_pretrained(root / "bert")
    tokenizer = bpe_tokenizer()
    large_config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    large = spread_head(RobertaForSequenceClassification(labelled(large_config)), "classifier.out_proj")
    large.save_pretrained(root / "roberta")
    tokenizer.save_pretrained(root / "roberta")
    return root / "bert", root / "roberta"


def own_answers(path) -> list[dict]:
    """The member's own pipeline, truncating at its tokenizer's limit as the cascade does (some dev sentences are
    longer than the tiny members' 64 positions)."""
    return pipeline("text-classification", model=str(path))(SENTENCES, truncation=True)


def member0_threshold(path) -> float:
    """The median confidence of the first member on the sentences: about half of them stop there."""
    return float(torch.tensor([result["score"] for result in own_answers(path)]).median())


def assert_as_each_member_answers(results, members_answers):
    stages = [result["exit_stage"] for result in results]
    assert set(stages) == {0, 1}, stages  # both members answer some sentences
    for index, (result, stage) in enumerate(zip(results, stages)):
        own = members_answers[stage][index]
        assert result["label"] == own["label"], (index, stage)
        assert result["score"] == pytest.approx(own["score"], abs=1e-5), (index, stage)


def test_from_members_of_two_architectures_keeps_every_tokenizer(members):
    cascade = BertForCascadeClassification.from_members(list(members))
    assert cascade.config.separate_tokenizers
    assert [member["model_type"] for member in cascade.config.members] == ["bert", "roberta"]
    assert [len(tokenizer) for tokenizer in cascade.tokenizers] == [99, 300]
    assert cascade.config.id2label == LABELS
    encoded = cascade.tokenize(SENTENCES[:3])
    assert set(encoded) == {"input_ids", "token_type_ids", "attention_mask", "input_ids_1", "attention_mask_1"}
    assert int(encoded["input_ids_1"][0, 0]) == 0 and int(encoded["input_ids"][0, 0]) == 2  # <s>, [CLS]


def test_a_batch_of_real_sentences_is_answered_as_each_member_answers(members):
    cascade = CascadeForSequenceClassification.from_members(list(members))
    threshold = member0_threshold(members[0])
    answers = [own_answers(path) for path in members]
    classifier = pipeline("text-classification", model=cascade, tokenizer=cascade.tokenizers[0])
    results = classifier(SENTENCES, exit_threshold=threshold, batch_size=8)
    assert_as_each_member_answers(results, answers)
    # the model called directly on a padded batch of both tokenizations: the same routing
    with torch.no_grad():
        out = cascade(**cascade.tokenize(SENTENCES), exit_threshold=threshold)
    assert out.exit_stage.tolist() == [result["exit_stage"] for result in results]
    assert out.exit_layer.tolist() == [2 if stage == 0 else 6 for stage in out.exit_stage.tolist()]


def test_the_saved_cascade_carries_every_tokenizer(members, tmp_path):
    cascade = BertForCascadeClassification.from_members(list(members))
    cascade.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_1" / "tokenizer.json").is_file()
    threshold = member0_threshold(members[0])
    answers = [own_answers(path) for path in members]
    results = pipeline("text-classification", model=str(tmp_path))(SENTENCES, exit_threshold=threshold, batch_size=8)
    assert_as_each_member_answers(results, answers)
    reloaded = BertForCascadeClassification.from_pretrained(tmp_path)
    assert [len(tokenizer) for tokenizer in reloaded.tokenizers] == [99, 300]

    from hf_earlyexit.serving import EarlyExitPredictor

    predictor = EarlyExitPredictor(str(tmp_path))
    request = predictor.parse({"inputs": SENTENCES, "parameters": {"exit_threshold": threshold}})
    (response,) = predictor.predict([request])
    assert [output["label"] for output in response["outputs"]] == [result["label"] for result in results]
    assert [output["exit_stage"] for output in response["outputs"]] == [result["exit_stage"] for result in results]


def test_members_that_share_a_vocabulary_share_the_tokenizer(members, tmp_path):
    """A DistilBERT member on the BERT member's WordPiece vocabulary: one tokenizer, no per-member inputs."""
    torch.manual_seed(1)
    distil = DistilBertConfig(vocab_size=99, dim=32, n_layers=4, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    model = spread_head(DistilBertForSequenceClassification(labelled(distil)), "classifier")
    model.save_pretrained(tmp_path)
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path)
    cascade = BertForCascadeClassification.from_members([members[0], tmp_path])
    assert not cascade.config.separate_tokenizers and cascade.tokenizers is None
    tokenizer = tiny_tokenizer(tmp_path)
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = cascade(**batch, early_exit=False)
        expected = model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="share one tokenizer: pass `input_ids`.*not \\['input_ids_1'\\]"):
        cascade(**batch, input_ids_1=batch["input_ids"])


def test_a_cascade_with_separate_tokenizers_needs_every_members_inputs(members):
    cascade = BertForCascadeClassification.from_members(list(members))
    encoded = cascade.tokenize(SENTENCES[:4])
    first = {k: v for k, v in encoded.items() if not k.endswith("_1")}
    with pytest.raises(ValueError, match="pass each member's token ids too, `input_ids_1`"):
        cascade(**first)
    with pytest.raises(ValueError, match="Inputs for members \\[2\\]"):
        cascade(**encoded, input_ids_2=encoded["input_ids"])
    with pytest.raises(ValueError, match="`input_ids_1` has 3 rows but `input_ids` has 4"):
        cascade(**{**encoded, "input_ids_1": encoded["input_ids_1"][:3], "attention_mask_1": None})
    with pytest.raises(ValueError, match="member 1 have 70 positions but it has 64"):
        cascade(**{**encoded, "input_ids_1": torch.ones(4, 70, dtype=torch.long), "attention_mask_1": None})
    with pytest.raises(ValueError, match="resize the member whose tokenizer grew"):
        cascade.resize_token_embeddings(120)


def test_members_must_agree_on_the_labels_by_name_and_order(members, tmp_path):
    model = RobertaForSequenceClassification.from_pretrained(members[1])
    model.config.id2label, model.config.label2id = {0: "positive", 1: "negative"}, {"positive": 0, "negative": 1}
    with pytest.raises(ValueError, match="label the classes differently"):
        BertForCascadeClassification.from_members([members[0], model], tokenizers=[None, None])
    config = copy.deepcopy(model.config)
    config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    config.label2id = {name: i for i, name in config.id2label.items()}
    three = RobertaForSequenceClassification(config)
    with pytest.raises(ValueError, match="must agree on `num_labels`.*member 0: 2, member 1: 3"):
        BertForCascadeClassification.from_members([members[0], three])


def test_members_of_different_vocabularies_without_their_tokenizers_are_refused(members):
    model = RobertaForSequenceClassification.from_pretrained(members[1])
    with pytest.raises(ValueError, match="each needs its own tokenizer, but those of members \\[1\\] are unknown"):
        BertForCascadeClassification.from_members([members[0], model])
    with pytest.raises(ValueError, match="one tokenizer per member \\(2\\)"):
        BertForCascadeClassification.from_members([members[0], model], tokenizers=[None])


def test_the_model_card_lists_every_members_architecture(members):
    from hf_earlyexit.model_card import EarlyExitModelCardData, model_card_for

    card = str(model_card_for(BertForCascadeClassification.from_members(list(members)), EarlyExitModelCardData()))
    assert (
        "a cascade of 2 models (bert, roberta), 2 layers of hidden size 32 and 4 layers of hidden size 48, each with "
        "its own tokenizer"
    ) in card
