"""Runner profiles: a YAML file of named sets of Beam flags (and training flags), so users do not
retype them. This module only loads profiles and turns their sections into flags; merging and
validating Beam flags is :mod:`launch.beam_options`, ``--dry-run`` is :mod:`launch.dry_run`.

Profile file format (see ``launch/profiles.yaml``)::

    NAME:
      extends: OTHER          # optional: start from another profile's sections
      all:      {beam_option: value, ...}   # every Beam job
      features: {...}         # one job's own additions (features, captions, bulk, pack, ...)
      train:    {...}         # flags for the training stage of `run` / `retrain` (not Beam flags)
      env:      {VAR: value}  # documentation of the environment each process needs (e.g. TF_CONFIG)

Values: scalars become ``--key=value``; ``true`` becomes ``--key``; ``false`` is left out; lists repeat
the flag (``experiments: [a, b]`` -> ``--experiments=a --experiments=b``).

``python -m captionbeam.launch.profiles list|show NAME|tf-config ...`` lists profiles, shows one, or prints a
training worker's ``TF_CONFIG`` (:mod:`launch.tf_config`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

PROFILES_ENV = "CAPTIONBEAM_PROFILES"
DEFAULT_PROFILES_FILE = os.path.join(os.path.dirname(__file__), "profiles.yaml")
# sections of a profile that are not Beam flags for a job
NON_BEAM_SECTIONS = ("extends", "train", "env", "description")
PLACEHOLDER = re.compile(r"<[^<>]+>")


def profiles_file(path: Optional[str] = None) -> str:
    """The profiles file to read: ``path``, else ``$CAPTIONBEAM_PROFILES``, else the packaged one."""
    return path or os.environ.get(PROFILES_ENV, DEFAULT_PROFILES_FILE)


def load_profiles(path: str) -> Dict[str, dict]:
    """Read a profiles YAML file: ``{name: {section: {key: value}}}``, with ``extends`` resolved."""
    import yaml
    with open(path, "r", encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of profile names")
    for name, body in data.items():
        if body is not None and not isinstance(body, dict):
            raise ValueError(f"{path}: profile {name!r} must be a mapping of sections, got {type(body).__name__}")
        for section, values in (body or {}).items():
            if section in ("extends", "description"):
                continue
            if values is not None and not isinstance(values, dict):
                raise ValueError(f"{path}: profile {name!r} section {section!r} must be a mapping of options")
    return {name: _resolve_extends(data, name, path) for name in data}


def _resolve_extends(data: Mapping[str, dict], name: str, path: str, seen: Tuple[str, ...] = ()) -> dict:
    if name in seen:
        raise ValueError(f"{path}: profile {name!r} extends itself (cycle {' -> '.join(seen + (name,))})")
    body = dict(data.get(name) or {})
    parent = body.pop("extends", None)
    if parent is None:
        return body
    if parent not in data:
        raise ValueError(f"{path}: profile {name!r} extends unknown profile {parent!r}")
    merged = {k: dict(v or {}) if isinstance(v, dict) else v
              for k, v in _resolve_extends(data, parent, path, seen + (name,)).items()}
    for section, values in body.items():
        if isinstance(values, dict):
            merged.setdefault(section, {})
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _flag_list(options: Mapping[str, object]) -> List[str]:
    out: List[str] = []
    for key, value in (options or {}).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool):
                if v:
                    out.append(f"--{key}")
            elif v is not None:
                out.append(f"--{key}={v}")
    return out


def _get(profiles: Mapping[str, dict], name: str) -> dict:
    if name not in profiles:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name] or {}


def profile_args(profiles: Mapping[str, dict], name: str, command: str) -> List[str]:
    """Beam flags of profile ``name`` for ``command``: its ``all`` section, then the command's own."""
    profile = _get(profiles, name)
    merged: Dict[str, object] = dict(profile.get("all") or {})
    if command not in NON_BEAM_SECTIONS:
        merged.update(profile.get(command) or {})
    return _flag_list(merged)


def profile_train_args(profiles: Mapping[str, dict], name: str) -> List[str]:
    """Flags of profile ``name`` for the training stage (``captionbeam train`` flags, not Beam's)."""
    return _flag_list(_get(profiles, name).get("train") or {})


def profile_env(profiles: Mapping[str, dict], name: str) -> Dict[str, str]:
    return {str(k): str(v) for k, v in (_get(profiles, name).get("env") or {}).items()}


def placeholders(flags: Iterable[str]) -> List[str]:
    """Flags whose value is still a ``<placeholder>`` from the example profiles file."""
    return [f for f in flags if PLACEHOLDER.search(f)]


def add_tool_arguments(parser: argparse.ArgumentParser) -> None:
    """``list``, ``show NAME`` and ``tf-config`` (shared by ``captionbeam profiles`` and ``python -m``)."""
    from captionbeam.launch import tf_config
    parser.add_argument("--profiles-file", default=profiles_file(),
                        help="YAML file of profiles (default: $CAPTIONBEAM_PROFILES or the packaged one)")
    sub = parser.add_subparsers(dest="what", required=True, metavar="list|show|tf-config")
    sub.add_parser("list", help="profile names and descriptions")
    show = sub.add_parser("show", help="one profile's flags per job, training flags and environment")
    show.add_argument("name")
    show.add_argument("--command", dest="job", default="features",
                      help="job whose flags to show (default: features)")
    tf_config.add_arguments(sub.add_parser("tf-config", help="TF_CONFIG for one training worker"))


def run_tool(a: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """What ``add_tool_arguments`` parsed -> printed output; an unknown profile is ``parser.error`` (exit 2)."""
    from captionbeam.launch import tf_config
    if a.what == "tf-config":
        return tf_config.main(a, parser)
    profiles = load_profiles(a.profiles_file)
    if a.what == "list":
        for name in profiles:
            print(f"{name:14s} {(profiles[name] or {}).get('description', '')}")
        return 0
    try:
        flags = profile_args(profiles, a.name, a.job)
    except KeyError as e:
        parser.error(str(e).strip("'\""))
    print(json.dumps({"profile": a.name, "command": a.job, "beam_flags": flags,
                      "train_flags": profile_train_args(profiles, a.name),
                      "env": profile_env(profiles, a.name)}, indent=2))
    return 0


def _main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m captionbeam.launch.profiles`` (the same as ``captionbeam profiles``)."""
    parser = argparse.ArgumentParser(prog="python -m captionbeam.launch.profiles", description=_main.__doc__)
    add_tool_arguments(parser)
    return run_tool(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(_main())
