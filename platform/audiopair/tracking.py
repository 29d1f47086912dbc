"""MLflow conventions (DESIGN.md): where runs go, how they are named, what each run logs.

- Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a server: ``http://mlflow:5000``), else
  ``sqlite:///<work_dir>/mlflow.db`` with artifacts in ``<work_dir>/mlartifacts``.
- One parent run per job, one child run per stage / model (``nested``), so the UI shows a job as a tree.
- Metric keys ``<dataset>/<task>/<tier or all>/<metric>`` (``audiopair.evaluate.score.metric_key``).
- Parameters: the resolved config flattened (``dataset.mix.snr_db`` ...), the config itself as ``config.yaml``.
- Predictions as a table artifact (id, prompt, prediction, references).

Only the driver talks to MLflow: training workers report through ``ray.train.report`` and the driver logs the
stage's per-epoch metrics when it ends, so a cluster's workers need no route to the tracking server.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import mlflow

from audiopair.config import dump_config, flatten


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses), so after one job in a process the
# variable holds that job's local store. Remembering the local stores we set tells them apart from a URI the user
# gave: without this, a second job in the same process (a notebook, a test session) logged into the first one's.
_local_uris: set[str] = set()


def tracking_uri(work_dir: str | os.PathLike) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env not in _local_uris:
        return env
    return f"sqlite:///{Path(work_dir).resolve() / 'mlflow.db'}"


def setup(work_dir: str | os.PathLike, experiment: str) -> str:
    """Point MLflow at the tracking URI and select (or create) ``experiment``; returns the URI."""
    uri = tracking_uri(work_dir)
    if uri != os.environ.get("MLFLOW_TRACKING_URI"):  # the work_dir store, not the user's URI
        _local_uris.add(uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:"):  # a local store keeps its artifacts beside the database
            location = (Path(work_dir).resolve() / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


@contextlib.contextmanager
def run(name: str, nested: bool = False, tags: dict | None = None,
        parent: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run: a child of the active one when ``nested``, of run id ``parent`` when given (MLflow keeps the active
    run per thread, so work started in another thread names its parent). Ended FAILED if the block raises."""
    with mlflow.start_run(run_name=name, nested=nested or parent is not None, tags=tags,
                          parent_run_id=parent) as active:
        yield active


def log_config(cfg) -> None:
    """Flattened parameters (MLflow caps a value at 6000 characters) and ``config.yaml``."""
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(cfg).items()}
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
    mlflow.log_text(dump_config(cfg), "config.yaml")


def log_epochs(result, prefix: str = "") -> None:
    """A Ray Train result's per-epoch metrics as MLflow metric histories (step = epoch)."""
    df = result.metrics_dataframe
    if df is None or df.empty:
        return
    for _, row in df.sort_values("epoch").iterrows():
        step = int(row["epoch"])
        values = {f"{prefix}{k}": float(row[k]) for k in ("train_loss", "val_loss", "lr", "samples_per_s")
                  if k in row and row[k] == row[k]}
        mlflow.log_metrics(values, step=step)


def log_predictions(rows: list[dict], artifact_file: str) -> None:
    """Predictions as an MLflow table: id, prompt, prediction, references (joined with " | "), tier."""
    table = {
        "id": [r["id"] for r in rows],
        "tier": [r.get("tier") or 0 for r in rows],
        "prompt": [r.get("eval_prompt", r.get("prompt", "")) for r in rows],
        "prediction": [r["prediction"] for r in rows],
        "references": [" | ".join(r["references"]) for r in rows],
    }
    mlflow.log_table(data=table, artifact_file=artifact_file)
