"""Runner profiles: a YAML file of named sets of Beam flags (and training flags), so users do not
retype them, plus ``--dry-run``: the fully resolved options and the equivalent command line.

Profile file format (see ``launch/profiles.yaml``)::

    NAME:
      extends: OTHER          # optional: start from another profile's sections
      all:      {beam_option: value, ...}   # every Beam job
      features: {...}         # one job's own additions (features, captions, bulk, pack, ...)
      train:    {...}         # flags for the training stage of `run` / `retrain` (not Beam flags)
      env:      {VAR: value}  # documentation of the environment each process needs (e.g. TF_CONFIG)

Values: scalars become ``--key=value``; ``true`` becomes ``--key``; ``false`` is left out; lists repeat
the flag (``experiments: [a, b]`` -> ``--experiments=a --experiments=b``).

Merge rules (:func:`merge_flags`): profile flags first, then the command line's; a single-valued
option set twice keeps the last value (the command line wins); a repeatable option
(``--experiments``, ``--dataflow_service_options``, ``--beam_plugin``) keeps every distinct value once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# sections of a profile that are not Beam flags for a job
NON_BEAM_SECTIONS = ("extends", "train", "env", "description")
PLACEHOLDER = re.compile(r"<[^<>]+>")


# ----------------------------------------------------------------------------- loading
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


# ----------------------------------------------------------------------------- Beam flag merging
@dataclass(frozen=True)
class Flag:
    dest: str          # the PipelineOptions attribute it sets
    tokens: Tuple[str, ...]   # normalised tokens: ("--key=value",) or ("--switch",)
    repeatable: bool


def _beam_actions() -> Dict[str, argparse.Action]:
    from launch.beam_options import _beam_parser
    actions = {}
    for action in _beam_parser()._actions:
        for s in action.option_strings:
            actions[s] = action
    return actions


def parse_flags(args: Sequence[str], actions: Optional[Dict[str, argparse.Action]] = None) -> List[Flag]:
    """Beam flags -> normalised :class:`Flag`s (``--k v`` and ``--k=v`` both become ``--k=v``).
    Tokens Beam does not know are kept as they are (single-valued)."""
    actions = _beam_actions() if actions is None else actions
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


def merge_flags(*groups: Sequence[str]) -> List[str]:
    """Concatenate groups of Beam flags (earlier groups are overridden by later ones) without duplicates:
    a single-valued option keeps its last value, a repeatable one every distinct value once."""
    actions = _beam_actions()
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


# ----------------------------------------------------------------------------- dry run
def resolved_options(pipeline_args: Sequence[str], all_options: bool = False) -> Dict[str, object]:
    """The options Beam resolves from these flags: those set (default) or every option."""
    from pipelines.options import pipeline_options
    opts = pipeline_options(pipeline_args).get_all_options(drop_default=not all_options)
    if not all_options:
        opts.setdefault("runner", None)
        if opts["runner"] is None:
            opts["runner"] = "DirectRunner (Beam's default)"
    return {k: v for k, v in sorted(opts.items()) if v is not None or all_options}


def _strip_subsequence(argv: Sequence[str], sub: Sequence[str]) -> List[str]:
    """``argv`` without the tokens of ``sub`` (a subsequence of it, in order)."""
    out, j = [], 0
    for tok in argv:
        if j < len(sub) and tok == sub[j]:
            j += 1
            continue
        out.append(tok)
    return out


_OWN_RUNNER_FLAGS = ("--profile", "--profiles-file", "--dry-run")


def _strip_runner_flags(argv: Sequence[str]) -> List[str]:
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        key = tok.split("=", 1)[0]
        if key in _OWN_RUNNER_FLAGS:
            if key != "--dry-run" and "=" not in tok:
                skip = True
            continue
        out.append(tok)
    return out


def _parse_command(command: str, argv: Sequence[str]):
    """Re-parse ``argv`` as captionbeam's parser does: -> (module, args namespace, leftover tokens)."""
    from launch.beam_options import add_profile_argument
    from launch.cli import _module_for, build_parser
    parser, subparsers = build_parser()
    module = _module_for(command)
    module.add_arguments(subparsers[command])
    if getattr(module, "BEAM", False):
        add_profile_argument(subparsers[command])
    args, rest = parser.parse_known_args(list(argv))
    return module, args, rest


