"""The distributed training loop: Ray Train's TorchTrainer runs it on every worker, DeepSpeed drives the steps.

A *recipe* (train/adiff.py's stages 2-3, train/pretrain.py's stage 1, train/qwen.py's Qwen2-Audio finetune) supplies
the pieces: build the model, the train and validation examples, a collate function, and how to save the model. This module owns what every recipe shares:
the DeepSpeed engine (ZeRO stage, precision, micro-batch and accumulation from config), warmup + cosine / step
schedules, sharding the examples per worker, per-epoch validation, ``ray.train.report`` with checkpoints, and
resuming from the last checkpoint after a worker or driver failure.

Checkpoint folder (one per reported epoch)::

    model/                 the recipe's model files (safetensors, no pickle)
    train_state_rank{r}.pt optimizer / scheduler / epoch / RNG of rank r (loaded with weights_only=True)
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from audiopair.progress import Progress


@dataclass
class Recipe:
    """What a training job plugs into the loop. Every callable runs on the worker."""

    build_model: Callable[[], torch.nn.Module]  # the model, with its trainable parameters set (stage)
    train_examples: Callable[[], list]  # all training examples (the loop shards them by rank)
    val_examples: Callable[[], list]
    collate: Callable[[list], dict]  # examples -> keyword arguments of model.forward (tensors on CPU)
    # write the model into a folder; ``state_dict`` is None, or under ZeRO-3 the full weights gathered from every rank
    save_model: Callable[..., None]
    load_model: Callable[[torch.nn.Module, Path], None]  # read it back into a built model (before DeepSpeed wraps it)
    length: Callable[[object], int] | None = None  # an example's rough length: batches group similar lengths
    tokens: Callable[[dict], int] | None = None  # a collated batch's real (unpadded) tokens, for tokens_per_s


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float = 0.0, step_every: int = 0, gamma: float = 0.5):
    """Linear warmup, then cosine decay to ``min_ratio`` (``cosine``), multiplicative steps (``step``) or flat."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "step" and step_every:
            return gamma ** ((step - warmup) // step_every)
        return 1.0

    return f


def deepspeed_config(tc, on_gpu: bool, micro_batch: int | None = None) -> dict:
    """DeepSpeed's JSON config from ``TrainConfig``: fp32 on CPU, bf16 on GPU unless told otherwise."""
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and on_gpu)
    return {
        "train_micro_batch_size_per_gpu": micro_batch or tc.micro_batch,
        "gradient_accumulation_steps": tc.grad_accum,
        "gradient_clipping": tc.grad_clip,
        "zero_optimization": {"stage": tc.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW: DeepSpeed's fused Adam needs CUDA
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def micro_batches(examples: list, rank: int, world: int, micro: int, epoch: int, seed: int, shuffle: bool,
                  length: Callable[[object], int] | None = None, window: int = 32) -> list[list]:
    """This rank's micro-batches for one epoch: a seeded shuffle, then every ``world``-th example, trimmed so every
    rank takes the same number of steps (DeepSpeed's collectives need that).

    With ``length`` (an example's token length, roughly), examples are grouped by length: sorted within windows of
    ``window`` micro-batches, batched, and the batches shuffled again. Answers of very different lengths (ADIFF's
    tier 1 vs tier 3: 40 vs 190 tokens) then rarely share a batch, which halves the padding the model computes on,
    while every epoch still sees a fresh, random order of batches."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed * 1000 + epoch).shuffle(order)
    per_rank = len(order) // world
    mine = order[rank : per_rank * world : world]
    if length is not None:
        span = micro * window
        mine = [i for k in range(0, len(mine), span) for i in sorted(mine[k : k + span], key=lambda i: length(examples[i]))]
    groups = [mine[k : k + micro] for k in range(0, len(mine) - micro + 1, micro)] or ([mine] if mine else [])
    if length is not None and shuffle:
        random.Random(seed * 1000 + epoch + 1).shuffle(groups)
    return [[examples[i] for i in g] for g in groups]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


EPOCH_METRICS = ("epoch", "train_loss", "val_loss", "lr", "samples_per_s")  # what each epoch's history row keeps


def train_loop(config: dict) -> None:
    """``train_loop_per_worker`` for TorchTrainer. ``config``: {"recipe_factory": config -> Recipe, "train":
    the TrainConfig, "stage": the stage's name, "stage_config": its StageConfig (None: ``train.stage(stage)``),
    "step_hook": a callable run after every optimizer step with ``epoch, step, rank, world`` (tests: ``KillOnce``),
    "system_metrics": ``tracking.worker_system_metrics()`` or absent (rank 0 then logs its machine's system metrics
    to the stage's MLflow run), plus whatever the recipe factory reads (``config["cfg"]``: the job's Config)}."""
    import deepspeed
    import ray.train

    started = time.perf_counter()
    tc = config["train"]
    stage_cfg = config.get("stage_config") or tc.stage(config["stage"])
    recipe: Recipe = config["recipe_factory"](config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(tc.seed + rank)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    model = recipe.build_model()
    ckpt = ray.train.get_checkpoint()
    progress: dict = {}
    if ckpt:  # a restarted worker or job: weights first, into the plain model (ZeRO-3 partitions it afterwards)
        with ckpt.as_directory() as d:
            recipe.load_model(model, Path(d) / "model")
            progress = json.loads((Path(d) / "progress.json").read_text())
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    train_ex, val_ex = recipe.train_examples(), recipe.val_examples()
    if tc.val_limit and len(val_ex) > tc.val_limit:  # the same sample every epoch, so the losses compare
        val_ex = random.Random(tc.seed).sample(val_ex, tc.val_limit)
    micro = stage_cfg.micro_batch or tc.micro_batch
    steps_per_epoch = max(1, len(train_ex) // (world * micro * tc.grad_accum))
    total = steps_per_epoch * stage_cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay,
                                  betas=(0.9, 0.999))
    warmup = stage_cfg.warmup_steps if stage_cfg.warmup_steps >= 1 else int(stage_cfg.warmup_steps * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(stage_cfg.schedule, warmup, total, stage_cfg.min_lr_ratio, stage_cfg.step_every))
    engine, optimizer, _, sched = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=sched, config=deepspeed_config(tc, on_gpu, micro),
        dist_init_required=False)

    start_epoch, history = 0, []
    if ckpt:  # continue after the last reported epoch
        with ckpt.as_directory() as d:
            start_epoch = int(progress["epoch"]) + 1
            history = list(progress.get("history", []))
            files = [Path(d) / f"train_state_rank{r}.pt" for r in range(world)]
            if progress.get("world") == world and all(f.exists() for f in files):
                states = [load_train_state(f) for f in files]
                # ZeRO's optimizer restores its partition from the list of every rank's state; plain ones from one
                optimizer.load_state_dict([s["optimizer"] for s in states] if tc.zero_stage else states[rank]["optimizer"])
                sched.load_state_dict(states[rank]["scheduler"])
                torch.set_rng_state(states[rank]["torch_rng"])
            # else: another world size; the weights resume, the optimizer state starts afresh

    setup_s = time.perf_counter() - started  # model, examples, embedding cache, DeepSpeed: paid once per stage
    monitor = None
    if rank == 0 and config.get("system_metrics"):  # this worker's machine (GPU) charted into the stage's run
        from audiopair.tracking import start_system_metrics

        monitor = start_system_metrics(config["system_metrics"])
    for epoch in range(start_epoch, stage_cfg.epochs):
        engine.train()
        t0, seen, tokens, losses = time.perf_counter(), 0, 0, []
        batches = micro_batches(train_ex, rank, world, micro, epoch, tc.seed, shuffle=True,
                                length=recipe.length)
        # rank 0's steps, a line at most every 15 s in the worker's log (Ray's worker logs, the dashboard)
        bar = Progress(len(batches), f"{config['stage']} epoch {epoch + 1}/{stage_cfg.epochs}", "steps",
                       emit=print, heartbeat=True) if rank == 0 else None
        for i, batch in enumerate(batches):
            inputs = recipe.collate(batch)
            tokens += recipe.tokens(inputs) if recipe.tokens else 0
            out = engine(**_to(inputs, device))
            engine.backward(out.loss)
            engine.step()
            losses.append(float(out.loss.detach()))
            seen += len(batch)
            if bar is not None:
                bar.update(1)
            if config.get("step_hook"):  # a test's probe (e.g. ``KillOnce``); nothing in production sets one
                config["step_hook"](epoch=epoch, step=i, rank=rank, world=world)
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - t0
        val_loss = evaluate_loss(engine, recipe, val_ex, rank, world, micro, device)
        metrics = {
            "epoch": epoch, "stage": config["stage"], "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val_loss, "lr": sched.get_last_lr()[0], "samples_per_s": seen * world / max(train_seconds, 1e-9),
            "steps": len(batches), "tokens_per_s": tokens * world / max(train_seconds, 1e-9), "start_epoch": start_epoch, "world": world, "setup_s": setup_s,
            "epoch_s": time.perf_counter() - t0,
        }
        # Every epoch so far rides along: Ray Train's result keeps the metrics of kept checkpoints only
        # (train.keep_checkpoints), and MLflow's curves need all of them
        history.append({k: metrics[k] for k in EPOCH_METRICS})
        metrics["history"] = json.dumps(history)
        # ZeRO-3 holds a slice of each weight per rank: every rank joins the gather, rank 0 writes the result
        full = engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_stage() == 3 else None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                recipe.save_model(engine.module, Path(tmp) / "model", **({"state_dict": full} if full else {}))
                (Path(tmp) / "progress.json").write_text(json.dumps({"epoch": epoch, "world": world,
                                                                     "history": history}))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                        "torch_rng": torch.get_rng_state()}, Path(tmp) / f"train_state_rank{rank}.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"epoch_{epoch:04d}")
    if monitor is not None:
        monitor.finish()


def load_train_state(path: Path) -> dict:
    """Optimizer / scheduler state with ``weights_only=True``: no arbitrary pickle. DeepSpeed's ZeRO optimizer state
    holds a few of its own plain data classes, which are allow-listed by name, nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location="cpu", weights_only=True)


@torch.no_grad()
def evaluate_loss(engine, recipe: Recipe, examples: list, rank: int, world: int, micro: int, device) -> float:
    """Mean validation loss over all ranks (each rank scores its share; an all-reduce averages)."""
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for micro_batch in micro_batches(examples, rank, world, micro, 0, 0, shuffle=False, length=recipe.length):
        out = engine(**_to(recipe.collate(micro_batch), device))
        total += torch.tensor([float(out.loss) * len(micro_batch), len(micro_batch)], dtype=torch.float64)
    if torch.distributed.is_initialized():
        t = total.to(device)
        torch.distributed.all_reduce(t)
        total = t.cpu()
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def fit(recipe_factory: Callable[[dict], Recipe], train_cfg, stage: str, run_name: str, extra: dict | None = None,
        stage_cfg=None, callbacks: list | None = None):
    """Run one stage on Ray Train; returns the ``Result`` (metrics, best/last checkpoint).

    ``stage_cfg`` (a ``StageConfig``) overrides ``train_cfg.stage(stage)`` (stage 1's trainings use their own).
    ``callbacks``: Ray Train callbacks of the run (a sweep's trial passes the one that reports epochs to Tune).
    Restarting with the same ``run_name`` and ``storage_path`` resumes from the last reported checkpoint; a worker
    that dies is replaced and resumes too (``FailureConfig(max_failures)``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = storage_uri(train_cfg)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"recipe_factory": recipe_factory, "train": train_cfg, "stage": stage,
                           "stage_config": stage_cfg, **(extra or {})},  # config objects: they pickle
        scaling_config=ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu,
                                     resources_per_worker={"CPU": train_cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name, storage_path=storage,
            failure_config=FailureConfig(max_failures=train_cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train_cfg.keep_checkpoints),
            callbacks=callbacks,
        ),
    )
    return trainer.fit()


# ---------------------------------------------------------------------------------------------- stage results
_LOCAL: dict[str, Path] = {}


def local_dir(ref) -> Path:
    """A checkpoint reference as a local folder: a path as is, a ``ray.train.Checkpoint`` on local disk as its path,
    one on S3 / GCS downloaded once per process. Workers get references from the driver and call this."""
    import pyarrow.fs

    if not hasattr(ref, "filesystem"):  # (a Checkpoint is os.PathLike too, but refuses to be used as one)
        return Path(ref)

    if isinstance(ref.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(ref.path)
    key = f"{ref.filesystem.type_name}:{ref.path}"
    if key not in _LOCAL:
        _LOCAL[key] = Path(ref.to_directory(tempfile.mkdtemp(prefix="audiopair_ckpt_")))
    return _LOCAL[key]


def checkpoint_uri(ckpt) -> str:
    """Where a ``ray.train.Checkpoint`` lies, as a URI others can read: ``s3://...`` / ``gs://...``, or its local
    path."""
    kind = ckpt.filesystem.type_name
    return ckpt.path if kind == "local" else f"{'gs' if kind == 'gcs' else kind}://{ckpt.path}"


def storage_uri(train_cfg) -> str:
    """``train.storage_path`` as Ray Train takes it: a URI as is, a local folder made absolute."""
    storage = train_cfg.storage_path
    return storage if "://" in storage else str(Path(storage).resolve())


def _storage(train_cfg):
    """``(filesystem, root)`` of ``train.storage_path``, for the files written beside Ray Train's run folders."""
    import pyarrow.fs

    storage = storage_uri(train_cfg)
    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), storage


