"""Bad input, systematically (issue 17): for the Python API of the three families, their pipelines and every
subcommand of the command line, empty, oversized, wrongly typed, wrongly encoded, wrongly shaped input and damaged
files. Each case either gets an error whose message names what is wrong (the argument, option or file), or is handled
(a valid result); an uncaught exception or a message about something else fails. The saved checkpoints the cases read
are hashed before and after every test: none of them may change."""

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, pipeline

from hf_earlyexit import BertForCascadeClassification, BertForTokenEarlyExit, BertWithBypassExits
from hf_earlyexit.cli import main
from tests.test_modeling_bypass_bert import tiny_model as tiny_bypass
from tests.test_modeling_cascade_bert import tiny_cascade
from tests.test_modeling_token_exit_bert import tiny_model as tiny_token
from tests.utils import TINY_BERT, sst2_rows, tiny_tokenizer


FAMILIES = {
    "bypass": (lambda: tiny_bypass(num_labels=2), BertWithBypassExits),
    "cascade": (lambda: tiny_cascade(num_labels=2), BertForCascadeClassification),
    "token": (tiny_token, BertForTokenEarlyExit),
}
MAX_POSITIONS = TINY_BERT["max_position_embeddings"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved checkpoint (with tokenizer) per family, a labelled TSV, a CoNLL file."""
    root = tmp_path_factory.mktemp("fuzz")
    tokenizer = tiny_tokenizer(root)
    for family, (build, _) in FAMILIES.items():
        torch.manual_seed(0)
        build().save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
    rows = sst2_rows("dev", 24)
    (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    (root / "ner.conll").write_text("the DT O\nfilm NN B-LABEL_1\n\na DT O\nmovie NN B-LABEL_2\n")
    return root


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(autouse=True)
def checkpoints_stay_unchanged(workspace):
    before = {family: digest(workspace / family) for family in FAMILIES}
    yield
    assert {family: digest(workspace / family) for family in FAMILIES} == before


def family_params(families=tuple(FAMILIES)):
    return pytest.mark.parametrize("family", families)


# --------------------------------------------------------------------------------------------------------------------
# Python API: model.forward
# --------------------------------------------------------------------------------------------------------------------

IDS = torch.randint(5, TINY_BERT["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))

# (keyword arguments, what the message must say); `None`: handled, a valid output
FORWARD_CASES = [
    ({"input_ids": None}, "input_ids"),
    ({"input_ids": "a good film"}, "`input_ids` must be a torch.Tensor"),
    ({"input_ids": [[5, 6, 7]]}, "`input_ids` must be a torch.Tensor"),
    ({"input_ids": 3.5}, "`input_ids` must be a torch.Tensor"),
    ({"input_ids": torch.zeros(2, 6)}, "`input_ids` must be .* token ids, .* dtype torch.float32"),
    ({"input_ids": torch.zeros(2, 6, dtype=torch.bool)}, "`input_ids` must be .* dtype torch.bool"),
    ({"input_ids": torch.zeros(6, dtype=torch.long)}, r"`input_ids` must be a \(batch_size, sequence_length\)"),
    ({"input_ids": torch.zeros(2, 3, 4, dtype=torch.long)}, r"`input_ids` must be a \(batch_size, sequence_length\)"),
    ({"input_ids": torch.zeros(0, 6, dtype=torch.long)}, "empty batch"),
    ({"input_ids": torch.zeros(2, 0, dtype=torch.long)}, "empty batch"),
    ({"input_ids": torch.full((2, 6), 10**6)}, r"`input_ids` holds ids outside \[0, 99\)"),
    ({"input_ids": torch.full((2, 6), -1)}, r"`input_ids` holds ids outside"),
    ({"input_ids": torch.ones(2, MAX_POSITIONS + 1, dtype=torch.long)}, f"{MAX_POSITIONS + 1} positions but"),
    ({"attention_mask": "x"}, "`attention_mask` has shape"),
    ({"attention_mask": [[1] * 6] * 2}, "`attention_mask` has shape"),
    ({"attention_mask": torch.ones(2, 5, dtype=torch.long)}, r"`attention_mask` has shape \(2, 5\)"),
    ({"attention_mask": torch.ones(3, 6, dtype=torch.long)}, r"`attention_mask` has shape \(3, 6\)"),
    ({"attention_mask": torch.full((2, 6), 2)}, r"`attention_mask` must hold 0 \(padding\) and 1"),
    ({"attention_mask": torch.full((2, 6), 0.5)}, r"`attention_mask` must hold 0 \(padding\) and 1"),
    ({"attention_mask": torch.zeros(2, 6, dtype=torch.long)}, r"Rows \[0, 1\] have no real token"),
    ({"attention_mask": torch.ones(2, 6, dtype=torch.bool)}, None),
    ({"attention_mask": torch.ones(2, 6)}, None),
    ({"token_type_ids": "x"}, "`token_type_ids` must be a torch.Tensor"),
    ({"token_type_ids": torch.ones(2, 5, dtype=torch.long)}, r"`token_type_ids` has shape \(2, 5\)"),
    ({"token_type_ids": torch.ones(2, 6)}, "`token_type_ids` must hold integer ids"),
    ({"token_type_ids": torch.full((2, 6), 5)}, r"`token_type_ids` holds ids outside \[0, 2\)"),
    ({"position_ids": "x"}, "`position_ids` must be a torch.Tensor"),
    ({"position_ids": torch.ones(2, 5, dtype=torch.long)}, r"`position_ids` has shape \(2, 5\)"),
    ({"position_ids": torch.ones(2, 6)}, "`position_ids` must hold integer ids"),
    ({"position_ids": torch.full((2, 6), 500)}, r"`position_ids` holds ids outside \[0, 64\)"),
    ({"position_ids": torch.arange(6)}, r"`position_ids` has shape \(6,\)"),
    ({"position_ids": torch.arange(6)[None]}, None),
    ({"exit_threshold": "high"}, "`exit_threshold` must be a number"),
    ({"exit_threshold": float("nan")}, "`exit_threshold` must be a number"),
    ({"exit_threshold": [0.5] * 20}, "`exit_threshold` has 20 values"),
    ({"exit_threshold": {}}, "exit_threshold"),
    ({"early_exit": "no"}, "`early_exit` must be True, False or None"),
    ({"output_all_exits": 1}, "`output_all_exits` must be True, False or None"),
    ({"output_hidden_states": "all"}, "`output_hidden_states` must be True, False, None, or the index"),
    ({"return_dict": "yes"}, "`return_dict` must be True, False or None"),
    ({"exit_treshold": 0.9}, "unexpected keyword argument `exit_treshold` \\(did you mean `exit_threshold`"),
    ({"input_ids": IDS[:, :1]}, None),
]
SEQUENCE_CASES = [
    ({"exit_criterion": "telepathy"}, "telepathy"),
    ({"exit_criterion": 3}, "exit criterion 3"),
    ({"inputs_embeds": torch.zeros(2, 6, 7), "input_ids": None}, "inputs_embeds"),
    ({"labels": "x"}, "`labels` must be a torch.Tensor"),
    ({"labels": torch.ones(5, dtype=torch.long)}, r"`labels` has shape \(5,\)"),
    ({"labels": torch.full((2,), 9)}, r"`labels` must be class ids in \[0, 2\)"),
    ({"labels": torch.tensor([0.0, 1.0])}, "mean multi-label classification"),
]
TOKEN_CASES = [
    ({"exit_mode": "word"}, "`exit_mode` must be one of"),
    ({"window_size": 4}, "`window_size` must be an odd integer"),
    ({"window_size": "x"}, "window_size"),
    ({"inputs_embeds": torch.zeros(2, 6, 7), "input_ids": None}, r"`inputs_embeds` must be a .*hidden_size=32"),
    ({"word_ids": "x"}, "`word_ids` must be a torch.Tensor"),
    ({"word_ids": torch.ones(2, 5, dtype=torch.long)}, r"`word_ids` has shape \(2, 5\)"),
    ({"word_ids": torch.full((2, 6), -7)}, None),
    ({"labels": "x"}, "`labels` must be a torch.Tensor"),
    ({"labels": torch.full((2, 6), 9)}, r"`labels` must be tag ids in \[0, 3\)"),
    ({"active_depth": torch.full((2, 6), 99)}, r"`active_depth` must lie in \[1, 4\]"),
]


def forward_cases():
    for family in FAMILIES:
        extra = TOKEN_CASES if family == "token" else SEQUENCE_CASES
        for i, (kwargs, message) in enumerate(FORWARD_CASES + extra):
            yield pytest.param(family, kwargs, message, id=f"{family}-{i}-{'-'.join(kwargs)}")


@pytest.mark.parametrize("family, kwargs, message", list(forward_cases()))
def test_forward(workspace, family, kwargs, message):
    model = FAMILIES[family][1].from_pretrained(workspace / family).eval()
    kwargs = {"input_ids": IDS, **kwargs}
    if kwargs["input_ids"] is None and "inputs_embeds" not in kwargs:
        kwargs.pop("input_ids")
    elif kwargs["input_ids"] is None:
        kwargs.pop("input_ids")
    if message is None:
        with torch.no_grad():
            out = model(**kwargs)
        assert out.logits.shape[0] == 2 and torch.isfinite(out.logits).all()
        return
    with pytest.raises((ValueError, TypeError), match=message):
        with torch.no_grad():
            model(**kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Python API: loading damaged or wrong checkpoints
# --------------------------------------------------------------------------------------------------------------------


def damaged_copy(workspace, tmp_path, family, damage):
    folder = shutil.copytree(workspace / family, tmp_path / family)
    damage(folder)
    return folder


def truncate_weights(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write(name, content):
    def damage(folder):
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return damage


def edit_config(**fields):
    def damage(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **fields}))

    return damage


LOAD_CASES = [
    ("truncated weights", truncate_weights, OSError, "model.safetensors is damaged"),
    ("weights that are text", write("model.safetensors", "not a safetensors file"), OSError, "damaged"),
    ("config that is not JSON", write("config.json", "{not json"), OSError, "config.json"),
    ("config that is not UTF-8", write("config.json", b"\xff\xfe{}"), OSError, "config.json"),
    ("empty config", write("config.json", ""), OSError, "config.json"),
    ("missing weights", lambda folder: (folder / "model.safetensors").unlink(), OSError, "model.safetensors"),
    ("threshold that is a word", edit_config(exit_threshold="high"), Exception, "exit_threshold"),
    ("pooling that does not exist", edit_config(exit_pooling="max"), Exception, "exit_pooling"),
]


@family_params()
@pytest.mark.parametrize("case, damage, error, message", LOAD_CASES, ids=[case[0] for case in LOAD_CASES])
def test_loading_a_damaged_checkpoint(workspace, tmp_path, family, case, damage, error, message):
    if case == "pooling that does not exist" and family == "token":
        damage = edit_config(window_size=4)
        message = "window_size"
    folder = damaged_copy(workspace, tmp_path, family, damage)
    before = digest(folder)
    with pytest.raises(error, match=message):
        FAMILIES[family][1].from_pretrained(folder)
    assert digest(folder) == before  # loading never writes


@family_params()
def test_loading_what_is_not_a_checkpoint(workspace, tmp_path, family):
    cls = FAMILIES[family][1]
    with pytest.raises(OSError, match="no file named model.safetensors"):
        cls.from_pretrained(tmp_path)  # an empty folder
    with pytest.raises(NotADirectoryError, match="is a file; `from_pretrained` reads a checkpoint folder"):
        cls.from_pretrained(workspace / "dev.tsv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cls.from_pretrained(tmp_path / "nowhere" / "model")
    with pytest.raises(TypeError, match="must be a checkpoint folder or a Hub id"):
        cls.from_pretrained(42)


# --------------------------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------------------------

PIPELINE_INPUT_CASES = [
    ("", None),
    ([], None),
    ("film " * 500, None),
    (None, "inputs must be a text or a list of texts, got NoneType"),
    (123, "got int"),
    (b"a film", "got bytes"),
    (["a good film", None], "item 1 is NoneType"),
    ([b"x"], "item 0 is bytes"),
]
PIPELINE_ARGUMENT_CASES = [
    ({"exit_threshold": "high"}, "`exit_threshold` must be a number"),
    ({"exit_threshold": [0.5] * 9}, "`exit_threshold` has 9 values"),
    ({"early_exit": "no"}, "`early_exit` must be True, False or None"),
    ({"exit_treshold": 0.9}, "`exit_treshold` \\(did you mean `exit_threshold`"),
]


def pipeline_of(workspace, family):
    task = "token-classification" if family == "token" else "text-classification"
    return pipeline(task, model=str(workspace / family))


@family_params()
@pytest.mark.parametrize("inputs, message", PIPELINE_INPUT_CASES, ids=lambda case: repr(case)[:20])
def test_pipeline_inputs(workspace, family, inputs, message):
    pipe = pipeline_of(workspace, family)
    if message is None:
        results = pipe(inputs)
        assert isinstance(results, list)
        return
    with pytest.raises((TypeError, ValueError), match=message):
        pipe(inputs)


@family_params()
@pytest.mark.parametrize("arguments, message", PIPELINE_ARGUMENT_CASES, ids=lambda case: str(case)[:25])
def test_pipeline_arguments(workspace, family, arguments, message):
    pipe = pipeline_of(workspace, family)
    with pytest.raises((TypeError, ValueError), match=message):
        pipe("a good film", **arguments)


@pytest.mark.parametrize(
    "family, argument", [("bypass", "window_size"), ("cascade", "patience"), ("token", "exit_criterion")]
)
def test_pipeline_exit_argument_of_another_family(workspace, family, argument):
    with pytest.raises((TypeError, ValueError), match=f"does not take `{argument}`"):
        pipeline_of(workspace, family)("a good film", **{argument: 3})


# --------------------------------------------------------------------------------------------------------------------
# Command line: every subcommand
# --------------------------------------------------------------------------------------------------------------------


def run_cli(argv, capsys, stdin=None, monkeypatch=None, command_line=main):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        status = command_line([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse's own usage errors
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def bad_files(root: Path) -> dict[str, Path]:
    files = {
        "empty": "",
        "header only": "sentence\tlabel\n",
        "latin-1": "sentence\tlabel\nun film très réussi\t1\n".encode("latin-1"),
        "binary": bytes(range(256)) * 4,
        "wrong columns": "review\tstars\ngood\t5\n",
        "labels the model lacks": "sentence\tlabel\na good film\t7\n",
    }
    paths = {}
    for name, content in files.items():
        path = root / f"{name.replace(' ', '_')}.tsv"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths[name] = path
    paths["a folder"] = root
    paths["missing"] = root / "missing.tsv"
    return paths


def damaged_checkpoints(workspace, root: Path) -> dict[str, Path]:
    cases = {
        "truncated weights": truncate_weights,
        "config that is not JSON": write("config.json", "{not json"),
        "missing weights": lambda folder: (folder / "model.safetensors").unlink(),
    }
    paths = {
        name: damaged_copy(workspace, root / name.replace(" ", "_"), "bypass", damage)
        for name, damage in cases.items()
    }
    (root / "empty").mkdir()
    paths["an empty folder"] = root / "empty"
    paths["a file"] = workspace / "dev.tsv"
    paths["missing"] = root / "nowhere" / "checkpoint"
    return paths


def assert_clear_failure(status, stdout, err, command, prog=None):
    """Status 1 or 2 and the command line's one error line (progress bars may print after it); returns that line.
    `prog` names the program when it is not `hf-earlyexit <command>`."""
    prog = prog or f"hf-earlyexit {command}"
    assert status in (1, 2), (status, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if f"{prog}: error:" in line]
    assert len(lines) == 1, err[-2000:]
    return lines[0][lines[0].index(prog) :]


DATA_COMMANDS = {
    "evaluate": ["--num_points", 2, "--timing_batch_sizes"],
    "calibrate": ["--target_speedup", 2, "--dry_run"],
}


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
@pytest.mark.parametrize(
    "data",
    ["empty", "header only", "latin-1", "binary", "wrong columns", "labels the model lacks", "a folder", "missing"],
)
def test_cli_bad_data(workspace, tmp_path, capsys, command, data):
    path = bad_files(tmp_path)[data]
    argv = [command, "--model", workspace / "bypass", "--data", path, *DATA_COMMANDS[command]]
    if command == "evaluate":
        argv += ["--output_dir", tmp_path / "out"]
    status, stdout, err = run_cli(argv, capsys)
    last = assert_clear_failure(status, stdout, err, command)
    assert "--data" in last or "`--text_column`" in last or "`--label_column`" in last


@pytest.mark.parametrize("command", ["predict", "evaluate", "calibrate"])
@pytest.mark.parametrize(
    "checkpoint",
    ["truncated weights", "config that is not JSON", "missing weights", "an empty folder", "a file", "missing"],
)
def test_cli_bad_checkpoint(workspace, tmp_path, capsys, command, checkpoint):
    path = damaged_checkpoints(workspace, tmp_path)[checkpoint]
    before = digest(path) if path.is_dir() else None
    argv = [command, "--model", path]
    argv += ["a good film"] if command == "predict" else ["--data", workspace / "dev.tsv", *DATA_COMMANDS[command]]
    if command == "evaluate":
        argv += ["--output_dir", tmp_path / "out"]
    status, stdout, err = run_cli(argv, capsys)
    last = assert_clear_failure(status, stdout, err, command)
    assert "--model" in last or str(path) in last
    if before is not None:
        assert digest(path) == before


PREDICT_CASES = [
    (["--exit_threshold", "abc", "text"], "`--exit_threshold`"),
    (["--exit_threshold", "", "text"], "`--exit_threshold`"),
    (["--exit_threshold", "0.5,abc", "text"], "`--exit_threshold`"),
    (["--exit_threshold", "nan", "text"], "`exit_threshold` must be a number"),
    (["--exit_threshold", "0.1,0.2,0.3,0.4,0.5,0.6", "text"], "`exit_threshold` has 6 values"),
    (["--exit_criterion", "telepathy", "text"], "telepathy"),
    (["--batch_size", "-1", "text"], "argument --batch_size"),
    (["--batch_size", "1e3", "text"], "argument --batch_size"),
    (["--max_seq_length", "0", "text"], "argument --max_seq_length"),
    (["   ", "\t"], "no text to classify"),
    (["--file", "{folder}"], "`--file`"),
    (["--file", "{binary}"], "`--file`"),
    (["--file", "{empty}"], "no text to classify"),
    (["a", "--file", "{empty}"], "not both"),
]


@pytest.mark.parametrize("extra, message", PREDICT_CASES, ids=lambda case: str(case)[:30])
def test_cli_predict(workspace, tmp_path, capsys, extra, message):
    files = bad_files(tmp_path)
    replace = {"{folder}": files["a folder"], "{binary}": files["binary"], "{empty}": files["empty"]}
    argv = ["predict", "--model", workspace / "bypass", *[replace.get(a, a) for a in extra]]
    status, stdout, err = run_cli(argv, capsys)
    assert stdout == ""
    if status == 2 and "argument" in message:  # argparse's usage error
        assert f"error: {message}" in err
        return
    last = assert_clear_failure(status, stdout, err, "predict")
    assert message in last


@pytest.mark.parametrize(
    "stdin, message",
    [(b"", "no text to classify"), (b"\xff\xfe\x00", "standard input is not UTF-8"), (b"\n\n  \n", "no text")],
)
def test_cli_predict_standard_input(workspace, capsys, monkeypatch, stdin, message):
    status, stdout, err = run_cli(["predict", "--model", workspace / "token"], capsys, stdin, monkeypatch)
    assert message in assert_clear_failure(status, stdout, err, "predict")


def test_cli_predict_handles_a_huge_text(workspace, capsys):
    status, stdout, err = run_cli(["predict", "--model", workspace / "cascade", "film " * 20000], capsys)
    assert status == 0, err
    assert len(stdout.splitlines()) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_points", "1"], "`--num_points`"),
        (["--rounds", "0"], "argument --rounds"),
        (["--timing_batch_sizes", "0"], "argument --timing_batch_sizes"),
        (["--thresholds", "abc"], "argument --thresholds"),
        (["--thresholds", "1.5"], "exit_threshold"),
        (["--criterion", "telepathy"], "`--criterion`"),
        (["--window_sizes", "3"], "`--window_sizes`"),
        (["--max_samples", "0"], "`--max_samples`"),
    ],
)
def test_cli_evaluate(workspace, tmp_path, capsys, extra, message):
    argv = ["evaluate", "--model", workspace / "bypass", "--data", workspace / "dev.tsv", "--output_dir", tmp_path]
    status, stdout, err = run_cli([*argv, "--timing_batch_sizes", *extra], capsys)
    if "argument" in message:
        assert status == 2 and f"error: {message}" in err
        return
    assert message in assert_clear_failure(status, stdout, err, "evaluate")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target_speedup", "-3"], "`--target_speedup`"),
        (["--target_speedup", "inf"], "`--target_speedup`"),
        (["--target_speedup", "2", "--max_seq_length", "0"], "argument --max_seq_length"),
        (["--target_speedup", "nan"], "`--target_speedup`"),
        (["--max_accuracy_drop", "-0.1"], "`--max_accuracy_drop`"),
        (["--target_speedup", "2", "--window_sizes", "3"], "`--window_sizes`"),
        (["--target_speedup", "2", "--criterion", "telepathy"], "`--criterion`"),
        (["--target_speedup", "2", "--tag_column", "7"], None),
    ],
)
def test_cli_calibrate(workspace, checkpoint_copy, capsys, extra, message):
    checkpoint = checkpoint_copy("bypass")
    before = digest(checkpoint)
    status, stdout, err = run_cli(
        ["calibrate", "--model", checkpoint, "--data", workspace / "dev.tsv", *extra], capsys
    )
    if message is not None and "argument" in message:
        assert status == 2 and f"error: {message}" in err
        return
    if message is None:  # an option of token models, ignored by a text classifier's data: handled
        assert status in (0, 1), err
        return
    assert message in assert_clear_failure(status, stdout, err, "calibrate")
    assert digest(checkpoint) == before


def test_cli_calibrate_token_model_on_bad_conll(workspace, checkpoint_copy, tmp_path, capsys):
    checkpoint = checkpoint_copy("token")
    before = digest(checkpoint)
    for content, message in [
        ("", "no sentences"),
        ("the DT\nfilm\n", "`--tag_column`"),
        ("the DT B-NOPE\n", "`--data`"),
        ("un film tr\xe8s DT O\n", None),
    ]:
        path = tmp_path / "bad.conll"
        path.write_bytes(content.encode("latin-1"))
        argv = ["calibrate", "--model", checkpoint, "--data", path, "--target_speedup", 2]
        status, stdout, err = run_cli(argv, capsys)
        last = assert_clear_failure(status, stdout, err, "calibrate")
        assert message is None or message in last, last
        assert "--data" in last or "--tag_column" in last
    assert digest(checkpoint) == before


@pytest.fixture
def checkpoint_copy(workspace, tmp_path):
    def copy(family):
        return shutil.copytree(workspace / family, tmp_path / family)

    return copy


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--family", "nope"], "--family"),
        (["--family", "bypass", "--train_file", "{missing}"], "{missing}"),
        (["--family", "bypass", "--train_file", "{empty}"], "{empty}"),
        (["--family", "bypass", "--train_file", "{latin-1}"], "is not UTF-8 text: byte 0xe8"),
        (["--family", "bypass", "--train_file", "{wrong columns}"], "column"),
        (["--family", "bypass", "--train_file", "{header only}"], "holds no examples"),
        (["--family", "bypass", "--model_name_or_path", "{nowhere}", "--train_file", "{train}"], "{nowhere}"),
        (
            [
                "--family",
                "bypass",
                "--model_name_or_path",
                "{bypass}",
                "--train_file",
                "{train}",
                "--exit_threshold",
                "2",
            ],
            "exit_threshold",
        ),
        (
            ["--family", "cascade", "--model_name_or_path", "{bypass}", "--train_file", "{train}"],
            "holds a 'bypass-bert' model",
        ),
    ],
)
def test_cli_train(workspace, tmp_path, capsys, extra, message):
    files = bad_files(tmp_path)
    replace = {f"{{{name}}}": str(path) for name, path in files.items()}
    replace.update({"{nowhere}": str(tmp_path / "nowhere/bert"), "{bypass}": str(workspace / "bypass")})
    replace["{train}"] = str(workspace / "dev.tsv")
    argv = ["train", *[replace.get(a, a) for a in extra], "--output_dir", tmp_path / "out", "--max_steps", 1]
    argv += ["--use_cpu", "--report_to", "none"]
    if "--model_name_or_path" not in extra:
        argv += ["--model_name_or_path", workspace / "bypass" if "cascade" not in extra else workspace / "bypass"]
    status, stdout, err = run_cli(argv, capsys)
    last = assert_clear_failure(status, stdout, err, "train")
    assert replace.get(message, message) in last, last


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_size", "-1"], "argument --train_size"),
        (["--batch_size", "0"], "argument --batch_size"),
        (["--rounds", "zero"], "argument --rounds"),
        (["--target_speedup", "0.5"], "`--target_speedup`"),
        (["--data_dir", "{missing}"], "{missing}"),
        (["--model", "{missing}"], "{missing}"),
    ],
)
def test_cli_quickstart(tmp_path, capsys, extra, message):
    replace = {"{missing}": str(tmp_path / "missing")}
    argv = ["quickstart", *[replace.get(a, a) for a in extra], "--output_dir", tmp_path / "out"]
    status, stdout, err = run_cli(argv, capsys)
    message = replace.get(message, message)
    if "argument" in message:
        assert status == 2 and f"error: {message}" in err
        return
    assert message in assert_clear_failure(status, stdout, err, "quickstart")


def test_benchmark_report_command(workspace, tmp_path, capsys):
    """`python -m benchmarks.report`, the repository's report command, answers as the subcommands do."""
    from benchmarks.report import PROG, cli

    report = tmp_path / "RESULTS.md"
    argv = ["--report_only", "--output", report, "--plots_dir", tmp_path / "plots", "--results_dir"]
    status, stdout, err = run_cli([*argv, workspace / "dev.tsv"], capsys, command_line=cli)
    assert "`--results_dir` " in assert_clear_failure(status, stdout, err, None, prog=PROG) and not report.exists()
    # a folder that does not exist yet is handled: a report that says no benchmark ran (documented)
    status, stdout, err = run_cli([*argv, tmp_path / "missing"], capsys, command_line=cli)
    assert status == 0 and "does not exist: the report will say no benchmark ran yet" in err and report.is_file()


def test_cli_unknown_command_and_options(capsys):
    for argv, message in [
        (["telepathy"], "invalid choice"),
        (["predict", "--model", "m", "--nope", "x"], "unrecognized arguments"),
    ]:
        status, _, err = run_cli(argv, capsys)
        assert status == 2 and message in err


def test_auto_model_loads_every_checkpoint_used_above(workspace):
    for family, (_, cls) in FAMILIES.items():
        assert type(AutoModel.from_pretrained(workspace / family)) is cls
