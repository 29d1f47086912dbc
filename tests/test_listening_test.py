"""The listening test: building a frozen blind study from predictions tables, the rating API (tokens, path
traversal, 1-5, double submission, two raters), and the Table-3-shaped report on synthetic ratings."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from audiopair.atomic import atomic_write_jsonl
from audiopair.audio import write_audio
from audiopair.config import StudyConfig
from audiopair.serve.study import StudyError, build_study, load_study

MODELS = ("adiff", "baseline", "qwen")


def write_predictions(root: Path, scenario: str, n_per_tier: int = 3, models=MODELS, text=None) -> Path:
    """A report folder as jobs/evaluate.py writes it: predictions/<model>.jsonl, audio files beside it.
    ``text(model, row)`` makes each prediction (default: "<model> says <id>")."""
    folder = root / f"report-{scenario}"
    rng = np.random.default_rng(0)
    rows = []
    for tier in (1, 2, 3):
        for k in range(n_per_tier):
            rid = f"{scenario}-t{tier}-{k}"
            audio = []
            for n in (1, 2):
                p = root / "audio" / scenario / f"{rid}_{n}.wav"
                write_audio(p, (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000)
                audio.append(str(p))
            rows.append({"id": rid, "task": "adiff", "tier": tier, "prompt": f"tier {tier}?", "audio": audio,
                         "references": ["ref"]})
    for m in models:
        atomic_write_jsonl(folder / "predictions" / f"{m}.jsonl",
                           [{**r, "prediction": text(m, r) if text else f"{m} says {r['id']}"} for r in rows])
    return folder


def study_cfg(tmp_path, **kw) -> StudyConfig:
    scen = [{"name": s, "predictions": [str(write_predictions(tmp_path, s))]} for s in ("studio", "fsd")]
    return StudyConfig.model_validate({"name": "t", "output_dir": str(tmp_path / "study"), "scenarios": scen,
                                       "pairs_per_tier": 2, "raters": ["ann", "bob"], **kw})


def test_build_freezes_a_blind_seeded_study(tmp_path):
    cfg = study_cfg(tmp_path)
    build_study(cfg, say=lambda m: None)
    s = load_study(cfg.output_dir)
    assert s.models == sorted(MODELS) and s.scenarios == ["studio", "fsd"]
    assert len(s.items) == 2 * 3 * 2  # scenarios x tiers x K
    assert [it["id"] for it in s.items] == [f"item{n:03d}" for n in range(1, 13)]
    for it in s.items:  # each output is its model's own text; keys are positions, not names
        assert [o["key"] for o in it["outputs"]] == ["A", "B", "C"]
        assert {o["model"] for o in it["outputs"]} == set(MODELS)
        assert all(o["text"] == f"{o['model']} says {it['pair']}" for o in it["outputs"])
        assert all((s.folder / a).is_file() and not Path(a).is_absolute() for a in it["audio"])
    # randomised: not every item puts the models in the same order, nor are items grouped by scenario
    assert len({tuple(o["model"] for o in it["outputs"]) for it in s.items}) > 1
    assert [it["scenario"] for it in s.items] != sorted(it["scenario"] for it in s.items)
    tokens = json.loads((s.folder / "raters.json").read_text())
    assert set(tokens) == {"ann", "bob"} and len(set(tokens.values())) == 2
    assert (s.folder / "raters.json").stat().st_mode & 0o077 == 0
    # frozen: building again refuses; the same seed elsewhere gives the same items and orders
    with pytest.raises(StudyError, match="exists: a study is frozen"):
        build_study(cfg, say=lambda m: None)
    again = cfg.model_copy(update={"output_dir": str(tmp_path / "again")})
    build_study(again, say=lambda m: None)
    assert load_study(again.output_dir).items == s.items


def test_build_errors_name_what_is_wrong(tmp_path):
    one = write_predictions(tmp_path, "solo", models=("adiff",))
    cfg = StudyConfig.model_validate({"output_dir": str(tmp_path / "s"),
                                      "scenarios": [{"name": "solo", "predictions": [str(one)]}]})
    with pytest.raises(StudyError, match=r"two or more models; the scenarios share \['adiff'\]"):
        build_study(cfg, say=lambda m: None)
    cfg = StudyConfig.model_validate({"output_dir": str(tmp_path / "s"),
                                      "scenarios": [{"name": "x", "predictions": [str(tmp_path / "nothing")]}]})
    with pytest.raises(StudyError, match=f"report folder {tmp_path / 'nothing'} does not exist .*make demo"):
        build_study(cfg, say=lambda m: None)
    cfg = StudyConfig.model_validate({"output_dir": str(tmp_path / "s"),
                                      "scenarios": [{"name": "x", "predictions": ["abc123"]}]})
    with pytest.raises(StudyError, match="'abc123' is neither a report folder nor an MLflow run id"):
        build_study(cfg, say=lambda m: None)
    cfg = StudyConfig.model_validate({"output_dir": str(tmp_path / "s"), "scenarios": [
        {"name": "x", "predictions": [str(one)]}, {"name": "x", "predictions": [str(one)]}]})
    with pytest.raises(StudyError, match=r"study.scenarios: names must differ, got \['x', 'x'\]"):
        build_study(cfg, say=lambda m: None)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("pair\nsolo-t1-0\n")
    cfg = study_cfg(tmp_path, scenarios=[{"name": "studio", "predictions": [str(tmp_path / "report-solo")],
                                          "pairs": str(pairs)}], models=["adiff", "gpt"])
    with pytest.raises(StudyError, match=r"study.models: \['gpt'\] are not in every scenario"):
        build_study(cfg, say=lambda m: None)
    cfg = study_cfg(tmp_path, scenarios=[{"name": "studio", "predictions": [str(tmp_path / "report-studio")],
                                          "pairs": str(pairs)}])
    with pytest.raises(StudyError, match=r"study.scenarios\[studio\].pairs: .*pairs.csv has no 'id' column"):
        build_study(cfg, say=lambda m: None)


def test_pairs_csv_restricts_the_scenario(tmp_path):
    rep = write_predictions(tmp_path, "gtzan")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("id,note\ngtzan-t1-2,x\ngtzan-t3-0,y\n")
    cfg = StudyConfig.model_validate({"output_dir": str(tmp_path / "s"), "pairs_per_tier": 3, "scenarios": [
        {"name": "gtzan", "predictions": [str(rep)], "pairs": str(pairs)}]})
    build_study(cfg, say=lambda m: None)
    assert sorted(it["pair"] for it in load_study(tmp_path / "s").items) == ["gtzan-t1-2", "gtzan-t3-0"]


# ------------------------------------------------------------------------------------------------- the API
@pytest.fixture
def served(tmp_path):
    from fastapi.testclient import TestClient

    from audiopair.serve.app import create_app

    cfg = study_cfg(tmp_path, pairs_per_tier=1)
    build_study(cfg, say=lambda m: None)
    s = load_study(cfg.output_dir)
    app = create_app(cfg.output_dir)
    return TestClient(app), s, app


def test_unknown_token_gets_403_everywhere(served):
    client, s, _ = served
    item = s.items[0]
    for method, url, body in [("GET", "/rate/nope", None), ("GET", "/api/nope/state", None),
                              ("PUT", "/api/nope/rating", {"item": item["id"], "output": "A", "dimension": "cor",
                                                            "score": 3}),
                              ("POST", "/api/nope/finish", None), ("GET", f"/audio/nope/{item['audio'][0]}", None)]:
        r = client.request(method, url, json=body)
        assert r.status_code == 403, (method, url)
        assert r.json()["detail"] == "unknown rater link"
    assert client.get(f"/rate/{s.raters['ann']}").status_code == 200


def test_page_and_state_never_name_the_models(served):
    client, s, _ = served
    token = s.raters["ann"]
    page = client.get(f"/rate/{token}").text
    state = client.get(f"/api/{token}/state").json()
    assert "Correctness" in page and "Granularity" in page and "Readability" in page and "headphones" in page
    assert len(state["items"]) == len(s.items) and state["position"] == 0 and state["ratings"] == {}
    dumped = json.dumps(state)
    for m in MODELS:
        assert f'"{m}"' not in dumped and f"{m}/" not in dumped
    assert "references" not in dumped
    first = state["items"][0]
    audio = client.get(first["audio"][0])
    assert audio.status_code == 200 and audio.content == (s.folder / s.items[0]["audio"][0]).read_bytes()


def test_audio_is_served_only_from_the_study(served, tmp_path):
    client, s, _ = served
    token = s.raters["ann"]
    (tmp_path / "secret.txt").write_text("secret")
    for bad in ["../raters.json", "raters.json", "study.json", "audio/../raters.json", "%2e%2e/raters.json",
                "..%2F..%2Fsecret.txt", "%2E%2E%2F%2E%2E%2Fsecret.txt", "/etc/passwd", "audio/studio/none.wav",
                "audio/../../secret.txt", "audio%2F..%2F..%2Fraters.json"]:
        r = client.get(f"/audio/{token}/{bad}")
        # encoded dots reach the server as "../" and get 404; plain ones the client resolves itself, and the token
        # falls out of the URL: 403
        assert r.status_code == (404 if token in r.request.url.path else 403), (bad, r.request.url.path)
        assert b"secret" not in r.content and token.encode() not in r.content
    # the server-side check, on the raw paths a hand-made request can carry
    from fastapi import HTTPException

    from audiopair.serve.app import _study_file

    for bad in ["../raters.json", "audio/../../secret.txt", "audio/studio/../../raters.json", str(tmp_path / "x"),
                "raters.json", "audio"]:
        with pytest.raises(HTTPException) as e:
            _study_file(s, bad)
        assert e.value.status_code == 404
    assert _study_file(s, s.items[0]["audio"][1]) == (s.folder / s.items[0]["audio"][1]).resolve()


def test_ratings_validate_replace_and_stay_per_rater(served):
    client, s, app = served
    ann, bob = s.raters["ann"], s.raters["bob"]
    it = s.items[0]
    ok = {"item": it["id"], "output": "B", "dimension": "gra", "score": 4}
    for bad, code, why in [({**ok, "score": 0}, 422, "greater than or equal to 1"),
                           ({**ok, "score": 6}, 422, "less than or equal to 5"),
                           ({**ok, "dimension": "fun"}, 422, "dimension must be one of"),
                           ({**ok, "output": "Z"}, 404, "has no output 'Z'"),
                           ({**ok, "item": "item999"}, 404, "no item 'item999'")]:
        r = client.put(f"/api/{ann}/rating", json=bad)
        assert r.status_code == code and why in json.dumps(r.json()), bad
    assert client.put(f"/api/{ann}/rating", json=ok).status_code == 200
    assert client.put(f"/api/{ann}/rating", json={**ok, "score": 2}).status_code == 200  # double submission
    rows = app.state.store.ratings()
    assert rows == [{"rater": "ann", "item": it["id"], "output": "B", "dimension": "gra", "score": 2}]
    # bob sees none of ann's ratings and cannot change them: his write is his own row
    assert client.get(f"/api/{bob}/state").json()["ratings"] == {}
    client.put(f"/api/{bob}/rating", json={**ok, "score": 5})
    assert client.get(f"/api/{ann}/state").json()["ratings"] == {it["id"]: {"B": {"gra": 2}}}
    assert client.get(f"/api/{bob}/state").json()["ratings"] == {it["id"]: {"B": {"gra": 5}}}
    # comments and position survive a new session (a closed browser)
    client.put(f"/api/{ann}/comment", json={"item": it["id"], "text": "B misses the dog"})
    client.put(f"/api/{ann}/position", json={"position": 3})
    st = client.get(f"/api/{ann}/state").json()
    assert st["position"] == 3 and st["comments"] == {it["id"]: "B misses the dog"}
    assert client.put(f"/api/{ann}/position", json={"position": 99}).status_code == 422


def test_two_raters_at_once_and_finish(served):
    client, s, app = served
    tokens = [s.raters["ann"], s.raters["bob"]]
    errors = []

    def rate_all(token, score):
        try:
            for it in s.items:
                for o in it["outputs"]:
                    for d in ("cor", "gra", "rdb"):
                        r = client.put(f"/api/{token}/rating", json={"item": it["id"], "output": o["key"],
                                                                     "dimension": d, "score": score})
                        assert r.status_code == 200, r.text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    r = client.post(f"/api/{tokens[0]}/finish")
    assert r.status_code == 409 and f"{len(s.items)} items are not fully rated" in r.json()["detail"]
    threads = [threading.Thread(target=rate_all, args=(t, n)) for n, t in enumerate(tokens, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = app.state.store.ratings()
    per_rater = len(s.items) * 3 * 3
    assert len(rows) == 2 * per_rater
    assert {r["score"] for r in rows if r["rater"] == "ann"} == {3} and \
        {r["score"] for r in rows if r["rater"] == "bob"} == {4}
    assert client.post(f"/api/{tokens[0]}/finish").json() == {"finished": True}
    assert client.get(f"/api/{tokens[0]}/state").json()["finished"] is True
    assert client.get(f"/api/{tokens[1]}/state").json()["finished"] is False


# ------------------------------------------------------------------------------------------------- the report
def _store(s, tmp_path):
    from audiopair.serve.store import RatingStore

    return RatingStore(f"sqlite:///{tmp_path / 'r.db'}", s.fingerprint)


def test_report_gives_table3_means_intervals_and_counts(tmp_path):
    """Synthetic ratings with known cells: adiff COR is always 4; baseline COR is 2 from ann and 4 from bob
    (12 ratings: the bootstrap mean is 2 + k/6 with k ~ Binomial(12, 1/2), whose 2.5% and 97.5% quantiles are
    k = 3 and 9, so the interval is [2.5, 3.5]); qwen COR is 1 in studio and 3 in fsd (average 2 over 24)."""
    import mlflow
    import pandas as pd

    from audiopair import tracking
    from audiopair.serve.report import log_report, make_report, markdown, write_report

    build_study(study_cfg(tmp_path), say=lambda m: None)  # 2 scenarios x 3 tiers x 2 pairs, 3 models
    s = load_study(tmp_path / "study")
    store, rows = _store(s, tmp_path), []
    for it in s.items:
        for o in it["outputs"]:
            def add(rater, dim, score):
                rows.append({"rater": rater, "item": it["id"], "output": o["key"], "dimension": dim, "score": score})
            for rater in ("ann", "bob"):
                add(rater, "cor", {"adiff": 4, "baseline": 2 if rater == "ann" else 4,
                                   "qwen": 1 if it["scenario"] == "studio" else 3}[o["model"]])
                add(rater, "gra", 5 if o["model"] == "adiff" else 3)
            add("ann", "rdb", 4)  # only one rater: 6 ratings per cell
    store.rate_many(rows)
    rep = make_report(s, store.ratings(), n_boot=2000, seed=0)
    assert len(rep.rows) == 3 * 3 * 3  # models x (2 scenarios + average) x dimensions
    assert rep.cell("adiff", "studio", "cor") == {"model": "adiff", "scenario": "studio", "dimension": "cor",
                                                  "mean": 4.0, "ci_low": 4.0, "ci_high": 4.0, "n": 12}
    b = rep.cell("baseline", "fsd", "cor")
    assert (b["mean"], b["ci_low"], b["ci_high"], b["n"]) == (3.0, 2.5, 3.5, 12)
    assert rep.cell("qwen", "studio", "cor")["mean"] == 1.0 and rep.cell("qwen", "fsd", "cor")["mean"] == 3.0
    avg = rep.cell("qwen", "average", "cor")
    assert avg["mean"] == 2.0 and avg["n"] == 24 and 1.0 < avg["ci_low"] < 2.0 < avg["ci_high"] < 3.0
    assert rep.cell("adiff", "average", "gra")["mean"] == 5.0 and rep.cell("qwen", "fsd", "rdb")["n"] == 6
    # agreement: GRA both raters identical and varied -> 1; RDB one rater only -> undefined
    assert rep.alpha["gra"] == 1.0 and rep.alpha["rdb"] is None
    md = markdown(rep, s)
    assert "| model | studio COR | studio GRA | studio RDB | fsd COR | fsd GRA | fsd RDB | average COR |" in md
    assert "| adiff | 4.00 [4.00, 4.00] (12) |" in md and "3.00 [2.50, 3.50] (12)" in md
    paths = write_report(rep, s, tmp_path / "out")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 10_000
    saved = json.loads(paths["json"].read_text())
    assert saved["alpha"] == {"cor": rep.alpha["cor"], "gra": 1.0, "rdb": None} and len(saved["table"]) == 27
    assert len(pd.read_csv(paths["csv"])) == len(s.items) * 3 * 5
    uri = tracking.setup(tmp_path / "work", "t-listen")
    run_id = log_report(rep, s, paths)
    run = mlflow.tracking.MlflowClient(uri).get_run(run_id)
    assert run.info.run_name == "listening-test/t" and run.data.tags["job"] == "listening_test"
    assert run.data.metrics["fsd/human/baseline/cor"] == 3.0 and run.data.metrics["agreement/gra/alpha"] == 1.0
    assert {a.path for a in mlflow.tracking.MlflowClient(uri).list_artifacts(run_id, "listening_test")} >= {
        "listening_test/table3.png", "listening_test/report.md", "listening_test/table3.json"}


@pytest.mark.parametrize("level,expected", [("ordinal", 0.815), ("interval", 0.849), ("nominal", 0.743)])
def test_agreement_matches_krippendorffs_worked_example(tmp_path, level, expected):
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 observers x 12 units with missing
    values: alpha = 0.743 nominal, 0.815 ordinal, 0.849 interval. Units are the 6 items x 2 outputs here."""
    from audiopair.serve.report import make_report

    cfg = StudyConfig.model_validate({"output_dir": str(tmp_path / "s"), "pairs_per_tier": 2, "scenarios": [
        {"name": "one", "predictions": [str(write_predictions(tmp_path, "one", models=("m1", "m2")))]}]})
    build_study(cfg, say=lambda m: None)
    s = load_study(cfg.output_dir)
    units = sorted((it["id"], o["key"]) for it in s.items for o in it["outputs"])
    assert len(units) == 12
    n = None
    data = {"A": [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
            "C": [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]}
    store = _store(s, tmp_path)
    store.rate_many([{"rater": rater, "item": item, "output": key, "dimension": dim, "score": v}
                     for rater, scores in data.items() for (item, key), v in zip(units, scores) if v is not None
                     for dim in ("cor", "gra", "rdb")])
    rep = make_report(s, store.ratings(), n_boot=200, level=level)
    assert rep.raters == 4
    assert {d: round(a, 3) for d, a in rep.alpha.items()} == {"cor": expected, "gra": expected, "rdb": expected}


def test_job_builds_refuses_reports_and_serves(tmp_path, capsys, monkeypatch):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("listening_test_job", REPO / "jobs" / "listening_test.py")
    jobmod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jobmod)
    rep = write_predictions(tmp_path, "demo", models=("adiff", "baseline"))
    study = tmp_path / "study"
    args = [f"study.output_dir={study}", f"study.scenarios=[{{name: demo, predictions: [{rep}]}}]",
            "study.pairs_per_tier=1", "study.raters=[ann]", f"work_dir={tmp_path / 'work'}", "experiment=t-job"]
    assert jobmod.cli(["build", *args]) == 0
    assert len(load_study(study).items) == 3
    assert jobmod.cli(["build", *args]) == 2
    assert "exists: a study is frozen once it is built" in capsys.readouterr().err
    assert jobmod.cli(["--report", str(study), f"work_dir={tmp_path / 'work'}"]) == 2
    assert "no ratings yet" in capsys.readouterr().err
    from audiopair.serve.store import RatingStore, default_url

    s = load_study(study)
    store = RatingStore(default_url(study), s.fingerprint)
    store.rate_many([{"rater": "ann", "item": it["id"], "output": o["key"], "dimension": d, "score": 3}
                     for it in s.items for o in it["outputs"] for d in ("cor", "gra", "rdb")])
    assert jobmod.cli(["--report", str(study), f"work_dir={tmp_path / 'work'}", "study.bootstrap=200"]) == 0
    out = capsys.readouterr().out
    assert "| adiff | 3.00 [3.00, 3.00] (3) |" in out and "MLflow run" in out
    assert (study / "report" / "table3.png").is_file() and (tmp_path / "work" / "mlflow.db").is_file()
    # serve: loopback unless told otherwise, one link per rater
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert jobmod.cli(["serve", f"study.output_dir={study}", "serve.port=8123"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123 and seen["app"].state.study.name == s.name
    assert f"ann: http://127.0.0.1:8123/rate/{s.raters['ann']}" in capsys.readouterr().out


def test_build_from_mlflow_runs_finds_audio_in_the_dataset(tiny_dataset, tmp_path):
    """Predictions tables logged as jobs/evaluate.py logs them (child runs <model>/evaluate, no audio column): the
    study takes the texts from MLflow and each id's audio files from the dataset's manifests."""
    import mlflow

    from audiopair import tracking
    from audiopair.evaluate.run import split_examples

    dcfg, _ = tiny_dataset
    rows = split_examples(dcfg.dataset.output_dir, "test", ["adiff"], 2)
    tracking.setup(tmp_path / "work", "t-mlflow-study")
    with tracking.run("evaluate") as parent:
        for m in ("adiff", "baseline"):
            with tracking.run(f"{m}/evaluate", parent=parent.info.run_id, tags={"model": m}):
                tracking.log_predictions([{**r, "prediction": f"{m}: {r['id']}"} for r in rows],
                                         "predictions/test.json")
    cfg = StudyConfig.model_validate({"output_dir": str(tmp_path / "s"), "pairs_per_tier": 1, "scenarios": [
        {"name": "demo", "predictions": [parent.info.run_id], "dataset": dcfg.dataset.output_dir}]})
    build_study(cfg, say=lambda m: None)
    s = load_study(cfg.output_dir)
    assert s.models == ["adiff", "baseline"] and sorted(it["tier"] for it in s.items) == [1, 2, 3]
    by_id = {r["id"]: r for r in rows}
    for it in s.items:
        src = by_id[it["pair"]]
        assert [(s.folder / a).read_bytes() for a in it["audio"]] == [Path(a).read_bytes() for a in src["audio"]]
        assert {o["text"] for o in it["outputs"]} == {f"adiff: {it['pair']}", f"baseline: {it['pair']}"}
    # its report lands next to the evaluation runs, even with another experiment active
    from audiopair.serve.report import log_report, make_report, write_report
    from audiopair.serve.store import RatingStore, default_url

    store = RatingStore(default_url(s.folder), s.fingerprint)
    store.rate_many([{"rater": "r", "item": it["id"], "output": o["key"], "dimension": "cor", "score": 4}
                     for it in s.items for o in it["outputs"]])
    rep = make_report(s, store.ratings(), n_boot=100)
    tracking.setup(tmp_path / "work", "elsewhere")
    run_id = log_report(rep, s, write_report(rep, s, s.folder / "report"))
    client = mlflow.tracking.MlflowClient()
    assert client.get_run(run_id).info.experiment_id == parent.info.experiment_id
    bad = StudyConfig.model_validate({"output_dir": str(tmp_path / "s2"), "scenarios": [
        {"name": "demo", "predictions": ["0" * 32]}]})
    with pytest.raises(StudyError, match=f"MLflow run {'0' * 32}: not found"):
        build_study(bad, say=lambda m: None)
