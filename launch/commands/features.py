"""``captionbeam features``: encode images with a CNN into feature TFRecords (Beam job)."""
from __future__ import annotations

import argparse
import sys

HELP = "encode images with a CNN into feature TFRecords (Beam job)"
BEAM = True

_ENCODERS_HELP = ("vgg16 (default; fc2, 4096-d, the classic tutorial), vgg16-conv (block5_conv3, 14x14x512), "
                  "mobilenet (1024-d), mobilenet-conv (7x7x1024), mobilenet-0.25 (256-d), mobilenet_v2 (1280-d), "
                  "mobilenet_v2-conv (7x7x1280), resnet50 (2048-d), inception_v3 (2048-d, 299px), "
                  "efficientnet_b0 (1280-d); or a path to a .keras/.h5 model or a .tflite file")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.images import DEFAULT_MAX_PIXELS, RESIZE_METHODS
    from launch.shard_flags import add_tfrecord_field_arguments
    from pipelines.sources import INPUT_FORMATS
    parser.add_argument("--images", nargs="+", required=True, metavar="GLOB",
                        help="one or more globs of image files, local or gs:// (quote them so the shell does not "
                             "expand them); with --input-format tar|tfrecord, globs of image shards")
    parser.add_argument("--output", required=True,
                        help="output directory, local or gs://: features-NNNNN-of-NNNNN.tfrecord, "
                             "features_spec.json, dead_letters/*.jsonl")
    parser.add_argument("--encoder", default="vgg16", help=f"encoder: {_ENCODERS_HELP}")
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet (Keras's weights; offline they must be in $KERAS_HOME/models), none (seeded "
                             "random init, identical in every process and run: same shapes and compute, for tests and "
                             "benchmarks), or a path to a weights file "
                             "(default: imagenet)")
    parser.add_argument("--image-size", type=_positive, default=None, metavar="N",
                        help="square input size in pixels (default: the encoder's, e.g. 224; inception_v3 299; "
                             "a model file's own input size)")
    parser.add_argument("--preprocessing", default=None,
                        help="override the preprocessing: caffe, tf, torch, none, or an encoder name whose "
                             "keras.applications preprocess_input to use (default: the encoder family's own; "
                             "'none' for model files)")
    parser.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                        help="images per RunInference batch (default: 32)")
    parser.add_argument("--num-shards", type=_non_negative, default=0, metavar="N",
                        help="number of feature TFRecord shards; 0 lets the runner decide (default: 0)")
    parser.add_argument("--compress", action="store_true",
                        help="GZIP-compress the feature TFRecords (names stay *.tfrecord; the spec records "
                             "compression: GZIP)")
    parser.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"decompression-bomb guard: reject images whose header declares more than N pixels "
                             f"(default: {DEFAULT_MAX_PIXELS}, Pillow's own warning limit)")
    parser.add_argument("--max-bytes", type=_non_negative, default=0, metavar="N",
                        help="reject files larger than N bytes (dead letter FileTooLargeError); 0: no limit "
                             "(default: 0)")
    parser.add_argument("--resize-method", default="bilinear", choices=sorted(RESIZE_METHODS),
                        help="filter used to squash images to --image-size (default: bilinear; Keras's load_img "
                             "uses nearest)")
    parser.add_argument("--input-format", default="auto", choices=INPUT_FORMATS,
                        help="files: loose image files; tar / tfrecord: image shards (captionbeam pack; WebDataset "
                             "tars, TFRecords of tf.train.Example with image/encoded|image/data and "
                             "image/id|image/filename); auto: from each glob's extension: .tar .tar.gz .tgz -> tar, "
                             ".tfrecord[s][.gz] -> tfrecord, else files (default: auto)")
    add_tfrecord_field_arguments(parser)
    parser.add_argument("--model-copies", type=_positive, default=None, metavar="N",
                        help="share N encoder copies across all worker processes of a machine (GPU workers, big "
                             "models); default: one copy per worker process, shared by its threads")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace feature records, dead letters and spec already in --output (otherwise the "
                             "job refuses to mix runs)")


