"""Dataset statistics in the shape of ADIFF Table 1 (counts, hours, length median/max, vocabulary) and
Table 24 (word- and character-level unigram entropy per tier)."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from statistics import median

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


def text_stats(texts: list[str]) -> dict:
    """Table 1 / Table 24 statistics of ``texts``: ``examples``; ``words_median`` and ``words_max`` in words
    (``words``); ``vocab``, distinct ``vocab_word`` entries; ``word_entropy`` over those entries and
    ``char_entropy`` over characters, in bits."""
    tokens = [words(t) for t in texts]
    lengths = [len(ws) for ws in tokens]
    word_counts = Counter(v for ws in tokens for w in ws if (v := vocab_word(w)))
    char_counts = Counter(ch for t in texts for ch in t)
    return {
        "examples": len(texts),
        "words_median": float(median(lengths)) if lengths else 0.0,
        "words_max": max(lengths, default=0),
        "vocab": len(word_counts),
        "word_entropy": round(entropy(word_counts), 4),
        "char_entropy": round(entropy(char_counts), 4),
    }


def group_key(rec: dict) -> str:
    return f"tier{rec['tier']}" if rec.get("tier") else "all"


def dataset_stats(records: list[dict], durations: dict[str, float]) -> dict:
    """``records`` are manifest rows (``meta.clips`` or ``meta.clip`` name their clips); ``durations`` in seconds.

    Returns ``{"tasks": {task: {split: {group: stats}}}, "entropy": {task: {group: {word, char}}}}`` where group is
    ``tier1..3`` for ADIFF and ``all`` otherwise; hours count each distinct clip once per group.
    """
    by = defaultdict(list)
    for r in records:
        by[(r["task"], r["split"], group_key(r))].append(r)
    tasks: dict = defaultdict(lambda: defaultdict(dict))
    for (task, split, group), recs in sorted(by.items()):
        s = text_stats([r["target"] for r in recs])
        clip_ids = {c for r in recs for c in (r["meta"].get("clips") or [r["meta"].get("clip")]) if c}
        s["hours"] = round(sum(durations.get(c, 0.0) for c in clip_ids) / 3600, 4)
        tasks[task][split][group] = s
    ent: dict = defaultdict(dict)
    by_group = defaultdict(list)
    for r in records:
        by_group[(r["task"], group_key(r))].append(r["target"])
    for (task, group), texts in sorted(by_group.items()):
        st = text_stats(texts)
        ent[task][group] = {"word": st["word_entropy"], "char": st["char_entropy"]}
    return {"tasks": {t: dict(v) for t, v in tasks.items()}, "entropy": dict(ent)}
