"""File-backed corpus readers: AudioCaps, Clotho, event folders, ADIFF CSVs (incl. the released validation CSVs)."""

from __future__ import annotations

import csv
import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiopair.config import SourceConfig
from audiopair.corpus._csv import ClipIds, sanitize
from audiopair.corpus.adiff_csv import AdiffCsvSource, tier_of
from audiopair.corpus.audiocaps import AudioCapsSource
from audiopair.corpus.base import Missing
from audiopair.corpus.clotho import ClothoSource
from audiopair.corpus.events import EventFolderSource, noun_phrase

ADIFF_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "adiff-val"


def wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(80, dtype=np.float32), 8000)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------- shared helpers
def test_sanitize_and_unique_ids():
    assert sanitize("Forest walk in Marata - mv88") == "Forest_walk_in_Marata_-_mv88"
    assert sanitize("a/b\\c:é") == "a_b_c__"
    assert sanitize("..") == "__" and sanitize(".hidden") == "_hidden" and sanitize("") == "_"
    ids = ClipIds("src")
    assert ids.get("a b", "a b") == "src/a_b"
    assert ids.get("a_b", "a_b") == "src/a_b-2"
    assert ids.get("A B", "A B") == "src/A_B-3"  # case-insensitive: ids become file names
    assert ids.get("a b", "a b") == "src/a_b"  # same key, same id


# --------------------------------------------------------------------------------------------- AudioCaps
AC_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


def audiocaps_fixture(tmp_path: Path) -> SourceConfig:
    audio = tmp_path / "audio"
    wav(audio / "yt_AAA.wav")
    wav(audio / "yt_AAA.flac")  # .wav wins over .flac
    wav(audio / "Yyt-BBB.wav")  # "Y" prefix
    wav(audio / "yt-BBB.flac")  # an earlier stem, but .wav of any stem comes first
    wav(audio / "ytCCC_30.wav")  # {youtube_id}_{start_time}, start written "30.0" in the CSV
    wav(audio / "104.ogg")  # {audiocap_id}
    rows = [
        ["101", "yt_AAA", "0", 'A man says "hello", then a dog barks'],
        ["102", "yt-BBB", "10", "Rain falls, thunder rolls"],
        ["103", "yt_AAA", "0", "Someone speaks\nover barking"],  # second caption of the first clip, multi-line
        ["104", "ytDDD", "5", "Birds chirp"],
        ["105", "ytCCC", "30.0", "Wind blows"],
        ["106", "ytEEE", "0", ""],  # bad row: empty caption
        ["107", "ytMISSING", "0", "A car passes"],
        ["108", "yt_AAA", "0", 'A man says "hello", then a dog barks'],  # duplicate caption, dropped
    ]
    write_csv(tmp_path / "test.csv", AC_HEADER, rows, bom=True)
    return SourceConfig(kind="audiocaps", csv=str(tmp_path / "test.csv"), audio_dir=str(audio))


def test_audiocaps_groups_captions_and_finds_files(tmp_path, caplog):
    cfg = audiocaps_fixture(tmp_path)
    with caplog.at_level(logging.WARNING):
        src = AudioCapsSource(cfg)
    audio = (tmp_path / "audio")
    by_id = {c.id: c for c in src.clips()}
    assert list(by_id) == ["audiocaps/yt_AAA_0", "audiocaps/yt-BBB_10", "audiocaps/ytDDD_5", "audiocaps/ytCCC_30"]
    a = by_id["audiocaps/yt_AAA_0"]
    assert a.captions == ('A man says "hello", then a dog barks', "Someone speaks\nover barking")
    assert a.path == str(audio / "yt_AAA.wav") and Path(a.path).is_absolute()
    assert (a.source, a.role, a.split) == ("audiocaps", "base", "test")  # test.csv pins the split
    assert a.meta == {"audiocap_ids": ["101", "103", "108"], "youtube_id": "yt_AAA", "start_time": 0.0}
    assert by_id["audiocaps/yt-BBB_10"].path == str(audio / "Yyt-BBB.wav")
    assert by_id["audiocaps/ytCCC_30"].path == str(audio / "ytCCC_30.wav")
    assert by_id["audiocaps/ytDDD_5"].path == str(audio / "104.ogg")
    assert src.missing() == [Missing("audiocaps/ytMISSING_0", str(audio / "ytMISSING.wav"), "file does not exist")]
    # Row 106 starts on line 8: header (1), five rows with one caption over two lines (2-7).
    assert src.bad_rows == [(str(tmp_path / "test.csv"), 8, "empty caption")]
    assert "test.csv line 8: empty caption" in caplog.text


