"""Early-exit BERT families. This folder is self-contained (torch and transformers only) so that it can be shipped
with a checkpoint as `trust_remote_code` code."""

from .configuration_early_exit_bert import BypassBertConfig, CascadeBertConfig
from .modeling_bypass_bert import BertWithBypassExits, EarlyExitSequenceClassifierOutput
from .modeling_cascade_bert import BertForCascadeClassification, CascadeSequenceClassifierOutput


__all__ = [
    "BertForCascadeClassification",
    "BertWithBypassExits",
    "BypassBertConfig",
    "CascadeBertConfig",
    "CascadeSequenceClassifierOutput",
    "EarlyExitSequenceClassifierOutput",
]
