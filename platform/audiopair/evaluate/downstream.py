"""Downstream classification accuracy of a generation checkpoint (ACC §3.1, Table 3), over ``path,label`` CSVs.

ACC asks its fine-tuned models to classify VocalSound, IEMOCAP, NSynth and GTZAN clips and reports accuracy, to
see how much general ability survives fine-tuning. Here each ``evaluate.classify`` entry (``ClassifyConfig``) is one
such set: a ``path,label`` CSV at real scale, or ``csv: demo`` (fresh renders of the demo bank's event kinds, no
downloads). Per clip:

1. the audio is loaded through ``audiopair.audio`` (mono, resampled to ``dataset.sample_rate``, cropped or padded to
   ``dataset.clip_seconds`` from the start, as the dataset builder does) and turned into the log-mels the model
   was trained on (``dataset.features``);
2. the model is asked, in batches, with generate.py's batching and decoding (in process, or a Ray Data actor pool
   with ``evaluate.num_actors``): an instruction-tuned model (Qwen2-Audio) the label question
   (``classification_prompt(labels)``); a prefix model (ADIFF) the position-captioning prompt it was trained on,
   ``"Caption the first audio."`` (``CAPTION_PROMPT``): it reads only ``model.prompt_len`` prompt tokens, never saw
   a label question, and captioning is how ADIFF names events (§5.4). ``prompt`` set in the config is asked of every
   model;
3. the answer (a label, or a caption) is mapped onto the label set (``map_to_label``: exact, contains, fuzzy; the
   demo's labels have the bank's caption phrases as synonyms) and scored
   (``accuracy_report``, ``confusion_png``).

ADIFF has no single-audio mode: it always hears two audios, so the clip goes in as both audios and the label
question is the text prompt. A missing or unreadable audio file (or an empty CSV cell) skips that row; it is
counted and named in ``Classification.skipped``, never fatal. Rows whose label lies outside an explicit ``labels``
list are left out and counted in ``excluded`` (e.g. IEMOCAP's usual four-class subset).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from audiopair.audio import AudioError, load_audio
from audiopair.config import ClassifyConfig, Config, DatasetConfig, DecodingConfig, FeatureConfig
from audiopair.data.features import logmel
from audiopair.evaluate.classify import (accuracy_report, classification_prompt, confusion_png, demo_label_csv,
                                         demo_labels, demo_synonyms, map_answers, normalise, read_label_csv)
from audiopair.evaluate.generate import Generator, QwenClipGenerator, is_qwen, run_generator
from audiopair.tasks.prompts import canonical

log = logging.getLogger(__name__)

DEMO = "demo"  # ClassifyConfig.csv value for the demo bank's event kinds
CAPTION_PROMPT = canonical("position", position="first")  # what prefix models are asked (the clip is both audios)


class ClassifySetupError(ValueError):
    """A classification set that cannot be used (missing CSV, bad label list ...); the message names the key."""


# ----------------------------------------------------------------------------------------- the sets
@dataclass
class ClassifySet:
    """One resolved ``ClassifyConfig``: the rows to classify (``id``, ``path``, ``label``) and how to ask."""

    name: str
    source: str  # the CSV
    rows: list[dict]
    labels: list[str]
    synonyms: dict[str, list[str]]
    prompt: str  # the label question, or the config's own prompt
    threshold: float = 0.8
    max_new_tokens: int = 32
    skipped: list[str] = field(default_factory=list)  # CSV rows left out (empty cells), named
    excluded: int = 0  # rows whose label is not in an explicit label list
    custom_prompt: bool = False  # the config named the prompt: every model is asked it

    def prompt_for(self, model_dir: str | Path) -> str:
        """What ``model_dir`` is asked: the label question for instruction-tuned models (Qwen2-Audio), the
        position-captioning prompt for prefix models (ADIFF), the config's prompt for all when it names one."""
        return self.prompt if self.custom_prompt or is_qwen(model_dir) else CAPTION_PROMPT


