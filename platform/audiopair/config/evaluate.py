"""Config of evaluation (decoding, scoring, classification), the listening study and the pages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from audiopair.config.base import Section


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
