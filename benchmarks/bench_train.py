"""ADIFF training throughput on CPU: samples/s of the same model on the same batches, side by side in one process.

  bare        - a plain PyTorch loop (AdamW, one process), audio as cached frozen-encoder embeddings
  ray+ds x1   - Ray Train TorchTrainer + DeepSpeed engine, 1 worker (what jobs run), same config
  bare+enc    - the plain loop, but the frozen encoder runs every step on log-mels (no embedding cache)

Ratios printed: ray+ds x1 / bare (target >= 0.9) and bare / bare+enc (what the embedding cache buys).
Medians over ``--repeats``; Ray's and the workers' start-up are not timed (the loop reports its own epoch time).

    python benchmarks/bench_train.py [--repeats 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from audiopair.config import load_config
from audiopair.data.pipeline import build_dataset
from audiopair.runtime import ensure_ray
from audiopair.models.tokenizer import train_tokenizer
from audiopair.data.manifest import load_examples
from audiopair.train.adiff import make_recipe
from audiopair.train.engine import micro_batches, fit

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "model.prefix_len=8", "model.prompt_len=16", "model.mapper_layers=2", "model.mapper_heads=4",
    "model.cross_layers=1", "model.lm_pretrained=null", "model.lm_layers=2", "model.lm_dim=128", "model.lm_heads=4",
    "model.lm_positions=256", "model.encoder.pretrained=null", "model.encoder.frames=401",
    "model.encoder.spec_size=128", "model.encoder.embed_dim=32", "model.encoder.depths=[1,1]",
    "model.encoder.heads=[2,4]", "model.encoder.num_classes=27", "model.encoder.clip_pool=max",
]


def bare_loop(recipe, examples, micro: int, steps: int, lr: float) -> float:
    """samples/s of a plain loop over the first ``steps`` micro-batches (after one warm-up step)."""
    model = recipe.build_model()
    recipe.train_examples()  # builds the recipe's audio bank for this model (embeddings, or log-mels only)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batches = micro_batches(examples, 0, 1, micro, 0, 0, shuffle=True)[: steps + 1]
    model.train()
    t = 0.0
    for i, b in enumerate(batches):
        start = time.perf_counter()
        out = model(**recipe.collate(b))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step pays one-off allocations
            t += time.perf_counter() - start
    return (len(batches) - 1) * micro / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--micro", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core per worker, like a Ray Train worker with 1 CPU

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    ds_dir = REPO / "work" / "datasets" / "demo"
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY_MODEL + [
        f"dataset.output_dir={ds_dir}", f"train.storage_path={tmp / 'runs'}", f"train.micro_batch={args.micro}",
        "train.num_workers=1", "train.zero_stage=0", "train.max_answer_tokens=48",
        "train.task_weights={adiff: 1.0, position: 1.0}",
        "train.stages=[{name: finetune, epochs: 1, lr: 0.001, warmup_steps: 0}]"])
    if not (ds_dir / "build.json").exists():
        build_dataset(cfg.dataset, progress=lambda m: None)
    train = load_examples(ds_dir, "train", {"adiff": 1.0, "position": 1.0}, 0)
    tok = tmp / "tok"
    train_tokenizer([e["target"] for e in train] + [e["prompt"] for e in train], 1024, tok)
    # The Ray run trains a whole epoch; the bare loops take the same number of steps from the same shuffled order.
    n = args.steps * args.micro
    weights = {"adiff": n / len(train) * 0.78, "position": n / len(train) * 0.22}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"task_weights": weights})})
    extra = {"cfg": cfg.for_workers(), "tokenizer": str(tok), "init": None, "stage": "finetune"}
    recipe = make_recipe(extra)
    recipe.build_model()
    examples = recipe.train_examples()
    print(f"{len(examples)} examples/epoch, micro-batch {args.micro}, tiny ADIFF (lm_dim 128, 2 layers)")

    ensure_ray(num_cpus=2)
    rates: dict[str, list[float]] = {"bare": [], "ray+ds x1": [], "bare+enc": []}
    for r in range(args.repeats):
        rates["bare"].append(bare_loop(recipe, examples, args.micro, args.steps, 1e-3))
        res = fit(make_recipe, cfg.train, "finetune", f"bench-{r}-{time.monotonic_ns()}", extra=extra)
        rates["ray+ds x1"].append(float(res.metrics["samples_per_s"]))
        enc_recipe = make_recipe({**extra, "cache_embeddings": False})
        rates["bare+enc"].append(bare_loop(enc_recipe, examples, args.micro, args.steps, 1e-3))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} samples/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print("median samples/s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"ratio ray+ds x1 / bare = {med['ray+ds x1'] / med['bare']:.2f}   (target >= 0.90)")
    print(f"ratio cached embeddings / encoder every step = {med['bare'] / med['bare+enc']:.2f}")


if __name__ == "__main__":
    main()
