"""Bulk captioning: caption an archive of images with a trained model, resumably, on any Beam runner.

Pipeline (each step a composite PTransform)::

    ReadImageKeys (pipelines.image_keys: loose files, tar / TFRecord shards, hashed where read: keys, no bytes)
      -> SplitAlreadyCaptioned: CoGroupByKey by path of (path, sha256) with ReadManifest(model version)
      -> ReadKeyedImages: the bytes of the images still to caption only, read again and hashed again
         (loose files one by one, shard members in one more pass per shard)
         [--redo: ReadImages (bytes) -> hash, no join, no second read]
      -> DecodeForCaptioner (pipelines.decoding.DecodeImages at the encoder's input size)
         [exported SavedModel as --model-dir: PassImageBytes instead, the export decodes in its graph]
      -> CaptionBatches: RunInference(CaptionerModelHandler | SavedModelHandler) -- encoder + decoder, batched
      -> WriteBulkOutputs: captions-<run>-*.jsonl|parquet, then manifest/<version>/manifest-<run>-*,
         dead_letters/dead_letters-<run>-*.jsonl (failures an earlier run filed are not filed again,
         DropFiledDeadLetters; not with --redo)

Output layout under ``--output`` (local or gs://); ``<run>`` is unique per run, so a retried or
repeated run never overwrites or duplicates an earlier run's files::

    captions/captions-<run>-SSSSS-of-NNNNN.jsonl     one row per captioned image (or .parquet)
    manifest/<model_version>/manifest-<run>-*.jsonl   (path, sha256, image_id, run) of those rows
    dead_letters/dead_letters-<run>-*.jsonl           {"path", "error", "message", "stage"}
    runs/<run>.json                                   counters, files, options (written last)

Accounting (Beam counters, namespace ``captionbeam.bulk``): every matched image is counted in
``matched`` and in exactly one of ``captioned``, ``skipped``, ``failed``.

Re-runs are safe by default: the same command twice captions nothing twice (``skipped``) and files no
dead letter twice (``already_filed``, still counted in ``failed``); ``BulkConfig(skip_existing=False)``
(``captionbeam bulk --redo``) captions and files everything again, as new rows of a new run.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam

from captionbeam.pipelines.options import Runner, runner_flags
import captionbeam.pipelines.io as pio
from captionbeam.pipelines import progress
from captionbeam.pipelines.bulk_handler import CaptionerConfig, CaptionerModelHandler, ImageBytes, SavedModelHandler
from captionbeam.pipelines.bulk_rows import CaptionRow, parquet_schema
from captionbeam.pipelines.counters import BULK_INFERENCE_NAMESPACE, query_counters
from captionbeam.pipelines.counters import BULK_NAMESPACE as NAMESPACE  # noqa: N811 (the namespace of this job)
from captionbeam.pipelines.deadletter import (DEAD_LETTERS_PREFIX, DEAD_LETTERS_SUFFIX, DeadLetter, dead_letters_dir,
                                  failed_batch_dead_letters)
from captionbeam.pipelines.decoding import DecodeImages
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES
from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS
from captionbeam.pipelines.manifest import (DropFiledDeadLetters, ManifestEntry, ReadFiledDeadLetters, ReadManifest,
                                            SplitAlreadyCaptioned, manifest_prefix)
from captionbeam.pipelines.redact import write_record
from captionbeam.pipelines.shards.image_examples import TfrecordFields

log = logging.getLogger(__name__)

COUNTERS = ("matched", "captioned", "skipped", "failed")
FORMATS = ("jsonl", "parquet")
CAPTIONS_DIR = "captions"
CAPTIONS_PREFIX = "captions"
RUNS_DIR = "runs"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class BulkConfig:
    images: Tuple[str, ...]
    output: str
    model_dir: str
    beam_size: int = 1
    length_penalty: float = 0.0  # beam search ranks by log-prob / length**length_penalty
    batch_size: int = 32
    max_length: Optional[int] = None
    format: str = "jsonl"
    skip_existing: bool = True  # False (--redo): caption everything again and re-file known failures
    input_format: str = "auto"
    num_shards: int = 0  # 0: let the runner choose
    model_copies: Optional[int] = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize_method: str = "bilinear"
    tfrecord_fields: Optional[TfrecordFields] = None  # image TFRecord field names (None: the defaults)
    force: bool = False  # take the output's lease even when another run holds it (pipelines.lease)
    commit_every: int = 0  # > 0: list the inputs, run and commit them in parts of this many files (bulk_parts)

    def __post_init__(self):
        if not self.images:
            raise ValueError("--images: give at least one glob")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.num_shards < 0:
            raise ValueError(f"--num-shards must be >= 0, got {self.num_shards}")
        if self.commit_every < 0:
            raise ValueError(f"--commit-every must be >= 0, got {self.commit_every}")
        self.captioner_config()  # validates beam/batch sizes

    def captioner_config(self) -> CaptionerConfig:
        return CaptionerConfig(model_dir=self.model_dir, beam_size=self.beam_size, max_length=self.max_length,
                               length_penalty=self.length_penalty,
                               batch_size=self.batch_size, model_copies=self.model_copies)


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline must know about the model before it starts (from the launcher).

    ``exported``: ``--model-dir`` is a SavedModel of ``captionbeam export`` (raw bytes go to its
    ``serving_default``; ``model_version`` is then ``model.export.export_version`` and
    ``source_model_version`` the version of the model directory it was exported from)."""
    model_version: str
    encoder: str
    image_size: int
    exported: bool = False
    source_model_version: Optional[str] = None


