"""captionbeam: distributed batch image captioning on Apache Beam and tf.distribute.

The one import root of the project: ``captionbeam.model`` (TensorFlow/Keras, no Beam),
``captionbeam.pipelines`` (the Beam jobs) and ``captionbeam.launch`` (the command line and the jobs that
compose jobs). The repository keeps them as the top-level folders ``model/``, ``pipelines/`` and
``launch/``; ``setup.py`` maps them under this package.

Importing this package imports nothing else (no TensorFlow, no Beam). The Python API
(``captionbeam.api``, docs/api.md) is loaded on first use of one of its names:

- ``Captioner.load(model_dir_or_export).caption([paths or bytes]) -> [Caption]``
- ``job_config(command, **flags)`` -> the command's typed config; ``run_job(config)`` -> its typed result
"""
__version__ = "0.2.0"
__all__ = ["Caption", "Captioner", "job_config", "run_job", "__version__"]
_API = ("Caption", "Captioner", "job_config", "run_job")


def __getattr__(name: str):
    if name in _API:
        from captionbeam import api
        return getattr(api, name)
    raise AttributeError(f"module 'captionbeam' has no attribute {name!r}")
