"""JSON Lines: streamed atomically (``JsonlWriter``) and read back. Whole files are written with ``audiopair.atomic``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from audiopair.atomic import temp_beside


class JsonlWriter:
    """Stream JSON Lines into ``path`` atomically: rows go to a temporary file beside it, which ``close`` renames into
    place; ``abort`` (or leaving a ``with`` block by an exception) removes it, so ``path`` holds either its old
    content or every row. Rows are written as ``atomic_write_jsonl`` writes them (sorted keys, UTF-8)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._tmp = temp_beside(self.path)
        self._f = open(self._tmp, "w", encoding="utf-8")
        self.count = 0

    def write(self, row: Any) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        self.count += 1

    def close(self) -> int:
        """Make the file visible under its name; returns the rows written."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.count

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file; a malformed line raises ValueError naming file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return out