def new_run_token(now: Optional[_dt.datetime] = None) -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex>``: sortable by start time, unique across concurrent runs."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def captions_prefix(output: str, run: str) -> str:
    return pio.join(output, CAPTIONS_DIR, f"{CAPTIONS_PREFIX}-{run}")


def captions_glob(output: str, fmt: str = "*") -> str:
    suffix = "*" if fmt == "*" else f".{fmt}"
    return pio.join(output, CAPTIONS_DIR, f"{CAPTIONS_PREFIX}-*{suffix}")


def run_record_path(output: str, run: str) -> str:
    return pio.join(output, RUNS_DIR, f"{run}.json")


# ----------------------------------------------------------------------------- DoFns
class _Count(beam.DoFn):
    def __init__(self, *names: str):
        self.names = names

    def setup(self):
        self.counters = [beam.metrics.Metrics.counter(NAMESPACE, n) for n in self.names]

    def process(self, element):
        for c in self.counters:
            c.inc()
        yield element


class _CountReadDeadLetters(beam.DoFn):
    """A reader's dead letter is an image (a file, a shard member, or the unreadable rest of a shard)
    that was matched and failed before it could be hashed: it counts in ``matched`` and ``failed``.
    (Duplicate ids inside shards are dropped by the shard reader as such dead letters too.)"""

    def setup(self):
        self.matched = beam.metrics.Metrics.counter(NAMESPACE, "matched")
        self.failed = beam.metrics.Metrics.counter(NAMESPACE, "failed")

    def process(self, d: DeadLetter):
        self.matched.inc()
        self.failed.inc()
        yield d


def _hashed(blob) -> Tuple[Any, str]:
    """ImageBlob -> ``(blob, sha256)`` (the ``--redo`` path: no join, the bytes read once)."""
    return blob, pio.sha256_hex(blob.data)


def _to_image_bytes(item) -> ImageBytes:
    blob, sha = item
    return ImageBytes(path=blob.source, image_id=blob.image_id, sha256=sha, data=blob.data)


def _item_path(item) -> str:
    return item.path


def _split_inference_output(out):
    if isinstance(out, DeadLetter):
        yield beam.pvalue.TaggedOutput("dead_letters", out)
    else:
        yield out


# ----------------------------------------------------------------------------- transforms
def _image_bytes_within_limit(item, max_pixels: int):
    """(ImageBlob, sha256) -> ImageBytes, or a dead letter when the header declares more than
    ``max_pixels`` (bulk's --max-pixels holds for an export too; nothing is decoded here)."""
    from captionbeam.pipelines.images import DecompressionBombError, check_header
    try:
        check_header(item[0].data, max_pixels)
    except DecompressionBombError as e:
        yield beam.pvalue.TaggedOutput("dead_letters", DeadLetter.from_exception(item[0].source, e, "decode"))
        return
    except Exception:  # noqa: BLE001 - not an image by Pillow's header: the export decides (valid=False)
        pass
    yield _to_image_bytes(item)


