"""Local paths on a Beam command line made absolute before the job is built.

A Beam job's paths are opened where its work runs: on DirectRunner and the embedded engines that is this
process's working folder, but an SDK worker of a cluster (``--profile flink-cluster``, ``spark-cluster``, a
``PROCESS`` or ``EXTERNAL`` environment) runs in a folder of its own, where ``--model-dir models/merge`` or
``--output out`` would name nothing, or another place. So every path flag of the Beam commands is made
absolute here, once, against the folder the command was typed in; URLs (``gs://...``) are left as they are.
"""
from __future__ import annotations

import argparse
import os

# the Beam commands' flags (as argparse attributes) that hold one local path or a list of them
PATH_FLAGS = ("images", "output", "model_dir", "captions", "features", "vocab", "data", "root", "from_run",
              "caption_images", "watch")
# flags holding NAME=PATH
NAMED_PATH_FLAGS = ("split",)
# flags holding a registered name or a path (a model file): made absolute only when that file is there
NAME_OR_PATH_FLAGS = ("encoder",)


def absolute(path: str) -> str:
    """``path`` made absolute when it is a local path (a glob keeps its pattern); URLs as they are."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _named(text: str) -> str:
    name, sep, path = text.partition("=")
    return f"{name}={absolute(path)}" if sep else text


def _each(value, fn):
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_each(v, fn) for v in value)
    return value


def absolute_local_paths(args: argparse.Namespace) -> None:
    """Rewrite ``args``' path flags in place (see the module's doc)."""
    for name in PATH_FLAGS:
        if getattr(args, name, None) is not None:
            setattr(args, name, _each(getattr(args, name), absolute))
    for name in NAMED_PATH_FLAGS:
        if getattr(args, name, None) is not None:
            setattr(args, name, _each(getattr(args, name), _named))
    for name in NAME_OR_PATH_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and "://" not in value and os.path.isfile(value):
            setattr(args, name, absolute(value))
