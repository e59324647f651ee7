"""transformers' own common tests against the three families: `ModelTesterMixin`, `ConfigTester` and
`PipelineTesterMixin` from the test files of the installed transformers version (fetched from its sdist by
`tests/transformers_common.py`, never kept in this repository), with a model tester per family, as transformers' own
model test files do.

Every common test passes or is skipped with a one-line reason (`SKIPS` below, or transformers' own conditions: no
GPU, no DeepSpeed, a test for another kind of model). `tests/conftest.py` prints the pass/skip counts at the end of
the run.

The pipeline mixin reads tiny checkpoints from `$TRANSFORMERS_TINY_MODEL_PATH` (transformers' tests download them
from the Hub's `hf-internal-testing` organisation); here they are written at import into a temporary folder from the
model testers' configs, and the task checks it runs (transformers keeps them in `tests/pipelines/`, which the sdist does
not ship) are `TextClassificationPipelineChecks` and `TokenClassificationPipelineChecks` below.
"""

import atexit
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import torch
from transformers import BertConfig, pipeline
from transformers.testing_utils import nested_simplify

from hf_earlyexit import (
    BertForCascadeClassification,
    BertForTokenEarlyExit,
    BertWithBypassExits,
    BypassBertConfig,
    CascadeBertConfig,
    TokenExitBertConfig,
)
from tests import transformers_common
from tests.utils import TINY_BERT, tiny_tokenizer


TINY_MODELS = Path(tempfile.mkdtemp(prefix="hf-earlyexit-tiny-models-"))
atexit.register(shutil.rmtree, TINY_MODELS, True)
ARCHITECTURES = (BertWithBypassExits, BertForCascadeClassification, BertForTokenEarlyExit)
(TINY_MODELS / "reports").mkdir()
(TINY_MODELS / "reports" / "tiny_model_summary.json").write_text(
    json.dumps(
        {cls.__name__: {"tokenizer_classes": ["BertTokenizer"], "processor_classes": []} for cls in ARCHITECTURES}
    )
)
transformers_common.load(TINY_MODELS)

from transformers_common_tests import test_pipeline_mixin  # noqa: E402
from transformers_common_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_common_tests.test_modeling_common import (  # noqa: E402
    ModelTesterMixin,
    ids_tensor,
    random_attention_mask,
)
from transformers_common_tests.test_pipeline_mixin import PipelineTesterMixin  # noqa: E402


# --------------------------------------------------------------------------------------------------------------------
# Model testers
# --------------------------------------------------------------------------------------------------------------------

# the suite's tiny BERT with two layers (the mixin's bound for a small model) and BERT's dropout, as transformers'
# own BERT tester has it
BERT_KWARGS = {
    **TINY_BERT,
    "num_hidden_layers": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "type_vocab_size": 16,
    "initializer_range": 0.02,
}


class EarlyExitModelTester:
    """What transformers' `BertModelTester` is to BERT, for one early-exit family: a tiny config and random inputs
    (token ids, random attention masks with holes, token types)."""

    batch_size = 7
    seq_length = 7
    is_training = True
    num_labels = 3
    vocab_size = BERT_KWARGS["vocab_size"]
    hidden_size = BERT_KWARGS["hidden_size"]
    num_hidden_layers = BERT_KWARGS["num_hidden_layers"]
    num_attention_heads = BERT_KWARGS["num_attention_heads"]
    type_vocab_size = BERT_KWARGS["type_vocab_size"]

    def __init__(self, parent):
        self.parent = parent

    def get_config(self):
        raise NotImplementedError

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
            "token_type_ids": ids_tensor([self.batch_size, self.seq_length], self.type_vocab_size),
        }
        return self.get_config(), inputs


class BypassModelTester(EarlyExitModelTester):
    def get_config(self):
        return BypassBertConfig(**BERT_KWARGS, num_labels=self.num_labels)


class TokenExitModelTester(EarlyExitModelTester):
    def get_config(self):
        return TokenExitBertConfig(**BERT_KWARGS, num_labels=self.num_labels)


