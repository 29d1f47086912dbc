"""Manifests: ``audiopair.records.Record`` s, one per JSON line, validated on read and on write; the training and
evaluation examples made from them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

from pydantic import ValidationError

from audiopair.atomic import atomic_write_jsonl
from audiopair.data.io import JsonlWriter
from audiopair.records import AUDIO_COUNT, SPLITS, TASKS, Record, RenderRecipe

__all__ = ["AUDIO_COUNT", "SPLITS", "TASKS", "ManifestError", "ManifestWriter", "Record", "RenderRecipe", "example",
           "load_examples", "manifest_path", "read_manifest", "write_manifest"]


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


def example(manifest: str | os.PathLike, record: Record) -> dict:
    """What the trainers and the evaluation read of ``record`` (from ``manifest``), one plain dict per example
    (examples travel to Ray workers and become report rows): ``id``, ``task``, ``tier``, ``prompt``,
    ``eval_prompt``, ``target``, ``references``, ``clips`` (feature ids, ``Record.clips``) and ``audio``
    (absolute files, ``Record.files``; ``[]`` for a record holding a render recipe). Each model family turns these
    into tensors in one place: ADIFF's ``train.adiff`` collate, Qwen2-Audio's ``models.qwen2_audio.encode_batch``."""
    r = record
    return {"id": r.id, "task": r.task, "tier": r.tier, "prompt": r.prompt, "eval_prompt": r.eval_prompt,
            "target": r.target, "references": r.references, "clips": r.clips,
            "audio": [str(p) for p in r.files(manifest)] if isinstance(r.audio, list) else []}


def load_examples(dataset_dir: str | os.PathLike, split: str, weights: dict[str, float], seed: int,
                  on_error=None) -> list[dict]:
    """The ``example`` s of several tasks of ``split``, mixed by weight: a weight of 0.5 keeps a seeded half of a
    task's records, 2 repeats them, 1.5 repeats them once and adds a seeded half. A bad record stops the load, or
    with ``on_error`` (see ``read_manifest``) is skipped."""
    import random

    rng = random.Random(seed)
    out: list = []
    for task, w in sorted(weights.items()):
        if w <= 0:
            continue
        path = manifest_path(dataset_dir, task, split)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: build the dataset with these tasks (dataset.tasks.enabled)")
        recs = [example(path, r) for r in read_manifest(path, on_error)]
        whole, frac = int(w), w - int(w)
        out += recs * whole + rng.sample(recs, int(round(frac * len(recs))))
    return out
