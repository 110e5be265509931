"""``captionbeam retrain --watch``: poll for landed images and retrain when enough arrived."""
from __future__ import annotations

import time
from typing import Callable, List, Optional

from captionbeam.launch.retrain.attempt import AttemptResult, RetrainConfig, retrain_once


def watch(config: RetrainConfig, interval: float, max_polls: Optional[int] = None,
          on_result: Optional[Callable[[AttemptResult], None]] = None) -> List[AttemptResult]:
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
