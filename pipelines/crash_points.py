"""Named commit points where a test can kill the process with SIGKILL (``tests/faults/``): a real
``kill -9`` at an exact moment, without racing a timer. ``CAPTIONBEAM_CRASH_AT=<point>`` in the
environment arms one point; unset (always, outside the fault tests) :func:`crash_point` does nothing."""
from __future__ import annotations

import os
import signal

CRASH_ENV = "CAPTIONBEAM_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process here when ``CAPTIONBEAM_CRASH_AT`` names ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
