"""Bad values fail before any work with exit 2 naming the flag (issue 12 #9): worker counts, runners, output
paths that are files or cannot be written, `run --dry-run` with a bad config, `run --encoder nope`.
Real parsers and real paths; none of these starts a pipeline or a training run."""
import os

import pytest

from captionbeam.launch.cli import main as cli


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    return str(path)


def _fails(capsys, argv, *expected):
    capsys.readouterr()
    try:
        rc = cli(argv)
    except SystemExit as e:          # argparse's error exit
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    for text in expected:
        assert text in err, err
    return err


def test_bad_numbers_and_runners_name_the_flag(capsys, tmp_path):
    img = str(tmp_path / "x.jpg")
    open(img, "wb").close()
    _fails(capsys, ["train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--cpu-replicas", "0"],
           "--cpu-replicas", "positive")
    feats = ["features", "--images", img, "--output", str(tmp_path / "f")]
    _fails(capsys, [*feats, "--direct_num_workers", "-2"], "--direct_num_workers: must be >= 0, got -2")
    _fails(capsys, [*feats, "--runner", "NoSuchRunner"], "--runner NoSuchRunner: Unexpected pipeline runner")
    _fails(capsys, [*feats, "--max-bytes", "0"], "--max-bytes")
    assert not os.path.exists(tmp_path / "f")                      # nothing was started


@pytest.mark.parametrize("command", [
    ["features", "--images", "x.jpg", "--output", "{file}"],
    ["captions", "--captions", "c.txt", "--output", "{file}"],
    ["bulk", "--images", "x.jpg", "--model-dir", "m", "--output", "{file}/sub"],
    ["train", "--data", "d", "--model-dir", "{file}"],
    ["export", "--model-dir", "m", "--output", "{file}"],
    ["sample", "--output", "{file}"],
    ["run", "--workdir", "{file}"],
])
def test_an_output_that_is_a_file_fails_before_the_work(capsys, a_file, command):
    flag = next(a for a in command if a.startswith("--") and "{file}" in command[command.index(a) + 1])
    _fails(capsys, [a.replace("{file}", a_file) for a in command], f"argument {flag}", a_file)


def test_outputs_that_cannot_be_written_fail_naming_the_flag(capsys, tmp_path):
    _fails(capsys, ["evaluate", "--model-dir", "m", "--data", "d", "--output", str(tmp_path)],
           "argument --output", "is a directory, not a file")
    _fails(capsys, ["evaluate", "--model-dir", "m", "--data", "d", "--output", "/proc/no/predictions.jsonl"],
           "argument --output", "cannot write in /proc")
    _fails(capsys, ["caption", "--model-dir", "m", "x.jpg", "--attention-plot", "/proc/plots"],
           "argument --attention-plot", "cannot write in /proc")


def test_run_checks_its_config_and_encoder_before_any_stage(capsys, tmp_path):
    err = _fails(capsys, ["run", "--workdir", str(tmp_path / "r"), "--epochs", "0", "--dry-run"],
                 "train.epochs: must be positive")
    assert err
    _fails(capsys, ["run", "--workdir", str(tmp_path / "r2"), "--encoder", "nope"],
           "--encoder: unknown encoder 'nope'")
    assert not os.path.exists(tmp_path / "r2" / "sample")          # the sample stage never ran
