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
"""The early-exit families (and the backbone layer under them). This folder is self-contained (torch and transformers
only) so that it can be shipped with a checkpoint as `trust_remote_code` code.

Each family is one class that takes any supported encoder, read from the checkpoint's config (see
`configuration_encoder`); the classes keep their BERT names, which every checkpoint records, and are also exported
under architecture-neutral names: `EncoderWithBypassExits`, `EncoderForTokenEarlyExit` and
`CascadeForSequenceClassification` (with `BypassExitConfig`, `TokenExitConfig`, `CascadeConfig`).
"""

from .backbones import SUPPORTED_MODEL_TYPES
from .configuration_early_exit_bert import BypassBertConfig, CascadeBertConfig, TokenExitBertConfig
from .modeling_bypass_bert import BertWithBypassExits, EarlyExitSequenceClassifierOutput
from .modeling_cascade_bert import BertForCascadeClassification, CascadeSequenceClassifierOutput
from .modeling_token_exit_bert import BertForTokenEarlyExit, EarlyExitTokenClassifierOutput
from .token_exit_utils import TokenExitRule, encode_words


# the architecture-neutral names of the families: the same classes
EncoderWithBypassExits = BertWithBypassExits
EncoderForTokenEarlyExit = BertForTokenEarlyExit
CascadeForSequenceClassification = BertForCascadeClassification
BypassExitConfig = BypassBertConfig
TokenExitConfig = TokenExitBertConfig
CascadeConfig = CascadeBertConfig


__all__ = [
    "BertForCascadeClassification",
    "BertForTokenEarlyExit",
    "BertWithBypassExits",
    "BypassBertConfig",
    "BypassExitConfig",
    "CascadeBertConfig",
    "CascadeConfig",
    "CascadeForSequenceClassification",
    "CascadeSequenceClassifierOutput",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTokenClassifierOutput",
    "EncoderForTokenEarlyExit",
    "EncoderWithBypassExits",
    "SUPPORTED_MODEL_TYPES",
    "TokenExitBertConfig",
    "TokenExitConfig",
    "TokenExitRule",
    "encode_words",
]