class PassImageBytes(beam.PTransform):
    """(ImageBlob, sha256) -> {"images": ImageBytes, "dead_letters": over --max-pixels}: for an exported
    SavedModel, which decodes the bytes itself (bytes it rejects come back from the handler as dead letters)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        self.max_pixels = max_pixels

    def expand(self, items):
        out = items | "ToImageBytes" >> beam.FlatMap(_image_bytes_within_limit, self.max_pixels).with_outputs(
            "dead_letters", main="images")
        return {"images": out.images, "dead_letters": out.dead_letters}


def make_handler(config: BulkConfig, model: ModelInfo):
    """The job's one ModelHandler: SavedModelHandler for an export, CaptionerModelHandler otherwise."""
    if model.exported:
        return SavedModelHandler(config.captioner_config(), model.model_version, model.encoder)
    return CaptionerModelHandler(config.captioner_config())


def prepare_for_model(config: BulkConfig, model: ModelInfo) -> Tuple[str, beam.PTransform]:
    """(step name, transform) that turns (ImageBlob, sha256) into what the job's handler takes."""
    if model.exported:
        return "PassImageBytes", PassImageBytes(config.max_pixels)
    return "DecodeForCaptioner", DecodeImages(model.image_size, config.max_pixels, config.resize_method)


class CaptionBatches(beam.PTransform):
    """DecodedImage (or ImageBytes) -> {"rows": output rows, "dead_letters": DeadLetter} through RunInference.

    The handler isolates a failing image inside a batch (see ``CaptionerModelHandler``); anything that
    still escapes (a whole batch failing) is caught by RunInference's exception handling and each of
    its images becomes a dead letter (stage ``inference``): the job finishes."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def expand(self, images):
        from apache_beam.ml.inference.base import RunInference
        main, other = images | "RunInference" >> RunInference(
            self.handler, metrics_namespace=BULK_INFERENCE_NAMESPACE).with_exception_handling()
        split = main | "SplitFailures" >> beam.FlatMap(_split_inference_output).with_outputs(
            "dead_letters", main="rows")
        failed_batches = other.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_dead_letters, _item_path)
        dead = (split.dead_letters, failed_batches) | "FlattenInferenceFailures" >> beam.Flatten()
        return {"rows": split.rows, "dead_letters": dead}


def _reads_shards(config: BulkConfig) -> bool:
    from captionbeam.pipelines.formats import split_by_format
    return any(fmt != "files" for fmt in split_by_format(list(config.images), config.input_format))


class BulkCaption(beam.PTransform):
    """Pipeline root -> {"rows", "skipped", "dead_letters"}: reads, skips, decodes, captions, counts.

    Writes nothing: :class:`WriteBulkOutputs` does."""

    def __init__(self, config: BulkConfig, model: ModelInfo, handler=None, manifests=None):
        super().__init__()
        self.config = config
        self.model = model
        self.handler = handler or make_handler(config, model)
        self.manifests = manifests  # a part of a run in parts: pipelines.bulk_parts.PartManifest

    def expand(self, pbegin):
        cfg = self.config
        if cfg.skip_existing:
            todo, skipped, read_dead, reread_dead = self._join_on_keys(pbegin)
        else:
            todo, read_dead = self._read_everything(pbegin)
            skipped, reread_dead = pbegin | "NothingSkipped" >> beam.Create([]), None
        skipped = skipped | "CountSkipped" >> beam.ParDo(_Count("skipped"))
        step, prepare = prepare_for_model(cfg, self.model)
        decoded = todo | step >> prepare
        captioned = decoded["images"] | "CaptionBatches" >> CaptionBatches(self.handler)
        rows = captioned["rows"] | "CountCaptioned" >> beam.ParDo(_Count("captioned"))
        failures = [decoded["dead_letters"], captioned["dead_letters"]] + ([reread_dead] if reread_dead else [])
        failed = (failures
                  | "FlattenFailures" >> beam.Flatten()
                  | "CountFailed" >> beam.ParDo(_Count("failed")))
        dead = (read_dead, failed) | "FlattenDeadLetters" >> beam.Flatten()
        return {"rows": rows, "skipped": skipped, "dead_letters": dead}

    def _join_on_keys(self, pbegin):
        """(todo ``(ImageBlob, sha256)``, skipped ImageKeys, read dead letters, re-read dead letters).

        The anti-join carries keys only (path, SHA-256, where to read it again): the bytes of an image
        are read a second time only when it is to be captioned, so a re-run of a finished archive holds
        no image bytes however large the archive. A shard's remaining members are captioned in the
        bundle that reads the shard again: the work spreads over workers shard by shard."""
        from captionbeam.pipelines.image_keys import ReadImageKeys, ReadKeyedImages, join_entry, key_of_join
        cfg = self.config
        read = pbegin | "ReadImageKeys" >> ReadImageKeys(list(cfg.images), input_format=cfg.input_format,
                                                         max_bytes=cfg.max_bytes, shard_fields=cfg.tfrecord_fields)
        read_dead = read["dead_letters"] | "CountReadFailures" >> beam.ParDo(_CountReadDeadLetters())
        keyed = (read["keys"]
                 | "CountMatched" >> beam.ParDo(_Count("matched"))
                 | "KeyByPath" >> beam.Map(join_entry))
        if self.manifests is None:
            seen = pbegin | "ReadManifest" >> ReadManifest(cfg.output, self.model.model_version)
        else:
            seen = pbegin | "ReadManifest" >> ReadManifest(cfg.output, self.model.model_version,
                                                           files=self.manifests.files, inputs=self.manifests.inputs)
        split = keyed | "SkipExisting" >> SplitAlreadyCaptioned(seen, rebuild=key_of_join)
        todo = split.todo | "ReadTodoImages" >> ReadKeyedImages(cfg.max_bytes, cfg.tfrecord_fields)
        return todo["images"], split[SplitAlreadyCaptioned.SKIPPED], read_dead, todo["dead_letters"]

    def _read_everything(self, pbegin):
        """``--redo``: (every image as ``(ImageBlob, sha256)``, read dead letters), each read once."""
        from captionbeam.pipelines.sources import ReadImages
        cfg = self.config
        read = pbegin | "ReadImages" >> ReadImages(list(cfg.images), input_format=cfg.input_format,
                                                   max_bytes=cfg.max_bytes, shard_fields=cfg.tfrecord_fields)
        read_dead = read["dead_letters"] | "CountReadFailures" >> beam.ParDo(_CountReadDeadLetters())
        todo = (read["images"]
                | "CountMatched" >> beam.ParDo(_Count("matched"))
                | "Hash" >> beam.Map(_hashed))
        if _reads_shards(cfg):
            # A shard is one work item: redistribute its images before the expensive part so that
            # inference spreads over all workers. Loose files are already spread (the reader
            # shuffles paths before reading them), so they skip this extra shuffle of bytes.
            todo = todo | "Redistribute" >> beam.Reshuffle()
        return todo, read_dead


def _manifest_line(row: CaptionRow, run: str, _written_files) -> str:
    return ManifestEntry(path=row.path, sha256=row.sha256, image_id=row.image_id, run=run).to_json()


class WriteBulkOutputs(beam.PTransform):
    """Rows -> caption files (JSONL or Parquet) -> manifest; dead letters beside. File names carry
    the run token. Returns ``{"captions": files, "manifest": files, "dead_letters": files}``.

    The manifest lines are produced with the finalised caption files as a side input, so the runner
    writes the manifest only after the rows are committed: a manifest entry always has its row."""

    def __init__(self, output: str, run: str, model_version: str, fmt: str = "jsonl", num_shards: int = 0):
        super().__init__()
        self.output, self.run, self.model_version, self.fmt, self.num_shards = output, run, model_version, fmt, num_shards

    def expand(self, outputs):
        rows, dead = outputs["rows"], outputs["dead_letters"]
        prefix = captions_prefix(self.output, self.run)
        if self.fmt == "parquet":
            from apache_beam.io.parquetio import WriteToParquet
            captions = rows | "RowsToDicts" >> beam.Map(CaptionRow.to_dict) | "WriteParquet" >> WriteToParquet(
                prefix, schema=parquet_schema(), file_name_suffix=".parquet", num_shards=self.num_shards,
                shard_name_template=SHARD_TEMPLATE, record_batch_size=1000)
        else:
            captions = (rows
                        | "RowsToJson" >> beam.Map(CaptionRow.to_json)
                        | "WriteJsonl" >> beam.io.WriteToText(
                            prefix, file_name_suffix=".jsonl", num_shards=self.num_shards,
                            shard_name_template=SHARD_TEMPLATE, skip_if_empty=True))
        manifest = (rows
                    | "ManifestLines" >> beam.Map(_manifest_line, self.run, beam.pvalue.AsList(captions))
                    | "WriteManifest" >> beam.io.WriteToText(
                        manifest_prefix(self.output, self.model_version, self.run), file_name_suffix=".jsonl",
                        num_shards=self.num_shards, shard_name_template=SHARD_TEMPLATE, skip_if_empty=True))
        dead_files = (dead
                      | "DeadLettersToJson" >> beam.Map(lambda d: d.to_json())
                      | "WriteDeadLetters" >> beam.io.WriteToText(
                          pio.join(dead_letters_dir(self.output), f"{DEAD_LETTERS_PREFIX}-{self.run}"),
                          file_name_suffix=DEAD_LETTERS_SUFFIX, num_shards=1, shard_name_template=SHARD_TEMPLATE,
                          skip_if_empty=True))
        return {"captions": captions, "manifest": manifest, "dead_letters": dead_files}


# ----------------------------------------------------------------------------- run
@dataclass
class BulkResult:
    run: str
    model_version: str
    encoder: str
    counters: Dict[str, int]
    seconds: float
    files: Dict[str, List[str]] = field(default_factory=dict)
    record_path: str = ""
    sources: Dict[str, str] = field(default_factory=dict)   # counter -> RUNNER, FILES or PROGRESS_FILES

    @property
    def runner_counters_incomplete(self) -> bool:
        """Some of the four did not come from the runner's counters (see :func:`reconcile_with_files`)."""
        return any(src != RUNNER for src in self.sources.values())

    @property
    def balanced(self) -> bool:
        c = self.counters
        return c["matched"] == c["captioned"] + c["skipped"] + c["failed"]

    @property
    def already_filed(self) -> int:
        """Failed images whose dead letter an earlier run had filed (not written again)."""
        return int(self.counters.get(DropFiledDeadLetters.COUNTER, 0))

    @property
    def images_per_s(self) -> float:
        return self.counters["captioned"] / self.seconds if self.seconds > 0 else 0.0


