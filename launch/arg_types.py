"""argparse ``type=`` validators shared by every command: a bad value fails fast (exit 2) with a
message naming the flag (argparse adds the flag's name to the ``ArgumentTypeError``'s text).

A validator whose parsed value does not print back as the flag's text carries ``render`` (value ->
text), which :func:`launch.command_args.command_line` uses to write the equivalent command line."""
from __future__ import annotations

import argparse
import math
from typing import Callable, Tuple


def int_at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    """An integer >= ``minimum`` (``what`` names it in the error: default "an integer >= N")."""
    what = what or f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0)


def finite_float(text: str) -> float:
    """A number; ``nan`` and ``inf`` are refused (a nan learning rate trains nothing, silently)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def rate(text: str) -> float:
    """A rate in [0, 1) (dropout)."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1), got {text!r}")
    return value


def name_equals_file(text: str) -> Tuple[str, str]:
    """``NAME=FILE`` (a split and its split file) -> (name, file)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FILE (e.g. train=Flickr_8k.trainImages.txt), got {text!r}")
    return name.strip(), path.strip()


name_equals_file.render = lambda pair: f"{pair[0]}={pair[1]}"


def fractions(text: str) -> Tuple[float, float, float]:
    """Three relative sizes ``80,10,10`` -> fractions summing to 1."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 80,10,10, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative numbers like 80,10,10, got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)


fractions.render = lambda values: ",".join(f"{v:g}" for v in values)


def _writable_dir(path: str, text: str) -> None:
    """The nearest existing ancestor of ``path`` must be a directory this process can create files in
    (probed with a real file: permission bits say nothing for root or a read-only mount)."""
    import os
    import tempfile
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f"{text}: {probe} is a file, so the directory cannot be created")
    try:
        fd, name = tempfile.mkstemp(prefix=".captionbeam-write-check-", dir=probe)
        os.close(fd)
        os.remove(name)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {probe}: {e.strerror or e}") from None


def output_dir(text: str) -> str:
    """An output directory: local ones must not be a file and must be creatable / writable, checked
    before any work (``gs://`` and other URLs are checked by the job)."""
    import os
    if "://" in text:
        return text
    path = os.path.abspath(text)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    _writable_dir(path, text)
    return text


def output_file(text: str) -> str:
    """An output file: local ones must not be a directory, and their directory must be writable."""
    import os
    if "://" in text:
        return text
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    _writable_dir(os.path.dirname(path), text)
    return text
