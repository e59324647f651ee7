"""Early-exit BERT families. This folder is self-contained (torch and transformers only) so that it can be shipped
with a checkpoint as `trust_remote_code` code."""

from .configuration_early_exit_bert import BypassBertConfig, CascadeBertConfig, TokenExitBertConfig
from .modeling_bypass_bert import BertWithBypassExits, EarlyExitSequenceClassifierOutput
from .modeling_cascade_bert import BertForCascadeClassification, CascadeSequenceClassifierOutput
from .modeling_token_exit_bert import BertForTokenEarlyExit, EarlyExitTokenClassifierOutput
from .token_exit_utils import TokenExitRule, encode_words


__all__ = [
    "BertForCascadeClassification",
    "BertForTokenEarlyExit",
    "BertWithBypassExits",
    "BypassBertConfig",
    "CascadeBertConfig",
    "CascadeSequenceClassifierOutput",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTokenClassifierOutput",
    "TokenExitBertConfig",
    "TokenExitRule",
    "encode_words",
]
