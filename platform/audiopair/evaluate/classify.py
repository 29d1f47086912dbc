"""Downstream classification accuracy by answering a label question (ACC §3.1, Table 3).

ACC checks how much of a model's general ability survives fine-tuning by asking it to classify clips from VocalSound
(vocal sounds), IEMOCAP (emotion), NSynth (instrument) and GTZAN (genre) and reporting accuracy. The model answers in
free text, so each answer is mapped back onto the label set first:

``map_to_label(text, labels, synonyms)`` tries, in order (first that succeeds wins):

1. ``"exact"``: the whole normalised answer equals a normalised label or synonym.
2. ``"contains"``: a label or synonym occurs in the answer as whole words. When several occur, a match lying inside
   a longer match is dropped (``"a rising whistle"`` is ``rising_whistle``, not ``whistle``), then the **earliest**
   remaining match wins (``"a dog, then a cat"`` is ``dog``), then the longer one, then the label listed first.
   Negation is not understood (``"not a dog"`` contains ``dog``).
3. ``"fuzzy"``: ``difflib.SequenceMatcher`` ratio between each label/synonym and every n-gram of the answer with the
   same number of words (also one word shorter and longer, so a split or merged word still matches); the best ratio
   at or above ``threshold`` (default 0.8) wins, ties going to the earliest n-gram, then the label listed first.
4. ``"none"``: unmapped, returned as ``None`` (counted as wrong, in its own confusion-matrix column).

Normalisation: lower case; ``_``, ``-`` and ``/`` become spaces (so ``dog_bark`` reads ``dog bark``); other
punctuation is dropped; words get a light stem (``-ing`` and a plural ``-s``/``-es`` removed, a doubled final
consonant undone: ``barking`` -> ``bark``, ``clapping`` -> ``clap``, ``beeps`` -> ``beep``), applied to labels
and answers alike, so ``dog barking`` matches label ``dog_bark``.

``classification_prompt(labels)`` is the one canonical question; ``read_label_csv`` reads ``path,label`` CSVs (the
real benchmark lists); ``accuracy_report`` and ``confusion_png`` summarise; ``demo_label_csv`` writes a label CSV of
demo-bank event clips so the demo can run event-kind classification with no downloads.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from audiopair.atomic import atomic_write_bytes, atomic_write_text
from audiopair.corpus._csv import join_broken_rows, physical_rows

log = logging.getLogger(__name__)

UNMAPPED = "unmapped"
METHODS = ("exact", "contains", "fuzzy", "none")


# ----------------------------------------------------------------------------------------- normalisation
_SEP = re.compile(r"[_\-/]+")
_PUNCT = re.compile(r"[^\w\s]+")
_KEEP_DOUBLE = set("slzf")  # hiss, bell, buzz, puff keep their double letter


def _stem(word: str) -> str:
    w = word
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in _KEEP_DOUBLE and w[-1].isalpha():
            w = w[:-1]  # clapping -> clapp -> clap
    elif len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        w = w[:-2]  # buzzes -> buzz, crashes -> crash
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]  # beeps -> beep (but hiss, chorus, bass stay)
    return w


def normalise(text: str) -> tuple[str, ...]:
    """Lower-cased, punctuation-free, lightly stemmed words of ``text``."""
    t = _SEP.sub(" ", str(text).lower())
    t = _PUNCT.sub(" ", t).replace("_", " ")
    return tuple(_stem(w) for w in t.split())


def _candidates(labels: Sequence[str], synonyms: dict[str, list[str]] | None) -> list[tuple[int, tuple[str, ...]]]:
    """(label index, normalised words) for every label and synonym, skipping empties."""
    if not labels:
        raise ValueError("map_to_label needs at least one label")
    unknown = set(synonyms or {}) - set(labels)
    if unknown:
        raise ValueError(f"synonyms given for unknown labels {sorted(unknown)}; labels are {list(labels)}")
    out = []
    for i, label in enumerate(labels):
        for name in [label, *(synonyms or {}).get(label, [])]:
            words = normalise(name)
            if words:
                out.append((i, words))
    return out


# ----------------------------------------------------------------------------------------- mapping
def map_to_label(
    text: str,
    labels: Sequence[str],
    synonyms: dict[str, list[str]] | None = None,
    threshold: float = 0.8,
) -> tuple[str | None, str]:
    """Map a generated answer onto one of ``labels``: ``(label or None, "exact"|"contains"|"fuzzy"|"none")``.

    See the module docstring for the rules and the tie-breaking order.
    """
    cands = _candidates(labels, synonyms)
    words = normalise(text or "")
    if not words:
        return None, "none"

    # 1. exact: the whole answer is a label or synonym (first listed label wins a collision)
    for i, c in cands:
        if words == c:
            return labels[i], "exact"

    # 2. contains: whole-word occurrences (start, end, label index)
    hits = []
    for i, c in cands:
        n = len(c)
        for s in range(len(words) - n + 1):
            if words[s : s + n] == c:
                hits.append((s, s + n, i))
    if hits:
        outer = [h for h in hits if not any(o[0] <= h[0] and h[1] <= o[1] and (o[1] - o[0]) > (h[1] - h[0])
                                            for o in hits)]
        s, e, i = min(outer, key=lambda h: (h[0], -(h[1] - h[0]), h[2]))
        return labels[i], "contains"

    # 3. fuzzy: best SequenceMatcher ratio over same-length (+-1 word) n-grams of the answer
    best: tuple[float, int, int] | None = None  # (ratio, -start, -label index) maximised
    for i, c in cands:
        target = " ".join(c)
        for n in {max(1, len(c) - 1), len(c), len(c) + 1}:
            for s in range(max(1, len(words) - n + 1)):
                gram = " ".join(words[s : s + n])
                sm = difflib.SequenceMatcher(None, gram, target, autojunk=False)
                if sm.real_quick_ratio() < threshold or sm.quick_ratio() < threshold:
                    continue
                r = sm.ratio()
                if r >= threshold:
                    key = (r, -s, -i)
                    if best is None or key > best:
                        best = key
    if best is not None:
        return labels[-best[2]], "fuzzy"
    return None, "none"


def map_answers(
    truths: Sequence[str], answers: Sequence[str], labels: Sequence[str],
    synonyms: dict[str, list[str]] | None = None, threshold: float = 0.8,
) -> list[tuple[str, str | None, str]]:
    """``(true label, mapped label or None, how)`` per answer, ready for ``accuracy_report``."""
    if len(truths) != len(answers):
        raise ValueError(f"{len(truths)} true labels but {len(answers)} answers")
    out = []
    for t, a in zip(truths, answers):
        pred, how = map_to_label(a, labels, synonyms, threshold)
        out.append((t, pred, how))
    return out


# ----------------------------------------------------------------------------------------- prompt
def _readable(label: str) -> str:
    return " ".join(_SEP.sub(" ", label).split())


def classification_prompt(labels: Sequence[str]) -> str:
    """The canonical label question, labels in the given order with ``_`` / ``-`` shown as spaces::

        Which of these sounds is in the audio: dog bark, car horn, bell? Answer with one label.

    ``map_to_label`` reads the answer back whether the model writes ``car horn``, ``car_horn`` or a sentence
    containing it. With many labels the prompt is long: ``model.prompt_len`` must hold it or it is truncated.
    """
    if not labels:
        raise ValueError("classification_prompt needs at least one label")
    return f"Which of these sounds is in the audio: {', '.join(_readable(l) for l in labels)}? Answer with one label."


# ----------------------------------------------------------------------------------------- label CSVs
class LabelRows(list):
    """``[(path, label), ...]`` plus ``skipped``: ``[(line number, reason), ...]`` of rows left out, and ``lines``:
    the CSV line number of each kept row."""

    def __init__(self, rows: Iterable[tuple[str, str]] = (), skipped: list[tuple[int, str]] | None = None,
                 lines: list[int] | None = None):
        super().__init__(rows)
        self.skipped = skipped or []
        self.lines = lines if lines is not None else list(range(2, len(self) + 2))


def read_label_csv(path: str | Path, path_column: str = "path", label_column: str = "label",
                   audio_dir: str | Path | None = None) -> LabelRows:
    """Rows of a ``path,label`` CSV (header required; other columns ignored; column names case-insensitive).

    Relative audio paths are resolved against ``audio_dir`` (default: the CSV's folder); absolute ones are kept. A missing column raises
    ``ValueError`` naming the file, the missing and the found columns. A row with an empty path or label is skipped,
    logged with its line number and listed in ``.skipped`` of the returned list.
    """
    p = Path(path)
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{p}: empty label CSV; need a header with columns {path_column!r}, {label_column!r}")
        names = [h.strip().lower() for h in header]
        missing = [c for c in (path_column, label_column) if c.lower() not in names]
        if missing:
            raise ValueError(f"{p}: label CSV lacks column(s) {missing}; found columns {header} "
                             f"(need {path_column!r} and {label_column!r})")
        ip, il = names.index(path_column.lower()), names.index(label_column.lower())
        root = Path(audio_dir) if audio_dir is not None else p.parent
        rows, skipped, lines = [], [], []
        for line, last, row, problem, rejoined in join_broken_rows(list(physical_rows(reader)), len(header)):
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if problem:
                skipped.append((line, problem))
                log.warning("%s line %d: %s, row skipped: %r", p, line, problem, row)
                continue
            if rejoined:
                log.warning("%s lines %d-%d: one record broken over lines (unquoted line break); rejoined", p, line, last)
            audio = row[ip] if ip < len(row) else ""  # a path as written: spaces can be part of a file name
            label = row[il].strip() if il < len(row) else ""
            if not audio.strip() or not label:
                reason = "empty path" if not audio.strip() else "empty label"
                skipped.append((line, reason))
                log.warning("%s line %d: %s, row skipped: %r", p, line, reason, row)
                continue
            full = [ap if ap.is_absolute() else root / ap for ap in (Path(audio), Path(audio.strip()))]
            rows.append((str(full[0] if full[0].is_file() or not full[1].is_file() else full[1]), label))
            lines.append(line)
    if skipped:
        log.warning("%s: %d row(s) skipped (lines %s)", p, len(skipped), ", ".join(str(n) for n, _ in skipped[:20]))
    return LabelRows(rows, skipped, lines)


# ----------------------------------------------------------------------------------------- report
def accuracy_report(pairs: Sequence[tuple], labels: Sequence[str]) -> dict:
    """Accuracy of ``(true, predicted or None[, how])`` pairs over ``labels``.

    Returns a JSON-ready dict: ``n``, ``correct``, ``accuracy`` (``None`` when empty), ``chance`` (the accuracy of
    always answering the most frequent true label, the bar a model must clear to show it heard anything; ``None``
    when empty), ``macro_accuracy`` (mean of per-class accuracies over classes present), ``per_class``
    ``{label: {n, correct, accuracy}}`` (accuracy ``None`` for an absent class), ``labels``, ``columns`` (labels +
    ``"unmapped"``), ``confusion`` (rows true label, columns ``columns``), ``unmapped`` count and ``methods`` (counts
    per mapping method; pairs without a method count as ``"none"`` when unmapped, ``"mapped"`` otherwise). A true or
    predicted label outside ``labels`` is an error.
    """
    labels = list(labels)
    index = {l: i for i, l in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"duplicate labels in {labels}")
    k = len(labels)
    conf = np.zeros((k, k + 1), dtype=np.int64)
    methods: dict[str, int] = {}
    for row in pairs:
        true, pred = row[0], row[1]
        how = row[2] if len(row) > 2 else ("none" if pred is None else "mapped")
        if true not in index:
            raise ValueError(f"true label {true!r} is not one of the labels {labels}")
        if pred is not None and pred not in index:
            raise ValueError(f"predicted label {pred!r} is not one of the labels {labels}")
        conf[index[true], k if pred is None else index[pred]] += 1
        methods[how] = methods.get(how, 0) + 1
    n = int(conf.sum())
    correct = int(np.trace(conf[:, :k]))
    per_class = {}
    for i, l in enumerate(labels):
        ni, ci = int(conf[i].sum()), int(conf[i, i])
        per_class[l] = {"n": ni, "correct": ci, "accuracy": ci / ni if ni else None}
    present = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    return {
        "n": n, "correct": correct, "accuracy": correct / n if n else None,
        "chance": int(conf.sum(axis=1).max()) / n if n else None,
        "macro_accuracy": float(np.mean(present)) if present else None,
        "per_class": per_class, "labels": labels, "columns": labels + [UNMAPPED],
        "confusion": conf.tolist(), "unmapped": int(conf[:, k].sum()), "methods": methods,
    }


# ----------------------------------------------------------------------------------------- figures
def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Render a matplotlib ``Figure`` to PNG and write it atomically (temp file in the folder, then rename)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def confusion_png(report: dict, path: str | Path, title: str = "Confusion matrix", dpi: int = 100) -> Path:
    """Heat map of ``report["confusion"]`` (rows true, columns predicted + unmapped) with counts in the cells."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe in workers and threads

    conf = np.asarray(report["confusion"], dtype=np.int64)
    rows, cols = list(report["labels"]), list(report["columns"])
    k = len(rows)
    side = min(24.0, max(5.0, 0.45 * (k + 1) + 3.0))
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(conf, cmap="Blues", aspect="equal", vmin=0, vmax=max(1, int(conf.max())))
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="count")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    ax.set_xticks(range(len(cols)), [_readable(c) for c in cols], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), [_readable(r) for r in rows])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = report.get("accuracy")
    chance = f" (chance {report['chance']:.1%})" if report.get("chance") is not None else ""
    ax.set_title(f"{title}\naccuracy {acc:.1%} of {report.get('n', int(conf.sum()))}{chance}" if acc is not None
                 else title)
    ax.axvline(k - 0.5, color="0.4", lw=1)  # separates the unmapped column
    fs = 9 if k <= 12 else 7 if k <= 25 else 5
    thresh = conf.max() / 2 if conf.max() else 1
    for i in range(conf.shape[0]):
        for j in range(conf.shape[1]):
            if conf[i, j]:
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=fs,
                        color="white" if conf[i, j] > thresh else "black")
    fig.tight_layout()
    return save_figure(fig, path, dpi)


