"""ACC Tables 2 and 3 in miniature (jobs/finetune_qwen2_audio.py with acc_table2_demo.yaml), reduced: the tiny
demo build, a short stage 1 on 20 of its 30 AC training clips, 48 examples per row. What the design guarantees, not
the paper's orderings: the stand-in base learns (it beats the random model it started from), every LoRA row lowers
its own tasks' validation loss, the report holds all five rows and every metric column and is logged, and a second
job reuses everything."""

from __future__ import annotations

import importlib.util
import json

import pytest

from audiopair.evaluate.acc_tables import BASE, RANDOM, TABLE2_METRICS, report_markdown
from audiopair.train.acc_table import budget_examples
from conftest import REPO, TINY

ROWS = ["AC", "ADC", "ACC", "AC+ADC", "AC+ACC"]


def _job():
    spec = importlib.util.spec_from_file_location("finetune_job_acc", REPO / "jobs" / "finetune_qwen2_audio.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


@pytest.fixture(scope="module")
def tables(tiny_dataset, tmp_path_factory):
    """The job run twice over the same folders; both reports and the MLflow store."""
    import torch

    dcfg, _ = tiny_dataset
    tmp = tmp_path_factory.mktemp("acc")
    args = ["--config", str(REPO / "jobs" / "configs" / "acc_table2_demo.yaml"), *TINY,
            f"dataset.output_dir={dcfg.dataset.output_dir}", f"work_dir={tmp / 'work'}",
            f"train.storage_path={tmp / 'runs'}", "finetune.tiny.window_seconds=2",
            # 20 of the tiny build's 30 AC training clips for the base, 10 left new to it: at half (15) the base
            # answered "Rain." to every clip (CIDEr-D 0), too few captions to caption at all at this size
            "acc_table.base.ac_share=0.67",
            "acc_table.base.epochs=30", "acc_table.base.label_per_kind=4", "acc_table.budget=48",
            "acc_table.val_limit=8", "evaluate.decoding.max_new_tokens=24",
            "evaluate.classify=[{name: demo_events, csv: demo, per_kind: 1}]"]
    threads = torch.get_num_threads()
    job = _job()
    try:
        assert job.main(args) == 0
        report = tmp / "work" / "reports" / "acc-table2-demo"
        first = json.loads((report / "report.json").read_text())
        assert job.main(args) == 0
        second = json.loads((report / "report.json").read_text())
    finally:
        torch.set_num_threads(threads)
    return {"first": first, "second": second, "dir": report, "tmp": tmp}


def _runs(name_filter: str):
    import mlflow

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("audiopair-demo").experiment_id
    return client, client.search_runs([exp], name_filter, order_by=["attributes.start_time ASC"])


def test_stand_in_base_beats_the_random_model_it_started_from(tables):
    rep = tables["first"]
    base, rand = rep["base"], rep["random"]
    assert base["n_ac"] > 0 and base["n_classify"] == {"demo_events": 20}
    # 20 training captions at this size: the base captions poorly, but far better than the random model
    assert base["ac"]["cider_d"] > 5 * rand["ac"]["cider_d"] and base["ac"]["bleu_1"] > rand["ac"]["bleu_1"]
    chance = 1 / 20  # the bank's 20 event kinds
    assert base["classify"]["demo_events"] >= 4 * chance > rand["classify"]["demo_events"]
    # the base is a from_pretrained folder like the hub model's, made once under its fingerprint
    from audiopair.models.qwen2_audio import load_base

    model, processor = load_base(base["model_dir"])
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration" and processor.audio_token_id


def test_each_lora_row_lowers_its_own_tasks_validation_loss(tables):
    """Every row, mixtures included (their own loss: the mean over their tasks), ends below the base on the same
    validation examples. The base learned only half of the AC training clips (``acc_table.base.ac_share``), so the AC
    and ACC rows, whose targets are those clips' captions, have unseen captions to learn."""
    rep = tables["first"]
    own = {o["row"]: o for o in rep["own_task_val_loss"]}
    assert list(own) == ROWS
    assert [o["tasks"] for o in own.values()] == [["ac"], ["adc"], ["acc"], ["ac", "adc"], ["ac", "acc"]]
    for row, o in own.items():
        tasks = o["tasks"]
        assert o["base"] == pytest.approx(sum(rep["val_loss"][BASE][t] for t in tasks) / len(tasks))
        assert o["after"] == pytest.approx(sum(rep["val_loss"][row][t] for t in tasks) / len(tasks))
        assert o["after"] < o["base"] and o["lowered"], (row, o)
    assert {r["n_train"] for r in rep["rows"].values()} == {48}  # equal example budgets


def test_report_has_every_row_and_metric_and_is_logged(tables):
    rep, folder = tables["first"], tables["dir"]
    assert [r["row"] for r in rep["table2"]] == ROWS
    for r in rep["table2"]:
        assert set(TABLE2_METRICS) <= set(r)
        for m in TABLE2_METRICS:  # a missing metric is reported unavailable with a reason, never a silent 0
            assert (r[m] is None) == (m in rep["unavailable"]), (r["row"], m)
    assert all(isinstance(r["bleu_1"], float) and isinstance(r["cider_d"], float) for r in rep["table2"])
    assert [r["row"] for r in rep["table3"]] == [BASE] + [f"+ {r}" for r in ROWS]
    md = (folder / "report.md").read_text()
    for head in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE", "SPIDEr", "FENSE"):
        assert f" {head} |" in md
    for row in ROWS:
        assert f"| Qwen2-Audio + {row} |" in md and f"| + {row} |" in md
    for m in rep["unavailable"]:
        assert f"- {dict(spice='SPICE', spider='SPIDEr', fense='FENSE').get(m, m)}:" in md

    client, parents = _runs("attributes.run_name = 'acc-table2-demo'")
    assert len(parents) == 2
    first = parents[0]
    assert first.data.metrics["table2/ac-acc/cider_d"] == pytest.approx(rep["table2"][4]["cider_d"])
    assert first.data.metrics["table3/ac-adc/demo_events"] == pytest.approx(rep["table3"][4]["demo_events"])
    assert {a.path for a in client.list_artifacts(first.info.run_id, "report")} == {"report/report.md",
                                                                                   "report/report.json"}
    children = client.search_runs([first.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{first.info.run_id}'")
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == set(ROWS) | {BASE, RANDOM}
    for row in ROWS:
        m = by_name[row].data.metrics
        assert {"demo/ac/all/cider_d", "demo/ac/all/bleu_4", "demo_events/classify/all/accuracy",
                "val_loss/ac"} <= set(m)
        trains = client.search_runs([first.info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{by_name[row].info.run_id}'")
        assert [t.info.run_name for t in trains] == ["train"] and "train_loss" in trains[0].data.metrics


def test_a_second_job_reuses_the_base_and_finished_rows(tables):
    first, second = tables["first"], tables["second"]
    assert second["table2"] == first["table2"] and second["table3"] == first["table3"]
    assert second["seconds"] < first["seconds"]
    client, parents = _runs("attributes.run_name = 'acc-table2-demo'")
    children = client.search_runs([parents[1].info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parents[1].info.run_id}'")
    assert len(children) == 7 and all(c.data.tags["reused"] == "true" for c in children)
    assert all("demo/ac/all/cider_d" in c.data.metrics for c in children)
    # each reused run links to the first job's run of the same model, which keeps its predictions and training
    earlier = {c.info.run_name: c.info.run_id for c in client.search_runs(
        [parents[0].info.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")}
    assert {c.info.run_name: c.data.tags["reused_from"] for c in children} == earlier
    assert not first["reused"] and sorted(second["reused"]) == sorted([BASE, RANDOM, *ROWS])
    assert "reused from earlier jobs" in (tables["dir"] / "report.md").read_text()
    for c in children:  # nothing trained: no stage runs under the second job's models
        assert not client.search_runs([c.info.experiment_id], f"tags.mlflow.parentRunId = '{c.info.run_id}'")
    bases = [p for p in (tables["tmp"] / "work" / "models").iterdir() if not p.name.endswith("-random")]
    assert len(bases) == 1 and bases[0].name.startswith("acc-base-")


def test_budget_examples_are_equal_and_shared_by_a_rows_tasks(tiny_dataset):
    dcfg, _ = tiny_dataset
    ds = dcfg.dataset.output_dir
    n_ac = sum(1 for _ in open(f"{ds}/manifests/ac_train.jsonl"))
    one = budget_examples(ds, ["ac"], 2 * n_ac + 3, seed=0)  # more than the task has: cycled
    assert len(one) == 2 * n_ac + 3 and len({e["id"] for e in one}) == n_ac
    two = budget_examples(ds, ["ac", "acc"], 11, seed=0)
    assert len(two) == 11 and sum(e["task"] == "ac" for e in two) == 6 and sum(e["task"] == "acc" for e in two) == 5
    assert [e["id"] for e in budget_examples(ds, ["ac", "acc"], 11, seed=0)] == [e["id"] for e in two]
    with pytest.raises(ValueError, match="at least one task"):
        budget_examples(ds, [], 4, seed=0)


def test_markdown_marks_unavailable_metrics_and_never_prints_zero_for_them():
    row = {m: 0.5 for m in TABLE2_METRICS} | {"spice": None, "spider": None}
    model = {"ac": {m: row[m] for m in TABLE2_METRICS}, "classify": {"s": 0.25}, "val_loss": {"ac": 1.0, "adc": 2.0,
                                                                                             "acc": 3.0}}
    rep = {"name": "t", "dataset": "demo", "metrics": TABLE2_METRICS, "sets": ["s"], "seconds": 1.0,
           "unavailable": {"spice": "SPICE needs Java models\nmore", "spider": "SPIDEr needs SPICE"},
           "table2": [{"row": "AC", **row}], "table3": [{"row": BASE, "s": 0.25}, {"row": "+ AC", "s": 0.5}],
           "own_task_val_loss": [{"row": "AC", "tasks": ["ac"], "base": 1.0, "after": 0.5, "lowered": True}],
           "val_loss": {BASE: model["val_loss"], "AC": model["val_loss"]}, "base": model, "random": None,
           "settings": {"lora": {"r": 8, "alpha": 32, "dropout": 0.05}, "lr": 1e-3, "micro_batch": 8, "grad_accum": 1,
                        "budget": 48, "n_ac_test": 3, "n_classify": {"s": 4}}}
    md = report_markdown(rep)
    cells = ["0.5000"] * 7 + ["n/a", "n/a", "0.5000"]  # BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr, FENSE
    assert "| Qwen2-Audio + AC | " + " | ".join(cells) + " |" in md
    assert "- SPICE: SPICE needs Java models\n" in md and "| + AC | 50.00% |" in md and "1.000 -> 0.500" in md


def test_bad_table_configs_are_refused_before_any_work():
    from audiopair.config import ConfigError, load_config
    from audiopair.evaluate.acc_tables import run_tables

    config = REPO / "jobs" / "configs" / "acc_table2_demo.yaml"
    with pytest.raises(ConfigError, match=r"acc_table.rows: each task mixture once, got \['AC', 'AC'\]"):
        run_tables(load_config(config, ["acc_table.rows=[[ac], [ac]]"]), "no-run")
    with pytest.raises(ConfigError, match="finetune.tiny.enabled"):
        run_tables(load_config(config, ["finetune.tiny.enabled=false"]), "no-run")


def test_the_base_learns_a_seeded_half_of_the_ac_training_clips(tiny_dataset, tmp_path):
    from audiopair.config import load_config
    from audiopair.evaluate.acc_tables import base_examples
    from audiopair.train.acc_table import base_share
    from audiopair.data.manifest import load_examples

    dcfg, _ = tiny_dataset
    ds = dcfg.dataset.output_dir
    ac = load_examples(ds, "train", {"ac": 1.0}, 0)
    half = base_share(ac, 0.5, seed=0)
    assert len(half) == round(len(ac) / 2) and {e["id"] for e in half} < {e["id"] for e in ac}
    assert [e["id"] for e in base_share(ac[::-1], 0.5, seed=0)] == [e["id"] for e in half][::-1]  # order-free
    assert {e["id"] for e in base_share(ac, 0.5, seed=1)} != {e["id"] for e in half}
    assert len(base_share(ac, 1.0, seed=0)) == len(ac) and len(base_share(ac, 1e-6, seed=0)) == 1
    cfg = load_config(REPO / "jobs" / "configs" / "acc_table2_demo.yaml",
                      [f"dataset.output_dir={ds}", f"work_dir={tmp_path}", "acc_table.base.label_per_kind=0"])
    got, _ = base_examples(cfg)
    mine = base_share(ac, 0.5, seed=cfg.train.seed)
    assert sorted(e["id"] for e in got["train"]) == sorted(e["id"] for e in mine)  # the rest never reach the base
    assert len(got["val"]) == sum(1 for _ in open(f"{ds}/manifests/ac_val.jsonl"))
