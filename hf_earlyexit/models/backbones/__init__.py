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
"""The backbone layer under its own name: the modules live flat in `models/bert/` (`backbones`, `backbone_base`,
`backbone_bert_like`, `backbone_deberta`, `backbone_modernbert`), which is what ships with remote-code checkpoints."""

from ..bert.backbones import *  # noqa: F403
from ..bert.backbones import __all__  # noqa: F401
