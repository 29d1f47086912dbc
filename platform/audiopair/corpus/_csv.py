"""Helpers the file-backed readers share: CSV opening and checking, bad-row bookkeeping, clip ids, file lookup.

Every reader follows one policy so users meet the same behaviour everywhere:

- structural problems (no CSV matches, missing columns, not UTF-8) raise ``ValueError`` naming the file;
- an individual bad row (empty caption, wrong number of fields ...) is skipped, logged and recorded in
  ``bad_rows`` as ``(csv, line, reason)``, so one typo in a 50k-row CSV does not stop a build. A CSV whose every
  row is bad is structural again (a wrong file, or a wording the reader does not know) and raises;
- a named audio file that does not exist becomes a ``Missing`` entry, never an error.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from audiopair.config import SourceConfig

log = logging.getLogger("audiopair.corpus")

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")
_WARN_PER_FILE = 5  # individual warnings per CSV before only the summary is logged
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

BadRow = tuple[str, int, str]  # (csv path, 1-based line, reason)


def csv_files(cfg: SourceConfig) -> list[Path]:
    """``cfg.csv`` as a sorted list of files: a plain path, or a glob (``data/*.csv``) that must match something."""
    if not cfg.csv:
        raise ValueError(f"source {cfg.label!r} (kind {cfg.kind}) needs `csv`: a caption CSV path or a glob")
    pattern = os.path.expanduser(cfg.csv)
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p))
        if not files:
            raise ValueError(f"source {cfg.label!r}: csv glob {cfg.csv!r} matches no file")
        return files
    if not os.path.isfile(pattern):
        raise ValueError(f"source {cfg.label!r}: csv file {cfg.csv} does not exist")
    return [Path(pattern)]


def audio_root(cfg: SourceConfig, csv_path: Path | None = None) -> Path:
    """The folder audio paths are relative to: ``cfg.audio_dir``, else the CSV's own folder."""
    if cfg.audio_dir:
        return Path(os.path.abspath(os.path.expanduser(cfg.audio_dir)))
    if csv_path is None:
        raise ValueError(f"source {cfg.label!r} (kind {cfg.kind}) needs `audio_dir`")
    return Path(os.path.abspath(csv_path.parent))


def clip_role(cfg: SourceConfig, default: str) -> str:
    """Map the config's role (base / event / pairs / auto) to a ``Clip.role``; ``auto`` is the source's default."""
    return {"base": "base", "event": "event", "pairs": "any"}.get(cfg.role, default)


class BadRows:
    """Collects skipped rows as ``(csv, line, reason)``; logs the first few per file and a per-file summary."""

    def __init__(self) -> None:
        self.rows: list[BadRow] = []
        self._per_file: dict[str, int] = {}

    def add(self, csv_path: Path | str, line: int, reason: str) -> None:
        key = str(csv_path)
        self.rows.append((key, line, reason))
        n = self._per_file[key] = self._per_file.get(key, 0) + 1
        if n <= _WARN_PER_FILE:
            log.warning("%s line %d: %s; row skipped", key, line, reason)

    def finish(self, csv_path: Path | str, data_rows: int) -> None:
        """End of one CSV: summarise, and raise when no row at all could be used."""
        key = str(csv_path)
        n = self._per_file.get(key, 0)
        if not n:
            return
        first = next(r for r in self.rows if r[0] == key)
        if n == data_rows:
            raise ValueError(f"{key}: all {n} rows are bad (first, line {first[1]}: {first[2]})")
        log.warning("%s: skipped %d of %d rows (first, line %d: %s)", key, n, data_rows, first[1], first[2])


def read_rows(
    path: Path, required: list[str], optional: list[str], bad: BadRows
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, {column: stripped value})`` for each well-formed row of ``path``.

    ``line`` is the 1-based line the record starts on (a quoted field may span lines). Header names are matched
    case-insensitively after stripping spaces; a UTF-8 byte-order mark is tolerated. Rows with the wrong number of
    fields go to ``bad``. Only ``required`` and the ``optional`` columns present are returned.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: the CSV is empty; expected columns {', '.join(required)}")
            names = [h.strip().lower() for h in header]
            missing = [c for c in required if c not in names]
            if missing:
                raise ValueError(
                    f"{path}: missing required column(s) {', '.join(missing)}; "
                    f"found columns {', '.join(h.strip() for h in header) or '(none)'}"
                )
            wanted = {c: names.index(c) for c in required + [c for c in optional if c in names]}
            data_rows = 0
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                data_rows += 1
                if len(row) != len(header):
                    bad.add(path, line, f"has {len(row)} fields, the header has {len(header)} (unquoted comma?)")
                    continue
                yield line, {c: row[i].strip() for c, i in wanted.items()}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8") from None
    bad.finish(path, data_rows)


def sanitize(stem: str) -> str:
    """A stem that is safe as one relative path component: [A-Za-z0-9._-] kept, anything else ``_``.

    Leading dots are replaced too, so no id is hidden, ``.`` or ``..``.
    """
    out = _UNSAFE.sub("_", stem)
    out = re.sub(r"^\.+", lambda m: "_" * len(m.group()), out)
    return out or "_"


class ClipIds:
    """Gives each key (a file path, a (youtube_id, start) pair ...) a unique ``{label}/{stem}`` id.

    The first key to want a stem gets it; later ones get ``stem-2``, ``stem-3`` ... in the order they ask, so ids
    are deterministic for a given input. Stems compare case-insensitively, because ids become file names and
    some file systems ignore case.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._by_key: dict[object, str] = {}
        self._taken: set[str] = set()

    def get(self, key: object, stem: str) -> str:
        if key in self._by_key:
            return self._by_key[key]
        base = sanitize(stem)
        candidate, n = base, 1
        while candidate.lower() in self._taken:
            n += 1
            candidate = f"{base}-{n}"
        self._taken.add(candidate.lower())
        clip_id = self._by_key[key] = f"{self.label}/{candidate}"
        return clip_id


class FileIndex:
    """Answers "does this file exist?" from one cached listing per folder.

    Sources name tens of thousands of files, several candidate names each (AudioCaps); a set lookup per name is
    much cheaper than a ``stat`` per name. Names are compared in Unicode NFC, so a CSV and a file system that
    normalise accents differently (macOS) still agree.
    """

    def __init__(self) -> None:
        self._dirs: dict[str, dict[str, str]] = {}

    def _listing(self, folder: str) -> dict[str, str]:
        names = self._dirs.get(folder)
        if names is None:
            names = {}
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.is_file():
                            names[unicodedata.normalize("NFC", entry.name)] = entry.name
            except OSError:
                pass  # a missing or unreadable folder holds no files
            self._dirs[folder] = names
        return names

    def find(self, path: str | Path) -> Path | None:
        """The existing file for ``path`` (absolute, with its on-disk spelling), or None."""
        p = os.path.abspath(path)
        folder, name = os.path.split(p)
        real = self._listing(folder).get(unicodedata.normalize("NFC", name))
        return Path(folder, real) if real is not None else None
