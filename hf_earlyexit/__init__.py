"""hf_earlyexit: early-exit inference for BERT-style models in Hugging Face Transformers.

Importing the package registers every config and model with the Auto classes and the exit-aware pipelines.
"""

__version__ = "0.1.0.dev0"

from .models.bert import (
    BertForCascadeClassification,
    BertWithBypassExits,
    BypassBertConfig,
    CascadeBertConfig,
    CascadeSequenceClassifierOutput,
    EarlyExitSequenceClassifierOutput,
)
from .models.bert.exit_utils import ExitRule
from .pipelines import EarlyExitPipelineMixin, EarlyExitTextClassificationPipeline
from .registration import register


register()

__all__ = [
    "BertForCascadeClassification",
    "BertWithBypassExits",
    "BypassBertConfig",
    "CascadeBertConfig",
    "CascadeSequenceClassifierOutput",
    "EarlyExitPipelineMixin",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTextClassificationPipeline",
    "ExitRule",
    "__version__",
]
