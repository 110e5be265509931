"""Beam flags on captionbeam's command line, parsed once (:func:`parse_runner_flags` -> the frozen
:class:`RunnerFlags` that cli passes down): the runner arguments every Beam job takes (``--profile``,
``--profiles-file``, ``--dry-run``), validation (a bad flag fails fast, naming it) and merging.

Merge rules (:func:`merge_flags`): profile flags first, then the command line's; a single-valued
option set twice keeps the last value (the command line wins); a repeatable option
(``--experiments``, ``--dataflow_service_options``, ``--beam_plugin``) keeps every distinct value once.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from captionbeam.launch.profiles import PROFILES_ENV, load_profiles, placeholders, profile_args, profiles_file
from captionbeam.pipelines.options import RunnerFlags  # noqa: F401 - defined beside new_pipeline, its one reader

RUNNER_FLAGS = ("--profile", "--profiles-file", "--dry-run")
log = logging.getLogger(__name__)


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runner")
    group.add_argument("--profile", default=None,
                       help="named runner profile from --profiles-file (e.g. local, dataflow-gpu, flink, spark); "
                            "explicit Beam flags override the profile's")
    group.add_argument("--profiles-file", default=profiles_file(),
                       help=f"YAML file of profiles (default: ${PROFILES_ENV} or the packaged profiles.yaml)")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved pipeline options and the equivalent command line; submit nothing")


# Options of a Java job server's own that Beam's Python SDK does not define (it learns them from the job server
# when the job is submitted): allowed in profiles and on command lines
JOB_SERVER_OPTIONS = {
    "--pipeline_resources_detector_factory_class":
        "what a Java job server stages with a job (Beam's PipelineResourcesOptions; the flink-cluster profile: "
        "captionbeam.engines.StagedJars$Factory, nothing)",
}


class BeamParser:
    """Beam's own argument parser (every ``PipelineOptions`` subclass's flags), built once per command
    line: it finds unknown flags and tells single-valued options from repeatable ones when merging."""

    def __init__(self):
        from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser
        self.parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)

        def subclasses(cls):
            for sub in cls.__subclasses__():
                yield sub
                yield from subclasses(sub)

        for cls in subclasses(PipelineOptions):
            try:
                cls._add_argparse_args(self.parser)
            except argparse.ArgumentError:
                pass  # options defined by several subclasses
        for flag, what in JOB_SERVER_OPTIONS.items():
            self.parser.add_argument(flag, help=what)
        self.actions = {s: action for action in self.parser._actions for s in action.option_strings}

    def unknown(self, args: Sequence[str]) -> List[str]:
        """Flags in ``args`` that no Beam PipelineOptions class defines."""
        _, unknown = self.parser.parse_known_args(list(args))
        return [a for a in unknown if a.startswith("-")] or list(unknown)


_NON_NEGATIVE = ("direct_num_workers", "num_workers", "max_num_workers", "disk_size_gb")


def bad_beam_values(opts: Mapping[str, object]) -> Optional[str]:
    """A message naming the flag when a Beam option (``RunnerFlags.options``) has a value no runner takes
    (an unknown ``--runner``, a negative worker count), found here instead of as a traceback once the
    pipeline starts; else None."""
    for name in _NON_NEGATIVE:
        value = opts.get(name)
        if value is not None and int(value) < 0:
            return f"--{name}: must be >= 0, got {value}"
    runner = opts.get("runner")
    if runner:
        from apache_beam.runners.runner import create_runner
        try:
            create_runner(runner)
        except Exception as e:  # noqa: BLE001 - unknown name, or a dotted path that does not import
            first = str(e).split(". Valid values", 1)[0]
            return (f"--runner {runner}: {first}; use DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, "
                    f"PrismRunner, PortableRunner or a PipelineRunner subclass's dotted path")
    return None


def resolved_options(args: Sequence[str], all_options: bool = False) -> Dict[str, object]:
    """The options Beam resolves from these flags as a job's pipeline sees them
    (``pipelines.options.pipeline_options``): those set (default) or every option."""
    from captionbeam.pipelines.options import pipeline_options
    opts = pipeline_options(args).get_all_options(drop_default=not all_options)
    return {k: v for k, v in sorted(opts.items()) if v is not None or all_options}


def parse_runner_flags(parser: argparse.ArgumentParser, rest: Sequence[str], profile: Optional[str] = None,
                       command: str = "", profiles_path: Optional[str] = None,
                       dry_run: bool = False) -> RunnerFlags:
    """Beam flags left after the command's own -> :class:`RunnerFlags`. Fails (via ``parser.error``) on a
    flag Beam does not know, a bad profile, a bad value, or an engine that is not fetched (on a dry run
    that last one is a warning: nothing runs)."""
    beam = BeamParser()
    bad = beam.unknown(rest)
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (neither a {command} option nor a Beam pipeline option)")
    from_profile: List[str] = []
    if profile:
        path = profiles_file(profiles_path)
        try:
            from_profile = profile_args(load_profiles(path), profile, command)
        except (KeyError, ValueError, FileNotFoundError) as e:
            parser.error(f"--profile: {e}")
        bad = beam.unknown(from_profile)
        if bad:
            parser.error(f"--profile {profile}: {path} sets options Beam does not know: {' '.join(bad)}")
    merged = merge_flags(from_profile, rest, beam=beam)
    warnings: List[str] = []
    from captionbeam.launch.engines import missing_engines, resolve_engine_flags
    merged = resolve_engine_flags(merged)   # {engines} -> the engines cache
    from captionbeam.launch.cluster import resolve_cluster_flags
    merged, problems = resolve_cluster_flags(merged)   # {cluster.*} -> the running `make cluster`
    for problem in problems:
        if not dry_run:
            parser.error(problem)
        warnings.append(f"{problem} (a dry run only reports)")
    for problem in missing_engines(merged):
        if not dry_run:
            parser.error(problem)
        warnings.append(f"{problem} (a dry run only reports; running it for real fails until then)")
    options = resolved_options(merged)
    problem = bad_beam_values(options)
    if problem:
        parser.error(problem)
    for w in warnings:
        log.warning("%s", w)
    todo = placeholders(merged)
    if todo:
        log.warning("pipeline options still hold placeholders from the example profiles file (edit it, point "
                    "--profiles-file at your copy, or pass the flags): %s", " ".join(todo))
        warnings += [f"placeholder value, edit the profiles file or pass the flag: {f}" for f in todo]
    return RunnerFlags(profile=profile, args=tuple(merged), options=options, warnings=tuple(warnings))


@dataclass(frozen=True)
class Flag:
    dest: str          # the PipelineOptions attribute it sets
    tokens: Tuple[str, ...]   # normalised tokens: ("--key=value",) or ("--switch",)
    repeatable: bool


def parse_flags(args: Sequence[str], actions: Dict[str, argparse.Action]) -> List[Flag]:
    """Beam flags -> normalised :class:`Flag`s (``--k v`` and ``--k=v`` both become ``--k=v``);
    ``actions``: :attr:`BeamParser.actions`. Tokens Beam does not know are kept as they are (single-valued)."""
    out: List[Flag] = []
    i = 0
    args = list(args)
    while i < len(args):
        tok = args[i]
        key, eq, value = tok.partition("=")
        action = actions.get(key)
        if action is None:
            out.append(Flag(dest=key, tokens=(tok,), repeatable=False))
            i += 1
            continue
        repeatable = type(action).__name__ in ("_AppendAction", "_CommaSeparatedListAction", "_ExtendAction")
        if action.nargs == 0:
            out.append(Flag(dest=action.dest, tokens=(key,), repeatable=False))
            i += 1
            continue
        if not eq:
            if i + 1 < len(args):
                value = args[i + 1]
                i += 1
        out.append(Flag(dest=action.dest, tokens=(f"{key}={value}",), repeatable=repeatable))
        i += 1
    return out


def merge_flags(*groups: Sequence[str], beam: Optional[BeamParser] = None) -> List[str]:
    """Concatenate groups of Beam flags (earlier groups are overridden by later ones) without duplicates:
    a single-valued option keeps its last value, a repeatable one every distinct value once."""
    actions = (beam or BeamParser()).actions
    flags: List[Flag] = []
    for g in groups:
        flags.extend(parse_flags(g, actions))
    last_single: Dict[str, int] = {}
    for n, f in enumerate(flags):
        if not f.repeatable:
            last_single[f.dest] = n
    out: List[str] = []
    seen_repeat = set()
    for n, f in enumerate(flags):
        if f.repeatable:
            if f.tokens in seen_repeat:
                continue
            seen_repeat.add(f.tokens)
        elif last_single[f.dest] != n:
            continue
        out.extend(f.tokens)
    return out
