"""MLflow conventions (DESIGN.md): where runs go, how they are named, what each run logs.

- Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a server: ``http://mlflow:5000``), else
  ``sqlite:///<work_dir>/mlflow.db`` with artifacts in ``<work_dir>/mlartifacts``.
- One parent run per job, one child run per stage / model (``nested``), so the UI shows a job as a tree.
- Metric keys ``<dataset>/<task>/<tier or all>/<metric>`` (``audiopair.evaluate.score.metric_key``).
- Parameters: the resolved config flattened (``dataset.mix.snr_db`` ...), the config itself as ``config.yaml``.
- Predictions as a table artifact (id, prompt, prediction, references).
- Models: a finished training stage's model folder is its run's ``model/`` artifacts (or, for large models on a
  server without an artifact store, ``model/reference.json`` naming where it lies); the final ones are registered
  in the Model Registry. ``resolve_model`` turns ``models:/name/version`` and ``runs:/<id>/model`` back into a
  local folder.
- System metrics (``system/...``: CPU, memory, disk, network, GPU with nvidia-ml-py) on training runs.

Only the driver talks to MLflow: training workers report through ``ray.train.report`` and the driver logs the
stage's per-epoch metrics when it ends, so a cluster's workers need no route to the tracking server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import mlflow

from audiopair.config import dump_config, flatten

log = logging.getLogger(__name__)
REFERENCE = "reference.json"  # the one file of a model logged by reference


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
def run(name: str, nested: bool = False, tags: dict | None = None, parent: str | None = None,
        system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """A run: a child of the active one when ``nested``, of run id ``parent`` when given (MLflow keeps the active
    run per thread, so work started in another thread names its parent). Ended FAILED if the block raises.
    ``system_metrics``: MLflow samples this machine (``system/cpu_utilization_percentage`` ..., GPUs too when
    nvidia-ml-py finds one) every 10 s (``mlflow.system_metrics.set_system_metrics_sampling_interval``) while the
    run is open."""
    with mlflow.start_run(run_name=name, nested=nested or parent is not None, tags=tags,
                          parent_run_id=parent, log_system_metrics=system_metrics) as active:
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
    df = df.sort_values("epoch")
    last = df.iloc[-1]
    # the training loop's own record of every epoch (Ray keeps the rows of kept checkpoints only)
    rows = json.loads(last["history"]) if isinstance(last.get("history"), str) else df.to_dict("records")
    for row in rows:
        values = {f"{prefix}{k}": float(row[k]) for k in ("train_loss", "val_loss", "lr", "samples_per_s")
                  if k in row and row[k] == row[k]}
        mlflow.log_metrics(values, step=int(row["epoch"]))


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


def worker_system_metrics() -> dict | None:
    """What a training run's rank-0 worker needs to chart its own machine into the active run (``system/rank0/...``;
    the driver's node is ``system/...``): only with a tracking server, which a cluster's workers can reach. A local
    store is a file on the driver's machine (and its workers share that machine's charts). See
    ``start_system_metrics``."""
    from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http:", "https:")) or mlflow.active_run() is None:
        return None
    return {"run_id": mlflow.active_run().info.run_id, "tracking_uri": uri, "node_id": "rank0",
            "interval": MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or 10}


def start_system_metrics(spec: dict | None):
    """In a worker: MLflow's system-metrics monitor for ``spec`` (``worker_system_metrics()``), started; call
    ``.finish()`` on it at the end (it also stops by itself when the run ends). None without a spec."""
    if not spec:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(spec["run_id"], sampling_interval=spec["interval"], node_id=spec["node_id"],
                                   tracking_uri=spec["tracking_uri"], resume_logging=True)
    monitor.start()
    return monitor


# ---------------------------------------------------------------------------------------------------- models
def has_artifact_store() -> bool:
    """Whether the active run's artifacts land where every user of the tracking server can fetch them: a store the
    server proxies (``mlflow-artifacts:``, the Helm chart's S3) or names (``s3://``, ``gs://`` ...), or a local
    tracking store with its artifacts beside it. A server that hands out plain local paths has none."""
    scheme = urlparse(mlflow.get_artifact_uri()).scheme
    if scheme not in ("", "file") and len(scheme) > 1:  # (one letter: a Windows drive)
        return True
    return not mlflow.get_tracking_uri().startswith(("http:", "https:", "databricks"))


def _folder_listing(folder: Path) -> tuple[dict[str, int], int]:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    return files, sum(files.values())


def log_model(folder: str | os.PathLike, mode: str = "auto", source: str | None = None,
              artifact_path: str = "model") -> str:
    """Log a finished model folder to the active run as ``<artifact_path>/`` and tag the run
    ``<artifact_path>_uri`` (``runs:/<id>/<artifact_path>``) and ``<artifact_path>_artifacts``; returns the mode
    used (``upload`` / ``reference``).

    ``mode``: ``upload`` copies every file; ``reference`` logs only ``<artifact_path>/reference.json`` with
    ``source`` (where the folder lies for everyone, e.g. its ``s3://`` checkpoint under ``train.storage_path``;
    default the folder itself), its file list and size; ``auto`` uploads when ``has_artifact_store()``.
    Raises ``FileNotFoundError`` when ``folder`` is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if mode not in ("auto", "upload", "reference"):
        raise ValueError(f"model artifacts mode {mode!r}: use upload, reference or auto")
    if mode == "auto":
        mode = "upload" if has_artifact_store() else "reference"
    if mode == "upload":
        mlflow.log_artifacts(str(folder), artifact_path)
    else:
        files, size = _folder_listing(folder)
        mlflow.log_dict({"source": source or str(folder.resolve()), "files": files, "bytes": size},
                        f"{artifact_path}/{REFERENCE}")
    run_id = mlflow.active_run().info.run_id
    mlflow.set_tags({f"{artifact_path}_uri": f"runs:/{run_id}/{artifact_path}", f"{artifact_path}_artifacts": mode})
    return mode


def register_model(model_uri: str, name: str, tags: dict | None = None):
    """A new version of registered model ``name`` (created on first use) from ``runs:/<id>/<path>`` logged by
    ``log_model``, with ``tags`` (e.g. its evaluation scores); returns MLflow's ``ModelVersion``. Its source is the
    run's artifact folder, so ``models:/<name>/<version>`` downloads what the run holds."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if not RunsArtifactRepository.is_runs_uri(model_uri):
        raise ValueError(f"register_model takes a runs:/<run id>/<path> URI, not {model_uri!r}")
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    run_id = RunsArtifactRepository.parse_runs_uri(model_uri)[0]
    source = RunsArtifactRepository.get_underlying_uri(model_uri)
    return client.create_model_version(name, source, run_id=run_id,
                                       tags={k: str(v) for k, v in (tags or {}).items()})


def is_model_uri(ref: str) -> bool:
    """``models:/...`` or ``runs:/...`` (a folder path otherwise)."""
    return str(ref).startswith(("models:/", "runs:/"))


def _pinned(uri: str) -> tuple[str, bool]:
    """``(uri, immutable)``: ``models:/name@alias`` and ``models:/name/latest`` pinned to the version they name now,
    so the cache holds versions, which never change; ``runs:/`` URIs are immutable once the run has finished."""
    if uri.startswith("runs:/"):
        return uri, True
    rest = uri.removeprefix("models:/")
    client = mlflow.MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return f"models:/{name}/{client.get_model_version_by_alias(name, alias).version}", True
    name, _, version = rest.rpartition("/")
    if version == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"{uri}: registered model {name!r} has no versions")
        return f"models:/{name}/{max(int(v.version) for v in versions)}", True
    return uri, version.isdigit()


def _download(uri: str, dest: Path) -> Path:
    """``uri``'s files into ``dest`` through a temporary folder beside it (a half download never looks finished)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(ref: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """A model reference as a local folder: a path as it is; ``models:/name/version`` (or ``@alias``, ``latest``)
    and ``runs:/<id>/model`` downloaded from the tracking server (``mlflow.artifacts.download_artifacts``) into
    ``cache_dir`` once; a model logged by reference (``reference.json``) followed to its source (a local path as it
    is, ``s3://`` ... downloaded). Raises ``ValueError`` naming the URI when MLflow does not know it."""
    from mlflow.exceptions import MlflowException

    ref = str(ref)
    if not is_model_uri(ref):
        return Path(ref)
    try:
        uri, immutable = _pinned(ref)
        dest = Path(cache_dir) / re.sub(r"[^A-Za-z0-9._-]+", "_", uri.replace(":/", "/")).strip("_")
        if not (immutable and dest.is_dir()):
            _download(uri, dest)
        if (dest / REFERENCE).is_file() and len(list(dest.iterdir())) == 1:
            source = json.loads((dest / REFERENCE).read_text())["source"]
            if "://" not in source:
                if not Path(source).is_dir():
                    raise ValueError(f"{ref} was logged by reference to {source}, which is not a folder here")
                return Path(source)
            target = dest.with_name(dest.name + "-source")
            if not target.is_dir():
                _download(source, target)
            return target
    except MlflowException as e:
        raise ValueError(f"{ref}: MLflow cannot resolve it ({e.message}); "
                         f"tracking URI {mlflow.get_tracking_uri()}") from None
    return dest