# ----------------------------------------------------------------------------------------- demo data
def demo_label_csv(folder: str | Path, sample_rate: int = 16000, seconds: float | None = 2.0, per_kind: int = 3,
                   seed: int = 0, name: str = "demo_cls") -> Path:
    """Write ``per_kind`` clips of each demo-bank event kind plus ``labels.csv`` (``path,label``) under ``folder``.

    Clips are rendered by ``audiopair.corpus.demo`` under the source name ``name`` (default ``demo_cls``). Every demo
    clip is a pure function of (seed, clip id), and the ids differ from the training bank's (``demo/...``), so these
    are fresh renders of the same kinds, not training clips. Events start at 0 and are zero-padded or cropped to
    ``seconds`` (``None`` keeps each event's own length). Labels are the kind names (``car_horn``...). Returns the
    CSV path; audio paths in it are relative to its folder.
    """
    from audiopair.audio import crop_or_pad, write_audio
    from audiopair.config import DemoBankConfig
    from audiopair.corpus import load_clip
    from audiopair.corpus.demo import DemoSource

    if per_kind < 1:
        raise ValueError(f"per_kind must be >= 1, got {per_kind}")
    out = Path(folder)
    src = DemoSource(DemoBankConfig(seed=seed, event_clips_per_kind=max(3, per_kind), base_clips=6), name=name)
    lines = ["path,label"]
    taken: dict[str, int] = {}
    for clip in src.clips():
        if clip.role != "event":
            continue
        kind = clip.labels[0]
        i = taken.get(kind, 0)
        if i >= per_kind:
            continue
        taken[kind] = i + 1
        x = load_clip(clip, sample_rate, None)
        if seconds is not None:
            x = crop_or_pad(x, int(round(seconds * sample_rate)))
        rel = f"audio/{kind}_{i:03d}.wav"
        write_audio(out / rel, x, sample_rate, subtype="PCM_16")
        lines.append(f"{rel},{kind}")
    csv_path = out / "labels.csv"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    return csv_path


def demo_labels() -> list[str]:
    """The demo bank's event kinds, in bank order (the label set for ``demo_label_csv``)."""
    from audiopair.corpus.demo import EVENTS

    return [k.name for k in EVENTS]


def demo_synonyms() -> dict[str, list[str]]:
    """The demo bank's caption phrases per kind, as synonyms for ``map_to_label`` (articles dropped)."""
    from audiopair.corpus.demo import EVENTS

    def strip(p: str) -> str:
        return re.sub(r"^(a|an|the|some)\s+", "", p.strip(), flags=re.I)

    return {k.name: sorted({strip(p) for p in k.phrases}) for k in EVENTS}
