"""A command's typed config without a command line, for the jobs that call other jobs (``run``,
``retrain``): :func:`stage` gives the command's own typed config (its ``config_from_args`` over the
parser's defaults, the caller's values by name and a user's extra flags for it), the Beam flags of a
Beam command and the equivalent ``captionbeam ...`` line, rendered once, for humans::

    s = stage(features_command, {"images": [...], "output": out, "overwrite": True}, extra=flags)
    print("$ " + s.line)                                     # printed, never parsed again
    result = features_command.run(s.config, s.runner)        # the command's typed run -> Result
    write_record(marker, {"config": s.record()})             # what --resume compares

Nothing here runs a command.
"""
from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict, dataclass, is_dataclass
from typing import Dict, List, Mapping, Sequence, Tuple


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


def config_record(config) -> Dict[str, object]:
    """A typed config as plain JSON data (``dataclasses.asdict``; tuples become lists): what a stage's
    marker holds and ``--resume`` compares."""
    return json.loads(json.dumps(asdict(config) if is_dataclass(config) else config, sort_keys=True, default=str))


@dataclass(frozen=True)
class Stage:
    """One command of a job that calls jobs: its typed config, the Beam flags of a Beam command, and the
    equivalent command line (credentials redacted; for humans, never parsed again)."""
    command: str
    config: object                          # what module.config_from_args makes: FeaturesConfig, TrainJob, ...
    pipeline_args: Tuple[str, ...] = ()     # Beam flags (Beam commands)
    line: str = ""

    @property
    def runner(self):
        """The Beam flags as the ``RunnerFlags`` a Beam command's ``run`` takes (passed as they are)."""
        from captionbeam.pipelines.options import RunnerFlags
        return RunnerFlags.plain(self.pipeline_args)

    def record(self) -> Dict[str, object]:
        """The config and the (redacted) Beam flags as JSON data: two stages with equal records run the same."""
        from captionbeam.pipelines.redact import redact_args
        return {"command": self.command, "config": config_record(self.config),
                "pipeline_args": redact_args(list(self.pipeline_args))}


def _namespace(parser, module, values, extra) -> Tuple[argparse.Namespace, List[str]]:
    """The namespace ``captionbeam COMMAND`` would parse: the parser's defaults, then ``values`` (by dest),
    then the flags in ``extra`` (a user's extra flags for this command, which win); and the dests set."""
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
    return args, explicit


def stage(module, values: Mapping[str, object], extra: Sequence[str] = (), pipeline_args: Sequence[str] = ()) -> Stage:
    """``module``'s typed config for these values (by dest) and extra flags, with its command line: the one
    place a stage's line is rendered. :class:`CommandError` names a bad value or flag."""
    from captionbeam.pipelines.redact import redact_args
    parser = command_parser(module)
    args, explicit = _namespace(parser, module, values, extra)
    name = command_name(module)
    line = shlex.join(["captionbeam", *redact_args([name, *command_line(parser, args, explicit), *pipeline_args])])
    return Stage(name, module.config_from_args(args), tuple(pipeline_args), line)


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
