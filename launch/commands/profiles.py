"""``captionbeam profiles list|show NAME|tf-config``: the runner profiles (launch/profiles.yaml) and
what one resolves to; the same tool as ``python -m captionbeam.launch.profiles``."""
from __future__ import annotations

import argparse

HELP = "list runner profiles, or show the Beam / training flags and environment one resolves to"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from captionbeam.launch.profiles import add_tool_arguments
    add_tool_arguments(parser)
    parser.set_defaults(_parser=parser)


def main(args: argparse.Namespace, runner=None) -> int:
    from captionbeam.launch.profiles import run_tool
    return run_tool(args, args._parser)
