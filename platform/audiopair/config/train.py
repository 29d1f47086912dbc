"""Config of training: ADIFF's stages, Ray Train, Qwen2-Audio finetuning, ACC tables, the LM sweep."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from audiopair.config.base import Section
from audiopair.config.data import TaskName
from audiopair.variants import VariantName


# ---- training
class StageConfig(Section):
    """One training stage (ADIFF §3.3): how long, how fast, which schedule."""

    name: Literal["unimodal", "grounding", "finetune"] = "grounding"
    epochs: int = Field(30, ge=0)  # ADIFF App. G: 30 epochs of grounding, <= 10 of finetuning
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: float = Field(0.05, ge=0)  # < 1: a fraction of the stage's steps; >= 1: steps
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    step_every: int = Field(0, ge=0)  # schedule=step: multiply the LR by 0.5 every this many steps
    micro_batch: int | None = Field(None, ge=1)  # per worker; None: train.micro_batch


class UnimodalConfig(Section):
    """Stage 1, unimodal pretraining (ADIFF §3.3), for corpora without pretrained weights (the demo). At real scale it
    stays off and ``model.encoder.pretrained`` / ``model.lm_pretrained`` name HTSAT and GPT-2.

    On: a byte-level BPE tokenizer is trained on the training split's text, the encoder (``model.encoder`` sizes)
    on the clips' event labels, and an LM (``model.lm_type``, ``model.lm_*`` sizes) on the training split's text
    cut to ``lm_max_tokens`` (enough to learn the words and phrases; whole explanations are learnt in stages 2-3)."""

    enabled: bool = False
    vocab_size: int = Field(1024, ge=300)
    encoder_epochs: int = Field(8, ge=1)
    encoder_lr: float = Field(3e-3, gt=0)
    lm_epochs: int = Field(1, ge=1)
    lm_lr: float = Field(3e-3, gt=0)
    lm_max_tokens: int = Field(64, ge=8)
    encoder_micro_batch: int = Field(8, ge=1)  # small batches: more steps for a from-scratch encoder on few clips
    # More labelled audio for the from-scratch encoder, made from the training split alone (AudioSet, which HTSAT
    # learns from, has single-event clips and HTS-AT trains with mixup; the demo's AC clips are few and all scenes):
    # every event clip the training mixes use, alone at a seeded offset in silence ...
    encoder_event_clips: bool = False
    # ... and this many extra Audit-style mixes of the training split's own bases and events (seeded pairs, onsets and
    # SNRs in dataset.mix.snr_db), rendered on the worker
    encoder_extra_mixes: int = Field(0, ge=0)


class TrainConfig(Section):
    """Ray Train + DeepSpeed settings shared by the training jobs."""

    storage_path: str = "work/runs"  # local folder, NFS path or s3:// / gs:// URI for checkpoints
    run_name: str = "adiff-demo"  # a restarted job with the same name resumes from its last checkpoint
    # an ADIFF model folder (trained here, or a released checkpoint imported by jobs/import_adiff.py) the first of
    # train.stages starts from, with its architecture and tokenizer (model.* is then taken from the folder)
    init_from: str | None = None
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    micro_batch: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    val_limit: int | None = Field(None, ge=1)  # validate each epoch on a seeded sample of this many (None: all)
    max_answer_tokens: int = Field(64, ge=4)
    seed: int = 0
    max_failures: int = Field(2, ge=0)  # worker failures survived per stage (FailureConfig)
    keep_checkpoints: int = Field(2, ge=1)
    task_weights: dict[str, float] = {"adiff": 1.0, "position": 1.0}  # ADIFF tiers + position captioning (§5.4)
    # the models train_adiff.py trains, one after another, each through every stage (§5.1 compares them)
    variants: list[VariantName] = ["adiff"]
    # independent trainings run at once (stage 1's encoder and LM; the variants), each on num_workers workers:
    # on a small machine two 1-worker runs overlap each other's start-up, on a cluster they fill more GPUs
    parallel: int = Field(1, ge=1)
    # the frozen encoder's embeddings are computed once per variant before its stages: 0 in the job's process,
    # N on a Ray Data pool of N actors (one GPU each when use_gpu)
    embedding_actors: int = Field(0, ge=0)
    # each finished stage's model folder in MLflow (its run's ``model/`` artifacts): upload copies it, reference
    # logs only where it lies (storage_path), auto uploads when the tracking server has an artifact store (a local
    # store always has: sqlite's artifacts lie beside it)
    model_artifacts: Literal["auto", "upload", "reference"] = "auto"
    register_models: bool = True  # the final model of each variant goes into the Model Registry
    register_as: str | None = None  # its registered name (train_adiff adds -<variant>); None: the run name
    system_metrics: bool = True  # MLflow's CPU / memory / disk / network (and GPU) charts on the training runs
    unimodal: UnimodalConfig = UnimodalConfig()
    stages: list[StageConfig] = [
        StageConfig(name="grounding", epochs=30, lr=1e-4),
        StageConfig(name="finetune", epochs=10, lr=1e-6, schedule="cosine"),
    ]

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in train.stages; have {[s.name for s in self.stages]}")


# ---- Qwen2-Audio finetuning
class LoraConfig(Section):
    """peft LoRA on the language model (ACC §3.2: r 8, alpha 32, dropout 0.05, every linear layer)."""

    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    # projection names inside the language model (attention + MLP); lm_head and the audio tower stay out
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TinyQwenConfig(Section):
    """A random Qwen2-Audio small enough for CPU, created when ``finetune.model`` is a missing folder (demo, tests).
    Its tokenizer is a byte-level BPE trained on the dataset's texts with Qwen's special tokens."""

    enabled: bool = False
    vocab_size: int = Field(1000, ge=300)
    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    audio_dim: int = Field(32, ge=8)
    audio_layers: int = Field(1, ge=1)
    audio_heads: int = Field(2, ge=1)
    # Whisper's window is 30 s; every clip is padded to it, so a short window keeps CPU runs on short clips fast
    window_seconds: int = Field(10, ge=1, le=30)
    seed: int = 0


class FinetuneConfig(Section):
    """``jobs/finetune_qwen2_audio.py``: Qwen2-Audio LoRA or full finetuning (ACC §2.2 / §3.2, Table 2).

    Defaults are the paper's: LoRA r 8 / alpha 32 / dropout 0.05 on every linear layer of the language model, audio
    tower and projector frozen, AdamW lr 1e-4, weight decay 0.1, cosine, batch 1 x accumulation 16. Ray Train
    settings (workers, GPUs, precision, storage) come from ``train``; ``zero_stage`` None means ZeRO-2 for LoRA and
    ZeRO-3 for full finetuning."""

    model: str = "Qwen/Qwen2-Audio-7B-Instruct"  # hub id or local folder
    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig()
    train_audio_tower: bool = False
    train_projector: bool = False
    # the task mixture (ACC Table 2 rows: {ac: 1}, {adc: 1}, {acc: 1}, {ac: 1, adc: 1}, {ac: 1, acc: 1}); adiff too
    task_weights: dict[str, float] = {"ac": 1.0, "acc": 1.0}
    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: float = Field(0.03, ge=0)
    micro_batch: int = Field(1, ge=1)
    grad_accum: int = Field(16, ge=1)
    zero_stage: int | None = Field(None, ge=0, le=3)
    gradient_checkpointing: bool | None = None  # None: on when training on GPUs
    max_audio_seconds: float | None = Field(None, gt=0)  # None: the feature extractor's window (30 s for Whisper)
    max_answer_tokens: int = Field(256, ge=4)
    system_prompt: str | None = None  # None: the chat template's default
    run_name: str = "qwen2-audio"
    merge: bool = False  # LoRA: also export base + adapter merged as a standalone model folder
    evaluate_tasks: list[str] = ["ac"]  # what the job scores after training (ACC Table 2: audio captioning)
    tiny: TinyQwenConfig = TinyQwenConfig()


# ---- ACC Tables 2 and 3 in miniature (jobs/finetune_qwen2_audio.py with acc_table.enabled)
class AccBaseConfig(Section):
    """ACC Table 2's starting model in miniature: the stand-in for the pretrained Qwen2-Audio. A random
    ``finetune.tiny`` model fully finetuned (audio tower and projector too) on the build's AC training captions and
    on label questions: the classification question over fresh renders of the bank's event kinds, and "which sounds"
    over the AC clips' labels. Made once per fingerprint (its config and data) and reused."""

    epochs: int = Field(16, ge=1)  # at 12 the demo's base still answered every label question alike
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: float = Field(0.05, ge=0)
    micro_batch: int = Field(8, ge=1)
    # the seeded share of the AC training clips the base learns; the rest stay unseen by it, so the rows' AC (and
    # ACC, whose targets are those clips' captions) examples hold captions the base has still to learn
    ac_share: float = Field(0.5, gt=0, le=1)
    label_per_kind: int = Field(6, ge=0)  # classification-question training clips per event kind (0: none)
    label_lists: bool = False  # also ask "which sounds are in the audio" of every AC training clip
    # epochs on the label questions alone first (their answers need the audio: the tower starts to learn before
    # the captions' text priors can lower the loss without it)
    warmup_epochs: int = Field(0, ge=0)
    zero_stage: int = Field(1, ge=0, le=3)


