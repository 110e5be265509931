"""``captionbeam bulk``: caption an archive of images at scale, resumably (a Beam job).

Example::

    captionbeam bulk --images 'gs://archive/photos/**.jpg' --model-dir models/merge \\
        --output gs://archive/captions --profile dataflow-gpu

The command's face: ``config_from_args(args) -> BulkCommandConfig``, ``plan(config) -> BulkPlan`` (every
check before any work: globs match, the model loads, export flags agree), ``run(config, runner)
-> BulkCommandResult`` with ``summary_lines()``; ``main`` only prints. Bad input raises ``CommandError``.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from captionbeam.launch.arg_types import non_negative_float, non_negative_int, positive_int, output_dir
from captionbeam.launch.command_args import CommandError
from captionbeam.launch.command_face import require_matches
from captionbeam.launch.exit_codes import FAULT, OK
from captionbeam.pipelines.options import Runner
from captionbeam.launch.reader_flags import add_max_bytes, add_max_pixels

HELP = "caption an archive of images at scale, resumably (Beam job)"
BEAM = True

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from captionbeam.pipelines.bulk import FORMATS
    from captionbeam.pipelines.images import RESIZE_METHODS
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
                   help="trained model directory (captionbeam train --model-dir), an ensemble directory (captionbeam "
                        "ensemble), or an exported SavedModel "
                        "(captionbeam export --output: a directory with saved_model.pb; the raw image bytes go to "
                        "its serving_default signature, which decodes, resizes and captions them with the beam "
                        "size and max length baked in at export); local, or gs:// on GCP")
    g.add_argument("--output", required=True, type=output_dir, help="output directory, local or gs://")
    g.add_argument("--format", default="jsonl", choices=FORMATS,
                   help="caption rows as JSON lines or Parquet (default: jsonl)")
    g.add_argument("--num-shards", type=non_negative_int, default=0,
                   help="caption / manifest shards per run; 0 lets the runner choose (default: 0)")
    g.add_argument("--redo", action="store_true",
                   help="caption every matched image again (new rows, a new run) and file its failures again; by "
                        "default a re-run captions only images whose (path, SHA-256) is not yet in this model "
                        "version's manifest under --output and files no dead letter an earlier run filed")
    g.add_argument("--skip-existing", action="store_true",
                   help="the default (kept for old command lines): skip what this model version captioned")
    g.add_argument("--commit-every", type=non_negative_int, default=0, metavar="FILES",
                   help="list the inputs once and caption them in parts of FILES input files (loose images or "
                        "shards), each committed when it ends as run <run>-pNNNNN: a killed run loses at most "
                        "one part, memory is bounded by the part, progress has an ETA; for archives of "
                        "millions (on gs://, parts of shards: each listed file is matched on its own). "
                        "0: one run for everything (default: 0)")
    g.add_argument("--force", action="store_true",
                   help="take the --output's lease even when another run holds it (only when that run is dead; "
                        "a dead run's lease expires 15 minutes after its last heartbeat anyway)")
    d = parser.add_argument_group("decoding and inference")
    d.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam width; 1 = greedy (default: 1; for an export, the one baked into it, which is the "
                        "only value it accepts)")
    d.add_argument("--length-penalty", type=non_negative_float, default=None, metavar="ALPHA",
                   help="beam search ranks captions by log-prob / length**ALPHA (default 0: raw log-prob; for an "
                        "export, baked in like --beam-size)")
    d.add_argument("--max-length", type=positive_int, default=None,
                   help="longest caption in tokens (default: the model's; for an export, baked in like --beam-size)")
    d.add_argument("--batch-size", type=positive_int, default=32,
                   help="images per RunInference batch (encoder and decoder together) (default: 32)")
    d.add_argument("--model-copies", type=positive_int, default=None,
                   help="load exactly N models per worker machine, shared by all its SDK processes (Beam's "
                        "multi_process_shared); default: one model per worker process, shared by its threads")
    add_max_bytes(d)
    add_max_pixels(d, extra="; for an export, checked from the header before its graph sees the bytes")
    d.add_argument("--resize-method", default=None, choices=sorted(RESIZE_METHODS),
                   help="resize filter to the encoder's input size (default: the model's preprocessing, "
                        "else bilinear; an export resizes in its graph and does not take this flag)")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON object")


def model_info(model_dir: str, beam_size, max_length, batch_size: int, length_penalty=None):
    """Load the captioner once here: it validates --model-dir before any worker starts and gives the
    model version the manifest is keyed by, the encoder name and its input size."""
    from captionbeam.model.captioner import Captioner
    from captionbeam.pipelines.bulk import ModelInfo
    captioner = Captioner.load(model_dir, beam_size=beam_size or 1, max_length=max_length, batch_size=batch_size,
                               alpha=length_penalty or 0.0)
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


def check_export_flags(meta: dict, model_dir: str, beam_size, max_length, resize_method, length_penalty=None) -> None:
    """Decoding is baked into an export: a --beam-size / --max-length that differs from it, or any
    --resize-method, is an error (ValueError naming the flag), not something silently ignored."""
    baked = {"--beam-size": (beam_size, meta["beam_size"]), "--max-length": (max_length, meta["max_length"]),
             "--length-penalty": (length_penalty, meta.get("length_penalty", 0.0))}
    for flag, (given, exported) in baked.items():
        if given is not None and float(given) != float(exported):
            what = flag[2:].replace("-", " ")
            raise ValueError(f"{flag} {given}: --model-dir {model_dir} is an export whose {what} is "
                             f"{exported}, baked in at export time; drop {flag} (or pass {flag} {exported}), "
                             f"or re-export with captionbeam export {flag} {given}")
    if resize_method is not None:
        raise ValueError(f"--resize-method {resize_method}: --model-dir {model_dir} is an export, which resizes "
                         f"in its graph (bilinear, antialiased); drop --resize-method")


def load_model_info(config: "BulkCommandConfig"):
    """(ModelInfo, resize method of the model or None, the export's metadata or None) for --model-dir:
    an export when it holds saved_model.pb (local or gs://), else a training model directory."""
    import captionbeam.pipelines.io as pio
    if pio.exists(pio.join(config.model_dir, "saved_model.pb")):
        info, meta = export_info(config.model_dir)
        return info, None, meta
    info, resize = model_info(config.model_dir, config.beam_size, config.max_length, config.batch_size,
                              config.length_penalty)
    return info, resize, None


@dataclass(frozen=True)
class BulkCommandConfig:
    """The command's flags, typed; ``None`` where the model decides (beam size, max length, resize)."""
    images: Tuple[str, ...]
    output: str
    model_dir: str
    beam_size: Optional[int] = None
    max_length: Optional[int] = None
    length_penalty: Optional[float] = None
    batch_size: int = 32
    format: str = "jsonl"
    redo: bool = False
    input_format: str = "auto"
    num_shards: int = 0
    model_copies: Optional[int] = None
    max_bytes: Optional[int] = None
    max_pixels: Optional[int] = None
    resize_method: Optional[str] = None
    tfrecord_fields: object = None
    force: bool = False
    commit_every: int = 0


def config_from_args(args: argparse.Namespace) -> BulkCommandConfig:
    from captionbeam.launch.shard_flags import tfrecord_fields
    return BulkCommandConfig(
        images=tuple(args.images), output=args.output, model_dir=args.model_dir, beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        max_length=args.max_length, batch_size=args.batch_size, format=args.format, redo=args.redo,
        input_format=args.input_format, num_shards=args.num_shards, model_copies=args.model_copies,
        max_bytes=args.max_bytes, max_pixels=args.max_pixels, resize_method=args.resize_method,
        tfrecord_fields=tfrecord_fields(args), force=args.force,
        commit_every=args.commit_every)


@dataclass(frozen=True)
class BulkPlan:
    """What ``run`` will do: the job's resolved config and the model it captions with."""
    job: object        # pipelines.bulk.BulkConfig
    model: object      # pipelines.bulk.ModelInfo

    def summary_lines(self) -> List[str]:
        j, m = self.job, self.model
        kind = f"export of model {m.source_model_version}" if m.exported else "model dir"
        return [f"bulk: {' '.join(j.images)} captioned by model {m.model_version} ({m.encoder}, {kind}), "
                f"beam {j.beam_size}, {j.format} -> {j.output}"
                + ("" if j.skip_existing else " (--redo: every image again)")
                + (f", committed every {j.commit_every} input files" if j.commit_every else "")]


def plan(config: BulkCommandConfig) -> BulkPlan:
    """Every check before any work; ``CommandError`` naming the flag otherwise."""
    from captionbeam.pipelines.bulk import BulkConfig
    from captionbeam.pipelines.image_items import DEFAULT_MAX_BYTES
    from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS
    require_matches(config.images)
    try:
        info, model_resize, export_meta = load_model_info(config)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to load the model names the flag
        raise CommandError(f"--model-dir {config.model_dir}: cannot load the model: {type(e).__name__}: {e}") from None
    beam_size, max_length, length_penalty = config.beam_size or 1, config.max_length, config.length_penalty or 0.0
    try:
        if export_meta is not None:
            check_export_flags(export_meta, config.model_dir, config.beam_size, config.max_length,
                               config.resize_method, config.length_penalty)
            beam_size, max_length = int(export_meta["beam_size"]), int(export_meta["max_length"])
            length_penalty = float(export_meta.get("length_penalty", 0.0))
        job = BulkConfig(
            images=tuple(config.images), output=config.output, model_dir=config.model_dir, beam_size=beam_size,
            length_penalty=length_penalty,
            batch_size=config.batch_size, max_length=max_length, format=config.format,
            skip_existing=not config.redo, input_format=config.input_format, num_shards=config.num_shards,
            model_copies=config.model_copies, max_bytes=config.max_bytes or DEFAULT_MAX_BYTES,
            max_pixels=config.max_pixels or DEFAULT_MAX_PIXELS,
            resize_method=config.resize_method or model_resize or "bilinear",
            tfrecord_fields=config.tfrecord_fields, force=config.force, commit_every=config.commit_every)
    except ValueError as e:
        raise CommandError(str(e)) from None
    return BulkPlan(job=job, model=info)


def counter_sources_line(sources: Dict[str, str]) -> str:
    """``  the runner's counters were incomplete: captioned, failed counted from this run's files; matched,
    skipped the runner's`` (``sources``: ``BulkResult.sources``)."""
    from captionbeam.pipelines.bulk import FILES, PROGRESS_FILES, RUNNER
    words = {FILES: "counted from this run's caption and dead-letter files",
             PROGRESS_FILES: "from the workers' progress files", RUNNER: "the runner's"}
    by: Dict[str, List[str]] = {}
    for name, src in sources.items():
        by.setdefault(src, []).append(name)
    order = sorted(by, key=lambda src: src == RUNNER)   # the runner's last
    return "  the runner's counters were incomplete: " + "; ".join(
        f"{', '.join(by[src])} {words.get(src, src)}" for src in order)


@dataclass
class BulkCommandResult:
    """The finished job (``pipelines.bulk.BulkResult``) and the model it captioned with."""
    job: object        # pipelines.bulk.BulkResult
    model: object      # pipelines.bulk.ModelInfo

    @property
    def exit_code(self) -> int:
        """OK, or FAULT when the counters do not add up (launch/exit_codes.py)."""
        return OK if self.job.balanced else FAULT

    def to_dict(self) -> Dict[str, object]:
        r, c = self.job, self.job.counters
        return {
            "run": r.run, "model_version": r.model_version, "encoder": r.encoder,
            "counters": {k: c.get(k, 0) for k in ("matched", "captioned", "skipped", "failed")},
            "already_filed": r.already_filed,
            "balanced": r.balanced, "counter_sources": r.sources, "seconds": round(r.seconds, 2),
            "images_per_s": round(r.images_per_s, 2), "files": r.files, "run_record": r.record_path,
            "exported": self.model.exported, "source_model_version": self.model.source_model_version,
        }

    def summary_lines(self) -> List[str]:
        r, c, info = self.job, self.job.counters, self.model
        kind = f", export of model {info.source_model_version}" if info.exported else ""
        lines = [f"run {r.run}: model {r.model_version} ({r.encoder}{kind})",
                 f"  matched {c['matched']}  captioned {c['captioned']}  skipped {c['skipped']}  failed {c['failed']}"
                 f"  ({'balanced' if r.balanced else 'NOT BALANCED'})"]
        if r.runner_counters_incomplete:
            lines.append(counter_sources_line(r.sources))
        if r.already_filed:
            lines.append(f"  {r.already_filed} of the failed already have a dead letter from an earlier run "
                         f"(not filed again; --redo files them again)")
        matched_per_s = c["matched"] / r.seconds if r.seconds else 0.0
        lines.append(f"  {r.seconds:.1f}s: {r.images_per_s:.1f} images/s captioned, {matched_per_s:.1f} images/s matched")
        for what, files in r.files.items():
            lines.append(f"  {what}: {len(files)} file(s)" + (f", e.g. {files[0]}" if files else ""))
        lines.append(f"  run record: {r.record_path}")
        return lines


def run(config: BulkCommandConfig, runner: Runner = None, planned: Optional[BulkPlan] = None
        ) -> BulkCommandResult:
    """Plan (unless given), then run the job to completion. ``CommandError`` for bad input;
    ``pipelines.lease.LeaseHeld`` when another run writes to the --output."""
    from captionbeam.pipelines.bulk import run as run_job
    p = planned or plan(config)
    return BulkCommandResult(job=run_job(p.job, p.model, runner), model=p.model)


def main(args: argparse.Namespace, runner: Runner = None) -> int:
    # an empty optional output (no dead letters, nothing new) is normal here, not worth a warning
    logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
    result = run(config_from_args(args), runner)
    print(json.dumps(result.to_dict(), indent=2, sort_keys=True) if args.json else "\n".join(result.summary_lines()))
    if result.exit_code != OK:
        log.error("bulk: counters do not add up: %s", result.job.counters)
    return result.exit_code
