"""Downstream classification accuracy (ACC Table 3) wired into evaluation: label CSVs -> audio -> log-mels -> the
label question -> mapped answers -> accuracy, confusion matrix, MLflow metrics and the side-by-side report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from audiopair.config import ClassifyConfig
from audiopair.evaluate.classify import classification_prompt, demo_label_csv, demo_labels, map_to_label
from audiopair.evaluate.downstream import (CAPTION_PROMPT, AudioGenerator, ClassifySetupError, classify_checkpoint,
                                           prepare, prepare_all)
from audiopair.evaluate.generate import SILENCE_DB, stack_mels
from conftest import REPO, TINY, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

# scripted answers per event kind (the rest answer their own label, e.g. "steam hiss"): what map_to_label makes of
# them is written out by hand in EXPECTED_HOW
ANSWERS = {"car_horn": "a car horn honks", "bell": "thunder", "siren": "sirene", "thunder": "zzz"}
EXPECTED_HOW = {"car_horn": ("car_horn", "contains"), "bell": ("thunder", "exact"), "siren": ("siren", "fuzzy"),
                "thunder": (None, "none")}


@pytest.fixture(scope="module")
def label_csv(tmp_path_factory):
    """One 2 s clip per demo kind, plus a second beep row, a missing file, a corrupt file and an empty label."""
    folder = tmp_path_factory.mktemp("cls")
    path = demo_label_csv(folder, 16000, 2.0, per_kind=1)
    (folder / "audio" / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage, not audio" * 3)
    lines = path.read_text().splitlines()
    lines[4:4] = ["audio/missing.wav,bell", "audio/corrupt.wav,drum", "audio/beep_000.wav,"]
    lines.append("audio/beep_000.wav,beep")
    path.write_text("\n".join(lines) + "\n")
    return path


def _dataset(tmp_path, *extra):
    return tiny_config(tmp_path / "no-dataset", *extra).dataset


def test_prepare_reads_sets_and_names_bad_config(label_csv, tmp_path):
    ds = _dataset(tmp_path)
    s = prepare(ClassifyConfig(name="ev", csv=str(label_csv)), ds, tmp_path)
    assert s.labels == sorted(demo_labels()) and len(s.rows) == 23  # 20 kinds + beep again + missing + corrupt
    assert s.skipped == [f"{label_csv}:7: empty label"] and s.excluded == 0
    assert s.rows[0] == {"id": "labels.csv:2", "path": str(label_csv.parent / "audio/beep_000.wav"), "label": "beep"}
    assert s.prompt.startswith("Which of these sounds is in the audio: applause, beep, bell, bird, car horn,")
    # an explicit label list leaves other rows out (counted); limit takes a seeded sample; audio_dir re-roots paths
    few = prepare(ClassifyConfig(name="ev", csv=str(label_csv), labels=["drum", "beep"], audio_dir="/clips"), ds, tmp_path)
    assert [r["label"] for r in few.rows] == ["beep", "drum", "drum", "beep"] and few.excluded == 19
    assert few.rows[0]["path"] == "/clips/audio/beep_000.wav" and few.prompt.endswith(": drum, beep? Answer with one label.")
    lim = [prepare(ClassifyConfig(name="ev", csv=str(label_csv), limit=5), ds, tmp_path).rows for _ in range(2)]
    assert len(lim[0]) == 5 and lim[0] == lim[1]
    # csv: demo renders the bank's kinds with the bank's phrases as synonyms
    demo = prepare(ClassifyConfig(name="d", csv="demo", per_kind=1, synonyms={"bell": ["gong"]}), ds, tmp_path)
    assert len(demo.rows) == 20 and demo.labels == demo_labels() and (tmp_path / "classify" / "d" / "labels.csv").is_file()
    assert "gong" in demo.synonyms["bell"] and len(demo.synonyms["bell"]) > 1
    with pytest.raises(ClassifySetupError, match=r"evaluate.classify\.csv: .*nope.csv does not exist"):
        prepare(ClassifyConfig(name="x", csv=str(tmp_path / "nope.csv")), ds, tmp_path)
    with pytest.raises(ClassifySetupError, match=r"synonyms: \['dog'\] are not labels"):
        prepare(ClassifyConfig(name="x", csv=str(label_csv), synonyms={"dog": ["woof"]}), ds, tmp_path)
    cfg = tiny_config(tmp_path / "ds", f"work_dir={tmp_path}",
                      f"evaluate.classify=[{{name: a, csv: {label_csv}}}, {{name: a, csv: demo}}]")
    with pytest.raises(ClassifySetupError, match=r"names must be unique .*\['a'\]"):
        prepare_all(cfg)


def test_stack_mels_pads_ragged_clips_with_silence():
    out = stack_mels([torch.zeros(4, 3), torch.ones(4, 5)])
    assert out.shape == (2, 4, 5) and (out[0, :, 3:] == SILENCE_DB).all() and (out[1] == 1).all()


def test_scripted_answers_give_the_hand_computed_accuracy(label_csv, tmp_path, monkeypatch):
    """The model is replaced by scripted answers; audio loading, batching, skipping, mapping and scoring are real."""
    real_mels = AudioGenerator.mels

    def load_model(self, checkpoint, decoding=None, device=None):
        self.seen = []

    def mels(self, batch, i):
        out = real_mels(self, batch, i)  # raises for the missing and the corrupt file
        self.seen.append(Path(str(batch["path"][i])).stem.rsplit("_", 1)[0])  # the kind, from the file name
        return out

    def texts(self, inputs, prompts, ids):
        m1, m2 = (stack_mels(list(m)) for m in zip(*inputs))
        assert m1.shape == (len(prompts), 64, 201) and torch.equal(m1, m2)  # 2 s at a 10 ms hop, same clip twice
        assert set(prompts) == {CAPTION_PROMPT}  # not an ADIFF/Qwen folder: asked as a prefix model
        kinds, self.seen = self.seen[: len(prompts)], self.seen[len(prompts):]
        return [ANSWERS.get(k, k.replace("_", " ")) for k in kinds]

    monkeypatch.setattr(AudioGenerator, "load_model", load_model)
    monkeypatch.setattr(AudioGenerator, "mels", mels)
    monkeypatch.setattr(AudioGenerator, "texts", texts)
    c = classify_checkpoint(tmp_path / "no-model", _dataset(tmp_path), ClassifyConfig(name="ev", csv=str(label_csv)),
                            batch_size=4, figure=tmp_path / "conf.png")
    labels = sorted(demo_labels())
    # by hand: 21 readable rows; bell -> thunder (wrong), thunder -> unmapped (wrong), the other 19 right
    assert [(r["label"], r["mapped"], r["how"]) for r in c.rows if r["label"] in EXPECTED_HOW] == \
        [(k, *EXPECTED_HOW[k]) for k in ("car_horn", "bell", "siren", "thunder")]
    for k, (want, how) in EXPECTED_HOW.items():  # the same by map_to_label directly
        assert map_to_label(ANSWERS[k], labels) == (want, how)
    rep = c.report
    assert rep["n"] == 21 and rep["correct"] == 19 and c.accuracy == pytest.approx(19 / 21)
    assert rep["macro_accuracy"] == pytest.approx(18 / 20)  # 20 classes, each 1.0 but bell and thunder (0.0)
    assert rep["methods"] == {"exact": 18, "contains": 1, "fuzzy": 1, "none": 1}
    conf = rep["confusion"]
    i = labels.index
    assert conf[i("bell")][i("thunder")] == 1 and conf[i("thunder")][20] == 1 and conf[i("beep")][i("beep")] == 2
    assert sum(map(sum, conf)) == 21 and rep["unmapped"] == 1
    # bad rows: skipped, counted, each named with its file and why; the rest of the batch went on
    assert len(c.skipped) == 3
    assert c.skipped[0].endswith("labels.csv:7: empty label")
    assert "labels.csv:5" in c.skipped[1] and "missing.wav" in c.skipped[1] and "does not exist" in c.skipped[1]
    assert "labels.csv:6" in c.skipped[2] and "corrupt.wav" in c.skipped[2] and "unreadable" in c.skipped[2]
    assert c.confusion == tmp_path / "conf.png" and c.confusion.read_bytes()[:4] == b"\x89PNG"
    m = c.metrics()
    assert m["ev/classify/all/accuracy"] == pytest.approx(19 / 21) and m["ev/skipped_clips"] == 3
    assert m["ev/classify/all/unmapped_rate"] == pytest.approx(1 / 21)
    t = c.table()  # MLflow table columns; unmapped shows as ""
    assert t["mapped"][0] == "beep" and t["mapped"][t["label"].index("thunder")] == "" and len(t["id"]) == 21


def test_real_model_classifies_in_batches(label_csv, tiny_checkpoint, tmp_path):
    ds = _dataset(tmp_path)
    cc = ClassifyConfig(name="ev", csv=str(label_csv), max_new_tokens=8)
    a = classify_checkpoint(tiny_checkpoint, ds, cc, batch_size=8, figure=tmp_path / "a.png")
    b = classify_checkpoint(tiny_checkpoint, ds, cc, batch_size=5)
    assert [r["prediction"] for r in a.rows] == [r["prediction"] for r in b.rows]  # greedy: batching changes nothing
    assert len(a.rows) == 21 and len(a.skipped) == 3 and all(isinstance(r["prediction"], str) for r in a.rows)
    assert any(r["prediction"] for r in a.rows)
    right = sum(r["mapped"] == r["label"] for r in a.rows)
    assert a.report["correct"] == right and a.accuracy == pytest.approx(right / 21)
    assert sum(a.report["methods"].values()) == 21
    assert (tmp_path / "a.png").stat().st_size > 5_000
    assert a.prompt == CAPTION_PROMPT and not a.notes  # a prefix model is asked what it was trained on
    question = cc.model_copy(update={"prompt": classification_prompt(demo_labels()), "limit": 2})
    q = classify_checkpoint(tiny_checkpoint, ds, question)  # the config's own prompt: asked as it is
    assert q.notes and "model.prompt_len" in q.notes[0]  # 20 labels do not fit the tiny model's 16 prompt tokens
    with pytest.raises(FileNotFoundError, match="no-model"):  # a missing checkpoint names itself
        classify_checkpoint(tmp_path / "no-model", ds, cc)


def test_prefix_models_caption_instruction_models_answer_the_label_question(label_csv, tmp_path):
    """ADIFF-style models read 16 prompt tokens and were trained on position captioning, so they are asked for a
    caption, which the bank's phrases map onto the labels; Qwen2-Audio folders get the label question."""
    from audiopair.models.qwen2_audio import META

    ds = _dataset(tmp_path)
    qwen, adiff = tmp_path / "qwen", tmp_path / "adiff"
    qwen.mkdir()
    (qwen / META).write_text("{}")
    s = prepare(ClassifyConfig(name="ev", csv="demo", per_kind=1), ds, tmp_path)
    assert s.prompt_for(qwen) == classification_prompt(s.labels) and s.prompt_for(adiff) == "Caption the first audio."
    own = prepare(ClassifyConfig(name="ev", csv=str(label_csv), prompt="What is it?"), ds, tmp_path)
    assert own.prompt_for(qwen) == own.prompt_for(adiff) == "What is it?"
    # captions as the demo model writes them (the bank's phrasings) land on the event's label
    for caption, label in [("A bell ringing over steady rain.", "bell"), ("Someone knocking in a quiet room.", "knock"),
                           ("Distant thunder.", "thunder"), ("A dripping tap and a passing car.", "drip")]:
        assert map_to_label(caption, s.labels, s.synonyms)[0] == label, caption


