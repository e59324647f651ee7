import os


# offline by construction: set before transformers is imported anywhere
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_earlyexit.utils import default_backbone  # noqa: E402
from tests.utils import REPO_ROOT, tiny_tokenizer  # noqa: E402


# the test models are tiny: thread synchronisation would cost more than the work, and a busy machine makes it worse
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tokenizer(tmp_path):
    return tiny_tokenizer(tmp_path)


@pytest.fixture(scope="session")
def minilm():
    """Path of the embedded all-MiniLM-L6-v2 checkpoint (installed by the README's set-up)."""
    return default_backbone()


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT
