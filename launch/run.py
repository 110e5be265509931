"""``captionbeam run``: the whole chain, one stage after another, each stage the real subcommand
(called in-process through :func:`launch.cli.main`), so ``run`` does nothing a user could not do by
hand with the command lines it prints.

Stages (workdir ``W``, local or ``gs://``)::

    sample    -> W/sample/        (only without --images: the embedded sample dataset)
    features  -> W/features/      captionbeam features   (Beam)
    captions  -> W/data/          captionbeam captions   (Beam; vocabulary + join)
    train     -> W/model/         captionbeam train
    evaluate  -> W/eval/          captionbeam evaluate   (metrics on the held-out split)
    caption   -> W/eval/captions.jsonl   captionbeam caption on a few held-out images
    report    -> W/report/index.html

Every stage leaves ``W/stages/<stage>.json`` (its command line, seconds and summary); with
``--resume`` a stage whose marker holds the same command line is not run again.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, TextIO

import pipelines.io as pio
from launch.config import RunConfig

BEAM_STAGES = ("features", "captions")
THUMBNAIL = "thumbnail"


def build_thumbnail_encoder(path: str, image_size: int, grid: int = 16, spatial: bool = False) -> str:
    """Write the embedded default's tiny encoder to ``path`` (a ``.keras`` file ``captionbeam
    features --encoder PATH`` loads like any user model): the image rescaled to -1..1 and
    average-pooled to a ``grid`` x ``grid`` colour thumbnail; flattened (merge / inject), or as a
    (grid/2, grid/2, 12) map (2x2 cells stacked per location) for the attention model.

    No weights to download and nothing random: on the sample dataset (coloured shapes at positions
    on backgrounds) this keeps what the captions talk about, so a model trained for a minute or two
    learns it. Real data wants a real encoder (``--encoder mobilenet --weights imagenet``)."""
    import keras
    if image_size % grid:
        raise ValueError(f"--image-size {image_size} must be a multiple of the thumbnail grid {grid}")
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inp)
    x = keras.layers.AveragePooling2D(image_size // grid, name="thumbnail")(x)
    if spatial:
        half = grid // 2
        x = keras.layers.Reshape((half, 2, half, 2, 3))(x)
        x = keras.layers.Permute((1, 3, 2, 4, 5))(x)
        x = keras.layers.Reshape((half, half, 12), name="cells")(x)
    else:
        x = keras.layers.Flatten(name="features")(x)
    model = keras.Model(inp, x, name=f"thumbnail{grid}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    return path


class StageError(RuntimeError):
    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage} failed: {message}")
        self.stage = stage


@dataclass
class StageResult:
    name: str
    argv: List[str]
    seconds: float = 0.0
    summary: str = ""
    cached: bool = False
    output: str = ""

    def marker(self) -> dict:
        return {"name": self.name, "argv": self.argv, "seconds": round(self.seconds, 2), "summary": self.summary}


class _Tee(io.TextIOBase):
    """Write to the console (indented) and keep a copy."""

    def __init__(self, console: TextIO, prefix: str = "    "):
        self.console, self.prefix, self.buffer, self._bol = console, prefix, io.StringIO(), True

    def write(self, text: str) -> int:
        self.buffer.write(text)
        out = []
        for ch in text:
            if self._bol and ch != "\n":
                out.append(self.prefix)
            out.append(ch)
            self._bol = ch == "\n"
        self.console.write("".join(out))
        self.console.flush()
        return len(text)

    def flush(self):
        self.console.flush()

    def getvalue(self) -> str:
        return self.buffer.getvalue()


@dataclass
class Layout:
    workdir: str

    def p(self, *parts: str) -> str:
        return pio.join(self.workdir, *parts)

    @property
    def sample(self) -> str: return self.p("sample")
    @property
    def features(self) -> str: return self.p("features")
    @property
    def data(self) -> str: return self.p("data")
    @property
    def model(self) -> str: return self.p("model")
    @property
    def eval(self) -> str: return self.p("eval")
    @property
    def report(self) -> str: return self.p("report")
    @property
    def stages(self) -> str: return self.p("stages")


def grounding(scenes_jsonl: str, predictions: Mapping[str, str]) -> Dict[str, float]:
    """On the sample dataset, how often the words of a caption are true of its image: of the colour
    (shape) words a caption uses, the fraction naming a colour (shape) that is drawn in it; next to
    the same figure with the captions given to other images (what an image-blind model scores)."""
    from pipelines.sample import COLOURS, SHAPE_PLURALS, SHAPE_WORDS
    word_shape = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
    word_shape.update({SHAPE_PLURALS[w]: s for w, s in list(word_shape.items()) if w in SHAPE_PLURALS})
    scenes = {}
    for line in pio.read_text(scenes_jsonl).splitlines():
        if line.strip():
            row = json.loads(line)
            colours = {o["colour"] for o in row["objects"]} | set(str(row.get("background", "")).split("-"))
            scenes[row["image_id"]] = (colours, {o["shape"] for o in row["objects"]})
    ids = [i for i in predictions if i in scenes]

    def score(pairs):
        hit = {"colour": [0, 0], "shape": [0, 0]}
        for scene_id, caption in pairs:
            colours, shapes = scenes[scene_id]
            for w in caption.lower().split():
                if w in COLOURS:
                    hit["colour"][0] += w in colours
                    hit["colour"][1] += 1
                elif w in word_shape:
                    hit["shape"][0] += word_shape[w] in shapes
                    hit["shape"][1] += 1
        return {k: (a / b if b else 0.0) for k, (a, b) in hit.items()}

    own = score((i, predictions[i]) for i in ids)
    shifted = score((i, predictions[j]) for i, j in zip(ids, ids[1:] + ids[:1]))
    return {"colour_words_true": own["colour"], "colour_words_true_image_blind": shifted["colour"],
            "shape_words_true": own["shape"], "shape_words_true_image_blind": shifted["shape"]}


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{int(s % 60):02d}s"


class RunPipeline:
    """Drives the stages of ``captionbeam run`` for one :class:`RunConfig`."""

    def __init__(self, config: RunConfig, pipeline_args: Sequence[str] = (), train_profile_args: Sequence[str] = (),
                 stage_pipeline_args: Optional[Callable[[str], List[str]]] = None, resume: bool = False,
                 console: Optional[TextIO] = None):
        self.config = config.validate()
        self.layout = Layout(config.workdir if "://" in config.workdir else os.path.abspath(config.workdir))
        self.pipeline_args = list(pipeline_args)
        self.train_profile_args = list(train_profile_args)
        self.stage_pipeline_args = stage_pipeline_args or (lambda stage: list(self.pipeline_args))
        self.resume = resume
        self.console = console or sys.stdout
        self.results: List[StageResult] = []
        self.metrics: Dict[str, object] = {}
        self.captions: List[dict] = []

    # ------------------------------------------------------------------ inputs
    def data_inputs(self):
        """(image globs, captions file, {split: file}) for the configured data or the sample."""
        d = self.config.data
        if d.is_sample:
            s = self.layout.sample
            return ([pio.join(s, "images", "*.jpg")], pio.join(s, "captions.txt"),
                    {n: pio.join(s, f"{n}.txt") for n in ("train", "dev", "test")})
        return list(d.images), d.captions, dict(d.splits)

    # ------------------------------------------------------------------ command lines
    def commands(self) -> List[tuple]:
        """(stage, argv) of every command stage, in order (the plan a dry run prints)."""
        c, L = self.config, self.layout
        images, captions, splits = self.data_inputs()
        plan = []
        if c.data.is_sample:
            plan.append(("sample", ["sample", "--output", L.sample, "--images", str(c.sample.images),
                                    "--size", str(c.sample.size), "--seed", str(c.sample.seed)]))
        f = c.features
        plan.append(("features", ["features", "--images", *images, "--output", L.features, "--encoder", self.encoder,
                                  "--weights", f.weights, "--image-size", str(f.image_size),
                                  "--batch-size", str(f.batch_size), "--overwrite", *f.extra,
                                  *self.stage_pipeline_args("features")]))
        cap = ["captions", "--captions", captions, "--format", c.data.caption_format]
        for name, path in splits.items():
            cap += ["--split", f"{name}={path}"]
        cap += ["--features", L.features, "--output", L.data, "--clean", c.captions.clean,
                "--min-count", str(c.captions.min_count), "--overwrite", *c.captions.extra,
                *self.stage_pipeline_args("captions")]
        plan.append(("captions", cap))
        t = c.train
        plan.append(("train", ["train", "--data", L.data, "--model-dir", L.model, "--arch", t.arch,
                               "--epochs", str(t.epochs), "--batch-size", str(t.batch_size),
                               "--learning-rate", str(t.learning_rate),
                               *self.train_profile_args, *t.extra]))
        e = c.evaluate
        plan.append(("evaluate", ["evaluate", "--model-dir", L.model, "--data", L.data, "--split", e.split,
                                  "--beam-size", str(e.beam_size), "--output", self.predictions_file,
                                  "--json", *e.extra]))
        return plan

    @property
    def encoder(self) -> str:
        """The ``--encoder`` of the features stage: the thumbnail encoder's file in the workdir, or as given."""
        if self.config.features.encoder == THUMBNAIL:
            return pio.join(self.layout.workdir, "encoder", f"{THUMBNAIL}.keras")
        return self.config.features.encoder

    def prepare_encoder(self) -> None:
        if self.config.features.encoder != THUMBNAIL:
            return
        spatial = self.config.train.arch == "attention"
        if pio.is_gcs(self.encoder):
            with tempfile.TemporaryDirectory(prefix="captionbeam-encoder-") as tmp:
                local = build_thumbnail_encoder(os.path.join(tmp, "thumbnail.keras"), self.config.features.image_size,
                                                spatial=spatial)
                with open(local, "rb") as fh:
                    pio.write_bytes(self.encoder, fh.read())
        else:
            build_thumbnail_encoder(self.encoder, self.config.features.image_size, spatial=spatial)

    @property
    def predictions_file(self) -> str:
        return pio.join(self.layout.eval, f"{self.config.evaluate.split}.predictions.jsonl")

    @property
    def metrics_file(self) -> str:
        return pio.join(self.layout.eval, f"{self.config.evaluate.split}.predictions.metrics.json")

    # ------------------------------------------------------------------ stage running
    def _header(self, n: int, total: int, name: str, argv: Sequence[str]) -> None:
        print(f"\n[{n}/{total}] {name}", file=self.console)
        print("    $ " + shlex.join(["captionbeam", *argv]), file=self.console)
        self.console.flush()

    def _marker_path(self, name: str) -> str:
        return pio.join(self.layout.stages, f"{name}.json")

    def _cached(self, name: str, argv: List[str]) -> Optional[StageResult]:
        if not self.resume or not pio.exists(self._marker_path(name)):
            return None
        m = pio.read_json(self._marker_path(name))
        if m.get("argv") != argv:
            return None
        return StageResult(name=name, argv=argv, seconds=float(m.get("seconds", 0)), summary=m.get("summary", ""),
                           cached=True)

    def run_command(self, name: str, argv: List[str]) -> StageResult:
        """One subcommand in-process; its stdout is shown (indented) and kept."""
        from launch.cli import main as cli_main
        cached = self._cached(name, argv)
        if cached:
            print(f"    (done earlier, --resume: {cached.summary})", file=self.console)
            return cached
        tee = _Tee(self.console)
        start = time.time()
        try:
            with contextlib.redirect_stdout(tee):
                rc = cli_main(list(argv))
        except SystemExit as e:  # argparse errors inside a stage
            rc = e.code if isinstance(e.code, int) else 2
        seconds = time.time() - start
        if rc:
            raise StageError(name, f"`captionbeam {argv[0]}` exited with status {rc}")
        return StageResult(name=name, argv=argv, seconds=seconds, output=tee.getvalue())

    @staticmethod
    def _clear(directory: str) -> None:
        """Remove an output directory of this run's own before its stage runs again."""
        if pio.is_gcs(directory):
            pio.delete(pio.match([pio.join(directory, "**")]))
        elif os.path.isdir(directory):
            import shutil
            shutil.rmtree(directory)

    def _finish(self, result: StageResult) -> StageResult:
        if not result.cached:
            pio.write_json(self._marker_path(result.name), result.marker())
        print(f"    -> {result.name} {'(cached) ' if result.cached else ''}done in {_fmt_seconds(result.seconds)}"
              + (f": {result.summary}" if result.summary else ""), file=self.console)
        self.results.append(result)
        return result

    # ------------------------------------------------------------------ summaries
    def _summary(self, name: str, result: StageResult) -> str:
        L = self.layout
        try:
            if name == "sample":
                n = len(pio.match([pio.join(L.sample, "images", "*.jpg")]))
                return f"{n} images with 5 captions each"
            if name == "features":
                spec = pio.read_json(pio.join(L.features, "features_spec.json"))
                rate = spec.get("count", 0) / max(result.seconds, 1e-9)
                return (f"{spec.get('count')} feature records {tuple(spec.get('feature_shape', []))} "
                        f"({spec.get('encoder')}), {spec.get('dead_letters', 0)} dead letters, {rate:.1f} images/s")
            if name == "captions":
                stats = pio.read_json(pio.join(L.data, "stats.json"))
                splits = ", ".join(f"{k} {v['images']}" for k, v in stats["splits"].items())
                return f"vocabulary {stats['vocab_size']} tokens; images per split: {splits}"
            if name == "train":
                from launch.report import load_history
                h = load_history(L.model) or {}
                loss = [x for x in h.get("loss", h.get("train_loss", [])) if x is not None]
                val = [x for x in h.get("val_loss", []) if x is not None]
                if loss:
                    return (f"{len(loss)} epochs, loss {loss[0]:.3f} -> {loss[-1]:.3f}"
                            + (f", val_loss {val[0]:.3f} -> {min(val):.3f} (best)" if val else ""))
            if name == "evaluate":
                from launch.report import flatten_metrics
                m = flatten_metrics(self.metrics)
                keys = [("bleu1", "BLEU-1"), ("bleu4", "BLEU-4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr-D")]
                return ", ".join(f"{label} {m[k]:.3f}" for k, label in keys if k in m)
        except (OSError, KeyError, ValueError) as e:
            return f"(no summary: {type(e).__name__}: {e})"
        return ""

    def _parse_metrics(self, output: str) -> Dict[str, object]:
        """The JSON object ``evaluate --json`` printed (the last top-level JSON value in its output)."""
        path = self.metrics_file
        if pio.exists(path):
            return pio.read_json(path)
        text = output.strip()
        for start in [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")]:
            try:
                return json.loads(text[start:])
            except json.JSONDecodeError:
                continue
        return {}

    # ------------------------------------------------------------------ held-out captions
    def _references(self) -> Dict[str, List[str]]:
        from model.caption_files import group, parse
        _, captions, _ = self.data_inputs()
        return dict(group(parse(pio.read_text(captions), self.config.data.caption_format, source=captions)))

    def _held_out_images(self) -> List[str]:
        from model.caption_files import parse_split_file
        images, _, splits = self.data_inputs()
        split_file = splits.get(self.config.evaluate.split)
        ids = parse_split_file(pio.read_text(split_file)) if split_file else []
        by_id = {pio.image_id_from_path(p): p for p in pio.match(images)}
        chosen = [by_id[i] for i in ids if i in by_id]
        return chosen[: self.config.evaluate.caption_images]

    def caption_held_out(self, n: int, total: int) -> StageResult:
        paths = self._held_out_images()
        out_jsonl = pio.join(self.layout.eval, "captions.jsonl")
        argv = ["caption", "--model-dir", self.layout.model, *paths, "--beam-size",
                str(self.config.evaluate.beam_size), "--json"]
        attention = self.config.train.arch == "attention"
        if attention:
            argv += ["--attention-plot", pio.join(self.layout.eval, "attention")]
        self._header(n, total, "caption", argv)
        # features_spec.json names a model-file encoder by its base name, which the captioner resolves
        # against the working directory: run the stage beside the thumbnail encoder's file
        here = (os.path.dirname(self.encoder) if self.config.features.encoder == THUMBNAIL
                and not pio.is_gcs(self.encoder) else os.getcwd())
        with contextlib.chdir(here):
            result = self.run_command("caption", argv) if paths else StageResult("caption", argv)
        rows = []
        for line in result.output.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        if result.cached and not rows and pio.exists(out_jsonl):
            rows = [json.loads(l) for l in pio.read_text(out_jsonl).splitlines() if l.strip()]
        refs = self._references()
        for r in rows:
            iid = r.get("image_id") or pio.image_id_from_path(r.get("path", ""))
            r["image_id"] = iid
            r["references"] = refs.get(iid, [])
            if attention:
                plot = pio.join(self.layout.eval, "attention", f"{iid}.attention.png")
                r["attention"] = plot if pio.exists(plot) else None
        self.captions = rows
        pio.write_text(out_jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        result.summary = f"{len(rows)} held-out images captioned"
        return self._finish(result)

    # ------------------------------------------------------------------ report
    def write_report(self, n: int, total: int) -> Optional[str]:
        from launch.report import GalleryItem, ReportData, find_curves_png, load_history, write_report
        print(f"\n[{n}/{total}] report", file=self.console)
        start = time.time()
        c = self.config
        gallery = [GalleryItem(image=r.get("path", ""), generated=r.get("caption", ""),
                               references=r.get("references", []), image_id=r.get("image_id", ""),
                               attention=r.get("attention"), note=f"held out ({c.evaluate.split} split)")
                   for r in self.captions if r.get("path")]
        data = ReportData(
            title=f"captionbeam run: {c.train.arch} model on {'the sample dataset' if c.data.is_sample else 'your data'}",
            metrics=self.metrics, gallery=gallery, curves_png=find_curves_png(self.layout.model),
            history=load_history(self.layout.model),
            stages=[{"name": r.name, "seconds": r.seconds, "summary": r.summary} for r in self.results],
            settings=c.to_dict(),
            notes=[f"workdir: {self.layout.workdir}",
                   f"metrics on the {c.evaluate.split} split, beam size {c.evaluate.beam_size}"])
        if pio.is_gcs(self.layout.report):
            with tempfile.TemporaryDirectory(prefix="captionbeam-report-") as tmp:
                write_report(data, tmp)
                for root, _, files in os.walk(tmp):
                    for name in files:
                        local = os.path.join(root, name)
                        rel = os.path.relpath(local, tmp).replace(os.sep, "/")
                        with open(local, "rb") as fh:
                            pio.write_bytes(pio.join(self.layout.report, rel), fh.read())
            path = pio.join(self.layout.report, "index.html")
        else:
            path = write_report(data, self.layout.report)
        result = StageResult("report", [], seconds=time.time() - start,
                             summary=f"{len(gallery)} images, {len(self.metrics) and 'metrics, ' or ''}curves -> {path}")
        self._finish(result)
        return path

    # ------------------------------------------------------------------ all
    def run(self) -> Dict[str, object]:
        plan = self.commands()
        total = len(plan) + 2
        started = time.time()
        print(f"captionbeam run: {total} stages into {self.layout.workdir}", file=self.console)
        for n, (name, argv) in enumerate(plan, 1):
            self._header(n, total, name, argv)
            if name == "features" and not self._cached(name, argv):
                self.prepare_encoder()
            if name == "train" and not self._cached(name, argv):
                self._clear(self.layout.model)   # a model dir with checkpoints would be resumed, not retrained
            result = self.run_command(name, argv)
            if name == "evaluate":
                self.metrics = self._parse_metrics("" if result.cached else result.output)
                if self.config.data.is_sample and pio.exists(self.predictions_file):
                    preds = {}
                    for line in pio.read_text(self.predictions_file).splitlines():
                        if line.strip():
                            row = json.loads(line)
                            preds[row["image_id"]] = row["caption"]
                    self.metrics["grounding"] = grounding(pio.join(self.layout.sample, "scenes.jsonl"), preds)
            if not result.summary:
                result.summary = self._summary(name, result)
            self._finish(result)
        self.caption_held_out(len(plan) + 1, total)
        report = self.write_report(total, total) if self.config.report else None
        elapsed = time.time() - started
        self.print_summary(elapsed, report)
        return {"metrics": self.metrics, "captions": self.captions, "report": report, "seconds": elapsed,
                "stages": [asdict(r) | {"output": ""} for r in self.results]}

    def print_summary(self, elapsed: float, report: Optional[str]) -> None:
        from launch.report import metrics_rows
        out = self.console
        print(f"\n== done in {_fmt_seconds(elapsed)} ==", file=out)
        print("stage        seconds", file=out)
        for r in self.results:
            print(f"  {r.name:<10}{r.seconds:>8.1f}{'  (cached)' if r.cached else ''}", file=out)
        rows = metrics_rows(self.metrics)
        if rows:
            print(f"metrics ({self.config.evaluate.split} split):", file=out)
            for name, value in rows:
                print(f"  {name:<20}{value:.4f}", file=out)
        if self.captions:
            print("captions of held-out images:", file=out)
            for r in self.captions:
                print(f"  {r.get('image_id', '')}: {r.get('caption', '')}", file=out)
                if r.get("references"):
                    print(f"  {'':{len(r.get('image_id', ''))}}  (reference: {r['references'][0]})", file=out)
        if report:
            print(f"report: {report}", file=out)
        out.flush()
