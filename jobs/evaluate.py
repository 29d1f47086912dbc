"""Generate for a split's manifests with one or more trained models, score them, compare them, log to MLflow.

    python jobs/evaluate.py evaluate.checkpoints='{adiff: work/runs/adiff-demo-adiff-finetune/epoch_0001/model}'
    python jobs/evaluate.py --config jobs/configs/adiff_acd.yaml \\
        evaluate.checkpoints='{adiff: /ckpt/adiff/model, baseline: /ckpt/baseline/model}' evaluate.num_actors=8

    python jobs/evaluate.py evaluate.checkpoints='{a: models:/adiff-demo-adiff/1, b: runs:/<run id>/model}'
    python jobs/evaluate.py evaluate.checkpoints='{adiff: PATH}' evaluate.tasks=[] \\
        evaluate.classify='[{name: gtzan, csv: /data/gtzan/test.csv}, {name: vocalsound, csv: /data/vs/test.csv}]'

A checkpoint is a model folder or a model in MLflow (``models:/name/version``, ``models:/name@alias``,
``runs:/<id>/model``), downloaded once into ``<work_dir>/models/mlflow/``. Each model gets an MLflow child run
(metrics ``<dataset>/<task>/<tier>/<metric>``, ``scores.json``, predictions table); the parent run holds the
side-by-side report (``report.md`` / ``report.html``), also written to ``<work_dir>/reports/<experiment>-evaluate/``.
Examples whose audio features are missing are skipped and counted.
``evaluate.classify`` adds downstream classification accuracy (ACC Table 3) over ``path,label`` CSVs (or ``csv:
demo``): metrics ``<set>/classify/all/accuracy``, a confusion matrix and predictions per set; unreadable audio files
are skipped and counted.
"""

import sys
from pathlib import Path

from audiopair import job, tracking
from audiopair.runtime import ensure_ray
from audiopair.evaluate.downstream import ClassifySetupError, prepare_all
from audiopair.evaluate.run import classify_table, comparison_table, evaluate_models


@job.entry(__doc__)
def main(run: job.Job) -> int:
    cfg, say = run.cfg, run.say
    ev = cfg.evaluate
    if not ev.checkpoints:
        raise job.JobError("evaluate.checkpoints is empty; name the models, e.g. evaluate.checkpoints='{adiff: PATH}'",
                           code=2)
    run.start_mlflow()  # models:/ and runs:/ URIs resolve through it
    folders, sources = {}, {}
    for name, ref in ev.checkpoints.items():
        try:
            folders[name] = tracking.resolve_model(ref, Path(cfg.work_dir) / "models" / "mlflow")
        except ValueError as e:
            raise job.JobError(f"evaluate.checkpoints.{name}: {e}", code=2) from None
        if tracking.is_model_uri(ref):
            sources[name] = ref
            say(f"[{name}] {ref} -> {folders[name]}")
        path = folders[name]
        if not any((Path(path) / f).is_file() for f in ("adiff.json", "audiopair_qwen.json")):
            raise job.JobError(f"evaluate.checkpoints.{name}: {path} is neither an ADIFF model folder (adiff.json) nor "
                               "a finetuned Qwen2-Audio folder (audiopair_qwen.json); give the model/ folder inside a "
                               "training checkpoint, or models:/name/version", code=2)
    try:
        classify_sets = prepare_all(cfg)  # before any model loads: a missing CSV fails now, naming its key
    except ClassifySetupError as e:
        raise job.JobError(str(e), code=2) from None
    if ev.num_actors:
        ensure_ray()
    with tracking.run("evaluate", tags={"job": "evaluate"}) as parent:
        tracking.log_config(cfg)
        report_dir = Path(cfg.work_dir) / "reports" / f"{cfg.experiment}-evaluate"
        results, md = evaluate_models(folders, cfg, report_dir,
                                      f"{', '.join(ev.checkpoints)} on {cfg.dataset.name}/{ev.split}", say,
                                      classify_sets=classify_sets, sources=sources)
    for task in ev.tasks:
        print(f"\n{task} on {cfg.dataset.name}/{ev.split}\n" + comparison_table(results, task, ev.metrics))
    if ev.classify:
        print("\ndownstream classification accuracy\n" + classify_table(results))
    skipped = sum(len(r.skipped) + sum(len(c.skipped) for c in r.classify.values()) for r in results)
    say(f"done: report {md}, MLflow run {parent.info.run_id}" + (f", {skipped} examples skipped" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
