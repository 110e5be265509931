"""The root's features: every batch's feature records under ``ROOT/features/`` with one spec, and their
sidecar ``ROOT/features/ids/ids-<batch>-*.jsonl`` (``{image_id, path, sha256}`` per record, written by
the features job), which answers "is this content featurised already?" without reading a record."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import captionbeam.pipelines.io as pio
from captionbeam.launch.retrain.root import ModelRoot, RetrainError, read_consumed
from captionbeam.model.records import FeaturesSpec
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES
from captionbeam.pipelines.user_files import UserFileError

FEATURES_DIR = "features"


def feature_ids(features_dir: str) -> List[Dict[str, str]]:
    """The sidecar rows of a ``captionbeam features`` output (or of the root's features)."""
    from captionbeam.pipelines.features import ids_pattern, read_feature_ids
    if not pio.match([ids_pattern(features_dir)]) and pio.match([pio.join(features_dir, "features-*.tfrecord*")]):
        raise RetrainError(f"{features_dir}: feature records but no ids/ids-*.jsonl sidecar (written by an older "
                           f"`captionbeam features`): run the features job again for these images, or initialise "
                           f"the root from a fresh features output")
    return read_feature_ids(features_dir)


def feature_hashes(feature_dirs: Sequence[str]) -> Dict[str, str]:
    """sha256 -> image_id of every image in these features outputs."""
    return {row["sha256"]: row["image_id"] for d in feature_dirs for row in feature_ids(d)}


def add_features(root: ModelRoot, src: str, batch: str) -> List[Tuple[str, str]]:
    """Copy a features output's records and sidecar into the root, named by ``batch``; returns the
    (path, sha256) of every image they hold."""
    from captionbeam.pipelines.features import IDS_DIR, ids_pattern
    rows = feature_ids(src)
    for s in pio.match([pio.join(src, "features-*-of-*.tfrecord*")]):
        pio.write_bytes(root.path(FEATURES_DIR, pio.basename(s).replace("features-", f"features-{batch}-", 1)),
                        pio.read_bytes(s))
    for s in pio.match([ids_pattern(src)]):
        pio.write_bytes(root.path(FEATURES_DIR, IDS_DIR, pio.basename(s).replace("ids-", f"ids-{batch}-", 1)),
                        pio.read_bytes(s))
    return [(row["path"], row["sha256"]) for row in rows]


def remove_batch_features(root: ModelRoot, batch: str) -> List[str]:
    """Delete ``batch``'s records and sidecar in the root (left by an attempt of it that was killed;
    the caller holds the root's lease and the batch is not decided). Returns what was removed."""
    from captionbeam.pipelines.features import IDS_DIR
    found = pio.match([root.path(FEATURES_DIR, f"features-{batch}-*"), root.path(FEATURES_DIR, IDS_DIR, f"ids-{batch}-*")])
    pio.delete(found)
    return found


def encoder_file(spec: FeaturesSpec) -> Optional[str]:
    """The model file of a ``.keras`` / ``.h5`` / ``.tflite`` encoder (where the features job read it:
    ``encoder_spec.source``), None for a registered encoder."""
    enc = spec.encoder_description()
    return (enc.source or enc.name) if enc.is_file else None


def root_encoder_file(root: ModelRoot, spec: FeaturesSpec) -> Optional[str]:
    """The model file new features are made with: the root's copy (the original path when the root is
    on gs:// and the original is still on this machine); None for a registered encoder."""
    source = encoder_file(spec)
    if source is None:
        return None
    copy = root.path("encoder", pio.basename(source))
    if pio.is_gcs(copy) and os.path.exists(source):
        return source
    return copy


def landed(root: ModelRoot, images: Sequence[str]) -> List[str]:
    """Paths matched by ``images`` that no finished batch consumed (landed files are treated as
    immutable: a consumed path is not read again), dangling / looping links included (the hashing
    refuses them by name instead of their vanishing uncounted)."""
    from captionbeam.pipelines.matching import unlisted_local_matches
    consumed = read_consumed(root)
    matched = set(pio.match(list(images))) | {p for g in images for p in unlisted_local_matches(g)}
    return [p for p in sorted(matched) if p not in consumed]


def content_hashes(paths: Sequence[str], threads: int = 8, max_bytes: int = DEFAULT_MAX_BYTES
                   ) -> Tuple[List[Tuple[str, str]], List[UserFileError]]:
    """((path, sha256) of each readable path, the refused ones). Only new paths get here: the sidecar
    knows the content of every featurised image but not which new path holds which content, and object
    stores keep no sha256, so a new path's bytes are read once (in threads: on gs:// that is I/O),
    through the one reader of users' files: a FIFO, device, dangling or looping link, or a file over
    ``max_bytes`` is refused (never opened, never read past the limit)."""
    from concurrent.futures import ThreadPoolExecutor
    from captionbeam.pipelines.user_files import sha256_user_file

    def one(p):
        try:
            return sha256_user_file(p, max_bytes)
        except UserFileError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        got = list(zip(paths, pool.map(one, paths)))
    return [(p, h) for p, h in got if isinstance(h, str)], [h for _, h in got if not isinstance(h, str)]
