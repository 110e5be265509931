"""``captionbeam features``: encode images with a CNN into feature TFRecords (Beam job)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

from captionbeam.launch.arg_types import non_negative_int, positive_int, output_dir
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.command_face import unmatched_globs, warn
from captionbeam.launch.exit_codes import OK
from captionbeam.pipelines.options import Runner
from captionbeam.launch.reader_flags import add_reader_arguments

HELP = "encode images with a CNN into feature TFRecords (Beam job)"
BEAM = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from captionbeam.model.encoders import encoders_help
    from captionbeam.pipelines.images import RESIZE_METHODS
    from captionbeam.launch.shard_flags import add_tfrecord_field_arguments
    from captionbeam.pipelines.sources import INPUT_FORMATS
    parser.add_argument("--images", nargs="+", required=True, metavar="GLOB",
                        help="one or more globs of image files, local or gs:// (quote them so the shell does not "
                             "expand them); with --input-format tar|tfrecord, globs of image shards")
    parser.add_argument("--output", required=True, type=output_dir,
                        help="output directory, local or gs://: features-NNNNN-of-NNNNN.tfrecord, "
                             "features_spec.json, dead_letters/*.jsonl")
    parser.add_argument("--encoder", default="vgg16", help=f"encoder: {encoders_help()}")
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet (Keras's weights; offline they must be in $KERAS_HOME/models), none (seeded "
                             "random init, identical in every process and run: same shapes and compute, for tests and "
                             "benchmarks), or a path to a weights file "
                             "(default: imagenet)")
    parser.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                        help="square input size in pixels (default: the encoder's, e.g. 224; inception_v3 299; "
                             "a model file's own input size)")
    parser.add_argument("--preprocessing", default=None,
                        help="override the preprocessing: caffe, tf, torch, none, or an encoder name whose "
                             "keras.applications preprocess_input to use (default: the encoder family's own; "
                             "'none' for model files)")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                        help="images per RunInference batch (default: 32)")
    parser.add_argument("--num-shards", type=non_negative_int, default=0, metavar="N",
                        help="number of feature TFRecord shards; 0 lets the runner decide (default: 0)")
    parser.add_argument("--compress", action="store_true",
                        help="GZIP-compress the feature TFRecords (names stay *.tfrecord; the spec records "
                             "compression: GZIP)")
    add_reader_arguments(parser)
    parser.add_argument("--resize-method", default="bilinear", choices=sorted(RESIZE_METHODS),
                        help="filter used to squash images to --image-size (default: bilinear; Keras's load_img "
                             "uses nearest)")
    parser.add_argument("--input-format", default="auto", choices=INPUT_FORMATS,
                        help="files: loose image files; tar / tfrecord: image shards (captionbeam pack; WebDataset "
                             "tars, TFRecords of tf.train.Example with image/encoded|image/data and "
                             "image/id|image/filename); auto: from each glob's extension: .tar .tar.gz .tgz -> tar, "
                             ".tfrecord[s][.gz] -> tfrecord, else files (default: auto)")
    add_tfrecord_field_arguments(parser)
    parser.add_argument("--model-copies", type=positive_int, default=None, metavar="N",
                        help="share N encoder copies across all worker processes of a machine (GPU workers, big "
                             "models); default: one copy per worker process, shared by its threads")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace feature records, dead letters and spec already in --output (otherwise the "
                             "job refuses to mix runs)")
    from captionbeam.pipelines.lease import FORCE_HELP
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def config_from_args(args: argparse.Namespace):
    """``pipelines.features.FeaturesConfig`` of these flags."""
    from captionbeam.launch.shard_flags import tfrecord_fields
    from captionbeam.model.encoders import EncoderConfig
    from captionbeam.pipelines.features import FeaturesConfig
    encoder = EncoderConfig(name=args.encoder, weights=args.weights, image_size=args.image_size,
                            preprocessing=args.preprocessing)
    return FeaturesConfig(images=tuple(args.images), output=args.output, encoder=encoder,
                          batch_size=args.batch_size, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
                          resize_method=args.resize_method, num_shards=args.num_shards, compress=args.compress,
                          input_format=args.input_format, model_copies=args.model_copies,
                          tfrecord_fields=tfrecord_fields(args), overwrite=bool(getattr(args, "overwrite", False)),
                          force=bool(getattr(args, "force", False)))


@dataclass(frozen=True)
class FeaturesPlan:
    """The encoder the job will build, and the files of an earlier run it replaces (``--overwrite``)."""
    description: object                 # model.encoder_description.EncoderDescription
    replace: Tuple[str, ...] = ()
    batch_size: int = 32

    def summary_lines(self) -> List[str]:
        d = self.description
        lines = [f"features: encoder {d.name} ({d.weights} weights, {d.image_size}px, {d.preprocessing}), "
                 f"batch {self.batch_size}"]
        if self.replace:
            lines.append(f"  --overwrite: replaces {len(self.replace)} file(s) of an earlier run")
        return lines


def plan(config) -> FeaturesPlan:
    """Every check before any work: the encoder, the inputs (a glob that matches nothing is a warning;
    none matching anything, an error) and the output directory; :class:`CommandError` names what is wrong."""
    from captionbeam.model.encoders import EncoderError, describe
    from captionbeam.pipelines.features import existing_outputs
    try:
        description = describe(config.encoder)
    except EncoderError as e:
        raise CommandError(str(e)) from None
    empty = unmatched_globs(config.images)
    if len(empty) == len(config.images):
        raise CommandError(f"--images: no file matches {' '.join(config.images)}")
    for p in empty:
        warn("features", f"--images {p} matches no file")
    existing = existing_outputs(config.output)
    if existing and not config.overwrite:
        raise CommandError(f"--output {config.output} already holds {len(existing)} feature/dead-letter/spec "
                           f"files from an earlier run; pass --overwrite to replace them, or choose another "
                           f"directory")
    return FeaturesPlan(description=description, replace=tuple(existing), batch_size=config.batch_size)


@dataclass
class FeaturesCommandResult:
    """The finished job (``pipelines.features.FeaturesResult``) and the config it ran."""
    job: object
    config: object

    def summary_lines(self) -> List[str]:
        """What ``captionbeam features`` prints when the job finished (warnings go to stderr)."""
        return summary(self.config, self.job)


def run(config, runner: Runner = None, planned: Optional[FeaturesPlan] = None) -> FeaturesCommandResult:
    """Plan (under the output's lease), replace an earlier run's files (``--overwrite``), run the job ->
    :class:`FeaturesCommandResult`; :class:`CommandError` names what is wrong."""
    from captionbeam.pipelines.lease import output_lease
    with output_lease(config.output, "features", config.force):
        return FeaturesCommandResult(job=_run(config, runner, planned or plan(config)), config=config)


def _run(config, runner: Runner, p: FeaturesPlan):
    import captionbeam.pipelines.io as pio
    from captionbeam.model.encoders import EncoderError
    from captionbeam.pipelines.features import run as run_job
    if p.replace:
        pio.delete(list(p.replace))
    print(p.summary_lines()[0], file=sys.stderr)
    try:
        return run_job(config, runner, p.description)
    except EncoderError as e:   # the workers could not build the encoder (e.g. ImageNet weights offline)
        raise CommandError(str(e).split(" [while running ")[0]) from None


def summary(config, result) -> List[str]:
    """What ``captionbeam features`` prints when the job finished (warnings go to stderr)."""
    import captionbeam.pipelines.io as pio
    from captionbeam.pipelines.sources import split_by_format
    spec = result.spec
    encoder = spec.encoder if spec else config.encoder.name
    shape = "x".join(str(s) for s in spec.feature_shape) if spec else "?"
    lines = [f"features: {result.images_encoded} images encoded ({shape} {encoder} features), "
             f"{result.dead_letters} dead letters, {result.images_encoded + result.dead_letters} files in all"]
    if result.dead_letters_by_stage:
        lines.append("  dead letters by stage: " + ", ".join(f"{k} {v}" for k, v in result.dead_letters_by_stage.items()))
    if spec and spec.duplicate_image_id_count:
        dups = spec.duplicate_image_ids
        print(f"features: warning: {spec.duplicate_image_id_count} image ids belong to several files "
              f"(same name in different directories), e.g. {', '.join(dups[:5])}; all their records were kept",
              file=sys.stderr)
    lines += [f"  {result.seconds:.1f}s wall, {result.images_per_second:.1f} images/s (including pipeline start-up)",
              f"  records: {pio.join(config.output, 'features-*-of-*.tfrecord')}{' (GZIP)' if config.compress else ''}",
              f"  spec: {pio.join(config.output, 'features_spec.json')}",
              f"  dead letters: {pio.join(config.output, 'dead_letters', 'dead_letters-*.jsonl')}"]
    only_files = set(split_by_format(config.images, config.input_format)) == {"files"}
    if only_files and result.files_matched != result.images_encoded + result.dead_letters:
        print(f"features: warning: {result.files_matched} files read but {result.images_encoded} encoded + "
              f"{result.dead_letters} dead letters", file=sys.stderr)
    return lines


def main(args: argparse.Namespace, runner: Runner = None) -> int:
    print("\n".join(run(config_from_args(args), runner).summary_lines()))
    return OK
