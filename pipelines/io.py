"""Paths, globs and bucket access for every job: local paths and ``gs://`` alike, through Beam's FileSystems.

Against a GCS emulator (``STORAGE_EMULATOR_HOST`` set, e.g. the tests' ``gcp-storage-emulator``),
Beam must not look up Google default credentials (it retries for ~20 s and ignores ``--no_auth``):
:func:`use_anonymous_gcs_if_emulated` seeds Beam's credential cache with "no credentials", so
``GcsIO`` builds ``storage.Client.create_anonymous_client()``, which follows the emulator host.
Importing this module changes nothing: the call is made explicitly by
:func:`pipelines.options.pipeline_options` (so by ``new_pipeline``), by the helpers below before they
touch a ``gs://`` path, and in Beam worker processes by :mod:`pipelines.worker_plugin` (named in
``--beam_plugin``: :data:`PLUGIN_PATH`).
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from typing import Iterable, List, Sequence

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# What ``--beam_plugin`` names so that every Beam worker process imports pipelines.worker_plugin at start-up.
PLUGIN_PATH = "captionbeam.pipelines.worker_plugin.AnonymousGcsWhenEmulated"


def use_anonymous_gcs_if_emulated() -> bool:
    """When a storage emulator is configured, make Beam's gs:// filesystem use an anonymous client.
    Idempotent; without ``STORAGE_EMULATOR_HOST`` it does nothing and returns False."""
    if not os.environ.get(EMULATOR_ENV):
        return False
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # Beam without [gcp]: nothing to configure
        return False
    # Beam has no public switch for this (``--no_auth`` is not read by GcsIO): its credential cache it is.
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None
    return True


def _filesystems(paths: Iterable[str] = ()):
    """Beam's ``FileSystems``, with :func:`use_anonymous_gcs_if_emulated` applied first when a path is ``gs://``."""
    from apache_beam.io.filesystems import FileSystems
    if any(is_gcs(p) for p in paths):
        use_anonymous_gcs_if_emulated()
    return FileSystems


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
    patterns = list(patterns)
    found = set()
    for result in _filesystems(patterns).match(patterns):
        for meta in result.metadata_list:
            if not meta.path.endswith("/"):
                found.add(meta.path)
    return sorted(found)


def exists(path: str) -> bool:
    return _filesystems([path]).exists(path)


def read_bytes(path: str) -> bytes:
    with _filesystems([path]).open(path, compression_type="uncompressed") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    if not is_gcs(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _filesystems([path]).create(path, compression_type="uncompressed") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_text_atomic(path: str, text: str) -> None:
    """Replace ``path``'s content in one step through the one commit mechanism, ``model.gfile.commit_path``:
    locally a run-private temporary, fsynced and renamed over it (a kill or a full disk leaves the old file
    or the new one, never a truncated one; the temporary is removed on error); on GCS an object upload is
    atomic already."""
    if is_gcs(path):
        write_text(path, text)
        return
    from captionbeam.model.gfile import commit_path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with commit_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        if e.errno is not None and "nothing committed" not in str(e.strerror):
            raise OSError(e.errno, f"{e.strerror} (nothing committed)", path) from e
        raise


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str):
    return json.loads(read_text(path))


def makedirs(path: str) -> None:
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)


def delete(paths: Iterable[str]) -> None:
    paths = [p for p in paths if exists(p)]
    if paths:
        _filesystems(paths).delete(paths)


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
