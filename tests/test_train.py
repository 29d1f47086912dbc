"""Ray Train + DeepSpeed on CPU: the ADIFF recipe learns, resumes a restarted run, survives a killed worker."""

import json

from pathlib import Path

import pytest

from audiopair.config import load_config
from audiopair.models.tokenizer import train_tokenizer
from audiopair.data.manifest import load_examples
from audiopair.train.adiff import make_recipe
from audiopair.train.engine import KillOnce, deepspeed_config, fit, lr_lambda, micro_batches
from conftest import REPO, TINY

TINY_MODEL = [
    "model.prefix_len=8", "model.prompt_len=16", "model.mapper_layers=2", "model.mapper_heads=4", "model.cross_layers=1",
    "model.lm_pretrained=null", "model.lm_layers=2", "model.lm_dim=64", "model.lm_heads=4", "model.lm_positions=256",
    "model.encoder.pretrained=null", "model.encoder.frames=201", "model.encoder.spec_size=128",
    "model.encoder.embed_dim=32", "model.encoder.depths=[1,1]", "model.encoder.heads=[2,4]",
    "model.encoder.num_classes=27", "model.encoder.clip_pool=max",
]


def _setup(tiny_dataset, tmp_path, *extra):
    dcfg, _ = tiny_dataset
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + TINY_MODEL + [
        f"dataset.output_dir={dcfg.dataset.output_dir}", f"train.storage_path={tmp_path / 'runs'}",
        "train.micro_batch=8", "train.max_answer_tokens=32", "train.zero_stage=1", "train.num_workers=2",
        "train.task_weights={adiff: 0.34, position: 1.0}", *extra])
    ex = load_examples(cfg.dataset.output_dir, "train", {"adiff": 1, "position": 1}, 0)
    tok = tmp_path / "tok"
    train_tokenizer([e["target"] for e in ex] + [e["prompt"] for e in ex], 512, tok)
    return cfg, {"cfg": cfg, "tokenizer": str(tok), "init": None}


def test_epoch_curves_survive_evicted_checkpoints(tmp_path):
    """Ray Train's result holds the metrics of kept checkpoints only (train.keep_checkpoints); MLflow's per-epoch
    curves come from the history the training loop carries in every report."""
    import types

    import mlflow
    import pandas as pd

    from audiopair import tracking

    history = [{"epoch": e, "train_loss": 3.0 - e, "val_loss": 2.0 - e / 2, "lr": 1e-3, "samples_per_s": 10.0}
               for e in range(3)]
    kept = pd.DataFrame([{**history[2], "history": json.dumps(history)}])  # epochs 0 and 1 were evicted
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run(experiment_id=mlflow.create_experiment("curves")) as run:  # not an earlier test's
        tracking.log_epochs(types.SimpleNamespace(metrics_dataframe=kept))
    curve = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in curve] == [(0, 2.0), (1, 1.5), (2, 1.0)]


def test_lr_schedule_and_sharding():
    f = lr_lambda("cosine", warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-9)
    g = lr_lambda("step", warmup=0, total=100, step_every=10)
    assert g(9) == 1.0 and g(10) == 0.5 and g(25) == 0.25
    ex = list(range(23))
    b0, b1 = micro_batches(ex, 0, 2, 4, epoch=0, seed=0, shuffle=True), micro_batches(ex, 1, 2, 4, epoch=0, seed=0, shuffle=True)
    assert len(b0) == len(b1) == 2  # equal step counts on every rank
    seen = [x for b in b0 + b1 for x in b]
    assert len(seen) == len(set(seen)) == 16  # disjoint shards
    assert micro_batches(ex, 0, 2, 4, 1, 0, True) != b0  # reshuffled per epoch
    cfg = load_config(None, ["train.zero_stage=2", "train.micro_batch=3", "train.grad_accum=4"]).train
    ds = deepspeed_config(cfg, on_gpu=False)
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 4 and ds["bf16"]["enabled"] is False
    assert deepspeed_config(cfg, on_gpu=True)["bf16"]["enabled"] is True