def _job():
    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_evaluate_job_logs_accuracy_and_reports_the_table(label_csv, tiny_checkpoint, tmp_path, capsys):
    import mlflow

    job = _job()
    work = tmp_path / "work"
    base = [*TINY, f"dataset.output_dir={tmp_path / 'never-built'}", f"work_dir={work}", "experiment=cls",
            "evaluate.tasks=[]", "evaluate.batch_size=16", f"evaluate.checkpoints={{tiny: {tiny_checkpoint}}}"]
    assert job.main(base + [f"evaluate.classify=[{{name: ev, csv: {tmp_path / 'none.csv'}}}]"]) == 2
    assert "evaluate.classify[0].csv" in capsys.readouterr().err
    sets = (f"evaluate.classify=[{{name: ev, csv: {label_csv}, max_new_tokens: 6}}, "
            "{name: demo_events, csv: demo, per_kind: 1, max_new_tokens: 6}]")
    assert job.main(base + [sets]) == 0
    out = capsys.readouterr().out
    assert "| model | ev | demo_events |" in out and "3 examples skipped" in out

    scores = json.loads((work / "reports" / "cls-evaluate" / "scores.json").read_text())["tiny"]["classify"]
    assert scores["ev"]["n"] == 21 and scores["demo_events"]["n"] == 20 and len(scores["ev"]["skipped"]) == 3
    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cls")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"evaluate", "tiny/evaluate"}
    child = runs["tiny/evaluate"]
    metrics = child.data.metrics
    assert metrics["ev/classify/all/accuracy"] == pytest.approx(scores["ev"]["accuracy"])
    assert metrics["demo_events/classify/all/accuracy"] == pytest.approx(scores["demo_events"]["accuracy"])
    assert metrics["ev/skipped_clips"] == 3 and "demo_events/classify/all/macro_accuracy" in metrics
    assert metrics["ev/classify/all/chance"] == pytest.approx(scores["ev"]["chance"])
    logged = {a.path for a in client.list_artifacts(child.info.run_id, "classify/ev")}
    assert logged == {"classify/ev/confusion_ev.png", "classify/ev/predictions.json", "classify/ev/report.json"}
    table = json.loads(Path(client.download_artifacts(child.info.run_id, "classify/ev/predictions.json",
                                                      str(tmp_path / "dl"))).read_text())
    assert len(table["data"]) == 21 and table["columns"][:3] == ["id", "path", "label"]

    report = (work / "reports" / "cls-evaluate" / "report.md").read_text()
    cells = [f"{100 * scores[n]['accuracy']:.2f}%" for n in ("ev", "demo_events")]
    assert "## Downstream classification accuracy" in report
    assert f"| tiny | {cells[0]} | {cells[1]} |" in report
    assert "ev: 21 clips, 20 labels, 3 skipped;" in report
    # the bar to clear beside every accuracy: always answering the most frequent true label
    counts = [sum(row) for row in scores["ev"]["confusion"]]
    assert scores["ev"]["chance"] == pytest.approx(max(counts) / 21)
    assert f"chance (the most frequent label) {100 * scores['ev']['chance']:.2f}%" in report
    assert f"chance {scores['demo_events']['chance']:.1%}" in out
    assert "<h2>Downstream classification accuracy</h2>" in (work / "reports" / "cls-evaluate" / "report.html").read_text()
    parent_art = {a.path for a in client.list_artifacts(runs["evaluate"].info.run_id, "report")}
    assert "report/report.md" in parent_art
