"""Dataset build throughput and memory: clips/s rendered + featurised, and peak RSS as the plan grows.

Two modes.

``--scale 1,10,30`` (issue 15): the whole build (plan, render, records streamed to manifests and stats) of the demo
plan at those multiples of ``--base-clips``, each in a fresh process with its own Ray (2 CPUs, 2 workers). Ray and
the workers are warmed up first by a 2-shard build of a 12-base plan, whose end state is the baseline; a sampler
then reads the RSS of the driver and of every worker that renders, every 0.2 s. Per scale it prints clips/s over the
render phase and each process kind's peak RSS and growth over its baseline. Targets: clips/s at the largest scale
>= 0.9x that at the middle one; driver and worker peak RSS at the largest scale <= 1.25x that at the smallest.
``--config jobs/configs/acc_scale.yaml --scale 1 --limit-clips 1024`` measures ACC's real shape (10 s at 32 kHz)
on the first 1,024 clips of its 74,250-clip plan (the full plan is still made, and its records are written for
the clips that rendered).

Without ``--scale``, the worker speed-up: compares, side by side in one process (these machines are noisy, so only ratios and medians are quoted):
  serial  - a plain loop over the shards in this process
  ray x1  - the Ray Data pipeline with 1 worker
  ray x2  - the Ray Data pipeline with 2 workers
Each variant runs ``--repeats`` times, interleaved, into fresh folders; Ray is started and warmed up first, so
start-up is not counted (it is paid once per job, not per clip). Targets: ray x2 / ray x1 >= 1.7 on 2 cores,
ray x1 within 20% of serial.

    python benchmarks/bench_build.py [--repeats 3] [--base-clips 90] [--shard-size 16] [--tasks-per-worker 2]
    python benchmarks/bench_build.py --scale 1,10,30 [--base-clips 90]
    python benchmarks/bench_build.py --config jobs/configs/acc_scale.yaml --scale 1 --limit-clips 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from audiopair.config import load_config
from audiopair.corpus import make_source
from audiopair.data.pipeline import build_dataset, run_shards_ray, run_shards_serial
from audiopair.runtime import ensure_ray
from audiopair.data.plan import make_plan
from audiopair.data.render import set_single_thread

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-clips", type=int, default=90)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--tasks-per-worker", type=int, default=2)
    ap.add_argument("--scale", help="comma-separated multiples of --base-clips: memory and rate per plan size")
    ap.add_argument("--config", default=str(REPO / "jobs" / "configs" / "demo.yaml"))
    ap.add_argument("--limit-clips", type=int, default=None, help="render only the plan's first N clips")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one scale, in its own process
    args = ap.parse_args()
    if args.child is not None:
        return one_scale(args)
    if args.scale:
        return scales(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench_build_"))
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml",
                      [f"dataset.demo.base_clips={args.base_clips}", f"dataset.shard_size={args.shard_size}",
                       f"dataset.tasks_per_worker={args.tasks_per_worker}"]).dataset
    plan = make_plan([(make_source(s, cfg), s) for s in cfg.sources], cfg)
    shards = [plan.items[i : i + cfg.shard_size] for i in range(0, len(plan.items), cfg.shard_size)]
    todo = list(range(len(shards)))
    n = len(plan.items)
    print(f"demo plan: {n} clips in {len(shards)} shards of {cfg.shard_size}, {cfg.sample_rate} Hz, {cfg.clip_seconds} s")

    set_single_thread()  # the serial loop gets one thread too, like each Ray worker
    ensure_ray(num_cpus=2)
    quiet = lambda *a: None  # noqa: E731

    def run(name: str) -> float:
        out = tmp / f"{name}-{time.monotonic_ns()}"
        c = cfg.model_copy(update={"num_workers": 2 if name == "ray x2" else 1, "output_dir": str(out)})
        t = time.perf_counter()
        if name == "serial":
            run_shards_serial(todo, shards, plan, c, out, quiet)
        else:
            run_shards_ray(todo, shards, plan, c, out, quiet)
        dt = time.perf_counter() - t
        shutil.rmtree(out, ignore_errors=True)
        return n / dt

    # Warm-up: imports, mel filter banks, Ray worker processes for both pool sizes.
    for name in ("serial", "ray x1", "ray x2"):
        run(name)
    rates: dict[str, list[float]] = {"serial": [], "ray x1": [], "ray x2": []}
    for r in range(args.repeats):
        for name in rates:
            rates[name].append(run(name))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} clips/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print("median clips/s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"ratio ray x1 / serial = {med['ray x1'] / med['serial']:.2f}   (target >= 0.80)")
    print(f"ratio ray x2 / ray x1 = {med['ray x2'] / med['ray x1']:.2f}   (target >= 1.70)")
    print(f"ratio ray x2 / serial = {med['ray x2'] / med['serial']:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------- --scale
def _workers() -> list:
    """This driver's Ray worker processes (Ray names them ``ray::<what they run>``)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::"):
                out.append(p)
        except psutil.Error:
            pass
    return out