def test_finetune_learns_and_a_restarted_run_resumes(tiny_dataset, tmp_path):
    cfg, extra = _setup(tiny_dataset, tmp_path, "train.stages=[{name: finetune, epochs: 2, lr: 0.003, warmup_steps: 2}]")
    res = fit(make_recipe, cfg.train, "finetune", "resume-run", extra={**extra, "stage": "finetune"})
    assert res.error is None
    df = res.metrics_dataframe.sort_values("epoch")
    assert list(df["epoch"]) == [0, 1] and set(df["world"]) == {2}
    assert [row["epoch"] for row in json.loads(df["history"].iloc[-1])] == [0, 1]  # every epoch rides along
    assert df["train_loss"].iloc[1] < df["train_loss"].iloc[0] - 0.3  # it learns
    assert df["val_loss"].iloc[1] < df["val_loss"].iloc[0]
    ckpt = Path(res.checkpoint.path)
    assert (ckpt / "model" / "model.safetensors").exists() and (ckpt / "train_state_rank1.pt").exists()
    # The same job run again with one more epoch resumes after epoch 1 instead of starting over.
    cfg2, _ = _setup(tiny_dataset, tmp_path, "train.stages=[{name: finetune, epochs: 3, lr: 0.003, warmup_steps: 2}]")
    res2 = fit(make_recipe, cfg2.train, "finetune", "resume-run", extra={**extra, "stage": "finetune"})
    assert res2.error is None and res2.metrics["epoch"] == 2 and res2.metrics["start_epoch"] == 2
    assert res2.metrics["train_loss"] < df["train_loss"].iloc[0]


def test_killed_worker_is_replaced_and_training_resumes(tiny_dataset, tmp_path):
    cfg, extra = _setup(tiny_dataset, tmp_path, "train.stages=[{name: grounding, epochs: 3, lr: 0.001}]",
                        "train.max_failures=1")
    marker = tmp_path / "killed.txt"
    res = fit(make_recipe, cfg.train, "grounding", "kill-run",
              extra={**extra, "stage": "grounding", "step_hook": KillOnce(2, 1, str(marker))})
    assert marker.exists(), "the fault was never injected"
    print(res.metrics_dataframe)
    assert res.error is None and res.metrics["epoch"] == 2
    # The replacement group resumed from a reported checkpoint (epoch 1's, or epoch 0's if the controller had not
    # registered the last report when the worker died), not from scratch.
    assert res.metrics["start_epoch"] >= 1


def test_a_finished_stage_is_not_trained_again(tiny_dataset, tmp_path):
    from audiopair.config import StageConfig
    from audiopair.train.engine import finished_stage, fit_stage, local_dir

    cfg, extra = _setup(tiny_dataset, tmp_path, "train.num_workers=1", "train.val_limit=5")
    stage = StageConfig(name="grounding", epochs=1, lr=1e-3, micro_batch=16)
    assert finished_stage(cfg.train, "once") is None
    ckpt, metrics, result = fit_stage(make_recipe, cfg.train, "grounding", "once", {**extra, "stage": "grounding"},
                                      stage)
    assert result is not None and metrics["epoch"] == 0 and metrics["steps"] >= 1
    assert (local_dir(ckpt) / "model" / "adiff.json").exists()
    again, metrics2, result2 = fit_stage(make_recipe, cfg.train, "grounding", "once",
                                         {**extra, "stage": "grounding"}, stage)
    assert result2 is None and again.path == ckpt.path and metrics2 == metrics
    # the job's wrapper says so, instead of announcing epochs it will not train
    from audiopair import tracking
    from audiopair.train.adiff import logged_stage

    tracking.setup(tmp_path / "work", "finished-stage")
    said = []
    third = logged_stage(make_recipe, cfg.train, "grounding", "once", {**extra, "stage": "grounding"}, stage, None,
                         "once", said.append)
    assert third.path == ckpt.path and "nothing is trained" in said[0] and "epochs at lr" not in " ".join(said)
