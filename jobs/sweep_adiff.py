"""ADIFF's language-model scaling study (§5.3): a Ray Tune sweep over GPT-2 sizes x epochs, Table 5 and Figure 4.

    python jobs/sweep_adiff.py                                        # the demo: tiny GPT-2 sizes, a few epochs
    python jobs/sweep_adiff.py --config jobs/configs/sweep_adiff_acd.yaml   # GPT-2 base..XL x 30/50 epochs, 8 GPUs
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python jobs/sweep_adiff.py --config ...

Builds the dataset when it is missing, pretrains the demo's stage-1 encoder and one LM per size, runs one Tune trial
per grid point (``sweep.sizes`` x ``sweep.space``; ASHA stops the clearly worse ones), scores every trial's last
checkpoint on the test split and logs it all to MLflow: a parent run for the sweep, a child per trial, the Table-5
table and the Figure-4 plot (also in ``<work_dir>/reports/<sweep.name>/``). Re-running with the same ``sweep.name``
resumes an interrupted sweep; finished trials are not trained again.
"""

import sys
from pathlib import Path

import mlflow

from audiopair import job
from audiopair.evaluate import sweep_report
from audiopair.train import sweep


@job.entry(__doc__)
def main(run: job.Job) -> int:
    cfg, say = run.cfg, run.say
    # A bad sweep key, or a grid other than the one this sweep.name started with, fails here (ConfigError: exit 2),
    # before the dataset build, any training or the MLflow parent run.
    sweep.check_grid(cfg)
    sweep.check_resumable(cfg)
    run.build_dataset()
    run.start_mlflow()
    folder = Path(cfg.work_dir) / "reports" / cfg.sweep.name
    with sweep_report.sweep_run(cfg) as parent:
        try:
            trials = sweep.run_sweep(cfg, parent.info.run_id, say)
        except sweep.Interrupted as e:
            print(f"{e}", file=sys.stderr)
            mlflow.end_run("KILLED")  # the next run of the job reopens this parent run
            return 130
        sweep_report.score_trials(trials, cfg, folder, say)
        table, figure = sweep_report.report(trials, cfg, folder, parent.info.run_id)
        mlflow.log_metric("job_seconds", run.seconds())

    print("\n" + table.read_text())
    say(f"done: {table}, {figure}, MLflow run {parent.info.run_id}")
    return 0 if not any(t.error for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
