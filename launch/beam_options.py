"""Beam flags on captionbeam's command line: validation (a bad flag fails fast, naming it) and
named runner profiles (``--profile local|dataflow-gpu|flink|spark`` from a YAML file)."""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence

PROFILES_ENV = "CAPTIONBEAM_PROFILES"
DEFAULT_PROFILES_FILE = os.path.join(os.path.dirname(__file__), "profiles.yaml")


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runner")
    group.add_argument("--profile", default=None,
                       help="named runner profile from --profiles-file (e.g. local, dataflow-gpu, flink, spark); "
                            "explicit Beam flags override the profile's")
    group.add_argument("--profiles-file", default=os.environ.get(PROFILES_ENV, DEFAULT_PROFILES_FILE),
                       help=f"YAML file of profiles (default: ${PROFILES_ENV} or the packaged profiles.yaml)")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved pipeline options and the equivalent command line; submit nothing")


def _beam_parser() -> argparse.ArgumentParser:
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(PipelineOptions):
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            pass  # options defined by several subclasses
    return parser


def unknown_beam_flags(args: Sequence[str]) -> List[str]:
    """Flags in ``args`` that no Beam PipelineOptions class defines."""
    _, unknown = _beam_parser().parse_known_args(list(args))
    return [a for a in unknown if a.startswith("-")] or ([a for a in unknown] if unknown else [])


def validate_pipeline_args(parser: argparse.ArgumentParser, rest: Sequence[str], profile: Optional[str] = None,
                           command: str = "", profiles_file: Optional[str] = None) -> List[str]:
    """Beam flags left after the command's own: fail (via ``parser.error``) on any Beam does not know;
    put the profile's flags first so explicit flags win, and merge them without duplicates
    (:func:`launch.profiles.merge_flags`)."""
    bad = unknown_beam_flags(rest)
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (neither a {command} option nor a Beam pipeline option)")
    from launch.profiles import merge_flags, placeholders
    from_profile: List[str] = []
    if profile:
        from launch.profiles import load_profiles, profile_args
        path = profiles_file or os.environ.get(PROFILES_ENV, DEFAULT_PROFILES_FILE)
        try:
            profiles = load_profiles(path)
            from_profile = profile_args(profiles, profile, command)
        except (KeyError, ValueError, FileNotFoundError) as e:
            parser.error(f"--profile: {e}")
        bad = unknown_beam_flags(from_profile)
        if bad:
            parser.error(f"--profile {profile}: {path} sets options Beam does not know: {' '.join(bad)}")
    merged = merge_flags(from_profile, rest)
    todo = placeholders(merged)
    if todo:
        import logging
        logging.getLogger(__name__).warning(
            "pipeline options still hold placeholders from the example profiles file (edit it, point "
            "--profiles-file at your copy, or pass the flags): %s", " ".join(todo))
    return merged
