"""Cached front-end features: log-mel spectrograms per clip, stored as parquet shards next to the manifests.

Each row holds a clip id, the array's shape and its float16 bytes; ``FeatureStore`` reads them back by id.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from audiopair.config import FeatureConfig
from audiopair.data.io import atomic_write_bytes


@functools.lru_cache(maxsize=8)
def _mel(sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float | None):
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop, n_mels=n_mels,
        f_min=f_min, f_max=min(f_max or sample_rate / 2, sample_rate / 2), power=2.0, center=True,
    )


def logmel(x: np.ndarray, sample_rate: int, cfg: FeatureConfig) -> np.ndarray:
    """``(n_mels, frames)`` log-mel power in dB, floored at -100 dB (HTSAT front end at real scale)."""
    import torch

    mel = _mel(sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.f_min, cfg.f_max)
    with torch.no_grad():
        m = mel(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return (10.0 * torch.log10(torch.clamp(m, min=1e-10))).numpy()


SCHEMA = pa.schema([("id", pa.string()), ("shape", pa.list_(pa.int32())), ("data", pa.binary())])


def write_shard(path: str | os.PathLike, rows: list[tuple[str, np.ndarray]]) -> None:
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "shape": [list(r[1].shape) for r in rows],
            "data": [r[1].astype(np.float16).tobytes() for r in rows],
        },
        schema=SCHEMA,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


class FeatureStore:
    """All features of one kind under ``<dataset>/features/<kind>/``, looked up by clip id."""

    def __init__(self, root: str | os.PathLike, kind: str = "logmel"):
        self.folder = Path(root) / "features" / kind
        files = sorted(self.folder.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no {kind} features under {self.folder}; build the dataset first")
        self._rows: dict[str, tuple[list[int], bytes]] = {}
        for f in files:
            t = pq.read_table(f)
            for i, s, d in zip(t["id"].to_pylist(), t["shape"].to_pylist(), t["data"].to_pylist()):
                self._rows[i] = (s, d)

    def ids(self) -> list[str]:
        return sorted(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._rows

    def __getitem__(self, clip_id: str) -> np.ndarray:
        try:
            shape, data = self._rows[clip_id]
        except KeyError:
            raise KeyError(f"no features for clip {clip_id!r} in {self.folder}") from None
        return np.frombuffer(data, dtype=np.float16).reshape(shape).astype(np.float32)
