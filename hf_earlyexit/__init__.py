"""hf_earlyexit: early-exit inference for BERT-style models in Hugging Face Transformers.

Importing the package registers every config and model with the Auto classes and the exit-aware pipelines.
"""

__version__ = "0.1.0.dev0"

from .models.bert import (
    BertForTokenEarlyExit,
    BertWithBypassExits,
    BypassBertConfig,
    EarlyExitSequenceClassifierOutput,
    EarlyExitTokenClassifierOutput,
    TokenExitBertConfig,
    TokenExitRule,
    encode_words,
)
from .models.bert.exit_utils import ExitRule
from .registration import register


register()

__all__ = [
    "BertForTokenEarlyExit",
    "BertWithBypassExits",
    "BypassBertConfig",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTokenClassifierOutput",
    "ExitRule",
    "TokenExitBertConfig",
    "TokenExitRule",
    "__version__",
    "encode_words",
]
