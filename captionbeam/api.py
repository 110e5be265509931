"""The Python API: caption images from a notebook or a service, run a job from a typed config.

    import captionbeam
    captioner = captionbeam.Captioner.load("models/merge")          # a model dir or a captionbeam export
    for c in captioner.caption(["photos/dog.jpg", open("cat.png", "rb").read()]):
        print(c.source, c.caption if c.ok else c.error)

    config = captionbeam.job_config("bulk", images=["photos/*.jpg"], model_dir="models/merge", output="out")
    result = captionbeam.run_job(config)                             # the command's typed result
    print("\\n".join(result.summary_lines()))

Everything is imported when first used: ``import captionbeam`` loads neither TensorFlow nor Beam.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

ImageInput = Union[str, bytes, "os.PathLike[str]"]


@dataclass(frozen=True)
class Caption:
    """One image's caption, or why it has none. ``source``: the path, or ``<bytes #i>`` for raw bytes."""
    source: str
    caption: Optional[str]
    log_prob: Optional[float] = None
    error: Optional[str] = None          # "ErrorClass: message" when the image could not be captioned

    @property
    def ok(self) -> bool:
        return self.error is None


def _source(item: ImageInput, i: int) -> str:
    return f"<bytes #{i}>" if isinstance(item, (bytes, bytearray)) else os.fspath(item)


def _data(item: ImageInput) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    from captionbeam.pipelines.user_files import read_user_file    # the one reader: regular files, --max-bytes
    return read_user_file(os.fspath(item))


def _failed(source: str, e: BaseException) -> Caption:
    return Caption(source=source, caption=None, error=f"{type(e).__name__}: {e}")


class Captioner:
    """A loaded model: a training model directory (``captionbeam train --model-dir``) or an export
    (``captionbeam export --output``: a directory with ``saved_model.pb``; decoding is baked into it)."""

    def __init__(self, path: str, model: Any, exported: bool, max_pixels: int):
        self.path, self._model, self.exported, self.max_pixels = path, model, exported, max_pixels

    @classmethod
    def load(cls, path: str, beam_size: Optional[int] = None, max_length: Optional[int] = None,
             batch_size: int = 32, max_pixels: Optional[int] = None) -> "Captioner":
        """``beam_size`` / ``max_length``: the model's defaults when None; an export accepts only its own."""
        import captionbeam.pipelines.io as pio
        from captionbeam.pipelines.images import DEFAULT_MAX_PIXELS
        path = os.fspath(path)
        if pio.exists(pio.join(path, "saved_model.pb")):
            import tensorflow as tf
            from captionbeam.model.export import check_serving_signature, read_metadata
            meta = read_metadata(path)
            for name, given in (("beam_size", beam_size), ("max_length", max_length)):
                if given is not None and int(given) != int(meta[name]):
                    raise ValueError(f"{name}={given}: {path} is an export whose {name} is {meta[name]} (baked in)")
            check_serving_signature(path)
            return cls(path, tf.saved_model.load(path), exported=True, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        from captionbeam.model.captioner import Captioner as ModelCaptioner
        model = ModelCaptioner.load(path, beam_size=beam_size or 1, max_length=max_length, batch_size=batch_size)
        return cls(path, model, exported=False, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)

    def caption(self, images: Sequence[ImageInput]) -> List[Caption]:
        """One :class:`Caption` per input, in order; an unreadable or undecodable image gets ``error``."""
        items = list(images)
        return self._caption_export(items) if self.exported else self._caption_model(items)

    def _caption_model(self, items: Sequence[ImageInput]) -> List[Caption]:
        from captionbeam.pipelines.images import ImageDecodeError, decode_image
        out: List[Optional[Caption]] = [None] * len(items)
        todo, pixels = [], []
        for i, item in enumerate(items):
            try:
                pixels.append(decode_image(_data(item), max_pixels=self.max_pixels))
                todo.append(i)
            except (OSError, ImageDecodeError, ValueError) as e:
                out[i] = _failed(_source(item, i), e)
        for i, img in zip(todo, pixels):
            try:
                r = self._model.caption_images([img])[0]
                out[i] = Caption(source=_source(items[i], i), caption=r.caption, log_prob=float(r.log_prob))
            except Exception as e:  # noqa: BLE001 - one image's failure is its own
                out[i] = _failed(_source(items[i], i), e)
        return [c for c in out if c is not None]

    def _caption_export(self, items: Sequence[ImageInput]) -> List[Caption]:
        import tensorflow as tf
        out = []
        for i, item in enumerate(items):
            source = _source(item, i)
            try:
                res = self._model.signatures["serving_default"](images=tf.constant([_data(item)], tf.string))
                valid = bool(res["valid"].numpy()[0])
                out.append(Caption(source=source, caption=res["captions"].numpy()[0].decode("utf-8"),
                                   log_prob=float(res["log_probs"].numpy()[0])) if valid else
                           Caption(source=source, caption=None, error="NotAnImageError: the export could not "
                                                                      "decode these bytes (valid=False)"))
            except Exception as e:  # noqa: BLE001 - one image's failure is its own
                out.append(_failed(source, e))
        return out


def job_config(command: str, **flags: Any):
    """The typed config ``captionbeam COMMAND`` would build from these flags (by ``dest`` name, e.g.
    ``model_dir=``), with the command's own defaults and validators; ValueError naming a bad flag."""
    from captionbeam.launch.command_args import stage
    return stage(_command(command), flags).config


def run_job(config: Any, pipeline_args: Sequence[str] = ()):
    """Run the command that takes ``config`` (``<Command>Config``, ``<Command>CommandConfig`` or
    ``<Command>Job``, as its ``config_from_args`` makes it: see :func:`job_config`) and return its typed
    result. Beam jobs take ``pipeline_args`` (Beam flags, e.g. ``["--runner=DirectRunner"]``)."""
    from captionbeam.launch.cli import COMMANDS
    kind = type(config).__name__.lower()
    for name, _ in COMMANDS:
        stem = name.replace("-", "")
        if kind in (f"{stem}config", f"{stem}commandconfig", f"{stem}job"):
            module = _command(name)
            if not hasattr(module, "run"):
                break
            import inspect
            if "runner" in inspect.signature(module.run).parameters:    # a Beam job: its RunnerFlags
                from captionbeam.pipelines.options import RunnerFlags
                return module.run(config, runner=RunnerFlags.plain(pipeline_args))
            return module.run(config)
    raise TypeError(f"run_job: no captionbeam command runs a {type(config).__name__}")


def _command(name: str):
    import importlib
    return importlib.import_module(f"captionbeam.launch.commands.{name.replace('-', '_')}")
