"""Runner profiles: a YAML file of named sets of Beam flags, so users do not retype them."""
from __future__ import annotations

import json
import shlex
from typing import Dict, List, Mapping, Sequence


def load_profiles(path: str) -> Dict[str, dict]:
    import yaml
    with open(path, "r", encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of profile names")
    return data


def _flag_list(options: Mapping[str, object]) -> List[str]:
    out: List[str] = []
    for key, value in options.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool):
                if v:
                    out.append(f"--{key}")
            else:
                out.append(f"--{key}={v}")
    return out


def profile_args(profiles: Mapping[str, dict], name: str, command: str) -> List[str]:
    """Flags of profile ``name`` for ``command``: its ``all`` section, then the command's own."""
    if name not in profiles:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    profile = profiles[name] or {}
    merged: Dict[str, object] = dict(profile.get("all") or {})
    merged.update(profile.get(command) or {})
    return _flag_list(merged)


def resolved_options(pipeline_args: Sequence[str]) -> Dict[str, object]:
    """The options Beam resolves from these flags (only those set)."""
    from pipelines.options import pipeline_options
    opts = pipeline_options(pipeline_args).get_all_options(drop_default=True)
    return {k: v for k, v in sorted(opts.items()) if v is not None}


def print_dry_run(command: str, argv: Sequence[str], pipeline_args: Sequence[str]) -> None:
    print(json.dumps({"command": command, "pipeline_options": resolved_options(pipeline_args)},
                     indent=2, sort_keys=True, default=str))
    own = [a for a in argv if a not in ("--dry-run",)]
    print("equivalent command line:")
    print("  " + shlex.join(["captionbeam", *own, *pipeline_args]))