def bulk_counters(result) -> Dict[str, int]:
    """The job's accounting counters (every one of ``COUNTERS``, 0 where nothing was counted)."""
    return {**{name: 0 for name in COUNTERS}, **query_counters(result, NAMESPACE)}


RUNNER, FILES, PROGRESS_FILES = "runner", "files", "progress files"   # where a counter's value came from


def _count_lines(path: str) -> int:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return sum(1 for line in fh if line.strip())


def _count_caption_rows(path: str) -> int:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(path, compression_type="uncompressed") as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    return _count_lines(path)


def reconcile_with_files(res: "BulkResult", side: Optional[Dict[str, int]] = None,
                         total: Optional[int] = None) -> None:
    """Make the counters agree with what the run wrote: ``captioned`` must equal the caption rows in this
    run's finalised files, ``failed`` its new dead letters plus ``already_filed``. Where they do and the four
    balance, the runner's counters stand. Otherwise the runner lost some (Spark 2.78 before
    :func:`pipelines.counters.query_counters` summed a transform's parts; Prism 2.78 drops a bundle's
    counters when another bundle reports a metric it has not mapped yet, jobservices/metrics.go
    ``unprocessedPayloads``): ``captioned`` and ``failed`` are taken from the files; ``matched`` and
    ``skipped`` stay the runner's where they then balance; failing that, ``side`` (the progress files'
    counts per kind: ``captioned``, ``skipped``, ``failed``; a kind none was counted of is absent) gives all four,
    used only where its ``captioned`` equals the rows in the files, its ``failed`` covers the dead letters
    in the files, and its sum equals ``total`` (the listed input files) when that is known. Failing that
    too, the result stays unbalanced, with ``captioned`` and ``failed`` from the files. ``res.sources``
    names where each of the four came from (``runner``, ``files``, ``progress files``)."""
    captioned = sum(_count_caption_rows(f) for f in res.files.get("captions", []))
    new_failed = sum(_count_lines(f) for f in res.files.get("dead_letters", []))
    c = res.counters
    filed = c.get(DropFiledDeadLetters.COUNTER, 0)
    failed = new_failed + filed
    res.sources = {name: RUNNER for name in COUNTERS}
    if c["captioned"] == captioned and c["failed"] == failed and res.balanced:
        return
    log.warning("bulk run %s: the runner's counters (matched %d, captioned %d, skipped %d, failed %d) do not "
                "agree with the run's files (%d caption rows, %d dead letters, %d filed before) or do not add up",
                res.run, c["matched"], c["captioned"], c["skipped"], c["failed"], captioned, new_failed, filed)
    res.counters = {**c, "captioned": captioned, "failed": failed}
    res.sources.update(captioned=FILES, failed=FILES)
    if res.balanced:
        return
    side = {kind: int((side or {}).get(kind, 0)) for kind in ("captioned", "skipped", "failed")} if side else None
    if side is None or side["captioned"] != captioned or side["failed"] < new_failed:
        return
    matched = sum(side.values())
    if total is not None and matched != total:
        return
    log.warning("bulk run %s: matched and skipped from the workers' progress files, which agree with the "
                "run's %d caption rows and %d new dead letters", res.run, captioned, new_failed)
    res.counters = {**res.counters, "matched": matched, "skipped": side["skipped"], "failed": side["failed"],
                    DropFiledDeadLetters.COUNTER: side["failed"] - new_failed}
    res.sources.update(matched=PROGRESS_FILES, skipped=PROGRESS_FILES, failed=PROGRESS_FILES)


