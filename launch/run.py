"""``captionbeam run``: the whole chain, one stage after another. Each stage is a real subcommand's
typed call (its ``config_from_args`` and ``run``), and ``run`` prints the equivalent ``captionbeam``
command line first, so it does nothing a user could not do by hand with the lines it prints.

Stages (workdir ``W``, local or ``gs://``)::

    sample    -> W/sample/        (only without --images: the embedded sample dataset)
    features  -> W/features/      captionbeam features   (Beam)
    captions  -> W/data/          captionbeam captions   (Beam; vocabulary + join)
    train     -> W/model/         captionbeam train
    evaluate  -> W/eval/          captionbeam evaluate   (metrics on the held-out split)
    caption   -> W/eval/captions.jsonl   captionbeam caption on a few held-out images
    report    -> W/report/index.html

Every stage is the command's typed config (``command_args.stage``: what its ``config_from_args`` makes)
run by its typed ``run`` -> Result. Every stage leaves ``W/stages/<stage>.json`` (its config as JSON data,
its Beam flags, the command line printed, seconds and summary); with ``--resume`` a stage whose marker
holds the same config and Beam flags is not run again. :func:`recorded_captions_config` reads the
captions stage's config back, typed (``retrain --from-run``).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, TextIO

import captionbeam.pipelines.io as pio
from captionbeam.launch.command_args import CommandError, Stage, stage
from captionbeam.launch.command_face import CommandFault
from captionbeam.launch.commands import caption as caption_cmd
from captionbeam.launch.commands import captions as captions_cmd
from captionbeam.launch.commands import evaluate as evaluate_cmd
from captionbeam.launch.commands import features as features_cmd
from captionbeam.launch.commands import sample as sample_cmd
from captionbeam.launch.commands import train as train_cmd
from captionbeam.launch.config import RunConfig
from captionbeam.launch.grounding import grounding
from captionbeam.model import jsonl
from captionbeam.model.thumbnail import build_thumbnail_encoder
from captionbeam.pipelines.redact import write_record

BEAM_STAGES = ("features", "captions")
# the commands run calls, by stage name (each through its typed config_from_args -> run -> Result)
STAGE_COMMANDS = {"sample": sample_cmd, "features": features_cmd, "captions": captions_cmd, "train": train_cmd,
                  "evaluate": evaluate_cmd}
THUMBNAIL = "thumbnail"


class StageError(CommandFault):
    """A stage of ``run`` failed (exit FAULT); the message names the stage and says why."""
    hint = "fix it and re-run with --resume to skip the stages that finished"

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage} failed: {message}")
        self.stage = stage


@dataclass
class StageResult:
    name: str
    record: Dict[str, object]       # Stage.record(): the typed config as JSON data and the redacted Beam flags
    line: str = ""
    seconds: float = 0.0
    summary: str = ""
    cached: bool = False

    def marker(self) -> dict:
        return {"name": self.name, **self.record, "line": self.line, "seconds": round(self.seconds, 2),
                "summary": self.summary}


def marker_path(workdir: str, name: str) -> str:
    return pio.join(workdir, "stages", f"{name}.json")


def recorded_captions_config(workdir: str):
    """The captions stage's typed config (``pipelines.captions.CaptionsConfig``) as the run in ``workdir``
    recorded it in ``stages/captions.json``; None without one (or a marker of an older run, without a config)."""
    from captionbeam.pipelines.captions import CaptionsConfig
    path = marker_path(workdir, "captions")
    config = pio.read_json(path).get("config") if pio.exists(path) else None
    if not isinstance(config, dict):
        return None
    try:
        return CaptionsConfig(**{**config, "splits": tuple((n, f) for n, f in config.get("splits", ()))})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a captions stage record: {e}") from None


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


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{int(s % 60):02d}s"


def check_encoder(config: RunConfig) -> None:
    """The features stage's encoder settings, checked before any stage runs (the embedded thumbnail
    encoder is built by the run itself). Raises ``model.encoders.EncoderError`` naming the flag."""
    f = config.features
    if f.encoder == THUMBNAIL:
        return
    from captionbeam.model.encoders import EncoderConfig, validate_config
    validate_config(EncoderConfig(name=f.encoder, weights=f.weights, image_size=f.image_size))


class RunPipeline:
    """Drives the stages of ``captionbeam run`` for one :class:`RunConfig`."""

    def __init__(self, config: RunConfig, pipeline_args: Sequence[str] = (), train_profile_args: Sequence[str] = (),
                 stage_pipeline_args: Optional[Callable[[str], List[str]]] = None, resume: bool = False,
                 console: Optional[TextIO] = None):
        self.config = config.validate()
        check_encoder(self.config)            # a bad --encoder fails here, before the sample stage
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

    # ------------------------------------------------------------------ stages
    def stages(self) -> List[Stage]:
        """Every command stage's typed config and equivalent command line, in order (the plan a dry run prints)."""
        c, L = self.config, self.layout
        images, captions, splits = self.data_inputs()
        plan = []
        if c.data.is_sample:
            plan.append(stage(sample_cmd, {"output": L.sample, "images": c.sample.images,
                                                "size": c.sample.size, "seed": c.sample.seed}))
        f = c.features
        plan.append(stage(features_cmd, {
            "images": list(images), "output": L.features, "encoder": self.encoder, "weights": f.weights,
            "image_size": f.image_size, "batch_size": f.batch_size, "overwrite": True},
            extra=f.extra, pipeline_args=self.stage_pipeline_args("features")))
        plan.append(stage(captions_cmd, {
            "captions": captions, "format": c.data.caption_format, "splits": list(splits.items()),
            "features": L.features, "output": L.data, "clean": c.captions.clean, "min_count": c.captions.min_count,
            "overwrite": True}, extra=c.captions.extra, pipeline_args=self.stage_pipeline_args("captions")))
        t = c.train
        plan.append(stage(train_cmd, {
            "data": L.data, "model_dir": L.model, "arch": t.arch, "epochs": t.epochs, "batch_size": t.batch_size,
            "learning_rate": t.learning_rate}, extra=[*self.train_profile_args, *t.extra]))
        e = c.evaluate
        plan.append(stage(evaluate_cmd, {
            "model_dir": L.model, "data": L.data, "split": e.split, "beam_size": e.beam_size,
            "output": self.predictions_file}, extra=e.extra))
        return plan

    def caption_stage(self, paths: Sequence[str]) -> Stage:
        values = {"model_dir": self.layout.model, "images": list(paths), "beam_size": self.config.evaluate.beam_size}
        if self.config.train.arch == "attention":
            values["attention_plot"] = pio.join(self.layout.eval, "attention")
        if self.config.features.encoder == THUMBNAIL:
            # features_spec.json names a model-file encoder by its base name: point at the file
            values["encoder_file"] = self.encoder
        return stage(caption_cmd, values)

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
        return evaluate_cmd.metrics_path(self.predictions_file)

    # ------------------------------------------------------------------ stage running
    def _header(self, n: int, total: int, s: Stage) -> None:
        print(f"\n[{n}/{total}] {s.command}", file=self.console)
        print("    $ " + s.line, file=self.console)
        self.console.flush()

    def _marker_path(self, name: str) -> str:
        return marker_path(self.layout.workdir, name)

    def _cached(self, s: Stage) -> Optional[StageResult]:
        """The stage's marker, with --resume, when it holds the same typed config and Beam flags."""
        if not self.resume or not pio.exists(self._marker_path(s.command)):
            return None
        m = pio.read_json(self._marker_path(s.command))
        record = s.record()
        if any(m.get(k) != v for k, v in record.items()):       # markers hold the redacted Beam flags
            return None
        return StageResult(name=s.command, record=record, line=s.line, seconds=float(m.get("seconds", 0)),
                           summary=m.get("summary", ""), cached=True)

    def _say(self, lines: Sequence[str]) -> None:
        for line in lines:
            print("    " + line if line else "", file=self.console)
        self.console.flush()

    def _execute(self, s: Stage):
        """One stage's typed run (its config -> ``run`` -> Result), whose summary lines are printed
        (training prints its own progress and summary as it goes)."""
        module = STAGE_COMMANDS.get(s.command)
        if module is None:
            raise ValueError(f"not a stage of captionbeam run: {s.command}")
        if getattr(module, "BEAM", False):
            result = module.run(s.config, s.runner)
        else:
            result = module.run(s.config)
        if s.command != "train":
            self._say(result.summary_lines())
        return result

    def run_stage(self, s: Stage) -> StageResult:
        """One stage in-process (or its marker, with --resume and the same config)."""
        cached = self._cached(s)
        if cached:
            print(f"    (done earlier, --resume: {cached.summary})", file=self.console)
            return cached
        start = time.time()
        try:
            value = self._execute(s)
        except CommandError as e:
            raise StageError(s.command, str(e)) from None
        except Exception as e:  # noqa: BLE001 - a Beam stage that failed on a portable engine: name the engine
            from captionbeam.launch.beam_options import resolved_options
            from captionbeam.launch.engine_failures import explain_failure
            message = explain_failure(e, resolved_options(s.pipeline_args)) if s.pipeline_args else None
            if message is None:
                raise
            raise StageError(s.command, message) from None
        result = StageResult(name=s.command, record=s.record(), line=s.line, seconds=time.time() - start)
        if s.command == "evaluate":
            self.metrics = value.to_dict()
        result.summary = self._summary(s.command, value, result.seconds)
        return result

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
            from captionbeam.pipelines.crash_points import crash_point
            crash_point(f"run:{result.name}-done")     # the stage's output committed, its marker not yet
            write_record(self._marker_path(result.name), result.marker())
        print(f"    -> {result.name} {'(cached) ' if result.cached else ''}done in {_fmt_seconds(result.seconds)}"
              + (f": {result.summary}" if result.summary else ""), file=self.console)
        self.results.append(result)
        return result

    # ------------------------------------------------------------------ summaries
    def _summary(self, name: str, value, seconds: float) -> str:
        """One line from a stage's typed result (the job's own result object; never its files read back)."""
        try:
            if name == "sample":
                job = value.job
                return f"{job.images} images with {job.captions // max(job.images, 1)} captions each"
            if name == "features":
                value = value.job
                spec = value.spec
                shape = tuple(spec.feature_shape) if spec else ()
                return (f"{value.images_encoded} feature records {shape} ({spec.encoder if spec else '?'}), "
                        f"{value.dead_letters} dead letters, {value.images_encoded / max(seconds, 1e-9):.1f} images/s")
            if name == "captions":
                value = value.job
                splits = ", ".join(f"{k} {value.stats.split_images(k)}" for k in value.stats.ordered_splits())
                return f"vocabulary {value.stats.vocab_size} tokens; images per split: {splits}"
            if name == "train":
                return value.losses_line()
            if name == "evaluate":
                from captionbeam.launch.report import flatten_metrics
                m = flatten_metrics(value.to_dict())
                keys = [("bleu1", "BLEU-1"), ("bleu4", "BLEU-4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr-D")]
                return ", ".join(f"{label} {m[k]:.3f}" for k, label in keys if k in m)
        except (AttributeError, OSError, KeyError, ValueError) as e:
            return f"(no summary: {type(e).__name__}: {e})"
        return ""

    # ------------------------------------------------------------------ held-out captions
    def _references(self) -> Dict[str, List[str]]:
        from captionbeam.model.caption_files import group, parse
        _, captions, _ = self.data_inputs()
        return dict(group(parse(pio.read_text(captions), self.config.data.caption_format, source=captions)))

    def _held_out_images(self) -> List[str]:
        from captionbeam.model.caption_files import parse_split_file
        images, _, splits = self.data_inputs()
        split_file = splits.get(self.config.evaluate.split)
        ids = parse_split_file(pio.read_text(split_file)) if split_file else []
        by_id = {pio.image_id_from_path(p): p for p in pio.match(images)}
        chosen = [by_id[i] for i in ids if i in by_id]
        return chosen[: self.config.evaluate.caption_images]

    def caption_held_out(self, n: int, total: int) -> StageResult:
        paths = self._held_out_images()
        out_jsonl = pio.join(self.layout.eval, "captions.jsonl")
        s = self.caption_stage(paths)
        self._header(n, total, s)
        rows: List[dict] = []
        result = self._cached(s)
        if result:
            print(f"    (done earlier, --resume: {result.summary})", file=self.console)
            if pio.exists(out_jsonl):
                rows = jsonl.loads(pio.read_text(out_jsonl), out_jsonl)
        else:
            start = time.time()
            if paths:
                try:
                    found = caption_cmd.run(s.config, on_row=lambda r: self._say([f"{r['path']}\t{r['caption']}"]))
                except CommandError as e:
                    raise StageError("caption", str(e)) from None
                rows = found.rows
            result = StageResult("caption", s.record(), s.line, seconds=time.time() - start)
        refs = self._references()
        attention = self.config.train.arch == "attention"
        for r in rows:
            iid = r.get("image_id") or pio.image_id_from_path(r.get("path", ""))
            r["image_id"] = iid
            r["references"] = refs.get(iid, [])
            if attention:
                plot = pio.join(self.layout.eval, "attention", f"{iid}.attention.png")
                r["attention"] = plot if pio.exists(plot) else None
        self.captions = rows
        pio.write_text(out_jsonl, jsonl.dumps(rows, sort_keys=True))
        result.summary = f"{len(rows)} held-out images captioned"
        return self._finish(result)

    # ------------------------------------------------------------------ report
    def write_report(self, n: int, total: int) -> Optional[str]:
        from captionbeam.launch.report import GalleryItem, ReportData, find_curves_png, load_history, write_report
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
            from captionbeam.launch.staging import copy_tree
            with tempfile.TemporaryDirectory(prefix="captionbeam-report-") as tmp:
                write_report(data, tmp)
                copy_tree(tmp, self.layout.report)
            path = pio.join(self.layout.report, "index.html")
        else:
            path = write_report(data, self.layout.report)
        result = StageResult("report", {}, seconds=time.time() - start,
                             summary=f"{len(gallery)} images, {len(self.metrics) and 'metrics, ' or ''}curves -> {path}")
        self._finish(result)
        return path

    # ------------------------------------------------------------------ all
    def run(self) -> Dict[str, object]:
        plan = self.stages()
        total = len(plan) + 2
        started = time.time()
        print(f"captionbeam run: {total} stages into {self.layout.workdir}", file=self.console)
        for n, s in enumerate(plan, 1):
            self._header(n, total, s)
            if s.command == "features" and not self._cached(s):
                self.prepare_encoder()
            if s.command == "train" and not self._cached(s):
                self._clear(self.layout.model)   # a model dir with checkpoints would be resumed, not retrained
            result = self.run_stage(s)
            if s.command == "evaluate":
                if result.cached:
                    self.metrics = pio.read_json(self.metrics_file) if pio.exists(self.metrics_file) else {}
                if self.config.data.is_sample and pio.exists(self.predictions_file):
                    preds = {row["image_id"]: row["caption"]
                             for row in jsonl.loads(pio.read_text(self.predictions_file), self.predictions_file)}
                    self.metrics["grounding"] = grounding(pio.join(self.layout.sample, "scenes.jsonl"), preds)
            self._finish(result)
        self.caption_held_out(len(plan) + 1, total)
        report = self.write_report(total, total) if self.config.report else None
        elapsed = time.time() - started
        self.print_summary(elapsed, report)
        return {"metrics": self.metrics, "captions": self.captions, "report": report, "seconds": elapsed,
                "stages": [asdict(r) for r in self.results]}

    def print_summary(self, elapsed: float, report: Optional[str]) -> None:
        from captionbeam.launch.report import metrics_rows
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
