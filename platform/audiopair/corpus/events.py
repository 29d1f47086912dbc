"""Single-event folders (AuditEval style): the B and C clips that are mixed into base clips.

Layouts under ``cfg.audio_dir`` (hidden files and folders are ignored):

- ``<Category>/<type>/<clip>.wav|flac|ogg|mp3`` -> ``labels = (Category, type)``, e.g. ("Animals", "dog_bark");
- ``<type>/<clip>.wav`` (flat) -> ``labels = (type,)``.

Audio directly in ``audio_dir`` or nested deeper than two folders has no type and is an error, as is a folder
that holds neither audio nor subfolders with audio (most likely a failed download).

Event captions are NOUN PHRASES, because the builder composes them into sentences ("<base caption>, with a dog
bark") and instructions ("add a dog bark"). They come from an optional CSV (``cfg.csv``, columns ``file, caption``,
``file`` relative to ``audio_dir``, several rows per file allowed; a trailing full stop is dropped), else from the
type's name: ``dog_bark`` / ``DogBark`` -> "a dog bark", ``birds_chirping`` -> "birds chirping", ``rain`` -> "rain".
Files the CSV does not name get the name-derived caption; files it names that do not exist are ``missing()``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from audiopair.config import SourceConfig
from audiopair.corpus._csv import AUDIO_EXTS, BadRows, ClipIds, clip_role, csv_files, read_rows
from audiopair.corpus.base import Clip, FileSource, Missing

# Uncountable heads take no article: "add rain", not "add a rain".
MASS_NOUNS = {
    "applause", "chatter", "equipment", "glass", "gravel", "gunfire", "hail", "laughter", "machinery", "music",
    "noise", "rain", "sand", "silence", "smoke", "snow", "speech", "static", "steam", "thunder", "traffic",
    "water", "wind", "wildlife", "audio", "feedback", "debris",
}
IRREGULAR_PLURALS = {"people", "children", "men", "women", "teeth", "feet", "mice", "geese", "sheep", "cattle"}
NOT_PARTICIPLES = {"ceiling", "building", "evening", "morning", "pudding", "sling", "spring", "sting", "string",
                   "swing", "thing", "wedding"}
_CONSONANT_SOUND = ("uni", "use", "usu", "uku", "ure", "uri", "uti", "eu", "ewe", "one", "once")  # "a unicorn"
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")  # "an hour"


def _words(name: str) -> list[str]:
    """Split snake_case, kebab-case, spaces and CamelCase ("TVStatic" -> tv, static), lowercased."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name)
    return [w.lower() for w in re.split(r"[\s_\-.]+", name) if w]


def _is_participle(word: str) -> bool:
    return word.endswith("ing") and len(word) > 4 and word not in NOT_PARTICIPLES


def _is_plural(word: str) -> bool:
    return word in IRREGULAR_PLURALS or (word.endswith("s") and not word.endswith(("ss", "us", "is", "ous")))


def article(phrase: str) -> str:
    """The indefinite article for the phrase's first word, by its sound: vowel letters, with common exceptions."""
    w = phrase.split()[0]
    if w.startswith(_SILENT_H):
        return "an"
    if w.startswith(_CONSONANT_SOUND):
        return "a"
    return "an" if w[0] in "aeiou" else "a"


def noun_phrase(type_name: str) -> str:
    """An event type's folder name as a noun phrase.

    "DogBark" -> "a dog bark", "birds_chirping" -> "birds chirping", "Explosion" -> "an explosion",
    "sneezing" -> "sneezing".

    The head noun is the last word, or the word before a trailing participle ("birds chirping", "glass breaking").
    No article is added when the head is plural, uncountable, a gerund ("sneezing", "drinking sipping"), or the
    name already starts with one.
    """
    words = _words(type_name)
    if not words:
        raise ValueError(f"event type {type_name!r} has no words to make a caption from")
    phrase = " ".join(words)
    if words[0] in ("a", "an", "the", "some"):
        return phrase
    head = words[-2] if len(words) > 1 and _is_participle(words[-1]) else words[-1]
    if _is_participle(head) or head in MASS_NOUNS or _is_plural(head):
        return phrase
    return f"{article(phrase)} {phrase}"


