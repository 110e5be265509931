"""The jobs an attempt runs, as typed calls of the commands: each a ``command_args.Stage`` (the command's
typed config: ``FeaturesConfig``, ``CaptionsConfig``, ``TrainJob``, ``EvaluateConfig``) run by the command's
``run`` -> Result; each prints the equivalent ``captionbeam`` command line first (to stderr: stdout is the
attempt's result)."""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Sequence, Tuple

import captionbeam.pipelines.io as pio
from captionbeam.launch.command_args import CommandError, Stage, stage
from captionbeam.launch.commands import captions as captions_cmd
from captionbeam.launch.commands import evaluate as evaluate_cmd
from captionbeam.launch.commands import features as features_cmd
from captionbeam.launch.commands import train as train_cmd
from captionbeam.launch.retrain.manifest import FEATURES_DIR, root_encoder_file
from captionbeam.launch.retrain.root import ModelRoot, RetrainError, RootSettings
from captionbeam.model.records import FeaturesSpec


def _call(module, s: Stage):
    """A command's typed run of the stage's config -> its Result; its CommandError becomes a RetrainError
    naming the command."""
    print("    $ " + s.line, file=sys.stderr)
    try:
        return module.run(s.config, s.runner) if getattr(module, "BEAM", False) else module.run(s.config)
    except CommandError as e:
        raise RetrainError(f"`captionbeam {s.command}` failed: {e}") from None


def features_stage(root: ModelRoot, spec: FeaturesSpec, images: Sequence[str], out: str,
                   pipeline_args: Sequence[str] = ()) -> Stage:
    """``captionbeam features`` for new images exactly as the root's features were made: the encoder
    of the spec's description (``model.encoders.config_of``: name or model file, weights, input size,
    preprocessing) and the same compression (one spec describes every batch's records)."""
    from captionbeam.model.encoders import EncoderError, config_of
    try:
        enc = config_of(spec.encoder_description(), root_encoder_file(root, spec))
    except EncoderError as e:
        raise RetrainError(f"{root.path(FEATURES_DIR, 'features_spec.json')}: {e}") from None
    values = {"images": list(images), "output": out, "encoder": enc.name, "weights": enc.weights,
              "compress": spec.compression.upper() == "GZIP", "overwrite": True}
    values.update({k: v for k, v in (("image_size", enc.image_size), ("preprocessing", enc.preprocessing))
                   if v is not None})
    return stage(features_cmd, values, pipeline_args=pipeline_args)


def featurise(root: ModelRoot, images: Sequence[str], out: str, pipeline_args: Sequence[str]) -> str:
    """Features of new images with the root's encoder; refuses features that another encoder made."""
    spec = FeaturesSpec.from_json(pio.read_text(root.path(FEATURES_DIR, "features_spec.json")))  # Beam's FileSystems
    s = features_stage(root, spec, images, out, pipeline_args)
    result = _call(features_cmd, s).job
    made = result.spec.encoder_description() if result.spec else None
    want = spec.encoder_description()
    if made is not None and result.images_encoded and made.identity() != want.identity():
        raise RetrainError(f"`captionbeam {s.command}` made features with encoder {made} but the root's "
                           f"features_spec.json describes {want}")
    return out


def build_data(root: ModelRoot, settings: RootSettings, out: str, vocab: str, captions: str, train: str,
               pipeline_args: Sequence[str]) -> str:
    """``captionbeam captions`` over every feature of the root, with a given vocabulary."""
    splits: List[Tuple[str, str]] = [("train", train)]
    splits += [(name, root.path("data", f"{name}.txt")) for name in ("dev", "test")
               if pio.exists(root.path("data", f"{name}.txt"))]
    _call(captions_cmd, stage(captions_cmd, {"captions": captions, "format": "flickr8k", "splits": splits,
                                             "features": root.path(FEATURES_DIR), "output": out, "vocab": vocab,
                                             "clean": settings.clean, "overwrite": True}, pipeline_args=pipeline_args))
    return out


def train(data_dir: str, model_dir: str, like_model_dir: str, epochs: int, batch_size: int,
          extra: Sequence[str] = ()) -> Dict[str, object]:
    """``captionbeam train`` into ``model_dir`` (local, warm-started), with the architecture of the
    model in ``like_model_dir``."""
    from captionbeam.model.config import ModelConfig
    return _call(train_cmd, stage(train_cmd, {"data": data_dir, "model_dir": model_dir,
                                              **train_cmd.architecture_values(ModelConfig.load(like_model_dir)),
                                              "epochs": epochs, "batch_size": batch_size}, extra=extra)).summary


def evaluate(model_dir: str, data_dir: str, split: str, beam_size: int, out_dir: str) -> Dict[str, float]:
    """``captionbeam evaluate`` (BLEU and CIDEr-D only) on local dirs -> flat metrics (CIDEr, Bleu_4, bleu1..)."""
    from captionbeam.launch.report import flatten_metrics
    os.makedirs(out_dir, exist_ok=True)
    report = _call(evaluate_cmd, stage(evaluate_cmd, {
        "model_dir": model_dir, "data": data_dir, "split": split, "beam_size": beam_size,
        "output": os.path.join(out_dir, "predictions.jsonl"), "coco_metrics": ("bleu", "cider")}))
    return flatten_metrics(report.to_dict())
