"""The progress reporter of long steps: a fake clock drives it, no test waits on wall time."""

import random
import re

from audiopair.progress import Progress, Report


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_reports_at_least_every_interval_with_rising_counts_and_at_most_once_per_interval():
    clock, reports, lines = FakeClock(), [], []
    rng = random.Random(0)
    total, interval, poll = 3000, 10.0, 1.0
    bar = Progress(total, "render", "clips", emit=lines.append, interval=interval, clock=clock, on_report=reports.append)
    done = 0
    while done < total:
        if 1000 <= done < 1016:  # a stall: no shard for 40 s; the heartbeat's polls still report
            for _ in range(40):
                clock.t += poll
                bar.poll()
        clock.t += rng.uniform(0.2, 0.9)  # a shard of 16 clips takes this long
        n = min(16, total - done)
        done += n
        bar.update(n, rejected=1 if done % 160 == 0 else 0)
    bar.close()
    times = [100.0] + [100.0 + r.elapsed for r in reports]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= interval for g in gaps[:-1])  # never more often than the interval (the last line is the end)
    assert max(gaps) <= interval + poll  # never quieter than the interval plus the longest step or poll (1 s)
    counts = [r.done for r in reports]
    assert counts == sorted(counts) and counts[-1] == total and reports[-1].final
    stalled = [r for r in reports if 1000 <= r.done < 1016]
    assert len(stalled) >= 3  # the 40 s stall was reported, not silent
    assert reports[-1].extra["rejected"] == total // 160 and len(lines) == len(reports)


def test_line_gives_count_rate_eta_and_extras():
    r = Report("render", "clips", done=500, total=2000, elapsed=50.0, extra={"rejected": 3})
    assert r.rate == 10.0 and r.eta == 150.0
    assert r.line() == "render: 500/2000 clips (25.0%), 10.0 clips/s, 0m50s elapsed, ETA 2m30s, rejected 3"
    assert Report("gen", "pairs", 0, 10, 0.0).line().endswith("ETA ?")
    last = Report("embed", "clips", 7200, 7200, 3725.0, final=True).line()
    assert re.search(r"1h02m05s elapsed, done$", last)


def test_nothing_before_the_first_interval_and_one_last_line():
    clock, lines = FakeClock(), []
    with Progress(10, "scoring", "examples", emit=lines.append, interval=15, clock=clock) as bar:
        for _ in range(10):
            clock.t += 1.0
            bar.update()
    assert lines == ["scoring: 10/10 examples (100.0%), 1.0 examples/s, 0m10s elapsed, done"]
