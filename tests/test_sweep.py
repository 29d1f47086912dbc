"""jobs/sweep_adiff.py: the ADIFF §5.3 scaling sweep on Ray Tune (Train V2 trials, ASHA, resume, MLflow, Table 5,
Figure 4), on the tiny dataset with two tiny local "GPT-2 sizes" (saved random models, loaded through the same code
path as a hub GPT-2), so no stage-1 pretraining runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest

from audiopair.config import ConfigError, load_config
from conftest import REPO, TINY
from test_train import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tiny_dataset, tmp_path, *extra):
    dcfg, _ = tiny_dataset
    return load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + TINY_MODEL + [
        f"dataset.output_dir={dcfg.dataset.output_dir}", f"train.storage_path={tmp_path / 'runs'}",
        f"work_dir={tmp_path / 'work'}", "train.unimodal.enabled=false", "train.num_workers=1",
        "train.micro_batch=16", "train.max_answer_tokens=32", "train.val_limit=48",
        "train.task_weights={adiff: 0.3}", *extra])


def _tiny_gpt2(folder: Path, texts: list[str], dim: int) -> str:
    """A random GPT-2 with its tokenizer, saved as a hub model would be."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from audiopair.models.tokenizer import train_tokenizer

    tok = train_tokenizer(texts, 400, folder)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=dim, n_layer=1, n_head=2,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sizes(tiny_dataset, tmp_path_factory):
    from audiopair.train.pretrain import train_corpus

    dcfg, _ = tiny_dataset
    texts, tmp = train_corpus(dcfg.dataset.output_dir), tmp_path_factory.mktemp("lms")
    return {"tiny-a": _tiny_gpt2(tmp / "a", texts, 32), "tiny-b": _tiny_gpt2(tmp / "b", texts, 64)}


def _sweep_args(sizes: dict, *extra) -> list[str]:
    return [f"sweep.sizes={json.dumps({n: {'lm_pretrained': p} for n, p in sizes.items()})}",
            "sweep.name=test-sweep", "sweep.eval_limit=4", "sweep.metrics=[bleu_4, cider_d]", *extra]


def test_bad_search_space_keys_fail_before_anything_runs(tiny_dataset, tmp_path, sizes):
    from audiopair.train.sweep_grid import check_grid

    def error(*extra) -> str:
        with pytest.raises(ConfigError) as e:
            check_grid(_cfg(tiny_dataset, tmp_path, *_sweep_args(sizes, *extra)))
        return str(e.value)

    msg = error("sweep.space={train.stages.0.epochz: [1, 2]}")
    assert "train.stages.0.epochz" in msg and "unknown key" in msg and "epochs" in msg  # names it, says what is allowed
    assert "model.lm_dimm" in error("sweep.space={model.lm_dimm: [32]}")
    assert "train.stages.7.epochs" in error("sweep.space={train.stages.7.epochs: [1]}")
    assert "dataset.sample_rate" in error("sweep.space={dataset.sample_rate: [8000, 16000]}")  # shared by the trials
    assert "train.stages.0.lr" in error("sweep.space={train.stages.0.lr: [-1.0]}")  # a value the key refuses
    assert "sweep.sizes.big.lm_layrs" in error('sweep.sizes={big: {lm_layrs: 4}}')
    assert "sweep.stages" in error("sweep.stages=[pretraining]")
    # the job refuses it too, before the dataset build or Ray
    import runpy

    job = runpy.run_path(str(REPO / "jobs" / "sweep_adiff.py"))
    dcfg, _ = tiny_dataset
    assert job["main"]([f"dataset.output_dir={tmp_path / 'never-built'}", f"work_dir={tmp_path / 'w'}",
                        "sweep.space={model.prefix_lenn: [4]}"]) == 2
    assert not (tmp_path / "never-built").exists() and not (tmp_path / "w").exists()


def test_scheduler_is_asha_on_trial_epochs_or_fifo_and_a_bad_one_names_the_choices():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from audiopair.train.sweep import scheduler

    demo = REPO / "jobs" / "configs" / "demo.yaml"
    asha = scheduler(load_config(demo).sweep, longest=4)
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "trial_epoch" and asha._max_t == 5
    assert type(scheduler(load_config(demo, ["sweep.scheduler=fifo"]).sweep, 4)) is FIFOScheduler
    assert load_config(REPO / "jobs" / "configs" / "sweep_adiff_acd.yaml").sweep.scheduler == "fifo"  # §5.3: all run
    with pytest.raises(ConfigError, match=r"sweep\.scheduler.*asha.*fifo"):
        load_config(demo, ["sweep.scheduler=hyperband"])