def list_run_files(output: str, run: str, model_version: str) -> Dict[str, List[str]]:
    from captionbeam.pipelines.manifest import manifest_dir
    return {
        "captions": pio.match([pio.join(output, CAPTIONS_DIR, f"{CAPTIONS_PREFIX}-{run}-*")]),
        "manifest": pio.match([pio.join(manifest_dir(output, model_version), f"*-{run}-*")]),
        "dead_letters": pio.match([pio.join(dead_letters_dir(output), f"{DEAD_LETTERS_PREFIX}-{run}-*")]),
    }


def drop_empty_parquet(files: List[str]) -> List[str]:
    """Beam's Parquet sink writes a schema-only file when a run captioned nothing (the JSON-lines sink
    skips empty output): delete those of this run so a no-op re-run leaves no caption file at all."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems
    kept = []
    for f in files:
        if f.endswith(".parquet"):
            with FileSystems.open(f, compression_type="uncompressed") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            if rows == 0:
                FileSystems.delete([f])
                continue
        kept.append(f)
    return kept


_CAPTION_FILE_RE = re.compile(rf"^{CAPTIONS_PREFIX}-(?P<run>.+)-\d{{5}}-of-\d{{5}}\.(?:jsonl|parquet)$")


def _caption_file_rows(path: str):
    """(path, sha256, image_id, model_version) of each row of one finalised caption file, streamed."""
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            table = pq.read_table(fh, columns=["path", "sha256", "image_id", "model_version"])
            yield from (tuple(r.values()) for r in table.to_pylist())
            return
        for line in fh:
            if line.strip():
                r = CaptionRow.from_json(line.decode("utf-8"))
                yield r.path, r.sha256, r.image_id, r.model_version


def recover_unfinished_runs(output: str) -> List[str]:
    """Close the crash window between finalised caption files and the manifest.

    A run that wrote caption files but no ``runs/<run>.json`` was killed after (some of) its rows were
    finalised, possibly before its manifest was. Its manifest is rebuilt from exactly the caption rows
    that exist (``manifest/<version>/manifest-<run>-recovered.jsonl``, replacing any partial one) and a
    run record marked ``recovered`` is written, so ``--skip-existing`` never captions those images
    again. Runs under the output's lease (no other run is live). Returns the recovered run tokens."""
    from captionbeam.pipelines.manifest import MANIFEST_DIR, MANIFEST_SUFFIX, manifest_dir
    files: Dict[str, List[str]] = {}
    for f in pio.match([captions_glob(output)]):
        m = _CAPTION_FILE_RE.match(pio.basename(f))
        if m:
            files.setdefault(m.group("run"), []).append(f)
    recovered = []
    for run, caption_files in sorted(files.items()):
        if pio.exists(run_record_path(output, run)):
            continue
        pio.delete(pio.match([pio.join(output, MANIFEST_DIR, "*", f"manifest-{run}-*")]))
        lines: Dict[str, List[str]] = {}
        for f in caption_files:
            for path, sha, image_id, version in _caption_file_rows(f):
                lines.setdefault(version, []).append(
                    ManifestEntry(path=path, sha256=sha, image_id=image_id, run=run).to_json())
        for version, entries in lines.items():
            pio.write_text(pio.join(manifest_dir(output, version), f"manifest-{run}-recovered{MANIFEST_SUFFIX}"),
                           "".join(e + "\n" for e in entries))
        pio.write_json(run_record_path(output, run), {
            "run": run, "recovered": True, "files": {"captions": caption_files},
            "counters": {"captioned": sum(len(v) for v in lines.values())},
            "note": "killed before it finished: manifest rebuilt from its finalised caption files"})
        log.warning("bulk: run %s did not finish; rebuilt its manifest from its %d caption file(s) (%d rows)",
                    run, len(caption_files), sum(len(v) for v in lines.values()))
        recovered.append(run)
    return recovered


