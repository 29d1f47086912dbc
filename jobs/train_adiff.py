"""Train ADIFF through its stages, compare it with the other variants, and score them all on the test split.

    python jobs/train_adiff.py                                        # the demo: build, stage 1-3, adiff vs language_only
    python jobs/train_adiff.py --config jobs/configs/adiff_acd.yaml train.num_workers=8 train.use_gpu=true
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python jobs/train_adiff.py

Builds the dataset when it is missing (a finished build is reused), trains every ``train.variants`` model (stage 1
when ``train.unimodal.enabled``, then ``train.stages``), evaluates each on ``evaluate.split``, logs everything to
MLflow (one parent run, a child per model and stage, each stage's model folder as its run's ``model/`` artifacts)
and prints one table per task: model x tier x metric. Each variant's final model is registered in the Model
Registry as ``<train.register_as or train.run_name>-<variant>`` with its scores as version tags, so
``jobs/evaluate.py evaluate.checkpoints='{a: models:/adiff-demo-adiff/1}'`` evaluates it again. Re-running with the
same ``train.run_name`` skips finished stages and resumes an interrupted one.
"""

import sys
from pathlib import Path

import mlflow

from audiopair import job, tracking
from audiopair.evaluate.metrics import headline
from audiopair.evaluate.run import comparison_table, evaluate_models
from audiopair.train.adiff import final_model_uris, train_adiff
from audiopair.train.engine import local_dir


@job.entry(__doc__)
def main(run: job.Job) -> int:
    cfg, say = run.cfg, run.say
    run.build_dataset()
    run.start_mlflow()
    with tracking.run(cfg.train.run_name, tags={"job": "train_adiff"}) as parent:
        tracking.log_config(cfg)
        checkpoints = train_adiff(cfg, say)
        models = {variant: local_dir(ckpt) / "model" for variant, ckpt in checkpoints.items()}
        results, md = evaluate_models(
            models, cfg, Path(cfg.work_dir) / "reports" / cfg.train.run_name,
            f"{cfg.train.run_name}: {', '.join(models)} on {cfg.dataset.name}/{cfg.evaluate.split}", say,
            parallel=cfg.train.parallel)
        if cfg.train.register_models and cfg.train.stages:
            uris = final_model_uris(parent.info.run_id, list(checkpoints), cfg.train.stages[-1].name)
            for ev in results:
                if ev.name in uris:
                    v = tracking.register_model(uris[ev.name], f"{cfg.train.register_as or cfg.train.run_name}-"
                                                f"{ev.name}", tags=ev.score_tags(cfg.dataset.name))
                    say(f"[{ev.name}] registered as models:/{v.name}/{v.version}")
        mlflow.log_metric("job_seconds", run.seconds())

    for task in cfg.evaluate.tasks:
        print(f"\n{task} on {cfg.dataset.name}/{cfg.evaluate.split}\n" +
              comparison_table(results, task, headline(cfg.evaluate.metrics)))
    say(f"done: report {md}, MLflow run {parent.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