class AccTableConfig(Section):
    """``jobs/finetune_qwen2_audio.py`` with ``acc_table.enabled``: ACC Tables 2 and 3 in one job. From one base,
    a LoRA row per finetuning task mixture (``finetune.lora`` / ``lr`` / batch), every row trained on ``budget``
    examples (a mixture's tasks share it equally), scored on AC captioning and ``evaluate.classify``."""

    enabled: bool = False
    name: str = Field("acc-table2-demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # report folder and MLflow run
    # each row's task mixture; its name is the tasks joined ("AC+ACC"), as in the paper's Table 2
    rows: list[list[TaskName]] = Field([["ac"], ["adc"], ["acc"], ["ac", "adc"], ["ac", "acc"]], min_length=1)
    budget: int = Field(512, ge=1)  # training examples per row, the same for every row
    parallel: int = Field(2, ge=1)  # rows trained and scored at once (one Ray Train worker each)
    val_limit: int | None = Field(64, ge=1)  # validation examples per task for the own-task loss table
    random_reference: bool = True  # also score the untrained random model the base started from
    base: AccBaseConfig = AccBaseConfig()


# ---- the language-model scaling sweep
class SweepConfig(Section):
    """``jobs/sweep_adiff.py``: ADIFF §5.3 (Table 5, Figure 4) as a Ray Tune grid. One trial per LM of ``sizes`` x
    value of each ``space`` key; each trains the ``stages`` of ``train.stages`` named here; ASHA stops a trial whose
    ``metric`` is behind the others' at the same epoch. Stage 1 (``train.unimodal``, the demo) runs before the
    trials: the encoder once, an LM per size."""

    name: str = "adiff-lm-scaling"  # the Tune experiment under train.storage_path; the same name resumes it
    # LM name -> model.* overrides, e.g. {gpt2-medium: {lm_pretrained: gpt2-medium}}, or tiny random sizes (their
    # stage-1 LMs are pretrained first) in the demo; empty: the one LM of model.*
    sizes: dict[str, dict[str, Any]] = {}
    space: dict[str, list[Any]] = {}  # dotted config key -> values, e.g. {train.stages.0.epochs: [30, 50]}: a grid
    stages: list[str] = ["grounding"]  # §5.3 scales stage 2; add finetune to train both per trial
    metric: Literal["val_loss", "train_loss"] = "val_loss"  # what ASHA compares, per epoch
    # asha: stop trials clearly behind at the same epoch; fifo: every trial trains to its end. §5.3 finds the larger
    # GPT-2s behind early and still improving at 50 epochs, so ASHA on sizes would stop exactly those trials.
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # ASHA: epochs every trial trains before it can be stopped
    reduction_factor: float = Field(2.0, gt=1)  # ASHA keeps the best 1/reduction_factor at each rung
    max_concurrent_trials: int = Field(0, ge=0)  # 0: as many as the cluster's GPUs (CPUs without GPUs) fit
    # the Tune trial process only drives Ray Train (its workers hold the cores): no CPU, so workers get them all
    trial_resources: dict[str, float] = {"CPU": 0.0, "memory": 256 * 2**20}
    eval_limit: int | None = Field(50, ge=1)  # test examples per tier each trial is scored on (None: all)
    metrics: list[str] = ["bleu_4", "meteor", "spider"]  # Table 5's columns, per tier
