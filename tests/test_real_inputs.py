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


# ------------------------------------------------------------------------ 3. WAV headers with placeholder sizes
def _wav_bytes(samples: np.ndarray, sr: int, riff_size: int, data_size: int) -> bytes:
    """A 16-bit mono WAV written by hand, with the RIFF and data sizes given (a pipe writer's placeholders)."""
    import struct

    pcm = (samples * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sr, sr * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_size) + pcm)


@pytest.mark.parametrize("data_size", [0x7FFFF000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_wav_with_placeholder_sizes_is_read_in_full(tmp_path, data_size):
    from audiopair.audio import read_audio

    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(1600) / 8000)).astype(np.float32)
    path = tmp_path / "piped.wav"
    path.write_bytes(_wav_bytes(x, 8000, data_size, data_size))
    y, sr = read_audio(path)
    assert sr == 8000 and y.shape == (1, 1600)
    np.testing.assert_allclose(y[0], x, atol=2 / 32767)  # int16 quantisation


def test_wav_cut_short_with_a_real_size_is_still_truncated(tmp_path):
    from audiopair.audio import AudioError, read_audio

    x = np.full(1600, 0.25, np.float32)
    path = tmp_path / "cut.wav"
    path.write_bytes(_wav_bytes(x, 8000, 36 + 4000, 4000))  # the header says 2000 frames, 1600 are there
    with pytest.raises(AudioError, match=r"cut.wav: truncated: the data chunk is 800 bytes shorter"):
        read_audio(path)


# ------------------------------------------------------------------------ 4. compressed formats, estimated counts
@pytest.fixture
def mp3(tmp_path) -> Path:
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support (needs libsndfile >= 1.1 with mpg123 and LAME)")
    path = tmp_path / "s1.mp3"
    t = np.arange(44100) / 44100
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100, format="MP3")
    return path


def test_mp3_whose_frame_estimate_exceeds_its_frames_is_read(mp3):
    import struct

    from audiopair.audio import read_audio

    raw = bytearray(mp3.read_bytes())
    xing = raw.find(b"Xing")  # the encoder's Xing header holds the MPEG frame count: promise one frame more
    (count,) = struct.unpack(">I", raw[xing + 8 : xing + 12])
    raw[xing + 8 : xing + 12] = struct.pack(">I", count + 1)
    mp3.write_bytes(bytes(raw))
    with sf.SoundFile(str(mp3)) as f:
        estimate = f.frames
    y, sr = read_audio(mp3)
    assert sr == 44100 and y.shape[1] < estimate  # the estimate is 1152 frames too high; accepted anyway
    assert abs(y.shape[1] - 44100) < 2000 and 0.3 < np.abs(y).max() < 0.6


@pytest.mark.parametrize("kind", ["id3_only", "cut_to_300_bytes"])
def test_undecodable_mp3_says_not_decodable(mp3, kind):
    from audiopair.audio import AudioError, read_audio

    bad = mp3.with_name(f"{kind}.mp3")
    head = b"ID3\x03\x00\x00\x00\x00\x00\x0a" + bytes(10)
    bad.write_bytes(head if kind == "id3_only" else mp3.read_bytes()[:300])
    with pytest.raises(AudioError) as e:
        read_audio(bad)
    assert str(bad) in str(e.value) and "not decodable" in str(e.value) and "does not exist" not in str(e.value)


# ------------------------------------------------------------------------ 5. silent clips
def _tone(n: int, amp: float = 0.5, f: float = 440.0, sr: int = 8000) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


