"""MLflow as the hub, against a real ``mlflow server``: a finished stage's model folder and system metrics in its
run, a model registered with its scores, evaluated again by ``models:/`` and ``runs:/`` URI with the folder's scores;
models logged by reference; "metric unavailable" said once."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

import mlflow
import pytest

from audiopair import tracking
from conftest import REPO, TINY, mlflow_server
from test_train import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    with mlflow_server(folder) as url:
        yield url, folder


@pytest.fixture
def on_server(server, monkeypatch):
    """The server as the user's MLFLOW_TRACKING_URI; returns its folder (``server-artifacts`` is its store)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server[0])
    return server[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stage_run_holds_its_model_and_system_metrics(on_server, tiny_checkpoint, tmp_path, monkeypatch):
    """logged_stage around a stand-in for Ray Train (a finished checkpoint on disk): the model folder is uploaded
    through the server's artifact store, and MLflow's system-metrics monitor samples while the stage runs."""
    from ray.train import Checkpoint

    from audiopair.config import StageConfig, load_config
    from audiopair.train import engine
    from audiopair.train.adiff import logged_stage

    ckpt_dir = tmp_path / "runs" / "hub-adiff-finetune" / "checkpoint_000001"
    shutil.copytree(tiny_checkpoint, ckpt_dir / "model")
    tracking.setup(tmp_path / "work", "hub-stage")
    mlflow.system_metrics.set_system_metrics_sampling_interval(0.05)  # MLflow's default is 10 s
    client = mlflow.MlflowClient()

    def stand_in(recipe, tc, stage_name, run, extra, stage_cfg):
        """Returns a finished checkpoint once the monitor has logged a sample to the open run (the wait is bounded
        only so that a broken monitor fails the test instead of hanging it)."""
        run_id = mlflow.active_run().info.run_id
        deadline = time.monotonic() + 120
        while not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics):
            assert time.monotonic() < deadline, "no system metrics were logged while the stage ran"
            time.sleep(0.05)
        return Checkpoint.from_directory(str(ckpt_dir)), {"train_loss": 1.5, "val_loss": 2.5}, None

    monkeypatch.setattr(engine, "fit_stage", stand_in)
    monkeypatch.setattr(engine, "finished_stage", lambda tc, run: False)
    try:
        tc = load_config(None, ["train.model_artifacts=auto"]).train
        with tracking.run("hub") as parent:
            logged_stage(None, tc, "finetune", "hub-adiff-finetune", {}, StageConfig(name="finetune", epochs=1),
                         parent.info.run_id, "adiff-finetune", say=lambda m: None)
    finally:
        mlflow.system_metrics.set_system_metrics_sampling_interval(None)
    stage = client.search_runs([parent.info.experiment_id], "attributes.run_name = 'adiff-finetune'")[0]
    tags, metrics = stage.data.tags, stage.data.metrics
    assert tags["model_uri"] == f"runs:/{stage.info.run_id}/model" and tags["model_artifacts"] == "upload"
    assert tags["checkpoint"] == str(ckpt_dir) and metrics["final_val_loss"] == 2.5
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    logged = {a.path for a in client.list_artifacts(stage.info.run_id, "model")}
    assert {"model/adiff.json", "model/model.safetensors", "model/tokenizer"} <= logged
    assert any((on_server / "server-artifacts").rglob("model.safetensors"))  # stored by the server, not here
    got = tracking.resolve_model(tags["model_uri"], tmp_path / "cache")
    assert _files(got) == _files(tiny_checkpoint)  # byte for byte, through the server's artifact store

    off = tc.model_copy(update={"system_metrics": False})
    with tracking.run("hub-off") as parent2:
        monkeypatch.setattr(engine, "fit_stage", lambda *a: (Checkpoint.from_directory(str(ckpt_dir)), {}, None))
        logged_stage(None, off, "finetune", "hub-adiff-finetune", {}, StageConfig(name="finetune", epochs=1),
                     parent2.info.run_id, "quiet", say=lambda m: None)
    quiet = client.search_runs([parent.info.experiment_id], "attributes.run_name = 'quiet'")[0]
    assert not any(k.startswith("system/") for k in quiet.data.metrics)  # the off switch


