"""A versioned model root, as ``captionbeam retrain`` keeps it (local or ``gs://``)::

    ROOT/CURRENT                      one line: the version being served (written atomically)
    ROOT/versions/v001/               a model dir (`captionbeam train` layout) + version.json
    ROOT/versions/v002/ ...
    ROOT/data/captions.txt            every caption seen so far (Flickr8k token format)
    ROOT/data/{train,dev,test}.txt    split files; dev and test stay fixed, new images join train
    ROOT/features/<batch>/            one `captionbeam features` output per batch of images
    ROOT/state/consumed/<batch>.jsonl the (path, sha256) of every image a finished batch consumed
    ROOT/state/attempts/<batch>.json  what each retraining attempt decided, and why

``CURRENT`` changes only after a new version is complete and passed the promotion check, so a
reader never sees a half-written model; old versions are never deleted.
"""
from __future__ import annotations

import json
import os
import re
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import pipelines.io as pio

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
VERSION_FILE = "version.json"
_VERSION_RE = re.compile(r"^v(\d{3,})$")


class VersionError(RuntimeError):
    pass


@dataclass
class VersionInfo:
    """``versions/vNNN/version.json``."""
    name: str
    parent: Optional[str] = None
    created: float = 0.0
    metrics: Dict[str, float] = field(default_factory=dict)      # on the fixed test split
    train_images: int = 0
    vocab_size: int = 0
    batch: Optional[str] = None                                  # the batch of images that produced it
    promoted: bool = False
    decision: List[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VersionInfo":
        d = json.loads(text)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def write_atomic(path: str, text: str) -> None:
    """Replace ``path``'s content in one step: a rename locally; on GCS an object upload is atomic
    (readers see the old or the new object, never a partial one)."""
    if pio.is_gcs(path):
        pio.write_text(path, text)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{pio.run_token()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ModelRoot:
    """The versions of one served model under ``root``."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if "://" in root else os.path.abspath(root)

    def path(self, *parts: str) -> str:
        return pio.join(self.root, *parts)

    # -- versions
    def version_dir(self, name: str) -> str:
        if not _VERSION_RE.match(name):
            raise VersionError(f"not a version name: {name!r} (expected vNNN)")
        return self.path(VERSIONS_DIR, name)

    def versions(self) -> List[str]:
        """Complete versions (those with a version.json), oldest first."""
        found = set()
        for p in pio.match([self.path(VERSIONS_DIR, "*", VERSION_FILE)]):
            name = p.rstrip("/").split("/")[-2]
            if _VERSION_RE.match(name):
                found.add(name)
        return sorted(found, key=lambda n: int(n[1:]))

    def next_version(self) -> str:
        """One past the highest version directory present (complete or not, so an abandoned
        attempt's directory is never reused)."""
        highest = 0
        base = self.path(VERSIONS_DIR)
        if pio.is_gcs(base):
            names = {p[len(base) + 1:].split("/", 1)[0] for p in pio.match([pio.join(base, "**")])}
        else:
            names = set(os.listdir(base)) if os.path.isdir(base) else set()
        for name in names:
            m = _VERSION_RE.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
        return f"v{highest + 1:03d}"

    def info(self, name: str) -> VersionInfo:
        return VersionInfo.from_json(pio.read_text(pio.join(self.version_dir(name), VERSION_FILE)))

    def write_info(self, info: VersionInfo) -> None:
        write_atomic(pio.join(self.version_dir(info.name), VERSION_FILE), info.to_json() + "\n")

    # -- the pointer
    def current(self) -> Optional[str]:
        path = self.path(CURRENT_FILE)
        if not pio.exists(path):
            return None
        name = pio.read_text(path).strip()
        if not _VERSION_RE.match(name):
            raise VersionError(f"{path}: does not name a version: {name!r}")
        return name

    def current_dir(self) -> str:
        name = self.current()
        if name is None:
            raise VersionError(f"{self.path(CURRENT_FILE)} not found: no current model (bootstrap the root first)")
        return self.version_dir(name)

    def set_current(self, name: str) -> None:
        if name not in self.versions():
            raise VersionError(f"cannot make {name} current: {self.version_dir(name)} has no {VERSION_FILE}")
        write_atomic(self.path(CURRENT_FILE), name + "\n")


# ----------------------------------------------------------------------------- promotion
@dataclass
class Decision:
    promote: bool
    reasons: List[str]


GATE_METRICS = (("CIDEr", "CIDEr-D"), ("Bleu_4", "BLEU-4"))


def promotion_decision(old: Mapping[str, float], new: Mapping[str, float], tolerance: float = 0.05,
                       min_drop: float = 0.005, gates: Sequence[Tuple[str, str]] = GATE_METRICS) -> Decision:
    """Promote only if no gate metric falls by more than ``max(tolerance * old, min_drop)``.

    ``tolerance`` is relative (0.05 = 5 % of the old value), ``min_drop`` an absolute floor so a
    near-zero old score does not make the gate impossibly tight."""
    reasons, ok = [], True
    for key, label in gates:
        if key not in new:
            ok = False
            reasons.append(f"{label}: the new model has no score")
            continue
        if key not in old:
            reasons.append(f"{label}: {new[key]:.4f} (no earlier score to compare)")
            continue
        allowed = max(tolerance * abs(old[key]), min_drop)
        drop = old[key] - new[key]
        if drop > allowed:
            ok = False
            reasons.append(f"{label} fell {old[key]:.4f} -> {new[key]:.4f} (drop {drop:.4f} > allowed {allowed:.4f})")
        else:
            reasons.append(f"{label} {old[key]:.4f} -> {new[key]:.4f} (within the allowed drop {allowed:.4f})")
    return Decision(ok, reasons)


# ----------------------------------------------------------------------------- consumed images
def consumed_path(root: ModelRoot, batch: str) -> str:
    return root.path("state", "consumed", f"{batch}.jsonl")


def read_consumed(root: ModelRoot) -> Dict[str, str]:
    """path -> sha256 of every image a finished batch consumed."""
    out: Dict[str, str] = {}
    for p in pio.match([root.path("state", "consumed", "*.jsonl")]):
        for line in pio.read_text(p).splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["path"]] = row["sha256"]
    return out


def write_consumed(root: ModelRoot, batch: str, items: Iterable[Tuple[str, str]]) -> None:
    lines = "".join(json.dumps({"path": p, "sha256": s}, sort_keys=True) + "\n" for p, s in items)
    write_atomic(consumed_path(root, batch), lines)


def next_batch(root: ModelRoot) -> str:
    """``bNNNN``: one past the highest batch that finished (an unfinished one is redone)."""
    highest = 0
    for p in pio.match([root.path("state", "consumed", "b*.jsonl")]):
        m = re.match(r"b(\d+)\.jsonl$", pio.basename(p))
        if m:
            highest = max(highest, int(m.group(1)))
    return f"b{highest + 1:04d}"


# ----------------------------------------------------------------------------- feature manifest
def iter_tfrecords(data: bytes) -> Iterator[bytes]:
    """Records of an uncompressed TFRecord file's bytes (framing: length, crc, data, crc)."""
    pos, n = 0, len(data)
    while pos + 12 <= n:
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        start = pos + 12
        if start + length + 4 > n:
            raise ValueError("truncated TFRecord file")
        yield data[start:start + length]
        pos = start + length + 4


def feature_hashes(feature_dirs: Sequence[str]) -> Dict[str, str]:
    """sha256 -> image_id of every image in these ``captionbeam features`` outputs (read through
    Beam's FileSystems, so gs:// works on the emulator too)."""
    from model.records import parse_feature_example
    out: Dict[str, str] = {}
    for d in feature_dirs:
        for shard in pio.match([pio.join(d, "features-*.tfrecord")]):
            for rec in iter_tfrecords(pio.read_bytes(shard)):
                ex = parse_feature_example(rec)
                out[ex["sha256"]] = ex["image_id"]
    return out


def now() -> float:
    return round(time.time(), 3)


# ============================================================================= retraining
# (everything above is the root's state; below, one retraining attempt and the watcher)
import contextlib
import io as _io
import logging
import shutil
import sys
import tempfile

log = logging.getLogger("captionbeam.retrain")
ROOT_FILE = "root.json"


class RetrainError(RuntimeError):
    """A bad root, bad inputs or a failed stage; the message says which."""


@dataclass
class RootSettings:
    """``ROOT/root.json``: what every attempt must do the same way as the first model."""
    clean: str = "seed"
    min_count: int = 5
    caption_format: str = "auto"
    arch_flags: List[str] = field(default_factory=list)   # `captionbeam train` flags of the architecture

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass
class RetrainConfig:
    root: str
    images: List[str] = field(default_factory=list)      # globs of landed images
    captions: List[str] = field(default_factory=list)    # caption files for them (any supported format)
    extend_vocab: bool = False
    min_new: int = 1
    epochs: int = 3
    batch_size: int = 32
    train_args: List[str] = field(default_factory=list)
    eval_split: str = "test"
    beam_size: int = 1
    tolerance: float = 0.05
    min_drop: float = 0.005
    pipeline_args: List[str] = field(default_factory=list)


@dataclass
class AttemptResult:
    batch: str
    status: str                     # waiting | promoted | rejected | nothing-new
    new_images: int = 0
    featurised: int = 0
    reused_features: int = 0
    without_captions: int = 0
    version: Optional[str] = None
    current: Optional[str] = None
    old_metrics: Dict[str, float] = field(default_factory=dict)
    new_metrics: Dict[str, float] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- staging
def copy_tree(src: str, dst: str) -> int:
    """Copy every file under ``src`` to ``dst`` (local or gs:// on either side, through Beam's
    FileSystems); returns the number of files."""
    n = 0
    if pio.is_gcs(src):
        files = pio.match([pio.join(src, "**")])
        rels = [f[len(src.rstrip("/")) + 1:] for f in files]
    else:
        files, rels = [], []
        for base, _, names in os.walk(src):
            for name in names:
                full = os.path.join(base, name)
                files.append(full)
                rels.append(os.path.relpath(full, src).replace(os.sep, "/"))
    for f, rel in zip(files, rels):
        pio.write_bytes(pio.join(dst, rel), pio.read_bytes(f))
        n += 1
    return n


@contextlib.contextmanager
def local_dir(path: str, download: bool = True, upload: bool = False):
    """``path`` as a local directory: itself when local; for gs://, a temp copy (TensorFlow's own gs://
    filesystem does not follow a storage emulator), uploaded back on success when ``upload``."""
    if not pio.is_gcs(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="captionbeam-stage-")
    try:
        if download:
            copy_tree(path, tmp)
        yield tmp
        if upload:
            copy_tree(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cli(argv: Sequence[str], quiet: bool = False) -> str:
    """Run one captionbeam subcommand in-process; its stdout is returned (and echoed unless quiet)."""
    from launch.cli import main as cli_main
    buf = _io.StringIO()
    print("    $ captionbeam " + " ".join(argv[:12]) + (" ..." if len(argv) > 12 else ""), file=sys.stderr)
    try:
        with contextlib.redirect_stdout(buf):
            rc = cli_main(list(argv))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    out = buf.getvalue()
    if not quiet:
        sys.stdout.write("".join("    " + line + "\n" for line in out.splitlines()))
    if rc:
        raise RetrainError(f"`captionbeam {argv[0]}` failed with status {rc}:\n{out[-2000:]}")
    return out


# ----------------------------------------------------------------------------- captions
def _flickr8k_lines(pairs: Iterable[Tuple[str, str]]) -> str:
    counters: Dict[str, int] = {}
    lines = []
    for iid, cap in pairs:
        n = counters.get(iid, 0)
        counters[iid] = n + 1
        lines.append(f"{iid}.jpg#{n}\t{' '.join(cap.split())}\n")
    return "".join(lines)


def read_captions(files: Sequence[str], fmt: str = "auto") -> Dict[str, List[str]]:
    from model.caption_files import group, parse
    pairs: List[Tuple[str, str]] = []
    for f in files:
        pairs += parse(pio.read_text(f), fmt, source=f)
    return dict(group(pairs))


def extended_vocabulary(old_tokens: Sequence[str], captions: Iterable[str], clean: str, min_count: int) -> List[str]:
    """The old vocabulary with ids unchanged, plus the new words seen ``min_count`` times
    (frequency descending, then alphabetical), appended at the end."""
    from model.text import get_cleaner
    from model.vocab import order_tokens
    cleaner = get_cleaner(clean)
    counts: Dict[str, int] = {}
    for c in captions:
        for t in cleaner(c):
            counts[t] = counts.get(t, 0) + 1
    known = set(old_tokens)
    return list(old_tokens) + [t for t in order_tokens(counts, min_count) if t not in known]


# ----------------------------------------------------------------------------- metrics
GATE_KEYS = ("CIDEr", "Bleu_4")


def flat_metrics(obj: Mapping[str, object]) -> Dict[str, float]:
    from launch.report import flatten_metrics
    return flatten_metrics(obj)


def evaluate(model_dir: str, data_dir: str, split: str, beam_size: int, out_dir: str) -> Dict[str, float]:
    """``captionbeam evaluate --json`` on local dirs -> flat metrics (CIDEr, Bleu_4, bleu1..)."""
    os.makedirs(out_dir, exist_ok=True)
    out = _cli(["evaluate", "--model-dir", model_dir, "--data", data_dir, "--split", split,
                "--beam-size", str(beam_size), "--output", os.path.join(out_dir, "predictions.jsonl"),
                "--coco-metrics", "bleu,cider", "--json"], quiet=True)
    metrics_file = os.path.join(out_dir, "predictions.metrics.json")
    if os.path.exists(metrics_file):
        with open(metrics_file) as f:
            return flat_metrics(json.load(f))
    text = out.strip()
    for i in [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")]:
        try:
            return flat_metrics(json.loads(text[i:]))
        except json.JSONDecodeError:
            continue
    raise RetrainError(f"`captionbeam evaluate --json` printed no metrics:\n{out[-1000:]}")


# ----------------------------------------------------------------------------- warm start
def write_warm_start(old_model_dir: str, new_model_dir: str, vocab_tokens: Optional[Sequence[str]] = None) -> dict:
    """Prepare ``new_model_dir`` (local) so that ``captionbeam train`` starts from the old model's best
    weights: config.json (+ vocab.txt, features_spec.json) and a step-0 checkpoint with those weights
    and a fresh optimizer. With ``vocab_tokens`` longer than the old vocabulary, the embedding rows and
    output columns of the old tokens are copied and the new ones keep their fresh initialisation."""
    import numpy as np
    import keras
    from dataclasses import replace
    from model.architectures import build_model
    from model.checkpoints import Checkpointer, TrainingState
    from model.config import ModelConfig
    from model.integrity import copy_bundled_encoder
    from model.model_dir import load_trained
    from model.vocab import Vocabulary

    old_model, old_cfg, old_vocab, spec = load_trained(old_model_dir, "best")
    tokens = list(vocab_tokens) if vocab_tokens is not None else list(old_vocab.tokens)
    if tokens[: len(old_vocab)] != list(old_vocab.tokens):
        raise RetrainError("the new vocabulary must keep the old tokens and ids (append only)")
    new_cfg = replace(old_cfg, vocab_size=len(tokens), vocab_sha256=Vocabulary(tuple(tokens)).sha256())
    os.makedirs(new_model_dir, exist_ok=True)
    if len(tokens) == len(old_vocab):
        model = old_model
        grown = []
    else:
        model = build_model(new_cfg)
        grown = []
        old_vars = {v.path: v for v in old_model.weights}
        for v in model.weights:
            o = old_vars.get(v.path)
            if o is None:
                raise RetrainError(f"cannot warm-start: weight {v.path} not in the old model")
            ov, nv = np.asarray(o.numpy()), np.asarray(v.numpy())
            if ov.shape == nv.shape:
                v.assign(ov)
                continue
            # the vocabulary axis grew: copy the old slice, keep the new rows / columns
            axis = [i for i, (a, b) in enumerate(zip(ov.shape, nv.shape)) if a != b]
            if len(ov.shape) != len(nv.shape) or len(axis) != 1 or nv.shape[axis[0]] != len(tokens):
                raise RetrainError(f"cannot warm-start {v.path}: {ov.shape} -> {nv.shape}")
            index = [slice(None)] * len(ov.shape)
            index[axis[0]] = slice(0, ov.shape[axis[0]])
            nv[tuple(index)] = ov
            v.assign(nv)
            grown.append(f"{v.path} {ov.shape}->{nv.shape}")
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    state = TrainingState.create()
    Checkpointer(new_model_dir, model, optimizer, state, is_chief=True).save(0)
    new_cfg.save(new_model_dir)
    Vocabulary(tuple(tokens)).save(os.path.join(new_model_dir, "vocab.txt"))
    spec.save(new_model_dir)
    copy_bundled_encoder(spec, old_model_dir, new_model_dir)
    return {"vocab_size": len(tokens), "old_vocab_size": len(old_vocab), "grown": grown}


def arch_flags(cfg) -> List[str]:
    """`captionbeam train` flags that rebuild exactly this architecture."""
    return ["--arch", cfg.arch, "--units", str(cfg.units), "--embedding-dim", str(cfg.embedding_dim),
            "--layers", str(cfg.num_layers), "--dropout", str(cfg.dropout),
            "--attention-units", str(cfg.attention_units), "--attention-lambda", str(cfg.attention_lambda)]


# ----------------------------------------------------------------------------- bootstrap
def init_root(root: str, model_dir: str, features: str, captions: str, splits: Mapping[str, str],
              eval_split: str = "test", beam_size: int = 1, caption_format: str = "auto",
              data_dir: Optional[str] = None) -> AttemptResult:
    """Make ``root`` serve ``model_dir`` as v001: copy the model, its features, captions and split
    files in, evaluate it on the fixed ``eval_split`` and point CURRENT at it."""
    from model.caption_files import parse_split_file
    from model.config import ModelConfig
    r = ModelRoot(root)
    if r.current() is not None:
        raise RetrainError(f"{r.path(CURRENT_FILE)} exists: {root} is already initialised")
    for name in ("train", "dev", eval_split):
        if name not in splits:
            raise RetrainError(f"--split {name}=FILE is required to initialise a root")
    start = time.time()
    print(f"initialising {r.root} from {model_dir}", file=sys.stderr)
    # data: captions (Flickr8k format) and fixed split files
    caps = read_captions([captions], caption_format)
    pio.write_text(r.path("data", "captions.txt"), _flickr8k_lines((i, c) for i, cs in caps.items() for c in cs))
    for name, path in splits.items():
        ids = parse_split_file(pio.read_text(path))
        pio.write_text(r.path("data", f"{name}.txt"), "".join(f"{i}.jpg\n" for i in ids))
    # features: every shard, renamed under batch b0000
    consumed = []
    shards = pio.match([pio.join(features, "features-*-of-*.tfrecord*")])
    for s in shards:
        pio.write_bytes(r.path("features", pio.basename(s).replace("features-", "features-b0000-", 1)), pio.read_bytes(s))
    spec_bytes = pio.read_bytes(pio.join(features, "features_spec.json"))
    pio.write_bytes(r.path("features", "features_spec.json"), spec_bytes)
    encoder_file = _encoder_file(json.loads(spec_bytes))
    if encoder_file:   # a model-file encoder travels with the root
        pio.write_bytes(r.path("encoder", pio.basename(encoder_file)), pio.read_bytes(encoder_file))
    for shard in shards:
        from model.records import parse_feature_example
        for rec in iter_tfrecords(pio.read_bytes(shard)):
            ex = parse_feature_example(rec)
            consumed.append((ex["path"], ex["sha256"]))
    # settings the later attempts repeat
    stats_path = pio.join(data_dir, "stats.json") if data_dir else None
    stats = pio.read_json(stats_path) if stats_path and pio.exists(stats_path) else {}
    with local_dir(model_dir) as m:
        cfg = ModelConfig.load(m)
        settings = RootSettings(clean=stats.get("clean", "seed"), min_count=int(stats.get("min_count", 5)),
                                caption_format="flickr8k", arch_flags=arch_flags(cfg))
        write_atomic(r.path(ROOT_FILE), settings.to_json() + "\n")
        # evaluate on the fixed split, with the model's own vocabulary
        version = "v001"
        with tempfile.TemporaryDirectory(prefix="captionbeam-init-") as tmp:
            data = _build_data(r, settings, os.path.join(tmp, "data"), pio.join(m, "vocab.txt"),
                               r.path("data", "captions.txt"), r.path("data", "train.txt"), ["--runner=DirectRunner"])
            with local_dir(data) as local_data:
                metrics = evaluate(m, local_data, eval_split, beam_size, os.path.join(tmp, "eval"))
        copy_tree(m, r.version_dir(version))
    info = VersionInfo(name=version, created=now(), metrics=metrics, vocab_size=cfg.vocab_size,
                       train_images=len(parse_split_file(pio.read_text(r.path("data", "train.txt")))),
                       batch="b0000", promoted=True, decision=["initial version"])
    r.write_info(info)
    write_consumed(r, "b0000", consumed)
    r.set_current(version)
    return AttemptResult(batch="b0000", status="promoted", new_images=len(consumed), version=version,
                         current=version, new_metrics=metrics, reasons=["initial version"],
                         seconds=time.time() - start)


def _build_data(r: ModelRoot, settings: RootSettings, out: str, vocab: str, captions: str, train: str,
                pipeline_args: Sequence[str]) -> str:
    """``captionbeam captions`` over every feature of the root, with a given vocabulary."""
    argv = ["captions", "--captions", captions, "--format", "flickr8k", "--split", f"train={train}"]
    for name in ("dev", "test"):
        path = r.path("data", f"{name}.txt")
        if pio.exists(path):
            argv += ["--split", f"{name}={path}"]
    argv += ["--features", r.path("features"), "--output", out, "--vocab", vocab, "--clean", settings.clean,
             "--overwrite", *pipeline_args]
    _cli(argv, quiet=True)
    return out


# ----------------------------------------------------------------------------- one attempt
def _settings(r: ModelRoot) -> RootSettings:
    path = r.path(ROOT_FILE)
    if not pio.exists(path):
        raise RetrainError(f"{path} not found: initialise the root first (captionbeam retrain --init ...)")
    d = pio.read_json(path)
    return RootSettings(**{k: v for k, v in d.items() if k in RootSettings.__dataclass_fields__})


def find_pending(r: ModelRoot, images: Sequence[str]) -> List[Tuple[str, str]]:
    """(path, sha256) of every matched image no finished batch consumed. Paths a batch consumed are
    not read again (landed files are treated as immutable)."""
    consumed = read_consumed(r)
    out = []
    for path in pio.match(list(images)):
        if path in consumed:
            continue
        out.append((path, pio.sha256_hex(pio.read_bytes(path))))
    return out


def _encoder_file(spec: Mapping[str, object]) -> Optional[str]:
    """The model file of a ``.keras`` / ``.h5`` / ``.tflite`` encoder (features_spec.json names it by
    its base name; ``extra.encoder_spec.source`` has the path)."""
    enc = dict((spec.get("extra") or {}).get("encoder_spec") or {})
    if enc.get("kind") in ("keras-file", "tflite") or str(spec.get("encoder", "")).endswith(
            (".keras", ".h5", ".hdf5", ".tflite")):
        return str(enc.get("source") or spec.get("encoder"))
    return None


def _encoder_argument(r: ModelRoot, spec: Mapping[str, object]) -> str:
    """``--encoder`` for new features: the registered name, or the root's copy of the model file
    (the original path when the root is on gs:// and the original is still on this machine)."""
    source = _encoder_file(spec)
    if source is None:
        return str(spec["encoder"])
    copy = r.path("encoder", pio.basename(source))
    if pio.is_gcs(copy) and os.path.exists(source):
        return source
    return copy


def retrain_once(config: RetrainConfig) -> AttemptResult:
    """Featurise what is new, rebuild the records, warm-start, evaluate, promote or keep the old."""
    from model.caption_files import parse_split_file
    from model.vocab import Vocabulary
    start = time.time()
    r = ModelRoot(config.root)
    settings = _settings(r)
    current = r.current()
    if current is None:
        raise RetrainError(f"{r.path(CURRENT_FILE)} not found: initialise the root first")
    batch = next_batch(r)
    result = AttemptResult(batch=batch, status="nothing-new", current=current)

    # 1. what is new, and which of it has captions
    pending = find_pending(r, config.images)
    new_caps = read_captions(config.captions) if config.captions else {}
    with_caps = [(p, s) for p, s in pending if pio.image_id_from_path(p) in new_caps]
    result.without_captions = len(pending) - len(with_caps)
    result.new_images = len(with_caps)
    if not with_caps:
        result.reasons.append("no new images with captions" + (f" ({result.without_captions} without captions "
                                                                f"wait for them)" if result.without_captions else ""))
        result.seconds = time.time() - start
        return result
    if len(with_caps) < config.min_new:
        result.status = "waiting"
        result.reasons.append(f"{len(with_caps)} new image(s) with captions, fewer than --min-new {config.min_new}")
        result.seconds = time.time() - start
        return result
    print(f"[{batch}] {len(with_caps)} new image(s) with captions under {', '.join(config.images)}"
          + (f"; {result.without_captions} still without captions" if result.without_captions else ""),
          file=sys.stderr)

    # 2. features only for content not yet in the feature manifest
    known = feature_hashes([r.path("features")])
    todo = [p for p, s in with_caps if s not in known]
    result.featurised, result.reused_features = len(todo), len(with_caps) - len(todo)
    attempt = r.path("attempts", batch)
    if todo:
        spec = pio.read_json(r.path("features", "features_spec.json"))
        out = pio.join(attempt, "features")
        argv = ["features", "--images", *todo, "--output", out, "--encoder", _encoder_argument(r, spec),
                "--weights", spec.get("weights", "imagenet"), "--image-size", str(spec["image_size"][0]),
                "--overwrite", *config.pipeline_args]
        if spec.get("preprocessing"):
            argv[argv.index("--overwrite"):argv.index("--overwrite")] = ["--preprocessing", spec["preprocessing"]]
        _cli(argv, quiet=True)
        for s in pio.match([pio.join(out, "features-*-of-*.tfrecord*")]):
            pio.write_bytes(r.path("features", pio.basename(s).replace("features-", f"features-{batch}-", 1)),
                            pio.read_bytes(s))
    print(f"[{batch}] features: {result.featurised} extracted, {result.reused_features} already in the manifest",
          file=sys.stderr)

    # 3. records: all captions so far + the new ones; new images join the training split
    known_ids = set()
    for split_file in pio.match([r.path("data", "*.txt")]):
        if pio.basename(split_file) != "captions.txt":
            known_ids.update(parse_split_file(pio.read_text(split_file)))
    # images already in a split (e.g. landed again) keep their split and captions: no test image leaks into train
    new_ids = sorted({pio.image_id_from_path(p) for p, _ in with_caps} - known_ids)
    if not new_ids:
        result.status = "nothing-new"
        result.reasons.append(f"all {len(with_caps)} landed image(s) are already in the root's splits")
        write_consumed(r, batch, with_caps)
        result.seconds = time.time() - start
        return result
    result.reasons.append(f"{len(new_ids)} image(s) join the training split")
    base_caps = read_captions([r.path("data", "captions.txt")], "flickr8k")
    merged = dict(base_caps)
    for i in new_ids:
        merged[i] = new_caps[i]
    captions_file = pio.join(attempt, "captions.txt")
    pio.write_text(captions_file, _flickr8k_lines((i, c) for i, cs in merged.items() for c in cs))
    train_ids = parse_split_file(pio.read_text(r.path("data", "train.txt")))
    train_ids += [i for i in new_ids if i not in set(train_ids)]
    train_file = pio.join(attempt, "train.txt")
    pio.write_text(train_file, "".join(f"{i}.jpg\n" for i in train_ids))
    old_dir = r.version_dir(current)
    vocab_file = pio.join(old_dir, "vocab.txt")
    old_vocab = Vocabulary.from_text(pio.read_text(vocab_file))
    tokens = None
    if config.extend_vocab:
        tokens = extended_vocabulary(old_vocab.tokens, [c for i in new_ids for c in new_caps[i]], settings.clean,
                                     settings.min_count)
        vocab_file = pio.join(attempt, "vocab.txt")
        pio.write_text(vocab_file, Vocabulary(tuple(tokens)).to_text())
        print(f"[{batch}] vocabulary extended {len(old_vocab)} -> {len(tokens)} tokens", file=sys.stderr)
    data = _build_data(r, settings, pio.join(attempt, "data"), vocab_file, captions_file, train_file,
                       config.pipeline_args)

    # 4. warm start, train, evaluate (model-side code on local copies)
    version = r.next_version()
    result.version = version
    with local_dir(data) as local_data, local_dir(old_dir) as local_old, \
            local_dir(r.version_dir(version), download=False, upload=True) as local_new:
        ws = write_warm_start(local_old, local_new, tokens)
        print(f"[{batch}] {version}: warm start from {current} (vocabulary {ws['vocab_size']})", file=sys.stderr)
        _cli(["train", "--data", local_data, "--model-dir", local_new, *settings.arch_flags,
              "--epochs", str(config.epochs), "--batch-size", str(config.batch_size), *config.train_args],
             quiet=True)
        with tempfile.TemporaryDirectory(prefix="captionbeam-eval-") as tmp:
            result.new_metrics = evaluate(local_new, local_data, config.eval_split, config.beam_size,
                                          os.path.join(tmp, "new"))
            old_info = r.info(current)
            if config.extend_vocab or not old_info.metrics:
                result.old_metrics = evaluate(local_old, local_data, config.eval_split, config.beam_size,
                                              os.path.join(tmp, "old"))
            else:
                result.old_metrics = dict(old_info.metrics)

    # 5. the gate
    decision = promotion_decision(result.old_metrics, result.new_metrics, config.tolerance, config.min_drop)
    result.reasons += decision.reasons
    info = VersionInfo(name=version, parent=current, created=now(), metrics=result.new_metrics,
                       train_images=len(train_ids), vocab_size=len(tokens) if tokens else len(old_vocab),
                       batch=batch, promoted=decision.promote, decision=decision.reasons)
    r.write_info(info)
    if decision.promote:
        write_atomic(r.path("data", "captions.txt"), pio.read_text(captions_file))
        write_atomic(r.path("data", "train.txt"), pio.read_text(train_file))
        r.set_current(version)
        result.status, result.current = "promoted", version
    else:
        result.status = "rejected"
    write_atomic(r.path("state", "attempts", f"{batch}.json"), result.to_json() + "\n")
    write_consumed(r, batch, with_caps)
    result.seconds = time.time() - start
    return result


def describe(result: AttemptResult) -> List[str]:
    lines = [f"{result.batch}: {result.status}"
             + (f" — {result.version} is now current" if result.status == "promoted" and result.version else "")
             + (f" — {result.current} stays current" if result.status == "rejected" else "")]
    if result.new_images:
        lines.append(f"  new images: {result.new_images} ({result.featurised} featurised, "
                     f"{result.reused_features} reused from the feature manifest)"
                     + (f"; {result.without_captions} without captions" if result.without_captions else ""))
    for reason in result.reasons:
        lines.append(f"  {reason}")
    if result.seconds:
        lines.append(f"  {result.seconds:.1f}s")
    return lines


def watch(config: RetrainConfig, interval: float, max_polls: Optional[int] = None,
          on_result=None) -> List[AttemptResult]:
    """Poll ``config.images`` every ``interval`` seconds; retrain when ``min_new`` new images with
    captions arrived. Safe to stop at any time and restart: a batch counts as consumed only once its
    decision is written."""
    results = []
    polls = 0
    while max_polls is None or polls < max_polls:
        polls += 1
        result = retrain_once(config)
        results.append(result)
        if on_result:
            on_result(result)
        if max_polls is not None and polls >= max_polls:
            break
        time.sleep(interval)
    return results
