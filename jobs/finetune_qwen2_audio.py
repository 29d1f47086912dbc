"""Finetune Qwen2-Audio with LoRA (or fully) on a task mixture, as in the ACC paper (§3.2, Table 2).

    python jobs/finetune_qwen2_audio.py                  # the demo: a tiny random Qwen2-Audio, LoRA on AC + ACC
    python jobs/finetune_qwen2_audio.py --config jobs/configs/qwen_ac_acc.yaml train.num_workers=8 train.use_gpu=true
    python jobs/finetune_qwen2_audio.py --config jobs/configs/qwen_ac_acc.yaml finetune.method=full
    python jobs/finetune_qwen2_audio.py --config jobs/configs/acc_table2_demo.yaml   # ACC Tables 2 and 3, miniature

Builds the dataset when it is missing, trains on Ray Train + DeepSpeed (ZeRO-2 for LoRA, ZeRO-3 for full), logs
parameters, per-epoch loss / learning rate / tokens per second, system metrics and the model folder (``model/``: the
adapter for LoRA) to MLflow, registers it (``train.register_as``, default ``finetune.run_name``), optionally merges the
adapter into a standalone model (``finetune.merge=true``), then generates for ``finetune.evaluate_tasks`` on
``evaluate.split`` and scores it like jobs/evaluate.py. Re-running with the same ``finetune.run_name`` resumes.

With ``acc_table.enabled`` (acc_table2_demo.yaml) the job is ACC Tables 2 and 3 in miniature instead: a stand-in
base pretrained here, a LoRA row per task mixture on equal example budgets, all scored on AC captioning and
classification; the report goes to ``<work_dir>/reports/<acc_table.name>/`` and MLflow (one child run per model).
A second run reuses the base, finished rows and their scores (audiopair.evaluate.acc_tables).
"""

import sys
from pathlib import Path

import mlflow

from audiopair import job, tracking
from audiopair.data.manifest import read_manifest
from audiopair.train.engine import checkpoint_uri, local_dir


def ensure_base(cfg, say) -> None:
    """The demo's tiny base model is made on first use; a real one must load (checked here, not on 8 workers)."""
    from transformers import AutoProcessor

    from audiopair.models.qwen2_audio import make_tiny

    ft = cfg.finetune
    if ft.tiny.enabled and not Path(ft.model).exists():
        texts = [r.target for p in sorted((Path(cfg.dataset.output_dir) / "manifests").glob("*_train.jsonl"))
                 for r in read_manifest(p)]
        make_tiny(ft.model, texts, ft.tiny)
        say(f"made a tiny random Qwen2-Audio in {ft.model}")
    try:
        AutoProcessor.from_pretrained(ft.model)
    except (OSError, ValueError) as e:
        raise job.JobError(f"finetune.model: cannot load {ft.model!r} ({e}); give a hub id such as "
                           "Qwen/Qwen2-Audio-7B-Instruct or a local model folder", code=2) from None


def acc_tables(run: job.Job) -> int:
    """ACC Tables 2 and 3 in miniature: one MLflow run, a child run per model, the report."""
    from audiopair.evaluate.acc_tables import run_tables

    cfg = run.cfg
    run.start_mlflow()
    with tracking.run(cfg.acc_table.name, tags={"job": "finetune_qwen2_audio", "acc_table": "true"}) as parent:
        tracking.log_config(cfg)
        md, _ = run_tables(cfg, parent.info.run_id, run.say)
        mlflow.log_metric("job_seconds", run.seconds())
    print("\n" + md.read_text())
    run.say(f"done: report {md}, MLflow run {parent.info.run_id}")
    return 0


@job.entry(__doc__)
def main(run: job.Job) -> int:
    cfg, say = run.cfg, run.say
    ft = cfg.finetune
    run.build_dataset()
    if cfg.acc_table.enabled:
        return acc_tables(run)
    ensure_base(cfg, say)

    from audiopair.evaluate.run import comparison_table, evaluate_models
    from audiopair.models.qwen2_audio import merge_lora
    from audiopair.train.qwen import finetune_qwen2_audio

    run.start_mlflow()
    with tracking.run(ft.run_name, tags={"job": "finetune_qwen2_audio", "method": ft.method},
                      system_metrics=cfg.train.system_metrics) as parent:
        tracking.log_config(cfg)
        spec = tracking.worker_system_metrics() if cfg.train.system_metrics else None
        ckpt, metrics, result = finetune_qwen2_audio(cfg, say, {"system_metrics": spec} if spec else None)
        if result is not None:
            tracking.log_epochs(result)
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()
                            if k in ("train_loss", "val_loss", "samples_per_s", "tokens_per_s", "setup_s")})
        model_dir = local_dir(ckpt) / "model"
        mlflow.set_tag("checkpoint", str(model_dir))
        say(f"[{ft.run_name}] train loss {metrics.get('train_loss', float('nan')):.3f}, "
            f"val loss {metrics.get('val_loss', float('nan')):.3f}, {metrics.get('tokens_per_s', 0):.0f} tokens/s")
        # LoRA: adapter + processor, a few MB at r 8; full: the whole model (train.model_artifacts decides)
        tracking.log_model(model_dir, cfg.train.model_artifacts, source=f"{checkpoint_uri(ckpt)}/model")
        if ft.method == "lora" and ft.merge:
            merged = merge_lora(model_dir, Path(cfg.work_dir) / "models" / f"{ft.run_name}-merged")
            mlflow.set_tag("merged_model", str(merged))
            tracking.log_model(merged, cfg.train.model_artifacts, artifact_path="merged")
            say(f"merged base + adapter into {merged}")
        ev = cfg.evaluate.model_copy(update={"tasks": ft.evaluate_tasks})
        results, md = evaluate_models({ft.run_name: model_dir}, cfg.model_copy(update={"evaluate": ev}),
                                      Path(cfg.work_dir) / "reports" / ft.run_name,
                                      f"{ft.run_name} on {cfg.dataset.name}/{ev.split}", say)
        if cfg.train.register_models:
            v = tracking.register_model(f"runs:/{parent.info.run_id}/model", cfg.train.register_as or ft.run_name,
                                        tags=results[0].score_tags(cfg.dataset.name))
            say(f"[{ft.run_name}] registered as models:/{v.name}/{v.version}")
        mlflow.log_metric("job_seconds", run.seconds())
    for task in ev.tasks:
        print(f"\n{task} on {cfg.dataset.name}/{ev.split}\n" + comparison_table(results, task, ev.metrics))
    say(f"done: report {md}, MLflow run {parent.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