def test_audiocaps_limit_role_and_split_override(tmp_path):
    cfg = audiocaps_fixture(tmp_path)
    cfg = cfg.model_copy(update={"limit": 2, "split": "train", "role": "event", "name": "ac"})
    src = AudioCapsSource(cfg)
    assert [c.id for c in src.clips()] == ["ac/yt_AAA_0", "ac/yt-BBB_10"]
    assert {(c.split, c.role, c.source) for c in src.clips()} == {("train", "event", "ac")}
    assert len(src.clips()[0].captions) == 2  # the limit counts clips, not rows


def test_audiocaps_missing_column_names_file_and_columns(tmp_path):
    write_csv(tmp_path / "bad.csv", ["audiocap_id", "ytid", "caption"], [["1", "x", "y"]])
    with pytest.raises(ValueError) as e:
        AudioCapsSource(SourceConfig(kind="audiocaps", csv=str(tmp_path / "bad.csv"), audio_dir=str(tmp_path)))
    msg = str(e.value)
    assert str(tmp_path / "bad.csv") in msg
    assert "youtube_id, start_time" in msg and "found columns audiocap_id, ytid, caption" in msg


def test_csv_path_errors(tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        AudioCapsSource(SourceConfig(kind="audiocaps", csv=str(tmp_path / "*.csv"), audio_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="does not exist"):
        ClothoSource(SourceConfig(kind="clotho", csv=str(tmp_path / "no.csv"), audio_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="needs `csv`"):
        ClothoSource(SourceConfig(kind="clotho", audio_dir=str(tmp_path)))


def test_all_rows_bad_is_an_error(tmp_path):
    write_csv(tmp_path / "train.csv", AC_HEADER, [["1", "yt", "x", "cap"], ["2", "", "0", "cap"]])
    with pytest.raises(ValueError, match=r"train\.csv: all 2 rows are bad \(first, line 2: start_time 'x'"):
        AudioCapsSource(SourceConfig(kind="audiocaps", csv=str(tmp_path / "train.csv"), audio_dir=str(tmp_path)))


# --------------------------------------------------------------------------------------------- Clotho
CL_HEADER = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
ODD = "noisy stuff groceries paper bag cookie metallic case cling clang.wav"


def clotho_fixture(tmp_path: Path) -> SourceConfig:
    audio = tmp_path / "clotho"
    wav(audio / ODD)
    wav(audio / "a b.wav")
    wav(audio / "a_b.wav")
    wav(audio / "evaluation" / "heartbeat-40bpm.wav")  # found in the split's subfolder
    write_csv(
        tmp_path / "csv" / "clotho_captions_development.csv",
        CL_HEADER,
        [
            [ODD, "Pans clatter, then a bag rustles.", 'Someone says "wait", metal clinks.', "", "Cling, clang.", ""],
            ["a b.wav", "One.", "", "", "", ""],
            ["", "No file.", "", "", "", ""],  # bad row, line 4
            ["a_b.wav", "Two.", "", "", "", ""],
            ["gone.wav", "Missing audio.", "", "", "", ""],
        ],
    )
    write_csv(
        tmp_path / "csv" / "clotho_captions_evaluation.csv",
        ["file_name", "caption_1", "caption_2"],  # caption_3..5 are optional
        [["heartbeat-40bpm.wav", "A heart beats.", "Steady thumps."]],
    )
    return SourceConfig(kind="clotho", csv=str(tmp_path / "csv" / "clotho_*.csv"), audio_dir=str(audio))


def test_clotho_glob_captions_odd_names_and_splits(tmp_path):
    src = ClothoSource(clotho_fixture(tmp_path))
    audio = (tmp_path / "clotho")
    clips = src.clips()
    assert [c.id for c in clips] == [
        "clotho/noisy_stuff_groceries_paper_bag_cookie_metallic_case_cling_clang",
        "clotho/a_b",
        "clotho/a_b-2",  # "a b" and "a_b" sanitise alike: the later one is disambiguated
        "clotho/heartbeat-40bpm",
    ]
    assert clips[0].captions == ("Pans clatter, then a bag rustles.", 'Someone says "wait", metal clinks.', "Cling, clang.")
    assert clips[0].path == str(audio / ODD)
    assert (clips[1].path, clips[2].path) == (str(audio / "a b.wav"), str(audio / "a_b.wav"))
    assert clips[3].path == str(audio / "evaluation" / "heartbeat-40bpm.wav")
    assert clips[3].captions == ("A heart beats.", "Steady thumps.")
    assert [c.split for c in clips] == ["train", "train", "train", "test"]  # development / evaluation
    assert {c.role for c in clips} == {"base"}
    assert src.missing() == [Missing("clotho/gone", str(audio / "gone.wav"), "file does not exist")]
    dev = str(tmp_path / "csv" / "clotho_captions_development.csv")
    assert src.bad_rows == [(dev, 4, "empty file_name")]


def test_clotho_limit_and_missing_caption_column(tmp_path):
    cfg = clotho_fixture(tmp_path).model_copy(update={"limit": 2, "split": "val"})
    src = ClothoSource(cfg)
    assert [c.id for c in src.clips()] == ["clotho/noisy_stuff_groceries_paper_bag_cookie_metallic_case_cling_clang",
                                          "clotho/a_b"]
    assert {c.split for c in src.clips()} == {"val"} and src.missing() == []
    write_csv(tmp_path / "x.csv", ["file_name", "caption"], [["a b.wav", "x"]])
    with pytest.raises(ValueError, match=r"x\.csv: missing required column\(s\) caption_1; found columns file_name"):
        ClothoSource(SourceConfig(kind="clotho", csv=str(tmp_path / "x.csv"), audio_dir=str(tmp_path)))


# --------------------------------------------------------------------------------------------- events
@pytest.mark.parametrize(
    "name, phrase",
    [
        ("dog_bark", "a dog bark"),
        ("DogBark", "a dog bark"),
        ("dog_barking", "a dog barking"),
        ("Explosion", "an explosion"),
        ("engine-idling", "an engine idling"),
        ("birds_chirping", "birds chirping"),
        ("ChurchBells", "church bells"),
        ("brushing_teeth", "brushing teeth"),
        ("sneezing", "sneezing"),
        ("rain", "rain"),
        ("glass_breaking", "glass breaking"),
        ("crying_baby", "a crying baby"),
        ("unicycle_bell", "a unicycle bell"),
        ("umbrella_opening", "an umbrella opening"),
        ("hour_chime", "an hour chime"),
        ("doorbell_ring", "a doorbell ring"),
        ("TVStatic", "tv static"),
        ("bus", "a bus"),
    ],
)
def test_event_noun_phrases(name, phrase):
    assert noun_phrase(name) == phrase


def test_events_nested_layout_captions_from_names(tmp_path):
    root = tmp_path / "events"
    wav(root / "Animals" / "dog_bark" / "d1.wav")
    wav(root / "Animals" / "dog_bark" / "d2.flac")
    wav(root / "Animals" / "BirdsChirping" / "b1.ogg")
    wav(root / "Vehicles" / "engine" / "e1.wav")
    (root / "Animals" / "dog_bark" / "notes.txt").write_text("not audio")
    src = EventFolderSource(SourceConfig(kind="events", audio_dir=str(root)))
    got = [(c.id, c.labels, c.captions) for c in src.clips()]
    assert got == [
        ("events/Animals_BirdsChirping_b1", ("Animals", "BirdsChirping"), ("birds chirping",)),
        ("events/Animals_dog_bark_d1", ("Animals", "dog_bark"), ("a dog bark",)),
        ("events/Animals_dog_bark_d2", ("Animals", "dog_bark"), ("a dog bark",)),
        ("events/Vehicles_engine_e1", ("Vehicles", "engine"), ("an engine",)),
    ]
    assert src.clips()[0].path == str(root / "Animals" / "BirdsChirping" / "b1.ogg")
    assert {c.role for c in src.clips()} == {"event"} and src.missing() == [] and src.bad_rows == []
    limited = EventFolderSource(SourceConfig(kind="events", audio_dir=str(root), limit=1))
    assert [c.id for c in limited.clips()] == ["events/Animals_BirdsChirping_b1"]


def test_events_flat_layout_with_caption_csv(tmp_path):
    root = tmp_path / "flat"
    wav(root / "siren" / "s1.wav")
    wav(root / "siren" / "s2.wav")
    wav(root / "footsteps" / "f1.wav")
    write_csv(
        tmp_path / "caps.csv",
        ["file", "caption"],
        [
            ["siren/s2.wav", "a wailing siren, rising and falling."],
            ["siren/s2.wav", 'an "ambulance" siren'],
            ["siren/gone.wav", "a siren"],
            ["siren/s1.wav", ""],  # bad row, line 5: s1 falls back to its name
            ["s3.wav", "no type folder"],  # bad row, line 6
        ],
    )
    src = EventFolderSource(SourceConfig(kind="events", audio_dir=str(root), csv=str(tmp_path / "caps.csv")))
    got = [(c.id, c.labels, c.captions) for c in src.clips()]
    assert got == [  # CSV order first, then the other files sorted
        ("events/siren_s2", ("siren",), ("a wailing siren, rising and falling", 'an "ambulance" siren')),
        ("events/footsteps_f1", ("footsteps",), ("footsteps",)),
        ("events/siren_s1", ("siren",), ("a siren",)),
    ]
    assert src.missing() == [Missing("events/siren_gone", str(root / "siren" / "gone.wav"),
                                     "file does not exist")]
    assert [(line, reason.split(" ")[0]) for _, line, reason in src.bad_rows] == [(5, "empty"), (6, "file")]


def test_events_layout_errors_name_the_folder(tmp_path):
    root = tmp_path / "ev"
    wav(root / "dog" / "d.wav")
    (root / "cat").mkdir()
    with pytest.raises(ValueError, match=f"event folder {root / 'cat'} holds no audio files"):
        EventFolderSource(SourceConfig(kind="events", audio_dir=str(root)))
    (root / "cat").rmdir()
    wav(root / "loose.wav")
    with pytest.raises(ValueError, match="directly in the event folder"):
        EventFolderSource(SourceConfig(kind="events", audio_dir=str(root)))
    with pytest.raises(ValueError, match="does not exist"):
        EventFolderSource(SourceConfig(kind="events", audio_dir=str(tmp_path / "nope")))


# --------------------------------------------------------------------------------------------- ADIFF CSVs
AD_HEADER = ["taskname", "filepath1", "filepath2", "caption1", "caption2", "input", "answer"]


def test_adiff_tiers_pairs_and_bad_rows(tmp_path):
    audio = tmp_path / "audio"
    wav(audio / "ac" / "x.wav")
    wav(audio / "ac" / "y.wav")
    wav(audio / "cl" / "z z.wav")
    rows = [
        ["audiocaps", "ac/x.wav", "ac/y.wav", "Dogs bark, loudly", 'A "quiet" hum', "explain the difference in few words",
         "Barking vs hum."],
        ["clotho", "cl/z z.wav", "ac/x.wav", "Wind, rain", "A dog barks", "Explain the difference in a sentence",
         "One is weather, one is a dog."],
        ["clotho", "ac/y.wav", "cl/gone.wav", "A hum", "Nothing", "explain the difference in detail", "Long."],
        ["audiocaps", "ac/x.wav", "ac/y.wav", "a", "b", "tell me a story", "?\n?"],  # bad: no tier (lines 5-6)
        ["audiocaps", "ac/x.wav", "cl/gone.wav", "a", "b", "explain the difference in detail", "Also long."],
    ]
    path = write_csv(tmp_path / "pairs.csv", AD_HEADER, rows)
    src = AdiffCsvSource(SourceConfig(kind="adiff_csv", csv=str(path), audio_dir=str(audio)))
    clips = {c.id: c for c in src.clips()}
    assert list(clips) == ["adiff_csv/ac_x", "adiff_csv/ac_y", "adiff_csv/cl_z_z"]
    assert clips["adiff_csv/ac_x"].captions == ("Dogs bark, loudly", "A dog barks", "a")
    assert clips["adiff_csv/ac_y"].captions == ('A "quiet" hum', "A hum")
    assert clips["adiff_csv/ac_x"].meta == {"filepath": "ac/x.wav", "tasks": ["audiocaps", "clotho"]}
    assert {c.role for c in clips.values()} == {"any"}
    got = [(p.clip1.id, p.clip2.id, p.tier, p.answer, p.row) for p in src.pairs()]
    assert got == [
        ("adiff_csv/ac_x", "adiff_csv/ac_y", 1, "Barking vs hum.", 2),
        ("adiff_csv/cl_z_z", "adiff_csv/ac_x", 2, "One is weather, one is a dog.", 3),
    ]
    assert src.pairs()[0].clip1 is clips["adiff_csv/ac_x"] and src.pairs()[0].csv == str(path)
    assert src.missing() == [Missing("adiff_csv/cl_gone", str(audio / "cl" / "gone.wav"),
                                     "file does not exist")]
    assert len(src.bad_rows) == 1 and src.bad_rows[0][:2] == (str(path), 5)
    assert "'tell me a story' names no tier" in src.bad_rows[0][2]
    assert src.rows_read == {str(path): {1: 1, 2: 1, 3: 2}}
    assert [tier_of(t) for t in ("in few words", "a SENTENCE", "in detail", "briefly")] == [1, 2, 3, None]


def test_adiff_limit_keeps_rows_within_the_first_clips(tmp_path):
    rows = [
        ["t", "a.wav", "b.wav", "A", "B", "few words", "1"],
        ["t", "c.wav", "d.wav", "C", "D", "few words", "2"],
        ["t", "b.wav", "a.wav", "B", "A", "in detail", "3"],
    ]
    path = write_csv(tmp_path / "p.csv", AD_HEADER, rows)
    for name in "abcd":
        wav(tmp_path / f"{name}.wav")
    src = AdiffCsvSource(SourceConfig(kind="adiff_csv", csv=str(path), limit=3))  # audio_dir: the CSV's folder
    assert [c.id for c in src.clips()] == ["adiff_csv/a", "adiff_csv/b"]
    assert [(p.answer, p.tier) for p in src.pairs()] == [("1", 1), ("3", 3)]


@functools.lru_cache(maxsize=1)
def _real_rows() -> dict[str, list[dict[str, str]]]:
    out = {}
    for p in sorted(ADIFF_VAL.glob("*.csv")):
        with open(p, newline="", encoding="utf-8-sig") as fh:
            out[str(p)] = list(csv.DictReader(fh))
    return out


@pytest.mark.skipif(not ADIFF_VAL.is_dir(), reason=f"{ADIFF_VAL} absent")
def test_adiff_released_csvs_without_audio(tmp_path):
    expected = _real_rows()
    assert len(expected) == 5
    src = AdiffCsvSource(SourceConfig(kind="adiff_csv", csv=str(ADIFF_VAL / "*.csv"), audio_dir=str(tmp_path)))
    tiers = {"detail": 3, "fewwords": 1, "sentence": 2}
    want = {f: {tiers[Path(f).stem.split("_")[-2]]: len(rows)} for f, rows in expected.items()}
    assert src.rows_read == want
    assert sum(n for d in want.values() for n in d.values()) == 2456 * 3 + 5225 * 2
    assert src.bad_rows == [] and src.clips() == [] and src.pairs() == []
    paths = {r[k] for rows in expected.values() for r in rows for k in ("filepath1", "filepath2")}
    missing = src.missing()
    assert len(missing) == len(paths) == len({m.path for m in missing}) == len({m.clip_id for m in missing})
    assert {Path(m.path).relative_to(tmp_path).as_posix() for m in missing} == paths
    assert all(m.reason == "file does not exist" for m in missing)


@pytest.mark.skipif(not ADIFF_VAL.is_dir(), reason=f"{ADIFF_VAL} absent")
def test_adiff_released_csvs_with_some_audio(tmp_path):
    expected = _real_rows()
    acd = expected[str(ADIFF_VAL / "acd_val_adiff_fewwords_answer.csv")][0]
    cld = expected[str(ADIFF_VAL / "cld_validation_adiff_sentence_answer.csv")][0]
    present = {acd["filepath1"], acd["filepath2"], cld["filepath1"], cld["filepath2"]}
    for rel in present:
        wav(tmp_path / rel)
    src = AdiffCsvSource(SourceConfig(kind="adiff_csv", csv=str(ADIFF_VAL / "*.csv"), audio_dir=str(tmp_path)))

    want_pairs, want_caps = [], {}
    for f, rows in expected.items():
        for line, r in enumerate(rows, start=2):  # no multi-line fields in these files
            if r["filepath1"] in present and r["filepath2"] in present:
                want_pairs.append((r["filepath1"], r["filepath2"], tier_of(r["input"]), r["input"], r["answer"], line, f))
            for k, c in (("filepath1", "caption1"), ("filepath2", "caption2")):
                caps = want_caps.setdefault(r[k], [])
                if r[c] not in caps:
                    caps.append(r[c])
    got = [(p.clip1.meta["filepath"], p.clip2.meta["filepath"], p.tier, p.prompt, p.answer, p.row, p.csv)
           for p in src.pairs()]
    assert got == want_pairs
    assert {g[2] for g in got} == {1, 2, 3}  # the first ACD pair is in all three tier files
    assert {Path(p.clip1.path).relative_to(tmp_path).as_posix() for p in src.pairs()} <= present
    clips = {c.meta["filepath"]: c for c in src.clips()}
    assert set(clips) == present
    for rel, clip in clips.items():
        assert clip.captions == tuple(want_caps[rel])
    odd = clips["ClothoV21/validation/" + ODD]  # the first CLD row; its name has spaces
    assert odd.id == "adiff_csv/ClothoV21_validation_" + ODD[:-4].replace(" ", "_")
    assert len(odd.captions) == 5  # Clotho's five captions, gathered over rows
    assert odd.path == str(tmp_path / "ClothoV21" / "validation" / ODD)
    assert len(src.missing()) == len({r[k] for rows in expected.values() for r in rows
                                      for k in ("filepath1", "filepath2")}) - len(present)


def test_source_registry_matches_the_config_and_names_unknown_kinds():
    import typing

    from audiopair.config import DatasetConfig, SourceKind
    from audiopair.corpus import SOURCES, make_source

    assert set(typing.get_args(SourceKind)) == set(SOURCES)
    for kind, (module, name) in SOURCES.items():  # every entry imports
        import importlib

        assert isinstance(getattr(importlib.import_module(module), name), type), kind
    bad = SourceConfig.model_construct(kind="freesound", name="fs", csv="x.csv", audio_dir=".")
    with pytest.raises(ValueError, match=r"source 'fs': unknown kind 'freesound'; known kinds: \['adiff_csv', "
                                         r"'audiocaps', 'clotho', 'demo', 'events'\]"):
        make_source(bad, DatasetConfig())
    with pytest.raises(ValueError, match="source 'clotho' of kind 'clotho' needs 'csv'"):
        make_source(SourceConfig(kind="clotho", audio_dir="."), DatasetConfig())
    assert type(make_source(SourceConfig(kind="demo"), DatasetConfig())).__name__ == "DemoSource"
