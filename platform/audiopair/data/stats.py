"""Dataset statistics in the shape of ADIFF Table 1 (counts, hours, length median/max, vocabulary) and
Table 24 (word- and character-level unigram entropy per tier)."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

from audiopair.records import Record

_WORDLIKE = re.compile(r"\w")
_EDGE_PUNCT = "\"'“”‘’.,;:!?()[]{}<>"


def words(text: str) -> list[str]:
    """Words as ADIFF Table 1 counts them: whitespace-separated tokens; tokens with no letter or digit ("-",
    "...") are dropped. "a high-frequency hum" is 3 words. Splitting on whitespace reproduces every published
    median and max of the released validation CSVs; splitting hyphens gave medians 1-3 too high."""
    return [w for w in text.split() if _WORDLIKE.search(w)]


def vocab_word(token: str) -> str:
    """A token as a vocabulary entry: lowercased, with surrounding quotes and punctuation stripped, so "Hum.",
    "hum," and "hum" are one entry and "high-frequency" one entry of its own. The paper does not say how it
    counts vocabulary, and no simple rule reproduces its Vocab. column: this is the count audiopair reports."""
    return token.strip(_EDGE_PUNCT).lower()


def entropy(counts: Counter) -> float:
    """Shannon entropy in bits of a unigram distribution (ADIFF eq. 4)."""
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values() if c) if total else 0.0


class TextStats:
    """``text_stats`` computed incrementally: ``add`` one text at a time, ``result`` at the end. Memory grows with the
    vocabulary and the number of distinct lengths, not with the number of texts. Counters keep first-seen order, so
    the entropy sums run in the same order (and give the same bits) as over a list."""

    def __init__(self) -> None:
        self.examples = 0
        self.lengths: Counter = Counter()
        self.word_counts: Counter = Counter()
        self.char_counts: Counter = Counter()

    def add(self, text: str) -> None:
        ws = words(text)
        self.examples += 1
        self.lengths[len(ws)] += 1
        self.word_counts.update(v for w in ws if (v := vocab_word(w)))
        self.char_counts.update(text)

    def result(self) -> dict:
        return {
            "examples": self.examples,
            "words_median": _median(self.lengths),
            "words_max": max(self.lengths, default=0),
            "vocab": len(self.word_counts),
            "word_entropy": round(entropy(self.word_counts), 4),
            "char_entropy": round(entropy(self.char_counts), 4),
        }


def _median(counts: Counter) -> float:
    """``statistics.median`` of the multiset ``{value: count}``."""
    n = sum(counts.values())
    if not n:
        return 0.0
    ordered = sorted(counts.items())

    def nth(k: int) -> int:  # the k-th smallest value, 0-based
        seen = 0
        for value, c in ordered:
            seen += c
            if k < seen:
                return value
        raise IndexError(k)

    return float(nth(n // 2)) if n % 2 else (nth(n // 2 - 1) + nth(n // 2)) / 2


def text_stats(texts: list[str]) -> dict:
    """Table 1 / Table 24 statistics of ``texts``: ``examples``; ``words_median`` and ``words_max`` in words
    (``words``); ``vocab``, distinct ``vocab_word`` entries; ``word_entropy`` over those entries and
    ``char_entropy`` over characters, in bits."""
    acc = TextStats()
    for t in texts:
        acc.add(t)
    return acc.result()


def group_key(rec: Record) -> str:
    return f"tier{rec.tier}" if rec.tier else "all"


class DatasetStats:
    """``dataset_stats`` computed incrementally over a stream of manifest records (``add``), so a build never holds
    its records: per (task, split, group) a ``TextStats`` and the set of clip ids; per (task, group) the entropy
    counters. ``result(durations)`` gives what ``dataset_stats`` gives."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str, str], tuple[TextStats, set]] = {}
        self._ent: dict[tuple[str, str], TextStats] = {}

    def add(self, r: Record) -> None:
        g = group_key(r)
        text, clips = self._by.setdefault((r.task, r.split, g), (TextStats(), set()))
        text.add(r.target)
        clips.update(r.clips)
        self._ent.setdefault((r.task, g), TextStats()).add(r.target)

    def result(self, durations: dict[str, float]) -> dict:
        tasks: dict = defaultdict(lambda: defaultdict(dict))
        for (task, split, group), (text, clip_ids) in sorted(self._by.items(), key=lambda kv: kv[0]):
            s = text.result()
            s["hours"] = round(sum(durations.get(c, 0.0) for c in clip_ids) / 3600, 4)
            tasks[task][split][group] = s
        ent: dict = defaultdict(dict)
        for (task, group), text in sorted(self._ent.items(), key=lambda kv: kv[0]):
            st = text.result()
            ent[task][group] = {"word": st["word_entropy"], "char": st["char_entropy"]}
        return {"tasks": {t: dict(v) for t, v in tasks.items()}, "entropy": dict(ent)}


def dataset_stats(records: list[Record], durations: dict[str, float]) -> dict:
    """``records``: manifest records (``Record.clips`` name their clips); ``durations``: clip id -> seconds.

    Returns ``{"tasks": {task: {split: {group: stats}}}, "entropy": {task: {group: {word, char}}}}`` where group is
    ``tier1..3`` for ADIFF and ``all`` otherwise; hours count each distinct clip once per group.
    """
    acc = DatasetStats()
    for r in records:
        acc.add(r)
    return acc.result(durations)