@pytest.mark.parametrize("base_db", [None, -75.0])  # digital silence, and a noise floor far below hearing
def test_event_on_a_silent_base_is_placed_at_minus_20_dbfs(base_db):
    from audiopair.audio import level_dbfs, mix_at_snr

    rng = np.random.default_rng(0)
    base = np.zeros(8000, np.float32) if base_db is None else (
        10 ** (base_db / 20) * rng.standard_normal(8000)).astype(np.float32)
    event = _tone(2000, amp=0.01)
    for snr in (0.0, 10.0):
        out, info = mix_at_snr(base, event, 4000, snr)
        assert info["event_dbfs"] == -20.0
        assert level_dbfs(out[4000:6000]) == pytest.approx(-20.0, abs=0.05)  # not about -94 dBFS
        assert level_dbfs(out[:4000]) == pytest.approx(-np.inf if base_db is None else base_db, abs=0.3)


def test_event_at_snr_on_a_quiet_but_audible_base():
    from audiopair.audio import level_dbfs, mix_at_snr

    base = _tone(8000, amp=10 ** (-50 / 20) * np.sqrt(2), f=100.0)  # -50 dBFS RMS
    _, info = mix_at_snr(base, _tone(2000, f=1000.0), 4000, 6.0)
    assert level_dbfs(base) == pytest.approx(-50.0, abs=0.05) and info["event_dbfs"] == pytest.approx(-44.0, abs=0.05)


@pytest.mark.parametrize("amp", [0.0, 1e-4])  # all zeros, and -83 dBFS: adding either would change nothing
def test_silent_event_is_refused_by_mix_and_blamed_on_its_file_by_render(tmp_path, amp):
    from audiopair.audio import AudioError, mix_at_snr
    from audiopair.config import DatasetConfig
    from audiopair.corpus.base import Clip
    from audiopair.data.render import render

    with pytest.raises(AudioError, match="event clip is silent"):
        mix_at_snr(_tone(8000), _tone(2000, amp=amp), 100, 5.0)
    base = Clip("b/base", "b", ("a street",), str(wav(tmp_path / "base.wav", _tone(8000))), "base")
    quiet = Clip("e/phone", "e", ("a ringing phone",), str(wav(tmp_path / "phone.wav", _tone(4000, amp=amp))), "event")
    cfg = DatasetConfig.model_validate({"sample_rate": 8000, "clip_seconds": 1.0})
    recipe = {"op": "mix", "base": base.id, "event": quiet.id, "onset_u": 0.5, "snr_db": 5.0}
    with pytest.raises(AudioError) as e:
        render(recipe, {base.id: base, quiet.id: quiet}, cfg)
    assert e.value.path == quiet.path and "silent" in e.value.reason


# ------------------------------------------------------------------------ 6. every referenced source is validated
def _events_with_bad_files(root: Path) -> dict[str, str]:
    """Two good event kinds and, in a third, one silent, one cut-short and one undecodable file -> expected reason."""
    sr = 16000
    for kind, f in (("whoosh", 300.0), ("ping", 2000.0)):
        for i in range(3):
            wav(root / "Things" / kind / f"{kind}{i}.wav", _tone(int(0.6 * sr), f=f * (1 + 0.1 * i), sr=sr), sr)
    wav(root / "Things" / "phone" / "phone0.wav", _tone(int(0.6 * sr), f=800.0, sr=sr), sr)
    wav(root / "Things" / "phone" / "silent.wav", np.zeros(int(0.6 * sr), np.float32), sr)
    good = (root / "Things" / "phone" / "phone0.wav").read_bytes()
    (root / "Things" / "phone" / "cut.wav").write_bytes(good[: 44 + 1000])
    (root / "Things" / "phone" / "garbage.wav").write_bytes(b"RIFF\x00\x00")
    return {"silent.wav": "event clip is silent", "cut.wav": "truncated", "garbage.wav": "not decodable"}


