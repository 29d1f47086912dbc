"""The Qwen2-Audio finetuning recipe (ACC §2.2 / §3.2): a task mixture from the builder's manifests, LoRA or full
finetuning, adapter-only checkpoints, and ``finetune_qwen2_audio`` which runs it on Ray Train + DeepSpeed.

Audio is read from the manifests' FLAC files and resampled to the processor's 16 kHz when a batch is collated (the
builder's log-mels are HTSAT's, not Whisper's). Each example's prompt is its record's prompt; audios are numbered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audiopair.config import Config, StageConfig
from audiopair.data.manifest import load_examples
from audiopair.train.engine import Recipe


def read_waves(example: dict, processor, max_seconds: float | None) -> list[np.ndarray]:
    """The example's audios at the processor's rate, mono, cropped to the encoder's window (with a warning)."""
    from audiopair.audio import load_audio
    from audiopair.models.qwen2_audio import fit_window

    sr = processor.feature_extractor.sampling_rate
    return [fit_window(load_audio(p, sr), processor, max_seconds, f"{example['id']} ({p})") for p in example["audio"]]


def zero_stage(cfg: Config) -> int:
    ft = cfg.finetune
    return ft.zero_stage if ft.zero_stage is not None else (2 if ft.method == "lora" else 3)


def make_recipe(config: dict) -> Recipe:
    """Recipe factory run on each worker. ``config``: {"cfg": the Config (``Config.for_workers``),
    optionally "examples": {"train": [...], "val": [...]}, example dicts as ``load_examples`` makes them, used instead
    of the manifests' task mixture (ACC Table 2's equal example budgets, the stand-in base's label questions)}."""
    import torch

    from audiopair.models import qwen2_audio as q

    cfg: Config = config["cfg"]
    ft = cfg.finetune
    tc = finetune_stage(cfg)[0]
    state: dict = {}

    def build():
        on_gpu = torch.cuda.is_available()
        if tc.zero_stage == 3:
            # ZeRO-3: from_pretrained partitions each weight across the workers as it loads (deepspeed.zero.Init),
            # so no worker ever holds the whole model; the object must stay alive until DeepSpeed wraps the model
            from transformers.integrations import HfDeepSpeedConfig

            from audiopair.train.engine import deepspeed_config

            state["zero3"] = HfDeepSpeedConfig(deepspeed_config(tc, on_gpu, ft.micro_batch))
        bf16 = tc.precision == "bf16" or (tc.precision == "auto" and on_gpu)
        model, processor = q.load_base(ft.model, torch.bfloat16 if bf16 else torch.float32)
        state["processor"] = processor
        checkpointing = ft.gradient_checkpointing if ft.gradient_checkpointing is not None else on_gpu
        return q.prepare_for_training(model, ft.method, ft.lora, ft.train_audio_tower, ft.train_projector,
                                      checkpointing)

    def examples(split: str) -> list[dict]:
        if config.get("examples"):
            return list(config["examples"][split])
        return load_examples(cfg.dataset.output_dir, split, ft.task_weights, cfg.train.seed)

    def collate(batch: list[dict]) -> dict:
        processor = state["processor"]
        waves = [read_waves(e, processor, ft.max_audio_seconds) for e in batch]
        return q.encode_batch(processor, batch, waves, ft.max_answer_tokens, ft.system_prompt)

    def save(model, folder: Path, state_dict: dict | None = None) -> None:
        q.save_finetuned(model, folder, state["processor"], base=ft.model, method=ft.method, state_dict=state_dict)

    def load(model, folder: Path) -> None:
        q.load_weights_into(model, folder, ft.method)

    return Recipe(build, lambda: examples("train"), lambda: examples("val"), collate, save, load,
                  length=lambda e: len(e["target"]), tokens=lambda b: int(b["attention_mask"].sum()))


def finetune_stage(cfg: Config) -> tuple:
    """``(TrainConfig, StageConfig)`` of the finetuning run: Ray Train settings from ``train``, the optimiser and
    batch shape from ``finetune``."""
    ft = cfg.finetune
    tc = cfg.train.model_copy(update={"run_name": ft.run_name, "micro_batch": ft.micro_batch,
                                      "grad_accum": ft.grad_accum, "zero_stage": zero_stage(cfg),
                                      "max_answer_tokens": ft.max_answer_tokens})
    stage = StageConfig(name="finetune", epochs=ft.epochs, lr=ft.lr, weight_decay=ft.weight_decay,
                        warmup_steps=ft.warmup_steps, schedule="cosine", micro_batch=ft.micro_batch)
    return tc, stage


def finetune_qwen2_audio(cfg: Config, say=print, extra: dict | None = None):
    """Train; returns ``(checkpoint, final metrics, Ray Result or None)``. A finished run (same ``finetune.run_name``
    and storage) is not trained again; an interrupted one resumes from its last epoch. ``extra`` goes to the loop's
    config (tests pass a ``step_hook`` with it)."""
    from audiopair.train.engine import fit_stage

    tc, stage = finetune_stage(cfg)
    say(f"[{tc.run_name}] {cfg.finetune.method} finetuning, {stage.epochs} epoch(s) at lr {stage.lr:g}, "
        f"{tc.num_workers} worker(s), ZeRO-{tc.zero_stage}, batch {tc.micro_batch} x {tc.grad_accum} accumulation")
    return fit_stage(make_recipe, tc, "finetune", tc.run_name, {"cfg": cfg.for_workers(), **(extra or {})}, stage)
