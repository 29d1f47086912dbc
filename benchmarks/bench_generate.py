"""Generation throughput: examples/s batched vs one at a time, same checkpoint, same examples, side by side.

Uses the demo's finetuned ADIFF checkpoint (run `make demo` first) and its test split; greedy decoding, so both
variants produce the same texts (checked). Also times scoring per 1,000 candidates per metric.

    python benchmarks/bench_generate.py [--n 64] [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import statistics
import time
from pathlib import Path

import torch

from audiopair.config import DecodingConfig
from audiopair.evaluate.generate import Generator
from audiopair.evaluate.score import score
from audiopair.data.manifest import load_examples

REPO = Path(__file__).resolve().parents[1]


def run(gen: Generator, rows: list[dict], batch: int) -> tuple[float, list[str]]:
    t = time.perf_counter()
    out = []
    for k in range(0, len(rows), batch):
        chunk = rows[k : k + batch]
        out += gen({key: [r[key] for r in chunk] for key in ("id", "clip1", "clip2", "eval_prompt")})["prediction"]
    return len(rows) / (time.perf_counter() - t), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpts = sorted(glob.glob(str(REPO / "work/runs/adiff-demo-adiff-finetune/epoch_*/model")))
    if not ckpts:
        raise SystemExit("no demo checkpoint: run `make demo` first")
    ds = REPO / "work" / "datasets" / "demo"
    ex = load_examples(ds, "test", {"adiff": 1.0}, 0)[: args.n]
    rows = [{"id": e["id"], "clip1": e["clips"][0], "clip2": e["clips"][1], "eval_prompt": e["eval_prompt"]}
            for e in ex]
    gen = Generator(ckpts[-1], ds, DecodingConfig(max_new_tokens=args.max_new_tokens))
    rates: dict[str, list[float]] = {"one at a time": [], f"batch {args.batch}": []}
    for r in range(args.repeats):
        one, texts1 = run(gen, rows, 1)
        many, texts_b = run(gen, rows, args.batch)
        rates["one at a time"].append(one)
        rates[f"batch {args.batch}"].append(many)
        same = sum(a == b for a, b in zip(texts1, texts_b))
        print(f"  round {r + 1}: one {one:.2f}/s, batch {many:.2f}/s, same text {same}/{len(rows)}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median examples/s: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    print(f"ratio batch {args.batch} / one at a time = {med[f'batch {args.batch}'] / med['one at a time']:.2f}"
          f"   (target >= 4)")

    refs = [e["references"] for e in ex]
    cands = texts_b
    reps = max(1, 1000 // len(cands))
    report = score(cands * reps, refs * reps, ["bleu_4", "meteor", "rouge_l", "cider_d"])
    n = len(cands) * reps
    print(f"scoring {n} candidates: " + ", ".join(f"{k} {v * 1000 / n:.1f} s/1k" for k, v in report.seconds.items()))


if __name__ == "__main__":
    main()
