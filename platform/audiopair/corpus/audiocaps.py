"""AudioCaps: base clips with human captions, from the official CSVs and a folder of downloaded audio.

AudioCaps has one row per caption (``audiocap_id, youtube_id, start_time, caption``); the rows of one
``(youtube_id, start_time)`` are one clip with several captions (5 in val/test). Downloaders name files in
different ways, so the file is looked up under several names (``CANDIDATES``); the first that exists wins.
"""

from __future__ import annotations

import math

from audiopair.config import SourceConfig
from audiopair.corpus._csv import AUDIO_EXTS, BadRows, ClipIds, FileIndex, audio_root, clip_role, csv_files, read_rows
from audiopair.corpus.base import Clip, FileSource, Missing

COLUMNS = ["audiocap_id", "youtube_id", "start_time", "caption"]

# File stems tried in order, each with .wav first, then .flac, .ogg, .mp3. ``{start}`` is start_time as written in
# the CSV, ``{start_int}`` without a ".0" and ``{start3}`` / ``{end3}`` AudioSet's "30.000_40.000" form.
CANDIDATES = [
    "{youtube_id}",
    "Y{youtube_id}",
    "{youtube_id}_{start}",
    "{youtube_id}_{start_int}",
    "{audiocap_id}",
    "Y{youtube_id}_{start3}_{end3}",
]

# The official file names pin a split.
_SPLITS = {"train": "train", "val": "val", "test": "test"}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def candidate_names(youtube_id: str, start: str, audiocap_ids: list[str]) -> list[str]:
    """The file names tried for one clip, in order (deduplicated)."""
    t = float(start)
    fields = {
        "youtube_id": youtube_id,
        "start": start,
        "start_int": str(int(t)) if t.is_integer() else start,
        "start3": f"{t:.3f}",
        "end3": f"{t + 10:.3f}",
    }
    stems: list[str] = []
    for pattern in CANDIDATES:
        ids = audiocap_ids if "{audiocap_id}" in pattern else [None]
        for cap_id in ids:
            stem = pattern.format(**fields, audiocap_id=cap_id)
            if stem not in stems:
                stems.append(stem)
    return [stem + ext for ext in AUDIO_EXTS for stem in stems]


class AudioCapsSource(FileSource):
    """Clips from AudioCaps caption CSV(s) (``cfg.csv``, a path or glob) and audio in ``cfg.audio_dir``.

    ``bad_rows`` lists skipped rows as ``(csv, line, reason)``. ``limit`` keeps the first N clips in CSV order
    (missing ones count). Clips of ``train.csv`` / ``val.csv`` / ``test.csv`` get that split unless ``cfg.split``
    pins another.
    """

    name = "audiocaps"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__()
        self.name = cfg.label
        bad = BadRows()
        groups: dict[tuple[str, str], dict] = {}  # (youtube_id, start) -> rows of one clip, in CSV order
        for path in csv_files(cfg):
            root = audio_root(cfg, path)
            split = cfg.split or _SPLITS.get(path.stem.lower())
            for line, row in read_rows(path, COLUMNS, [], bad):
                reason = self._check(row)
                if reason:
                    bad.add(path, line, reason)
                    continue
                t = float(row["start_time"])
                key = (row["youtube_id"], str(int(t)) if t.is_integer() else repr(t))
                g = groups.setdefault(key, {"captions": [], "ids": [], "row": row, "root": root, "split": split})
                if row["caption"] not in g["captions"]:
                    g["captions"].append(row["caption"])
                if row["audiocap_id"] and row["audiocap_id"] not in g["ids"]:
                    g["ids"].append(row["audiocap_id"])
        self.bad_rows = bad.rows

        ids = ClipIds(cfg.label)
        index = FileIndex()
        role = clip_role(cfg, "base")
        for (youtube_id, start_key), g in list(groups.items())[: cfg.limit]:
            clip_id = ids.get((youtube_id, start_key), f"{youtube_id}_{start_key}")
            names = candidate_names(youtube_id, g["row"]["start_time"], g["ids"])
            found = next((f for f in (index.find(g["root"] / n) for n in names) if f), None)
            if found is None:
                self._missing.append(Missing(clip_id, str(g["root"] / names[0]), "file does not exist"))
                continue
            meta = {"audiocap_ids": g["ids"], "youtube_id": youtube_id, "start_time": float(start_key)}
            self._clips.append(
                Clip(clip_id, cfg.label, tuple(g["captions"]), str(found), role, split=g["split"], meta=meta)
            )

    @staticmethod
    def _check(row: dict[str, str]) -> str | None:
        if not row["youtube_id"]:
            return "empty youtube_id"
        if _number(row["start_time"]) is None:
            return f"start_time {row['start_time']!r} is not a number of seconds"
        if not row["caption"]:
            return "empty caption"
        return None
