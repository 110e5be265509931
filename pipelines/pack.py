"""``captionbeam pack``: loose images (local or gs://) -> tar or TFRecord shards of about N images,
with a manifest, as a Beam job.

Output directory::

    <output>/<prefix>-SSSSS-of-NNNNN.tar            WebDataset layout: <id>.<ext> [+ <id>.txt captions]
                                                      [+ <id>.json {"id", "source", "sha256", "captions"}]
    <output>/<prefix>-SSSSS-of-NNNNN.tfrecord        tf.train.Example: image/encoded, image/id,
                                                      image/filename, image/format, image/sha256,
                                                      [image/caption (one value per caption)]
    (``.tar.gz`` / ``.tfrecord.gz`` with ``--compress``)
    <output>/manifest.jsonl                          {"id", "shard", "member", "sha256", "bytes", "source",
                                                      "captions" (how many were packed)}
    <output>/dead_letters/dead_letters-*.jsonl       files that were not packed, and why
    <output>/pack.json                               summary (written by the command after the job)

Plan: globs are matched on the workers; the matched paths (strings only) are gathered in one place,
sorted by image id and cut into consecutive chunks of exactly ``shard_size`` (the last one shorter),
so shards are deterministic and balanced. Captions are joined by image id (``CoGroupByKey``: no side
input holds the caption file). Each shard is then one work item that reads its images one at a time
and streams them into the shard file, so a worker never holds more than one image.

Images whose id is already taken (same basename in two directories) and files without an image
extension are dead-lettered: a shard never has two samples with one key.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from captionbeam.pipelines.options import Runner
import captionbeam.pipelines.io as pio
from captionbeam.model import jsonl
from captionbeam.pipelines import progress
from captionbeam.pipelines.deadletter import DeadLetter, WriteDeadLetters
from captionbeam.pipelines.counters import NAMESPACE
from captionbeam.pipelines.formats import IMAGE_EXTENSIONS
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES
from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS, decode_image
from captionbeam.pipelines.matching import MatchPaths
from captionbeam.pipelines.shards.writer import ShardWriter
from captionbeam.pipelines.user_files import UserFileError, check_max_bytes, read_user_file

LOG = logging.getLogger(__name__)

PACK_FORMATS = ("tar", "tfrecord")
MANIFEST_FILE = "manifest.jsonl"
SUMMARY_FILE = "pack.json"
STAGE = "pack"


@dataclass(frozen=True)
class PackConfig:
    images: Tuple[str, ...]
    output: str
    format: str = "tar"
    shard_size: int = 1000
    captions: str = ""
    captions_format: str = "auto"
    compress: bool = False
    prefix: str = "shard"
    verify_images: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS       # with verify_images
    overwrite: bool = False     # the command deletes what an earlier pack left in output first
    force: bool = False         # the command takes the output's lease from a run that holds it (pipelines.lease)

    def __post_init__(self):
        check_max_bytes(self.max_bytes)
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be positive, got {self.max_pixels}")
        if not self.images:
            raise ValueError("--images: give at least one glob")
        if self.format not in PACK_FORMATS:
            raise ValueError(f"--format must be one of {', '.join(PACK_FORMATS)}, got {self.format!r}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be a positive integer, got {self.shard_size}")
        if not self.prefix or "/" in self.prefix:
            raise ValueError(f"--prefix must be a plain file-name prefix, got {self.prefix!r}")

    @property
    def suffix(self) -> str:
        return (".tar" if self.format == "tar" else ".tfrecord") + (".gz" if self.compress else "")

    def shard_name(self, index: int, total: int) -> str:
        return f"{self.prefix}-{index:05d}-of-{total:05d}{self.suffix}"

    def shard_glob(self) -> str:
        return pio.join(self.output, f"{self.prefix}-*-of-*{self.suffix}")


# ----------------------------------------------------------------------------- pure planning
@dataclass(frozen=True)
class ShardPlan:
    index: int
    total: int
    entries: Tuple[Tuple[str, str], ...]  # (image_id, path), sorted by id


def image_extension(path: str) -> str:
    name = pio.basename(path).lower()
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


def plan_shards(paths: Iterable[str], shard_size: int) -> Tuple[List[ShardPlan], List[DeadLetter]]:
    """Sorted, de-duplicated image paths -> consecutive shards of ``shard_size`` images (the last one
    shorter), plus dead letters for non-image files and ids already taken (the path that sorts first
    keeps the id)."""
    dead: List[DeadLetter] = []
    by_id: Dict[str, str] = {}
    for path in sorted(set(paths)):
        if image_extension(path) not in IMAGE_EXTENSIONS:
            dead.append(DeadLetter(path, "not_an_image", f"extension {image_extension(path) or '(none)'!r} is not "
                                                         f"one of {', '.join(IMAGE_EXTENSIONS)}", STAGE))
            continue
        iid = pio.image_id_from_path(path)
        if iid in by_id:
            dead.append(DeadLetter(path, "duplicate_id", f"image id {iid!r} is already packed from {by_id[iid]}",
                                   STAGE))
            continue
        by_id[iid] = path
    entries = sorted(by_id.items())
    total = max(1, math.ceil(len(entries) / shard_size)) if entries else 0
    plans = [ShardPlan(i, total, tuple(entries[i * shard_size:(i + 1) * shard_size])) for i in range(total)]
    return plans, dead


# ----------------------------------------------------------------------------- Beam
class _PlanFn(beam.DoFn):
    DEAD = "dead_letters"

    def __init__(self, shard_size: int):
        self.shard_size = shard_size

    def process(self, paths: List[str]):
        plans, dead = plan_shards(paths, self.shard_size)
        LOG.info("pack plan: %d images in %d shards of <= %d (%d files not packed)",
                 sum(len(p.entries) for p in plans), len(plans), self.shard_size, len(dead))
        for d in dead:
            yield beam.pvalue.TaggedOutput(self.DEAD, d)
        for plan in plans:
            for iid, path in plan.entries:
                yield iid, (plan.index, plan.total, path)


class _ReadCaptionsFn(beam.DoFn):
    """captions file -> (image_id, (order, caption)); malformed lines become dead letters."""
    DEAD = "dead_letters"

    def __init__(self, fmt: str):
        self.fmt = fmt

    def process(self, path: str):
        from captionbeam.model.caption_files import CaptionFileError, iter_rows
        text = pio.read_text(path)
        for row in iter_rows(text, self.fmt, source=path):
            if isinstance(row, CaptionFileError):
                yield beam.pvalue.TaggedOutput(self.DEAD, DeadLetter.from_exception(path, row, "captions"))
            else:
                yield row.image_id, (row.order, row.caption)


def _join_captions(item, with_captions: bool = False):
    """CoGroupByKey row -> (shard index, (id, path, captions, total)) for every planned image."""
    iid, grouped = item
    plans = list(grouped["plan"])
    captions = [c for _, c in sorted(grouped["captions"])]
    if not plans:
        if captions:
            beam.metrics.Metrics.counter(NAMESPACE, "pack_captions_without_image").inc()
        return
    if with_captions and not captions:
        beam.metrics.Metrics.counter(NAMESPACE, "pack_images_without_captions").inc()
    index, total, path = plans[0]
    yield index, (iid, path, captions, total)


class _WriteShardFn(beam.DoFn):
    """(shard index, [(id, path, captions, total)]) -> one shard file, streamed image by image;
    yields manifest rows, and dead letters for images that could not be read (or verified)."""
    DEAD = "dead_letters"

    def __init__(self, config: PackConfig):
        self.config = config

    def setup(self):
        m = beam.metrics.Metrics
        self.images = m.counter(NAMESPACE, "pack_images")
        self.shards = m.counter(NAMESPACE, "pack_shards")
        self.nbytes = m.counter(NAMESPACE, "pack_bytes")

    def process(self, item):
        from apache_beam.io.filesystems import FileSystems
        index, rows = item
        rows = sorted(rows)
        total = rows[0][3]
        cfg = self.config
        name = cfg.shard_name(index, total)
        path = pio.join(cfg.output, name)
        start, n, size = time.time(), 0, 0
        manifest = []
        dead = []
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            writer = ShardWriter(f, cfg.format, compress=cfg.compress)
            for iid, src, captions, _ in rows:
                try:
                    data = read_user_file(src, cfg.max_bytes)   # regular files only, never past --max-bytes
                    if cfg.verify_images:
                        decode_image(data, cfg.max_pixels)
                except UserFileError as e:
                    dead.append(DeadLetter(src, e.error, e.message, STAGE))
                    continue
                except Exception as e:  # noqa: BLE001 - unreadable / not an image: dead letter
                    dead.append(DeadLetter.from_exception(src, e, STAGE))
                    continue
                digest = pio.sha256_hex(data)
                meta = {"id": iid, "source": src, "sha256": digest, "filename": pio.basename(src)}
                if captions:
                    meta["captions"] = list(captions)
                member = writer.write(iid, data, image_extension(src), captions=captions, metadata=meta)
                manifest.append({"id": iid, "shard": name, "member": member, "sha256": digest,
                                 "bytes": len(data), "source": src, "captions": len(captions)})
                n += 1
                size += len(data)
                self.images.inc()
                self.nbytes.inc(len(data))
            writer.close()
        self.shards.inc()
        secs = max(time.time() - start, 1e-6)
        LOG.info("wrote %s: %d images, %.1f MB in %.1fs (%.0f images/s)", path, n, size / 1e6, secs, n / secs)
        for d in dead:
            yield beam.pvalue.TaggedOutput(self.DEAD, d)
        for row in manifest:
            yield jsonl.dumps_line(row, sort_keys=True)


class PackImages(beam.PTransform):
    """pipeline root -> shards + ``manifest.jsonl`` + dead letters under ``config.output``."""

    def __init__(self, config: PackConfig, progress_dir: Optional[str] = None):
        super().__init__()
        self.config = config
        self.progress_dir = progress_dir

    def expand(self, pbegin):
        cfg = self.config
        paths = pbegin | "Match" >> MatchPaths(cfg.images)     # dangling / looping links included
        planned = (paths
                   | "AllPaths" >> beam.combiners.ToList()
                   | "Plan" >> beam.ParDo(_PlanFn(cfg.shard_size)).with_outputs(_PlanFn.DEAD, main="plan"))
        dead = [planned[_PlanFn.DEAD]]
        groups = {"plan": planned.plan}
        if cfg.captions:
            caps = (pbegin
                    | "CaptionsFile" >> beam.Create([cfg.captions])
                    | "ReadCaptions" >> beam.ParDo(_ReadCaptionsFn(cfg.captions_format)).with_outputs(
                        _ReadCaptionsFn.DEAD, main="captions"))
            groups["captions"] = caps.captions
            dead.append(caps[_ReadCaptionsFn.DEAD])
        else:
            groups["captions"] = pbegin | "NoCaptions" >> beam.Create([])
        by_shard = (groups
                    | "JoinCaptions" >> beam.CoGroupByKey()
                    | "ByShard" >> beam.FlatMap(_join_captions, with_captions=bool(cfg.captions))
                    | "GroupShards" >> beam.GroupByKey())
        written = by_shard | "WriteShards" >> beam.ParDo(_WriteShardFn(cfg)).with_outputs(
            _WriteShardFn.DEAD, main="manifest")
        dead.append(written[_WriteShardFn.DEAD])
        progress.count_done((written.manifest, written[_WriteShardFn.DEAD], planned[_PlanFn.DEAD]), self.progress_dir)
        (written.manifest
         | "WriteManifest" >> beam.io.WriteToText(pio.join(cfg.output, "manifest"), file_name_suffix=".jsonl",
                                                  num_shards=1, shard_name_template=""))
        (dead | "FlattenDeadLetters" >> beam.Flatten() | "WriteDeadLetters" >> WriteDeadLetters(cfg.output))
        return written.manifest


# ----------------------------------------------------------------------------- driver
@dataclass
class PackSummary:
    output: str
    format: str
    shard_size: int
    shards: int
    images: int
    bytes: int
    dead_letters: int
    captioned: int
    compress: bool
    seconds: float = 0.0
    shard_files: List[str] = field(default_factory=list)


def existing_outputs(config: PackConfig) -> List[str]:
    """Shards, manifest and dead letters a previous pack left in ``config.output`` (any shard count)."""
    from captionbeam.pipelines.deadletter import dead_letters_pattern
    shards = [pio.join(config.output, f"{config.prefix}-*-of-*{ext}*") for ext in (".tar", ".tfrecord")]
    return pio.match(shards + [pio.join(config.output, MANIFEST_FILE), pio.join(config.output, SUMMARY_FILE),
                               dead_letters_pattern(config.output)])


def read_manifest(output: str) -> List[dict]:
    path = pio.join(output, MANIFEST_FILE)
    return jsonl.loads(pio.read_text(path), path)


def run(config: PackConfig, runner: Runner = None) -> PackSummary:
    """Run the pack job to completion; writes ``pack.json`` and returns its summary."""
    from captionbeam.pipelines.deadletter import dead_letters_dir, read_dead_letters
    from captionbeam.pipelines.options import new_pipeline
    pio.makedirs(config.output)
    pio.remove_stale_beam_temp([config.output, dead_letters_dir(config.output)])
    start = time.time()
    progress_dir = progress.progress_dir(config.output)
    with progress.ProgressReporter("pack", progress_dir, progress.files_total(config.images)):
        with new_pipeline(runner) as p:
            _ = p | "Pack" >> PackImages(config, progress_dir)
    rows = read_manifest(config.output)
    shards = sorted({r["shard"] for r in rows})
    captioned = sum(1 for r in rows if r.get("captions"))
    summary = PackSummary(output=config.output, format=config.format, shard_size=config.shard_size,
                          shards=len(shards), images=len(rows), bytes=sum(r["bytes"] for r in rows),
                          dead_letters=len(read_dead_letters(config.output)), captioned=captioned,
                          compress=config.compress, seconds=round(time.time() - start, 2), shard_files=shards)
    pio.write_json(pio.join(config.output, SUMMARY_FILE), asdict(summary))
    return summary
