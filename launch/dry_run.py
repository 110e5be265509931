"""``--dry-run`` of a Beam command: the command's options (defaults resolved), the pipeline options
Beam resolves, the equivalent command line, warnings (an engine not fetched yet, placeholders), and the
command's own plan (``dry_run_plan``). It reports on what :mod:`launch.cli` already parsed (the
command's namespace and its :class:`~launch.beam_options.RunnerFlags`); it parses nothing itself."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import List, Sequence

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


def dry_run_report(command: str, module, args: argparse.Namespace, argv: Sequence[str], rest: Sequence[str],
                   flags: RunnerFlags) -> dict:
    """The report for ``captionbeam COMMAND ... --dry-run``: ``args`` and ``rest`` are what the parser
    made of ``argv`` (the command's options, and the tokens left for Beam), ``flags`` the Beam flags."""
    own = _strip_runner_flags(_strip_subsequence(argv, rest))
    command_options = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_COMMAND_OPTIONS}
    options = dict(flags.options)
    if options.get("runner") is None:
        options["runner"] = "DirectRunner (Beam's default)"
    report = {
        "command": command,
        "profile": flags.profile,
        "command_options": command_options,
        "pipeline_options": dict(sorted(options.items())),
        "equivalent_command_line": shlex.join(["captionbeam", *own, *flags.args]),
    }
    if flags.warnings:
        report["warnings"] = list(flags.warnings)
    plan = getattr(module, "dry_run_plan", None)
    if plan is not None:
        report["plan"] = plan(args, flags)
    return report


def print_dry_run(report: dict, out=None) -> None:
    out = out or sys.stdout
    from captionbeam.pipelines.redact import redact, redact_line
    report = redact(dict(report))
    line = redact_line(report.pop("equivalent_command_line"))
    print(json.dumps(report, indent=2, sort_keys=True, default=str), file=out)
    print("equivalent command line (nothing submitted):", file=out)
    print("  " + line, file=out)
