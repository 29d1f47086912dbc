"""Where clips and captions come from. ``make_source`` turns a ``SourceConfig`` into a reader."""

from __future__ import annotations

import numpy as np

from audiopair.audio import AudioError, crop_offset, crop_or_pad, load_audio
from audiopair.config import DatasetConfig, SourceConfig
from audiopair.corpus.base import Clip


def load_clip(clip: Clip, sample_rate: int, seconds: float | None, pad: str = "zero", crop: str = "start",
              seed: int = 0) -> np.ndarray:
    """A source clip's audio: synthesised for the demo bank, read from its file otherwise. Needs only the clip,
    so Ray workers can load any source's clips without the source objects. With ``seconds``, the clip is cropped /
    padded to that length by ``pad`` and ``crop`` (``audiopair.audio.crop_or_pad`` / ``crop_offset``; "random" is
    keyed by ``seed`` and the clip id, so a rebuild cuts the same piece), synthesised or read alike (a demo event,
    shorter than a clip, is padded as a short file is)."""
    if "synth" in clip.meta:
        from audiopair.corpus.demo import synthesise

        x = synthesise(clip.meta["synth"], clip.id, sample_rate, seconds)
    elif clip.path is None:
        raise AudioError(None, f"clip {clip.id} has neither a file nor a synth recipe")
    else:
        x = load_audio(clip.path, sample_rate)
    if seconds is None:
        return x
    length = int(round(seconds * sample_rate))
    return crop_or_pad(x, length, crop_offset(len(x), length, crop, f"{seed}|{clip.id}"), pad)


# kind -> (module, class): the source readers. A new kind is a reader module here plus its name in
# ``config.SourceKind`` (tests/test_readers.py checks that the two agree).
SOURCES: dict[str, tuple[str, str]] = {
    "demo": ("audiopair.corpus.demo", "DemoSource"),
    "audiocaps": ("audiopair.corpus.audiocaps", "AudioCapsSource"),
    "clotho": ("audiopair.corpus.clotho", "ClothoSource"),
    "events": ("audiopair.corpus.events", "EventFolderSource"),
    "adiff_csv": ("audiopair.corpus.adiff_csv", "AdiffCsvSource"),
}
NEEDS_CSV = {"audiocaps", "clotho", "adiff_csv"}  # file-backed kinds that read a caption / pair CSV


def make_source(scfg: SourceConfig, dcfg: DatasetConfig):
    """A source object (clips(), missing(), pairs()) for one configured source. Raises ``ValueError`` naming the
    source for an unknown kind (listing the known ones) or a missing ``csv`` / ``audio_dir``."""
    import importlib

    if scfg.kind not in SOURCES:
        raise ValueError(f"source {scfg.label!r}: unknown kind {scfg.kind!r}; known kinds: {sorted(SOURCES)}")
    module, name = SOURCES[scfg.kind]
    cls = getattr(importlib.import_module(module), name)
    if scfg.kind == "demo":
        return cls(dcfg.demo, name=scfg.label)
    if scfg.csv is None and scfg.kind in NEEDS_CSV:
        raise ValueError(f"source {scfg.label!r} of kind {scfg.kind!r} needs 'csv' (dataset.sources.N.csv)")
    if scfg.audio_dir is None:
        raise ValueError(f"source {scfg.label!r} of kind {scfg.kind!r} needs 'audio_dir' (dataset.sources.N.audio_dir)")
    return cls(scfg)
