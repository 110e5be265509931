"""``captionbeam features``: images -> CNN features in sharded TFRecords, bad images -> dead letters.

Pipeline (each step a composite PTransform)::

    ReadImages (fileio.MatchAll -> read bytes)      -> ImageBlob          | dead letters (read)
    decoding.DecodeImages (hash; Pillow: validate, RGB, resize) -> (key, uint8 image) | dead letters (decode)
    EncodeImages (RunInference, KeyedModelHandler; one bad image costs only itself: pipelines.isolation)
                                                    -> (key, features)    | dead letters (inference)
    ToFeatureExamples (records.feature_example)     -> serialized tf.train.Example
    WriteToTFRecord                                 -> <output>/features-NNNNN-of-NNNNN.tfrecord
    WriteDeadLetters                                -> <output>/dead_letters/dead_letters-*.jsonl
    WriteFeatureIds                                 -> <output>/ids/ids-NNNNN-of-NNNNN.jsonl
    WriteFeaturesSpec (after both counts are known) -> <output>/features_spec.json

Every matched file ends in exactly one of the two outputs: ``count + dead_letters == files matched``
(the spec records all three). Keys are ``(image_id, path, sha256)``; features depend only on the file's
bytes and the encoder, so a re-run over the same inputs writes the same records.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.ml.inference.base import RunInference

from captionbeam.pipelines.options import Runner
import captionbeam.pipelines.io as pio
from captionbeam.model import jsonl, records
from captionbeam.model.encoder_description import EncoderDescription
from captionbeam.model.encoders import EncoderConfig, build_described, describe
from captionbeam.pipelines.counters import NAMESPACE, query_counters
from captionbeam.pipelines import decoding, progress
from captionbeam.pipelines.deadletter import (MAX_MESSAGE_CHARS, DeadLetter, WriteDeadLetters, dead_letters_dir,
                                             dead_letters_pattern, failed_batch_dead_letters)
from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES, DecodedImage
from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS
from captionbeam.pipelines.inference import keyed_encoder_handler
from captionbeam.pipelines.isolation import InferenceFailure
from captionbeam.pipelines.shards.image_examples import TfrecordFields
from captionbeam.pipelines.sources import ReadImages

log = logging.getLogger(__name__)

ImageKey = Tuple[str, str, str]  # (image_id, path, sha256)


@dataclass(frozen=True)
class FeaturesConfig:
    images: Tuple[str, ...]
    output: str
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    resize_method: str = "bilinear"
    num_shards: int = 0
    compress: bool = False
    input_format: str = "files"
    model_copies: Optional[int] = None
    tfrecord_fields: Optional[TfrecordFields] = None  # image TFRecord field names (None: the defaults)
    overwrite: bool = False     # the command replaces the records, dead letters and spec of an earlier run
    force: bool = False         # the command takes the output's lease from a run that holds it (pipelines.lease)


# ----------------------------------------------------------------------------- steps
def _keyed(image: DecodedImage) -> Tuple[ImageKey, np.ndarray]:
    return (image.image_id, image.path, image.sha256), image.pixels


def _split_failures(keyed):
    """(key, features | InferenceFailure) -> features, or a dead letter naming the image (stage inference)."""
    key, value = keyed
    if isinstance(value, InferenceFailure):
        yield beam.pvalue.TaggedOutput("dead_letters", DeadLetter(path=key[1], error=value.error,
                                                                  message=value.message[:MAX_MESSAGE_CHARS], stage="inference"))
    else:
        yield keyed


def _inference_path(keyed) -> str:
    return keyed[0][1]


class EncodeImages(beam.PTransform):
    """``(key, uint8 image)`` -> ``(key, float32 features)`` with RunInference, batched; a batch whose
    inference raises becomes one dead letter per image (stage ``inference``)."""

    def __init__(self, encoder: EncoderDescription, batch_size: int = 32, model_copies: Optional[int] = None):
        super().__init__()
        self.handler = keyed_encoder_handler(encoder, batch_size, model_copies)

    def expand(self, keyed_images):
        main, dlq = keyed_images | "RunInference" >> RunInference(self.handler).with_exception_handling()
        split = main | "ImageFailures" >> beam.FlatMap(_split_failures).with_outputs("dead_letters", main="features")
        dead = dlq.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_dead_letters, _inference_path)
        return {"features": split.features,
                "dead_letters": (split.dead_letters, dead) | "InferenceDeadLetters" >> beam.Flatten()}


class _ToExampleFn(beam.DoFn):
    """``(key, features)`` -> serialized ``features`` record; counts and logs throughput per worker."""

    LOG_EVERY_S = 15.0

    def __init__(self, encoder_name: str):
        self.encoder_name = encoder_name

    def setup(self):
        self.encoded = beam.metrics.Metrics.counter(NAMESPACE, "images_encoded")
        self._n, self._start, self._last = 0, time.time(), time.time()

    def process(self, keyed):
        (image_id, path, sha256), feature = keyed
        self.encoded.inc()
        self._n += 1
        now = time.time()
        if now - self._last >= self.LOG_EVERY_S:
            self._last = now
            log.info("features: %d images encoded by this worker, %.1f images/s", self._n, self._n / (now - self._start))
        yield records.feature_example(image_id, path, sha256, self.encoder_name, np.asarray(feature, np.float32))


class ToFeatureExamples(beam.PTransform):
    def __init__(self, encoder_name: str):
        super().__init__()
        self.encoder_name = encoder_name

    def expand(self, keyed_features):
        return keyed_features | "Serialize" >> beam.ParDo(_ToExampleFn(self.encoder_name))


class ComputeFeatures(beam.PTransform):
    """Pipeline root -> ``{"features": (key, float32 array), "dead_letters": DeadLetter}``."""

    def __init__(self, config: FeaturesConfig, description: EncoderDescription):
        super().__init__()
        self.config = config
        self.description = description

    def expand(self, pbegin):
        c = self.config
        read = pbegin | "ReadImages" >> ReadImages(c.images, c.input_format, c.max_bytes,
                                                             shard_fields=c.tfrecord_fields)
        decoded = read["images"] | "DecodeImages" >> decoding.DecodeImages(self.description.image_size, c.max_pixels,
                                                                              c.resize_method)
        keyed = decoded["images"] | "Key" >> beam.Map(_keyed)
        encoded = keyed | "EncodeImages" >> EncodeImages(self.description, c.batch_size, c.model_copies)
        dead = ((read["dead_letters"], decoded["dead_letters"], encoded["dead_letters"])
                | "AllDeadLetters" >> beam.Flatten())
        return {"features": encoded["features"], "dead_letters": dead}


class _WriteSpecFn(beam.DoFn):
    def __init__(self, output: str, description: EncoderDescription, config: FeaturesConfig):
        self.output = output
        self.description = description
        self.config = config

    def process(self, _, count, dead, shapes, duplicates):
        d = self.description
        shape = list(shapes[0]) if shapes else list(d.feature_shape)
        if not shape:  # nothing encoded: ask the architecture (random weights, same shapes)
            shape = list(build_described(replace(d, weights="none") if not d.is_file else d).feature_shape)
        d = d.with_feature_shape(shape)
        c = self.config
        spec = records.FeaturesSpec(
            encoder=d.name, feature_shape=list(d.feature_shape), image_size=[d.image_size, d.image_size],
            preprocessing=d.preprocessing, weights=d.weights, count=int(count), dead_letters=int(dead),
            encoder_spec=d, compression="GZIP" if c.compress else "NONE", resize_method=c.resize_method,
            files_matched=int(count) + int(dead),
            # image ids carried by more than one record (same file name in several directories): the
            # records are all kept; a join by image id (captions) will see each of them
            duplicate_image_ids=sorted(duplicates)[:100], duplicate_image_id_count=len(duplicates),
            record_pattern="features-*-of-*.tfrecord", images=list(c.images), input_format=c.input_format,
            max_pixels=c.max_pixels, batch_size=c.batch_size)
        path = pio.join(self.output, records.FEATURES_SPEC_FILE)
        pio.write_text(path, spec.to_json() + "\n")
        yield path


class WriteFeaturesSpec(beam.PTransform):
    """Write ``features_spec.json`` once both outputs are counted (waits on the record and dead-letter
    writes, so the spec only appears when the directory is complete)."""

    def __init__(self, output: str, description: EncoderDescription, config: FeaturesConfig):
        super().__init__()
        self.output, self.description, self.config = output, description, config

    def expand(self, inputs):
        features, dead, written = inputs
        count = features | "CountFeatures" >> beam.combiners.Count.Globally()
        n_dead = dead | "CountDeadLetters" >> beam.combiners.Count.Globally()
        shapes = (features
                  | "Shapes" >> beam.Map(lambda kv: tuple(int(s) for s in np.shape(kv[1])))
                  | "DistinctShapes" >> beam.Distinct())
        duplicates = (features
                      | "ImageIds" >> beam.Map(lambda kv: (kv[0][0], 1))
                      | "CountPerId" >> beam.CombinePerKey(sum)
                      | "Duplicated" >> beam.Filter(lambda kv: kv[1] > 1)
                      | "DuplicateId" >> beam.Map(lambda kv: kv[0]))
        done = written | "WritesDone" >> beam.combiners.Count.Globally()
        return (done
                | "WriteSpec" >> beam.ParDo(_WriteSpecFn(self.output, self.description, self.config),
                                            count=beam.pvalue.AsSingleton(count),
                                            dead=beam.pvalue.AsSingleton(n_dead),
                                            shapes=beam.pvalue.AsList(shapes),
                                            duplicates=beam.pvalue.AsList(duplicates)))


IDS_DIR = "ids"


def ids_pattern(output: str) -> str:
    return pio.join(output, IDS_DIR, "ids-*-of-*.jsonl")


def _id_row(keyed) -> str:
    (image_id, path, sha256), _ = keyed
    return jsonl.dumps_line({"image_id": image_id, "path": path, "sha256": sha256}, sort_keys=True)


class WriteFeatureIds(beam.PTransform):
    """(key, features) -> ``<output>/ids/ids-NNNNN-of-NNNNN.jsonl``: one ``{"image_id", "path", "sha256"}``
    line per feature record, so a reader learns what the records hold without reading them."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, features):
        return (features
                | "IdRows" >> beam.Map(_id_row)
                | "WriteIds" >> beam.io.WriteToText(pio.join(self.output, IDS_DIR, "ids"), file_name_suffix=".jsonl",
                                                    shard_name_template="-SSSSS-of-NNNNN"))