def build_pipeline(pipeline, config: BulkConfig, model: ModelInfo, run: str, progress_dir: Optional[str] = None,
                   manifests=None):
    """Apply the whole job to ``pipeline``; returns the written-file PCollections. ``manifests``: a part
    of a run in parts reads only these manifest files and entries (``pipelines.bulk_parts.PartManifest``)."""
    outputs = pipeline | "BulkCaption" >> BulkCaption(config, model, manifests=manifests)
    progress.count_done({"captioned": outputs["rows"], "skipped": outputs["skipped"],
                         "failed": outputs["dead_letters"]}, progress_dir)
    if config.skip_existing:
        filed = pipeline | "ReadFiledDeadLetters" >> ReadFiledDeadLetters(config.output)
        outputs = {**outputs, "dead_letters": outputs["dead_letters"] | "DropFiledDeadLetters" >> DropFiledDeadLetters(filed)}
    return outputs | "WriteBulkOutputs" >> WriteBulkOutputs(config.output, run, model.model_version,
                                                            config.format, config.num_shards)


def run(config: BulkConfig, model: ModelInfo, runner: Runner = None, run_token: Optional[str] = None) -> BulkResult:
    """Run the job to completion under the output's lease (:class:`pipelines.lease.OutputLease`:
    :class:`~pipelines.lease.LeaseHeld` when another run is writing there); write ``runs/<run>.json``;
    return counters and files."""
    from captionbeam.pipelines.lease import OutputLease
    token = run_token or new_run_token()
    pio.makedirs(config.output)
    with OutputLease(config.output, token, force=config.force):
        from captionbeam.pipelines.manifest import manifest_dir
        pio.remove_stale_beam_temp([pio.join(config.output, CAPTIONS_DIR), dead_letters_dir(config.output),
                                    manifest_dir(config.output, model.model_version)])
        recover_unfinished_runs(config.output)
        if config.commit_every:
            return _run_in_parts(config, model, runner, token)
        return _run_leased(config, model, runner, token)


