"""Downstream label accuracy (ACC Table 3) and the ADIFF §6 hallucination view."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from audiopair.config import EncoderConfig
from audiopair.evaluate.classify import (
    accuracy_report, classification_prompt, confusion_png, demo_label_csv, demo_labels, demo_synonyms, map_answers,
    map_to_label, normalise, read_label_csv,
)
from audiopair.evaluate.hallucination import event_probabilities, hallucination_figure, top_events
from audiopair.models.encoder import AudioEncoder

LABELS = ["dog_bark", "cat", "rising_whistle", "whistle", "car_horn", "Speech"]


def _png_ok(path, width=None):
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    if width is not None:
        assert img.shape[1] == width
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not a blank canvas
    assert (rgb < 0.5).mean() > 0.005  # some dark ink (text, lines, cells)
    return img


# ------------------------------------------------------------------------------------------ map_to_label
@pytest.mark.parametrize("text,label,how", [
    ("cat", "cat", "exact"),
    ("  Cat. ", "cat", "exact"),
    ("SPEECH!", "Speech", "exact"),
    ("dog bark", "dog_bark", "exact"),
    ("Dog barking.", "dog_bark", "exact"),
    ("dog_bark", "dog_bark", "exact"),
    ("car horns", "car_horn", "exact"),
    ("I think I hear a dog barking in the distance", "dog_bark", "contains"),
    ("The sound is a car-horn.", "car_horn", "contains"),
    ("there are cats", "cat", "contains"),
    ("dgo bark", "dog_bark", "fuzzy"),
    ("it is a whistel", "whistle", "fuzzy"),
    ("xqzv plorf", None, "none"),
    ("", None, "none"),
    ("!!!", None, "none"),
])
def test_map_to_label(text, label, how):
    assert map_to_label(text, LABELS) == (label, how)


def test_map_to_label_ambiguity_rules():
    # a match nested in a longer one is dropped: "rising whistle" is not "whistle"
    assert map_to_label("a rising whistle", LABELS) == ("rising_whistle", "contains")
    # otherwise the earliest match wins, whatever the label order
    assert map_to_label("a cat and then a dog bark", LABELS) == ("cat", "contains")
    assert map_to_label("a dog bark and then a cat", LABELS) == ("dog_bark", "contains")
    assert map_to_label("a whistle, later a rising whistle", LABELS) == ("whistle", "contains")
    # words are whole: "category" does not contain "cat"; "concatenate" neither
    assert map_to_label("category", ["cat", "dog"], threshold=0.95) == (None, "none")


def test_map_to_label_synonyms_and_threshold():
    syn = {"car_horn": ["honking", "hooter"], "cat": ["meow"]}
    assert map_to_label("Honking.", LABELS, syn) == ("car_horn", "exact")
    assert map_to_label("a cat meowing loudly", LABELS, syn) == ("cat", "contains")
    assert map_to_label("hootr", LABELS, syn) == ("car_horn", "fuzzy")
    assert map_to_label("dgo bark", LABELS, threshold=0.95) == (None, "none")
    with pytest.raises(ValueError, match="unknown labels"):
        map_to_label("x", LABELS, {"horse": ["neigh"]})
    with pytest.raises(ValueError):
        map_to_label("x", [])


def test_normalise_stems():
    assert normalise("Clapping, HISSING buzzes_beeps!") == ("clap", "hiss", "buzz", "beep")


def test_classification_prompt():
    assert classification_prompt(["dog_bark", "cat"]) == (
        "Which of these sounds is in the audio: dog bark, cat? Answer with one label.")
    # every demo kind maps back from its own prompt spelling and from its caption phrases
    labels, syn = demo_labels(), demo_synonyms()
    assert len(labels) == 20
    for label in labels:
        assert map_to_label(label.replace("_", " "), labels, syn) == (label, "exact")
    from audiopair.corpus.demo import EVENTS
    for kind in EVENTS:
        for phrase in kind.phrases:
            assert map_to_label(f"I hear {phrase}.", labels, syn)[0] == kind.name, phrase


# ------------------------------------------------------------------------------------------ accuracy report
def test_accuracy_report_hand_computed():
    labels = ["a", "b", "c"]
    rows = [("a", "a", "exact"), ("a", "b", "contains"), ("a", None, "none"),
            ("b", "b", "fuzzy"), ("b", "b", "exact"), ("c", "a", "contains")]
    r = accuracy_report(rows, labels)
    assert r["n"] == 6 and r["correct"] == 3 and r["accuracy"] == pytest.approx(0.5)
    assert r["chance"] == pytest.approx(3 / 6)  # always "a", the most frequent true label
    assert r["columns"] == ["a", "b", "c", "unmapped"]
    assert r["confusion"] == [[1, 1, 0, 1], [0, 2, 0, 0], [1, 0, 0, 0]]
    assert r["per_class"]["a"] == {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)}
    assert r["per_class"]["b"]["accuracy"] == 1.0 and r["per_class"]["c"]["accuracy"] == 0.0
    assert r["macro_accuracy"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert r["unmapped"] == 1
    assert r["methods"] == {"exact": 2, "contains": 2, "fuzzy": 1, "none": 1}
    # two-element pairs, an absent class, and errors
    r2 = accuracy_report([("a", "a"), ("a", None)], labels)
    assert r2["methods"] == {"mapped": 1, "none": 1} and r2["per_class"]["c"]["accuracy"] is None
    assert accuracy_report([], labels)["accuracy"] is None and accuracy_report([], labels)["chance"] is None
    with pytest.raises(ValueError, match="true label 'z'"):
        accuracy_report([("z", "a")], labels)
    with pytest.raises(ValueError, match="predicted label 'z'"):
        accuracy_report([("a", "z")], labels)


def test_map_answers_end_to_end():
    labels = ["dog_bark", "cat"]
    rows = map_answers(["dog_bark", "cat", "cat"], ["A dog barking.", "dgo bark", "no idea"], labels)
    assert rows == [("dog_bark", "dog_bark", "contains"), ("cat", "dog_bark", "fuzzy"), ("cat", None, "none")]
    r = accuracy_report(rows, labels)
    assert r["confusion"] == [[1, 0, 0], [1, 0, 1]] and r["accuracy"] == pytest.approx(1 / 3)


def test_confusion_png(tmp_path):
    labels = demo_labels()
    rng = np.random.default_rng(0)
    rows = [(l, labels[rng.integers(len(labels))] if rng.random() < 0.3 else (None if rng.random() < 0.2 else l))
            for l in labels for _ in range(4)]
    report = accuracy_report(rows, labels)
    out = confusion_png(report, tmp_path / "sub" / "confusion.png", title="Demo event kinds")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = _png_ok(out)
    assert 500 <= img.shape[0] <= 3000 and 500 <= img.shape[1] <= 3000
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["confusion.png"]  # no temp files left


# ------------------------------------------------------------------------------------------ label CSVs
def test_read_label_csv(tmp_path, caplog):
    csv = tmp_path / "data" / "labels.csv"
    csv.parent.mkdir()
    csv.write_text("Path,Label,split\nclips/a.wav,laughter,train\n\nclips/b.wav,,train\n/abs/c.wav,cough,test\n"
                   ",sigh,test\n")
    with caplog.at_level(logging.WARNING, logger="audiopair.evaluate.classify"):
        rows = read_label_csv(csv)
    assert rows == [(str(csv.parent / "clips" / "a.wav"), "laughter"), ("/abs/c.wav", "cough")]
    assert rows.skipped == [(4, "empty label"), (6, "empty path")]
    assert "labels.csv line 4: empty label" in caplog.text and "line 6: empty path" in caplog.text

    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.wav,dog\n")
    with pytest.raises(ValueError) as e:
        read_label_csv(bad)
    msg = str(e.value)
    assert "bad.csv" in msg and "'path'" in msg and "'label'" in msg and "file" in msg
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        read_label_csv(empty)


def test_demo_label_csv(tmp_path):
    from audiopair.audio import load_audio

    path = demo_label_csv(tmp_path / "cls", sample_rate=8000, seconds=1.0, per_kind=2, seed=0)
    rows = read_label_csv(path)
    assert len(rows) == 40 and not rows.skipped
    assert sorted({l for _, l in rows}) == sorted(demo_labels())
    x = load_audio(rows[0][0], 8000)
    assert x.shape == (8000,) and np.abs(x).max() > 0.1
    again = demo_label_csv(tmp_path / "cls2", sample_rate=8000, seconds=1.0, per_kind=2, seed=0)
    np.testing.assert_array_equal(load_audio(read_label_csv(again)[5][0], 8000), load_audio(rows[5][0], 8000))


# ------------------------------------------------------------------------------------------ hallucination
K = 6
NAMES = ["dog", "car_horn", "siren", "bird", "engine", "a very long AudioSet style class name, with commas"]


@pytest.fixture(scope="module")
def encoder():
    cfg = EncoderConfig(pretrained=None, n_mels=64, spec_size=128, frames=200, window_size=4, embed_dim=32,
                        depths=[1, 1], heads=[2, 4], num_classes=K)
    return AudioEncoder.from_config(cfg)


def _mel(frames, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(-60, 8, size=(64, frames)).astype(np.float32)
    m[10:20, frames // 4 : frames // 2] += 40  # a loud band: something for the plot to show
    return m


def test_event_probabilities(encoder):
    encoder.train()
    m = _mel(200, 0)
    p = event_probabilities(encoder, m)
    assert encoder.training  # mode restored
    assert p.ndim == 2 and p.shape[1] == K and p.dtype == np.float32
    assert ((p >= 0) & (p <= 1)).all()
    n = p.shape[0]
    encoder.eval()
    with torch.no_grad():
        direct = encoder(torch.from_numpy(m)[None]).frame_probs[0].numpy()
    np.testing.assert_allclose(p, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(p, event_probabilities(encoder, m))  # deterministic
    # shorter clip: only the frames covering it; longer: consecutive windows, last trimmed
    assert event_probabilities(encoder, m[:, :100]).shape == (round(n * 100 / 200), K)
    long = np.concatenate([m, m[:, :50]], axis=1)
    pl = event_probabilities(encoder, long)
    assert pl.shape == (n + round(n * 50 / 200), K)
    np.testing.assert_allclose(pl[:n], p, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        event_probabilities(encoder, m[None])


def test_top_events():
    p = np.zeros((5, 4), dtype=np.float32)
    p[2, 1], p[0, 3], p[4, 0], p[1, 2] = 0.9, 0.7, 0.2, 0.7
    assert top_events(p, ["a", "b", "c", "d"], 3) == [("b", pytest.approx(0.9)), ("c", pytest.approx(0.7)),
                                                       ("d", pytest.approx(0.7))]
    assert len(top_events(p, list("abcd"), 10)) == 4
    with pytest.raises(ValueError, match="class names"):
        top_events(p, ["a"], 1)


def test_hallucination_figure_from_encoder(encoder, tmp_path):
    m1, m2 = _mel(200, 1), _mel(150, 2)
    p1, p2 = event_probabilities(encoder, m1), event_probabilities(encoder, m2)
    out = tmp_path / "fig" / "halluc.png"
    fig = hallucination_figure("Audio 1 has a dog barking while audio 2 has a siren. " * 6, m1, m2, p1, p2, NAMES,
                               out, sample_rate=16000, hop_length=160, top_k=3, title="Pair 0")
    assert fig.path == out and out.exists() and str(fig) == str(out)
    assert fig.panels == ["Generated explanation",
                          "Audio 1: log-mel spectrogram", "Audio 1: top-3 event probabilities",
                          "Audio 2: log-mel spectrogram", "Audio 2: top-3 event probabilities"]
    for legend, probs in zip(fig.legends, (p1, p2)):
        order = np.argsort(-probs.max(axis=0), kind="stable")[:3]
        assert legend == [NAMES[i] for i in order]
    img = _png_ok(out, width=1200)
    assert 900 <= img.shape[0] <= 1600
    assert [p.name for p in out.parent.iterdir()] == ["halluc.png"]


def test_hallucination_figure_known_events(tmp_path):
    t = 32
    p1 = np.full((t, K), 0.05, dtype=np.float32)
    p1[5:12, 2] = 0.95  # siren
    p1[15:20, 0] = 0.6  # dog
    p1[25:30, 5] = 0.4  # long name
    p2 = np.full((t, K), 0.02, dtype=np.float32)
    p2[:, 4] = 0.8  # engine throughout
    p2[10, 3] = 0.3  # bird
    p2[20, 1] = 0.31  # car horn
    fig = hallucination_figure("", _mel(300, 3), _mel(300, 4), p1, p2, NAMES, tmp_path / "k.png",
                               sample_rate=32000, hop_length=320, top_k=3)
    assert fig.legends == [["siren", "dog", NAMES[5]], ["engine", "car_horn", "bird"]]
    assert [n for n, _ in fig.top[0]] == fig.legends[0] and fig.top[0][0][1] == pytest.approx(0.95)
    _png_ok(fig.path, width=1200)
    with pytest.raises(ValueError, match="probs2"):
        hallucination_figure("x", _mel(300, 3), _mel(300, 4), p1, p2[:, :3], NAMES, tmp_path / "bad.png", 32000, 320)
