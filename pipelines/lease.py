"""The one output protocol: an exclusive lease on what a command writes (local or ``gs://``), so that
two runs never write into one output at the same time. Every writing command (features, captions,
pack, train and SCST, evaluate, export, bulk, retrain, run) enters :func:`output_lease` in its
``run()`` before it looks at or touches its output; ``tests/faults/`` checks each one.

Layout: ``<output>/lease/<run>.claim`` (written once: run, command, host, pid, start time) and
``<output>/lease/<run>.alive`` (rewritten every ``heartbeat_s`` seconds while the run lives). An
output that is a single file, or a directory replaced whole (``export``), keeps its lease beside it:
``<output>.lease/``.

Under the lease everything else in the output that a run leaves while writing (Beam's
``beam-temp-*``, ``*.tmp-*`` files of an atomic write) is provably dead: no other live run writes
there, so a run removes such leftovers only while it holds the lease.

Protocol (only create, list and delete, through Beam's FileSystems: the same on a local disk, on
``gs://`` and on the GCS emulator, which has no conditional writes): a run writes its claim, then
lists the claims. The claim with the oldest server-side timestamp among the *live* ones (heartbeat
younger than ``ttl_s``) holds the lease; a run that finds an older live claim deletes its own and
fails with :class:`LeaseHeld` naming the holder. Two runs starting at the same moment both see both
claims (listing is strongly consistent on GCS and local disks) and agree on the older one.

A run killed without releasing leaves a claim whose heartbeat stops: after ``ttl_s`` (default 15
minutes) it is stale and the next run deletes it and goes on. A claim made on this machine (same host
and boot) by a process that no longer exists is provably dead and taken over at once (so a re-run
after ``kill -9`` goes on without waiting). ``force=True`` (``--force`` of every writing command)
takes the lease at once (only when you know the other run is dead).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

import captionbeam.pipelines.io as pio
from captionbeam.pipelines.storage_faults import (RELEASE_DEADLINE_S, STORAGE_DEADLINE_ENV, endpoint,
                                                  storage_deadline_s)

log = logging.getLogger(__name__)

LEASE_DIR = "lease"
DEFAULT_TTL_S = 900.0
DEFAULT_HEARTBEAT_S = 60.0


class LeaseHeld(RuntimeError):
    """Another live run holds the output's lease."""


FORCE_HELP = ("take the output's lease even when another run holds it (only when that run is dead: a dead run's "
              "lease expires 15 minutes after its last heartbeat, at once when it ran on this machine)")


@dataclass(frozen=True)
class Claim:
    run: str
    created: float        # server-side time of the claim file (FileSystems metadata)
    alive: float          # server-side time of its last heartbeat (the claim's when none yet)
    info: dict


def _list(directory: str) -> List[Claim]:
    from apache_beam.io.filesystems import FileSystems
    pattern = pio.join(directory, "*")
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
            info = pio.read_json(pio.join(directory, name))
        except Exception:  # noqa: BLE001 - deleted meanwhile, or half written: still a claim
            info = {}
        claims.append(Claim(run=run, created=created, alive=max(created, times.get(f"{run}.alive", 0.0)),
                            info=info))
    return sorted(claims, key=lambda c: (c.created, c.run))


