"""``captionbeam retrain --init``: a trained model becomes v001 of a new root, with its features,
captions and split files, scored on the fixed evaluation split."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Mapping, Optional

import captionbeam.pipelines.io as pio
from captionbeam.launch.retrain import data, manifest, stages
from captionbeam.launch.retrain.attempt import AttemptResult
from captionbeam.launch.retrain.root import (CURRENT_FILE, ModelRoot, RetrainError, RootSettings, VersionInfo, now,
                                 write_consumed, write_settings)
from captionbeam.launch.staging import copy_tree, local_dir
from captionbeam.model.records import FeaturesSpec

FIRST_BATCH = "b0000"
FIRST_VERSION = "v001"


def init_root(root: str, model_dir: str, features: str, captions: str, splits: Mapping[str, str],
              eval_split: str = "test", beam_size: int = 1, caption_format: str = "auto",
              data_dir: Optional[str] = None) -> AttemptResult:
    """Make ``root`` serve ``model_dir`` as v001: copy the model, its features, captions and split
    files in, evaluate it on the fixed ``eval_split`` and point CURRENT at it."""
    from captionbeam.model.config import ModelConfig
    r = ModelRoot(root)
    if r.current() is not None:
        raise RetrainError(f"{r.path(CURRENT_FILE)} exists: {root} is already initialised")
    for name in ("train", "dev", eval_split):
        if name not in splits:
            raise RetrainError(f"--split {name}=FILE is required to initialise a root")
    start = time.time()
    print(f"initialising {r.root} from {model_dir}", file=sys.stderr)
    # data: captions (Flickr8k format) and fixed split files
    pio.write_text(r.path("data", "captions.txt"), data.flickr8k_text(data.read_captions([captions], caption_format)))
    for name, path in splits.items():
        pio.write_text(r.path("data", f"{name}.txt"), data.split_text(data.read_split(path)))
    # features: records and sidecar under batch b0000, the spec, and a model-file encoder
    consumed = manifest.add_features(r, features, FIRST_BATCH)
    spec_file = pio.join(features, "features_spec.json")
    pio.write_bytes(r.path(manifest.FEATURES_DIR, "features_spec.json"), pio.read_bytes(spec_file))
    encoder_file = manifest.encoder_file(FeaturesSpec.from_json(pio.read_text(spec_file)))
    if encoder_file:   # a model-file encoder travels with the root
        pio.write_bytes(r.path("encoder", pio.basename(encoder_file)), pio.read_bytes(encoder_file))
    # settings the later attempts repeat
    stats_path = pio.join(data_dir, "stats.json") if data_dir else None
    stats = pio.read_json(stats_path) if stats_path and pio.exists(stats_path) else {}
    settings = RootSettings(clean=stats.get("clean", "seed"), min_count=int(stats.get("min_count", 5)),
                            caption_format="flickr8k")
    write_settings(r, settings)
    with local_dir(model_dir) as m:
        cfg = ModelConfig.load(m)
        # evaluate on the fixed split, with the model's own vocabulary
        with tempfile.TemporaryDirectory(prefix="captionbeam-init-") as tmp:
            built = stages.build_data(r, settings, os.path.join(tmp, "data"), pio.join(m, "vocab.txt"),
                                      r.path("data", "captions.txt"), r.path("data", "train.txt"),
                                      ["--runner=DirectRunner"])
            with local_dir(built) as local_data:
                metrics = stages.evaluate(m, local_data, eval_split, beam_size, os.path.join(tmp, "eval"))
        copy_tree(m, r.version_dir(FIRST_VERSION))
    r.write_info(VersionInfo(name=FIRST_VERSION, created=now(), metrics=metrics, vocab_size=cfg.vocab_size,
                             train_images=len(data.read_split(r.path("data", "train.txt"))),
                             batch=FIRST_BATCH, promoted=True, decision=["initial version"]))
    write_consumed(r, FIRST_BATCH, consumed)
    r.set_current(FIRST_VERSION)
    return AttemptResult(batch=FIRST_BATCH, status="promoted", new_images=len(consumed), version=FIRST_VERSION,
                         current=FIRST_VERSION, new_metrics=metrics, reasons=["initial version"],
                         seconds=time.time() - start)
