"""The one face of every ``captionbeam`` command (``launch/commands/<name>.py``)::

    config = module.config_from_args(args)      # a frozen <Name>Config (or <Name>Job) of the flags
    planned = module.plan(config)               # every check before any work -> a Plan
    result = module.run(config, ...)            # the work -> a Result (Beam jobs also take RunnerFlags)
    print("\\n".join(result.summary_lines()))

``plan`` raises :class:`~launch.command_args.CommandError` naming the flag or file (exit USAGE); ``run``
plans again unless given the plan (under the output's lease where the command writes). A command's
``main(args, runner)`` only prints; ``cli.run_command`` maps what it raises to ``launch/exit_codes.py``:
CommandError -> USAGE, ``pipelines.lease.LeaseHeld`` -> OUTPUT_IN_USE, :class:`CommandFault` -> FAULT,
KeyboardInterrupt -> INTERRUPTED (the line printed: the module's ``ON_INTERRUPT``, e.g. how a re-run resumes,
else "stopped"). Jobs calling jobs (``run``, ``retrain``) use the same typed calls.
"""
from __future__ import annotations

import sys
from typing import List, Sequence

try:                          # Python >= 3.8
    from typing import Protocol
except ImportError:           # pragma: no cover
    Protocol = object         # type: ignore


class Plan(Protocol):
    """What ``plan(config)`` found out; a ``--dry-run``-style caller prints :meth:`summary_lines`."""

    def summary_lines(self) -> List[str]: ...


class Result(Protocol):
    """What ``run(config)`` did; ``main`` prints :meth:`summary_lines`."""

    def summary_lines(self) -> List[str]: ...


class CommandFault(RuntimeError):
    """The command started and did not finish, or its result cannot be trusted (exit FAULT); the message
    says what failed, ``hint`` (printed after it) what to do."""
    hint: str = ""


def unmatched_globs(patterns: Sequence[str], flag: str = "--images") -> List[str]:
    """The globs that match no file (a limit-1 match per glob: cheap even on a huge bucket);
    :class:`CommandError` naming ``flag`` when the filesystem cannot list them (e.g. no such bucket)."""
    from apache_beam.io.filesystems import FileSystems
    from captionbeam.launch.command_args import CommandError
    from captionbeam.pipelines.io import use_anonymous_gcs_if_emulated
    use_anonymous_gcs_if_emulated()
    try:
        results = FileSystems.match(list(patterns), limits=[1] * len(patterns))
    except Exception as e:  # noqa: BLE001 - e.g. a bucket that does not exist
        raise CommandError(f"{flag}: cannot list: {e}") from None
    return [p for p, r in zip(patterns, results) if not r.metadata_list]


def require_matches(patterns: Sequence[str], flag: str = "--images") -> None:
    """:class:`CommandError` when any glob matches no file."""
    from captionbeam.launch.command_args import CommandError
    empty = unmatched_globs(patterns, flag)
    if empty:
        raise CommandError(f"{flag}: no file matches {', '.join(empty)}")


def warn(command: str, message: str) -> None:
    """A warning the user can act on, on stderr (one line)."""
    print(f"captionbeam {command}: warning: {message}", file=sys.stderr)