def _run_in_parts(config: BulkConfig, model: ModelInfo, runner: Runner, token: str) -> BulkResult:
    """``--commit-every``: the listed inputs in parts, each a committed run of its own (``pipelines.bulk_parts``);
    returns the summed result and writes the whole run's record (``runs/<token>.json``, listing its parts)."""
    from dataclasses import replace
    from captionbeam.pipelines.bulk_parts import (PartManifest, PartsProgress, literal_pattern, manifests_for_part,
                                                  part_token, read_run_records, split_into_parts)
    from captionbeam.pipelines.manifest import manifest_glob
    from captionbeam.pipelines.matching import matched_inputs
    t0 = time.monotonic()
    files = matched_inputs(config.images)   # sorted, once; what the readers would read
    parts = split_into_parts(files, config.commit_every)
    log.info("bulk run %s: %d input file(s) in %d part(s) of up to %d, each committed when it ends",
             token, len(files), len(parts), config.commit_every)
    progress_line = PartsProgress(files_total=len(files), parts_total=len(parts), started=t0)
    started = _dt.datetime.now(_dt.timezone.utc)
    total = BulkResult(run=token, model_version=model.model_version, encoder=model.encoder,
                       counters={name: 0 for name in COUNTERS}, seconds=0.0, files={})
    tokens = []
    for index, part_files in enumerate(parts):
        records = read_run_records(pio.join(config.output, RUNS_DIR, "*.json"))
        manifests = PartManifest(files=tuple(manifests_for_part(
            pio.match([manifest_glob(config.output, model.model_version)]), records, part_files)), inputs=part_files)
        part_config = replace(config, images=tuple(literal_pattern(f) for f in part_files), commit_every=0)
        tokens.append(part_token(token, index))
        res = _run_leased(part_config, model, runner, tokens[-1], manifests=manifests,
                          part={"run": token, "index": index, "of": len(parts), "files": list(part_files)})
        _add_part(total, res)
        log.info("%s", progress_line.line(index, len(part_files), res.counters, time.monotonic()))
    total.seconds = time.monotonic() - t0
    total.record_path = run_record_path(config.output, token)
    write_record(total.record_path, {
        "run": token, "started": started.isoformat(), "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "seconds": round(total.seconds, 3), "images_per_s": round(total.images_per_s, 3),
        "model_dir": config.model_dir, "model_version": model.model_version, "encoder": model.encoder,
        "commit_every": config.commit_every, "parts": tokens, "counters": total.counters,
        "balanced": total.balanced, "counter_sources": total.sources, "files": total.files})
    return total


