"""An exclusive lease on an output directory (local or ``gs://``), so that two bulk runs never write
into one ``--output`` at the same time.

Layout: ``<output>/lease/<run>.claim`` (written once: run, host, pid, start time) and
``<output>/lease/<run>.alive`` (rewritten every ``heartbeat_s`` seconds while the run lives).

Protocol (only create, list and delete, through Beam's FileSystems: the same on a local disk, on
``gs://`` and on the GCS emulator, which has no conditional writes): a run writes its claim, then
lists the claims. The claim with the oldest server-side timestamp among the *live* ones (heartbeat
younger than ``ttl_s``) holds the lease; a run that finds an older live claim deletes its own and
fails with :class:`LeaseHeld` naming the holder. Two runs starting at the same moment both see both
claims (listing is strongly consistent on GCS and local disks) and agree on the older one.

A run killed without releasing leaves a claim whose heartbeat stops: after ``ttl_s`` (default 15
minutes) it is stale and the next run deletes it and goes on; ``force=True`` (``captionbeam bulk
--force``) takes the lease at once (only when you know the other run is dead).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

import captionbeam.pipelines.io as pio

log = logging.getLogger(__name__)

LEASE_DIR = "lease"
DEFAULT_TTL_S = 900.0
DEFAULT_HEARTBEAT_S = 60.0


class LeaseHeld(RuntimeError):
    """Another live run holds the output's lease."""


@dataclass(frozen=True)
class Claim:
    run: str
    created: float        # server-side time of the claim file (FileSystems metadata)
    alive: float          # server-side time of its last heartbeat (the claim's when none yet)
    info: dict


def _list(output: str) -> List[Claim]:
    from apache_beam.io.filesystems import FileSystems
    pattern = pio.join(output, LEASE_DIR, "*")
    times = {}
    for result in FileSystems.match([pattern]):
        for m in result.metadata_list:
            times[pio.basename(m.path)] = float(m.last_updated_in_seconds or 0.0)
    claims = []
    for name, created in times.items():
        if not name.endswith(".claim"):
            continue
        run = name[: -len(".claim")]
        try:
            info = pio.read_json(pio.join(output, LEASE_DIR, name))
        except Exception:  # noqa: BLE001 - deleted meanwhile, or half written: still a claim
            info = {}
        claims.append(Claim(run=run, created=created, alive=max(created, times.get(f"{run}.alive", 0.0)),
                            info=info))
    return sorted(claims, key=lambda c: (c.created, c.run))


def _describe(c: Claim, now: float) -> str:
    i = c.info
    return (f"run {c.run} (host {i.get('host', '?')}, pid {i.get('pid', '?')}, started {i.get('started', '?')}, "
            f"last heartbeat {max(0.0, now - c.alive):.0f}s ago)")


class OutputLease:
    """``with OutputLease(output, run): ...`` holds the lease for the block (see the module doc)."""

    def __init__(self, output: str, run: str, ttl_s: float = DEFAULT_TTL_S,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S, force: bool = False):
        if ttl_s <= heartbeat_s:
            raise ValueError(f"lease ttl {ttl_s}s must be longer than the heartbeat {heartbeat_s}s")
        self.output, self.run, self.ttl_s, self.heartbeat_s, self.force = output, run, ttl_s, heartbeat_s, force
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _path(self, run: str, kind: str) -> str:
        return pio.join(self.output, LEASE_DIR, f"{run}.{kind}")

    def _now(self) -> float:
        """Current time on the store's clock (a fresh heartbeat's timestamp), so that skew between this
        machine and the bucket does not age claims."""
        pio.write_text(self._path(self.run, "alive"), str(time.time()))
        return next(c.alive for c in _list(self.output) if c.run == self.run)

    def acquire(self) -> "OutputLease":
        pio.makedirs(pio.join(self.output, LEASE_DIR))
        pio.write_json(self._path(self.run, "claim"), {
            "run": self.run, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ttl_s": self.ttl_s})
        now = self._now()
        claims = _list(self.output)
        mine = next(c for c in claims if c.run == self.run)
        others = [c for c in claims if c.run != self.run]
        live = [c for c in others if now - c.alive <= self.ttl_s]
        stale = [c for c in others if c not in live]
        if self.force:
            if live:
                log.warning("--force: taking the lease of %s from %s", self.output,
                            "; ".join(_describe(c, now) for c in live))
            self._delete(others)
        else:
            holders = [c for c in live if (c.created, c.run) < (mine.created, mine.run)]
            if holders:
                self._delete([mine])
                raise LeaseHeld(
                    f"--output {self.output} is in use by {_describe(holders[0], now)}: two runs into one output "
                    f"would duplicate rows. Wait for it to finish, or use another --output; if that run is dead, "
                    f"its lease expires {self.ttl_s:.0f}s after its last heartbeat, or pass --force to take it now")
            if stale:
                log.warning("removing the stale lease of %s", "; ".join(_describe(c, now) for c in stale))
                self._delete(stale)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                pio.write_text(self._path(self.run, "alive"), str(time.time()))
            except Exception as e:  # noqa: BLE001 - a missed beat is retried; the TTL has room for several
                log.warning("lease heartbeat of %s failed: %s", self.output, e)

    def _delete(self, claims: List[Claim]) -> None:
        pio.delete([self._path(c.run, kind) for c in claims for kind in ("claim", "alive")])

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._delete([Claim(self.run, 0.0, 0.0, {})])

    def __enter__(self) -> "OutputLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_claims(output: str) -> List[dict]:
    """The claims under ``output`` (for tools and tests): ``{"run", "created", "alive", **info}``."""
    return [{"run": c.run, "created": c.created, "alive": c.alive, **c.info} for c in _list(output)]
