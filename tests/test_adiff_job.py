"""The pieces of jobs/train_adiff.py: stage-1 recipes, length-grouped batches, generation, scoring into MLflow,
the comparison report, and resuming a finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiopair.config import DecodingConfig, load_config
from audiopair.data.features import FeatureStore
from audiopair.data.manifest import manifest_path, read_manifest
from audiopair.evaluate.generate import Generator, generate
from audiopair.models.adiff import build_model, save_checkpoint
from audiopair.models.tokenizer import train_tokenizer
from audiopair.data.manifest import load_examples
from audiopair.train.engine import micro_batches
from audiopair.train.pretrain import (clip_labels, extra_examples, label_names, make_encoder_recipe, make_lm_recipe,
                                      render_extra, train_corpus, training_clips)
from conftest import REPO, TINY, mlflow_server
from test_train import TINY_MODEL


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tiny_dataset, tmp_path, *extra):
    dcfg, _ = tiny_dataset
    return load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + TINY_MODEL + [
        f"dataset.output_dir={dcfg.dataset.output_dir}", f"train.storage_path={tmp_path / 'runs'}",
        f"work_dir={tmp_path / 'work'}", "model.lm_positions=320", *extra])


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    """A tiny random ADIFF checkpoint with its tokenizer, as the training job reports it."""
    dcfg, _ = tiny_dataset
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + TINY_MODEL + ["model.lm_positions=320"])
    tok = train_tokenizer(train_corpus(dcfg.dataset.output_dir), 400, tmp / "tok")
    torch.manual_seed(0)
    model = build_model(cfg.model, tok)
    model.event_labels = [f"event{i}" for i in range(cfg.model.encoder.num_classes)]
    save_checkpoint(model, tmp / "model", tokenizer=tok)
    return tmp / "model"


def test_micro_batches_group_lengths_and_keep_shards_equal():
    rng = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(5, 200, (203,), generator=rng)]
    ex = list(range(203))

    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    plain = micro_batches(ex, 0, 2, 8, epoch=0, seed=0, shuffle=True)
    grouped = [micro_batches(ex, r, 2, 8, epoch=0, seed=0, shuffle=True, length=lengths.__getitem__, window=4)
               for r in (0, 1)]
    assert len(grouped[0]) == len(grouped[1]) == len(plain) == 12  # equal step counts per rank
    seen = [i for rank in grouped for b in rank for i in b]
    assert len(seen) == len(set(seen)) == 192  # disjoint shards, nothing repeated
    assert spread(grouped[0]) < spread(plain) / 3  # padding mostly gone
    # batches are shuffled, not sorted globally: lengths go up and down from step to step
    firsts = [lengths[b[0]] for b in grouped[0]]
    assert firsts != sorted(firsts)
    assert micro_batches(ex, 0, 2, 8, 1, 0, True, length=lengths.__getitem__) != grouped[0]  # a new order per epoch


def test_encoder_recipe_reads_clip_labels(tiny_dataset, tmp_path):
    cfg = _cfg(tiny_dataset, tmp_path, "train.unimodal.encoder_event_clips=false",
               "train.unimodal.encoder_extra_mixes=0")
    ds = cfg.dataset.output_dir
    labels = clip_labels(ds, "train")
    names = label_names(ds)
    assert names == sorted(names) and len(names) > 5
    recipe = make_encoder_recipe({"cfg": cfg})
    model = recipe.build_model()
    assert model.encoder.event_head.num_classes == len(names)
    ex = recipe.train_examples()
    assert {e["clip"] for e in ex} == set(labels)
    batch = recipe.collate(ex[:4])
    assert batch["mels"].shape[:2] == (4, 64)
    for row, e in zip(batch["targets"], ex[:4]):  # multi-hot of exactly the clip's labels
        assert {names[i] for i in row.nonzero().flatten().tolist()} == set(labels[e["clip"]])
    out = model(**batch)
    assert out.loss.ndim == 0 and out.clip_logits.shape == (4, len(names))
    recipe.save_model(model, tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / "labels.json").read_text()) == names


def test_encoder_recipe_adds_event_clips_and_mixes_of_the_training_split(tiny_dataset, tmp_path):
    cfg = _cfg(tiny_dataset, tmp_path, "train.unimodal.encoder_event_clips=true",
               "train.unimodal.encoder_extra_mixes=12")
    ds = cfg.dataset.output_dir
    clips, bases, events = training_clips(cfg)
    train_mixes = [r for r in read_manifest(manifest_path(ds, "ac", "train")) if r.meta["recipe"]["op"] == "mix"]
    assert set(events) == {r.meta["recipe"]["event"] for r in train_mixes} and bases
    test_events = {r.meta["recipe"].get("event") for r in read_manifest(manifest_path(ds, "ac", "test"))}
    assert not test_events & set(events)  # nothing of the held-out splits is heard in stage 1

    extras = extra_examples(cfg, clips, bases, events)
    assert extras == extra_examples(cfg, clips, bases, events)  # seeded
    alone, mixes = [e for e in extras if "event" in e], [e for e in extras if "mix" in e]
    assert [e["event"] for e in alone] == events and len(mixes) == 12
    for e in alone:
        assert e["labels"] == list(clips[e["event"]].labels)
    for e in mixes:
        r = e["mix"]
        assert r["base"] in bases and r["event"] in events
        assert cfg.dataset.mix.snr_db[0] <= r["snr_db"] <= cfg.dataset.mix.snr_db[1]
        assert e["labels"] == list(clips[r["base"]].labels) + list(clips[r["event"]].labels)

    # a mix is rendered exactly as the builder rendered the same recipe into the dataset
    store = FeatureStore(ds)
    built = train_mixes[0]
    ours = render_extra({"mix": built.meta["recipe"]}, clips, cfg)
    assert ours.dtype == store[built.meta["clip"]].dtype
    assert np.array_equal(ours, store[built.meta["clip"]])
    # an event alone is the event's own samples at its offset, silence elsewhere
    mel = render_extra(alone[0], clips, cfg)
    assert mel.shape == ours.shape and mel.min() == -100.0  # digital silence somewhere in the clip

    recipe = make_encoder_recipe({"cfg": cfg})
    names = label_names(ds)
    ex = recipe.train_examples()
    assert len(ex) == len(clip_labels(ds, "train")) + len(events) + 12
    assert len(recipe.val_examples()) == len(clip_labels(ds, "val"))  # validation stays the held-out AC clips
    batch = recipe.collate(ex[-3:])
    assert batch["mels"].shape == (3, *ours.shape)
    assert [{names[i] for i in row.nonzero().flatten().tolist()} for row in batch["targets"]] == \
        [set(e["labels"]) for e in extras[-3:]]


def test_lm_recipe_places_windows_after_the_prefix(tiny_dataset, tmp_path):
    cfg = _cfg(tiny_dataset, tmp_path, "train.unimodal.lm_max_tokens=24", "train.unimodal.vocab_size=400")
    recipe = make_lm_recipe({"cfg": cfg, "tokenizer": None})
    texts = recipe.train_examples()
    assert len(texts) == len(set(texts)) > 50
    long = max(texts, key=len)
    batch = recipe.collate([long, "a dog barks"])
    offset = 2 * cfg.model.prefix_len + cfg.model.prompt_len + 1  # [p1, sep, p2, prompt]
    assert batch["input_ids"].shape[1] == 24  # the long text is cut to a window
    assert batch["position_ids"][1, 0] == offset  # a short text starts where an answer starts
    assert batch["position_ids"][0, 0] >= offset
    assert (batch["position_ids"][0].diff() == 1).all() and batch["position_ids"].max() < 320
    short = int(batch["attention_mask"][1].sum())
    assert (batch["labels"][1, short:] == -100).all() and (batch["labels"][1, :short] >= 0).all()
    model = recipe.build_model()
    assert float(model(**batch).loss) > 0
    recipe.save_model(model, tmp_path / "lm")
    assert (tmp_path / "lm" / "config.json").exists() and (tmp_path / "lm" / "tokenizer.json").exists()


def test_generation_is_batched_seeded_and_skips_bad_examples(tiny_dataset, checkpoint):
    dcfg, _ = tiny_dataset
    ds = dcfg.dataset.output_dir
    ex = load_examples(ds, "test", {"adiff": 1.0}, 0)[:6]
    greedy = DecodingConfig(max_new_tokens=12)
    a = generate(checkpoint, ds, ex, greedy, batch_size=4)
    b = generate(checkpoint, ds, ex, greedy, batch_size=3)
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]  # batching does not change greedy output
    assert all(r["prediction"] and not r["error"] for r in a)
    sample = DecodingConfig(strategy="sample", max_new_tokens=12, top_k=20, top_p=0.95, temperature=1.5, seed=3)
    s1 = [r["prediction"] for r in generate(checkpoint, ds, ex, sample, batch_size=6)]
    s2 = [r["prediction"] for r in generate(checkpoint, ds, ex, sample, batch_size=6)]
    s3 = [r["prediction"] for r in generate(checkpoint, ds, ex, sample.model_copy(update={"seed": 4}), batch_size=6)]
    assert s1 == s2 and s1 != s3
    beam = generate(checkpoint, ds, ex[:2], DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=8))
    assert len(beam) == 2 and all(r["prediction"] for r in beam)
    bad = [dict(ex[0], id="broken", clips=["no/such/clip", ex[0]["clips"][1]])] + ex[1:3]
    out = generate(checkpoint, ds, bad, greedy, batch_size=4)
    assert "no/such/clip" in out[0]["error"] and out[0]["prediction"] == ""
    assert [r["prediction"] for r in out[1:]] == [r["prediction"] for r in a[1:3]]
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        Generator(checkpoint / "tokenizer", ds)
    # the same through a Ray Data actor pool (one model per actor), order kept, bad rows still counted
    from audiopair.runtime import ensure_ray

    ensure_ray()
    pooled = generate(checkpoint, ds, bad, greedy, batch_size=2, num_actors=1)
    assert [r["prediction"] for r in pooled] == [r["prediction"] for r in out]
    assert "no/such/clip" in pooled[0]["error"]


def test_evaluation_logs_to_mlflow_and_reports(tiny_dataset, checkpoint, tmp_path):
    import mlflow

    from audiopair import tracking
    from audiopair.evaluate.run import comparison_table, evaluate_checkpoint, write_report

    dcfg, _ = tiny_dataset
    from audiopair.evaluate.run import split_examples

    some = split_examples(dcfg.dataset.output_dir, "test", ["adiff"], 3)  # what the evaluation will pick
    cfg = _cfg(tiny_dataset, tmp_path, "evaluate.metrics=[bleu_1, cider_d, spice, spider]", "evaluate.limit=3",
               "evaluate.decoding.max_new_tokens=10", f"evaluate.draw=[{json.dumps(some[0]['id'])}, not-there]")
    uri = tracking.setup(cfg.work_dir, "test-eval")
    assert uri == f"sqlite:///{(tmp_path / 'work' / 'mlflow.db').resolve()}"
    with tracking.run("job") as parent:
        tracking.log_config(cfg)
        with tracking.run("adiff/evaluate", parent=parent.info.run_id):
            ev = evaluate_checkpoint(checkpoint, cfg, "adiff", say=lambda m: None)
    assert sorted(ev.reports["adiff"]) == ["all", "tier1", "tier2", "tier3"]
    assert len(ev.rows) == 9 and not ev.skipped  # 3 per tier
    client = mlflow.tracking.MlflowClient(uri)
    child = client.search_runs([parent.info.experiment_id], "tags.mlflow.parentRunId = '%s'" % parent.info.run_id)
    assert len(child) == 1
    metrics = child[0].data.metrics
    assert metrics["demo/adiff/tier2/cider_d"] == pytest.approx(ev.value("adiff", "tier2", "cider_d"))
    assert "demo/adiff/all/bleu_1" in metrics
    assert not any("spice" in k or "spider" in k for k in metrics)  # unavailable: not a zero
    assert "unavailable.spice" in child[0].data.tags
    assert client.get_run(parent.info.run_id).data.params["train.run_name"] == cfg.train.run_name
    assert len(ev.figures) == 1 and ev.figures[0].stat().st_size > 10_000  # "not-there" is skipped with a warning
    logged = client.list_artifacts(child[0].info.run_id, "hallucination")
    assert [Path(a.path).name for a in logged] == [ev.figures[0].name]
    table = comparison_table([ev, ev], "adiff", ["cider_d", "spice"])
    lines = table.splitlines()
    assert lines[0] == "| group | model | cider_d | spice |" and len(lines) == 2 + 8
    assert lines[2].startswith("| tier1 | adiff |") and lines[2].endswith("| - |")
    md, html = write_report([ev], ["adiff"], ["cider_d", "spice"], tmp_path / "report", "t")
    assert "## Not computed" in md.read_text() and "<table" in html.read_text()
    from audiopair.data.io import read_jsonl

    preds = read_jsonl(tmp_path / "report" / "predictions" / "adiff.jsonl")  # what a listening test builds from
    assert [p["id"] for p in preds] == [r["id"] for r in ev.rows] and preds[0]["prediction"] == ev.rows[0]["prediction"]
    assert len(preds[0]["audio"]) == 2 and all(Path(a).is_file() for a in preds[0]["audio"])


def test_evaluate_job_logs_to_a_real_mlflow_server(tiny_dataset, checkpoint, tmp_path):
    """`mlflow server` on loopback; jobs/evaluate.py logs to it through MLFLOW_TRACKING_URI; the metrics come back
    over the REST API."""
    import os
    import subprocess
    import sys
    import urllib.request

    dcfg, _ = tiny_dataset
    with mlflow_server(tmp_path) as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url}
        bad = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"),
                              f"evaluate.checkpoints={{m: {tmp_path / 'nothing'}}}"], env=env, capture_output=True,
                             text=True, cwd=tmp_path)
        assert bad.returncode == 2 and "evaluate.checkpoints.m" in bad.stderr and "adiff.json" in bad.stderr
        proc = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "evaluate.py"), *TINY, f"dataset.output_dir={dcfg.dataset.output_dir}",
             f"work_dir={tmp_path / 'work'}", "experiment=server-check", f"evaluate.checkpoints={{tiny: {checkpoint}}}",
             "evaluate.limit=2", "evaluate.metrics=[bleu_1, cider_d]", "evaluate.decoding.max_new_tokens=8"],
            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "| tier1 | tiny |" in proc.stdout

        def api(path: str, body: dict) -> dict:
            req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=10).read())

        exp = json.loads(urllib.request.urlopen(
            f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-check", timeout=10).read())
        runs = api("runs/search", {"experiment_ids": [exp["experiment"]["experiment_id"]]})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert set(by_name) == {"evaluate", "tiny/evaluate"}
        metrics = {m["key"]: m["value"] for m in by_name["tiny/evaluate"]["data"]["metrics"]}
        assert {"demo/adiff/tier1/cider_d", "demo/adiff/all/bleu_1", "demo/skipped_examples"} <= set(metrics)
        scores = json.loads((tmp_path / "work" / "reports" / "server-check-evaluate" / "scores.json").read_text())
        assert metrics["demo/adiff/all/cider_d"] == pytest.approx(
            scores["tiny"]["reports"]["adiff"]["all"]["values"]["cider_d"])
        assert any((tmp_path / "server-artifacts").rglob("scores.json"))  # artifacts went through the server


def test_bad_records_and_missing_audio_are_skipped_and_counted(tiny_dataset, checkpoint, tmp_path):
    from audiopair.evaluate.run import evaluate_checkpoint

    dcfg, _ = tiny_dataset
    src = Path(dcfg.dataset.output_dir)
    ds = tmp_path / "ds"
    (ds / "manifests").mkdir(parents=True)
    (ds / "features").symlink_to(src / "features")
    lines = (src / "manifests" / "adiff_test.jsonl").read_text().splitlines()[:4]
    no_refs = json.loads(lines[0]) | {"id": "no-refs", "references": []}
    lost = json.loads(lines[1])
    lost["id"], lost["meta"]["clips"] = "lost-audio", ["gone/clip", lost["meta"]["clips"][1]]
    (ds / "manifests" / "adiff_test.jsonl").write_text("\n".join(lines + [json.dumps(no_refs), json.dumps(lost)]))
    cfg = _cfg(tiny_dataset, tmp_path, f"dataset.output_dir={ds}", "evaluate.metrics=[bleu_1]",
               "evaluate.decoding.max_new_tokens=6")
    ev = evaluate_checkpoint(checkpoint, cfg, "m", log_mlflow=False, say=lambda m: None)
    assert len(ev.skipped) == 2
    assert "adiff_test.jsonl:5" in ev.skipped[0] and "references" in ev.skipped[0]
    assert "lost-audio" in ev.skipped[1] and "gone/clip" in ev.skipped[1]
    assert len(ev.rows) == 4 and ev.reports["adiff"]["all"].n_candidates == 4


def test_embedding_cache_is_made_once_and_read_only_by_the_same_encoder(tiny_dataset, tmp_path):
    import shutil

    import numpy as np

    from audiopair.data.features import FeatureStore
    from audiopair.runtime import ensure_ray
    from audiopair.models.adiff import set_stage
    from audiopair.train.adiff import AudioBank
    from audiopair.train.embeddings import cache_embeddings, cache_kind, cached, embed

    dcfg, _ = tiny_dataset
    ds = tmp_path / "ds"  # a private copy: the shared tiny dataset must not gain a cache other tests would read
    shutil.copytree(Path(dcfg.dataset.output_dir) / "features" / "logmel", ds / "features" / "logmel")
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + TINY_MODEL)
    key = cache_embeddings(ds, cfg.model.encoder)
    part = ds / "features" / cache_kind(key) / "part-00000.parquet"
    store, mels = cached(ds, key), FeatureStore(ds)
    assert store.ids() == mels.ids() and store[mels.ids()[0]].shape == (64,)  # every clip, the pooled width
    stamp = part.stat().st_mtime_ns
    assert cache_embeddings(ds, cfg.model.encoder) == key and part.stat().st_mtime_ns == stamp  # made once

    tok = train_tokenizer(train_corpus(dcfg.dataset.output_dir), 400, tmp_path / "tok")
    model = set_stage(build_model(cfg.model, tok), "grounding")
    clips = set(mels.ids()[:12])
    bank = AudioBank(ds, clips, model)
    assert bank.from_cache  # the same encoder: read, not recomputed
    c = sorted(clips)
    want = embed(model.encoder, [mels[i] for i in c])
    got = np.stack([bank(i).numpy() for i in c])
    assert np.allclose(got, want, rtol=1e-2, atol=1e-3)  # float16 on disk
    other_enc = cfg.model.encoder.model_copy(update={"seed": 1})
    other = set_stage(build_model(cfg.model.model_copy(update={"encoder": other_enc}), tok), "grounding")
    assert not AudioBank(ds, clips, other).from_cache  # another encoder never reads this cache

    from audiopair.train.adiff import ensure_embeddings  # what train_adiff calls before each variant's stages

    cfg.dataset.output_dir = str(ds)
    assert ensure_embeddings(cfg, "language_only", None, None, "t", lambda m: None) == key  # same random encoder
    trains = cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoder": cfg.model.encoder.model_copy(
        update={"freeze": False})})})
    assert ensure_embeddings(trains, "adiff", None, None, "t", lambda m: None) is None  # a trained encoder: no cache

    ensure_ray()
    ds2 = tmp_path / "ds2"
    shutil.copytree(ds / "features" / "logmel", ds2 / "features" / "logmel")
    assert cache_embeddings(ds2, cfg.model.encoder, num_actors=1) == key  # the Ray Data actor pool path
    assert all(np.array_equal(cached(ds2, key)[i], store[i]) for i in store.ids())