def _fail(message: str) -> int:
    print(f"captionbeam features: error: {message}", file=sys.stderr)
    return 2


def _check_images_match(patterns, input_format: str):
    """Fail fast when no glob matches anything (a cheap, limited match per glob)."""
    from apache_beam.io.filesystems import FileSystems
    try:
        results = FileSystems.match(list(patterns), limits=[1] * len(patterns))
    except Exception as e:  # noqa: BLE001 - e.g. a bucket that does not exist
        return f"--images: cannot match {' '.join(patterns)}: {e}"
    empty = [p for p, r in zip(patterns, results) if not r.metadata_list]
    if len(empty) == len(patterns):
        return f"--images: no file matches {' '.join(patterns)}"
    for p in empty:
        print(f"captionbeam features: warning: --images {p} matches no file", file=sys.stderr)
    return None


def main(args: argparse.Namespace, pipeline_args=None) -> int:
    import pipelines.io as pio
    from model.encoders import EncoderConfig, EncoderError, describe_config
    from launch.shard_flags import tfrecord_fields
    from pipelines.features import FeaturesConfig, existing_outputs, run

    encoder = EncoderConfig(name=args.encoder, weights=args.weights, image_size=args.image_size,
                            preprocessing=args.preprocessing)
    try:
        description = describe_config(encoder)
    except EncoderError as e:
        return _fail(str(e))
    error = _check_images_match(args.images, args.input_format)
    if error:
        return _fail(error)
    existing = existing_outputs(args.output)
    if existing:
        if not args.overwrite:
            return _fail(f"--output {args.output} already holds {len(existing)} feature/dead-letter/spec files "
                         f"from an earlier run; pass --overwrite to replace them, or choose another directory")
        pio.delete(existing)
    config = FeaturesConfig(images=tuple(args.images), output=args.output, encoder=encoder,
                            batch_size=args.batch_size, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
                            resize_method=args.resize_method, num_shards=args.num_shards, compress=args.compress,
                            input_format=args.input_format, model_copies=args.model_copies,
                            tfrecord_fields=tfrecord_fields(args))
    print(f"features: encoder {description['encoder']} ({description['weights']} weights, "
          f"{description['image_size'][0]}px, {description['preprocessing']}), batch {args.batch_size}",
          file=sys.stderr)
    result = run(config, pipeline_args or [], description)
    spec = result.spec
    shape = "x".join(str(s) for s in spec.feature_shape) if spec else "?"
    print(f"features: {result.images_encoded} images encoded ({shape} {description['encoder']} features), "
          f"{result.dead_letters} dead letters, {result.images_encoded + result.dead_letters} files in all")
    if result.dead_letters_by_stage:
        print("  dead letters by stage: " + ", ".join(f"{k} {v}" for k, v in result.dead_letters_by_stage.items()))
    if spec and spec.extra.get("duplicate_image_id_count"):
        dups = spec.extra["duplicate_image_ids"]
        print(f"features: warning: {spec.extra['duplicate_image_id_count']} image ids belong to several files "
              f"(same name in different directories), e.g. {', '.join(dups[:5])}; all their records were kept",
              file=sys.stderr)
    print(f"  {result.seconds:.1f}s wall, {result.images_per_second:.1f} images/s (including pipeline start-up)")
    print(f"  records: {pio.join(args.output, 'features-*-of-*.tfrecord')}"
          f"{' (GZIP)' if args.compress else ''}")
    print(f"  spec: {pio.join(args.output, 'features_spec.json')}")
    print(f"  dead letters: {pio.join(args.output, 'dead_letters', 'dead_letters-*.jsonl')}")
    from pipelines.sources import split_by_format
    only_files = set(split_by_format(args.images, args.input_format)) == {"files"}
    if only_files and result.files_matched != result.images_encoded + result.dead_letters:
        print(f"features: warning: {result.files_matched} files read but {result.images_encoded} encoded + "
              f"{result.dead_letters} dead letters", file=sys.stderr)
    return 0