def prepare(c: ClassifyConfig, dataset: DatasetConfig, work_dir: str | Path, key: str = "evaluate.classify") \
        -> ClassifySet:
    """Read (or, for ``csv: demo``, render under ``<work_dir>/classify/<name>/``) one set. Problems with the set
    itself raise ``ClassifySetupError`` naming ``key``; problems with single rows are skipped and listed."""
    synonyms = {k: list(v) for k, v in c.synonyms.items()}
    if c.csv == DEMO:
        csv_path = demo_label_csv(Path(work_dir) / "classify" / c.name, dataset.sample_rate, dataset.clip_seconds,
                                  c.per_kind, dataset.demo.seed)
        default_labels = demo_labels()
        for label, names in demo_synonyms().items():
            synonyms[label] = sorted(set(names) | set(synonyms.get(label, [])))
    else:
        csv_path = Path(c.csv)
        if not csv_path.is_file():
            raise ClassifySetupError(f"{key}.csv: {csv_path} does not exist; give a path,label CSV or 'demo'")
        default_labels = None
    try:
        got = read_label_csv(csv_path, c.path_column, c.label_column, c.audio_dir)
    except (ValueError, OSError) as e:
        raise ClassifySetupError(f"{key}.csv: {e}") from None
    labels = list(c.labels or default_labels or sorted({label for _, label in got}))
    if not labels:
        raise ClassifySetupError(f"{key}: {csv_path} has no usable rows, so there is no label set")
    if len(set(labels)) != len(labels):
        raise ClassifySetupError(f"{key}.labels: duplicate labels in {labels}")
    if any(not normalise(l) for l in labels):
        raise ClassifySetupError(f"{key}.labels: a label has no letters or digits: {labels}")
    unknown = sorted(set(synonyms) - set(labels))
    if unknown:
        raise ClassifySetupError(f"{key}.synonyms: {unknown} are not labels; labels are {labels}")
    known = set(labels)
    rows, excluded = [], 0
    for (path, label), line in zip(got, got.lines):
        if label not in known:
            excluded += 1
            continue
        rows.append({"id": f"{csv_path.name}:{line}", "path": path, "label": label})
    if excluded:
        log.warning("%s: %d row(s) with labels outside %s left out", key, excluded, labels)
    if c.limit and len(rows) > c.limit:
        keep = sorted(random.Random(0).sample(range(len(rows)), c.limit))
        rows = [rows[i] for i in keep]
    return ClassifySet(c.name, str(csv_path), rows, labels, synonyms, c.prompt or classification_prompt(labels),
                       c.threshold, c.max_new_tokens, [f"{csv_path}:{n}: {why}" for n, why in got.skipped],
                       excluded, c.prompt is not None)


def prepare_all(cfg: Config) -> list[ClassifySet]:
    """Every ``cfg.evaluate.classify`` set, resolved once (the models then share them)."""
    names = [c.name for c in cfg.evaluate.classify]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClassifySetupError(f"evaluate.classify: names must be unique (they are metric prefixes): {dup}")
    return [prepare(c, cfg.dataset, cfg.work_dir, f"evaluate.classify[{i}]")
            for i, c in enumerate(cfg.evaluate.classify)]


