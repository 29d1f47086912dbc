"""Prompt banks, acoustic facts, statistics (checked by hand) and manifest validation."""

import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from audiopair.data.manifest import ManifestError, Record, read_manifest, write_manifest
from audiopair.data.stats import dataset_stats, entropy, text_stats
from audiopair.tasks import facts, prompts


@pytest.mark.parametrize("task,kw", [("adiff", {"tier": 1}), ("adiff", {"tier": 2}), ("adiff", {"tier": 3}),
                                     ("position", {"position": "first"}), ("position", {"position": "second"}),
                                     ("position", {"position": "both"})])
def test_prompt_banks_hold_50_distinct_paraphrases(task, kw):
    bank = prompts.bank_for(task, **kw)
    assert len(bank) >= 50 and len(set(bank)) == len(bank)
    assert all(p[0].isupper() and p[-1] in ".?" for p in bank)
    assert prompts.canonical(task, **kw) in bank or task == "position"
    got = {prompts.sample(task, random.Random(i), **kw) for i in range(200)}
    assert len(got) > 30  # sampled, not fixed


def test_canonical_prompts_match_adiff_csv_inputs():
    assert prompts.canonical("adiff", tier=1).lower().rstrip(".") == "explain the difference in few words"
    assert prompts.canonical("adiff", tier=2).lower().rstrip(".") == "explain the difference in a sentence"
    assert prompts.canonical("adiff", tier=3).lower().rstrip(".") == "explain the difference in detail"


def test_facts_of_known_signals():
    sr = 16000
    t = np.arange(2 * sr) / sr
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    f = facts.measure(sine, sr)
    assert abs(f["loudness_dbfs"] + 3.01) < 0.1 and abs(f["centroid_hz"] - 1000) < 50
    assert f["onset_rate"] <= 1.0 and f["duration_s"] == 2.0
    clicks = np.zeros(2 * sr, np.float32)
    for k in range(10):  # 5 clicks per second
        clicks[k * sr // 5 : k * sr // 5 + 40] = np.hanning(40)
    clicks += 1e-4 * np.random.default_rng(0).standard_normal(len(clicks)).astype(np.float32)
    assert 4.0 <= facts.measure(clicks, sr)["onset_rate"] <= 5.5


def test_text_stats_hand_computed():
    s = text_stats(["a b b", "c a"])
    # words: a b b c a -> lengths 3, 2; counts a2 b2 c1
    assert s["examples"] == 2 and s["words_median"] == 2.5 and s["words_max"] == 3 and s["vocab"] == 3
    h = -(2 * (0.4 * math.log2(0.4)) + 0.2 * math.log2(0.2))
    assert abs(s["word_entropy"] - round(h, 4)) < 1e-9
    # characters: "a b b" + "c a" -> a2 b2 c1 space3
    chars = Counter("a b b") + Counter("c a")
    assert abs(s["char_entropy"] - round(entropy(chars), 4)) < 1e-9
    assert entropy(Counter({"x": 4})) == 0.0


def test_dataset_stats_groups_by_task_split_tier_and_counts_hours_once():
    def rec(n, task, split, tier, target, clips):
        meta = {"clips": clips} if len(clips) == 2 else {"clip": clips[0]}
        return Record(id=f"r{n}", task=task, audio=[f"../audio/{c}.flac" for c in clips], prompt="?", target=target,
                      references=[target], tier=tier, split=split, meta=meta)

    recs = [
        rec(1, "adiff", "train", 1, "Louder first.", ["x", "y"]),
        rec(2, "adiff", "train", 1, "Quieter second one.", ["x", "z"]),
        rec(3, "adiff", "train", 3, "long text here now", ["x", "y"]),
        rec(4, "ac", "test", None, "rain", ["x"]),
    ]
    st = dataset_stats(recs, {"x": 3600.0, "y": 1800.0, "z": 360.0})
    t1 = st["tasks"]["adiff"]["train"]["tier1"]
    assert t1["examples"] == 2 and t1["words_median"] == 2.5 and t1["words_max"] == 3 and t1["vocab"] == 5
    assert t1["hours"] == 1.6  # x, y, z once each: (3600 + 1800 + 360) / 3600
    assert st["tasks"]["adiff"]["train"]["tier3"]["words_max"] == 4
    assert st["tasks"]["ac"]["test"]["all"]["hours"] == 1.0
    assert set(st["entropy"]["adiff"]) == {"tier1", "tier3"}


def _rec(**kw):
    base = {"id": "r1", "task": "acc", "audio": ["a.flac", "b.flac"], "prompt": "p", "target": "t",
            "references": ["t"], "tier": None, "split": "train", "meta": {}}
    base.update(kw)
    return base


def test_manifest_round_trip_and_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [_rec(), _rec(id="r2", task="adiff", tier=2)])
    assert [r.id for r in read_manifest(path)] == ["r1", "r2"]
    with pytest.raises(Exception):
        write_manifest(tmp_path / "bad.jsonl", [_rec(references=[])])
    assert not (tmp_path / "bad.jsonl").exists()  # validated before anything is written
    lines = [json.dumps(_rec()), json.dumps(_rec(id="r3", task="ac"))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: .*audio"):
        list(read_manifest(path))
    path.write_text(json.dumps(_rec(task="adiff")) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: .*tier"):
        list(read_manifest(path))
    path.write_text(json.dumps(_rec(meta={"clips": ["a"]})) + "\n")  # the feature ids must match the audio
    with pytest.raises(ManifestError, match=r"m.jsonl:1: .*meta names 1 clip ids .* for 2 audio"):
        list(read_manifest(path))
    assert Record.model_validate(_rec(meta={"clips": ["a", "b"]})).clips == ["a", "b"]
    assert Record.model_validate(_rec(task="ac", audio=["a.flac"], meta={"clip": "a"})).clips == ["a"]
    assert Record.model_validate(_rec()).clips == []  # a hand-written manifest without ids: files only
    path.write_text("{not json\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: not valid JSON"):
        list(read_manifest(path))
    assert Record.model_validate(_rec(audio={"clips": [{"op": "source", "clip": "x"}, {"op": "source", "clip": "y"}]}))
