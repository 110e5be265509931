"""Local <-> ``gs://`` copies for the steps that need files on this machine (TensorFlow's own gs://
filesystem does not follow a storage emulator, a report is written locally first): one walk, through
Beam's FileSystems on the gs:// side."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import captionbeam.pipelines.io as pio


def copy_tree(src: str, dst: str) -> int:
    """Copy every file under ``src`` to ``dst`` (local or gs:// on either side); returns the number of files."""
    if pio.is_gcs(src):
        files = pio.match([pio.join(src, "**")])
        rels = [f[len(src.rstrip("/")) + 1:] for f in files]
    else:
        files, rels = [], []
        for base, _, names in os.walk(src):
            for name in names:
                full = os.path.join(base, name)
                files.append(full)
                rels.append(os.path.relpath(full, src).replace(os.sep, "/"))
    for f, rel in zip(files, rels):
        pio.write_bytes(pio.join(dst, rel), pio.read_bytes(f))
    return len(files)


@contextlib.contextmanager
def local_dir(path: str, download: bool = True, upload: bool = False):
    """``path`` as a local directory: itself when local; for gs://, a temp copy (downloaded first unless
    ``download`` is false), uploaded back on success when ``upload``."""
    if not pio.is_gcs(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="captionbeam-stage-")
    try:
        if download:
            copy_tree(path, tmp)
        yield tmp
        if upload:
            copy_tree(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
