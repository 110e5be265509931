"""The command line's one logging setup: framework noise off unless ``--log-level DEBUG``.

:func:`configure_logging` is called once by ``cli.main`` before any command module (and so before
TensorFlow or Beam) is imported; importing this module changes nothing. It sets

- ``TF_CPP_MIN_LOG_LEVEL`` (TensorFlow's C++ INFO/WARNING lines: oneDNN, CPU features, XLA), unless the
  environment already sets it; Beam's worker processes inherit it;
- the Python loggers of TensorFlow, absl (Keras' warnings go there), Beam and its job servers;
- records those libraries log through the root logger (a filter on the root's handlers);
- Python warnings (DeprecationWarning, FutureWarning, UserWarning) raised inside those libraries.

With DEBUG everything is back: TF_CPP_MIN_LOG_LEVEL=0, every logger at DEBUG, warnings shown.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from typing import List, Optional, Sequence, Tuple

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# library loggers -> the least level they show unless --log-level DEBUG
FRAMEWORK_LOGGERS = {
    "tensorflow": logging.ERROR, "absl": logging.ERROR, "keras": logging.ERROR, "h5py": logging.ERROR,
    "apache_beam": logging.WARNING, "urllib3": logging.WARNING, "google": logging.WARNING,
    # job servers' relayed output and the LOOPBACK SDK worker's per-bundle chatter (WARNING lines included)
    "apache_beam.runners.portability": logging.ERROR, "apache_beam.runners.worker": logging.ERROR,
    "apache_beam.utils.subprocess_server": logging.ERROR, "apache_beam.io.filebasedsink": logging.ERROR,
    "apache_beam.runners.direct": logging.ERROR, "FlinkJarJobServer": logging.ERROR,
    "SparkJarJobServer": logging.ERROR, "PrismRunner": logging.ERROR,
    # a failing DoFn's traceback, logged before Beam re-raises it (the CLI then reports it once)
    "apache_beam.runners.common": logging.CRITICAL,
}
NOISY_MODULES = r"(tensorflow|tf_keras|keras|absl|apache_beam|google|proto|pyarrow|h5py|jax|numpy)(\.|$)"
_NOISY_PATH = re.compile(r"[\\/](tensorflow|tf_keras|keras|absl|apache_beam)[\\/]")


class FrameworkRecords(logging.Filter):
    """Drops a library's records below ERROR that it logs through the root logger (Beam's RunInference
    calls ``logging.warning`` directly, so no library logger's level catches them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not _NOISY_PATH.search(record.pathname or "")


def split_log_level(argv: Sequence[str], default: str) -> Tuple[str, List[str]]:
    """``(level, argv without it)``: the last ``--log-level X`` / ``--log-level=X`` anywhere in ``argv``
    (before or after the command, up to a ``--``), else ``default``. Pure; the caller validates the level."""
    level, rest, i = default, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--log-level" and i + 1 < len(argv):
            level, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--log-level="):
            level, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    return level.upper(), rest


def configure_logging(level: str, environ: Optional[dict] = None) -> None:
    """Apply ``level`` (one of ``LEVELS``) to the root logger, the frameworks and the warnings filter."""
    environ = os.environ if environ is None else environ
    debug = level == "DEBUG"
    if debug:
        environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")       # ERROR and FATAL only
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format=LOG_FORMAT)
    logging.getLogger().setLevel(getattr(logging, level, logging.INFO))
    for name, least in FRAMEWORK_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if debug else max(least, getattr(logging, level, 0)))
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, FrameworkRecords)]:
            handler.removeFilter(f)
        if not debug:
            handler.addFilter(FrameworkRecords())
    if not debug:
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning,
                         RuntimeWarning):
            warnings.filterwarnings("ignore", category=category, module=NOISY_MODULES)
