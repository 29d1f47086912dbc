"""ADIFF's released CSVs: ready-made (audio 1, audio 2, tier, answer) pairs over AudioCaps and Clotho audio.

Columns ``taskname, filepath1, filepath2, caption1, caption2, input, answer`` (``taskname`` optional). One row is
one pair; the tier comes from the ``input`` prompt ("... in few words" 1, "... in a sentence" 2, "... in detail" 3).
Each distinct file path is one clip whose captions are gathered over all rows naming it (Clotho files have five
captions, spread over rows). Rows whose audio is missing yield no pair; each missing file is reported once.
"""

from __future__ import annotations

import functools
import os

from audiopair.config import SourceConfig
from audiopair.corpus._csv import BadRows, ClipIds, FileIndex, audio_root, clip_role, csv_files, read_rows
from audiopair.corpus.base import Clip, FileSource, Missing, SourcePair

COLUMNS = ["filepath1", "filepath2", "caption1", "caption2", "input", "answer"]
TIER_WORDS = (("few words", 1), ("sentence", 2), ("detail", 3))
_TIER_HELP = " / ".join(f"'{w}' (tier {t})" for w, t in TIER_WORDS)


@functools.lru_cache(maxsize=256)  # a CSV repeats one prompt per tier: classify each once
def tier_of(prompt: str) -> int | None:
    """ADIFF's tier for an ``input`` prompt, or None when it names none."""
    text = prompt.lower()
    return next((tier for words, tier in TIER_WORDS if words in text), None)


class AdiffCsvSource(FileSource):
    """Pairs from ADIFF CSV(s) (``cfg.csv``, a path or glob, read in sorted order); audio under ``cfg.audio_dir``
    (default: each CSV's folder). ``rows_read`` counts the rows taken per CSV and tier, audio or not.

    ``limit`` caps the clips: rows are taken in CSV order while they name no more than ``limit`` distinct files,
    and later rows over those files (e.g. the other tiers' CSVs) still count. ``bad_rows`` lists skipped rows as
    ``(csv, line, reason)``.
    """

    name = "adiff_csv"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__()
        self.name = cfg.label
        bad = BadRows()
        self.rows_read: dict[str, dict[int, int]] = {}  # csv -> tier -> good rows taken (with or without audio)
        files: dict[tuple[str, str], dict] = {}  # (root, relative path) -> captions, tasks; in order of first use
        rows: list[tuple] = []
        for path in csv_files(cfg):
            root, csv_name = str(audio_root(cfg, path)), str(path)
            for line, row in read_rows(path, COLUMNS, ["taskname"], bad, raw=("filepath1", "filepath2")):
                tier = tier_of(row["input"])
                empty = [c for c in COLUMNS if not row[c].strip()]
                if empty:
                    bad.add(path, line, f"empty {', '.join(empty)}")
                    continue
                if tier is None:
                    bad.add(path, line, f"input {row['input']!r} names no tier (expected {_TIER_HELP})")
                    continue
                keys = [(root, row["filepath1"]), (root, row["filepath2"])]
                new = {k for k in keys if k not in files}
                if cfg.limit is not None and len(files) + len(new) > cfg.limit:
                    continue
                for key, caption in zip(keys, (row["caption1"], row["caption2"])):
                    f = files.setdefault(key, {"captions": [], "tasks": []})
                    if caption not in f["captions"]:
                        f["captions"].append(caption)
                    task = row.get("taskname")
                    if task and task not in f["tasks"]:
                        f["tasks"].append(task)
                rows.append((keys, tier, row["input"], row["answer"], line, csv_name))
                per_tier = self.rows_read.setdefault(csv_name, {})
                per_tier[tier] = per_tier.get(tier, 0) + 1
        self.bad_rows = bad.rows

        ids = ClipIds(cfg.label)
        index = FileIndex()
        role = clip_role(cfg, "any")
        clips: dict[tuple[str, str], Clip | None] = {}
        for (root, rel), f in files.items():
            clip_id = ids.get((root, rel), os.path.splitext(rel)[0])
            full = os.path.normpath(os.path.join(root, rel))  # the name as written first (spaces can be part of it)
            found = index.find(full) or (index.find(os.path.join(root, rel.strip())) if rel.strip() != rel else None)
            if found is None:
                clips[(root, rel)] = None
                self._missing.append(Missing(clip_id, full, "file does not exist"))
                continue
            meta = {"filepath": rel, "tasks": f["tasks"]}
            clip = clips[(root, rel)] = Clip(clip_id, cfg.label, tuple(f["captions"]), str(found), role,
                                             split=cfg.split, meta=meta)
            self._clips.append(clip)
        for (k1, k2), tier, prompt, answer, line, csv_path in rows:
            c1, c2 = clips[k1], clips[k2]
            if c1 is not None and c2 is not None:
                self._pairs.append(SourcePair(c1, c2, tier, prompt, answer, line, csv_path))
