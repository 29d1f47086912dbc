"""Where clips and captions come from. ``make_source`` turns a ``SourceConfig`` into a reader."""

from __future__ import annotations

import numpy as np

from audiopair.audio import AudioError, crop_offset, crop_or_pad, load_audio
from audiopair.config import DatasetConfig, SourceConfig
from audiopair.corpus.base import Clip


def load_clip(clip: Clip, sample_rate: int, seconds: float | None, pad: str = "zero", crop: str = "start",
              seed: int = 0) -> np.ndarray:
    """A source clip's audio: synthesised for the demo bank, read from its file otherwise. Needs only the clip,
    so Ray workers can load any source's clips without the source objects. A file is cropped / padded to
    ``seconds`` by ``pad`` and ``crop`` (``audiopair.audio.crop_or_pad`` / ``crop_offset``; "random" is keyed by
    ``seed`` and the clip id, so a rebuild cuts the same piece)."""
    if "synth" in clip.meta:
        from audiopair.corpus.demo import synthesise

        return synthesise(clip.meta["synth"], clip.id, sample_rate, seconds)
    if clip.path is None:
        raise AudioError(None, f"clip {clip.id} has neither a file nor a synth recipe")
    if seconds is None:
        return load_audio(clip.path, sample_rate)
    x = load_audio(clip.path, sample_rate)
    length = int(round(seconds * sample_rate))
    return crop_or_pad(x, length, crop_offset(len(x), length, crop, f"{seed}|{clip.id}"), pad)


def make_source(scfg: SourceConfig, dcfg: DatasetConfig):
    """A source object (clips(), missing(), pairs()) for one configured source."""
    if scfg.kind == "demo":
        from audiopair.corpus.demo import DemoSource

        return DemoSource(dcfg.demo, name=scfg.label)
    if scfg.csv is None and scfg.kind != "events":
        raise ValueError(f"source {scfg.label!r} of kind {scfg.kind!r} needs 'csv' (dataset.sources.N.csv)")
    if scfg.audio_dir is None:
        raise ValueError(f"source {scfg.label!r} of kind {scfg.kind!r} needs 'audio_dir' (dataset.sources.N.audio_dir)")
    if scfg.kind == "audiocaps":
        from audiopair.corpus.audiocaps import AudioCapsSource as cls
    elif scfg.kind == "clotho":
        from audiopair.corpus.clotho import ClothoSource as cls
    elif scfg.kind == "events":
        from audiopair.corpus.events import EventFolderSource as cls
    else:
        from audiopair.corpus.adiff_csv import AdiffCsvSource as cls
    return cls(scfg)