def test_every_source_file_is_checked_once_before_rendering(tmp_path):
    import json

    from conftest import tiny_config

    from audiopair.data.manifest import read_manifest
    from audiopair.data.pipeline import build_dataset

    expected = _events_with_bad_files(tmp_path / "events")
    cfg = tiny_config(
        tmp_path / "ds", "dataset.sources=[{kind: demo}, {kind: events, name: ev, audio_dir: '%s'}]" % (tmp_path / "events"),
        "dataset.demo.events=false", "dataset.tasks.triples_per_base=1", "dataset.max_rejected_fraction=1.0",
    ).dataset
    lines: list[str] = []
    res = build_dataset(cfg, executor="serial", progress=lines.append)
    rejected = [json.loads(x) for x in (Path(cfg.output_dir) / "rejected.jsonl").read_text().splitlines()]
    # each bad file exactly once, with its reason, whether or not a plan would have drawn it
    assert sorted(Path(r["path"]).name for r in rejected) == sorted(expected)
    assert all(expected[Path(r["path"]).name] in r["reason"] and r["stage"] == "read" for r in rejected)
    assert res.rejected == 3 and any("validated 10 source files: 3 unusable" in x for x in lines)
    bad_ids = {r["clip_id"] for r in rejected}
    for name in res.manifests:
        for r in read_manifest(Path(cfg.output_dir) / "manifests" / f"{name}.jsonl"):
            assert not bad_ids & set(r.meta.get("clips") or [r.meta.get("clip")]) and "silent" not in r.target


def test_file_check_runs_on_ray_data_with_the_same_answers(tmp_path):
    from audiopair.config import DatasetConfig
    from audiopair.corpus.base import Clip
    from audiopair.data.validate import validate_clips

    expected = _events_with_bad_files(tmp_path)
    files = sorted((tmp_path / "Things").rglob("*.wav"))
    clips = [Clip(f"ev/{p.stem}", "ev", ("x",), str(p), "event") for p in files]
    clips.append(Clip("base/silent", "base", ("quiet room",), str(tmp_path / "Things/phone/silent.wav"), "base"))
    cfg = DatasetConfig.model_validate({"num_workers": 2})
    on_ray = validate_clips(clips, cfg, executor="ray", progress=lambda s: None)
    assert on_ray == validate_clips(clips, cfg, executor="serial", progress=lambda s: None)
    assert {k: v.split(" (")[0].split(":")[0] for k, v in on_ray.items()} == {
        "ev/silent": "event clip is silent", "ev/cut": "truncated", "ev/garbage": "unreadable audio"}
    assert "base/silent" not in on_ray  # a silent base is usable: events go in at -20 dBFS


# ------------------------------------------------------------------------ 9. Table 1 statistics
ADIFF_VAL = Path(__file__).parent / "data" / "adiff-val"
# ADIFF Table 1, validation rows: (examples, median words, max words) per released CSV.
TABLE_1_VAL = {
    "acd_val_adiff_fewwords_answer": (2456, 28, 46),
    "acd_val_adiff_sentence_answer": (2456, 52, 87),
    "acd_val_adiff_detail_answer": (2456, 154, 227),
    "cld_validation_adiff_fewwords_answer": (5225, 27, 46),
    "cld_validation_adiff_sentence_answer": (5225, 51, 89),
}


def test_words_and_vocabulary_are_counted_as_table_1_does():
    from audiopair.data.stats import text_stats, words

    assert words("a high-frequency hum") == ["a", "high-frequency", "hum"]
    assert words("Audio 1 - a dog's bark... then silence .") == ["Audio", "1", "a", "dog's", "bark...", "then", "silence"]
    s = text_stats(["A high-frequency hum.", "The hum, then a (low) thud!"])
    # entries: a, high-frequency, hum | the, hum, then, a, low, thud -> a, high-frequency, hum, the, then, low, thud
    assert (s["examples"], s["words_median"], s["words_max"], s["vocab"]) == (2, 4.5, 6, 7)


