"""Where clips and captions come from. ``make_source`` turns a ``SourceConfig`` into a reader."""

from __future__ import annotations

from audiopair.config import DatasetConfig, SourceConfig


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