def test_the_rank0_worker_charts_its_own_machine_into_the_stage_run(on_server, tiny_dataset, tmp_path):
    """A real one-worker Ray Train stage: with a tracking server the driver hands rank 0 the run, and MLflow's
    monitor in the worker logs ``system/rank0/...`` (on a cluster: the GPU node, not the head node)."""
    from audiopair.train.adiff import make_recipe
    from audiopair.train.engine import fit
    from test_train import _setup

    cfg, extra = _setup(tiny_dataset, tmp_path, "train.num_workers=1", "train.val_limit=16",
                        "train.stages=[{name: finetune, epochs: 1, lr: 0.003}]")
    tracking.setup(tmp_path / "work", "hub-rank0")
    mlflow.system_metrics.set_system_metrics_sampling_interval(0.05)
    try:
        with tracking.run("stage") as stage:  # no monitor on the driver: what is charted comes from the worker
            spec = tracking.worker_system_metrics()
            assert spec["run_id"] == stage.info.run_id and spec["interval"] == 0.05
            res = fit(make_recipe, cfg.train, "finetune", "rank0-run",
                      extra={**extra, "stage": "finetune", "system_metrics": spec})
    finally:
        mlflow.system_metrics.set_system_metrics_sampling_interval(None)
    assert res.error is None
    metrics = mlflow.MlflowClient().get_run(stage.info.run_id).data.metrics
    assert "system/rank0/cpu_utilization_percentage" in metrics
    assert not any(k.startswith("system/cpu") for k in metrics)


def _evaluate_job():
    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_registered_model_evaluates_by_uri_with_the_folders_scores(on_server, tiny_dataset, tiny_checkpoint,
                                                                   tmp_path, capsys):
    from audiopair.config import load_config
    from audiopair.evaluate.run import evaluate_checkpoint

    dcfg, _ = tiny_dataset
    args = TINY + TINY_MODEL + ["model.lm_positions=320", f"dataset.output_dir={dcfg.dataset.output_dir}",
                                f"work_dir={tmp_path / 'work'}", "experiment=hub-eval", "evaluate.limit=2",
                                "evaluate.metrics=[bleu_1, cider_d]", "evaluate.decoding.max_new_tokens=8",
                                "evaluate.classify=[]"]
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", args)
    tracking.setup(cfg.work_dir, "hub-eval")
    with tracking.run("train") as trained:  # what a training job leaves: the model, its scores, a version
        ev = evaluate_checkpoint(tiny_checkpoint, cfg, "tiny", say=lambda m: None)
        assert tracking.log_model(tiny_checkpoint, "auto") == "upload"  # the server proxies an artifact store
    version = tracking.register_model(f"runs:/{trained.info.run_id}/model", "hub-tiny",
                                      tags=ev.score_tags(cfg.dataset.name))
    assert version.version == "1"
    client = mlflow.MlflowClient()
    tags = client.get_model_version("hub-tiny", "1").tags
    assert tags["demo/adiff/all/cider_d"] == f"{ev.value('adiff', 'all', 'cider_d'):.4f}"
    assert set(tags) == {"demo/adiff/all/bleu_1", "demo/adiff/all/cider_d"}
    assert tracking.register_model(f"runs:/{trained.info.run_id}/model", "hub-tiny").version == "2"
    client.set_registered_model_alias("hub-tiny", "champion", "1")

    job = _evaluate_job()
    refs = {"folder": str(tiny_checkpoint), "registered": "models:/hub-tiny/1",
            "alias": "models:/hub-tiny@champion", "run": f"runs:/{trained.info.run_id}/model"}
    assert job.main(args + ["evaluate.checkpoints={" + ", ".join(f"{k}: '{v}'" for k, v in refs.items()) + "}"]) == 0
    scores = json.loads((tmp_path / "work" / "reports" / "hub-eval-evaluate" / "scores.json").read_text())
    def values(name: str) -> dict:
        return {g: r["values"] for g, r in scores[name]["reports"]["adiff"].items()}

    want = values("folder")
    assert sorted(want) == ["all", "tier1", "tier2", "tier3"]
    assert want["all"]["cider_d"] == pytest.approx(ev.value("adiff", "all", "cider_d"))
    for name in ("registered", "alias", "run"):  # same weights, same greedy decoding: the same scores
        assert values(name) == want, name
    cache = tmp_path / "work" / "models" / "mlflow"
    assert _files(cache / "models_hub-tiny_1") == _files(tiny_checkpoint)  # the alias was pinned to version 1
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["hub-eval"], output_format="list")}
    assert runs["registered/evaluate"].data.tags["model_uri"] == "models:/hub-tiny/1"
    assert "model_uri" not in runs["folder/evaluate"].data.tags
    capsys.readouterr()

    assert job.main(args + ["evaluate.checkpoints={x: 'models:/no-such-model/1'}"]) == 2
    err = capsys.readouterr().err
    assert "evaluate.checkpoints.x: models:/no-such-model/1: MLflow cannot resolve it" in err