class Sampler:
    """Peak RSS of the driver and of the workers seen rendering (``render_shards`` in their title), every 0.2 s."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.driver = 0
        self.worker: dict[int, int] = {}  # pid -> peak RSS of a rendering worker
        self.renderers: set[int] = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.driver = max(self.driver, self.me.memory_info().rss)
        for p in _workers():
            try:
                if "render_shards" in p.cmdline()[0]:
                    self.renderers.add(p.pid)
                self.worker[p.pid] = max(self.worker.get(p.pid, 0), p.memory_info().rss)
            except Exception:  # a worker that exited between listing and reading
                pass

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def __enter__(self) -> "Sampler":
        self._t.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._t.join()
        self.sample()

    def worker_peak(self) -> int:
        return max((v for pid, v in self.worker.items() if pid in self.renderers), default=0)


def one_scale(args) -> None:
    """Child process: warm up, take the baseline, build the scaled plan while sampling RSS; print one JSON line."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_build_scale_"))
    over = [f"dataset.num_workers=2", f"dataset.shard_size={args.shard_size}",
            f"dataset.tasks_per_worker={args.tasks_per_worker}"]
    base = load_config(args.config, over).dataset
    bases = base.demo.base_clips if args.config.endswith("acc_scale.yaml") else args.base_clips
    ensure_ray(num_cpus=2)
    # a small plan of at least 2 shards (each base gives 3 or 5 clips), so both workers render during the warm-up
    warm_bases = max(12, 2 * base.shard_size // 3 + 1)
    warm = load_config(args.config, over + [f"dataset.demo.base_clips={warm_bases}",
                                            f"dataset.output_dir={tmp / 'warm'}"]).dataset
    with Sampler() as s0:
        build_dataset(warm, progress=lambda m: None, limit_clips=2 * base.shard_size)
    time.sleep(1.0)
    s0.sample()
    base_driver = s0.me.memory_info().rss
    base_worker = max((p.memory_info().rss for p in _workers() if p.pid in s0.renderers), default=0)
    cfg = load_config(args.config, over + [f"dataset.demo.base_clips={bases * args.child}",
                                           f"dataset.output_dir={tmp / 'ds'}"]).dataset
    lines: list[str] = []
    with Sampler() as s:
        t = time.perf_counter()
        res = build_dataset(cfg, progress=lines.append, limit_clips=args.limit_clips)
        wall = time.perf_counter() - t
    mb = 1 / 2**20
    print("RESULT " + json.dumps({
        "scale": args.child, "bases": bases * args.child, "clips": res.clips, "wall_s": round(wall, 1),
        "render_s": round(res.render_seconds, 1), "clips_per_s": round(res.clips / res.render_seconds, 2),
        "driver_base_mb": round(base_driver * mb), "driver_peak_mb": round(s.driver * mb),
        "worker_base_mb": round(base_worker * mb), "worker_peak_mb": round(s.worker_peak() * mb),
        "renderers": len(s.renderers), "progress_lines": len([m for m in lines if m.startswith("render:")]),
    }), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


def scales(args) -> None:
    results = []
    for k in [int(x) for x in args.scale.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(k), "--config", args.config, "--base-clips", str(args.base_clips),
               "--shard-size", str(args.shard_size), "--tasks-per-worker", str(args.tasks_per_worker)]
        if args.limit_clips:
            cmd += ["--limit-clips", str(args.limit_clips)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"scale {k} failed after {time.perf_counter() - t:.0f} s:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results.append(json.loads(line[7:]))
        print(json.dumps(results[-1]), flush=True)
    print("\n| scale | bases | clips | render s | clips/s | driver peak MB (base) | worker peak MB (base) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['scale']}x | {r['bases']:,} | {r['clips']:,} | {r['render_s']} | {r['clips_per_s']} | "
              f"{r['driver_peak_mb']} ({r['driver_base_mb']}) | {r['worker_peak_mb']} ({r['worker_base_mb']}) |")
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        mid = results[-2]
        print(f"clips/s {hi['scale']}x / {mid['scale']}x = {hi['clips_per_s'] / mid['clips_per_s']:.2f}   (target >= 0.90)")
        for kind in ("driver", "worker"):
            peak = hi[f"{kind}_peak_mb"] / lo[f"{kind}_peak_mb"]
            grow_lo = lo[f"{kind}_peak_mb"] - lo[f"{kind}_base_mb"]
            grow_hi = hi[f"{kind}_peak_mb"] - hi[f"{kind}_base_mb"]
            print(f"{kind} peak RSS {hi['scale']}x / {lo['scale']}x = {peak:.2f}   (target <= 1.25); "
                  f"growth over baseline {grow_lo} MB -> {grow_hi} MB")


if __name__ == "__main__":
    main()
