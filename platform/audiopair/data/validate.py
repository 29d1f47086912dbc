"""Check every source file once, before planning: a bad file is rejected with its reason, never drawn into a plan.

Event clips used to be opened only when a plan drew them, so a bad event file that no plan drew never reached
``rejected.jsonl``, and a silent one was "added" to pairs whose targets then said it was heard. ``validate_clips``
decodes each file-backed clip once (``audio.read_audio``: missing, empty, undecodable, truncated, non-finite)
and refuses event clips that are silent (below ``audio.SILENT_DBFS``). At real scale it runs as a Ray Data map
over the file list, one task per batch of files, ``dataset.num_workers`` tasks at a time.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from audiopair.audio import SILENT_DBFS, AudioError, level_dbfs, read_audio
from audiopair.config import DatasetConfig
from audiopair.corpus.base import Clip
from audiopair.progress import Progress

_BATCH = 64  # files per Ray Data task at most: one 10 s clip decodes in milliseconds, a task takes ~0.2 s to schedule


def check_file(path: str, role: str) -> str | None:
    """Why the file at ``path`` cannot be used as a clip of ``role`` ("base" / "event" / "any"), or None."""
    try:
        data, _ = read_audio(path)
    except AudioError as e:
        return e.reason
    if role == "event":
        db = level_dbfs(data.mean(axis=0))
        if db < SILENT_DBFS:
            return (f"event clip is silent (RMS {db:.1f} dBFS < {SILENT_DBFS:g} dBFS): adding it would change "
                    f"nothing while its targets say it was added")
    return None


def check_batch(batch: dict) -> dict:
    """Ray Data task: ``{"id", "path", "role"}`` columns in, the same rows with a ``reason`` ("" when good) out."""
    reasons = [check_file(str(p), str(r)) or "" for p, r in zip(batch["path"], batch["role"])]
    return {"id": np.asarray(batch["id"]), "path": np.asarray(batch["path"]), "reason": np.asarray(reasons)}


def _bar(total: int, progress: Callable[[str], None]) -> Progress:
    """Files checked, files/s, ETA: a tqdm bar for ``print`` on a terminal, else a line at most every 15 s."""
    return Progress(total, "check sources", "files", progress, heartbeat=True)


def validate_clips(
    clips: list[Clip], cfg: DatasetConfig, executor: str = "ray", progress: Callable[[str], None] = print
) -> dict[str, str]:
    """``{clip id: reason}`` for the file-backed ``clips`` that cannot be used (synthesised clips are skipped).

    ``executor`` "ray" checks the files as a Ray Data map (``dataset.num_workers`` tasks at once), "serial" in
    this process. Each path is decoded once even when several clips share it.
    """
    files = [c for c in clips if c.path is not None]
    if not files:
        return {}
    by_path: dict[tuple[str, str], list[str]] = {}
    for c in files:
        by_path.setdefault((c.path, c.role), []).append(c.id)
    todo = list(by_path)
    if executor == "ray":
        import ray

        from audiopair.runtime import ensure_ray

        ensure_ray()
        rows = [{"id": str(i), "path": p, "role": r} for i, (p, r) in enumerate(todo)]
        blocks = min(len(rows), max(cfg.num_workers, math.ceil(len(rows) / _BATCH)))  # every worker gets files
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ds = ds.map_batches(check_batch, batch_size=math.ceil(len(rows) / blocks),
                            compute=ray.data.TaskPoolStrategy(size=cfg.num_workers), num_cpus=1)
        with _bar(len(todo), progress) as bar:
            found = {}
            for r in ds.iter_rows():
                found[todo[int(r["id"])]] = r["reason"]
                bar.update(rejected=1 if r["reason"] else 0)
    else:
        with _bar(len(todo), progress) as bar:
            found = {}
            for key in todo:
                found[key] = check_file(*key) or ""
                bar.update(rejected=1 if found[key] else 0)
    bad = {cid: reason for key, reason in found.items() if reason for cid in by_path[key]}
    progress(f"validated {len(todo)} source files: {sum(1 for r in found.values() if r)} unusable")
    return bad