def test_reference_mode_logs_where_the_model_lies(tiny_checkpoint, tmp_path):
    """``train.model_artifacts=reference``: only ``model/reference.json`` is logged; resolving the URI follows it
    back to the folder (on a cluster: the s3:// checkpoint under storage_path). A local store has artifacts."""
    tracking.setup(tmp_path / "work", "hub-ref")
    with tracking.run("big") as big:
        assert tracking.has_artifact_store()  # sqlite: artifacts beside the database
        assert tracking.worker_system_metrics() is None  # workers write to no local store file
        assert tracking.log_model(tiny_checkpoint, "reference") == "reference"
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(big.info.run_id, "model")] == ["model/reference.json"]
    ref = json.loads(Path(client.download_artifacts(big.info.run_id, "model/reference.json", str(tmp_path))).read_text())
    assert ref["source"] == str(tiny_checkpoint.resolve()) and "adiff.json" in ref["files"]
    assert ref["bytes"] == sum((tiny_checkpoint / f).stat().st_size for f in ref["files"])
    assert tracking.resolve_model(f"runs:/{big.info.run_id}/model", tmp_path / "cache") == tiny_checkpoint.resolve()
    assert tracking.resolve_model(tiny_checkpoint, tmp_path / "cache") == tiny_checkpoint  # a folder stays itself
    with pytest.raises(FileNotFoundError, match="nowhere"):
        with tracking.run("missing"):
            tracking.log_model(tmp_path / "nowhere", "upload")
    with pytest.raises(ValueError, match="runs:/"):
        tracking.register_model(str(tiny_checkpoint), "x")


def test_auto_logs_a_reference_when_the_server_has_no_artifact_store(tiny_checkpoint, tmp_path, monkeypatch):
    """A server that hands out plain paths has no store: uploading would only copy into this machine's disk."""
    with mlflow_server(tmp_path, serve_artifacts=False) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        tracking.setup(tmp_path / "work", "hub-no-store")
        with tracking.run("big") as big:
            assert not tracking.has_artifact_store()
            assert tracking.log_model(tiny_checkpoint, "auto") == "reference"
        assert [p.name for p in (tmp_path / "client-artifacts").rglob("*") if p.is_file()] == ["reference.json"]
        assert tracking.resolve_model(f"runs:/{big.info.run_id}/model", tmp_path / "cache") == tiny_checkpoint.resolve()


def test_the_job_finds_each_variants_final_model(tiny_checkpoint, tmp_path):
    """train_adiff's run tree (job → variant → stage) read back: the model of each variant's last stage."""
    from audiopair.train.adiff import final_model_uris

    tracking.setup(tmp_path / "work", "hub-tree")
    stage_ids = {}
    with tracking.run("job") as job:
        for variant in ("adiff", "language_only"):
            with tracking.run(variant, parent=job.info.run_id, tags={"variant": variant}) as vrun:
                for stage in ("grounding", "finetune"):
                    with tracking.run(f"{variant}-{stage}", parent=vrun.info.run_id, tags={"stage": stage}) as srun:
                        if variant == "adiff":  # language_only's stages logged no model
                            tracking.log_model(tiny_checkpoint, "reference")
                        stage_ids[variant, stage] = srun.info.run_id
    assert final_model_uris(job.info.run_id, ["adiff", "language_only"], "finetune") == \
        {"adiff": f"runs:/{stage_ids['adiff', 'finetune']}/model"}


def test_metric_unavailable_is_said_once_per_job(caplog):
    from audiopair.evaluate import score

    with caplog.at_level(logging.WARNING, logger=score.__name__):
        for _ in range(3):  # three models scored in one job
            score.warn_once("spice-test", "SPICE needs Stanford CoreNLP")
            score.warn_once("fense-test", "FENSE needs hub models")
    said = [r.getMessage() for r in caplog.records if "-test unavailable" in r.getMessage()]
    assert said == ["metric spice-test unavailable: SPICE needs Stanford CoreNLP",
                    "metric fense-test unavailable: FENSE needs hub models"]
