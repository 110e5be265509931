"""A versioned model root, as ``captionbeam retrain`` keeps it (local or ``gs://``)::

    ROOT/CURRENT                      one line: the version being served (written atomically)
    ROOT/versions/v001/               a model dir (`captionbeam train` layout) + version.json
    ROOT/versions/v002/ ...
    ROOT/data/captions.txt            every caption seen so far (Flickr8k token format)
    ROOT/data/{train,dev,test}.txt    split files; dev and test stay fixed, new images join train
    ROOT/features/features-<batch>-*.tfrecord   the feature records of every batch (one spec for all)
    ROOT/features/ids/ids-<batch>-*.jsonl       their sidecar: {image_id, path, sha256} per record
    ROOT/state/consumed/<batch>.jsonl the (path, sha256) of every image a finished batch consumed
    ROOT/state/attempts/<batch>.json  what each retraining attempt decided, and why
    ROOT/root.json                    the settings every attempt repeats (cleaning rule, min count)

``CURRENT`` changes only after a new version is complete and passed the promotion check, so a
reader never sees a half-written model; old versions are never deleted.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import captionbeam.pipelines.io as pio
from captionbeam.launch.command_face import CommandFault
from captionbeam.model import jsonl

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
VERSION_FILE = "version.json"
_VERSION_RE = re.compile(r"^v(\d{3,})$")


ROOT_FILE = "root.json"


class VersionError(CommandFault):
    """A root's versions or CURRENT pointer are not what an attempt needs (exit FAULT)."""


class RetrainError(CommandFault):
    """A bad root, bad inputs or a failed stage; the message says which (exit FAULT)."""


@dataclass
class VersionInfo:
    """``versions/vNNN/version.json``."""
    name: str
    parent: Optional[str] = None
    created: float = 0.0
    metrics: Dict[str, float] = field(default_factory=dict)      # on the fixed test split
    train_images: int = 0
    vocab_size: int = 0
    batch: Optional[str] = None                                  # the batch of images that produced it
    promoted: bool = False
    decision: List[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VersionInfo":
        d = json.loads(text)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def write_atomic(path: str, text: str) -> None:
    """Replace ``path``'s content in one step (:func:`pipelines.io.write_text_atomic`)."""
    pio.write_text_atomic(path, text)


class ModelRoot:
    """The versions of one served model under ``root``."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if "://" in root else os.path.abspath(root)

    def path(self, *parts: str) -> str:
        return pio.join(self.root, *parts)

    # -- versions
    def version_dir(self, name: str) -> str:
        if not _VERSION_RE.match(name):
            raise VersionError(f"not a version name: {name!r} (expected vNNN)")
        return self.path(VERSIONS_DIR, name)

    def versions(self) -> List[str]:
        """Complete versions (those with a version.json), oldest first."""
        found = set()
        for p in pio.match([self.path(VERSIONS_DIR, "*", VERSION_FILE)]):
            name = p.rstrip("/").split("/")[-2]
            if _VERSION_RE.match(name):
                found.add(name)
        return sorted(found, key=lambda n: int(n[1:]))

    def next_version(self) -> str:
        """One past the highest version directory present (complete or not, so an abandoned
        attempt's directory is never reused)."""
        highest = 0
        base = self.path(VERSIONS_DIR)
        if pio.is_gcs(base):
            names = {p[len(base) + 1:].split("/", 1)[0] for p in pio.match([pio.join(base, "**")])}
        else:
            names = set(os.listdir(base)) if os.path.isdir(base) else set()
        for name in names:
            m = _VERSION_RE.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
        return f"v{highest + 1:03d}"

    def info(self, name: str) -> VersionInfo:
        return VersionInfo.from_json(pio.read_text(pio.join(self.version_dir(name), VERSION_FILE)))

    def write_info(self, info: VersionInfo) -> None:
        write_atomic(pio.join(self.version_dir(info.name), VERSION_FILE), info.to_json() + "\n")

    # -- the pointer
    def current(self) -> Optional[str]:
        path = self.path(CURRENT_FILE)
        if not pio.exists(path):
            return None
        name = pio.read_text(path).strip()
        if not _VERSION_RE.match(name):
            raise VersionError(f"{path}: does not name a version: {name!r}")
        return name

    def current_dir(self) -> str:
        name = self.current()
        if name is None:
            raise VersionError(f"{self.path(CURRENT_FILE)} not found: no current model (bootstrap the root first)")
        return self.version_dir(name)

    def set_current(self, name: str) -> None:
        if name not in self.versions():
            raise VersionError(f"cannot make {name} current: {self.version_dir(name)} has no {VERSION_FILE}")
        write_atomic(self.path(CURRENT_FILE), name + "\n")


# ----------------------------------------------------------------------------- consumed images
def consumed_path(root: ModelRoot, batch: str) -> str:
    return root.path("state", "consumed", f"{batch}.jsonl")


def read_consumed(root: ModelRoot) -> Dict[str, str]:
    """path -> sha256 of every image a finished batch consumed."""
    out: Dict[str, str] = {}
    for p in pio.match([root.path("state", "consumed", "*.jsonl")]):
        for row in jsonl.loads(pio.read_text(p), p):
            out[row["path"]] = row["sha256"]
    return out


def write_consumed(root: ModelRoot, batch: str, items: Iterable[Tuple[str, str]]) -> None:
    write_atomic(consumed_path(root, batch), jsonl.dumps(({"path": p, "sha256": s} for p, s in items), sort_keys=True))


def next_batch(root: ModelRoot) -> str:
    """``bNNNN``: one past the highest batch that finished (an unfinished one is redone)."""
    highest = 0
    for p in pio.match([root.path("state", "consumed", "b*.jsonl")]):
        m = re.match(r"b(\d+)\.jsonl$", pio.basename(p))
        if m:
            highest = max(highest, int(m.group(1)))
    return f"b{highest + 1:04d}"


def now() -> float:
    return round(time.time(), 3)


@dataclass
class RootSettings:
    """``ROOT/root.json``: what every attempt must do the same way as the first model (the architecture
    is each version's own ``config.json``)."""
    clean: str = "seed"
    min_count: int = 5
    caption_format: str = "auto"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def write_settings(root: ModelRoot, settings: RootSettings) -> None:
    write_atomic(root.path(ROOT_FILE), settings.to_json() + "\n")


def read_settings(root: ModelRoot) -> RootSettings:
    path = root.path(ROOT_FILE)
    if not pio.exists(path):
        raise RetrainError(f"{path} not found: initialise the root first (captionbeam retrain --init ...)")
    d = pio.read_json(path)
    return RootSettings(**{k: v for k, v in d.items() if k in RootSettings.__dataclass_fields__})
