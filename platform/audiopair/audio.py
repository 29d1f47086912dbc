"""Audio I/O and the small signal helpers every stage shares.

Everything here works on float32 numpy arrays, mono ``(samples,)`` unless said otherwise. Bad input raises
``AudioError`` naming the file, so a dataset build can reject that file and carry on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from audiopair.atomic import atomic_path

EPS = 1e-10


class AudioError(Exception):
    """Audio that cannot be used: missing, empty, truncated, unreadable or non-finite. ``path`` names the file."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


# Writers that cannot seek back (a pipe) leave the RIFF and data sizes as placeholders: 0xFFFFFFFF, or values near
# 2 GiB such as 0x7FFFF000. A declared size this large that the file does not hold is a placeholder, not truncation.
PLACEHOLDER_MIN = 0x7F000000
# libsndfile's frame count for these formats is an estimate (MP3: from the bitrate or a Xing/LAME header).
ESTIMATED_FRAMES = ("MP3", "MPEG")


def _wav_data_chunk(p: Path) -> tuple[int, int, int] | None:
    """``(declared bytes, bytes present, bytes per frame)`` of a RIFF/WAVE file's data chunk; None if not a WAV.

    libsndfile quietly reads whatever a cut-short WAV holds, so the caller compares the declared size with what is
    there. ``bytes per frame`` is the fmt chunk's block align (0 when the fmt chunk comes later or is missing).
    """
    import struct

    with open(p, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # RF64 keeps its real sizes in a ds64 chunk, which libsndfile reads
        size = p.stat().st_size
        align = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return n, max(0, size - f.tell()), align
            if cid == b"fmt " and n >= 14:
                body = f.read(n)
                align = struct.unpack("<H", body[12:14])[0] if len(body) >= 14 else 0
                f.seek(n & 1, 1)
                continue
            f.seek(n + (n & 1), 1)


def _check_wav_sizes(p: Path, frames_read: int) -> None:
    """Reject a WAV whose data chunk is cut short; accept placeholder sizes when every byte present decoded."""
    wav = _wav_data_chunk(p)
    if wav is None:
        return
    declared, present, align = wav
    if declared <= present:
        return
    if declared < PLACEHOLDER_MIN:
        raise AudioError(p, f"truncated: the data chunk is {declared - present} bytes shorter than its header says")
    if align and frames_read < present // align:  # a placeholder, but the decoder stopped early: damaged data
        raise AudioError(p, f"truncated: the data chunk holds {present // align} frames, the decoder read {frames_read}")


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read WAV / FLAC / OGG / MP3 of any integer or float format: ``(channels, samples)`` float32 in [-1, 1], rate.

    Raises ``AudioError`` (naming the file) for a missing, empty, undecodable, truncated or non-finite file. A WAV
    whose sizes are pipe placeholders (see ``PLACEHOLDER_MIN``) is read in full; an MP3's frame count is only an
    estimate, so it is not compared with the frames decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioError(p, "file does not exist")
    if p.stat().st_size == 0:
        raise AudioError(p, "file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(p)) as f:
            sr = f.samplerate
            frames = f.frames
            estimated = f.format in ESTIMATED_FRAMES
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        # libsndfile says "File does not exist" for many files it cannot decode (an MP3 with only an ID3 tag);
        # the file does exist, so say what is true.
        detail = str(e).split(": ", 1)[-1] if "does not exist" not in str(e) else "format not recognised"
        raise AudioError(p, f"unreadable audio: not decodable by libsndfile ({detail}); the file may be cut "
                            f"short or not audio") from None
    if data.shape[0] == 0:
        raise AudioError(p, "no audio samples")
    # A header that promises more frames than the file holds means the file was cut short.
    if frames > 0 and data.shape[0] < frames and not estimated:
        raise AudioError(p, f"truncated: header says {frames} frames, file holds {data.shape[0]}")
    _check_wav_sizes(p, data.shape[0])
    if not np.isfinite(data).all():
        raise AudioError(p, "contains NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(sr)


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average channels: ``(channels, samples)`` or ``(samples,)`` -> ``(samples,)``."""
    return x if x.ndim == 1 else x.mean(axis=0).astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc) along the last axis."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as AF

    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), sr_in, sr_out)
    return y.numpy()


def crop_or_pad(x: np.ndarray, length: int, offset: int = 0, pad: str = "zero") -> np.ndarray:
    """Exactly ``length`` samples: take ``x[offset:offset+length]``; a short clip is padded at the end with zeros
    (``pad="zero"``) or with repeats of itself (``pad="repeat"``: ADIFF's and HTSAT's loaders, which tile the clip
    ``ceil(length / len)`` times and keep the first ``length`` samples)."""
    if pad == "repeat" and 0 < len(x) < length:
        return np.tile(np.asarray(x, dtype=np.float32), -(-length // len(x)))[:length]
    out = np.zeros(length, dtype=np.float32)
    piece = x[offset : offset + length]
    out[: len(piece)] = piece
    return out


def crop_offset(n: int, length: int, policy: str, key: str = "") -> int:
    """Where a ``length``-sample crop of an ``n``-sample clip starts: "start" 0, "center" the middle, "random" a
    position drawn from ``key`` (a stable string such as seed + clip id, so a rebuild crops the same way)."""
    room = max(n - length, 0)
    if policy == "start" or room == 0:
        return 0
    if policy == "center":
        return room // 2
    if policy == "random":
        import zlib

        return zlib.crc32(key.encode()) % (room + 1)
    raise ValueError(f"unknown crop policy {policy!r}; use start, center or random")


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    seconds: float | None = None,
    offset_seconds: float = 0.0,
    pad: str = "zero",
    crop: str | None = None,
) -> np.ndarray:
    """Load a file as mono float32 at ``sample_rate``; optionally cropped or padded to ``seconds`` (``pad``: see
    ``crop_or_pad``; ``crop``: a ``crop_offset`` policy keyed by the path, instead of ``offset_seconds``)."""
    data, sr = read_audio(path)
    x = resample(to_mono(data), sr, sample_rate)
    if seconds is not None:
        length = int(round(seconds * sample_rate))
        offset = crop_offset(len(x), length, crop, str(path)) if crop else int(round(offset_seconds * sample_rate))
        x = crop_or_pad(x, length, offset, pad)
    if not np.isfinite(x).all():
        raise AudioError(path, "non-finite samples after resampling")
    return x


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + EPS))


def loudness_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    return float(20.0 * np.log10(rms(x)))


def peak_dbfs(x: np.ndarray) -> float:
    return float(20.0 * np.log10(np.max(np.abs(x)) + EPS))


def write_audio(path: str | os.PathLike, x: np.ndarray, sample_rate: int, subtype: str = "PCM_24") -> None:
    """Write mono float audio atomically (temp file in the same folder, then rename). FLAC by extension."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not np.isfinite(x).all():
        raise AudioError(p, "refusing to write non-finite samples")
    fmt = p.suffix.lstrip(".").upper() or "FLAC"
    with atomic_path(p) as tmp:
        sf.write(tmp, np.clip(x, -1.0, 1.0), sample_rate, subtype=subtype, format=fmt)


# Levels for mixing. A base quieter than SILENT_DBFS (RMS) is silence: the event is placed at SILENT_BASE_EVENT_DBFS
# absolute, since an SNR against silence means nothing. An event quieter than SILENT_DBFS over the span it is placed
# on is refused: "adding" it would change nothing while the targets say it was added.
SILENT_DBFS = -60.0
SILENT_BASE_EVENT_DBFS = -20.0


def level_dbfs(x: np.ndarray) -> float:
    """True RMS level in dBFS (``-inf`` for digital silence); unlike ``loudness_dbfs`` it has no floor."""
    power = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    return 10.0 * math.log10(power) if power > 0 else -math.inf


def mix_at_snr(
    base: np.ndarray,
    event: np.ndarray,
    onset: int,
    snr_db: float,
    peak_dbfs_max: float = -1.0,
) -> tuple[np.ndarray, dict]:
    """Place ``event`` into ``base`` at sample ``onset`` with the requested SNR; the result has ``base``'s length.

    SNR is the event's RMS over its own samples relative to the base's RMS over the same span (the whole base
    when that span is silent), so a quiet background does not make a whisper loud. A silent base (below
    ``SILENT_DBFS``) gets the event at ``SILENT_BASE_EVENT_DBFS`` (-20 dBFS RMS) whatever the SNR. If the mix would
    peak above ``peak_dbfs_max`` the whole mix is scaled down, which keeps the SNR and avoids clipping. Returns
    the mix and what was done: onset and length in samples, the applied event gain, the final scale and the
    event's RMS level in the mix (``event_dbfs``).

    Raises ``AudioError`` (no path: the caller names the event file) when the placed event is silent, below
    ``SILENT_DBFS``; ``ValueError`` for an onset outside the base.
    """
    n = len(base)
    if onset < 0 or onset >= n:
        raise ValueError(f"onset {onset} outside the base clip of {n} samples")
    ev = event[: n - onset].astype(np.float64)
    ev_db = level_dbfs(ev)
    if ev_db < SILENT_DBFS:
        raise AudioError(None, f"event clip is silent (RMS {ev_db:.1f} dBFS < {SILENT_DBFS:g} dBFS over the "
                               f"{len(ev)} samples placed): adding it would change nothing")
    span_db = level_dbfs(base[onset : onset + len(ev)])
    ref_db = span_db if span_db >= SILENT_DBFS else level_dbfs(base)
    target_db = ref_db + snr_db if ref_db >= SILENT_DBFS else SILENT_BASE_EVENT_DBFS
    gain = 10 ** ((target_db - ev_db) / 20)
    out = base.astype(np.float64).copy()
    out[onset : onset + len(ev)] += gain * ev
    limit = 10 ** (peak_dbfs_max / 20)
    peak = float(np.max(np.abs(out)))
    scale = min(1.0, limit / peak) if peak > 0 else 1.0
    out *= scale
    return out.astype(np.float32), {
        "onset": int(onset),
        "event_samples": int(len(ev)),
        "event_gain": float(gain),
        "scale": float(scale),
        "event_dbfs": round(target_db + 20 * math.log10(scale), 2),
    }
