"""hf_earlyexit: early-exit inference for BERT-style models in Hugging Face Transformers.

Importing the package registers every config and model with the Auto classes and the exit-aware pipelines.
"""

__version__ = "0.1.0.dev0"

from .losses import (
    AlternatingExitLoss,
    DistillationExitLoss,
    ExitLoss,
    JointExitLoss,
    TwoStageExitLoss,
    register_exit_loss,
)
from .models.bert import BertWithBypassExits, BypassBertConfig, EarlyExitSequenceClassifierOutput
from .models.bert.exit_utils import ExitRule
from .registration import register
from .trainer import EarlyExitTrainer
from .training_args import EarlyExitTrainingArguments


register()

__all__ = [
    "AlternatingExitLoss",
    "BertWithBypassExits",
    "BypassBertConfig",
    "DistillationExitLoss",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTrainer",
    "EarlyExitTrainingArguments",
    "ExitLoss",
    "ExitRule",
    "JointExitLoss",
    "TwoStageExitLoss",
    "__version__",
    "register_exit_loss",
]