class Interrupt:
    """A Tune callback that presses Ctrl+C (SIGUSR1, which Tune treats the same) when the first trial ends, once:
    Tune saves its callbacks with the experiment, so the restored sweep gets this one back."""

    def __new__(cls, marker: Path):
        import ray.tune

        class _Interrupt(ray.tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                if not marker.exists():
                    marker.write_text(trial.trial_id)
                    os.kill(os.getpid(), __import__("signal").SIGUSR1)

        return _Interrupt()


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sweep_asha_interrupt_resume_mlflow_table_and_figure(tiny_dataset, tmp_path, sizes, monkeypatch, capsys):
    import runpy

    from audiopair.train import sweep

    work, runs, marker = tmp_path / "work", tmp_path / "runs", tmp_path / "interrupted.txt"
    cfg = _cfg(tiny_dataset, tmp_path)
    argv = [f"dataset.output_dir={cfg.dataset.output_dir}", f"train.storage_path={runs}", f"work_dir={work}",
            *TINY[1:], *TINY_MODEL, "train.unimodal.enabled=false", "train.num_workers=1", "train.micro_batch=16",
            "train.max_answer_tokens=32", "train.val_limit=48", "train.task_weights={adiff: 0.3}",
            "evaluate.decoding.max_new_tokens=24",
            # the LM trains (finetune), so a learning rate of 1e-7 is clearly behind 3e-3 after one epoch
            "train.stages=[{name: finetune, epochs: 2, lr: 0.003, warmup_steps: 2}]", "sweep.stages=[finetune]",
            *_sweep_args(sizes, "sweep.space={train.stages.0.lr: [0.003, 1.0e-7]}")]
    job = runpy.run_path(str(REPO / "jobs" / "sweep_adiff.py"))
    run_sweep = sweep.run_sweep
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg, parent, say: run_sweep(cfg, parent, say, (Interrupt(marker),)))

    # 1. interrupted when its first trial ends: Tune saves the experiment, the job says how to resume
    assert job["main"](argv) == 130
    first = marker.read_text()
    train_run = runs / f"test-sweep-{first}-finetune"  # the finished (or ASHA-stopped) trial's Ray Train run
    done_before, history_before = _files(train_run), (runs / "test-sweep" / first / "progress.csv").read_text()
    assert "epoch_0000/model/model.safetensors" in done_before and not (work / "reports" / "test-sweep").exists()

    # 2. the same command resumes: the finished trial is not trained again, the others run
    assert job["main"](argv) == 0
    assert _files(train_run) == done_before
    assert (runs / "test-sweep" / first / "progress.csv").read_text() == history_before  # no epoch reported again
    trials = json.loads((work / "reports" / "test-sweep" / "trials.json").read_text())
    by = {(t["size"], t["space"]["train.stages.0.lr"]): t for t in trials}
    assert len(trials) == 4 and first in {t["trial_id"] for t in trials}
    for size in sizes:  # every 3e-3 trial learns over its 2 epochs; ASHA stops tiny-b's 1e-7 trial after one
        good = by[size, 0.003]
        assert good["status"] == "completed" and [h["trial_epoch"] for h in good["history"]] == [1, 2]
        assert good["history"][-1]["val_loss"] < good["history"][0]["val_loss"] - 0.1
        assert set(good["scores"]) >= {"tier1", "tier2", "tier3"} and good["scores"]["tier1"]["bleu_4"] >= 0
    assert by["tiny-b", 1e-7]["status"] == "stopped at epoch 1" and by["tiny-b", 1e-7]["epochs"] == 1
    assert by["tiny-b", 1e-7]["history"][0]["val_loss"] > by["tiny-a", 0.003]["history"][0]["val_loss"]

    table = (work / "reports" / "test-sweep" / "table5.md").read_text()
    assert "| Task | LM | lr | epochs trained | Tier 1 bleu_4 | Tier 1 cider_d | Tier 2 bleu_4" in table
    assert table.count("\n| ") == 5 and "| tiny-b | 1e-07 | 1 (stopped by ASHA) |" in table
    assert "| demo | tiny-a | 0.003 | 2 | " in table
    png = work / "reports" / "test-sweep" / "figure4.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("audiopair-demo")

    def children():
        runs_ = client.search_runs([exp.experiment_id])
        parents = [r for r in runs_ if r.info.run_name == "test-sweep"]
        assert len(parents) == 1  # the resumed sweep reopened its parent run
        return parents[0], [r for r in runs_ if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]

    parent, kids = children()
    assert sorted(k.data.tags["trial_id"] for k in kids) == sorted(t["trial_id"] for t in trials)
    stopped = next(k for k in kids if k.data.tags["trial_id"] == by["tiny-b", 1e-7]["trial_id"])
    assert stopped.data.tags["status"] == "stopped at epoch 1" and stopped.data.params["size"] == "tiny-b"
    good = next(k for k in kids if k.data.tags["trial_id"] == by["tiny-a", 0.003]["trial_id"])
    assert [m.step for m in client.get_metric_history(good.info.run_id, "val_loss")] == [1, 2]
    assert good.data.metrics["demo/adiff/tier1/bleu_4"] == by["tiny-a", 0.003]["scores"]["tier1"]["bleu_4"]
    assert good.data.tags["model_uri"] == f"runs:/{good.info.run_id}/model"  # each trial's model, in its run
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(good.info.run_id, "model")}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report/table5.md", "report/figure4.png", "report/trials.json"}

    # 3. a finished sweep run again trains nothing and keeps one child run per trial
    train_runs = {t["trial_id"]: _files(runs / f"test-sweep-{t['trial_id']}-finetune") for t in trials}
    assert job["main"](argv) == 0
    assert {t: _files(runs / f"test-sweep-{t}-finetune") for t in train_runs} == train_runs
    assert len(children()[1]) == 4

    # 4. the same sweep name with another grid is refused, not mixed into the finished one
    capsys.readouterr()
    assert job["main"](argv[:-1] + ["sweep.space={train.stages.0.lr: [0.01]}"]) == 2
    assert "started with another grid" in capsys.readouterr().err