def read_feature_ids(output: str) -> List[Dict[str, str]]:
    """The ``ids/`` rows of a features output (``{"image_id", "path", "sha256"}`` per record)."""
    rows = []
    for path in pio.match([ids_pattern(output)]):
        rows += jsonl.loads(pio.read_text(path), path)
    return rows


def build_pipeline(p: beam.Pipeline, config: FeaturesConfig, description: EncoderDescription,
                   progress_dir: Optional[str] = None) -> None:
    computed = p | "ComputeFeatures" >> ComputeFeatures(config, description)
    progress.count_done((computed["features"], computed["dead_letters"]), progress_dir)
    serialized = computed["features"] | "ToExamples" >> ToFeatureExamples(description.name)
    written = serialized | "WriteFeatures" >> beam.io.WriteToTFRecord(
        pio.join(config.output, records.FEATURES_PREFIX), file_name_suffix=records.RECORD_SUFFIX,
        num_shards=config.num_shards, shard_name_template="-SSSSS-of-NNNNN",
        compression_type=CompressionTypes.GZIP if config.compress else CompressionTypes.UNCOMPRESSED)
    dead_written = computed["dead_letters"] | "WriteDeadLetters" >> WriteDeadLetters(config.output)
    ids_written = computed["features"] | "WriteFeatureIds" >> WriteFeatureIds(config.output)
    all_written = (written, dead_written, ids_written) | "AllWritten" >> beam.Flatten()
    _ = ((computed["features"], computed["dead_letters"], all_written)
         | "WriteFeaturesSpec" >> WriteFeaturesSpec(config.output, description, config))


