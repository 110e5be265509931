"""``captionbeam export``: one servable SavedModel (image bytes in, captions out, encoder included)."""
from __future__ import annotations

import argparse
import json
import sys

from captionbeam.launch.commands.evaluate import check_decoding_arguments

from captionbeam.launch.arg_types import output_dir

HELP = "export a trained model as one servable SavedModel: image bytes in, captions out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="trained model directory (captionbeam train --model-dir)")
    parser.add_argument("--output", required=True, type=output_dir, help="SavedModel directory to write")
    parser.add_argument("--beam-size", type=int, default=1, help="beam width baked into the export (default 1: greedy)")
    parser.add_argument("--length-penalty", type=float, default=0.0, metavar="ALPHA",
                        help="beam search ranks by log-prob / length**ALPHA (default 0)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="most tokens generated (default: the longest training caption)")
    parser.add_argument("--weights", choices=("best", "last"), default="best", help="which weights (default best)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output directory")


def main(args, pipeline_args) -> int:
    args.batch_size = 1
    check_decoding_arguments(args)
    import tensorflow as tf
    if tf.io.gfile.exists(args.output) and tf.io.gfile.listdir(args.output):
        if not args.overwrite:
            print(f"captionbeam export: error: --output {args.output} exists and is not empty (pass --overwrite)",
                  file=sys.stderr)
            return 2
        tf.io.gfile.rmtree(args.output)
    from captionbeam.model.export import export
    try:
        meta = export(args.model_dir, args.output, beam_size=args.beam_size, max_length=args.max_length,
                      alpha=args.length_penalty, which=args.weights)
    except (OSError, ValueError) as e:
        print(f"captionbeam export: error: --model-dir {args.model_dir}: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output": args.output, **meta}, indent=2))
    return 0