def finished_stage(train_cfg, run_name: str):
    """``(checkpoint, metrics)`` of a stage that already completed under ``run_name`` (a re-run job skips it),
    else None. The marker is written by :func:`fit_stage` beside Ray Train's own run folder."""
    import pyarrow.fs
    import ray.train

    fs, root = _storage(train_cfg)
    marker = f"{root}/{run_name}/audiopair_done.json"
    if fs.get_file_info(marker).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(marker) as f:
        done = json.loads(f.read().decode())
    return ray.train.Checkpoint(done["checkpoint"], filesystem=fs), done["metrics"]


def fit_stage(recipe_factory, train_cfg, stage: str, run_name: str, extra: dict | None = None, stage_cfg=None,
              callbacks: list | None = None):
    """:func:`fit`, once: ``(checkpoint, final metrics, Result or None)``. A completed stage (same run name and
    storage) is not trained again; a stage that was interrupted resumes from its last epoch. Raises when training
    failed for good."""
    done = finished_stage(train_cfg, run_name)
    if done:
        return done[0], done[1], None
    res = fit(recipe_factory, train_cfg, stage, run_name, extra, stage_cfg, callbacks)
    if res.error is not None:
        raise RuntimeError(f"training stage {run_name!r} failed: {res.error}") from res.error
    fs, root = _storage(train_cfg)
    metrics = {k: v for k, v in res.metrics.items() if isinstance(v, (int, float, str))}
    with fs.open_output_stream(f"{root}/{run_name}/audiopair_done.json") as f:
        f.write(json.dumps({"checkpoint": res.checkpoint.path, "metrics": metrics}).encode())
    return res.checkpoint, metrics, res


@dataclass
class KillOnce:
    """A ``step_hook`` for fault-tolerance tests: the last rank exits abruptly at (``epoch``, ``step``) unless
    ``marker`` exists, which it writes first, so the replacement worker group runs on."""

    epoch: int
    step: int
    marker: str

    def __call__(self, epoch: int, step: int, rank: int, world: int) -> None:
        if (epoch, step) == (self.epoch, self.step) and rank == world - 1 and not Path(self.marker).exists():
            Path(self.marker).write_text(f"worker {rank} killed at epoch {epoch} step {step}")
            os._exit(1)