# ----------------------------------------------------------------------------- outputs
def existing_outputs(output: str) -> List[str]:
    return pio.match([records.shard_pattern(output, records.FEATURES_PREFIX), dead_letters_pattern(output),
                      ids_pattern(output), pio.join(output, records.FEATURES_SPEC_FILE)])


@dataclass
class FeaturesResult:
    files_matched: int
    images_encoded: int
    dead_letters: int
    dead_letters_by_stage: Dict[str, int]
    seconds: float
    spec: Optional[records.FeaturesSpec]

    @property
    def images_per_second(self) -> float:
        return self.images_encoded / self.seconds if self.seconds > 0 else 0.0


def run(config: FeaturesConfig, runner: Runner = None, description: Optional[EncoderDescription] = None
        ) -> FeaturesResult:
    """Run the job and wait for it; returns counts (from the written spec, else from Beam counters)."""
    from captionbeam.pipelines.options import new_pipeline
    description = description or describe(config.encoder)
    start = time.time()
    pio.remove_stale_beam_temp([config.output, dead_letters_dir(config.output), pio.join(config.output, IDS_DIR)])
    p = new_pipeline(runner)
    progress_dir = progress.progress_dir(config.output)
    build_pipeline(p, config, description, progress_dir)
    with progress.ProgressReporter("features", progress_dir, progress.files_total(config.images, config.input_format)):
        result = p.run()
        result.wait_until_finish()
    seconds = time.time() - start
    counters = query_counters(result)
    spec = None
    spec_path = pio.join(config.output, records.FEATURES_SPEC_FILE)
    if pio.exists(spec_path):
        spec = records.FeaturesSpec.from_json(pio.read_text(spec_path))
    encoded = spec.count if spec else counters.get("images_encoded", 0)
    dead = spec.dead_letters if spec else counters.get("dead_letters", 0)
    by_stage = {k[len("dead_letters_"):]: v for k, v in sorted(counters.items()) if k.startswith("dead_letters_")}
    matched = counters.get("files_matched", encoded + dead)
    return FeaturesResult(files_matched=matched, images_encoded=encoded, dead_letters=dead,
                          dead_letters_by_stage=by_stage, seconds=seconds, spec=spec)
