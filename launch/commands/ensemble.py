"""``captionbeam ensemble``: write an ensemble directory (``ensemble.json``) of trained model dirs that share a
vocabulary and an image encoder; pass it as ``--model-dir`` to evaluate, caption, bulk or export, which then
decode with the members' averaged log-probabilities (``model.ensemble``)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

from captionbeam.launch.command_args import CommandError
from captionbeam.launch.exit_codes import OK

HELP = ("combine trained model dirs (same vocabulary; one encoder, or registered encoders joined into a composite) "
        "into an ensemble directory for --model-dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--member", action="append", required=True, metavar="MODEL_DIR",
                        help="a trained model directory (repeat for each member; a relative path is written to "
                             "ensemble.json relative to --output)")
    parser.add_argument("--output", required=True, help="the ensemble directory to write (ensemble.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing ensemble.json in --output")


@dataclass(frozen=True)
class EnsembleConfig:
    members: Tuple[str, ...]
    output: str
    overwrite: bool = False


@dataclass(frozen=True)
class EnsembleResult:
    output: str
    members: List[str]
    encoder: str = ""                  # the image encoder the ensemble reads
    feature_shape: Tuple[int, ...] = ()
    across_encoders: bool = False      # members on different encoders, joined into the composite ``encoder``

    def summary_lines(self) -> List[str]:
        lines = [f"ensemble of {len(self.members)} model(s) written to {self.output}/ensemble.json: "
                 + ", ".join(self.members),
                 f"use it as --model-dir {self.output} (evaluate, caption, bulk, export)"]
        if self.across_encoders:
            shape = "x".join(str(d) for d in self.feature_shape)
            lines.append(f"its members read different encoders: it reads {self.encoder} features ({shape}), each "
                         f"member its own part; caption, bulk and export run {self.encoder} on each image, and "
                         f"evaluate needs --data made by captionbeam features --encoder {self.encoder}")
        return lines


def config_from_args(args: argparse.Namespace) -> EnsembleConfig:
    return EnsembleConfig(members=tuple(args.member), output=args.output, overwrite=args.overwrite)


def _relative_to(member: str, output: str) -> str:
    """A local member (given relative to the working directory) as written in ensemble.json: relative to the
    ensemble directory, so the two move together; gs:// and absolute paths as given."""
    import os
    if "://" in member or "://" in output or os.path.isabs(member):
        return member.rstrip("/")
    return os.path.relpath(os.path.abspath(member), os.path.abspath(output))


@dataclass(frozen=True)
class EnsemblePlan:
    replace: bool      # --output already holds ensemble.json and --overwrite was given
    config: object = None   # the EnsembleConfig planned

    def summary_lines(self) -> List[str]:
        c = self.config
        return [f"ensemble: {len(c.members)} member(s) -> {c.output}"
                + (" (--overwrite: replaces its ensemble.json)" if self.replace else "")]


def plan(config: EnsembleConfig) -> EnsemblePlan:
    """Checks before anything is written; :class:`CommandError` naming the flag."""
    from captionbeam.model import gfile
    from captionbeam.model.ensemble import ENSEMBLE_FILE
    exists = gfile.read_text(gfile.join(config.output, ENSEMBLE_FILE)) is not None
    if exists and not config.overwrite:
        raise CommandError(f"--output {config.output} already holds {ENSEMBLE_FILE} (pass --overwrite)")
    return EnsemblePlan(replace=exists, config=config)


def run(config: EnsembleConfig, planned: Optional[EnsemblePlan] = None) -> EnsembleResult:
    """Check the members (config, vocabulary, features spec) and write ``ensemble.json``; :class:`CommandError`
    naming the member or the flag otherwise."""
    from captionbeam.model.ensemble import ensemble_input, write_ensemble
    planned or plan(config)
    try:
        members = write_ensemble(config.output, [_relative_to(m, config.output) for m in config.members])
        reads = ensemble_input(config.output, members)
    except (OSError, ValueError) as e:
        raise CommandError(f"--member: {e}") from None
    return EnsembleResult(output=config.output, members=members, encoder=reads.spec.encoder,
                          feature_shape=tuple(int(d) for d in reads.spec.feature_shape),
                          across_encoders=reads.across_encoders)


def main(args, runner=None) -> int:
    print("\n".join(run(config_from_args(args)).summary_lines()))
    return OK
