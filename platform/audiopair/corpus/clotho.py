"""Clotho: base clips with five human captions each, from the official caption CSVs.

Columns ``file_name, caption_1 .. caption_5`` (only ``caption_1`` is required; empty captions are dropped). File
names are free text ("Forest walk in Marata - mv88.wav"), so the clip id is the sanitised file stem. Clotho ships
one audio folder per split (development/, validation/, evaluation/); the file is looked up at
``audio_dir/file_name`` and then at ``audio_dir/<split word of the CSV name>/file_name``, so one ``audio_dir``
holding the extracted archives works for a glob of all caption CSVs.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath

from audiopair.config import SourceConfig
from audiopair.corpus._csv import BadRows, ClipIds, FileIndex, audio_root, clip_role, csv_files, read_rows
from audiopair.corpus.base import Clip, FileSource, Missing

CAPTIONS = [f"caption_{i}" for i in range(1, 6)]
# The split each official CSV name pins (clotho_captions_development.csv ...), and its audio subfolder.
_SPLITS = {"development": "train", "validation": "val", "evaluation": "test"}


def split_word(csv_name: str) -> str | None:
    """The split word ("development", "validation", "evaluation") the CSV's file name contains, if any."""
    words = re.split(r"[^a-z]+", csv_name.lower())
    return next((w for w in _SPLITS if w in words), None)


def _candidates(root: Path, word: str | None, file_name: str) -> list[Path]:
    """Where ``file_name`` may be, in order: as written first, then (a CSV cell padded by an editor) stripped."""
    names = [file_name] + ([file_name.strip()] if file_name.strip() != file_name else [])
    folders = [root] + ([root / word] if word else [])
    return [folder / name for name in names for folder in folders]


class ClothoSource(FileSource):
    """Clips from Clotho caption CSV(s) (``cfg.csv``, a path or glob) and audio under ``cfg.audio_dir``.

    ``bad_rows`` lists skipped rows as ``(csv, line, reason)``. ``limit`` keeps the first N clips in CSV order
    (missing ones count). A file named twice (e.g. in two CSVs) is one clip with the captions of both rows.
    """

    name = "clotho"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__()
        self.name = cfg.label
        bad = BadRows()
        entries: dict[str, dict] = {}  # file_name -> captions, candidate paths, split; in CSV order
        for path in csv_files(cfg):
            root = audio_root(cfg, path)
            word = split_word(path.stem)
            for line, row in read_rows(path, ["file_name", "caption_1"], CAPTIONS[1:], bad, raw=("file_name",)):
                file_name = row["file_name"]  # as written: " typical street corner at noon.wav" is a real name
                captions = [row[c] for c in CAPTIONS if row.get(c)]
                if not file_name.strip():
                    bad.add(path, line, "empty file_name")
                    continue
                if not captions:
                    bad.add(path, line, f"no caption for {file_name!r}")
                    continue
                e = entries.setdefault(
                    file_name,
                    {
                        "captions": [],
                        "paths": _candidates(root, word, file_name),
                        "split": cfg.split or (_SPLITS[word] if word else None),
                    },
                )
                e["captions"] += [c for c in captions if c not in e["captions"]]
        self.bad_rows = bad.rows

        ids = ClipIds(cfg.label)
        index = FileIndex()
        role = clip_role(cfg, "base")
        for file_name, e in list(entries.items())[: cfg.limit]:
            clip_id = ids.get(file_name, PurePath(file_name).stem)
            found = next((f for f in map(index.find, e["paths"]) if f), None)
            if found is None:
                self._missing.append(Missing(clip_id, str(e["paths"][0]), "file does not exist"))
                continue
            meta = {"file_name": file_name}
            caps = tuple(e["captions"])
            self._clips.append(Clip(clip_id, cfg.label, caps, str(found), role, split=e["split"], meta=meta))
