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
        self.joined: list[tuple[str, int, int]] = []  # (csv, first line, last line) of rejoined records
        self._per_file: dict[str, int] = {}

    def add(self, csv_path: Path | str, line: int, reason: str) -> None:
        key = str(csv_path)
        self.rows.append((key, line, reason))
        n = self._per_file[key] = self._per_file.get(key, 0) + 1
        if n <= _WARN_PER_FILE:
            log.warning("%s line %d: %s; row skipped", key, line, reason)

    def rejoined(self, csv_path: Path | str, first: int, last: int) -> None:
        """A record whose unquoted field ran over lines ``first``..``last`` and was joined back into one."""
        self.joined.append((str(csv_path), first, last))
        log.warning("%s lines %d-%d: one record broken over %d lines (a line break in an unquoted field); "
                    "rejoined with spaces", csv_path, first, last, last - first + 1)

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


def join_broken_rows(rows: list[tuple[int, int, list[str]]], n: int) -> list[tuple[int, int, list[str], str | None, bool]]:
    """Rejoin records whose unquoted field was broken over several physical lines (AudioCaps' train CSV has them).

    ``rows`` are ``(first line, last line, fields)`` as ``csv.reader`` parsed them (blank lines left out); ``n`` is
    the header's field count. Returns ``(first line, last line, fields, problem, rejoined)`` per record; ``problem``
    is None for a usable record or the reason it must be skipped; ``rejoined`` says several rows were joined.

    - A short record continues on the next lines while their fields still fit (a break inside a middle field):
      the broken field's pieces are joined with a space.
    - A complete record followed by one-field lines: those lines are the rest of its last field (the AudioCaps
      case, ``..., heavy wind followed by a loud`` / ``bang``), joined with a space.
    - A short line that fits nowhere is skipped, and so is the complete record right before it: its last field
      may be cut (the rest held a comma), and a cut caption must never be kept silently.
    """
    out: list[list] = []
    i = 0
    while i < len(rows):
        first, last, fields = rows[i][0], rows[i][1], list(rows[i][2])
        j = i + 1
        while j < len(rows) and len(fields) < n and len(fields) + len(rows[j][2]) - 1 <= n:
            fields[-1] = f"{fields[-1]} {rows[j][2][0]}"
            fields += rows[j][2][1:]
            last, j = rows[j][1], j + 1
        while n > 1 and j < len(rows) and len(fields) == n and len(rows[j][2]) == 1:
            fields[-1] = f"{fields[-1]} {rows[j][2][0]}"
            last, j = rows[j][1], j + 1
        problem = None
        if len(fields) != n:
            joined = f" after joining lines {first}-{last}" if last > first else ""
            problem = f"has {len(fields)} fields{joined}, the header has {n} (unquoted comma or line break?)"
        out.append([first, last, fields, problem, j > i + 1])
        i = j
    for k in range(1, len(out)):
        prev, cur = out[k - 1], out[k]
        if cur[3] and len(cur[2]) < n and prev[3] is None and prev[1] + 1 == cur[0]:
            prev[3] = (f"followed by line {cur[0]} with {len(cur[2])} of {n} fields, which may be the rest of this "
                       f"row's last field (a line break in an unquoted field); quote fields that hold line breaks")
            cur[3] = f"{cur[3]}; it may continue line {prev[0]}, which is skipped too"
    return [tuple(r) for r in out]  # type: ignore[misc]


def physical_rows(reader) -> Iterator[tuple[int, int, list[str]]]:
    """``(first line, last line, fields)`` of each non-blank row a ``csv.reader`` yields after the header."""
    start = reader.line_num + 1
    for row in reader:
        first, start = start, reader.line_num + 1
        if row and not (len(row) == 1 and not row[0].strip()):
            yield first, reader.line_num, row


def read_rows(
    path: Path, required: list[str], optional: list[str], bad: BadRows, raw: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, {column: value})`` for each well-formed record of ``path``.

    ``line`` is the 1-based line the record starts on (a quoted field may span lines; an unquoted field broken
    over lines is rejoined with a warning naming the lines, see ``join_broken_rows``). Header names are matched
    case-insensitively after stripping spaces; a UTF-8 byte-order mark is tolerated. Values are stripped, except
    the ``raw`` columns (file names: a leading space can be part of a name). Records with the wrong number of
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
            records = join_broken_rows(list(physical_rows(reader)), len(header))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8") from None
    for first, last, row, problem, rejoined in records:
        if problem:
            bad.add(path, first, problem)
            continue
        if rejoined:
            bad.rejoined(path, first, last)
        yield first, {c: row[i] if c in raw else row[i].strip() for c, i in wanted.items()}
    bad.finish(path, len(records))


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
                    files = [entry.name for entry in it if entry.is_file()]
                for name in files:
                    names.setdefault(unicodedata.normalize("NFC", name), name)
                names.update((name, name) for name in files)  # an exact spelling always finds its own file
            except OSError:
                pass  # a missing or unreadable folder holds no files
            self._dirs[folder] = names
        return names

    def find(self, path: str | Path) -> Path | None:
        """The existing file for ``path`` (absolute, with its on-disk spelling), or None.

        The name is looked up exactly as written first (spaces and all: Clotho has names that begin with one),
        then in NFC. ``os.path.abspath`` keeps a name's leading and trailing spaces.
        """
        p = os.path.abspath(path)
        folder, name = os.path.split(p)
        listing = self._listing(folder)
        real = listing.get(name, listing.get(unicodedata.normalize("NFC", name)))
        return Path(folder, real) if real is not None else None
