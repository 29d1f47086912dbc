"""Dataset build throughput: clips/s rendered + featurised on the demo plan.

Compares, side by side in one process (these machines are noisy, so only ratios and medians are quoted):
  serial  - a plain loop over the shards in this process
  ray x1  - the Ray Data pipeline with 1 worker
  ray x2  - the Ray Data pipeline with 2 workers
Each variant runs ``--repeats`` times, interleaved, into fresh folders; Ray is started and warmed up first, so
start-up is not counted (it is paid once per job, not per clip). Targets: ray x2 / ray x1 >= 1.7 on 2 cores,
ray x1 within 20% of serial.

    python benchmarks/bench_build.py [--repeats 3] [--base-clips 90] [--shard-size 16] [--tasks-per-worker 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from audiopair.config import load_config
from audiopair.corpus import make_source
from audiopair.data.pipeline import ensure_ray, run_shards_ray, run_shards_serial
from audiopair.data.plan import make_plan
from audiopair.data.render import set_single_thread

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-clips", type=int, default=90)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--tasks-per-worker", type=int, default=2)
    args = ap.parse_args()

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
    quiet = lambda m: None  # noqa: E731

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


if __name__ == "__main__":
    main()
