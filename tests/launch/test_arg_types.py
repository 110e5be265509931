"""argparse validators (``launch/arg_types.py``): numbers that are not finite are refused at the flag."""
import argparse

import pytest

from captionbeam.launch.arg_types import finite_float, non_negative_float, positive_float


@pytest.mark.parametrize("parse", [finite_float, positive_float, non_negative_float])
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_numbers_are_refused(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match="got"):
        parse(text)


@pytest.mark.parametrize("command", [["train", "--data", "d", "--model-dir", "m"], ["run", "--workdir", "w"]])
def test_learning_rate_nan_fails_at_the_command_line(command, capsys):
    from captionbeam.launch.cli import main as cli
    with pytest.raises(SystemExit) as e:
        cli([*command, "--learning-rate", "nan"])
    assert e.value.code == 2 and "--learning-rate" in capsys.readouterr().err


def test_finite_numbers_pass():
    assert finite_float("-0.5") == -0.5 and positive_float("3e-4") == 3e-4 and non_negative_float("0") == 0.0