def _row_problem(file: str, rel: PurePosixPath, caption: str) -> str | None:
    if not file:
        return "empty file"
    if not caption:
        return "empty caption"
    if len(rel.parts) not in (2, 3) or ".." in rel.parts or rel.is_absolute():
        return f"file {file!r} is not <type>/<clip> or <Category>/<type>/<clip> relative to audio_dir"
    return None


def _scan(root: Path) -> list[PurePosixPath]:
    """Audio files under ``root`` as sorted relative paths; raises on empty folders and misplaced files."""
    if not root.is_dir():
        raise ValueError(f"event folder {root} does not exist (set the source's audio_dir)")
    found: list[PurePosixPath] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        audio = sorted(f for f in files if not f.startswith(".") and f.lower().endswith(AUDIO_EXTS))
        rel = PurePosixPath(Path(folder).relative_to(root).as_posix())
        depth = 0 if str(rel) == "." else len(rel.parts)
        if audio and depth == 0:
            raise ValueError(f"{root}: audio files directly in the event folder ({audio[0]} ...) have no type; "
                             f"put them in <type>/ or <Category>/<type>/ subfolders")
        if audio and depth > 2:
            raise ValueError(f"{folder}: audio nested {depth} folders deep; expected <Category>/<type>/<clip>")
        if not audio and not dirs and depth > 0:
            raise ValueError(f"event folder {folder} holds no audio files ({', '.join(AUDIO_EXTS)})")
        found += [rel / f for f in audio]
    if not found:
        raise ValueError(f"event folder {root} holds no audio files ({', '.join(AUDIO_EXTS)})")
    return found


class EventFolderSource(FileSource):
    """Event clips from ``cfg.audio_dir`` (see the module doc for layouts), captions from ``cfg.csv`` or names.

    Order (for ``limit``): files named by the CSV in CSV order, then the other files in sorted path order.
    ``bad_rows`` lists skipped CSV rows as ``(csv, line, reason)``.
    """

    name = "events"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__()
        self.name = cfg.label
        if not cfg.audio_dir:
            raise ValueError(f"source {cfg.label!r} (kind events) needs `audio_dir`, the folder of event types")
        root = Path(os.path.abspath(os.path.expanduser(cfg.audio_dir)))
        on_disk = _scan(root)
        bad = BadRows()
        disk = set(on_disk)
        captions: dict[PurePosixPath, list[str]] = {}
        if cfg.csv:
            for path in csv_files(cfg):
                for line, row in read_rows(path, ["file", "caption"], [], bad, raw=("file",)):
                    caption = row["caption"].rstrip(".").strip()
                    rel = PurePosixPath(row["file"].replace("\\", "/"))  # as written: spaces can be part of a name
                    stripped = PurePosixPath(rel.as_posix().strip())
                    if rel not in disk and stripped in disk:
                        rel = stripped  # a cell padded by an editor; the exact name was tried first
                    reason = _row_problem(row["file"].strip(), rel, caption)
                    if reason:
                        bad.add(path, line, reason)
                        continue
                    caps = captions.setdefault(rel, [])
                    if caption not in caps:
                        caps.append(caption)
        self.bad_rows = bad.rows

        order = list(captions) + [p for p in on_disk if p not in captions]
        ids = ClipIds(cfg.label)
        role = clip_role(cfg, "event")
        for rel in order[: cfg.limit]:
            labels = tuple(rel.parts[:-1])
            clip_id = ids.get(rel, "_".join(labels + (rel.stem,)))
            path = root / rel
            if rel not in disk and not path.is_file():
                self._missing.append(Missing(clip_id, str(path), "file does not exist"))
                continue
            caps = tuple(captions.get(rel) or [noun_phrase(labels[-1])])
            self._clips.append(Clip(clip_id, cfg.label, caps, str(path), role, labels, cfg.split, {"file": str(rel)}))