def _add_part(total: BulkResult, part: BulkResult) -> None:
    for name, value in part.counters.items():
        total.counters[name] = total.counters.get(name, 0) + value
    for name, files in part.files.items():
        total.files.setdefault(name, []).extend(files)
    for name, source in part.sources.items():
        if total.sources.get(name) in (None, RUNNER):
            total.sources[name] = source


def _run_leased(config: BulkConfig, model: ModelInfo, runner: Runner, token: str,
                manifests=None, part: Optional[dict] = None) -> BulkResult:
    from captionbeam.pipelines.options import new_pipeline
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.monotonic()
    log.info("bulk run %s: model %s (%s, version %s) -> %s", token, config.model_dir, model.encoder,
             model.model_version, config.output)
    pipeline = new_pipeline(runner)
    progress_dir = progress.progress_dir(config.output, token)
    build_pipeline(pipeline, config, model, token, progress_dir, manifests)
    with progress.ProgressReporter("bulk", progress_dir,
                                   progress.files_total(config.images, config.input_format)) as reporter:
        result = pipeline.run()
        result.wait_until_finish()
    seconds = time.monotonic() - t0
    res = BulkResult(run=token, model_version=model.model_version, encoder=model.encoder,
                     counters=bulk_counters(result), seconds=seconds,
                     files=list_run_files(config.output, token, model.model_version))
    if config.format == "parquet":
        res.files["captions"] = drop_empty_parquet(res.files["captions"])
    reconcile_with_files(res, reporter.counts, reporter.total)
    res.record_path = run_record_path(config.output, token)
    write_record(res.record_path, {             # secrets in the Beam flags redacted, mode 0600
        "run": token, "started": started.isoformat(), "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "seconds": round(seconds, 3), "images_per_s": round(res.images_per_s, 3),
        "model_dir": config.model_dir, "model_version": model.model_version, "encoder": model.encoder,
        "exported": model.exported, "source_model_version": model.source_model_version,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "pipeline_args": list(runner_flags(runner).args), "counters": res.counters, "balanced": res.balanced,
        "counter_sources": res.sources,
        "files": res.files,
        **({"part": part} if part else {}),
    })
    return res