def dry_run_report(command: str, argv: Sequence[str], pipeline_args: Sequence[str]) -> dict:
    """What ``--dry-run`` prints: command options (defaults resolved), Beam options, equivalent argv."""
    module, args, rest = _parse_command(command, argv)
    own = _strip_runner_flags(_strip_subsequence(argv, rest))
    merged = merge_flags(pipeline_args)
    equivalent = ["captionbeam", *own, *merged]
    command_options = {k: v for k, v in sorted(vars(args).items())
                       if k not in ("command", "log_level", "profile", "profiles_file", "dry_run")}
    report = {
        "command": command,
        "profile": getattr(args, "profile", None),
        "command_options": command_options,
        "pipeline_options": resolved_options(merged),
        "equivalent_command_line": shlex.join(equivalent),
    }
    todo = placeholders(merged)
    if todo:
        report["warnings"] = [f"placeholder value, edit the profiles file or pass the flag: {f}" for f in todo]
    plan = getattr(module, "dry_run_plan", None)
    if plan is not None:
        report["plan"] = plan(args, merged)
    return report


def print_dry_run(command: str, argv: Sequence[str], pipeline_args: Sequence[str], out=None) -> None:
    out = out or sys.stdout
    report = dry_run_report(command, argv, pipeline_args)
    line = report.pop("equivalent_command_line")
    print(json.dumps(report, indent=2, sort_keys=True, default=str), file=out)
    print("equivalent command line (nothing submitted):", file=out)
    print("  " + line, file=out)


# ----------------------------------------------------------------------------- multi-worker training
def tf_config(workers: Sequence[str], index: int, task_type: str = "worker",
              chief: Optional[str] = None) -> dict:
    """``TF_CONFIG`` for one process of a MultiWorkerMirroredStrategy cluster.

    ``workers`` are ``host:port`` strings, identical and in the same order on every process; ``index``
    is this process's position in them. Worker 0 is the chief unless a separate ``chief`` is given.
    """
    workers = [w.strip() for w in workers if w.strip()]
    if not workers:
        raise ValueError("--workers: need at least one host:port")
    for w in workers + ([chief] if chief else []):
        host, _, port = w.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--workers: expected host:port, got {w!r}")
    cluster: Dict[str, List[str]] = {"worker": list(workers)}
    if chief:
        cluster["chief"] = [chief]
    size = len(cluster.get(task_type, []))
    if task_type not in cluster:
        raise ValueError(f"--task-type: {task_type!r} is not in the cluster ({', '.join(cluster)})")
    if not 0 <= index < size:
        raise ValueError(f"--index: {index} is out of range for {size} {task_type}(s)")
    return {"cluster": cluster, "task": {"type": task_type, "index": int(index)}}


def _main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m launch.profiles``: list profiles, show one, or print a worker's TF_CONFIG."""
    from launch.beam_options import DEFAULT_PROFILES_FILE, PROFILES_ENV
    parser = argparse.ArgumentParser(prog="python -m launch.profiles", description=_main.__doc__)
    parser.add_argument("--profiles-file", default=os.environ.get(PROFILES_ENV, DEFAULT_PROFILES_FILE),
                        help="YAML file of profiles (default: $CAPTIONBEAM_PROFILES or the packaged one)")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("list", help="profile names and descriptions")
    show = sub.add_parser("show", help="one profile's flags per job, training flags and environment")
    show.add_argument("name")
    show.add_argument("--command", default="features", help="job whose flags to show (default: features)")
    tfc = sub.add_parser("tf-config", help="TF_CONFIG for one training worker")
    tfc.add_argument("--workers", required=True, help="comma-separated host:port of every worker, same order everywhere")
    tfc.add_argument("--index", type=int, default=None,
                     help="this worker's index (default: $JOB_COMPLETION_INDEX, set by an indexed Kubernetes Job)")
    tfc.add_argument("--task-type", default="worker", choices=["worker", "chief"])
    tfc.add_argument("--chief", default=None, help="host:port of a separate chief (default: worker 0 is the chief)")
    tfc.add_argument("--export", action="store_true", help="print as a shell `export TF_CONFIG=...` line")
    a = parser.parse_args(argv)
    if a.what == "tf-config":
        index = a.index
        if index is None:
            env = os.environ.get("JOB_COMPLETION_INDEX")
            if env is None:
                parser.error("--index: required (or set $JOB_COMPLETION_INDEX)")
            index = int(env)
        try:
            cfg = json.dumps(tf_config(a.workers.split(","), index, a.task_type, a.chief), separators=(",", ":"))
        except ValueError as e:
            parser.error(str(e))
        print(f"export TF_CONFIG={shlex.quote(cfg)}" if a.export else cfg)
        return 0
    profiles = load_profiles(a.profiles_file)
    if a.what == "list":
        for name in profiles:
            print(f"{name:14s} {(profiles[name] or {}).get('description', '')}")
        return 0
    try:
        flags = profile_args(profiles, a.name, a.command)
    except KeyError as e:
        parser.error(str(e))
    print(json.dumps({"profile": a.name, "command": a.command, "beam_flags": flags,
                      "train_flags": profile_train_args(profiles, a.name),
                      "env": profile_env(profiles, a.name)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
