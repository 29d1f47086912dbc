"""Config of the dataset build: sources, the demo bank, mixing, splits, tasks, log-mel features."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from audiopair.config.base import Section
from audiopair.records import TaskName


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


class TasksConfig(Section):
    """Which examples the builder writes, and how many."""

    enabled: list[TaskName] = ["ac", "adc", "acc", "adiff", "position"]
    triples_per_base: int = Field(2, ge=1)  # edit triples (A, B, C) drawn per base clip
    random_pairs_per_clip: int = Field(1, ge=0)  # ADIFF App. E random pairs per clip
    random_pair_exclude: int = Field(5, ge=1)  # App. E: partner is not one of clips i .. i+4
    # each event clip (role "event") also written on its own, as the clip it is: AC captions it with its phrase, and
    # it joins the random pairs (ADIFF App. E, position captioning), so a model hears isolated events and names them,
    # which is how a prefix model classifies (evaluate/downstream.py). Off: events are heard only mixed into bases.
    event_clips: bool = False
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
