# Copyright 2026 The hf-earlyexit Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
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
