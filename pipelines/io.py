"""Paths, globs and bucket access for every job: local paths and ``gs://`` alike, through Beam's FileSystems.

Against a GCS emulator (``STORAGE_EMULATOR_HOST`` set, e.g. the tests' ``gcp-storage-emulator``),
Beam must not look up Google default credentials (it retries for ~20 s and ignores ``--no_auth``):
:func:`use_anonymous_gcs_if_emulated` seeds Beam's credential cache with "no credentials", so
``GcsIO`` builds ``storage.Client.create_anonymous_client()``, which follows the emulator host.
It is called on import of this module, so Beam worker processes (which import the pipelines
package to unpickle its DoFns) do the same.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from typing import Iterable, Iterator, List, Sequence

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def use_anonymous_gcs_if_emulated() -> bool:
    """When a storage emulator is configured, make Beam's gs:// filesystem use an anonymous client."""
    if not os.environ.get(EMULATOR_ENV):
        return False
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # Beam without [gcp]: nothing to configure
        return False
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None
    return True


use_anonymous_gcs_if_emulated()

try:
    from apache_beam.utils.plugin import BeamPlugin
except ImportError:  # pragma: no cover
    BeamPlugin = object


class AnonymousGcsWhenEmulated(BeamPlugin):
    """Named in ``--beam_plugin`` so every Beam worker process imports this module at start-up
    (before its first gs:// access) and applies :func:`use_anonymous_gcs_if_emulated`."""


PLUGIN_PATH = f"{__name__}.AnonymousGcsWhenEmulated"


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def join(base: str, *parts: str) -> str:
    """Join path components for local paths and URLs alike."""
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def image_id_from_path(path: str) -> str:
    """Flickr8k convention: the file name without its extension."""
    name = basename(path)
    return name.rsplit(".", 1)[0] if "." in name else name


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def match(patterns: Sequence[str]) -> List[str]:
    """Expand globs (local or gs://) with Beam's FileSystems; sorted, de-duplicated, directories skipped."""
    from apache_beam.io.filesystems import FileSystems
    found = set()
    for result in FileSystems.match(list(patterns)):
        for meta in result.metadata_list:
            if not meta.path.endswith("/"):
                found.add(meta.path)
    return sorted(found)


def exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems
    if not is_gcs(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileSystems.create(path, compression_type="uncompressed") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str):
    return json.loads(read_text(path))


def makedirs(path: str) -> None:
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)


def delete(paths: Iterable[str]) -> None:
    from apache_beam.io.filesystems import FileSystems
    paths = [p for p in paths if exists(p)]
    if paths:
        FileSystems.delete(paths)


def run_token() -> str:
    """A short unique token for output file names of one run (never overwrite earlier runs)."""
    return uuid.uuid4().hex[:12]


BEAM_TEMP_PREFIX = "beam-temp-"


def remove_stale_beam_temp(directories: Iterable[str]) -> List[str]:
    """Delete the ``beam-temp-*`` folders Beam's file sinks leave in these directories when a job is
    killed before it finalises its files (a finished job removes its own). Called by every job at the
    start of a run into the same output, before its pipeline starts: a run never shares an output
    with another live run (bulk holds a lease on it; see :mod:`pipelines.lease`). Returns what was
    removed (local paths or ``gs://`` folder prefixes)."""
    import logging
    import shutil
    from apache_beam.io.filesystems import FileSystems
    removed = []
    for d in directories:
        if is_gcs(d):
            pattern = join(d, BEAM_TEMP_PREFIX + "**")
            files = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
            if files:
                FileSystems.delete(files)
                removed += sorted({f[: f.index("/", len(d.rstrip("/")) + 1)] for f in files})
        elif os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                path = os.path.join(d, name)
                if name.startswith(BEAM_TEMP_PREFIX) and os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                    removed.append(path)
    if removed:
        logging.getLogger(__name__).warning("removed %d temporary folder(s) left by an earlier run that did "
                                            "not finish: %s", len(removed), ", ".join(removed))
    return removed
