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


# --------------------------------------------------------------------------------------------------------------------
# transformers' common tests (tests/test_transformers_common.py)
# --------------------------------------------------------------------------------------------------------------------

COMMON_TESTS = "tests/test_transformers_common.py"
# marks that transformers' common test files and its `testing_utils` decorators put on their tests
TRANSFORMERS_MARKS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
    "is_pipeline_test",
    "is_training_test",
    "is_staging_test",
    "is_agent_test",
    "is_tensor_parallel_test",
    "is_expert_parallel_test",
    "is_fsdp_test",
)


def pytest_configure(config):
    for mark in TRANSFORMERS_MARKS:
        config.addinivalue_line("markers", f"{mark}: set by transformers' common tests ({COMMON_TESTS})")


def _skip_reason(report) -> str:
    """A skip reason with the test's and the model's names taken out, so that equal reasons group."""
    import re

    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    reason = re.sub(r"^\w+::test_\w+ is skipped: ", "", reason)
    reason = re.sub(r"`[\w-]+` is not in `self.pipeline_model_mapping` for `\w+`", "another task's pipeline", reason)
    return re.sub(
        r"<class '[\w.]+'>|\bBert(WithBypassExits|ForCascadeClassification|ForTokenEarlyExit)\b", "<model>", reason
    )


def pytest_terminal_summary(terminalreporter):
    """Pass/skip/fail counts of transformers' common tests, with the skip reasons, at the end of every run that ran
    them."""
    import collections

    from tests import transformers_common

    counts, reasons = collections.Counter(), collections.Counter()
    for outcome in ("passed", "failed", "skipped", "error", "subtests passed", "subtests skipped", "subtests failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if not getattr(report, "nodeid", "").startswith(COMMON_TESTS):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            counts[outcome] += 1
            if outcome.endswith("skipped"):
                reasons[_skip_reason(report)] += 1
    if not counts:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"transformers {transformers_common.transformers_version()} common tests")
    write(", ".join(f"{counts[outcome]} {outcome}" for outcome in ("passed", "skipped", "failed", "error")))
    subtests = {outcome: counts[f"subtests {outcome}"] for outcome in ("passed", "skipped", "failed")}
    if any(subtests.values()):  # pytest reports subtests one by one only in some verbosities (-q)
        write(", ".join(f"{count} subtests {outcome}" for outcome, count in subtests.items()))
    for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
        write(f"  skipped {count:3d}x: {reason}")
