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

import logging
import sys
import time
from pathlib import Path

import mlflow

from audiopair import tracking
from audiopair.config import ConfigError, config_from_argv
from audiopair.data.pipeline import BuildError, build_dataset, ensure_ray
from audiopair.evaluate.run import evaluate_checkpoint
from audiopair.train import sweep


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_argv(argv, __doc__)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"{time.perf_counter() - t0:6.0f}s  {msg}\n", end="", flush=True)  # one write: threads share stdout

    try:
        sweep.check_grid(cfg)  # a bad sweep key fails here, before the dataset build or any training
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ensure_ray()
    try:
        built = build_dataset(cfg.dataset, progress=lambda m: None)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    say(f"dataset {built.out_dir}: {built.clips} clips")

    uri = tracking.setup(cfg.work_dir, cfg.experiment)
    say(f"MLflow: {uri}, experiment {cfg.experiment!r}")
    ecfg, folder = sweep.eval_config(cfg), Path(cfg.work_dir) / "reports" / cfg.sweep.name

    def evaluate(trial: sweep.Trial) -> dict:
        ev = evaluate_checkpoint(sweep.model_dir(cfg, trial.checkpoint), ecfg, trial.label, log_mlflow=False, say=say)
        return {group: rep.values for group, rep in ev.reports.get("adiff", {}).items()}

    with sweep.sweep_run(cfg) as parent:
        try:
            trials = sweep.run_sweep(cfg, parent.info.run_id, say)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except sweep.Interrupted as e:
            print(f"{e}", file=sys.stderr)
            mlflow.end_run("KILLED")  # the next run of the job reopens this parent run
            return 130
        sweep.score_trials(trials, ecfg, evaluate, folder, say)
        table, figure = sweep.report(trials, cfg, folder, parent.info.run_id)
        mlflow.log_metric("job_seconds", time.perf_counter() - t0)

    print("\n" + table.read_text())
    say(f"done: {table}, {figure}, MLflow run {parent.info.run_id}")
    return 0 if not any(t.error for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
