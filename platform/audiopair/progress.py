"""Progress of long steps (dataset build, stage-1 epochs, embedding caching, generation): done / total, rate, ETA.

On a terminal it is a tqdm bar. In a log (CI, ``ray job logs``, a test's callback) it is one line at most every
``interval`` seconds, plus a last line at the end, so a long job neither floods its log nor goes quiet: a daemon
heartbeat re-reports a stalled count, and with steps that each take less than ``interval`` a line comes at least
every ``interval`` seconds plus one poll. The clock is injectable, so tests drive it without waiting.

    with Progress(total, "render", unit="clips", emit=print) as bar:
        for shard in ...:
            bar.update(len(shard.clips), rejected=len(shard.rejected))
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

DEFAULT_INTERVAL_S = 15.0  # a log line at most this often (the issue asks for 10-30 s)


@dataclass
class Report:
    """One progress report: ``done`` of ``total`` units after ``elapsed`` seconds; ``rate`` in units/s over the
    whole run; ``eta`` in seconds (None before the first unit); ``extra`` running counts such as rejected clips."""

    desc: str
    unit: str
    done: int
    total: int
    elapsed: float
    extra: dict[str, int] = field(default_factory=dict)
    final: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        eta = "done" if self.final else f"ETA {_hms(self.eta)}" if self.eta is not None else "ETA ?"
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (f"{self.desc}: {self.done}/{self.total} {self.unit}{pct}, {self.rate:.1f} {self.unit}/s, "
                f"{_hms(self.elapsed)} elapsed, {eta}{extra}")


def _hms(seconds: float | None) -> str:
    s = int(round(seconds or 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Count ``total`` units of a step called ``desc``.

    ``emit``: where log lines go (``print``, a logger's ``info``, a test's list.append); with ``emit=None`` or
    ``print`` (a person may be watching) a tqdm bar is drawn when stderr is a terminal, else lines go to ``print``;
    any other callable (a log, a collector) always gets lines. ``on_report`` (optional) receives each
    ``Report`` as well. ``interval``: at least this many seconds between two lines. ``heartbeat``: a daemon thread
    polls every ``interval / 10`` s (real time), so a stalled step still reports; off by default, and tests
    drive ``poll`` with a fake ``clock`` (seconds, ``time.monotonic`` by default) instead.
    """

    def __init__(self, total: int, desc: str, unit: str = "items", emit: Callable[[str], None] | None = None,
                 interval: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 on_report: Callable[[Report], None] | None = None, heartbeat: bool = False) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.interval, self.clock, self.on_report = interval, clock, on_report
        self.done = 0
        self.extra: dict[str, int] = {}
        self._lock = threading.Lock()
        self._start = clock()
        self._last: float | None = None  # when the last line went out
        self._bar = None
        if (emit is None or emit is print) and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", mininterval=0.5, dynamic_ncols=True)
        self.emit = emit or print
        self._stop = threading.Event()
        self._thread = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, daemon=True, name=f"progress-{desc}")
            self._thread.start()

    def update(self, n: int = 1, **extra: int) -> None:
        """``n`` more units done; ``extra`` counts are added to their running totals (e.g. ``rejected=2``)."""
        with self._lock:
            self.done += n
            for k, v in extra.items():
                self.extra[k] = self.extra.get(k, 0) + v
            if self._bar is not None:
                self._bar.update(n)
                if self.extra:
                    self._bar.set_postfix(self.extra, refresh=False)
            self._maybe_report(final=False)

    def poll(self) -> None:
        """Report if ``interval`` has passed since the last line, whether or not the count moved."""
        with self._lock:
            self._maybe_report(final=False)

    def close(self) -> None:
        """Stop the heartbeat and give the last line (always)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._report(final=True)

    def report(self, final: bool = False) -> Report:
        return Report(self.desc, self.unit, self.done, self.total, self.clock() - self._start, dict(self.extra), final)

    def _maybe_report(self, final: bool) -> None:
        now = self.clock()
        if self._bar is None and now - (self._start if self._last is None else self._last) >= self.interval:
            self._report(final)

    def _report(self, final: bool) -> None:
        r = self.report(final)
        self._last = self._start + r.elapsed
        if self.on_report is not None:
            self.on_report(r)
        if self._bar is None:
            self.emit(r.line())

    def _beat(self) -> None:
        while not self._stop.wait(max(self.interval / 10, 0.05)):
            self.poll()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *_) -> None:
        self.close()
