"""Identities of a build's input files, so a resumed build sees a changed source (issue 15).

A file's identity is its size, its modification time (ns) and a cheap content hash: BLAKE2b over the first and last
4 KiB and 8 blocks of 4 KiB spread evenly between (about 40 KiB per file, whatever its length), computed for all
files at once on a thread pool (the reads wait on the disk, not the GIL). Caption and pair CSVs are small, so they
are hashed whole: an edited caption is seen even when the edit falls between two sampled blocks and the editor
kept the mtime. An audio edit of the same size, between the samples and with the mtime restored, is the one change
this misses; ``dataset.on_existing=overwrite`` rebuilds from scratch.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

BLOCK = 4096
SAMPLES = 8


def file_identity(path: str, whole: bool = False) -> str:
    """``"<size>:<mtime_ns>:<hash>"`` of ``path``; a missing or unreadable file gives ``"missing"``. ``whole``
    hashes every byte (CSVs), otherwise the first, last and ``SAMPLES`` evenly spaced ``BLOCK``-byte blocks."""
    try:
        st = os.stat(path)
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            if whole or st.st_size <= (SAMPLES + 2) * BLOCK:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            else:
                step = (st.st_size - BLOCK) // (SAMPLES + 1)
                for k in range(SAMPLES + 2):  # 0 = the header, SAMPLES + 1 = the last block
                    f.seek(min(k * step, st.st_size - BLOCK) if k <= SAMPLES else st.st_size - BLOCK)
                    h.update(f.read(BLOCK))
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"


def source_identities(audio: Iterable[str], csvs: Iterable[str], threads: int = 16) -> dict[str, str]:
    """``{path: identity}`` of every audio file (sampled hash) and every caption / pair CSV (whole hash; a CSV entry
    may be a glob, as in ``SourceConfig.csv``)."""
    csv_paths = sorted({p for pattern in csvs for p in (sorted(glob.glob(pattern)) or [pattern])})
    jobs = [(p, False) for p in sorted(set(audio))] + [(p, True) for p in csv_paths]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        ids = list(pool.map(lambda job: file_identity(*job), jobs))
    return {p: i for (p, _), i in zip(jobs, ids)}


def digest(identities: dict[str, str]) -> str:
    h = hashlib.sha256()
    for p in sorted(identities):
        h.update(f"{p}\0{identities[p]}\n".encode())
    return h.hexdigest()[:16]


def json_digest(obj, length: int = 16, algorithm: str = "sha256") -> str:
    """A short stable hash of a JSON-able object (keys sorted; what JSON cannot hold goes in as ``str``): the
    fingerprint of config sections, example lists, studies. The sweep's trial names keep their ``sha1``, 8."""
    return hashlib.new(algorithm, json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Human-readable differences, one per file: ``"<path> (changed)"``, ``(gone)`` or ``(new)``."""
    out = [f"{p} (changed)" if p in new else f"{p} (gone)" for p in sorted(old) if new.get(p) != old[p]]
    return out + [f"{p} (new)" for p in sorted(set(new) - set(old))]
