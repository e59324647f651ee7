"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`, `PipelineTesterMixin`), taken from the test files
of the installed transformers version and run against our three families by `tests/test_transformers_common.py`.

The files are not in the transformers wheel; they ship in its source distribution on PyPI. [`fetch`] downloads the
sdist of the installed version once with pip (`pip download --no-binary :all: --no-deps transformers==<version>`),
extracts `tests/test_modeling_common.py`, `tests/test_configuration_common.py` and `tests/test_pipeline_mixin.py` into
a cache folder outside the repository, and [`load`] imports them from there as the package
`transformers_common_tests`. Nothing of transformers' test code is kept in this repository.

    python -m tests.transformers_common      # fetch (what `make test` does first); prints the folder

The cache folder is `<venv>/transformers-tests/<version>/` (`$HF_EARLYEXIT_TRANSFORMERS_TESTS` overrides it), so a
new venv or a transformers upgrade fetches the matching files again.

The three files import a few helpers from other test folders that the sdist does not ship; the cache gets small
stand-ins written here (`STAND_INS`), each saying what it replaces:
- `generation/test_utils.py`: `GenerationTesterMixin`, only used to check that a model that cannot generate does not
  inherit it (ours cannot generate);
- `exporters/test_export.py`: `ExportTesterMixin`, the base class of `ModelTesterMixin` that adds transformers'
  export tests (ONNX, dynamo, executorch...), which live in that unshipped file and so are not run;
- `utils/test_configuration_utils.py`: `config_common_kwargs`, one non-default value for every argument that
  `PreTrainedConfig` itself declares (the dict transformers keeps there lists the same arguments);
- `src/transformers/__init__.py`: the pipeline mixin imports "the transformers source tree" next to its tests; this
  empty module makes that import return the installed transformers.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


PACKAGE = "transformers_common_tests"
COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_pipeline_mixin.py")

STAND_INS = {
    "__init__.py": '"""transformers\' common test files, fetched from its sdist by tests/transformers_common.py."""\n',
    "generation/__init__.py": "",
    "generation/test_utils.py": (
        '"""Stand-in (the sdist does not ship tests/generation/): our models cannot generate, and the common tests\n'
        'only check that a model that cannot generate does not inherit this mixin."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "exporters/__init__.py": "",
    "exporters/test_export.py": (
        '"""Stand-in (the sdist does not ship tests/exporters/): the export tests (ONNX, dynamo, executorch...) live in\n'
        'that file and are not run."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": (
        '"""Stand-in (the sdist does not ship tests/utils/): one non-default value for every argument that\n'
        "`PreTrainedConfig` declares, which `ConfigTester.check_config_arguments_init` passes to a config and reads\n"
        'back."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}
# the pipeline mixin imports `<folder above its tests>/src/transformers` as transformers: let that be the installed one
SOURCE_TREE_STAND_IN = "src/transformers/__init__.py"


def transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def cache_dir(version: str | None = None) -> Path:
    root = os.environ.get("HF_EARLYEXIT_TRANSFORMERS_TESTS")
    base = Path(root) if root else Path(sys.prefix) / "transformers-tests"
    return base / (version or transformers_version())


def fetch(version: str | None = None) -> Path:
    """The cache folder holding `transformers_common_tests/` for `version` (default: the installed transformers),
    downloading and extracting the sdist first when it is not there yet. Idempotent; safe to interrupt (the folder
    appears complete or not at all)."""
    version = version or transformers_version()
    target = cache_dir(version)
    if (target / PACKAGE / COMMON_FILES[0]).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        scratch = Path(scratch)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"transformers=={version}",
            "-d",
            str(scratch),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(scratch.glob("transformers-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise RuntimeError(
                f"Could not download the transformers {version} source distribution, whose tests/ folder holds the "
                f"common model tests ({' '.join(command[2:])} failed: {done.stderr.strip()[-500:]}). Run it where PyPI "
                f"is reachable once, or point $HF_EARLYEXIT_TRANSFORMERS_TESTS at a folder that has "
                f"{version}/{PACKAGE}/."
            )
        staged = scratch / "staged"
        package = staged / PACKAGE
        package.mkdir(parents=True)
        with tarfile.open(archives[0]) as archive:
            for name in COMMON_FILES:
                member = archive.getmember(f"transformers-{version}/tests/{name}")
                (package / name).write_bytes(archive.extractfile(member).read())
        for name, text in STAND_INS.items():
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            (package / name).write_text(text, encoding="utf-8")
        (staged / SOURCE_TREE_STAND_IN).parent.mkdir(parents=True)
        (staged / SOURCE_TREE_STAND_IN).write_text(
            '"""Empty on purpose: importing this folder as transformers returns the installed transformers."""\n',
            encoding="utf-8",
        )
        try:
            staged.rename(target)
        except OSError:  # fetched by a concurrent run in the meantime
            if not (target / PACKAGE / COMMON_FILES[0]).is_file():
                raise
            shutil.rmtree(staged, ignore_errors=True)
    return target


def load(tiny_model_path: str | os.PathLike):
    """Imports `transformers_common_tests` (fetching it if needed) and returns the package.

    Args:
        tiny_model_path: The folder the pipeline mixin reads its tiny models from (`$TRANSFORMERS_TINY_MODEL_PATH`,
            with `reports/tiny_model_summary.json`); it must exist before the import, which reads the summary.
    """
    os.environ["TRANSFORMERS_TINY_MODEL_PATH"] = str(tiny_model_path)
    folder = str(fetch())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import importlib

    package = importlib.import_module(PACKAGE)
    for name in COMMON_FILES:
        importlib.import_module(f"{PACKAGE}.{name[:-3]}")
    return package


if __name__ == "__main__":
    print(fetch())