def _describe(c: Claim, now: float) -> str:
    i = c.info
    return (f"`captionbeam {i.get('command', '?')}` run {c.run} (host {i.get('host', '?')}, pid {i.get('pid', '?')}, "
            f"since {i.get('started', '?')}, last heartbeat {max(0.0, now - c.alive):.0f}s ago)")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> Optional[str]:
    """The start time (clock ticks since boot) of process ``pid``, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _provably_dead(c: Claim) -> bool:
    """A claim of this machine (same host and boot) whose process is gone (or its pid reused)."""
    i = c.info
    if not i or i.get("host") != socket.gethostname() or not i.get("boot_id") or i.get("boot_id") != _boot_id():
        return False
    try:
        start = _process_start(int(i.get("pid")))
    except (TypeError, ValueError):
        return False
    return start is None or (i.get("pid_start") is not None and start != i.get("pid_start"))


class OutputLease:
    """``with OutputLease(output, run): ...`` holds the lease for the block (see the module doc)."""

    def __init__(self, output: str, run: str, ttl_s: float = DEFAULT_TTL_S,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S, force: bool = False, command: str = "bulk",
                 flag: str = "--output", beside: bool = False):
        if ttl_s <= heartbeat_s:
            raise ValueError(f"lease ttl {ttl_s}s must be longer than the heartbeat {heartbeat_s}s")
        self.output, self.run, self.ttl_s, self.heartbeat_s, self.force = output, run, ttl_s, heartbeat_s, force
        self.command, self.flag = command, flag
        self.lease_dir = lease_dir(output, beside)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _path(self, run: str, kind: str) -> str:
        return pio.join(self.lease_dir, f"{run}.{kind}")

    def _now(self) -> float:
        """Current time on the store's clock (a fresh heartbeat's timestamp), so that skew between this
        machine and the bucket does not age claims."""
        pio.write_text(self._path(self.run, "alive"), str(time.time()))
        return next(c.alive for c in _list(self.lease_dir) if c.run == self.run)

    def acquire(self) -> "OutputLease":
        # a local output this run creates and leaves empty (it failed before writing) is removed on release
        self._created_output = (not pio.is_gcs(self.lease_dir) and not self.lease_dir.endswith(".lease")
                                and not os.path.exists(self.output))
        watched = pio.is_gcs(self.lease_dir)
        if watched:      # the bucket calls of the acquisition itself are under the storage deadline too
            self._start(self._beat_watched)
        try:
            self._claim()
        except BaseException:
            self._stop.set()
            raise
        if not watched:
            self._start(self._beat)
        return self

    def _start(self, target) -> None:
        self._thread = threading.Thread(target=target, name=f"lease-{self.run}", daemon=True)
        self._thread.start()

    def _claim(self) -> None:
        pio.makedirs(self.lease_dir)
        pio.write_json(self._path(self.run, "claim"), {
            "run": self.run, "command": self.command, "output": self.output, "host": socket.gethostname(),
            "pid": os.getpid(), "pid_start": _process_start(os.getpid()), "boot_id": _boot_id(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ttl_s": self.ttl_s})
        now = self._now()
        claims = _list(self.lease_dir)
        mine = next(c for c in claims if c.run == self.run)
        others = [c for c in claims if c.run != self.run]
        live = [c for c in others if now - c.alive <= self.ttl_s and not _provably_dead(c)]
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
                    f"{self.flag} {self.output} is in use by {_describe(holders[0], now)}: two runs writing one "
                    f"output would mix or lose each other's files. Wait for it to finish, or use another {self.flag}; "
                    f"if that run is dead, its lease expires {self.ttl_s:.0f}s after its last heartbeat (at once "
                    f"when it ran on this machine), or pass --force to take it now")
            if stale:
                log.warning("removing the stale lease of %s", "; ".join(
                    f"{_describe(c, now)}: " + ("its process is gone from this machine" if _provably_dead(c)
                                                else f"silent for over {self.ttl_s:.0f}s") for c in stale))
                self._delete(stale)

    def _write_alive(self) -> None:
        try:
            pio.write_text(self._path(self.run, "alive"), str(time.time()))
        except Exception as e:  # noqa: BLE001 - a missed beat is retried; the TTL has room for several
            log.warning("lease heartbeat of %s failed: %s", self.output, e)
            return
        self._last_answer = time.time()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._write_alive()

    def _beat_watched(self) -> None:
        """The heartbeat of a bucket output, and its watchdog: a bucket that has not answered for the
        storage deadline (a dead endpoint; some client calls retry for ten minutes) ends the run now, with
        one line and exit 1 -- nothing of this run is committed, and its lease is provably dead on this
        machine, so a re-run takes over at once."""
        deadline = storage_deadline_s()
        self._last_answer = time.time()
        interval = min(self.heartbeat_s, deadline / 3)
        while not self._stop.wait(interval):
            beat = threading.Thread(target=self._write_alive, name=f"lease-beat-{self.run}", daemon=True)
            beat.start()
            beat.join(deadline)
            if self._stop.is_set():
                return
            silent = time.time() - self._last_answer
            if silent >= deadline:
                sys.stderr.write(
                    f"captionbeam {self.command}: storage endpoint {endpoint()} unreachable: the bucket holding "
                    f"{self.output} has not answered for {silent:.0f}s (${STORAGE_DEADLINE_ENV} = "
                    f"{deadline:.0f}s); this run committed nothing there: re-run when the bucket is reachable\n")
                sys.stderr.flush()
                os._exit(1)

    def _delete(self, claims: List[Claim]) -> None:
        pio.delete([self._path(c.run, kind) for c in claims for kind in ("claim", "alive")])

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(RELEASE_DEADLINE_S)
        if not pio.is_gcs(self.lease_dir):
            self._delete([Claim(self.run, 0.0, 0.0, {})])
        else:   # bounded: with the endpoint gone the run still ends; the claim then expires after ttl_s
            done = threading.Event()

            def delete() -> None:
                try:
                    self._delete([Claim(self.run, 0.0, 0.0, {})])
                    done.set()
                except Exception as e:  # noqa: BLE001 - reported below
                    log.warning("could not remove the lease of %s: %s", self.output, e)
            worker = threading.Thread(target=delete, name=f"lease-release-{self.run}", daemon=True)
            worker.start()
            worker.join(RELEASE_DEADLINE_S)
            if not done.is_set():
                log.warning("the lease of %s was not removed (storage unreachable?): it expires %.0fs after its "
                            "last heartbeat", self.output, self.ttl_s)
        if not pio.is_gcs(self.lease_dir):
            try:                    # no empty lease/ folder left in a model dir or an export
                os.rmdir(self.lease_dir)
                if getattr(self, "_created_output", False):
                    os.rmdir(self.output)   # only when empty: a run that wrote nothing leaves no output folder
            except OSError:
                pass

    def __enter__(self) -> "OutputLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lease_dir(output: str, beside: bool = False) -> str:
    """Where ``output``'s lease lives: ``<output>/lease`` or, ``beside``, ``<output>.lease``."""
    return f"{output.rstrip('/')}.lease" if beside else pio.join(output, LEASE_DIR)


def read_claims(output: str, beside: bool = False) -> List[dict]:
    """The claims of ``output`` (for tools and tests): ``{"run", "created", "alive", **info}``."""
    return [{"run": c.run, "created": c.created, "alive": c.alive, **c.info} for c in _list(lease_dir(output, beside))]


@contextmanager
def output_lease(output: str, command: str, force: bool = False, flag: str = "--output", beside: bool = False,
                 ttl_s: float = DEFAULT_TTL_S, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> Iterator[OutputLease]:
    """``with output_lease(args.output, "features", force) as lease:`` -- every writing command's
    ``run()`` holds this for its whole run; :class:`LeaseHeld` (the CLI exits 75) names the holder."""
    lease = OutputLease(output, f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{pio.run_token()}", ttl_s=ttl_s,
                        heartbeat_s=heartbeat_s, force=force, command=command, flag=flag, beside=beside)
    with lease:
        yield lease
