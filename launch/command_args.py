"""A command's arguments without a command line, for the jobs that call other jobs (``run``,
``retrain``): the command's own parser supplies the defaults and validators, the caller sets values by
name, and :func:`command_line` writes the equivalent ``captionbeam ...`` line for the user.

    inv = invocation(features_command, {"images": [...], "output": out, "overwrite": True}, extra=flags)
    print("$ " + inv.line)
    result = features_command.run(features_command.config_from_args(inv.args), inv.runner)

Nothing here runs a command: the caller passes the namespace to the command's ``config_from_args``
and calls its typed ``run``.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import List, Mapping, Sequence


class CommandError(ValueError):
    """A bad flag, input or output of a command; the message names it (the CLI exits 2)."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):
        raise CommandError(f"{self.prog}: {message}")


def command_name(module) -> str:
    return module.__name__.rsplit(".", 1)[-1].replace("_", "-")


def command_parser(module, only_given: bool = False) -> argparse.ArgumentParser:
    """``module.add_arguments`` on a parser that raises :class:`CommandError` instead of exiting. With
    ``only_given`` the parsed namespace holds only the flags given (no defaults, nothing required)."""
    parser = _RaisingParser(prog=f"captionbeam {command_name(module)}", add_help=False)
    module.add_arguments(parser)
    if only_given:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
            action.required = False
            if not action.option_strings and action.nargs == "+":
                action.nargs = "*"
    return parser


@dataclass
class Invocation:
    command: str
    args: argparse.Namespace     # what ``module.config_from_args`` reads
    argv: List[str]              # the equivalent command line, without the leading "captionbeam"
    pipeline_args: List[str]     # the Beam flags (the end of argv)

    @property
    def runner(self):
        """The Beam flags as the ``RunnerFlags`` a Beam command's ``run`` takes (passed as they are)."""
        from captionbeam.pipelines.options import RunnerFlags
        return RunnerFlags.plain(self.pipeline_args)

    @property
    def line(self) -> str:
        """The command line to print: credentials in Beam flags redacted (``pipelines.redact``)."""
        from captionbeam.pipelines.redact import redact_args
        return shlex.join(["captionbeam", *redact_args(self.argv)])


def invocation(module, values: Mapping[str, object], extra: Sequence[str] = (),
               pipeline_args: Sequence[str] = ()) -> Invocation:
    """The namespace ``captionbeam COMMAND`` would parse: the parser's defaults, then ``values`` (by
    dest), then the flags in ``extra`` (a user's extra flags for this stage, which win)."""
    parser = command_parser(module)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise CommandError(f"{parser.prog}: no such option: {', '.join(unknown)}")
    args = argparse.Namespace(**{dest: _default(a) for dest, a in actions.items()})
    explicit = list(values)
    for dest, value in values.items():
        setattr(args, dest, value)
    if extra:
        given = vars(command_parser(module, only_given=True).parse_args(list(extra)))
        for dest, value in given.items():
            setattr(args, dest, value)
            explicit.append(dest)
    name = command_name(module)
    return Invocation(name, args, [name, *command_line(parser, args, explicit), *pipeline_args], list(pipeline_args))


def _default(action: argparse.Action):
    """The parsed default, as argparse gives it (a string default goes through ``type``)."""
    if isinstance(action.default, str) and action.type is not None:
        return action.type(action.default)
    return action.default


def _render(action: argparse.Action, value) -> str:
    return getattr(action.type, "render", str)(value)


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace, dests: Sequence[str]) -> List[str]:
    """The flags that set ``dests`` of ``args`` (in the parser's order; positionals last)."""
    wanted = set(dests)
    flags: List[str] = []
    positionals: List[str] = []
    for action in parser._actions:
        if action.dest not in wanted or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        if not action.option_strings:
            positionals += [_render(action, v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            continue
        option = action.option_strings[0]
        if action.nargs == 0:          # store_true / store_false / store_const
            if value == action.const:
                flags.append(option)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                flags += [option, _render(action, item)]
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
            flags += [option, *(_render(action, v) for v in value)]
        else:
            flags += [option, _render(action, value)]
    return flags + positionals
