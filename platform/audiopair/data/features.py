"""Cached front-end features: log-mel spectrograms per clip, stored as parquet shards next to the manifests.

Each row holds a clip id, the array's shape and its float16 or float32 bytes; ``FeatureStore`` reads them back by id.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from audiopair.atomic import atomic_write_bytes
from audiopair.config import FeatureConfig


FRONT_END_KEYS = ("n_mels", "n_fft", "hop_length", "f_min", "f_max", "mel_scale", "mel_norm")


def front_end(cfg: FeatureConfig, sample_rate: int) -> dict:
    """The settings that decide a log-mel's values: what a model records and an embedding cache fingerprints."""
    return {"sample_rate": sample_rate, **{k: getattr(cfg, k) for k in FRONT_END_KEYS}}


def front_end_of(dataset_dir: str | os.PathLike) -> dict | None:
    """``front_end`` of the dataset built in ``dataset_dir`` (from its ``build.json``), or None when it has none."""
    import json

    meta = Path(dataset_dir) / "build.json"
    if not meta.is_file():
        return None
    cfg = json.loads(meta.read_text()).get("config", {})
    features = FeatureConfig.model_validate(cfg.get("features", {}))
    return front_end(features, cfg.get("sample_rate", 32000))


def front_end_mismatch(model: dict | None, data: dict | None) -> list[str]:
    """The settings on which a model's front end and a dataset's differ, as ``key: model vs data`` (empty when
    either is unknown: models saved before front ends were recorded)."""
    if not model or not data:
        return []
    return [f"{k}: {model.get(k)!r} vs {data.get(k)!r}" for k in sorted(set(model) | set(data))
            if model.get(k) != data.get(k)]


def check_front_end(model: dict | None, data: dict | None, what: str) -> None:
    """ValueError naming every log-mel setting on which ``what`` (a model and a dataset) disagree: a model fed
    features of another front end produces confident nonsense, never an error of its own."""
    diff = front_end_mismatch(model, data)
    if diff:
        raise ValueError(f"{what}: the model was trained on other log-mels than the dataset holds ({'; '.join(diff)});"
                         " rebuild the dataset with the model's dataset.features / sample_rate")


def _hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney's Auditory Toolbox: linear below 1 kHz (200/3 Hz per mel), logarithmic above (librosa's default)
    f = np.asarray(f, dtype=np.float64)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), f / (200.0 / 3))


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), m * (200.0 / 3))


@functools.lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None, scale: str = "slaney",
                norm: str | None = "slaney") -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` triangular mel filters, computed in float64 and returned as float32.

    The formulas of ``librosa.filters.mel`` (which ADIFF's front end, torchlibrosa's ``LogmelFilterBank``, calls):
    ``scale`` "slaney" or "htk"; ``norm`` "slaney" divides each filter by its width in Hz (equal area), None leaves
    peaks at 1 (torchaudio's ``MelSpectrogram`` default)."""
    f_max = min(f_max or sample_rate / 2, sample_rate / 2)
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(f_min), scale), _hz_to_mel(np.float64(f_max), scale),
                                   n_mels + 2), scale)
    ramps = edges[:, None] - fft_hz[None, :]
    width = np.diff(edges)
    lower, upper = -ramps[:-2] / width[:-1, None], ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.astype(np.float32)


@functools.lru_cache(maxsize=8)
def dft_basis(n_fft: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The windowed DFT as two ``(n_fft // 2 + 1, 1, n_fft)`` float32 conv1d kernels (real, imaginary): a periodic
    Hann window times ``exp(-2 pi i k n / n_fft)``, computed as torchlibrosa's ``STFT`` does (``omega ** (k n)`` in
    complex128), so that a 1e-4 dB match with ADIFF's front end holds even in the quietest bins (an FFT differs by
    up to 3e-4 dB there)."""
    import torch

    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann (scipy get_window(fftbins=True))
    basis = np.power(np.exp(-2j * np.pi / n_fft), np.outer(n, n))[:, : n_fft // 2 + 1] * window[:, None]
    as_kernel = lambda part: torch.from_numpy(np.ascontiguousarray(part.T[:, None, :], dtype=np.float32))
    return as_kernel(basis.real), as_kernel(basis.imag)


def logmel_torch(x: "torch.Tensor", sample_rate: int, cfg: FeatureConfig) -> "torch.Tensor":
    """``(B, samples)`` float32 waveforms -> ``(B, n_mels, frames)`` log-mel power in dB, floored at -100 dB.

    ADIFF's front end (torchlibrosa ``Spectrogram`` + ``LogmelFilterBank`` with its defaults): a centred STFT with
    reflect padding, window ``n_fft``, hop ``hop_length``, power 2, then mel filters (``mel_filters``), then
    ``10 log10(max(power, 1e-10))`` (ref 1, no top_db). frames = samples // hop_length + 1."""
    import torch
    import torch.nn.functional as F

    real, imag = dft_basis(cfg.n_fft)
    pad = cfg.n_fft // 2
    x = F.pad(x[:, None, :], (pad, pad), mode="reflect")
    power = F.conv1d(x, real, stride=cfg.hop_length) ** 2 + F.conv1d(x, imag, stride=cfg.hop_length) ** 2
    mel = torch.from_numpy(mel_filters(sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale,
                                       cfg.mel_norm))
    mel_power = torch.matmul(power.transpose(1, 2), mel).transpose(1, 2)
    return 10.0 * torch.log10(torch.clamp(mel_power, min=1e-10))


def logmel(x: np.ndarray, sample_rate: int, cfg: FeatureConfig) -> np.ndarray:
    """``(n_mels, frames)`` log-mel power in dB of one mono clip (see ``logmel_torch``)."""
    import torch

    with torch.no_grad():
        return logmel_torch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None], sample_rate, cfg)[0].numpy()


SCHEMA = pa.schema([("id", pa.string()), ("shape", pa.list_(pa.int32())), ("data", pa.binary())])


def write_shard(path: str | os.PathLike, rows: list[tuple[str, np.ndarray]], dtype: str = "float16") -> None:
    """One parquet file of ``(id, array)`` rows, each array stored as ``dtype`` bytes (read back by its size)."""
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "shape": [list(r[1].shape) for r in rows],
            "data": [r[1].astype(dtype).tobytes() for r in rows],
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
        # float16 or float32, told apart by the byte count (caches written before float32 existed are float16)
        dtype = np.float32 if len(data) == 4 * int(np.prod(shape)) else np.float16
        return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float32)
