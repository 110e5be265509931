"""``captionbeam`` as a conventional command line (issue 19 item 7): quiet by default, ``--log-level``
before or after the command, ``--version``, ``captionbeam profiles``, one exit-code policy."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from captionbeam import __version__
from captionbeam.launch import cli, exit_codes
from captionbeam.launch.quiet import FrameworkRecords, configure_logging, split_log_level

# what TensorFlow's C++ logging, absl, Keras and Beam print when nobody silences them
FRAMEWORK_LINE = re.compile(r"^[IWE]\d{4} |cpu_feature_guard|oneDNN|tensorflow|absl|apache_beam|\bWARNING root\b|"
                            r"Warning:|Resource module", re.MULTILINE)
ENCODER = ["--encoder", "mobilenet", "--weights", "none", "--image-size", "32", "--batch-size", "4"]


def test_split_log_level_reads_the_flag_anywhere():
    assert split_log_level(["--log-level", "debug", "features", "--x"], "INFO") == ("DEBUG", ["features", "--x"])
    assert split_log_level(["features", "--x", "--log-level=WARNING"], "INFO") == ("WARNING", ["features", "--x"])
    assert split_log_level(["features"], "error") == ("ERROR", ["features"])
    assert split_log_level(["x", "--", "--log-level", "DEBUG"], "INFO") == ("INFO", ["x", "--", "--log-level", "DEBUG"])


def test_version_profiles_and_log_level_after_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"captionbeam {__version__}"
    assert cli.main(["profiles", "list", "--log-level", "WARNING"]) == exit_codes.OK
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"local", "dataflow", "flink", "spark", "prism"} <= set(names)
    assert cli.main(["--log-level", "ERROR", "profiles", "show", "local", "--command", "bulk"]) == exit_codes.OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["profile"] == "local" and shown["command"] == "bulk" and "--runner=DirectRunner" in shown["beam_flags"]
    with pytest.raises(SystemExit) as e:                       # an unknown profile is bad input: exit 2
        cli.main(["profiles", "show", "no-such-profile"])
    assert e.value.code == exit_codes.USAGE and "unknown profile 'no-such-profile'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--output", "x", "--log-level", "LOUD"])
    assert e.value.code == exit_codes.USAGE and "--log-level: invalid choice: 'LOUD'" in capsys.readouterr().err


def _features(sample_dir, out, *extra):
    images = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:2]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CAPTIONBEAM_LOG")}
    return subprocess.run([sys.executable, "-m", "captionbeam.launch", "features", "--images", *images,
                           "--output", str(out), *ENCODER, "--runner=DirectRunner", *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def test_a_beam_and_tensorflow_command_is_quiet(sample_dir, tmp_path):
    """A real ``features`` run (TensorFlow + Beam) in a subprocess: no framework line on stderr by default
    (before: Beam's ``WARNING root: Resource module ...`` twice, TensorFlow's C++ lines)."""
    quiet = _features(sample_dir, tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "2 images encoded" in quiet.stdout
    assert not FRAMEWORK_LINE.findall(quiet.stderr), quiet.stderr


def _score(tmp_path, *extra):
    """``captionbeam score`` as its own process on two tiny captions (the PTB tokenizer, a Java child, runs)."""
    preds, refs = tmp_path / "preds.jsonl", tmp_path / "refs.jsonl"
    preds.write_text('{"image_id": "a", "caption": "a dog runs"}\n{"image_id": "b", "caption": "a cat sits"}\n')
    refs.write_text('{"image_id": "a", "captions": ["A dog runs on grass.", "a dog running"]}\n'
                    '{"image_id": "b", "captions": ["A cat sits.", "the cat is sitting"]}\n')
    env = {k: v for k, v in os.environ.items() if k != "CAPTIONBEAM_LOG"}
    return subprocess.run([sys.executable, "-m", "captionbeam.launch", "score", "--predictions", str(preds),
                           "--references", str(refs), "--coco-metrics", "bleu", *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def test_score_hides_the_java_tokenizer_lines_unless_debug(tmp_path):
    """pycocoevalcap's PTB tokenizer (a Java child) writes "PTBTokenizer tokenized N tokens at ..." to the
    terminal: not by default (before: two such lines on every score / evaluate / run), back with DEBUG."""
    quiet = _score(tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "Bleu_4" in quiet.stdout and "PTBTokenizer" not in quiet.stderr, quiet.stderr
    loud = _score(tmp_path, "--log-level", "DEBUG")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "Bleu_4" in loud.stdout and "PTBTokenizer tokenized" in loud.stderr, loud.stderr[-3000:]


def test_debug_brings_the_frameworks_back():
    import logging
    import warnings
    env = {}
    with warnings.catch_warnings():
        configure_logging("INFO", env)
        assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
        assert logging.getLogger("tensorflow").level == logging.ERROR
        assert logging.getLogger("apache_beam").level == logging.WARNING
        assert not FrameworkRecords().filter(logging.makeLogRecord(
            {"levelno": logging.WARNING, "pathname": "/x/site-packages/apache_beam/ml/inference/base.py"}))
        configure_logging("DEBUG", env)
        assert env["TF_CPP_MIN_LOG_LEVEL"] == "0"
        assert logging.getLogger("tensorflow").level == logging.getLogger("apache_beam").level == logging.DEBUG
        assert not any(isinstance(f, FrameworkRecords) for h in logging.getLogger().handlers for f in h.filters)
    configure_logging("INFO", {})


def _exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:          # argparse's own usage errors
        return e.code


def test_bad_flags_exit_2_in_every_command(tmp_path, capsys):
    """One policy: bad usage or input is exit 2 naming the flag, whichever command (before: evaluate and
    caption left with exit 1 on --beam-size 0, bulk through SystemExit)."""
    model = str(tmp_path / "no-model")
    for argv, flag in ((["caption", "--model-dir", model, "x.jpg", "--beam-size", "0"], "--beam-size"),
                       (["evaluate", "--model-dir", model, "--data", "d", "--length-penalty", "-1"], "--length-penalty"),
                       (["export", "--model-dir", model, "--output", str(tmp_path / "e"), "--max-length", "0"],
                        "--max-length"),
                       (["score", "--predictions", str(tmp_path / "none.jsonl"), "--references", "r"], "none.jsonl"),
                       (["bulk", "--images", str(tmp_path / "*.jpg"), "--model-dir", model, "--output",
                         str(tmp_path / "o")], "--images")):
        assert _exit_code(argv) == exit_codes.USAGE, argv
        assert flag in capsys.readouterr().err, argv


COMMANDS_DIR = os.path.join(os.path.dirname(cli.__file__), "commands")


def test_no_literal_exit_codes_in_commands():
    """One exit-code policy: a command returns a constant of launch/exit_codes.py or raises; cli.run_command
    maps what it raises (before: `return 2` in ten commands, `raise SystemExit(2)` in pack)."""
    literal = re.compile(r"\breturn\s+\d+\b|SystemExit\(|sys\.exit\(")
    found = [f"{name}:{n}: {line.strip()}" for name in sorted(os.listdir(COMMANDS_DIR)) if name.endswith(".py")
             for n, line in enumerate(open(os.path.join(COMMANDS_DIR, name), encoding="utf-8"), 1)
             if literal.search(line)]
    assert not found, found


def test_every_command_has_the_same_face():
    """config_from_args -> plan -> run, each command (profiles, a tool, is not a job)."""
    import importlib
    for name, _ in cli.COMMANDS:
        if name == "profiles":
            continue
        module = importlib.import_module(f"captionbeam.launch.commands.{name}")
        for attr in ("add_arguments", "config_from_args", "plan", "run", "main"):
            assert callable(getattr(module, attr, None)), (name, attr)


class _Raises:
    """A command module whose main raises ``error``: what run_command makes of each class."""
    ON_INTERRUPT = "stopped; a re-run resumes"

    def __init__(self, error):
        self.error = error

    def main(self, args, runner):
        raise self.error


def test_run_command_maps_each_error_class_to_its_exit_code(capsys):
    import argparse
    from captionbeam.launch.command_args import CommandError
    from captionbeam.launch.command_face import CommandFault
    from captionbeam.launch.run import StageError
    from captionbeam.pipelines.lease import LeaseHeld
    args = argparse.Namespace()
    for error, code, line in ((CommandError("--x: bad"), exit_codes.USAGE, "captionbeam c: error: --x: bad"),
                              (LeaseHeld("held by run r"), exit_codes.OUTPUT_IN_USE, "captionbeam c: error: held by run r"),
                              (CommandFault("it broke"), exit_codes.FAULT, "captionbeam c: error: it broke"),
                              (StageError("train", "no data"), exit_codes.FAULT,
                               "captionbeam c: error: stage train failed: no data (fix it and re-run with --resume"),
                              (KeyboardInterrupt(), exit_codes.INTERRUPTED, "captionbeam c: stopped; a re-run resumes")):
        assert cli.run_command("c", _Raises(error), args) == code, error
        err = capsys.readouterr().err
        assert err.startswith(line) and err.count("\n") == 1, (error, err)
    with pytest.raises(ZeroDivisionError):          # a bug is not translated: its traceback is the report
        cli.run_command("c", _Raises(ZeroDivisionError()), args)


def test_plans_check_before_any_work(sample_dir, tmp_path):
    """plan() of the Beam jobs: a typed plan with summary lines, or a CommandError naming the flag, and
    nothing written either way."""
    from captionbeam.launch.command_args import CommandError, stage
    from captionbeam.launch.commands import captions, features, pack
    images = [os.path.join(sample_dir, "images", "*.jpg")]
    enc = {"encoder": "mobilenet", "weights": "none", "image_size": 32}
    planned = features.plan(stage(features, {"images": images, "output": str(tmp_path / "f"), **enc}).config)
    assert planned.description.name == "mobilenet" and planned.replace == ()
    assert planned.summary_lines()[0].startswith("features: encoder mobilenet (none weights, 32px")
    with pytest.raises(CommandError, match="--images: no file matches"):
        features.plan(stage(features, {"images": [str(tmp_path / "*.png")], "output": str(tmp_path / "f"), **enc}).config)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "manifest.jsonl").write_text("{}\n")
    config = stage(pack, {"images": images, "output": str(tmp_path / "p"), "format": "tar"}).config
    with pytest.raises(CommandError, match="--output .* already holds 1 files of an earlier pack"):
        pack.plan(config)
    again = stage(pack, {"images": images, "output": str(tmp_path / "p"), "format": "tar", "overwrite": True}).config
    assert pack.plan(again).stale == (str(tmp_path / "p" / "manifest.jsonl"),)
    c = captions.plan(stage(captions, {
        "captions": os.path.join(sample_dir, "captions.txt"), "output": str(tmp_path / "c"),
        "splits": [("train", os.path.join(sample_dir, "train.txt"))]}).config)
    assert c.fmt == "flickr8k" and "splits: train" in c.summary_lines()[1]
    with pytest.raises(CommandError, match="--captions: file not found"):
        captions.plan(stage(captions, {"captions": str(tmp_path / "none.txt"), "output": str(tmp_path / "c")}).config)
    assert sorted(os.listdir(tmp_path)) == ["p"] and os.listdir(tmp_path / "p") == ["manifest.jsonl"]
