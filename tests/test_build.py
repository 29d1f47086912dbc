"""The dataset build end to end: Ray Data shards, manifests, features, stats, resume / refuse, rejected audio."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiopair.audio import load_audio
from audiopair.data.features import FeatureStore
from audiopair.data.manifest import SPLITS, read_manifest, resolve_audio
from audiopair.data.pipeline import BuildError, build_dataset
from conftest import tiny_config

quiet = dict(progress=lambda m: None)


def test_tiny_build_writes_valid_manifests_audio_features_stats(tiny_dataset):
    cfg, result = tiny_dataset
    out = Path(cfg.dataset.output_dir)
    assert result.rejected == 0 and result.clips > 0
    # 14 bases (10/2/2) with one triple each -> 14 triples -> 84 edit pairs
    edits = sum(n for k, n in result.manifests.items() if k.startswith("adc_"))
    assert edits == 84
    assert {f"{t}_{s}" for t in ("ac", "adc", "acc", "adiff", "position") for s in SPLITS} <= set(result.manifests)
    store = FeatureStore(out)
    assert len(store) == result.clips
    for name in result.manifests:
        records = list(read_manifest(out / "manifests" / f"{name}.jsonl"))
        assert len(records) == result.manifests[name]
        assert len({r.id for r in records}) == len(records)  # ids unique
        for r in records[:5]:
            for path in resolve_audio(out / "manifests" / f"{name}.jsonl", r):
                x = load_audio(path, cfg.dataset.sample_rate)
                assert len(x) == int(cfg.dataset.clip_seconds * cfg.dataset.sample_rate)
            assert r.target in r.references and r.meta["eval_prompt"]
            clip = r.meta.get("clip") or r.meta["clips"][0]
            mel = store[clip]
            assert mel.shape[0] == cfg.dataset.features.n_mels and np.isfinite(mel).all()
    adiff = list(read_manifest(out / "manifests" / "adiff_train.jsonl"))
    assert {r.tier for r in adiff} == {1, 2, 3}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tasks"]["adiff"]["train"]["tier1"]["examples"] == sum(r.tier == 1 for r in adiff)
    med = [stats["tasks"]["adiff"]["train"][f"tier{t}"]["words_median"] for t in (1, 2, 3)]
    assert med[0] < med[1] < med[2]  # tiers grow in detail, as in ADIFF Table 1
    assert stats["clips"] == result.clips and stats["rejected"] == 0
    assert (out / "rejected.jsonl").read_text() == ""
    assert json.loads((out / "build.json").read_text())["status"] == "done"


def test_resume_finishes_only_missing_shards_and_gives_same_output(tmp_path):
    cfg = tiny_config(tmp_path / "ds").dataset
    first = build_dataset(cfg, executor="serial", **quiet)
    out = Path(cfg.output_dir)
    before = {p.name: p.read_text() for p in (out / "manifests").glob("*.jsonl")}
    (out / "shards" / "shard-00001.json").unlink()  # as if the job died while rendering shard 1
    flac = sorted((out / "audio").rglob("*.flac"))[0]
    again = build_dataset(cfg, executor="serial", **quiet)
    shards = len(list((out / "shards").glob("*.json")))
    assert again.resumed_shards == shards - 1
    assert {p.name: p.read_text() for p in (out / "manifests").glob("*.jsonl")} == before
    assert flac.exists() and first.clips == again.clips


def test_refuses_to_mix_builds(tmp_path):
    out = tmp_path / "ds"
    build_dataset(tiny_config(out).dataset, executor="serial", **quiet)
    with pytest.raises(BuildError, match="different config"):
        build_dataset(tiny_config(out, "dataset.seed=3").dataset, executor="serial", **quiet)
    with pytest.raises(BuildError, match="on_existing=refuse"):
        build_dataset(tiny_config(out, "dataset.on_existing=refuse").dataset, executor="serial", **quiet)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not an audiopair dataset"):
        build_dataset(tiny_config(other).dataset, executor="serial", **quiet)
    assert (other / "notes.txt").read_text() == "mine"  # nothing lost
    res = build_dataset(tiny_config(out, "dataset.seed=3", "dataset.on_existing=overwrite").dataset,
                        executor="serial", **quiet)
    assert res.resumed_shards == 0


def _event_folder(root: Path, bad: bool) -> Path:
    sr = 16000
    t = np.arange(int(0.6 * sr)) / sr
    for kind, f in (("whoosh", 300.0), ("ping", 2000.0)):
        d = root / "Things" / kind
        d.mkdir(parents=True)
        for i in range(3):
            sf.write(d / f"{kind}{i}.wav", (0.5 * np.sin(2 * np.pi * f * (1 + 0.1 * i) * t)).astype(np.float32), sr)
    if bad:
        (root / "Things" / "ping" / "ping_broken.wav").write_bytes(b"RIFF\x00\x00")
    return root


def _event_cfg(tmp_path, bad, *extra):
    events = _event_folder(tmp_path / "events", bad)
    return tiny_config(
        tmp_path / "ds",
        "dataset.sources=[{kind: demo}, {kind: events, name: ev, audio_dir: '%s'}]" % events,
        "dataset.demo.events=false",
        "dataset.tasks.triples_per_base=3",
        "dataset.splits.train=0.34", "dataset.splits.val=0.33", "dataset.splits.test=0.33",
        *extra,
    ).dataset


def test_bad_audio_is_rejected_not_fatal(tmp_path):
    cfg = _event_cfg(tmp_path, True, "dataset.max_rejected_fraction=1.0")
    res = build_dataset(cfg, executor="serial", **quiet)
    rejected = [json.loads(line) for line in (Path(cfg.output_dir) / "rejected.jsonl").read_text().splitlines()]
    assert res.rejected == len(rejected) > 0
    assert all(r["path"].endswith("ping_broken.wav") and r["reason"] for r in rejected)
    bad_ids = {r["clip_id"] for r in rejected}
    for name in res.manifests:
        for r in read_manifest(Path(cfg.output_dir) / "manifests" / f"{name}.jsonl"):
            assert not bad_ids & set(r.meta.get("clips") or [r.meta.get("clip")])


def test_too_many_rejections_fail_naming_the_worst_file(tmp_path):
    cfg = _event_cfg(tmp_path, True, "dataset.max_rejected_fraction=0.0")
    with pytest.raises(BuildError) as e:
        build_dataset(cfg, executor="serial", **quiet)
    assert "ping_broken.wav" in str(e.value) and "max_rejected_fraction" in str(e.value)
    assert (Path(cfg.output_dir) / "rejected.jsonl").exists()