# two one-layer members of different widths: the cascade's layers in all are within the mixin's "small model" bound
CASCADE_MEMBERS = [
    {**BERT_KWARGS, "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 20},
    {**BERT_KWARGS, "num_hidden_layers": 1},
]


class CascadeModelTester(EarlyExitModelTester):
    # the first member's shapes: `hidden_states` and `attentions` list the members' layers in order, the first member's
    # first (see `CascadeSequenceClassifierOutput`)
    hidden_size = CASCADE_MEMBERS[0]["hidden_size"]
    num_attention_heads = CASCADE_MEMBERS[0]["num_attention_heads"]
    num_hidden_layers = sum(member["num_hidden_layers"] for member in CASCADE_MEMBERS)
    expected_num_hidden_layers = sum(member["num_hidden_layers"] + 1 for member in CASCADE_MEMBERS)

    def get_config(self, members=CASCADE_MEMBERS):
        return CascadeBertConfig(members=[BertConfig(**member) for member in members], num_labels=self.num_labels)


# --------------------------------------------------------------------------------------------------------------------
# What does not apply, one line each
# --------------------------------------------------------------------------------------------------------------------

# test -> why it does not apply to a family (transformers' own conditions skip the others: GPU, flash attention...)
SKIPS = {
    BertWithBypassExits: {},
    BertForCascadeClassification: {
        "test_inputs_embeds": "every member embeds the tokens itself, at its own width: a cascade takes input_ids only",
    },
    BertForTokenEarlyExit: {},
}


class EarlyExitCommonTestsMixin(ModelTesterMixin, PipelineTesterMixin):
    """The mixins, with the labels of each family for `return_labels=True` and the skips of `SKIPS`."""

    model_tester_class = None
    token_labels = False

    def setUp(self):
        reason = SKIPS[self.all_model_classes[0]].get(self._testMethodName)
        if reason is not None:
            self.skipTest(reason)
        self.model_tester = self.model_tester_class(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels:  # the stock helper knows only transformers' own classes
            shape = (self.model_tester.batch_size,)
            if self.token_labels:
                shape = (self.model_tester.batch_size, self.model_tester.seq_length)
            inputs_dict["labels"] = torch.zeros(shape, dtype=torch.long)
        return inputs_dict


class BertWithBypassExitsTest(EarlyExitCommonTestsMixin, unittest.TestCase):
    all_model_classes = (BertWithBypassExits,)
    pipeline_model_mapping = {"text-classification": BertWithBypassExits}
    model_tester_class = BypassModelTester


class BertForCascadeClassificationTest(EarlyExitCommonTestsMixin, unittest.TestCase):
    all_model_classes = (BertForCascadeClassification,)
    pipeline_model_mapping = {"text-classification": BertForCascadeClassification}
    model_tester_class = CascadeModelTester

    def _prepare_config_and_inputs_for_retain_grad_hidden_states_attentions(self):
        # in training the cascade answers with its last member, so gradients reach only that member's states; with a
        # single member, `hidden_states[0]` and `attentions[0]` (the first member's) are the answering member's
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        return self.model_tester.get_config(members=CASCADE_MEMBERS[:1]), inputs


class BertForTokenEarlyExitTest(EarlyExitCommonTestsMixin, unittest.TestCase):
    all_model_classes = (BertForTokenEarlyExit,)
    pipeline_model_mapping = {"token-classification": BertForTokenEarlyExit}
    model_tester_class = TokenExitModelTester
    token_labels = True


# --------------------------------------------------------------------------------------------------------------------
# ConfigTester, one test per check (transformers' model tests run them all in one `test_config`)
# --------------------------------------------------------------------------------------------------------------------

CONFIG_CHECKS = (
    "create_and_test_config_common_properties",
    "create_and_test_config_to_json_string",
    "create_and_test_config_to_json_file",
    "create_and_test_config_from_and_save_pretrained",
    "create_and_test_config_from_and_save_pretrained_subfolder",
    "create_and_test_config_from_and_save_pretrained_composite",
    "create_and_test_config_with_num_labels",
    "check_config_arguments_init",
    "create_and_test_config_from_pretrained_custom_kwargs",
    "check_config_can_be_init_without_params",
)


class EarlyExitConfigTestsMixin:
    config_class = None
    config_kwargs: dict = {}
    common_properties = None
    config_skips: dict = {}

    def setUp(self):
        self.model_tester = None
        self.config_tester = ConfigTester(
            self, config_class=self.config_class, common_properties=self.common_properties, **self.config_kwargs
        )

    for _check in CONFIG_CHECKS:

        def _test(self, check=_check):
            if check in self.config_skips:
                self.skipTest(self.config_skips[check])
            getattr(self.config_tester, check)()

        locals()[f"test_{_check}"] = _test
    del _check, _test


class BypassBertConfigTest(EarlyExitConfigTestsMixin, unittest.TestCase):
    config_class = BypassBertConfig
    config_kwargs = dict(**BERT_KWARGS, exit_criterion="entropy", exit_threshold=0.2, bypass_dim=8)
    config_skips = {
        "check_config_arguments_init": "the common arguments make a one-label regression model, whose exits need "
        "exit_criterion='patience' (the default max_prob needs class probabilities); refused by design",
    }


class TokenExitBertConfigTest(EarlyExitConfigTestsMixin, unittest.TestCase):
    config_class = TokenExitBertConfig
    config_kwargs = dict(**BERT_KWARGS, exit_mode="sentence", exit_threshold=0.2, window_size=3)
    config_skips = {
        "check_config_arguments_init": "the common arguments give one label; a tagger's exits need >= 2 tags (a word's "
        "uncertainty is H(p) / log C); refused by design",
    }


class CascadeBertConfigTest(EarlyExitConfigTestsMixin, unittest.TestCase):
    config_class = CascadeBertConfig
    # the members in the form the config stores them, so that `to_json_string` gives back what was passed
    config_kwargs = dict(
        members=CascadeBertConfig(members=[BertConfig(**member) for member in CASCADE_MEMBERS]).members,
        exit_threshold=0.8,
    )
    # a cascade has no width or depth of its own (its members have); `vocab_size` is their shared vocabulary's
    common_properties = []
    config_skips = {
        "check_config_arguments_init": "the common arguments make a one-label regression model; a cascade routes on "
        "class probabilities and refuses num_labels < 2 by design",
    }


# --------------------------------------------------------------------------------------------------------------------
# The pipeline mixin's tiny checkpoints and task checks
# --------------------------------------------------------------------------------------------------------------------


def _write_tiny_checkpoints() -> None:
    tokenizer = tiny_tokenizer(TINY_MODELS)
    for cls, tester in (
        (BertWithBypassExits, BypassModelTester),
        (BertForCascadeClassification, CascadeModelTester),
        (BertForTokenEarlyExit, TokenExitModelTester),
    ):
        folder = TINY_MODELS / cls.config_class.model_type / cls.__name__
        torch.manual_seed(0)
        cls(tester(None).get_config()).save_pretrained(folder)
        tokenizer.save_pretrained(folder)


_write_tiny_checkpoints()


class _Checks:
    """`assertEqual` and friends without being a `unittest.TestCase` (pytest would collect it as one)."""

    def assertEqual(self, first, second):
        assert first == second, (first, second)

    def assertIn(self, member, container):
        assert member in container, (member, container)


class _Any:
    """Equal to any instance of the given types (transformers' pipeline tests' `ANY`)."""

    def __init__(self, *types):
        self.types = types

    def __eq__(self, other):
        return isinstance(other, self.types)

    def __repr__(self):
        return f"ANY({', '.join(t.__name__ for t in self.types)})"


class TextClassificationPipelineChecks(_Checks):
    """The checks transformers runs on a text-classification pipeline of a tiny model, plus the exit fields."""

    def get_test_pipeline(
        self, model, tokenizer=None, image_processor=None, feature_extractor=None, processor=None, dtype="float32"
    ):
        classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, dtype=dtype)
        return classifier, ["HuggingFace is in", "This is another test"]

    def run_pipeline_test(self, classifier, _):
        names = set(classifier.model.config.id2label.values())
        result = {"label": _Any(str), "score": _Any(float), "exit_layer": _Any(int)}
        if isinstance(classifier.model, BertForCascadeClassification):
            result["exit_stage"] = _Any(int)
        outputs = classifier("HuggingFace is in")
        self.assertEqual(nested_simplify(outputs), [result])
        self.assertIn(outputs[0]["label"], names)
        outputs = classifier(["HuggingFace is in ", "Paris is in France"])
        self.assertEqual(nested_simplify(outputs), [result, result])
        outputs = classifier(["HuggingFace is in ", "Paris is in France"], top_k=None)
        self.assertEqual(len(outputs), 2)
        self.assertEqual(len(outputs[0]), len(names))
        outputs = classifier({"text": "HuggingFace is in ", "text_pair": "Paris is in France"})
        self.assertEqual(nested_simplify(outputs), result)
        try:
            classifier([["HuggingFace is in ", "Paris is in France"]])
        except ValueError:
            pass
        else:
            raise AssertionError("a list of pairs must be refused, as transformers' pipeline does")


class TokenClassificationPipelineChecks(_Checks):
    """The checks transformers runs on a token-classification pipeline of a tiny model, plus the exit fields."""

    def get_test_pipeline(
        self, model, tokenizer=None, image_processor=None, feature_extractor=None, processor=None, dtype="float32"
    ):
        tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, dtype=dtype)
        return tagger, ["A simple string", "A simple string that is quite a bit longer"]

    def run_pipeline_test(self, tagger, _):
        token = {
            "entity": _Any(str),
            "score": _Any(float),
            "start": _Any(int),
            "end": _Any(int),
            "index": _Any(int),
            "word": _Any(str),
            "exit_layer": _Any(int),
        }
        outputs = tagger("A simple string")
        self.assertEqual(nested_simplify(outputs), [token] * len(outputs))
        outputs = tagger(["list of strings", "A simple string that is quite a bit longer"])
        self.assertEqual(nested_simplify(outputs), [[token] * len(outputs[0]), [token] * len(outputs[1])])
        group = {key: value for key, value in token.items() if key not in ("entity", "index")}
        group["entity_group"] = _Any(str)
        for strategy in ("simple", "first", "max", "average"):
            grouped = pipeline(
                "token-classification", model=tagger.model, tokenizer=tagger.tokenizer, aggregation_strategy=strategy
            )
            outputs = grouped("A simple string")
            self.assertEqual(nested_simplify(outputs), [group] * len(outputs))


test_pipeline_mixin.pipeline_test_mapping["text-classification"]["test"] = (
    f"{__name__}.TextClassificationPipelineChecks"
)
test_pipeline_mixin.pipeline_test_mapping["token-classification"]["test"] = (
    f"{__name__}.TokenClassificationPipelineChecks"
)
