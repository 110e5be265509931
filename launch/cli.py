"""``captionbeam``: one console script, one subcommand per job. Subcommands only parse and call.

Conventions (docs/launch.md): logging set up once by ``quiet.configure_logging`` before a command module
is imported (``--log-level`` anywhere on the line), ``--version``, exit codes from ``exit_codes``.

Each subcommand lives in ``launch/commands/<name>.py`` and is imported only when chosen, so
``captionbeam --help`` answers without loading TensorFlow or Beam.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional, Sequence, Tuple

# name -> one-line help. The module is launch.commands.<name with '-' as '_'>.
COMMANDS: Tuple[Tuple[str, str], ...] = (
    ("sample", "write the small, deterministic sample captioning dataset (images, captions, splits)"),
    ("pack", "pack loose images into tar or TFRecord shards, with a manifest (Beam job)"),
    ("features", "encode images with a CNN into feature TFRecords (Beam job)"),
    ("captions", "clean captions, build the vocabulary, join with features into training TFRecords (Beam job)"),
    ("train", "train a merge / inject / attention captioner with tf.distribute, streaming TFRecords"),
    ("evaluate", "decode a split with a trained model and print BLEU / METEOR / ROUGE-L / CIDEr-D"),
    ("caption", "caption image files with a trained model"),
    ("score", "score predicted captions against references (BLEU-1..4, COCO metrics)"),
    ("export", "export a trained model as one servable SavedModel: image bytes in, captions out"),
    ("ensemble", "combine trained model dirs (same vocabulary and encoder) into an ensemble directory for --model-dir"),
    ("bulk", "caption an archive of images at scale, resumably (Beam job)"),
    ("retrain", "featurise newly landed images, warm-start training, promote if metrics hold"),
    ("run", "the whole chain end to end (default: on the embedded sample dataset)"),
    ("profiles", "list runner profiles, or show the flags and environment one resolves to"),
)
LOG_LEVEL_DEFAULT_ENV = "CAPTIONBEAM_LOG"


def _module_for(name: str):
    return importlib.import_module(f"captionbeam.launch.commands.{name.replace('-', '_')}")


def build_parser() -> Tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="captionbeam",
        description="captionbeam: distributed batch image captioning on Apache Beam and tf.distribute.",
        epilog="Run `captionbeam COMMAND --help` for a command's options. Beam jobs also take any Beam "
               "pipeline option (--runner, --direct_num_workers, --project, --region, ...) and --profile NAME.",
    )
    from captionbeam import __version__
    parser.add_argument("--version", action="version", version=f"captionbeam {__version__}")
    add_log_level(parser, os.environ.get(LOG_LEVEL_DEFAULT_ENV, "INFO").upper())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for name, help_text in COMMANDS:
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        add_log_level(subparsers[name], argparse.SUPPRESS)   # accepted after the command too
    return parser, subparsers


def add_log_level(parser: argparse.ArgumentParser, default) -> None:
    from captionbeam.launch.quiet import LEVELS
    parser.add_argument("--log-level", default=default, type=str.upper, choices=LEVELS,
                        help="logging level; below DEBUG, TensorFlow / absl / Beam messages and library "
                             f"warnings are off (default: INFO, or ${LOG_LEVEL_DEFAULT_ENV})")


def _chosen_command(argv: Sequence[str]) -> Optional[str]:
    names = {n for n, _ in COMMANDS}
    for arg in argv:      # --log-level is out of argv already (quiet.split_log_level)
        if arg == "--":
            return None
        if arg.startswith("-"):
            continue
        return arg if arg in names else None
    return None


def main(argv: Optional[List[str]] = None) -> int:
    from captionbeam.launch.quiet import LEVELS, configure_logging, split_log_level
    level, argv = split_log_level(list(sys.argv[1:] if argv is None else argv),
                                  os.environ.get(LOG_LEVEL_DEFAULT_ENV, "INFO"))
    parser, subparsers = build_parser()
    if level not in LEVELS:
        parser.error(f"argument --log-level: invalid choice: {level!r} (choose from {', '.join(LEVELS)})")
    configure_logging(level)  # once, before any command module (TensorFlow, Beam) is imported
    name = _chosen_command(argv)
    module = None
    if name is not None:
        module = _module_for(name)
        module.add_arguments(subparsers[name])
    flags, rest = None, []
    if module is not None and getattr(module, "BEAM", False):
        from captionbeam.launch.beam_options import add_profile_argument, parse_runner_flags
        add_profile_argument(subparsers[name])
        args, rest = parser.parse_known_args(argv)
        from captionbeam.launch.local_paths import absolute_local_paths
        absolute_local_paths(args)   # an SDK worker of a cluster opens them from a folder of its own
        flags = parse_runner_flags(subparsers[name], rest, profile=args.profile, command=name,
                                   profiles_path=args.profiles_file, dry_run=args.dry_run)
    else:
        if module is not None and hasattr(module, "plan"):      # every command with the face (not the profiles tool)
            from captionbeam.launch.dry_run import add_dry_run_argument
            add_dry_run_argument(subparsers[name])
        args = parser.parse_args(argv)
    if getattr(args, "dry_run", False):       # the command's plan (config_from_args -> plan), nothing run: OK or USAGE
        from captionbeam.launch.dry_run import dry_run
        return dry_run(name, module, args, argv, rest, flags)
    args.log_level = level
    return run_command(name, module, args, flags)


def run_command(name: str, module, args: argparse.Namespace, flags=None) -> int:
    """``module.main(args, flags)`` (``flags``: the Beam command's ``RunnerFlags``, else None) -> its exit
    code; what it raises becomes one line on stderr and the exit code of ``launch/exit_codes.py``:
    ``CommandError`` (bad usage or input) -> USAGE, ``LeaseHeld`` (another live run writes the output) ->
    OUTPUT_IN_USE, ``CommandFault`` (started, did not finish) -> FAULT, a full disk / locked file / dead
    endpoint, or a Beam job that failed on Flink / Spark / Prism -> FAULT, Ctrl-C -> INTERRUPTED."""
    from captionbeam.launch.command_args import CommandError
    from captionbeam.launch.command_face import CommandFault
    from captionbeam.launch.exit_codes import FAULT, INTERRUPTED, OK, OUTPUT_IN_USE, USAGE
    from captionbeam.pipelines.lease import LeaseHeld

    def say(message: str) -> None:
        print(f"captionbeam {name}: {message}", file=sys.stderr)

    try:
        return int(module.main(args, flags) or OK)
    except BrokenPipeError:   # `captionbeam ... | head`: the reader is gone; no traceback (Python's advice)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAULT
    except CommandError as e:
        say(f"error: {e}")
        return USAGE
    except LeaseHeld as e:   # another live run writes this output (the one output protocol, pipelines/lease.py)
        say(f"error: {e}")
        return OUTPUT_IN_USE
    except CommandFault as e:
        say(f"error: {e}" + (f" ({e.hint})" if e.hint else ""))
        return FAULT
    except KeyboardInterrupt:
        say(getattr(module, "ON_INTERRUPT", "stopped"))
        return INTERRUPTED
    except Exception as e:  # noqa: BLE001 - only a job on a portable engine or a storage fault is translated
        from captionbeam.launch.engine_failures import explain_failure
        from captionbeam.pipelines.storage_faults import explain
        # one Beam job (run and retrain translate their own Beam stages: launch/run.py run_stage)
        message = explain_failure(e, flags.options) if flags is not None and name not in ("run", "retrain") else None
        if message is None:
            written = next((f"--{a.replace('_', '-')} {getattr(args, a)}" for a in ("output", "model_dir", "workdir", "root")
                            if getattr(args, a, None)), None)
            fault = explain(e, written)   # a full disk, a locked file, a dead endpoint: one line naming it
            if fault is None:
                raise
            message = f"error: {fault}"
        say(message)
        return FAULT


if __name__ == "__main__":
    sys.exit(main())
