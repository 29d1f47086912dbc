"""Typed configuration: one home for every default.

A job's config is a YAML file (``jobs/configs/demo.yaml`` by default) plus dotted overrides on the command line,
``dataset.num_workers=2``. Unknown or ill-typed keys fail with the dotted path of the key at fault and the keys or
values that are allowed there, before any work starts.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key at fault."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- sources
SourceKind = Literal["demo", "audiocaps", "clotho", "events", "adiff_csv"]


class DemoBankConfig(Section):
    """The procedurally synthesised demo corpus (no downloads)."""

    seed: int = 0
    clip_seconds: float = Field(4.0, gt=0.5, le=30)
    event_clips_per_kind: int = Field(12, ge=3)
    base_clips: int = Field(90, ge=6)
    max_backgrounds: int = Field(2, ge=1, le=2)
    events: bool = True  # false: only base scenes, with events from another source (e.g. an event folder)


class SourceConfig(Section):
    """One place clips and captions come from.

    ``role`` says how the builder uses its clips: ``base`` clips are the A of an edit triple, ``event`` clips the B
    and C, ``pairs`` sources (ADIFF CSVs) bring ready-made pairs.
    """

    kind: SourceKind = "demo"
    name: str | None = None  # dataset name used in metric keys; defaults to kind
    csv: str | None = None  # AudioCaps / Clotho caption CSV, event caption CSV, ADIFF CSV (one or a glob)
    audio_dir: str | None = None  # folder the CSV's audio paths are relative to
    role: Literal["base", "event", "pairs", "auto"] = "auto"
    limit: int | None = Field(None, ge=1)  # take at most this many clips (quick looks at big corpora)
    split: Literal["train", "val", "test"] | None = None  # pin every clip of this source to one split

    @property
    def label(self) -> str:
        return self.name or self.kind


# --------------------------------------------------------------------------------------------- building
class MixConfig(Section):
    """Audit-style mixing of an event clip into a base clip."""

    snr_db: tuple[float, float] = (0.0, 10.0)  # event level relative to the base, drawn uniformly
    peak_dbfs: float = Field(-1.0, le=0.0)  # the mix is scaled down when its peak passes this
    min_event_seconds: float = Field(0.3, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "MixConfig":
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db range must be (low, high), got {self.snr_db}")
        return self


class SplitConfig(Section):
    """Fractions of source clips per split; splits are disjoint by source clip."""

    train: float = Field(0.7, ge=0)
    val: float = Field(0.15, ge=0)
    test: float = Field(0.15, ge=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class ExplanationConfig(Section):
    """How ADIFF tier 1-3 explanations are written."""

    generator: Literal["template", "llm"] = "template"
    llm_path: str | None = None  # local folder or hub id of a causal LM (generator=llm)
    llm_max_new_tokens: int = Field(256, ge=8)
    llm_batch_size: int = Field(8, ge=1)
    llm_concurrency: int = Field(1, ge=1)
    llm_num_gpus: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _llm_needs_path(self) -> "ExplanationConfig":
        if self.generator == "llm" and not self.llm_path:
            raise ValueError("generator 'llm' needs llm_path (a local model folder or hub id)")
        return self


TaskName = Literal["ac", "adc", "acc", "adiff", "position"]


class TasksConfig(Section):
    """Which examples the builder writes, and how many."""

    enabled: list[TaskName] = ["ac", "adc", "acc", "adiff", "position"]
    triples_per_base: int = Field(2, ge=1)  # edit triples (A, B, C) drawn per base clip
    random_pairs_per_clip: int = Field(1, ge=0)  # ADIFF App. E random pairs per clip
    random_pair_exclude: int = Field(5, ge=1)  # App. E: partner is not one of clips i .. i+4
    tiers: list[Literal[1, 2, 3]] = [1, 2, 3]
    position_kinds: list[Literal["first", "second", "both"]] = ["first", "second", "both"]
    explanations: ExplanationConfig = ExplanationConfig()


class FeatureConfig(Section):
    """Front-end features cached next to the manifests (HTSAT: 32 kHz, 64 mels, 1024 window, 320 hop)."""

    logmel: bool = True
    n_mels: int = Field(64, ge=8)
    n_fft: int = Field(1024, ge=64)
    hop_length: int = Field(320, ge=16)
    f_min: float = Field(50.0, ge=0)
    f_max: float | None = 14000.0
    # ADIFF's reference front end (torchlibrosa / librosa defaults): Slaney mel scale, Slaney (area) normalised
    # filters. "htk" with mel_norm null is torchaudio's MelSpectrogram default, which the demo keeps.
    mel_scale: Literal["slaney", "htk"] = "slaney"
    mel_norm: Literal["slaney"] | None = "slaney"
    # how the cached log-mels are stored: float32 keeps the reference's values exactly (a 10 s clip is 256 kB);
    # float16 halves that at a rounding of up to 0.03 dB
    dtype: Literal["float32", "float16"] = "float32"
    # also cache model.encoder's embeddings after the build (a pretrained, frozen encoder: real-scale ADIFF), on a
    # Ray Data pool of embedding_actors actors (GPU actors with embedding_gpus); training then never runs it
    embeddings: bool = False
    embedding_actors: int = Field(1, ge=0)
    embedding_gpus: float = Field(0.0, ge=0)


class DatasetConfig(Section):
    """``jobs/build_dataset.py``: sources -> plan -> render -> targets -> features."""

    name: str = "demo"
    output_dir: str = "work/datasets/demo"
    sources: list[SourceConfig] = [SourceConfig(kind="demo")]
    demo: DemoBankConfig = DemoBankConfig()
    sample_rate: int = Field(32000, ge=8000)
    clip_seconds: float | None = Field(10.0, gt=0)  # crop/pad every rendered clip; None keeps source length
    # how a source file is fitted to clip_seconds (ADIFF's loader: repeat short clips, random crops in training; it
    # crops at random at inference too, which audiopair makes a deterministic choice). "random" is seeded by
    # dataset.seed and the clip id, so the cached features stay reproducible.
    pad_mode: Literal["repeat", "zero"] = "repeat"
    train_crop: Literal["random", "start", "center"] = "random"
    eval_crop: Literal["start", "center"] = "start"
    seed: int = 0
    splits: SplitConfig = SplitConfig()
    mix: MixConfig = MixConfig()
    tasks: TasksConfig = TasksConfig()
    features: FeatureConfig = FeatureConfig()
    num_workers: int = Field(2, ge=1)
    shard_size: int = Field(16, ge=1)  # clips per shard: the unit of resuming
    tasks_per_worker: int = Field(2, ge=1)  # Ray Data tasks per worker (each renders several shards)
    max_rejected_fraction: float = Field(0.05, ge=0, le=1)
    on_existing: Literal["resume", "refuse", "overwrite"] = "resume"


# ---- models
class EncoderConfig(Section):
    """The HTSAT audio encoder (transformers' ClapAudioModel). Defaults are the paper's (ADIFF App. G).

    ``pretrained`` is a hub id or local folder holding a ClapAudioModel (or a whole ClapModel, whose audio tower is
    taken); ``None`` builds a random encoder from the size fields below (seeded by ``seed``). ``n_mels`` must equal
    ``dataset.features.n_mels``.
    """

    pretrained: str | None = "laion/clap-htsat-unfused"
    n_mels: int = Field(64, ge=8)
    frames: int | None = Field(1001, ge=8)  # crop / repeat-pad time to this (1001 = 10 s at a 10 ms hop); None: as is
    spec_size: int = Field(256, ge=16)  # Swin image side; time is resized to spec_size * (spec_size // n_mels)
    patch_size: int = Field(4, ge=1)
    patch_stride: int = Field(4, ge=1)
    window_size: int = Field(8, ge=1)
    embed_dim: int = Field(96, ge=4)  # first stage width; the embedding is embed_dim * 2 ** (len(depths) - 1)
    depths: list[int] = [2, 2, 6, 2]
    heads: list[int] = [4, 8, 16, 32]
    num_classes: int = Field(527, ge=1)  # event head classes (AudioSet: 527; demo: the bank's event kinds)
    # frame logits -> clip logits for stage-1 event training. "max" keeps the frame probabilities calibrated (an absent
    # event must be low in every frame), which the hallucination view reads; "attention" fits clips a bit faster.
    clip_pool: Literal["max", "attention"] = "max"
    # "token_semantic": HTSAT's own head, a (2 x 3) convolution over the last feature map whose clip output is the
    # mean of its frame outputs (what HTSAT's AudioSet checkpoints and ADIFF carry); "linear": a per-frame linear
    # with clip_pool pooling (trains faster from scratch on the demo)
    event_head: Literal["token_semantic", "linear"] = "token_semantic"
    # AudioSet's class_labels_indices.csv (index,mid,display_name) naming the event head's classes; None: numbered
    class_labels: str | None = None
    freeze: bool = True  # ADIFF App. G: frozen in every stage; False lets stage 3 train it
    seed: int = 0  # random init (pretrained=None, language_only) is reproducible

    @model_validator(mode="after")
    def _shapes(self) -> "EncoderConfig":
        if len(self.depths) != len(self.heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and heads {self.heads} must be non-empty and of equal length")
        if self.spec_size % self.n_mels:
            raise ValueError(f"spec_size ({self.spec_size}) must be a multiple of n_mels ({self.n_mels})")
        ratio = self.spec_size // self.n_mels
        grid = self.spec_size // self.patch_stride
        final = grid // 2 ** (len(self.depths) - 1)
        if grid % 2 ** (len(self.depths) - 1) or final < 1 or final % ratio:
            raise ValueError(
                f"spec_size {self.spec_size} / patch_stride {self.patch_stride} / 2^{len(self.depths) - 1} = {final} "
                f"must be a positive multiple of spec_size // n_mels = {ratio}"
            )
        for i, h in enumerate(self.heads):
            if (self.embed_dim * 2**i) % h:
                raise ValueError(f"stage {i} width {self.embed_dim * 2**i} is not divisible by heads[{i}] = {h}")
        return self


class AdiffModelConfig(Section):
    """ADIFF (paper section 3, App. G/J): encoder -> per-audio mappers -> separator -> text mapper -> cross-projection
    -> GPT-2. Defaults are the paper's sizes; the demo overrides them with tiny ones."""

    variant: Literal["adiff", "baseline", "language_only"] = "adiff"
    prefix_len: int = Field(40, ge=1)  # tokens per audio
    prompt_len: int = Field(40, ge=1)  # prompt tokens (padded / truncated), also the text prefix length
    # The defaults below are the released network (soham97/ADIFF model/adiff.py, model/decoder.py): base.yaml says
    # num_layers 8, and the code builds int(8 / 2) = 4 layers per mapper; mapper heads are hard-coded to 8.
    mapper_layers: int = Field(4, ge=1)
    mapper_heads: int = Field(8, ge=1)
    mapper_mlp_ratio: float = Field(2.0, gt=0)  # ClipCap's TransformerMapper uses 2
    cross_layers: int = Field(4, ge=1)
    cross_heads: int = Field(4, ge=1)
    shared_mapper: bool = False  # paper: a mapper per audio
    dropout: float = Field(0.0, ge=0, lt=1)  # in the mappers and cross-projection (the reference's is 0)
    # audio projection: d_audio -> d_proj (two bias-free linears, GELU, dropout, residual, LayerNorm); None: none
    d_proj: int | None = Field(1024, ge=1)
    projection_dropout: float = Field(0.5, ge=0, lt=1)
    normalize_prefix: bool = True  # L2-normalise the (projected) audio embedding before the mappers
    # audiopair's own options, each measured on the demo (benchmarks/RESULTS.md); the defaults are the reference's
    activation: Literal["relu", "gelu"] = "relu"  # in the mapper / cross-projection MLPs
    attention_bias: bool = False  # biases on the queries / keys / values projections
    text_position: bool = False  # a learned position vector added to the prompt embeddings in the text mapper
    prompt_mask: bool = False  # the text mapper ignores prompt padding (the reference attends to the pad tokens)
    cross_constant: bool = False  # a learned per-position constant added before the cross-projection
    # how a prompt becomes the text mapper's input: text + prompt_suffix, right-padded with prompt_pad to
    # prompt_len (the reference: " <|endoftext|>" and "!"); "<|endoftext|>" as pad is the tokenizer's eos
    prompt_suffix: str = " <|endoftext|>"
    prompt_pad: str = "!"
    lm_pretrained: str | None = "gpt2"  # gpt2 / gpt2-medium / gpt2-large / gpt2-xl or a local folder; None: tiny random
    lm_layers: int = Field(12, ge=1)  # sizes of a random GPT-2 (lm_pretrained=None); defaults = GPT-2 base
    lm_dim: int = Field(768, ge=8)
    lm_heads: int = Field(12, ge=1)
    lm_positions: int = Field(1024, ge=16)
    separator_token: str = "<|endoftext|>"  # in every GPT-2 vocabulary, so no embedding resize is needed
    encoder: EncoderConfig = EncoderConfig()

    @model_validator(mode="after")
    def _dims(self) -> "AdiffModelConfig":
        if self.lm_pretrained is None and self.lm_dim % self.lm_heads:
            raise ValueError(f"lm_dim ({self.lm_dim}) must be divisible by lm_heads ({self.lm_heads})")
        return self


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
    on the clips' event labels, and a GPT-2 (``model.lm_*`` sizes) on the training split's text cut to
    ``lm_max_tokens`` (enough to learn the words and phrases; whole explanations are learnt in stages 2-3)."""

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
    variants: list[Literal["adiff", "baseline", "language_only"]] = ["adiff"]
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


# ---- evaluation
class DecodingConfig(Section):
    """How generation decodes: greedy, beam search, or top-k / top-p / temperature sampling (seeded)."""

    # "reference": ADIFF's wrapper loop (soham97/ADIFF wrapper.py _generate_greedy): argmax after a top-p 0.8 mask
    # (which cannot change the argmax), no KV cache, stop after emitting stop_token's first id (a lone space for
    # " <|endoftext|>", id 220), which is kept in the text
    strategy: Literal["greedy", "beam", "sample", "reference"] = "greedy"
    max_new_tokens: int = Field(64, ge=1)
    stop_token: str = " <|endoftext|>"  # strategy=reference only
    num_beams: int = Field(4, ge=1)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0


class ClassifyConfig(Section):
    """One downstream classification set (ACC §3.1, Table 3): the model answers a label question per clip.

    ``csv`` is a ``path,label`` CSV (VocalSound, IEMOCAP, NSynth, GTZAN lists...) or ``demo``: ``per_kind`` fresh
    renders of each demo-bank event kind, labelled by kind (no downloads). Metrics: ``<name>/classify/all/accuracy``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # metric prefix and report column
    csv: str  # a path,label CSV, or "demo"
    audio_dir: str | None = None  # relative audio paths resolve here (default: the CSV's folder)
    path_column: str = "path"
    label_column: str = "label"
    labels: list[str] | None = None  # the label set, in prompt order (default: sorted labels of the CSV)
    synonyms: dict[str, list[str]] = {}  # label -> other names the answer may use (demo: the bank's phrases too)
    # asked of every model; default: the label question (classification_prompt(labels)) for instruction-tuned
    # models, "Caption the first audio." for prefix models (ADIFF), whose caption is then mapped onto the labels
    prompt: str | None = None
    limit: int | None = Field(None, ge=1)  # a seeded sample of at most this many rows (None: all)
    per_kind: int = Field(3, ge=1)  # csv: demo only: clips per event kind
    threshold: float = Field(0.8, gt=0, le=1)  # fuzzy label matching
    max_new_tokens: int = Field(32, ge=1)  # answers are labels; evaluate.decoding gives the rest of the decoding


class EvalConfig(Section):
    """Batch generation and scoring of a split's manifests."""

    # name -> ADIFF model folder (a checkpoint's model/), for jobs/evaluate.py; train_adiff.py fills it itself
    checkpoints: dict[str, str] = {}
    split: str = "test"
    tasks: list[str] = ["adiff"]
    limit: int | None = Field(None, ge=1)  # at most this many examples per task and tier (None: all)
    batch_size: int = Field(32, ge=1)
    num_actors: int = Field(0, ge=0)  # 0: generate in the job's process; N: a Ray Data actor pool of N models
    gpus_per_actor: float = Field(0.0, ge=0)
    metrics: list[str] = ["bleu_1", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider", "fense", "vocab"]
    decoding: DecodingConfig = DecodingConfig()
    draw: list[str] = []  # example ids to draw as ADIFF §6 hallucination views (explanation + event probabilities)
    classify: list[ClassifyConfig] = []  # downstream classification accuracy per model (ACC Table 3)


# ---- human evaluation and pages (serve/)
class ScenarioConfig(Section):
    """One scenario of a listening test (ADIFF Table 3's Studio / FSD50K / GTZAN): a named set of pairs, with the
    predictions of every model on it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # report folders of jobs/evaluate.py or train_adiff.py (predictions/<model>.jsonl) or MLflow run ids of their
    # parent runs (each child run <model>/evaluate holds predictions/<split>.json)
    predictions: list[str] = Field(min_length=1)
    dataset: str | None = None  # dataset folder whose manifests give each id's audio files (MLflow tables lack them)
    split: str = "test"
    pairs: str | None = None  # a CSV with an ``id`` column: only these pairs (a hand-picked subset)


class StudyConfig(Section):
    """``jobs/listening_test.py``: the blind listening test of ADIFF Table 3 / App. I.2."""

    name: str = Field("study", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    output_dir: str = "work/studies/demo"  # study.json, raters.json, audio/, ratings.db, report/
    scenarios: list[ScenarioConfig] = []
    models: list[str] = []  # models to compare ([]: every model that all scenarios have)
    tiers: list[int] = [1, 2, 3]
    pairs_per_tier: int = Field(2, ge=1)  # K pairs drawn per scenario and tier (seeded)
    raters: list[str] = Field(["rater1", "rater2", "rater3"], min_length=1)
    seed: int = 0
    audio: Literal["copy", "link"] = "copy"  # link: hard links (copies where the file system refuses)
    on_existing: Literal["refuse", "overwrite"] = "refuse"
    bootstrap: int = Field(2000, ge=100)  # resamples for the 95% confidence intervals
    alpha_level: Literal["nominal", "ordinal", "interval", "ratio"] = "ordinal"  # Krippendorff's alpha


class ServeConfig(Section):
    """The web pages: the listening test and the explain page."""

    host: str = "127.0.0.1"  # 0.0.0.0 only behind a proxy you trust
    port: int = Field(8000, ge=0, le=65535)
    database: str | None = None  # SQLAlchemy URL for ratings (None: SQLite in the study folder)
    max_upload_mb: float = Field(20.0, gt=0)  # explain page: per uploaded file
    max_seconds: float = Field(30.0, gt=0)  # explain page: per uploaded file
    examples: str | None = None  # explain page: a folder of audio files users may pick instead of uploading


# --------------------------------------------------------------------------------------------- root
class Config(Section):
    """Root of every job's config: the dataset build, the model, its training and its evaluation."""

    work_dir: str = "work"  # MLflow's local store (mlflow.db, mlartifacts) and reports go here
    experiment: str = "audiopair"  # the MLflow experiment
    dataset: DatasetConfig = DatasetConfig()
    model: AdiffModelConfig = AdiffModelConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvalConfig = EvalConfig()
    sweep: SweepConfig = SweepConfig()
    acc_table: AccTableConfig = AccTableConfig()
    study: StudyConfig = StudyConfig()
    serve: ServeConfig = ServeConfig()


# --------------------------------------------------------------------------------------------- loading
def _allowed_here(model: type[BaseModel], loc: tuple) -> str:
    """Describe what is allowed at ``loc`` (the field names of the section, or a Literal's values)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return "allowed keys: " + ", ".join(sorted(current.model_fields))
            current = field.annotation
            # unwrap Optional / list[...] to reach a section or a Literal
            for _ in range(3):
                args = [a for a in typing.get_args(current) if a is not type(None)]
                if typing.get_origin(current) in (list, tuple, typing.Union) and args:
                    current = args[0]
                elif str(typing.get_origin(current)).endswith("UnionType") and args:
                    current = args[0]
        else:
            break
    if typing.get_origin(current) is Literal:
        return "allowed values: " + ", ".join(repr(v) for v in typing.get_args(current))
    if isinstance(current, type) and issubclass(current, BaseModel):
        return "allowed keys: " + ", ".join(sorted(current.model_fields))
    return ""


def _format_validation_error(err: ValidationError, model: type[BaseModel], origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = loc[:-1]
            msg = f"unknown key; {_allowed_here(model, parent + ('__none__',)) or _allowed_here(model, parent)}"
        else:
            hint = _allowed_here(model, loc)
            if hint.startswith("allowed values"):
                msg = f"{msg}; {hint}"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {path}: {msg}{got_s}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML, so ``2``, ``true``, ``[1, 2]`` are typed)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_dotted(tree: dict, path: list[str], value: Any, model: type[BaseModel]) -> None:
    node = tree
    section: Any = model
    for i, part in enumerate(path[:-1]):
        if part.isdigit() and isinstance(node, list):
            node = node[int(part)]
            continue
        if isinstance(section, type) and issubclass(section, BaseModel) and part not in section.model_fields:
            where = ".".join(path[: i + 1])
            raise ConfigError(
                f"unknown config key {where!r}; allowed keys: {', '.join(sorted(section.model_fields))}"
            )
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        node = child
        if isinstance(section, type) and issubclass(section, BaseModel):
            section = section.model_fields[part].annotation
    last = path[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _section(model: Any, key: str) -> type[BaseModel] | None:
    """The config section (a model class) that field ``key`` of ``model`` holds, or None for a plain value or a
    free-form mapping such as ``task_weights``."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or key not in model.model_fields:
        return None
    ann = model.model_fields[key].annotation
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _merge(base: dict, extra: dict, model: Any = None) -> dict:
    """``extra`` laid over ``base``: sections merge key by key; values, lists and free-form mappings (task weights,
    checkpoints) are replaced whole, so a file that names ``{adc: 1}`` does not inherit the default's other tasks."""
    out = dict(base)
    for k, v in extra.items():
        sub = _section(model, k)
        out[k] = _merge(out[k], v, sub) if sub and isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(p: Path, model: Any, seen: tuple = ()) -> dict:
    """One config file as a mapping, with its ``extends`` chain merged underneath."""
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist" + (f" (extended by {seen[-1]})" if seen else ""))
    if p.resolve() in seen:
        raise ConfigError(f"config file {p} extends itself through {' -> '.join(map(str, seen))}")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top, got {type(loaded).__name__}")
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    if not isinstance(parent, str):
        raise ConfigError(f"config file {p}: extends must be a file name, got {parent!r}")
    return _merge(_read_yaml(p.parent / parent, model, seen + (p.resolve(),)), loaded, model)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    model: type[BaseModel] = Config,
) -> Any:
    """Read ``path`` (YAML; ``None`` means built-in defaults), apply dotted overrides, validate.

    A file may start from another: ``extends: base.yaml`` (relative to the file) loads that first and lays this
    file's keys over it, so one config per experiment row repeats only what differs."""
    origin = str(path) if path else "defaults"
    tree = _read_yaml(Path(path), model) if path else {}
    # Start from the model's defaults so dotted overrides can reach into lists (e.g. dataset.sources.0.csv).
    tree = _merge(model().model_dump(mode="json"), tree, model)
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_dotted(tree, keys, value, model)
    if overrides:
        origin = f"{origin} + overrides"
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, model, origin)) from None


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (logged to MLflow as ``config.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` for MLflow params."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json")
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = tree
    return out


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "demo.yaml"


def config_from_argv(argv: list[str] | None = None, description: str = "") -> Config:
    """The command line every job shares: ``[--config FILE] [key.sub=value ...]``; demo.yaml by default."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name} when present)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dataset.num_workers=2")
    args = parser.parse_args(argv)
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        return load_config(path, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
