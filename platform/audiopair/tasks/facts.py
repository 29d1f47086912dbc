"""Acoustic facts measured from a clip: what the explanation templates may state about it."""

from __future__ import annotations

import numpy as np

from audiopair.audio import loudness_dbfs, peak_dbfs


def _frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    return x[idx] * np.hanning(n_fft)[None, :]


def spectral_centroid(x: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 512) -> float:
    """Energy-weighted mean frequency over the whole clip (Hz): the "brightness" of a sound."""
    mag = np.abs(np.fft.rfft(_frames(x, n_fft, hop), axis=1)) ** 2
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    total = mag.sum()
    return float((mag.sum(axis=0) @ f) / total) if total > 0 else 0.0


def onset_times(x: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 256, min_gap: float = 0.05) -> np.ndarray:
    """Onsets (s) by peak-picking positive spectral flux on a log-magnitude spectrogram.

    A frame is an onset when its flux is a local maximum above median + 3 x MAD (and above a small floor), with
    peaks closer than ``min_gap`` merged: steady backgrounds give few onsets, clicks and notes give many.
    """
    spec = np.log1p(100.0 * np.abs(np.fft.rfft(_frames(x, n_fft, hop), axis=1)))
    flux = np.maximum(np.diff(spec, axis=0), 0).sum(axis=1)
    if flux.size < 3:
        return np.zeros(0)
    med = np.median(flux)
    mad = np.median(np.abs(flux - med)) + 1e-9
    threshold = max(med + 3.0 * mad, 0.05 * flux.max())
    peaks = np.where((flux[1:-1] > flux[:-2]) & (flux[1:-1] >= flux[2:]) & (flux[1:-1] > threshold))[0] + 1
    times, last = [], -1e9
    for p in peaks:
        t = (p + 1) * hop / sr
        if t - last >= min_gap:
            times.append(t)
            last = t
    return np.asarray(times)


def measure(x: np.ndarray, sr: int) -> dict:
    """Loudness (dBFS), peak (dBFS), spectral centroid (Hz), onset rate (onsets/s) and duration (s)."""
    duration = len(x) / sr
    onsets = onset_times(x, sr)
    return {
        "loudness_dbfs": round(loudness_dbfs(x), 2),
        "peak_dbfs": round(peak_dbfs(x), 2),
        "centroid_hz": round(spectral_centroid(x, sr), 1),
        "onset_rate": round(len(onsets) / duration, 3) if duration > 0 else 0.0,
        "duration_s": round(duration, 3),
    }