# ----------------------------------------------------------------------------------------- generation
class AudioGenerator(Generator):
    """``Generator`` whose log-mels come from audio files (column ``path``) instead of a dataset's feature cache."""

    columns = ("id", "path", "eval_prompt")
    # mels() only reads one clip: any of these means that clip is unusable, not that the run is broken
    skip_errors = Generator.skip_errors + (AudioError, OSError, RuntimeError)

    def __init__(self, checkpoint: str | Path, audio: dict, decoding: DecodingConfig | dict | None = None,
                 device: str | None = None):
        """``audio``: ``sample_rate``, ``seconds`` (crop/pad; ``None`` keeps each clip's length) and ``features``
        (a ``FeatureConfig`` dump), i.e. the dataset's front end."""
        self.load_model(checkpoint, decoding, device)
        self.sample_rate, self.seconds = int(audio["sample_rate"]), audio.get("seconds")
        self.features = FeatureConfig.model_validate(audio["features"])

    def mels(self, batch: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = load_audio(str(batch["path"][i]), self.sample_rate, self.seconds)
        m = torch.from_numpy(logmel(x, self.sample_rate, self.features))
        # ADIFF has no single-audio mode: the clip is given as both audios, the label question as the prompt
        return m, m


def front_end(dataset: DatasetConfig) -> dict:
    """What ``AudioGenerator`` needs to turn a file into the model's log-mels, as the builder does."""
    return {"sample_rate": dataset.sample_rate, "seconds": dataset.clip_seconds,
            "features": dataset.features.model_dump(mode="json")}


def prompt_fit(model_dir: str | Path, prompt: str) -> str | None:
    """A note when ``prompt`` is longer than the model's ``prompt_len`` tokens (it is then cut), else ``None``."""
    try:
        from audiopair.models.tokenizer import load_tokenizer, plain_ids

        meta = json.loads((Path(model_dir) / "adiff.json").read_text())
        limit = int(meta["config"]["prompt_len"])
        n = len(plain_ids(load_tokenizer(Path(model_dir) / "tokenizer"), prompt))
    except (OSError, KeyError, ValueError, TypeError):
        return None
    if n <= limit:
        return None
    return (f"the label question is {n} tokens but the model reads {limit} (model.prompt_len): it was cut, so the "
            "model does not see every label")


# ----------------------------------------------------------------------------------------- one model, one set
@dataclass
class Classification:
    """One model on one set: ``report`` is ``accuracy_report``'s dict; ``rows`` the mapped predictions."""

    name: str
    report: dict
    rows: list[dict]
    prompt: str
    skipped: list[str] = field(default_factory=list)  # bad rows, each naming its CSV line / file and why
    excluded: int = 0
    seconds: float = 0.0  # generation time
    notes: list[str] = field(default_factory=list)
    confusion: Path | None = None

    @property
    def accuracy(self) -> float | None:
        return self.report["accuracy"]

    def metrics(self) -> dict[str, float]:
        """MLflow metrics, keys ``<name>/classify/all/<metric>`` plus ``<name>/skipped_clips``."""
        r = self.report
        out = {f"{self.name}/skipped_clips": float(len(self.skipped))}
        if r["n"]:
            out |= {f"{self.name}/classify/all/accuracy": r["accuracy"],
                    f"{self.name}/classify/all/macro_accuracy": r["macro_accuracy"],
                    f"{self.name}/classify/all/chance": r["chance"],
                    f"{self.name}/classify/all/unmapped_rate": r["unmapped"] / r["n"]}
        return out

    def to_dict(self) -> dict:
        return {**self.report, "name": self.name, "prompt": self.prompt, "skipped": self.skipped,
                "excluded": self.excluded, "seconds": round(self.seconds, 3), "notes": self.notes,
                "confusion_png": str(self.confusion) if self.confusion else None}

    def table(self) -> dict[str, list]:
        """The predictions as MLflow table columns."""
        keys = ("id", "path", "label", "prediction", "mapped", "how")
        return {k: [("" if r[k] is None else r[k]) for r in self.rows] for k in keys}


def classify_checkpoint(model_dir: str | Path, dataset: DatasetConfig, classify: ClassifyConfig | ClassifySet,
                        decoding: DecodingConfig | None = None, batch_size: int = 32, num_actors: int = 0,
                        num_gpus: float = 0, work_dir: str | Path = "work", figure: str | Path | None = None,
                        title: str | None = None, qwen_audio: dict | None = None) -> Classification:
    """Classify every clip of ``classify`` with the model in ``model_dir`` and score it (see the module docstring).

    ``decoding`` is ``evaluate.decoding`` with ``max_new_tokens`` taken from the set; ``figure``, when given, is
    where the confusion-matrix PNG goes (``title`` over it; default the set's name)."""
    cset = classify if isinstance(classify, ClassifySet) else prepare(classify, dataset, work_dir)
    prompt = cset.prompt_for(model_dir)
    notes = [n for n in [prompt_fit(model_dir, prompt)] if n]
    for n in notes:
        log.warning("%s: %s", cset.name, n)
    dec = (decoding or DecodingConfig()).model_copy(update={"max_new_tokens": cset.max_new_tokens})
    inputs = [{"id": r["id"], "path": r["path"], "eval_prompt": prompt} for r in cset.rows]
    t0 = time.perf_counter()
    # Qwen2-Audio hears the one clip as it is; ADIFF gets it twice, as log-mels made like the builder's
    gen, args = (QwenClipGenerator, (str(model_dir), qwen_audio or {}, dec.model_dump())) if is_qwen(model_dir) else \
        (AudioGenerator, (str(model_dir), front_end(dataset), dec.model_dump()))
    out = run_generator(gen, args, inputs, batch_size, num_actors, num_gpus) if inputs else []
    seconds = time.perf_counter() - t0
    good = [(r, o["prediction"]) for r, o in zip(cset.rows, out) if not o["error"]]
    skipped = cset.skipped + [o["error"] for o in out if o["error"]]
    pairs = map_answers([r["label"] for r, _ in good], [p for _, p in good], cset.labels, cset.synonyms,
                        cset.threshold)
    report = accuracy_report(pairs, cset.labels)
    rows = [{"id": r["id"], "path": r["path"], "label": r["label"], "prediction": p, "mapped": m, "how": how}
            for (r, p), (_, m, how) in zip(good, pairs)]
    result = Classification(cset.name, report, rows, prompt, skipped, cset.excluded, seconds, notes)
    if skipped:
        log.warning("%s: %d of %d rows skipped, e.g. %s", cset.name, len(skipped),
                    len(cset.rows) + len(cset.skipped), skipped[0])
    if figure is not None:
        result.confusion = confusion_png(report, figure, title=title or cset.name)
    return result
