"""audio.py on a zoo of good, odd and bad files, and mixing at a requested SNR."""

import numpy as np
import pytest
import soundfile as sf

from audiopair.audio import (
    AudioError, crop_or_pad, load_audio, loudness_dbfs, mix_at_snr, peak_dbfs, read_audio, resample, rms, write_audio,
)


def _sine(sr, seconds=0.5, f=440.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


@pytest.mark.parametrize(
    "name,sr,channels,subtype,fmt",
    [
        ("pcm16.wav", 16000, 1, "PCM_16", "WAV"),
        ("stereo44k.wav", 44100, 2, "PCM_16", "WAV"),
        ("u8.wav", 22050, 1, "PCM_U8", "WAV"),
        ("pcm24.wav", 48000, 1, "PCM_24", "WAV"),
        ("float.wav", 32000, 1, "FLOAT", "WAV"),
        ("clip.flac", 44100, 2, "PCM_16", "FLAC"),
        ("clip.ogg", 44100, 1, "VORBIS", "OGG"),
    ],
)
def test_loads_any_format_rate_and_channels(tmp_path, name, sr, channels, subtype, fmt):
    x = _sine(sr)
    data = np.stack([x, 0.5 * x], axis=1) if channels == 2 else x
    path = tmp_path / name
    sf.write(path, data, sr, subtype=subtype, format=fmt)
    raw, got_sr = read_audio(path)
    assert got_sr == sr and raw.shape[0] == channels
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 8000) <= 1  # 0.5 s at 16 kHz whatever the input rate
    expected = 0.5 * (0.75 if channels == 2 else 1.0)  # stereo is averaged: (x + 0.5x) / 2
    assert abs(np.max(np.abs(y)) - expected) < (0.05 if fmt != "OGG" and subtype != "PCM_U8" else 0.1)


def test_crop_and_pad(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _sine(16000, 1.0), 16000)
    assert len(load_audio(path, 16000, seconds=0.25)) == 4000
    padded = load_audio(path, 16000, seconds=2.0)
    assert len(padded) == 32000 and np.all(padded[16000:] == 0)
    off = load_audio(path, 16000, seconds=0.5, offset_seconds=0.75)
    assert len(off) == 8000 and np.all(off[4000:] == 0) and np.any(off[:4000] != 0)
    assert np.array_equal(crop_or_pad(np.ones(3, np.float32), 5), [1, 1, 1, 0, 0])


def test_bad_audio_raises_audio_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    good = tmp_path / "good.wav"
    sf.write(good, _sine(16000), 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])  # cut inside the header
    cut_data = tmp_path / "cut_data.wav"
    cut_data.write_bytes(good.read_bytes()[: 44 + 1000])  # header promises 8000 frames, 500 are there
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"this is not audio at all" * 20)
    nan = tmp_path / "nan.wav"
    x = _sine(16000)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    for path, reason in [(empty, "empty"), (truncated, "unreadable"), (cut_data, "truncated"),
                         (garbage, "unreadable"), (nan, "NaN"), (tmp_path / "missing.wav", "does not exist")]:
        with pytest.raises(AudioError) as e:
            load_audio(path, 16000)
        assert str(path) in str(e.value) and reason in str(e.value), (path, str(e.value))
        assert e.value.path == str(path)


def test_resample_keeps_frequency():
    x = _sine(44100, 1.0, f=1000.0)
    y = resample(x, 44100, 16000)
    assert len(y) == 16000
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 16000 / len(y) - 1000.0) < 2.0


def test_write_is_atomic_and_flac_round_trips(tmp_path):
    x = _sine(16000, 0.3)
    path = tmp_path / "sub" / "x.flac"
    write_audio(path, x, 16000)
    assert [p.name for p in path.parent.iterdir()] == ["x.flac"]  # no temp files left behind
    y = load_audio(path, 16000)
    assert np.max(np.abs(y - x)) < 1e-5  # 24-bit FLAC
    with pytest.raises(AudioError):
        write_audio(tmp_path / "bad.flac", np.array([np.inf], np.float32), 16000)
    assert not (tmp_path / "bad.flac").exists()


def test_levels():
    assert abs(loudness_dbfs(_sine(16000, 1.0, amp=1.0)) + 3.01) < 0.05
    assert abs(peak_dbfs(_sine(16000, 1.0, amp=0.5)) + 6.02) < 0.05


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_mix_hits_requested_snr_without_clipping(tmp_path, snr):
    rng = np.random.default_rng(0)
    base = (0.3 * rng.standard_normal(32000)).astype(np.float32)
    event = _sine(16000, 0.5, f=1500, amp=0.9)
    onset = 10000
    mix, info = mix_at_snr(base, event, onset, snr, peak_dbfs_max=-1.0)
    assert len(mix) == len(base)
    assert np.max(np.abs(mix)) <= 10 ** (-1 / 20) + 1e-6  # peak-safe
    # Measure after a FLAC round trip, as a user of the dataset would.
    path = tmp_path / "m.flac"
    write_audio(path, mix, 16000)
    y = load_audio(path, 16000)
    s = info["scale"]
    span = slice(onset, onset + info["event_samples"])
    ev_part = y[span] - s * base[span]
    measured = 20 * np.log10(rms(ev_part) / rms(s * base[span]))
    assert abs(measured - snr) < 0.5
    assert np.allclose(y[:onset], s * base[:onset], atol=1e-5)  # nothing before the onset changed
