"""The manifest record (DESIGN.md): one example per JSON line, validated on read and on write."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audiopair.atomic import atomic_write_jsonl
from audiopair.data.io import JsonlWriter

Task = Literal["ac", "adc", "acc", "adiff", "position"]
Split = Literal["train", "val", "test"]
TASKS: tuple[str, ...] = ("ac", "adc", "acc", "adiff", "position")
SPLITS: tuple[str, ...] = ("train", "val", "test")
AUDIO_COUNT = {"ac": 1, "adc": 2, "acc": 2, "adiff": 2, "position": 2}


class RenderRecipe(BaseModel):
    """How to render an example's audio on the fly instead of reading files (see data/render.py)."""

    model_config = ConfigDict(extra="forbid")
    clips: list[dict] = Field(min_length=1, max_length=2)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    task: Task
    audio: list[str] | RenderRecipe
    prompt: str = Field(min_length=1)
    target: str = Field(min_length=1)
    references: list[str] = Field(min_length=1)
    tier: Literal[1, 2, 3] | None = None
    split: Split
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("references")
    @classmethod
    def _no_empty_reference(cls, refs: list[str]) -> list[str]:
        if any(not r.strip() for r in refs):
            raise ValueError("references must not contain empty texts")
        return refs

    @model_validator(mode="after")
    def _consistent(self) -> "Record":
        if (self.task == "adiff") != (self.tier is not None):
            raise ValueError("tier is required for task 'adiff' and must be null for other tasks")
        n = len(self.audio) if isinstance(self.audio, list) else len(self.audio.clips)
        if n != AUDIO_COUNT[self.task]:
            raise ValueError(f"task {self.task!r} takes {AUDIO_COUNT[self.task]} audio, got {n}")
        return self


class ManifestError(ValueError):
    """A bad manifest line; the message names file and line."""


def read_manifest(path: str | os.PathLike, on_error: Callable[[ManifestError], None] | None = None
                  ) -> Iterator[Record]:
    """Yield validated records. A bad line raises ManifestError naming ``file:line`` and the field, or, with
    ``on_error``, is handed to it and skipped (evaluation counts bad records instead of stopping)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = Record.model_validate(json.loads(line))
            except json.JSONDecodeError as e:
                err = ManifestError(f"{path}:{n}: not valid JSON ({e.msg})")
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'record'}: {x['msg']}" for x in e.errors())
                err = ManifestError(f"{path}:{n}: invalid record: {problems}")
            else:
                yield record
                continue
            if on_error is None:
                raise err
            on_error(err)


def write_manifest(path: str | os.PathLike, records: list[Record | dict]) -> int:
    """Validate every record, then write the file atomically."""
    rows = [(r if isinstance(r, Record) else Record.model_validate(r)).model_dump(mode="json") for r in records]
    return atomic_write_jsonl(path, rows)


class ManifestWriter:
    """Stream validated records into ``root/manifests/<task>_<split>.jsonl``, one open file per task and split, in
    the order they come. Each file is written atomically (``io.JsonlWriter``) when ``close`` returns the counts
    (``{"task_split": records}``, sorted); an exception inside a ``with`` block leaves the old files untouched.
    A bad record raises pydantic's ValidationError naming the field."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._files: dict[tuple[str, str], JsonlWriter] = {}

    def write(self, record: Record | dict) -> None:
        r = record if isinstance(record, Record) else Record.model_validate(record)
        key = (r.task, r.split)
        if key not in self._files:
            self._files[key] = JsonlWriter(manifest_path(self.root, *key))
        self._files[key].write(r.model_dump(mode="json"))

    def close(self) -> dict[str, int]:
        return {f"{t}_{s}": self._files[(t, s)].close() for t, s in sorted(self._files)}

    def abort(self) -> None:
        for f in self._files.values():
            f.abort()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.abort()


def manifest_path(root: str | os.PathLike, task: str, split: str) -> Path:
    return Path(root) / "manifests" / f"{task}_{split}.jsonl"


def mix_tasks(dataset_dir: str | os.PathLike, split: str, weights: dict[str, float], seed: int,
              convert: Callable[[Path, Record], Any], on_error=None) -> list:
    """Training examples of several tasks mixed by weight: a weight of 0.5 keeps a seeded half of a task's records,
    2 repeats them, 1.5 repeats them once and adds a seeded half. ``convert(manifest, record)`` makes each example.
    A bad record stops the load, or with ``on_error`` (see ``read_manifest``) is skipped."""
    import random

    rng = random.Random(seed)
    out: list = []
    for task, w in sorted(weights.items()):
        if w <= 0:
            continue
        path = manifest_path(dataset_dir, task, split)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: build the dataset with these tasks (dataset.tasks.enabled)")
        recs = [convert(path, r) for r in read_manifest(path, on_error)]
        whole, frac = int(w), w - int(w)
        out += recs * whole + rng.sample(recs, int(round(frac * len(recs))))
    return out


def resolve_audio(manifest: str | os.PathLike, record: Record) -> list[Path]:
    """Absolute audio paths of a file-backed record (paths in a manifest are relative to its folder)."""
    if not isinstance(record.audio, list):
        raise ValueError(f"record {record.id} holds a recipe, not files")
    base = Path(manifest).resolve().parent
    return [(base / a).resolve() for a in record.audio]
