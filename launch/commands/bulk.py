"""``captionbeam bulk``: caption an archive of images at scale, resumably (a Beam job).

Example::

    captionbeam bulk --images 'gs://archive/photos/**.jpg' --model-dir models/merge \\
        --output gs://archive/captions --skip-existing --profile dataflow-gpu
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from captionbeam.launch.arg_types import non_negative_int, positive_int, output_dir

HELP = "caption an archive of images at scale, resumably (Beam job)"
BEAM = True

log = logging.getLogger(__name__)
OUTPUT_IN_USE = 75   # EX_TEMPFAIL: another run holds the --output's lease; retry later


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from captionbeam.pipelines.bulk import FORMATS
    from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES
    from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS, RESIZE_METHODS
    from captionbeam.launch.shard_flags import add_tfrecord_field_arguments
    from captionbeam.pipelines.sources import INPUT_FORMATS
    parser.epilog = (
        "Output under --output: captions/captions-<run>-*.jsonl|parquet (path, image_id, sha256, caption, "
        "log_prob, model_version, encoder), manifest/<model_version>/manifest-<run>-*.jsonl, "
        "dead_letters/dead_letters-<run>-*.jsonl, runs/<run>.json. <run> is unique per run: nothing is "
        "ever overwritten. Counters at the end: matched = captioned + skipped + failed.")
    g = parser.add_argument_group("inputs and outputs")
    g.add_argument("--images", nargs="+", required=True, metavar="GLOB",
                   help="one or more globs of images, local or gs:// ('**' recurses), or of tar / TFRecord "
                        "image shards")
    g.add_argument("--input-format", default="auto", choices=INPUT_FORMATS,
                   help="how to read --images: loose files, tar or TFRecord shards; auto decides per glob "
                        "from its extension (default: auto)")
    add_tfrecord_field_arguments(g)
    g.add_argument("--model-dir", required=True,
                   help="trained model directory (captionbeam train --model-dir), or an exported SavedModel "
                        "(captionbeam export --output: a directory with saved_model.pb; the raw image bytes go to "
                        "its serving_default signature, which decodes, resizes and captions them with the beam "
                        "size and max length baked in at export); local, or gs:// on GCP")
    g.add_argument("--output", required=True, type=output_dir, help="output directory, local or gs://")
    g.add_argument("--format", default="jsonl", choices=FORMATS,
                   help="caption rows as JSON lines or Parquet (default: jsonl)")
    g.add_argument("--num-shards", type=non_negative_int, default=0,
                   help="caption / manifest shards per run; 0 lets the runner choose (default: 0)")
    g.add_argument("--skip-existing", action="store_true",
                   help="caption only images whose (path, SHA-256) is not yet in this model version's manifest "
                        "under --output; a finished archive then writes no new rows")
    g.add_argument("--force", action="store_true",
                   help="take the --output's lease even when another run holds it (only when that run is dead; "
                        "a dead run's lease expires 15 minutes after its last heartbeat anyway)")
    d = parser.add_argument_group("decoding and inference")
    d.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width; 1 = greedy (default: 1; for an export, the one baked into it, which is the "
                        "only value it accepts)")
    d.add_argument("--max-length", type=positive_int, default=None,
                   help="longest caption in tokens (default: the model's; for an export, baked in like --beam-size)")
    d.add_argument("--batch-size", type=positive_int, default=32,
                   help="images per RunInference batch (encoder and decoder together) (default: 32)")
    d.add_argument("--model-copies", type=positive_int, default=None,
                   help="load exactly N models per worker machine, shared by all its SDK processes (Beam's "
                        "multi_process_shared); default: one model per worker process, shared by its threads")
    d.add_argument("--max-bytes", type=positive_int, default=DEFAULT_MAX_BYTES, metavar="N",
                   help="the one byte limit of every reader: a file, tar member or TFRecord record larger than N bytes is a "
                        "dead letter (too_large) and is never read into memory; there is no unlimited mode, raise N "
                        "for larger images (default: %(default)s = 64 MiB)")
    d.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"dead-letter images with more pixels than this (decompression bombs) "
                        f"(default: {DEFAULT_MAX_PIXELS}; not checked for an export, which decodes in its graph)")
    d.add_argument("--resize-method", default=None, choices=sorted(RESIZE_METHODS),
                   help="resize filter to the encoder's input size (default: the model's preprocessing, "
                        "else bilinear; an export resizes in its graph and does not take this flag)")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON object")


def _check_images(parser_error, patterns) -> None:
    """Fail fast when a glob matches nothing (a limit-1 match per pattern: cheap even on a huge bucket)."""
    from apache_beam.io.filesystems import FileSystems
    from captionbeam.pipelines.io import use_anonymous_gcs_if_emulated
    use_anonymous_gcs_if_emulated()
    try:
        results = FileSystems.match(list(patterns), limits=[1] * len(patterns))
    except Exception as e:  # noqa: BLE001 - e.g. a bucket that does not exist
        parser_error(f"--images: cannot list: {e}")
    empty = [p for p, r in zip(patterns, results) if not r.metadata_list]
    if empty:
        parser_error(f"--images: no file matches {', '.join(empty)}")


def model_info(model_dir: str, beam_size, max_length, batch_size: int):
    """Load the captioner once here: it validates --model-dir before any worker starts and gives the
    model version the manifest is keyed by, the encoder name and its input size."""
    from captionbeam.model.captioner import Captioner
    from captionbeam.pipelines.bulk import ModelInfo
    captioner = Captioner.load(model_dir, beam_size=beam_size or 1, max_length=max_length, batch_size=batch_size)
    height, width = captioner.image_size
    if height != width:
        raise ValueError(f"--model-dir: encoder input size {height}x{width} is not square")
    info = ModelInfo(model_version=captioner.model_version, encoder=captioner.encoder_name, image_size=int(height))
    resize = getattr(captioner, "resize_method", None)
    return info, resize


def export_info(model_dir: str):
    """An exported SavedModel: check its metadata and serving signature (without loading the graph);
    its model version is model.export.export_version. Returns (ModelInfo, the export's metadata)."""
    from captionbeam.model.export import check_serving_signature, export_version, read_metadata
    from captionbeam.pipelines.bulk import ModelInfo
    meta = read_metadata(model_dir)
    check_serving_signature(model_dir)
    info = ModelInfo(model_version=export_version(model_dir), encoder=str(meta["encoder"]),
                     image_size=int(meta["image_size"][0]), exported=True,
                     source_model_version=str(meta["model_version"]))
    return info, meta


def check_export_flags(meta: dict, model_dir: str, beam_size, max_length, resize_method) -> None:
    """Decoding is baked into an export: a --beam-size / --max-length that differs from it, or any
    --resize-method, is an error (ValueError naming the flag), not something silently ignored."""
    baked = {"--beam-size": (beam_size, meta["beam_size"]), "--max-length": (max_length, meta["max_length"])}
    for flag, (given, exported) in baked.items():
        if given is not None and int(given) != int(exported):
            what = flag[2:].replace("-", " ")
            raise ValueError(f"{flag} {given}: --model-dir {model_dir} is an export whose {what} is "
                             f"{exported}, baked in at export time; drop {flag} (or pass {flag} {exported}), "
                             f"or re-export with captionbeam export {flag} {given}")
    if resize_method is not None:
        raise ValueError(f"--resize-method {resize_method}: --model-dir {model_dir} is an export, which resizes "
                         f"in its graph (bilinear, antialiased); drop --resize-method")


def load_model_info(args):
    """(ModelInfo, resize method of the model or None, the export's metadata or None) for --model-dir:
    an export when it holds saved_model.pb (local or gs://), else a training model directory."""
    import captionbeam.pipelines.io as pio
    if pio.exists(pio.join(args.model_dir, "saved_model.pb")):
        info, meta = export_info(args.model_dir)
        return info, None, meta
    info, resize = model_info(args.model_dir, args.beam_size, args.max_length, args.batch_size)
    return info, resize, None


def main(args: argparse.Namespace, pipeline_args) -> int:
    from captionbeam.launch.shard_flags import tfrecord_fields
    from captionbeam.pipelines.bulk import BulkConfig, run
    # an empty optional output (no dead letters, nothing new) is normal here, not worth a warning
    logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)

    def fail(message: str) -> None:
        print(f"captionbeam bulk: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    _check_images(fail, args.images)
    try:
        info, model_resize, export_meta = load_model_info(args)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to load the model names the flag
        fail(f"--model-dir {args.model_dir}: cannot load the model: {type(e).__name__}: {e}")
    beam_size, max_length = args.beam_size or 1, args.max_length
    if export_meta is not None:
        try:
            check_export_flags(export_meta, args.model_dir, args.beam_size, args.max_length, args.resize_method)
        except ValueError as e:
            fail(str(e))
        beam_size, max_length = int(export_meta["beam_size"]), int(export_meta["max_length"])
    try:
        config = BulkConfig(
            images=tuple(args.images), output=args.output, model_dir=args.model_dir, beam_size=beam_size,
            batch_size=args.batch_size, max_length=max_length, format=args.format,
            skip_existing=args.skip_existing, input_format=args.input_format, num_shards=args.num_shards,
            model_copies=args.model_copies, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
            resize_method=args.resize_method or model_resize or "bilinear", tfrecord_fields=tfrecord_fields(args),
            force=args.force)
    except ValueError as e:
        fail(str(e))
    from captionbeam.pipelines.lease import LeaseHeld
    try:
        result = run(config, info, pipeline_args)
    except LeaseHeld as e:
        print(f"captionbeam bulk: error: {e}", file=sys.stderr)
        return OUTPUT_IN_USE
    c = result.counters
    summary = {
        "run": result.run, "model_version": result.model_version, "encoder": result.encoder,
        "counters": {k: c.get(k, 0) for k in ("matched", "captioned", "skipped", "failed")},
        "balanced": result.balanced, "seconds": round(result.seconds, 2),
        "images_per_s": round(result.images_per_s, 2), "files": result.files, "run_record": result.record_path,
        "exported": info.exported, "source_model_version": info.source_model_version,
    }
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        kind = f", export of model {info.source_model_version}" if info.exported else ""
        print(f"run {result.run}: model {result.model_version} ({result.encoder}{kind})")
        print(f"  matched {c['matched']}  captioned {c['captioned']}  skipped {c['skipped']}  failed {c['failed']}"
              f"  ({'balanced' if result.balanced else 'NOT BALANCED'})")
        matched_per_s = c["matched"] / result.seconds if result.seconds else 0.0
        print(f"  {result.seconds:.1f}s: {result.images_per_s:.1f} images/s captioned, {matched_per_s:.1f} images/s matched")
        for kind, files in result.files.items():
            print(f"  {kind}: {len(files)} file(s)" + (f", e.g. {files[0]}" if files else ""))
        print(f"  run record: {result.record_path}")
    if not result.balanced:
        log.error("bulk: counters do not add up: %s", c)
        return 1
    return 0
