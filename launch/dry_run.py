"""``--dry-run`` of any command: its typed plan and, for a Beam command, what :mod:`launch.cli` already
parsed (the command's options with defaults resolved, the pipeline options Beam resolves, warnings such
as an engine not fetched yet or placeholders) and the equivalent command line. The plan is the command's
own face: ``config_from_args(args)`` then ``plan(config)``, whose ``summary_lines()`` are printed; nothing
runs and nothing is written (exit OK), and a plan that fails is the one-line error and exit USAGE. It
parses nothing itself.
"""
from __future__ import annotations

import argparse
import inspect
import json
import shlex
import sys
from typing import List, Optional, Sequence

from captionbeam.launch.beam_options import RUNNER_FLAGS, RunnerFlags

_NOT_COMMAND_OPTIONS = ("command", "log_level", "profile", "profiles_file", "dry_run")


def _strip_subsequence(argv: Sequence[str], sub: Sequence[str]) -> List[str]:
    """``argv`` without the tokens of ``sub`` (a subsequence of it, in order)."""
    out, j = [], 0
    for tok in argv:
        if j < len(sub) and tok == sub[j]:
            j += 1
            continue
        out.append(tok)
    return out


def _strip_runner_flags(argv: Sequence[str]) -> List[str]:
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        key = tok.split("=", 1)[0]
        if key in RUNNER_FLAGS:
            if key != "--dry-run" and "=" not in tok:
                skip = True
            continue
        out.append(tok)
    return out


def add_dry_run_argument(parser: argparse.ArgumentParser) -> None:
    """``--dry-run`` of a command that is not a Beam job (a Beam job's comes with its runner flags)."""
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything and print the plan and the equivalent command line; run nothing")


def plan_lines(module, args: argparse.Namespace, flags: Optional[RunnerFlags] = None) -> List[str]:
    """The command's face: ``config_from_args`` (with the RunnerFlags where it takes them) then ``plan`` ->
    its ``summary_lines()``; ``CommandError`` for bad input."""
    from_args = module.config_from_args
    config = from_args(args, flags) if "runner" in inspect.signature(from_args).parameters else from_args(args)
    return list(module.plan(config).summary_lines())


def dry_run_report(command: str, module, args: argparse.Namespace, argv: Sequence[str], rest: Sequence[str],
                   flags: Optional[RunnerFlags]) -> dict:
    """The report for ``captionbeam COMMAND ... --dry-run``: ``args`` and ``rest`` are what the parser
    made of ``argv`` (the command's options, and the tokens left for Beam), ``flags`` the Beam flags (None
    for a command that is not a Beam job). ``plan``: the plan's lines, or ``{"error": ...}``."""
    from captionbeam.launch.command_args import CommandError
    own = _strip_runner_flags(_strip_subsequence(argv, rest))
    command_options = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_COMMAND_OPTIONS}
    report = {"command": command, "command_options": command_options}
    if flags is not None:
        options = dict(flags.options)
        if options.get("runner") is None:
            options["runner"] = "DirectRunner (Beam's default)"
        report.update(profile=flags.profile, pipeline_options=dict(sorted(options.items())))
        if flags.warnings:
            report["warnings"] = list(flags.warnings)
    report["equivalent_command_line"] = shlex.join(["captionbeam", *own, *(flags.args if flags else ())])
    try:
        report["plan"] = plan_lines(module, args, flags)
    except CommandError as e:
        report["plan"] = {"error": str(e)}
    return report


def dry_run(command: str, module, args: argparse.Namespace, argv: Sequence[str], rest: Sequence[str],
            flags: Optional[RunnerFlags]) -> int:
    """Print the report (:func:`dry_run_report`) -> OK, or USAGE with the plan's one-line error on stderr."""
    from captionbeam.launch.exit_codes import OK, USAGE
    report = dry_run_report(command, module, args, argv, rest, flags)
    print_dry_run(report)
    plan = report["plan"]
    if isinstance(plan, dict):
        print(f"captionbeam {command}: error: {plan['error']}", file=sys.stderr)
        return USAGE
    return OK


def print_dry_run(report: dict, out=None) -> None:
    out = out or sys.stdout
    from captionbeam.pipelines.redact import redact, redact_line
    report = redact(dict(report))
    line = redact_line(report.pop("equivalent_command_line"))
    print(json.dumps(report, indent=2, sort_keys=True, default=str), file=out)
    print("equivalent command line (nothing submitted):", file=out)
    print("  " + line, file=out)