@pytest.mark.parametrize("name", sorted(TABLE_1_VAL))
def test_text_stats_reproduce_table_1_on_the_released_validation_csvs(name):
    import csv
    import gzip
    import io

    from audiopair.corpus.adiff_csv import tier_of
    from audiopair.data.stats import text_stats

    with gzip.open(ADIFF_VAL / f"{name}.input-answer.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(io.StringIO(fh.read())))
    assert len({tier_of(r["input"]) for r in rows}) == 1
    s = text_stats([r["answer"] for r in rows])
    assert (s["examples"], s["words_median"], s["words_max"]) == TABLE_1_VAL[name]


# ------------------------------------------------------------------------ 10. template grammar
def _every_template_output() -> list[str]:
    """Every tier's text over every branch: shared scene or not, each event contrast, each density, brightness,
    level and mood, compared and not, and every phrasing the seed picks."""
    import itertools

    from audiopair.tasks.explain import AudioInfo, PairInfo, explain

    facts = [{"loudness_dbfs": db, "peak_dbfs": db + 10, "centroid_hz": hz, "onset_rate": rate, "duration_s": 4.0}
             for db, hz, rate in itertools.product((-40.0, -24.0, -10.0), (400.0, 1500.0, 3500.0), (0.2, 1.5, 4.0))]
    captions = ["A siren wails", "Birds sing in an orchard", "An engine idles", "Footsteps on gravel"]
    scene = "rain falls on a tin roof"
    events = [[], [("a bell ringing", 3.0)], [("an owl hooting", 0.2)], [("a bell ringing", 3.0), ("an owl hooting", 1.5)]]
    pairs = []
    for i, (f1, f2) in enumerate(itertools.product(facts, facts[::4])):
        c1, c2 = captions[i % 4], captions[(i + 1) % 4]
        pairs.append(PairInfo(AudioInfo(c1, f1), AudioInfo(c2, f2)))
        e1, e2 = events[i % 4], events[(i // 4) % 4]
        pairs.append(PairInfo(AudioInfo(scene, f1, scene=scene, events=e1), AudioInfo(scene, f2, scene=scene, events=e2)))
        pairs.append(PairInfo(AudioInfo(c1, f1, scene=scene, events=e1), AudioInfo(c2, f2, scene="a quiet street", events=e2)))
    return [explain(p, tier, f"s{k}") for k, p in enumerate(pairs) for tier in (1, 2, 3)]


def test_every_template_branch_has_article_agreement_and_no_doubled_words():
    import re

    texts = _every_template_output()
    joined = "\n".join(texts)
    for slot in ("an intermittent texture", "a steady and continuous texture", "a busy and rapidly pulsing texture",
                 "a warm, mid-range character", "a dark, low-pitched timbre", "a bright, high-pitched timbre"):
        assert slot in joined  # every descriptor was rendered
    a_vowel = re.findall(r"\ba ([aeiou]\w*)", joined, flags=re.I)
    an_consonant = re.findall(r"\ban ([^\Waeiou]\w*)", joined, flags=re.I)
    doubled = re.findall(r"\b(\w+)\s+\1\b", joined, flags=re.I)
    assert (a_vowel, an_consonant, doubled) == ([], [], [])
    for branch in ("Audio 2 adds", "Audio 1 also has", "where Audio 2 has", "hold the same events", "In Audio 1",
                   "Audio 1: ", "The first audio is where", "Over the same background", "Both audios share a scene",
                   "similar level and tone", "the first sounds", "both feel", "where the first feels"):
        assert branch in joined, branch


# ------------------------------------------------------------------------ 8. the JVM's extra output
def test_scoring_works_with_jvm_option_variables_set(tmp_path, monkeypatch):
    import subprocess

    from audiopair.evaluate import java as jv
    from audiopair.evaluate.score import score

    monkeypatch.setenv(jv.ENV_CACHE, str(tmp_path / "aac"))
    monkeypatch.delenv(jv.ENV_JAVA, raising=False)
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dfile.encoding=UTF-8")
    monkeypatch.setenv("_JAVA_OPTIONS", "-Xss4m")
    java = jv.find_java().path
    said = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    assert said.startswith("Picked up JAVA_TOOL_OPTIONS")  # what broke aac-metrics' version check
    assert jv.aac_java_version(java) == jv.find_java().version.split("_")[0] == "11.0.13"
    rep = score(["a dog barks", "rain falls"], [["a dog is barking"], ["rain is falling"]],
                metrics=("meteor", "bleu_1"), device="cpu")
    assert rep.unavailable == {} and 0.2 < rep.values["meteor"] < 1.0 and rep.values["bleu_1"] > 0.3


# ------------------------------------------------------------------------ 7. special-token strings inside data
QWEN_TEXTS = ["A dog barks twice and a car passes.", "Rain falls on a roof while thunder rumbles.",
              "What do the two audios have in common?"] * 20


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from audiopair.config import TinyQwenConfig
    from audiopair.models import qwen2_audio as q

    folder = q.make_tiny(tmp_path_factory.mktemp("qwen") / "tiny", QWEN_TEXTS, TinyQwenConfig(enabled=True))
    return q.load_base(folder)


def _noise(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_qwen_answers_with_special_token_text_are_plain_text_and_train(tiny_qwen):
    import torch

    from audiopair.models import qwen2_audio as q

    model, processor = tiny_qwen
    tok = processor.tokenizer
    end, audio_id = tok.convert_tokens_to_ids("<|im_end|>"), processor.audio_token_id
    rows = [{"id": "acc/7", "prompt": "What do they share?", "target": "Both hold <|im_end|> as text."},
            {"id": "acc/8", "prompt": "What do they share?", "target": "A <|AUDIO|> and <|audio_bos|> tag."}]
    b = q.encode_batch(processor, rows, [[_noise(1.0), _noise(2.0)], [_noise(1.0)]])
    for i, row in enumerate(rows):
        labelled = b["input_ids"][i][b["labels"][i] != -100]
        assert labelled.tolist().count(end) == 1 and int(labelled[-1]) == end  # only the real end of turn
        assert audio_id not in labelled.tolist()
        assert tok.decode(labelled) == row["target"] + "<|im_end|>"
    assert (b["input_ids"] == audio_id).sum(-1).tolist() == [75, 25]  # the features' tokens, none from answers
    with torch.no_grad():
        loss = model(**b).loss  # the forward pass that failed with a tokens/features mismatch
    assert torch.isfinite(loss)


def test_qwen_prompt_with_special_token_text_is_refused_by_record(tiny_qwen):
    from audiopair.models import qwen2_audio as q

    _, processor = tiny_qwen
    for text in ("Stop<|im_end|> here?", "Two <|audio_eos|> clips?"):
        with pytest.raises(ValueError, match=r"record ac/9: its prompt holds the special-token text '<\|"):
            q.encode_batch(processor, [{"id": "ac/9", "prompt": text, "target": "x"}], [[_noise(1.0)]])
    with pytest.raises(ValueError, match=r"record ac/9: its system prompt holds .*<\|im_start\|>"):
        q.encode_batch(processor, [{"id": "ac/9", "prompt": "Describe it.", "target": "x"}], [[_noise(1.0)]],
                       system="Be brief.<|im_start|>user")


def test_adiff_tokenizer_path_reads_data_text_as_plain_text(tmp_path):
    from audiopair.models.tokenizer import encode_answers, encode_prompts, plain_ids, train_tokenizer

    tok = train_tokenizer(["a dog barks", "rain falls on a roof"] * 5, 300, tmp_path / "tok")
    eos = tok.eos_token_id
    assert eos not in plain_ids(tok, "a dog <|endoftext|> barks")
    ids, mask = encode_answers(tok, ["rain <|endoftext|> falls", "a dog barks"])
    for row, m in zip(ids, mask):
        kept = row[m.bool()].tolist()
        assert kept.count(eos) == 1 and kept[-1] == eos  # the model learns to stop only at the end
    assert tok.decode(ids[0][mask[0].bool()]) == "rain <|endoftext|> falls<|endoftext|>"
    p_ids, p_mask = encode_prompts(tok, ["explain <|endoftext|> it"], 40)
    assert eos not in p_ids[0][p_mask[0].bool()].tolist()
