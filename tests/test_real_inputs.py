"""Issue 14: inputs as people's files, captions and machines hold them. One section per kind of fault."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiopair.config import SourceConfig
from audiopair.corpus.adiff_csv import AdiffCsvSource
from audiopair.corpus.audiocaps import AudioCapsSource
from audiopair.corpus.clotho import ClothoSource
from audiopair.corpus.events import EventFolderSource
from audiopair.evaluate.classify import read_label_csv


def wav(path: Path, x: np.ndarray | None = None, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.full(800, 0.1, np.float32) if x is None else x, sr)
    return path


# ------------------------------------------------------------------------ 1. a record broken over physical lines
def test_audiocaps_caption_broken_over_two_lines_is_rejoined_with_a_warning(tmp_path, caplog):
    for yt in ("aaaaaaaaaa1", "aaaaaaaaaa2"):
        wav(tmp_path / f"{yt}.wav")
    (tmp_path / "train.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "101,aaaaaaaaaa1,0,heavy wind followed by a loud\n"
        "bang\n"
        "102,aaaaaaaaaa2,0,a dog barks\n"
    )
    with caplog.at_level(logging.WARNING):
        src = AudioCapsSource(SourceConfig(kind="audiocaps", csv=str(tmp_path / "train.csv"), audio_dir=str(tmp_path)))
    assert [c.captions for c in src.clips()] == [("heavy wind followed by a loud bang",), ("a dog barks",)]
    assert src.bad_rows == []
    assert "train.csv lines 2-3" in caplog.text and "rejoined" in caplog.text


def test_a_continuation_holding_a_comma_rejects_both_lines_never_keeps_the_cut_caption(tmp_path):
    for yt in ("y1", "y2"):
        wav(tmp_path / f"{yt}.wav")
    (tmp_path / "c.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,y1,0,heavy wind followed by a loud\n"
        "bang, then silence\n"
        "2,y2,0,a dog barks\n"
    )
    src = AudioCapsSource(SourceConfig(kind="audiocaps", csv=str(tmp_path / "c.csv"), audio_dir=str(tmp_path)))
    assert [c.captions for c in src.clips()] == [("a dog barks",)]
    assert [(line, reason.split(" ")[0]) for _, line, reason in src.bad_rows] == [(2, "followed"), (3, "has")]
    assert "line 3 with 2 of 4 fields" in src.bad_rows[0][2] and "continue line 2" in src.bad_rows[1][2]


def test_every_csv_reader_rejoins_a_field_broken_in_the_middle(tmp_path, caplog):
    # Clotho: caption_1 (not the last column) broken; events and label lists: the last column.
    wav(tmp_path / "clotho" / "a.wav")
    (tmp_path / "clotho" / "captions.csv").write_text(
        "file_name,caption_1,caption_2\na.wav,water drips into\na bucket,rain falls\n")
    clotho = ClothoSource(SourceConfig(kind="clotho", csv=str(tmp_path / "clotho" / "captions.csv"),
                                       audio_dir=str(tmp_path / "clotho")))
    assert clotho.clips()[0].captions == ("water drips into a bucket", "rain falls")

    wav(tmp_path / "ev" / "bell" / "b1.wav")
    (tmp_path / "ev.csv").write_text("file,caption\nbell/b1.wav,a church\nbell ringing\n")
    ev = EventFolderSource(SourceConfig(kind="events", csv=str(tmp_path / "ev.csv"), audio_dir=str(tmp_path / "ev")))
    assert ev.clips()[0].captions == ("a church bell ringing",)

    (tmp_path / "labels.csv").write_text("path,label\nx.wav,dog\nbark\ny.wav,cat\n")
    with caplog.at_level(logging.WARNING):
        rows = read_label_csv(tmp_path / "labels.csv")
    assert [label for _, label in rows] == ["dog bark", "cat"] and rows.lines == [2, 4]
    assert "labels.csv lines 2-3" in caplog.text

    adiff = tmp_path / "adiff.csv"
    adiff.write_text("filepath1,filepath2,caption1,caption2,input,answer\n"
                     "a.wav,b.wav,rain,wind,explain the difference in few words,Audio 1 has\nrain.\n")
    src = AdiffCsvSource(SourceConfig(kind="adiff_csv", csv=str(adiff), audio_dir=str(tmp_path)))
    assert src.rows_read == {str(adiff): {1: 1}} and src.bad_rows == []


# ------------------------------------------------------------------------ 2. file names whose spaces matter
def test_clotho_name_with_a_leading_space_is_found_as_written(tmp_path):
    audio = tmp_path / "audio"
    exact = wav(audio / " typical street corner at noon.wav")
    wav(audio / "padded.wav")
    (tmp_path / "captions.csv").write_text(
        "file_name,caption_1\n"
        " typical street corner at noon.wav,cars pass a busy corner\n"
        "padded.wav ,a door creaks\n"  # an editor's stray space: the exact name is tried first, then stripped
    )
    src = ClothoSource(SourceConfig(kind="clotho", csv=str(tmp_path / "captions.csv"), audio_dir=str(audio)))
    assert [c.path for c in src.clips()] == [str(exact), str(audio / "padded.wav")]
    assert src.missing() == [] and src.clips()[0].meta["file_name"] == " typical street corner at noon.wav"


def test_adiff_events_and_label_paths_keep_leading_spaces(tmp_path):
    a, b = wav(tmp_path / " a.wav"), wav(tmp_path / "b.wav")
    wav(tmp_path / "a.wav", np.zeros(800, np.float32))  # the stripped name is a different file
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("filepath1,filepath2,caption1,caption2,input,answer\n"
                        " a.wav,b.wav,rain,wind,explain the difference in few words,Rain vs wind.\n")
    src = AdiffCsvSource(SourceConfig(kind="adiff_csv", csv=str(csv_path), audio_dir=str(tmp_path)))
    assert sorted(c.path for c in src.clips()) == sorted([str(a), str(b)])

    ev = wav(tmp_path / "ev" / "bell" / " b1.wav")
    (tmp_path / "ev.csv").write_text("file,caption\nbell/ b1.wav,a bell\n")
    src = EventFolderSource(SourceConfig(kind="events", csv=str(tmp_path / "ev.csv"), audio_dir=str(tmp_path / "ev")))
    assert [(c.path, c.captions) for c in src.clips()] == [(str(ev), ("a bell",))] and src.missing() == []

    (tmp_path / "labels.csv").write_text("path,label\n a.wav,rain\n")
    assert read_label_csv(tmp_path / "labels.csv") == [(str(a), "rain")]
